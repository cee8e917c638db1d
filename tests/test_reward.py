"""Chapter 10's reference (solutions/reward.py): the reward at the last real token, the reward
model against Hugging Face's ``LlamaForSequenceClassification`` (offline, a tiny random model),
the Bradley-Terry loss against its closed forms, normalisation, the pairs as tokens, the data's
baselines, and a short deterministic training run.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from autograder.core import lookup, run
from solutions.model import LlamaConfig, Transformer, convert_hf_state_dict
from solutions.reward import (RewardModel, accuracy_by_kind, collate_pairs, hidden_states, init_score, longer_wins,
                              normalize_rewards, pair_examples, preference_loss, reward_example, reward_forward,
                              reward_model_from_data, reward_train, score_pairs, score_replies, sequence_rewards)
from solutions.sft import IM_END, PAD, render_chat

TOL = 1e-5
TINY = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, max_seq_len=64,
            tie_embeddings=True)
PAD_ID = 96


def tiny_reward_model(seed=0):
    torch.manual_seed(seed)
    model = RewardModel(TINY, PAD_ID)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape))
    init_score(model, seed)
    return model.eval()


def padded(rows, pad_id=PAD_ID):
    longest = max(len(r) for r in rows)
    return torch.tensor([r + [pad_id] * (longest - len(r)) for r in rows])


# ------------------------------------------------------------------------------ the reward head


def test_hidden_states_are_what_the_output_projection_reads():
    model = tiny_reward_model().backbone
    x = torch.randint(0, 90, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model.lm_head(hidden_states(model, x)), model(x), atol=TOL)


def test_sequence_rewards_reads_the_last_real_token():
    values = torch.arange(15, dtype=torch.float32).reshape(3, 5)
    ids = padded([[1, 2, 3, 4, 5], [1, 2, 3], [1, 2, 3, 4]])
    assert sequence_rewards(values, ids, torch.tensor([1, 1, 2]), PAD_ID).tolist() == [4.0, 7.0, 13.0]


@pytest.mark.parametrize("values, ids, prompts, message", [
    (torch.zeros(2, 4, 1), padded([[1, 2, 3, 4], [1, 2]]), [1, 1], "squeeze"),
    (torch.zeros(2, 4), padded([[1, 2, 3, 4], [1, 2]]), [1, 1, 1], "one prompt length per row"),
    (torch.zeros(2, 4), torch.tensor([[PAD_ID, 1, 2, 3], [1, 2, 3, 4]]), [1, 1], "pad on the right"),
    (torch.zeros(2, 4), padded([[1, 2, 3, 4], [1, 2]]), [1, 2], "reply has no token"),
])
def test_sequence_rewards_refuses_bad_input_saying_what_to_do(values, ids, prompts, message):
    with pytest.raises(ValueError, match=message):
        sequence_rewards(values, ids, torch.tensor(prompts), PAD_ID)


def test_a_rows_reward_does_not_depend_on_its_batch():
    model = tiny_reward_model()
    rows = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19]]
    prompts = [3, 1, 2]
    with torch.no_grad():
        together = model(padded(rows), torch.tensor(prompts))
        alone = torch.cat([model(torch.tensor([r]), torch.tensor([n])) for r, n in zip(rows, prompts)])
    assert torch.allclose(together, alone, atol=TOL)
    assert together.dtype == torch.float32 and together.shape == (3,)


def test_reward_model_equals_transformers_sequence_classification():
    """Hugging Face's LlamaForSequenceClassification reads the last non-pad token too: same weights, same rewards."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         rms_norm_eps=1e-5, rope_theta=10000.0, num_labels=1, pad_token_id=PAD_ID,
                                         tie_word_embeddings=True)
    hf = transformers.LlamaForSequenceClassification(hf_config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape))
    hf_state = hf.state_dict()
    model = RewardModel(TINY, PAD_ID).eval()
    backbone = convert_hf_state_dict({k: v for k, v in hf_state.items() if k != "score.weight"}, model.backbone.cfg)
    model.backbone.load_state_dict(backbone, strict=False)  # lm_head is tied to the embedding
    model.score.load_state_dict({"weight": hf_state["score.weight"]})
    rows = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19]]
    ids = padded(rows)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=(ids != PAD_ID).long()).logits.squeeze(-1)
        got = model(ids, torch.tensor([1, 1, 1]))
    assert expected.abs().max() > 0.05  # a head that moves the rewards, so agreeing proves something
    assert torch.allclose(got, expected, atol=1e-4), (got, expected)


