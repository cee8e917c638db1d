"""Chapter 12's GRPO reference (solutions/grpo.py): the task and its reward, group advantages, the k3 KL,
the loss's three aggregations against loops, the common mistakes shown to give other numbers, the
errors, and short training runs."""

from __future__ import annotations

import math

import pytest
import torch

from solutions.dpo import frozen_copy
from solutions.grpo import (accuracy, group_advantages, grpo_loss, grpo_train, k3_kl, pass_at_k, qa_problems,
                            rl_problems, sample_group, verifiable_reward, zero_variance_fraction)
from solutions.model import LlamaConfig, Transformer

TOL = 1e-6
TINY = dict(vocab_size=4096, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, max_seq_len=512,
            tie_embeddings=True)


@pytest.fixture(scope="module")
def tokenizer():
    from data import course_tokenizer
    return course_tokenizer()


# ------------------------------------------------------------------------ the task


def test_qa_problems_are_chapter_08s_questions():
    from data.instructions import load_instructions

    problems = qa_problems("test", 20)
    conversations = load_instructions("test", 20)
    assert len(problems) == 20
    for p, c in zip(problems, conversations):
        assert p["prompt"] == c["messages"][:-1] and p["prompt"][-1]["role"] == "user"
        assert p["answer"] == c["messages"][-1]["content"] and p["fact"] == c["fact"] and p["task"] == c["task"]
        # the answer sentence is right, and names the fact as its last word
        assert verifiable_reward(p["answer"], p["answer"]) == 1.0 and p["answer"].rstrip(".").endswith(p["fact"])


def test_rl_problems_are_new_questions_in_the_same_form():
    from data.instructions import load_instructions
    from data.preferences import load_preferences

    problems, pairs = rl_problems("train", 50), load_preferences("train", 50)
    assert [p["prompt"] for p in problems] == [q["prompt"] for q in pairs]
    for p in problems:
        assert p["prompt"][-1]["role"] == "user" and set(p) == {"prompt", "answer", "fact", "task"}
        assert p["answer"].rstrip(".").endswith(p["fact"])
        assert verifiable_reward(p["answer"], p["answer"]) == 1.0
    # none of them is a question the SFT model trained on
    seen = {c["messages"][-2]["content"] for c in load_instructions("train")}
    assert not seen & {p["prompt"][-1]["content"] for p in rl_problems("train")}


@pytest.mark.parametrize("reply, answer, reward", [
    ("Robin lives in Elmford.", "Robin lives in Elmford.", 1.0), ("Robin lives in Elmford", "Robin lives in Elmford.", 1.0),
    ("  Rusty is  a hamster \n", "Rusty is a hamster.", 1.0), ("Rusty is a parrot! What a bird.", "Rusty is a parrot.", 1.0),
    ("The story is about Ned. Mia lives in Elmford.", "The story is about Ned.", 1.0),
    ("Lucia's best friend is Ned.", "Mia's best friend is Ned.", 0.0),  # the right fact, the wrong hero
    ("Robin lives in Elmfordshire.", "Robin lives in Elmford.", 0.0), ("I think Robin lives in Elmford.", "Robin lives in Elmford.", 0.0),
    ("The story is about Mia. The story is about Ned.", "The story is about Ned.", 0.0),
    ("The story is about ned.", "The story is about Ned.", 0.0), ("The story is about Renee.", "The story is about Renée.", 0.0),
    ("", "The story is about Ned.", 0.0), ("Elmford.", "Robin lives in Elmford.", 0.0),
])
def test_verifiable_reward(reply, answer, reward):
    assert verifiable_reward(reply, answer) == reward


def test_verifiable_reward_errors():
    for answer in ("", "  ", "...", None):
        with pytest.raises(ValueError):
            verifiable_reward("Ned.", answer)
    with pytest.raises(ValueError, match="string"):
        verifiable_reward(None, "Ned.")


# ------------------------------------------------------------------------ advantages


