"""Chapter 12's DPO reference (solutions/dpo.py): each function against a hand-written or brute-force
reference, the common mistakes shown to give other numbers, the errors, and short training runs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from solutions.dpo import (dpo_batch, dpo_loss, dpo_train, dpo_variant_loss, frozen_copy, pad_rows, policy_logprobs,
                           policy_report, sample_replies, sequence_logprobs)
from solutions.model import LlamaConfig, Transformer
from solutions.sft import PAD

TOL = 1e-5  # float32 sums of a few dozen log-probabilities
PAD_ID = 96
SMALL = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, max_seq_len=64,
             tie_embeddings=True)
# the course tokenizer's vocabulary, a tiny body: real pairs, fast
TINY = dict(vocab_size=4096, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, max_seq_len=512,
            tie_embeddings=True)


def model_of(config, seed=0):
    torch.manual_seed(seed)
    return Transformer(LlamaConfig(**config)).eval()


@pytest.fixture(scope="module")
def tokenizer():
    from data import course_tokenizer
    return course_tokenizer()


@pytest.fixture(scope="module")
def pairs():
    from data.preferences import load_preferences
    return load_preferences("train", 8)


def batch():
    """Three right-padded rows of the small vocabulary: prompt lengths 3, 2, 4; 7, 5, 6 real tokens."""
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, 90, (n,), generator=g).tolist() for n in (7, 5, 6)]
    input_ids = torch.tensor([r + [PAD_ID] * (7 - len(r)) for r in rows])
    return input_ids, torch.tensor([3, 2, 4]), [len(r) for r in rows]


# ------------------------------------------------------------------------ log-probabilities of replies


def test_sequence_logprobs_sum_the_reply_tokens_only_against_a_loop():
    model = model_of(SMALL)
    input_ids, prompt_lengths, n_real = batch()
    got = sequence_logprobs(model(input_ids), input_ids, prompt_lengths, PAD_ID)
    assert torch.equal(got, policy_logprobs(model, input_ids, prompt_lengths, PAD_ID))
    with_prompt, with_padding = [], []
    for b in range(3):
        ids = input_ids[b, : n_real[b]]
        logp = torch.log_softmax(model(ids[None])[0].double(), -1)  # the row alone, no padding at all
        want = sum(logp[j - 1, ids[j]] for j in range(int(prompt_lengths[b]), n_real[b]))
        assert abs(got[b].item() - want.item()) < 5 * TOL, b  # a row alone and in a padded batch: other kernels
        with_prompt.append(sum(logp[j - 1, ids[j]] for j in range(1, n_real[b])).item())
        full = torch.log_softmax(model(input_ids[b:b + 1])[0].double(), -1)
        with_padding.append(sum(full[j - 1, input_ids[b, j]] for j in range(int(prompt_lengths[b]), 7)).item())
    # summing over the prompt's tokens, or over the padding, gives other numbers
    assert all(abs(g - w) > 0.1 for g, w in zip(got.tolist(), with_prompt))
    assert abs(got[1].item() - with_padding[1]) > 0.1 and abs(got[2].item() - with_padding[2]) > 0.1


def test_sequence_logprobs_errors():
    input_ids, prompt_lengths, _ = batch()
    logits = torch.zeros(3, 7, 97)
    with pytest.raises(ValueError, match="pad on the right"):
        sequence_logprobs(logits, input_ids.flip(1), prompt_lengths, PAD_ID)
    with pytest.raises(ValueError, match="no reply token"):
        sequence_logprobs(logits, input_ids, torch.tensor([3, 5, 4]), PAD_ID)
    with pytest.raises(ValueError, match="one prompt length per row"):
        sequence_logprobs(logits, input_ids, torch.tensor([3, 2]), PAD_ID)
    with pytest.raises(ValueError, match="do not match"):
        sequence_logprobs(torch.zeros(3, 6, 97), input_ids, prompt_lengths, PAD_ID)
    with pytest.raises(ValueError, match="at least one token"):
        sequence_logprobs(logits, input_ids, torch.tensor([0, 2, 4]), PAD_ID)


# ------------------------------------------------------------------------ the loss


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


LOGPS = dict(pi_chosen=torch.tensor([-10.0, -12.0, -5.0, -30.0]),
             pi_rejected=torch.tensor([-11.0, -9.0, -5.0, -20.0]),
             ref_chosen=torch.tensor([-10.5, -11.0, -6.0, -31.0]),
             ref_rejected=torch.tensor([-10.0, -10.0, -4.0, -22.0]))


def hs():
    p = {k: v.double().tolist() for k, v in LOGPS.items()}
    return [(pc - rc) - (pr - rr) for pc, pr, rc, rr in
            zip(p["pi_chosen"], p["pi_rejected"], p["ref_chosen"], p["ref_rejected"])]


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_loss_matches_the_formula_written_out(beta):
    loss, chosen, rejected, accuracy, margin = dpo_loss(**LOGPS, beta=beta)
    want = sum(-log_sigmoid(beta * h) for h in hs()) / 4
    assert abs(loss.item() - want) < 1e-6
    assert torch.allclose(chosen, beta * torch.tensor([0.5, -1.0, 1.0, 1.0]), atol=1e-6)
    assert torch.allclose(rejected, beta * torch.tensor([-1.0, 1.0, -1.0, 2.0]), atol=1e-6)
    assert accuracy == 0.5  # pairs 0 and 2 (pair 3: 1 < 2, pair 1: -1 < 1)
    assert abs(margin - beta * sum(hs()) / 4) < 1e-6
    assert not chosen.requires_grad and not rejected.requires_grad
    # beta applied twice (to h, then again to the product) gives another loss
    twice = sum(-log_sigmoid(beta * beta * h) for h in hs()) / 4
    assert abs(loss.item() - twice) > 1e-3


def test_dpo_loss_is_finite_where_log_of_sigmoid_is_not():
    for h, want in ((-200.0, 200.0), (200.0, 0.0)):
        args = dict(pi_chosen=torch.tensor([h]), pi_rejected=torch.zeros(1), ref_chosen=torch.zeros(1),
                    ref_rejected=torch.zeros(1))
        loss = dpo_loss(**args, beta=1.0)[0]
        assert abs(loss.item() - want) < 1e-4
    assert torch.isinf(-torch.log(torch.sigmoid(torch.tensor(-200.0))))  # the naive formula


def test_dpo_loss_gradient_matches_the_formula():
    p = {k: v.clone().requires_grad_(True) for k, v in LOGPS.items()}
    loss = dpo_loss(p["pi_chosen"], p["pi_rejected"], p["ref_chosen"].detach(), p["ref_rejected"].detach(), 0.5)[0]
    loss.backward()
    h = torch.tensor(hs(), dtype=torch.float64)
    want = -0.5 * torch.sigmoid(-0.5 * h) / 4  # d loss / d pi_chosen
    assert torch.allclose(p["pi_chosen"].grad.double(), want, atol=1e-6)
    assert torch.allclose(p["pi_rejected"].grad.double(), -want, atol=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_label_smoothing_is_cdpo(eps):
    beta = 0.5
    loss = dpo_variant_loss(**LOGPS, beta=beta, label_smoothing=eps)[0]
    want = sum(-(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h) for h in hs()) / 4
    assert abs(loss.item() - want) < 1e-6
    assert abs(loss.item() - dpo_loss(**LOGPS, beta=beta)[0].item()) > 1e-3
    # a minimum at a finite margin: beta h = log((1 - eps) / eps)
    best = math.log((1 - eps) / eps) / beta
    values = [dpo_variant_loss(torch.tensor([best + d]), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta,
                               label_smoothing=eps)[0].item() for d in (-0.5, 0.0, 0.5)]
    assert values[1] < values[0] and values[1] < values[2]


def test_ipo_loss():
    beta = 0.25
    loss, chosen, rejected, accuracy, margin = dpo_variant_loss(**LOGPS, beta=beta, loss_type="ipo")
    want = sum((h - 1 / (2 * beta)) ** 2 for h in hs()) / 4
    assert abs(loss.item() - want) < 1e-5
    zero = dpo_variant_loss(torch.tensor([1 / (2 * beta)]), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta,
                            loss_type="ipo")[0]
    assert abs(zero.item()) < 1e-10  # its minimum, at h = 1 / (2 beta)
    assert accuracy == 0.5 and torch.allclose(chosen, beta * torch.tensor([0.5, -1.0, 1.0, 1.0]))


def test_dpo_loss_errors():
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(**LOGPS, beta=0.0)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(**LOGPS, beta=-0.1)
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(LOGPS["pi_chosen"], LOGPS["pi_rejected"][:3], LOGPS["ref_chosen"], LOGPS["ref_rejected"], 0.1)
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(*(v[:, None] for v in LOGPS.values()), beta=0.1)
    with pytest.raises(ValueError, match="empty"):
        dpo_loss(*(torch.zeros(0) for _ in range(4)), beta=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_variant_loss(**LOGPS, beta=0.1, label_smoothing=0.5)
    with pytest.raises(ValueError, match="IPO"):
        dpo_variant_loss(**LOGPS, beta=0.1, label_smoothing=0.1, loss_type="ipo")
    with pytest.raises(ValueError, match="loss_type"):
        dpo_variant_loss(**LOGPS, beta=0.1, loss_type="hinge")


# ------------------------------------------------------------------------ training


def test_the_reference_gets_no_gradient_and_does_not_move(tokenizer, pairs):
    policy = model_of(TINY)
    reference = copy.deepcopy(policy)  # not frozen: its parameters still require gradients
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    dpo_train(policy, reference, pairs, tokenizer, steps=2, batch_pairs=2)
    assert all(p.grad is None for p in reference.parameters())
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())
    # the mistake: the reference's log-probabilities computed with gradients
    input_ids, prompt_lengths = dpo_batch(tokenizer, pairs[:2], 512, tokenizer.encode_single_token(PAD))
    ref = policy_logprobs(reference, input_ids, prompt_lengths, tokenizer.encode_single_token(PAD))
    pi = policy_logprobs(policy, input_ids, prompt_lengths, tokenizer.encode_single_token(PAD))
    dpo_loss(pi[:2], pi[2:], ref[:2], ref[2:], 0.1)[0].backward()
    # dpo_loss detaches the reference's log-probabilities: even then no gradient reaches it
    assert all(p.grad is None for p in reference.parameters())
    ref = policy_logprobs(reference, input_ids, prompt_lengths, tokenizer.encode_single_token(PAD))
    (policy_logprobs(policy, input_ids, prompt_lengths, tokenizer.encode_single_token(PAD)) - ref).sum().backward()
    # (what a loss without the detach does)
    assert any(p.grad is not None for p in reference.parameters())


def test_frozen_copy_and_same_model_error(tokenizer, pairs):
    policy = model_of(TINY)
    reference = frozen_copy(policy)
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training
    assert all(p.requires_grad for p in policy.parameters())
    with pytest.raises(ValueError, match="same model"):
        dpo_train(policy, policy, pairs, tokenizer, steps=1)


def test_a_short_run_starts_at_log_2_is_deterministic_and_widens_the_margin(tokenizer, pairs):
    runs = []
    for _ in range(2):
        policy = model_of(TINY)
        runs.append(dpo_train(policy, frozen_copy(policy), pairs[:4], tokenizer, steps=12, batch_pairs=4,
                              beta=0.5, max_lr=3e-3, warmup_steps=2))
    history = runs[0]
    assert history == runs[1]  # seeded: the same numbers twice
    assert set(history) == {"loss", "accuracy", "margin", "chosen_rewards", "rejected_rewards", "chosen_logps",
                            "rejected_logps"}
    # step 0: the policy is the reference, h = 0, the loss is log 2
    assert abs(history["loss"][0] - math.log(2)) < 1e-6 and history["margin"][0] == 0.0
    assert history["loss"][-1] < history["loss"][0] - 0.05
    assert history["margin"][-1] > 0.05 and history["accuracy"][-1] == 1.0


def test_smoke_two_steps_on_the_shipped_dense_model(tokenizer, pairs):
    from data import load_checkpoint
    config, state = load_checkpoint("dense")
    policy = Transformer(LlamaConfig(**config))
    policy.load_state_dict(state)
    history = dpo_train(policy, frozen_copy(policy), pairs, tokenizer, steps=2, batch_pairs=1)
    assert len(history["loss"]) == 2 and all(math.isfinite(v) for v in history["loss"])
    assert abs(history["loss"][0] - math.log(2)) < 1e-5


def test_ipo_and_label_smoothing_train_too(tokenizer, pairs):
    for options in (dict(loss_type="ipo"), dict(label_smoothing=0.1)):
        policy = model_of(TINY)
        history = dpo_train(policy, frozen_copy(policy), pairs[:2], tokenizer, steps=2, batch_pairs=2, **options)
        assert all(math.isfinite(v) for v in history["loss"])
    assert abs(history["loss"][0] - math.log(2)) < 1e-6  # h = 0: both sides of the smoothed loss are log 2


def test_sample_replies_and_policy_report(tokenizer, pairs):
    policy = model_of(TINY)
    replies = sample_replies(policy, tokenizer, [p["prompt"] for p in pairs[:3]], max_new_tokens=5, seed=1)
    assert replies == sample_replies(policy, tokenizer, [p["prompt"] for p in pairs[:3]], max_new_tokens=5, seed=1)
    end = tokenizer.encode_single_token("<|im_end|>")
    assert all(len(r) <= 5 or (len(r) <= 6 and r[-1] == end) for r in replies)
    report = policy_report(policy, frozen_copy(policy), tokenizer, pairs[:3], max_new_tokens=5, batch_size=2)
    assert report["kl"] == 0.0 and len(report["replies"]) == 3  # the policy is its own reference
    assert -1.5 <= report["gold"] <= 1.5 and report["chosen_logp"] < 0
    input_ids, prompt_lengths = pad_rows([[1, 2], [3]], [[4], [5, 6]], 0)
    assert input_ids.tolist() == [[1, 2, 4], [3, 5, 6]] and prompt_lengths.tolist() == [2, 1]


# ------------------------------------------------------------------------ the checks


@pytest.mark.parametrize("checkpoint_id", ["12.sequence_logprobs", "12.dpo_loss", "12.dpo_variants"])
def test_correct_rewrites_are_accepted(checkpoint_id):
    """Other right answers than the reference's pass: a rewrite of each DPO checkpoint."""
    from autograder.core import lookup, run

    def logprobs_by_loop(logits, input_ids, prompt_lengths, pad_id):
        sequence_logprobs(logits, input_ids, prompt_lengths, pad_id)  # the checks
        out = []
        for b in range(input_ids.shape[0]):
            n = int((input_ids[b] != pad_id).sum())
            rows = torch.arange(int(prompt_lengths[b]) - 1, n - 1)
            logp = logits[b, rows].double() - torch.logsumexp(logits[b, rows].double(), dim=-1, keepdim=True)
            out.append(logp[torch.arange(len(rows)), input_ids[b, rows + 1]].sum())
        return torch.stack(out).float()

    def loss_by_softplus(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.0,
                         loss_type="sigmoid"):
        dpo_variant_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing, loss_type)
        chosen = beta * (pi_chosen - ref_chosen.detach())
        rejected = beta * (pi_rejected - ref_rejected.detach())
        z = chosen - rejected
        if loss_type == "ipo":
            losses = (z / beta - 0.5 / beta) ** 2
        else:
            losses = (1 - label_smoothing) * F.softplus(-z) + label_smoothing * F.softplus(z)
        return (losses.sum() / len(losses), chosen.detach(), rejected.detach(), float((z > 0).sum()) / len(z),
                float(z.detach().sum()) / len(z))

    def loss_of_five(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta):
        return loss_by_softplus(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)

    answers = {"12.sequence_logprobs": logprobs_by_loop, "12.dpo_loss": loss_of_five,
               "12.dpo_variants": loss_by_softplus}
    result = run(lookup(checkpoint_id), answers[checkpoint_id])
    assert result.passed, result.report()