# ------------------------------------------------------------------------------ the loss


def test_preference_loss_is_the_mean_negative_log_sigmoid():
    c, r, m = torch.tensor([1.0, -0.5, 3.0, 0.25]), torch.tensor([0.0, 0.5, 3.0, -2.0]), torch.tensor([0.5, 0.0, 1.0, 2.0])
    loss, accuracy, mean_margin = preference_loss(c, r)
    assert math.isclose(loss.item(), F.softplus(r - c).mean().item(), rel_tol=1e-6)
    assert accuracy == 0.5 and math.isclose(mean_margin, (c - r).mean().item(), rel_tol=1e-6)  # the tie is no win
    with_margin, accuracy_m, margin_m = preference_loss(c, r, m)
    assert math.isclose(with_margin.item(), (-F.logsigmoid(c - r - m)).mean().item(), rel_tol=1e-6)
    assert (accuracy_m, margin_m) == (accuracy, mean_margin)
    assert isinstance(accuracy, float) and isinstance(mean_margin, float)


def test_preference_loss_is_finite_where_log_sigmoid_overflows():
    c, r = torch.tensor([0.0, 0.0]), torch.tensor([150.0, 300.0])
    assert torch.isinf(-torch.log(torch.sigmoid(c - r))).all()
    loss, _, _ = preference_loss(c, r)
    assert math.isclose(loss.item(), 225.0, rel_tol=1e-6)
    c.requires_grad_(True)
    preference_loss(c, r)[0].backward()
    assert torch.allclose(c.grad, torch.tensor([-0.5, -0.5]))


@pytest.mark.parametrize("c, r, m, message", [
    (torch.zeros(3), torch.zeros(2), None, "3 chosen rewards but 2 rejected"),
    (torch.zeros(3, 1), torch.zeros(3, 1), None, "1-d"),
    (torch.zeros(0), torch.zeros(0), None, "empty"),
    (torch.zeros(3), torch.zeros(3), torch.zeros(2), "one margin per pair"),
])
def test_preference_loss_refuses_bad_batches(c, r, m, message):
    with pytest.raises(ValueError, match=message):
        preference_loss(c, r, m)


# ------------------------------------------------------------------------------ normalisation


def test_normalisation_gives_the_reference_mean_0_and_std_1_and_keeps_rankings():
    g = torch.Generator().manual_seed(3)
    reference = torch.randn(50, generator=g) * 4 + 7
    rewards = torch.randn(20, generator=g)
    normalized_reference = normalize_rewards(reference, reference)
    assert abs(normalized_reference.mean().item()) < 1e-6
    assert abs(normalized_reference.std(unbiased=False).item() - 1) < 1e-6
    out = normalize_rewards(rewards, reference)
    assert torch.equal(out.argsort(), rewards.argsort()) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="all equal"):
        normalize_rewards(rewards, torch.ones(5))
    with pytest.raises(ValueError, match="at least two"):
        normalize_rewards(rewards, torch.ones(1))


# ------------------------------------------------------------------------------ pairs as tokens


@pytest.fixture(scope="module")
def tokenizer():
    from data import course_tokenizer
    return course_tokenizer()


@pytest.fixture(scope="module")
def pairs():
    from data.preferences import load_preferences
    return load_preferences("test")


def test_reward_example_ends_with_im_end_after_the_prompt(tokenizer, pairs):
    pair = pairs[0]
    ids, prompt_length = reward_example(tokenizer, pair["prompt"], pair["chosen"], 512)
    assert ids[-1] == tokenizer.encode_single_token(IM_END)
    assert ids[:prompt_length] == render_chat(tokenizer, pair["prompt"], add_generation_prompt=True)
    assert tokenizer.decode(ids[prompt_length:-1]) == pair["chosen"]
    assert tokenizer.encode_single_token(PAD) != tokenizer.encode_single_token(IM_END)
    with pytest.raises(ValueError, match="needs at least one token"):
        reward_example(tokenizer, pair["prompt"], "", 512)
    with pytest.raises(ValueError, match="context"):
        reward_example(tokenizer, pair["prompt"], pair["chosen"], 10)