def test_group_advantages_against_per_group_mean_and_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 1.0, 0.0])
    adv = group_advantages(rewards, 4)
    want = []
    for g in range(3):
        group = rewards[4 * g: 4 * g + 4]
        want += ((group - group.mean()) / (group.std() + 1e-4)).tolist()
    assert torch.allclose(adv, torch.tensor(want), atol=TOL)
    assert zero_variance_fraction(rewards, 4) == pytest.approx(1 / 3)
    assert torch.equal(adv[4:8], torch.zeros(4))  # a group of equal rewards teaches nothing
    none = group_advantages(rewards, 4, scale="none")
    assert torch.allclose(none, rewards - rewards.view(3, 4).mean(1).repeat_interleave(4), atol=TOL)
    # the mistake: the std (and mean) of the whole batch instead of each group's
    batch_wide = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
    assert (adv - batch_wide).abs().max() > 0.1
    per_group_mean_batch_std = (rewards - rewards.view(3, 4).mean(1).repeat_interleave(4)) / (rewards.std() + 1e-4)
    assert (adv - per_group_mean_batch_std).abs().max() > 0.1


def test_group_advantages_sum_to_zero_per_group_and_zero_variance_fraction():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (64,), generator=g).float()
    adv = group_advantages(rewards, 8)
    assert torch.allclose(adv.view(8, 8).sum(1), torch.zeros(8), atol=1e-5)
    grouped = rewards.view(8, 8)
    assert zero_variance_fraction(rewards, 8) == sum(len(set(r.tolist())) == 1 for r in grouped) / 8
    assert zero_variance_fraction(torch.ones(6), 3) == 1.0
    assert zero_variance_fraction(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2) == 0.5


@pytest.mark.parametrize("fn", [group_advantages, zero_variance_fraction])
def test_group_errors(fn):
    with pytest.raises(ValueError, match="group of one"):
        fn(torch.ones(4), 1)
    with pytest.raises(ValueError, match="empty"):
        fn(torch.ones(0), 2)
    with pytest.raises(ValueError, match="do not split"):
        fn(torch.ones(7), 2)
    with pytest.raises(ValueError, match="1-d"):
        fn(torch.ones(2, 4), 4)


def test_group_advantages_scale_error():
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.ones(4), 2, scale="batch")


# ------------------------------------------------------------------------ the KL


def test_k3_is_non_negative_and_zero_where_the_models_agree():
    g = torch.Generator().manual_seed(0)
    logp, ref = -5 * torch.rand(50, generator=g), -5 * torch.rand(50, generator=g)
    kl = k3_kl(logp, ref)
    assert (kl >= 0).all() and (kl > 0).all()
    assert torch.equal(k3_kl(logp, logp), torch.zeros(50))
    d = (ref - logp).double()
    assert torch.allclose(kl.double(), d.exp() - d - 1, atol=1e-6)


def test_k3_averaged_under_the_policy_is_the_kl_and_upside_down_it_is_not():
    g = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(torch.randn(20, generator=g, dtype=torch.float64), 0)
    logq = torch.log_softmax(torch.randn(20, generator=g, dtype=torch.float64), 0)
    kl = (logp.exp() * (logp - logq)).sum()  # KL(pi || ref), brute force over the vocabulary
    expected_k3 = (logp.exp() * k3_kl(logp, logq)).sum()  # E_{o ~ pi}[k3]
    assert abs(expected_k3 - kl) < 1e-12
    upside_down = (logp.exp() * k3_kl(logq, logp)).sum()  # exp(logp - ref) - (logp - ref) - 1
    assert abs(upside_down - kl) > 0.05


def test_k3_shape_error():
    with pytest.raises(ValueError, match="same shape"):
        k3_kl(torch.zeros(2, 3), torch.zeros(2, 4))


# ------------------------------------------------------------------------ the loss


def loss_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    old = -3 * torch.rand(3, 5, generator=g, dtype=torch.float64)
    logp = old + 0.4 * torch.randn(3, 5, generator=g, dtype=torch.float64)  # ratios from about 0.5 to 2
    ref = old + 0.3 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    return logp, old, ref, adv, mask


def per_token_loop(logp, old, ref, adv, mask, eps, beta):
    """The per-token loss written element by element, None on padding."""
    out = []
    for b in range(mask.shape[0]):
        row = []
        for t in range(mask.shape[1]):
            if not mask[b, t]:
                row.append(None)
                continue
            r = math.exp(logp[b, t] - old[b, t])
            a = float(adv[b])
            surrogate = min(r * a, min(max(r, 1 - eps), 1 + eps) * a)
            d = float(ref[b, t] - logp[b, t])
            row.append(-surrogate + beta * (math.exp(d) - d - 1))
        out.append(row)
    return out


@pytest.mark.parametrize("eps, beta", [(0.2, 0.04), (0.1, 0.0), (0.3, 0.5)])
def test_the_three_aggregations_against_loops(eps, beta):
    logp, old, ref, adv, mask = loss_inputs()
    tokens = per_token_loop(logp, old, ref, adv, mask, eps, beta)
    real = [[v for v in row if v is not None] for row in tokens]
    want = {"sequence": sum(sum(r) / len(r) for r in real) / 3,
            "token": sum(sum(r) for r in real) / sum(len(r) for r in real),
            "dr_grpo": sum(sum(r) for r in real) / (3 * 5)}
    for aggregation, value in want.items():
        loss, stats = grpo_loss(logp, old, ref, adv, mask, eps, beta, aggregation)
        assert abs(loss.item() - value) < 1e-9, aggregation
    assert abs(grpo_loss(logp, old, ref, adv, mask, eps, beta, "dr_grpo", max_length=8)[0].item()
               - sum(sum(r) for r in real) / (3 * 8)) < 1e-9
    # the three differ on replies of different lengths
    assert len({round(v, 6) for v in want.values()}) == 3
    # stats: the mean k3 over the reply tokens, and a clip that was active somewhere
    kls = [math.exp(float(ref[b, t] - logp[b, t])) - float(ref[b, t] - logp[b, t]) - 1
           for b in range(3) for t in range(5) if mask[b, t]]
    assert stats["kl"] == pytest.approx(sum(kls) / len(kls), abs=1e-9)
    assert 0 < stats["clip_fraction"] < 1


def test_the_common_mistakes_give_other_losses():
    logp, old, ref, adv, mask = loss_inputs()
    eps, beta = 0.2, 0.1
    loss = grpo_loss(logp, old, ref, adv, mask, eps, beta)[0].item()
    everywhere = torch.ones_like(mask)
    # advantages broadcast to the padding too
    on_padding = grpo_loss(logp, old, ref, adv, everywhere, eps, beta)[0].item()
    assert abs(loss - on_padding) > 1e-2
    # the KL ratio upside down: exp(logp - ref) - (logp - ref) - 1
    upside_down = grpo_loss(logp, old, 2 * logp - ref, adv, mask, eps, beta)[0].item()
    assert abs(loss - upside_down) > 1e-3
    # no clipping at all
    unclipped = grpo_loss(logp, old, ref, adv, mask, 1e6, beta)[0].item()
    assert abs(loss - unclipped) > 1e-2


def test_padding_never_reaches_the_loss_or_its_gradient():
    logp, old, ref, adv, mask = loss_inputs()
    garbage = logp.clone()
    garbage[~mask] = float("nan")
    old_garbage, ref_garbage = old.clone(), ref.clone()
    old_garbage[~mask], ref_garbage[~mask] = float("-inf"), float("inf")
    for aggregation in ("sequence", "token", "dr_grpo"):
        clean = grpo_loss(logp, old, ref, adv, mask, 0.2, 0.1, aggregation)[0]
        x = garbage.clone().requires_grad_(True)
        dirty = grpo_loss(x, old_garbage, ref_garbage, adv, mask, 0.2, 0.1, aggregation)[0]
        dirty.backward()
        assert abs(clean.item() - dirty.item()) < 1e-12
        assert torch.isfinite(x.grad).all() and (x.grad[~mask] == 0).all()