def test_collate_pairs_puts_chosen_rows_first_and_refuses_uneven_pairs(tokenizer, pairs):
    examples = pair_examples(tokenizer, pairs[:3], 512)
    ids, prompt_lengths = collate_pairs([c for c, _ in examples], [r for _, r in examples], 7)
    assert ids.shape[0] == 6 and prompt_lengths.tolist() == [c[1] for c, _ in examples] + [r[1] for _, r in examples]
    assert ids[3, : len(examples[0][1][0])].tolist() == examples[0][1][0]
    with pytest.raises(ValueError, match="same length"):
        collate_pairs([c for c, _ in examples], [r for _, r in examples[:2]], 7)


def test_baselines(pairs):
    length = longer_wins(pairs)
    by_kind = {k: [v for v, p in zip(length, pairs) if p["rejection"] == k] for k in ("rambling", "truncated")}
    assert set(by_kind["rambling"]) == {0.0} and set(by_kind["truncated"]) == {1.0}
    chosen, rejected = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])
    fake = [{"rejection": "a"}, {"rejection": "b"}, {"rejection": "a"}]
    assert accuracy_by_kind(fake, chosen, rejected) == {"all": 1 / 3, "a": 0.5, "b": 0.0}


# ------------------------------------------------------------------------------ training


def test_a_short_training_run_is_deterministic_and_separates_the_pairs(tokenizer, pairs):
    """A tiny random backbone, 30 steps on 40 pairs: the loss falls, and two runs agree exactly."""
    config = dict(TINY, vocab_size=tokenizer.n_vocab, max_seq_len=512)
    examples = pair_examples(tokenizer, pairs[:40], 512)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = RewardModel(config, tokenizer.encode_single_token(PAD))
        init_score(model, 0)
        history = reward_train(model, examples, steps=30, batch_pairs=8, max_lr=3e-3, progress=False)
        runs.append((history, score_pairs(model, examples[:8])))
    (history, (chosen, rejected)), (again, (chosen2, rejected2)) = runs
    assert history == again and torch.equal(chosen, chosen2) and torch.equal(rejected, rejected2)
    assert sum(history["loss"][-5:]) / 5 < history["loss"][0]
    single = score_replies(model, [examples[0][0]])
    assert torch.allclose(single, chosen2[:1], atol=TOL)


def test_centring_pulls_each_pairs_mean_reward_towards_zero(tokenizer, pairs):
    """TRL's center_rewards_coefficient: None and 0 train exactly as without it; 1.0 leaves the
    pairs' mean rewards (r_c + r_r) / 2 nearer 0 than the same run without it; the
    Bradley-Terry loss it returns is the loss alone."""
    config = dict(TINY, vocab_size=tokenizer.n_vocab, max_seq_len=512)
    examples = pair_examples(tokenizer, pairs[:40], 512)
    offsets, histories = {}, {}
    for coefficient in (None, 0.0, 1.0):
        torch.manual_seed(0)
        model = RewardModel(config, tokenizer.encode_single_token(PAD))
        init_score(model, 0)
        histories[coefficient] = reward_train(model, examples, steps=30, batch_pairs=8, max_lr=3e-3,
                                              center_rewards_coefficient=coefficient, progress=False)
        chosen, rejected = score_pairs(model, examples)
        offsets[coefficient] = ((chosen + rejected) / 2).pow(2).mean().item()
    assert histories[None] == histories[0.0] and offsets[None] == offsets[0.0]
    assert offsets[1.0] < offsets[None] / 4, offsets
    # the first step scores the same batch with the same weights: the recorded loss leaves the term out
    assert histories[1.0]["loss"][0] == histories[None]["loss"][0]
    assert histories[1.0]["loss"][1:] != histories[None]["loss"][1:]