def test_gradient_at_ratio_one_is_the_advantage_over_the_length():
    """With logprobs = old (one update per batch) and no KL, d loss / d logp[b, t] = -A_b / (B |o_b|)."""
    _, old, _, adv, mask = loss_inputs()
    x = old.clone().requires_grad_(True)
    loss, stats = grpo_loss(x, old, None, adv, mask, 0.2, 0.0)
    loss.backward()
    want = -(adv[:, None] / (3 * mask.sum(1, keepdim=True))) * mask
    assert torch.allclose(x.grad, want, atol=1e-12)
    assert stats["clip_fraction"] == 0 and stats["kl"] == 0


def test_grpo_loss_errors():
    logp, old, ref, adv, mask = loss_inputs()
    with pytest.raises(ValueError, match="aggregation"):
        grpo_loss(logp, old, ref, adv, mask, aggregation="mean")
    with pytest.raises(ValueError, match="clip_eps"):
        grpo_loss(logp, old, ref, adv, mask, clip_eps=0.0)
    with pytest.raises(ValueError, match="beta"):
        grpo_loss(logp, old, ref, adv, mask, beta=-0.1)
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(logp, old, None, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="old_logprobs"):
        grpo_loss(logp, old[:, :4], ref, adv, mask)
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(logp, old, ref, adv, mask[:2])
    with pytest.raises(ValueError, match="one per reply"):
        grpo_loss(logp, old, ref, adv[:, None].expand(3, 5), mask)
    with pytest.raises(ValueError, match="no reply token"):
        grpo_loss(logp, old, ref, adv, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="row 1"):
        grpo_loss(logp, old, ref, adv, mask & torch.tensor([True, False, True])[:, None])
    with pytest.raises(ValueError, match="max_length"):
        grpo_loss(logp, old, ref, adv, mask, aggregation="dr_grpo", max_length=4)


# ------------------------------------------------------------------------ training


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return Transformer(LlamaConfig(**TINY)).eval()


def test_one_step_on_a_tiny_model_is_deterministic_and_leaves_the_reference_alone(tokenizer):
    problems = qa_problems("train", 4)
    runs = []
    for _ in range(2):
        policy = tiny_model()
        reference = tiny_model(seed=1)  # another model (a KL to pull on), its parameters requiring gradients
        before = [p.clone() for p in policy.parameters()]
        history = grpo_train(policy, reference, problems, tokenizer, group_size=3, steps=2, prompts_per_step=2,
                             max_new_tokens=4, updates_per_batch=2, max_lr=1e-3)
        assert all(p.grad is None for p in reference.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
        runs.append(history)
    assert runs[0] == runs[1]
    history = runs[0]
    assert set(history) == {"reward", "zero_variance", "kl", "loss", "clip_fraction", "reply_length"}
    assert len(history["reward"]) == 2 and history["kl"][0] > 0
    assert all(0 <= v <= 1 for v in history["reward"] + history["zero_variance"])
    assert all(1 <= v <= 4 for v in history["reply_length"])


def test_grpo_train_errors(tokenizer):
    policy = tiny_model()
    problems = qa_problems("train", 2)
    with pytest.raises(ValueError, match="same model"):
        grpo_train(policy, policy, problems, tokenizer)
    with pytest.raises(ValueError, match="reference"):
        grpo_train(policy, None, problems, tokenizer, beta=0.1)
    with pytest.raises(ValueError, match="group_size"):
        grpo_train(policy, frozen_copy(policy), problems, tokenizer, group_size=1, steps=1, max_new_tokens=1)
    with pytest.raises(ValueError, match="no problems"):
        grpo_train(policy, frozen_copy(policy), [], tokenizer)


def test_smoke_one_step_on_the_shipped_dense_model(tokenizer):
    from data import load_checkpoint
    config, state = load_checkpoint("dense")
    policy = Transformer(LlamaConfig(**config))
    policy.load_state_dict(state)
    history = grpo_train(policy, frozen_copy(policy), qa_problems("train", 2), tokenizer, group_size=2, steps=1,
                         prompts_per_step=1, max_new_tokens=6)
    assert len(history["reward"]) == 1 and all(math.isfinite(v[0]) for v in history.values())
    assert history["kl"][0] == 0.0  # the policy starts as the reference


def test_sample_group_decodes_each_row_as_one_reply_alone(tokenizer):
    """The group shares the prompt's keys and values; each row is what decoding it alone, with the same
    uniform numbers, gives; a reply that stopped ends with <|im_end|>, one cut at max_new_tokens does not."""
    from solutions.generate import sample_next

    model = tiny_model()
    end, pad = tokenizer.encode_single_token("<|im_end|>"), tokenizer.encode_single_token("<|pad|>")
    prompt = tokenizer.encode_ordinary("Once upon a time")
    g = torch.Generator().manual_seed(3)
    replies = sample_group(model, prompt, 4, 6, 1.0, end, pad, torch.Generator().manual_seed(3))
    draws = torch.rand(6, 4, generator=g)  # (step, row): the draws sample_group makes
    for row, reply in enumerate(replies):
        tokens, alone = list(prompt), []
        for step in range(6):
            logits = model(torch.tensor([tokens]))[:, -1].float()
            logits[:, pad] = float("-inf")
            token = int(sample_next(logits, 1.0, None, 1.0, draws[step, row:row + 1]))
            alone.append(token)
            tokens.append(token)
            if token == end:
                break
        assert reply == alone, row
        assert len(reply) == 6 or reply[-1] == end


def test_the_loop_scores_replies_and_uses_their_advantages(tokenizer, monkeypatch):
    """Scripted replies, 3 of 8 right: no zero-variance group, and the policy moves with no KL
    term (beta 0), so only the advantages can have moved it."""
    import solutions.grpo as grpo
    problems = qa_problems("train", 1) * 2  # the same question twice: the shuffle cannot matter
    end = tokenizer.encode_single_token("<|im_end|>")
    right = tokenizer.encode_ordinary(problems[0]["answer"]) + [end]
    wrong = tokenizer.encode_ordinary("no idea.") + [end]  # (verifiable_reward compares with the answer sentence)
    script = iter([[right, wrong, wrong, right], [wrong, right, wrong, wrong]])
    monkeypatch.setattr(grpo, "sample_group", lambda *args, **kwargs: next(script))
    policy = tiny_model()
    before = [p.clone() for p in policy.parameters()]
    history = grpo_train(policy, None, problems, tokenizer, group_size=4, steps=1, prompts_per_step=2, beta=0.0,
                         max_new_tokens=16, max_lr=1e-3, seed=5)
    assert history["reward"] == [3 / 8] and history["zero_variance"] == [0.0] and history["kl"] == [0.0]
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_accuracy_and_pass_at_k_on_scripted_replies(tokenizer, monkeypatch):
    import solutions.grpo as grpo
    problems = qa_problems("test", 3)
    end = tokenizer.encode_single_token("<|im_end|>")
    groups = iter([[tokenizer.encode_ordinary(problems[0]["answer"]) + [end], tokenizer.encode_ordinary("no.")],
                   [tokenizer.encode_ordinary("no."), tokenizer.encode_ordinary("no.")],
                   [tokenizer.encode_ordinary(problems[2]["answer"]) + [end]] * 2])
    monkeypatch.setattr(grpo, "sample_group", lambda *args, **kwargs: next(groups))
    passed, mean, zero = pass_at_k(tiny_model(), tokenizer, problems, k=2)
    assert passed == pytest.approx(2 / 3) and mean == pytest.approx(3 / 6) and zero == pytest.approx(2 / 3)
    right, fact, replies = accuracy(tiny_model(), tokenizer, problems, max_new_tokens=2)
    assert len(replies) == 3 and 0 <= right <= 1 and 0 <= fact <= 1


# ------------------------------------------------------------------------ the checks


@pytest.mark.parametrize("checkpoint_id", ["12.verifiable_reward", "12.group_advantages", "12.zero_variance",
                                           "12.grpo_loss"])
def test_correct_rewrites_are_accepted(checkpoint_id):
    """Other right answers than the reference's pass: a rewrite of each GRPO checkpoint."""
    import re

    from autograder.core import lookup, run

    def reward_by_regex(reply, answer):
        verifiable_reward(reply, answer)  # the checks (types, an answer with no word)

        def words(text):
            match = re.match(r"\s*(.*?[.!?])(?:\s|$)", text + " ", re.S)
            return (match.group(1) if match else text).strip().rstrip(".!?").split()

        return float(words(reply) == words(answer))

    def advantages_by_loop(rewards, group_size, scale="std", eps=1e-4):
        group_advantages(rewards, group_size, scale, eps)  # the checks
        out = []
        for start in range(0, len(rewards), group_size):
            group = rewards[start:start + group_size].double()
            mean = group.sum() / group_size
            adv = group - mean
            if scale == "std":
                adv = adv / (((group - mean) ** 2).sum() / (group_size - 1)).sqrt().add(eps)
            out.append(adv)
        return torch.cat(out).float()

    def zero_variance_by_sets(rewards, group_size):
        zero_variance_fraction(rewards, group_size)  # the checks
        groups = [rewards[i:i + group_size].tolist() for i in range(0, len(rewards), group_size)]
        return sum(len(set(g)) == 1 for g in groups) / len(groups)

    def loss_with_masked_sums(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2, beta=0.04,
                              aggregation="sequence", max_length=None):
        grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, max_length)
        m = mask.float()
        lp = logprobs.masked_fill(~mask, 0.0)
        log_ratio = lp - old_logprobs.detach().masked_fill(~mask, 0.0)
        ratio = log_ratio.exp()
        a = advantages.detach().unsqueeze(1)
        per_token = torch.max(-a * ratio, -a * ratio.clamp(1 - clip_eps, 1 + clip_eps))
        kl = torch.zeros_like(lp)
        if ref_logprobs is not None:
            log_r = ref_logprobs.detach().masked_fill(~mask, 0.0) - lp
            kl = (log_r.exp() - 1 - log_r) * m
        per_token = (per_token + beta * kl) * m
        if aggregation == "sequence":
            loss = ((per_token.sum(-1) / m.sum(-1)).sum()) / len(m)
        elif aggregation == "token":
            loss = per_token.sum() / m.sum()
        else:
            loss = per_token.sum() / (m.shape[0] * (max_length or m.shape[1]))
        clipped = ((ratio > 1 + clip_eps) & (a > 0)) | ((ratio < 1 - clip_eps) & (a < 0))
        return loss, {"kl": (kl.sum() / m.sum()).item(), "clip_fraction": ((clipped & mask).sum() / m.sum()).item()}

    answers = {"12.verifiable_reward": reward_by_regex, "12.group_advantages": advantages_by_loop,
               "12.zero_variance": zero_variance_by_sets, "12.grpo_loss": loss_with_masked_sums}
    result = run(lookup(checkpoint_id), answers[checkpoint_id])
    assert result.passed, result.report()