@pytest.mark.parametrize("coefficient", [-0.01, float("nan"), float("inf"), True, "0.01"])
def test_a_bad_centring_coefficient_is_refused_before_training(tokenizer, pairs, coefficient):
    config = dict(TINY, vocab_size=tokenizer.n_vocab, max_seq_len=512)
    model = RewardModel(config, tokenizer.encode_single_token(PAD))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="center_rewards_coefficient"):
        reward_train(model, pair_examples(tokenizer, pairs[:8], 512), steps=2, batch_pairs=4,
                     center_rewards_coefficient=coefficient, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_reward_model_from_data_loads_the_backbone_and_seeds_the_head():
    model = Transformer(LlamaConfig(**TINY))
    a = reward_model_from_data(TINY, model.state_dict(), PAD_ID, seed=4)
    b = reward_model_from_data(TINY, model.state_dict(), PAD_ID, seed=4)
    assert torch.equal(a.score.weight, b.score.weight)
    assert a.score.weight.std().item() < 2 / math.sqrt(TINY["dim"])
    assert torch.equal(a.backbone.embed_tokens.weight, model.embed_tokens.weight)


# ------------------------------------------------------------------------------ the checks


@pytest.mark.parametrize("checkpoint_id", ["10.sequence_rewards", "10.reward_model", "10.preference_loss",
                                           "10.normalize_rewards"])
def test_correct_rewrites_are_accepted(checkpoint_id):
    """Other right answers than the reference's pass: a rewrite of each checkpoint."""

    def rewards_by_flip(values, input_ids, prompt_lengths, pad_id):
        sequence_rewards(values, input_ids, prompt_lengths, pad_id)  # the checks
        real = (input_ids != pad_id).long()
        last = values.shape[1] - 1 - real.flip(1).argmax(1)  # the rightmost real token (any padding side)
        return values[torch.arange(values.shape[0]), last]

    def forward_via_logits_path(backbone, score, input_ids, prompt_lengths, pad_id):
        seq = input_ids.shape[1]
        x = backbone.embed_tokens(input_ids)
        for layer in backbone.layers:
            x = layer(x, backbone.rope_cos[:seq], backbone.rope_sin[:seq])
        values = (backbone.norm(x) @ score.weight.T)[..., 0]
        return sequence_rewards(values, input_ids, prompt_lengths, pad_id)

    def loss_by_softplus(chosen_rewards, rejected_rewards, margin=None):
        preference_loss(chosen_rewards, rejected_rewards, margin)  # the checks
        m = 0 if margin is None else margin
        diff = chosen_rewards - rejected_rewards
        return F.softplus(rejected_rewards - chosen_rewards + m).mean(), (diff > 0).float().mean().item(), \
            diff.mean().item()

    def normalize_by_hand(rewards, reference_rewards):
        normalize_rewards(rewards, reference_rewards)  # the checks
        mean = reference_rewards.sum() / len(reference_rewards)
        std = ((reference_rewards - mean) ** 2).mean().sqrt()
        return (rewards - mean) / std

    answers = {"10.sequence_rewards": rewards_by_flip, "10.reward_model": forward_via_logits_path,
               "10.preference_loss": loss_by_softplus, "10.normalize_rewards": normalize_by_hand}
    result = run(lookup(checkpoint_id), answers[checkpoint_id])
    assert result.passed, result.report()


def test_reward_forward_is_what_the_reward_model_calls():
    model = tiny_reward_model()
    ids = padded([[5, 6, 7, 8], [9, 10]])
    with torch.no_grad():
        assert torch.equal(model(ids, torch.tensor([1, 1])),
                           reward_forward(model.backbone, model.score, ids, torch.tensor([1, 1]), PAD_ID))


# ------------------------------------------------------------------------------ for chapter 11


def test_the_helpers_chapter_11_starts_from_are_deterministic():
    """sft_policy() loads the shipped SFT model; trained_reward_model() rebuilds the reward model
    from the shipped base (here with 2 steps: the chapter's recipe runs 60): the same weights twice."""
    from solutions.reward import sft_policy, trained_reward_model

    a, b = sft_policy(), sft_policy()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not a.training
    r1, r2 = trained_reward_model(steps=2), trained_reward_model(steps=2)
    assert all(torch.equal(r1.state_dict()[k], r2.state_dict()[k]) for k in r1.state_dict())
    assert isinstance(r1, RewardModel) and not r1.training