def test_group_token_logprobs_equal_the_full_rows_and_their_gradients(tokenizer):
    """The prompt run once and shared by the group: the same log-probabilities and the same gradients
    as running every row prompt + reply whole, read at the reply's tokens."""
    from solutions.grpo import group_token_logprobs

    model = tiny_model()
    prompt = tokenizer.encode_ordinary("Robin lives in Elmford. Where does Robin live?")
    replies = torch.tensor([[11, 12, 13, 14], [21, 22, 5, 5], [31, 5, 5, 5]])  # right-padded with 5
    lengths = [4, 2, 1]
    got = group_token_logprobs(model, prompt, replies)
    got_sum = sum(got[b, :n].sum() for b, n in enumerate(lengths))
    got_sum.backward()
    shared = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    want_sum = 0
    for b, n in enumerate(lengths):
        row = torch.tensor([prompt + replies[b, :n].tolist()])
        logp = torch.log_softmax(model(row)[0, :-1].float(), -1).gather(-1, row[0, 1:, None]).squeeze(-1)
        want = logp[len(prompt) - 1:]  # (n,): the reply's tokens
        assert torch.allclose(got[b, :n], want, atol=1e-5), b
        want_sum = want_sum + want.sum()
    want_sum.backward()
    for a, b in zip(shared, (p.grad for p in model.parameters())):
        assert torch.allclose(a, b, atol=1e-5)
    assert group_token_logprobs(model, prompt, replies[:, :1]).shape == (3, 1)
