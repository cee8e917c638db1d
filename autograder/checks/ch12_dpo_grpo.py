"""Chapter 12 checkpoints: DPO's reply log-probabilities and loss (with its bonus variants, label
smoothing and IPO), and GRPO's verifiable reward, group-relative advantages, zero-variance share
and clipped loss with the k3 KL.

Every checkpoint is a function of plain data: log-probabilities, logits, rewards and masks, no
model (the chapter's given loops call these functions on the course's model).

How the cases expose mistakes: logits drawn at random per position with an offset per position
(so a missing log-softmax is far off) and rows padded by different amounts (so padding, the
prompt, a missing shift or the reply's last token each change the sum); replies of one and of
many tokens (a mean is not a sum); log-probability gaps of -150 (where ``log(sigmoid)`` of float32
is ``log(0)``), ties (not a win), betas other than 1 (beta applied twice shows); rewards of
groups laid out consecutively, with group sizes 2 to 8 and one group of equal rewards first (a
missing epsilon gives 0 / 0 there, and changes every other advantage by far more than rounding),
an ``eps`` other than the default, int64 and float64 rewards (the advantages are float32 either
way: ``exact_dtype``), and equal rewards such as 0.9 whose float32 std is not exactly 0 (only
comparing the group's extremes is exact); replies whose first sentence ends at '?', at '...'
or '!!', or holds a period with no space after it ('2.5');
per-token log-probabilities whose ratios leave the clip range on both sides, with advantages of
both signs, padding filled with large finite garbage (a loss that reaches the padding shows) and
with -inf and NaN (a mask applied by multiplying lets them through: 0 * inf is NaN), replies of
different lengths (the three aggregations differ), and references both above and below the
policy (the k3 ratio's direction shows).
Every ``ValueError`` the references document has a case.

A hint names a mistake only on evidence: a known mistake's output (the reference with that one
mistake) matched on every case where it shows, or the exception raised. Inputs are drawn in float64 (``checks/inputs.py``) and cast.
"""

from __future__ import annotations

import functools
import math
import random
import re
import warnings

import torch
import torch.nn.functional as F

from ..core import Case, Checkpoint, register
from ..reference import reference
from .inputs import generator, randn, tensor_label

dpo = functools.partial(reference, "solutions.dpo")
grpo = functools.partial(reference, "solutions.grpo")
TOL = 1e-5
PAD = 31  # the cases' pad id: the last id of a 32-id vocabulary (small tensors keep the release fixtures small)


def _show(*args):
    return tuple(tensor_label(a) for a in args)


def _ids(g: torch.Generator, lengths: list[int], seq: int, pad_id: int = PAD, high: int = 30) -> torch.Tensor:
    """Right-padded token ids: row ``b`` has ``lengths[b]`` real tokens (ids 1 .. ``high - 1``), then pads."""
    ids = torch.randint(1, high, (len(lengths), seq), generator=g)
    for b, n in enumerate(lengths):
        ids[b, n:] = pad_id
    return ids


# ---------------------------------------------------------------------------- 12.sequence_logprobs


def _logprob_variant(kind: str):
    def wrong(logits, input_ids, prompt_lengths, pad_id):
        if kind != "no_checks":
            dpo("sequence_logprobs")(logits, input_ids, prompt_lengths, pad_id)  # refuses what the reference refuses
        prompt_lengths = torch.as_tensor(prompt_lengths)
        seq = input_ids.shape[1]
        n_real = (input_ids != pad_id).sum(1)
        target = torch.arange(1, seq)[None, :]  # (1, seq - 1): the token each entry scores
        start = prompt_lengths[:, None] - (1 if kind == "prompt_end" else 0)
        end = n_real[:, None] - (1 if kind == "drops_end" else 0)
        if kind == "prompt":
            start = torch.ones_like(start)
        if kind == "padding":
            end = torch.full_like(end, seq)
        mask = (target >= start) & (target < end)
        if kind == "no_shift":  # position t scores token t
            logp = torch.log_softmax(logits[:, 1:].float(), -1)
        else:
            logp = torch.log_softmax(logits[:, :-1].float(), -1)
        if kind == "no_log_softmax":
            logp = logits[:, :-1].float()
        picked = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        total = torch.where(mask, picked, torch.zeros_like(picked)).sum(1)
        return total / mask.sum(1) if kind == "mean" else total

    wrong.__name__ = f"sequence_logprobs_{kind}"
    return wrong


LOGPROB_MISTAKES = ("prompt", "padding", "no_shift", "mean", "no_log_softmax", "prompt_end", "drops_end", "no_checks")


def logprob_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, lengths, prompts, seq, hint="default", pad_id=PAD, vocab=32, ids=None, logits=None,
             probe=False):
        ids = _ids(g, lengths, seq, pad_id, high=vocab - 2) if ids is None else ids
        if logits is None:  # an offset per position: raw logits are far from log-probabilities
            logits = randn(g, ids.shape[0], ids.shape[1], vocab, scale=2.0) + randn(g, ids.shape[0], ids.shape[1], 1,
                                                                                   scale=3.0)
        prompt_lengths = torch.tensor(prompts)
        show = (tensor_label(logits, "logits"), tensor_label(ids, "input_ids"), tensor_label(prompt_lengths), pad_id)
        return Case(label, (logits, ids, prompt_lengths, pad_id), hint, show=show, probe=probe)

    left = _ids(g, [7, 7], 7)
    left[1] = torch.cat([torch.full((2,), PAD), left[1, :5]])  # two pads, then five real tokens
    inner = _ids(g, [8, 8], 8)
    inner[0, 4] = PAD
    cases = [
        case("prompts of 4 and 5 tokens, replies of 4 and 3: only the reply's tokens count", [8, 8], [4, 5], 8,
             "prompt"),
        case("row 1 has 6 real tokens and 3 pads: padding is not part of the reply", [9, 6], [3, 2], 9, "padding"),
        case("position t's logits score token t + 1: shift by one", [7, 9], [2, 4], 9, "no_shift"),
        case("replies of 1 and 6 tokens: log p(reply) is a sum over its tokens, not a mean", [5, 10], [4, 4], 10,
             "mean"),
        case("logits with a large offset per position: log-softmax them before picking", [6, 8], [2, 3], 8,
             "no_log_softmax"),
        case("the reply starts at token prompt_length: the prompt's last token is not the reply's first", [6, 7],
             [3, 5], 7, "prompt_end"),
        case("each reply's last real token (its <|im_end|>) is a reply token", [7, 5, 9], [3, 2, 6], 9, "drops_end"),
        case("pad id 0 (another tokenizer's): padding is whatever equals pad_id", [6, 4], [2, 1], 7, pad_id=0),
        case("a row padded on the left: ValueError (pad on the right)", [7, 7], [1, 3], 7, "no_checks", ids=left),
        case("a pad between real tokens: ValueError", [8, 8], [1, 1], 8, "no_checks", ids=inner),
        case("a row whose reply has no token (its real tokens end where its prompt does): ValueError", [4, 6],
             [4, 2], 6, "no_checks"),
        case("an empty prompt (nothing to condition the first token on): ValueError", [5, 6], [0, 2], 6, "no_checks"),
        case("logits for 6 positions and input_ids of 7: ValueError", [6, 7], [2, 2], 7, "no_checks",
             logits=randn(g, 2, 6, 32)),
        case("three prompt lengths for two rows: ValueError", [5, 6], [1, 2, 3], 6, "no_checks"),
    ]
    for n in range(3):
        batch, seq = rng.randint(2, 5), rng.randint(8, 16)
        lengths = [rng.randint(3, seq) for _ in range(batch)]
        prompts = [rng.randint(1, n_real - 1) for n_real in lengths]
        cases.append(case(f"random batch (case {n + 1})", lengths, prompts, seq, probe=n > 0))
    return cases


register(Checkpoint(
    id="12.sequence_logprobs",
    points=2,
    title="each reply's log-probability, summed over the reply's tokens only",
    signature="sequence_logprobs(logits, input_ids, prompt_lengths, pad_id)",
    cases=logprob_cases,
    reference=dpo("sequence_logprobs"),
    tol=TOL,
    grad_probe=True,
    fingerprints=[(kind, _logprob_variant(kind)) for kind in LOGPROB_MISTAKES],
    hints={
        "default": "logp = torch.log_softmax(logits[:, :-1].float(), -1) (batch, seq - 1, vocab); picked = "
        "logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1); entry t scores token j = t + 1, a reply token when "
        "prompt_lengths[b] <= j < n_b (n_b = the row's non-pad tokens); sum picked over those entries. Raise "
        "ValueError for mismatched shapes, a pad before a real token, an empty prompt or a row with no reply token.",
        "prompt": "That sums the prompt's tokens too: the prompt is given, not generated, and both replies to a pair "
        "share it. Count only tokens j >= prompt_lengths[b].",
        "padding": "That sums over the padding too: stop at each row's last real token, j < n_b with n_b = "
        "(input_ids != pad_id).sum(1).",
        "no_shift": "The logits at position t predict token t + 1: pair logits[:, :-1] with input_ids[:, 1:]. "
        "Yours scores each token with the logits computed at its own position (which have already seen it).",
        "mean": "log pi(y | x) is the log-probability of the whole reply: a sum over its tokens, not a mean. (IPO in "
        "TRL averages; DPO's derivation sums.)",
        "no_log_softmax": "Logits are not log-probabilities: take torch.log_softmax(logits, dim=-1) over the "
        "vocabulary first, then pick each target token's entry.",
        "prompt_end": "The reply's first token is token prompt_lengths[b]; the entry that scores it is "
        "prompt_lengths[b] - 1. Yours also counts the prompt's last token (off by one).",
        "drops_end": "The reply's last real token, its <|im_end|>, is part of the reply: the policy must learn when to "
        "stop. Keep j up to n_b - 1, inclusive.",
        "no_checks": "Check the inputs and raise ValueError: logits (batch, seq, vocab) for input_ids (batch, seq), one "
        "prompt length per row, at least one prompt token, no pad before a real token (right padding), and at least "
        "one reply token per row.",
    },
))


# ---------------------------------------------------------------------------- 12.dpo_loss


def _dpo_variant(kind: str):
    def wrong(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta):
        if kind != "no_checks":
            dpo("dpo_loss")(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)
        pc, pr, rc, rr = (t.float() for t in (pi_chosen, pi_rejected, ref_chosen, ref_rejected))
        rc, rr = rc.detach(), rr.detach()
        if kind == "swapped":
            pc, pr, rc, rr = pr, pc, rr, rc
        if kind == "no_reference":
            rc, rr = torch.zeros_like(rc), torch.zeros_like(rr)
        chosen_rewards, rejected_rewards = beta * (pc - rc), beta * (pr - rr)
        h = (pc - rc) - (pr - rr)
        logits = beta * (chosen_rewards - rejected_rewards) if kind == "beta_twice" else beta * h
        losses = -torch.log(torch.sigmoid(logits)) if kind == "log_sigmoid" else -F.logsigmoid(logits)
        loss = losses.sum() if kind == "sum" else losses.mean()
        if pc.numel() == 0:  # an empty batch (no_checks): 0 rather than NaN (NaN != NaN in fixtures)
            return losses.sum(), chosen_rewards, rejected_rewards, 0.0, 0.0
        if kind == "rewards_no_beta":
            chosen_rewards, rejected_rewards = pc - rc, pr - rr
        chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
        diff = chosen_rewards - rejected_rewards
        accuracy = ((diff >= 0) if kind == "ties" else (diff > 0)).float().mean().item()
        return loss, chosen_rewards, rejected_rewards, accuracy, diff.mean().item()

    wrong.__name__ = f"dpo_loss_{kind}"
    return wrong


DPO_MISTAKES = ("swapped", "no_reference", "beta_twice", "log_sigmoid", "sum", "rewards_no_beta", "ties", "no_checks")


def _logps(g: torch.Generator, n: int, gap: float = 0.0) -> tuple[torch.Tensor, ...]:
    """Summed reply log-probabilities of n pairs: policy and reference near each other, around -20."""
    ref_c, ref_r = randn(g, n, scale=4.0) - 20, randn(g, n, scale=4.0) - 20
    pi_c = ref_c + randn(g, n, scale=1.5) + gap
    pi_r = ref_r + randn(g, n, scale=1.5) - gap
    return pi_c, pi_r, ref_c, ref_r


def dpo_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, logps, beta, hint="default", probe=False):
        args = (*logps, beta)
        return Case(label, args, hint, show=_show(*args), probe=probe)

    same = randn(g, 4, scale=3.0) - 15
    ties = (torch.tensor([-10.0, -12.0, -8.0, -9.0]), torch.tensor([-11.0, -12.0, -8.0, -7.0]),
            torch.tensor([-10.0, -11.0, -9.0, -9.0]), torch.tensor([-11.0, -11.0, -9.0, -8.0]))
    cases = [
        case("the policy raised the chosen replies and lowered the rejected ones: the loss is below log 2",
             _logps(g, 6, gap=1.0), 0.1, "swapped"),
        case("the implicit reward is beta * (log pi - log pi_ref): the reference's log-probabilities count",
             _logps(g, 5), 0.5, "no_reference"),
        case("beta = 0.25: it multiplies the log-ratio margin once", _logps(g, 5, gap=0.5), 0.25, "beta_twice"),
        case("margins of -150 and +120 at beta 2: -log sigmoid is 300, not infinity",
             (torch.tensor([-10.0, -160.0, -5.0]), torch.tensor([-10.0, -10.0, -125.0]),
              torch.tensor([-10.0, -10.0, -5.0]), torch.tensor([-10.0, -10.0, -5.0])), 2.0, "log_sigmoid"),
        case("7 pairs: the loss is a mean over pairs, not a sum", _logps(g, 7), 0.1, "sum"),
        case("chosen_rewards and rejected_rewards are beta times the log-ratios", _logps(g, 4), 0.3,
             "rewards_no_beta"),
        case("two pairs with equal implicit rewards: a tie is not a win", ties, 0.5, "ties"),
        case("the policy equal to the reference: every reward 0, the loss log 2, accuracy 0",
             (same, same - 2.0, same, same - 2.0), 0.1, "ties"),
        case("beta = 0: ValueError (beta > 0 is the KL leash)", _logps(g, 3), 0.0, "no_checks"),
        case("beta = -0.1: ValueError", _logps(g, 3), -0.1, "no_checks"),
        case("3 chosen log-probabilities and 2 rejected: ValueError", (*_logps(g, 3)[:3], randn(g, 2) - 20), 0.1,
             "no_checks"),
        case("log-probabilities of shape (4, 1): ValueError (one value per pair)",
             tuple(t[:, None] for t in _logps(g, 4)), 0.1, "no_checks"),
        case("no pairs: ValueError", tuple(torch.zeros(0) for _ in range(4)), 0.1, "no_checks"),
    ]
    for n in range(3):
        size = rng.randint(3, 16)
        cases.append(case(f"random batch of {size} pairs (case {n + 1})", _logps(g, size, gap=rng.uniform(-1, 2)),
                          rng.choice([0.05, 0.1, 0.2, 0.5]), probe=True))
    return cases


DPO_HINTS = {
    "default": "Check beta > 0 and four 1-d tensors of one shape with N >= 1 (else ValueError); chosen_rewards = "
    "beta * (pi_chosen - ref_chosen), rejected_rewards = beta * (pi_rejected - ref_rejected), with the reference "
    "detached; loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean(); return (loss, chosen_rewards.detach(), "
    "rejected_rewards.detach(), accuracy, margin), accuracy the share with chosen_rewards > rejected_rewards, "
    "margin the mean of their difference, both Python floats.",
    "swapped": "Chosen and rejected are swapped: the loss must be small when the policy raised the chosen reply "
    "relative to the reference, -log sigmoid(beta * (chosen log-ratio - rejected log-ratio)).",
    "no_reference": "The implicit reward is beta * (log pi(y) - log pi_ref(y)): subtract the reference's "
    "log-probabilities. Without them the loss only asks for a large log pi(chosen) - log pi(rejected), and nothing "
    "holds the policy near the reference.",
    "beta_twice": "beta is applied twice: the implicit rewards already carry beta, so the loss is "
    "-log sigmoid(chosen_rewards - rejected_rewards), or -log sigmoid(beta * h) with h the difference of the "
    "log-ratios. Not beta * (chosen_rewards - rejected_rewards).",
    "log_sigmoid": "torch.log(torch.sigmoid(x)) rounds sigmoid(x) to 0 below x = -104 (float32) and returns "
    "infinity; F.logsigmoid(x) computes the same function without overflow.",
    "sum": "Take the mean over the pairs, not the sum: the loss (and so the learning rate) must not depend on the "
    "batch size.",
    "rewards_no_beta": "The implicit rewards are beta times the log-ratios, beta * (log pi - log pi_ref): what TRL "
    "logs as rewards/chosen and rewards/rejected, on the scale of a reward model's rewards.",
    "ties": "A tie is not a win: accuracy is the share of pairs with chosen_rewards > rejected_rewards, strictly "
    "(at the start of training every pair is a tie, and the accuracy is 0).",
    "grad_leak": "The reference's log-probabilities are constants of the loss: detach them (ref_chosen.detach()), "
    "or a gradient reaches the reference model, which must stay where it started (the KL anchor of the "
    "derivation).",
    "no_checks": "Check the inputs and raise ValueError: beta > 0, four 1-d tensors of the same shape (one value "
    "per pair) and at least one pair. A (N, 1) tensor against a (N,) one broadcasts to (N, N) silently.",
}

register(Checkpoint(
    id="12.dpo_loss",
    points=3,
    title="the DPO loss, -log sigmoid(beta * margin of log-ratios), with implicit rewards, accuracy and margin",
    signature="dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)",
    cases=dpo_cases,
    reference=dpo("dpo_loss"),
    tol=TOL,
    grad_probe=True,
    fingerprints=[(kind, _dpo_variant(kind)) for kind in DPO_MISTAKES],
    hints=DPO_HINTS,
))


# ---------------------------------------------------------------------------- 12.dpo_variants (bonus)


def _variants_variant(kind: str):
    def wrong(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing, loss_type):
        if kind != "no_checks":
            dpo("dpo_variant_loss")(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing, loss_type)
        pc, pr, rc, rr = (t.float() for t in (pi_chosen, pi_rejected, ref_chosen, ref_rejected))
        rc, rr = rc.detach(), rr.detach()
        h = (pc - rc) - (pr - rr)
        eps = label_smoothing
        if loss_type == "ipo":
            if kind == "ipo_beta_inside":
                losses = (beta * h - 0.5) ** 2
            elif kind == "ipo_target":
                losses = (h - 1 / beta) ** 2
            elif kind == "ipo_abs":
                losses = (h - 1 / (2 * beta)).abs()
            else:
                losses = (h - 1 / (2 * beta)) ** 2
        elif kind == "smoothing_swapped":
            losses = -eps * F.logsigmoid(beta * h) - (1 - eps) * F.logsigmoid(-beta * h)
        elif kind == "smoothing_sign":
            losses = -(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)
        elif kind == "smoothing_ignored":
            losses = -F.logsigmoid(beta * h)
        else:
            losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
        chosen_rewards, rejected_rewards = (beta * (pc - rc)).detach(), (beta * (pr - rr)).detach()
        diff = chosen_rewards - rejected_rewards
        return losses.mean(), chosen_rewards, rejected_rewards, (diff > 0).float().mean().item(), diff.mean().item()

    wrong.__name__ = f"dpo_variant_loss_{kind}"
    return wrong


VARIANT_MISTAKES = ("smoothing_swapped", "smoothing_sign", "smoothing_ignored", "ipo_beta_inside", "ipo_target",
                    "ipo_abs", "no_checks")


def variants_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, logps, beta, smoothing, loss_type, hint="default", probe=False):
        args = (*logps, beta, smoothing, loss_type)
        return Case(label, args, hint, show=_show(*args), probe=probe)

    cases = [
        case("label smoothing 0.2: the label is flipped with probability 0.2, weight 0.8 on the pair as labelled",
             _logps(g, 6, gap=1.0), 0.5, 0.2, "sigmoid", "smoothing_swapped"),
        case("label smoothing 0.1: -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h)", _logps(g, 5, gap=2.0),
             0.3, 0.1, "sigmoid", "smoothing_sign"),
        case("label smoothing 0.3 changes the loss", _logps(g, 5), 0.2, 0.3, "sigmoid", "smoothing_ignored"),
        case("IPO at beta 0.5: (h - 1 / (2 beta))^2 with h the margin of log-ratios", _logps(g, 5, gap=0.5), 0.5,
             0.0, "ipo", "ipo_beta_inside"),
        case("IPO at beta 0.2: the target margin is 1 / (2 beta) = 2.5", _logps(g, 6), 0.2, 0.0, "ipo", "ipo_target"),
        case("IPO is a squared loss: margins far below and above the target", _logps(g, 6, gap=2.0), 0.1, 0.0, "ipo",
             "ipo_abs"),
        case("no smoothing: the loss of 12.dpo_loss", _logps(g, 4), 0.1, 0.0, "sigmoid"),
        case("label smoothing 0.5 (every label a coin flip): ValueError", _logps(g, 3), 0.1, 0.5, "sigmoid",
             "no_checks"),
        case("label smoothing -0.1: ValueError", _logps(g, 3), 0.1, -0.1, "sigmoid", "no_checks"),
        case("IPO with label smoothing: ValueError (smoothing belongs to the sigmoid loss)", _logps(g, 3), 0.1, 0.1,
             "ipo", "no_checks"),
        case("loss_type 'hinge': ValueError (only 'sigmoid' and 'ipo')", _logps(g, 3), 0.1, 0.0, "hinge", "no_checks"),
    ]
    for n in range(3):
        size = rng.randint(3, 12)
        loss_type = ("sigmoid", "ipo", "sigmoid")[n]
        smoothing = 0.0 if loss_type == "ipo" else rng.choice([0.05, 0.1, 0.25])
        cases.append(case(f"random batch of {size} pairs, {loss_type} (case {n + 1})",
                          _logps(g, size, gap=rng.uniform(-1, 2)), rng.choice([0.1, 0.2, 0.5]), smoothing,
                          loss_type, probe=True))
    return cases


register(Checkpoint(
    id="12.dpo_variants",
    points=1,
    title="(bonus) conservative DPO (label smoothing) and IPO",
    signature="dpo_variant_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing, loss_type)",
    cases=variants_cases,
    reference=dpo("dpo_variant_loss"),
    tol=TOL,
    grad_probe=True,
    fingerprints=[(kind, _variants_variant(kind)) for kind in VARIANT_MISTAKES],
    hints={
        "default": "With h = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected): 'sigmoid' loss = (-(1 - e) * "
        "F.logsigmoid(beta * h) - e * F.logsigmoid(-beta * h)).mean() with e = label_smoothing; 'ipo' loss = "
        "((h - 1 / (2 * beta)) ** 2).mean(). The rewards, accuracy and margin: your dpo_loss's. ValueError unless "
        "0 <= label_smoothing < 0.5, loss_type is 'sigmoid' or 'ipo', and IPO comes without smoothing.",
        "smoothing_swapped": "The weights are swapped: with probability 1 - e the label is right, so -log sigmoid(beta "
        "h) gets weight 1 - e and the flipped label, -log sigmoid(-beta h), weight e.",
        "smoothing_sign": "Both terms are losses, both with a minus: -(1 - e) log sigmoid(beta h) - e log "
        "sigmoid(-beta h). Adding e log sigmoid(-beta h) rewards the flipped label instead of hedging towards it.",
        "smoothing_ignored": "label_smoothing changes nothing in yours: weight the flipped label, -(1 - e) log "
        "sigmoid(beta h) - e log sigmoid(-beta h).",
        "ipo_beta_inside": "IPO's loss is (h - 1 / (2 beta))^2 on the log-ratio margin h itself; (beta h - 1/2)^2 is "
        "beta^2 times it, a loss scale that changes with beta.",
        "ipo_target": "IPO's target margin is 1 / (2 beta), not 1 / beta: (h - 1 / (2 * beta)) ** 2.",
        "ipo_abs": "IPO's loss is squared, (h - 1 / (2 beta))^2: its gradient shrinks near the target, where an "
        "absolute value keeps pushing with the same force.",
        "no_checks": "Raise ValueError unless 0 <= label_smoothing < 0.5 (at 0.5 every label is a coin flip), "
        "loss_type is 'sigmoid' or 'ipo', and label_smoothing is 0 with 'ipo' (smoothing belongs to the sigmoid "
        "loss); beta and the shapes as in 12.dpo_loss.",
        "grad_leak": DPO_HINTS["grad_leak"],
    },
))


# ---------------------------------------------------------------------------- 12.verifiable_reward


def _first_sentence(text: str, strip_punctuation: bool = True) -> list[str]:
    """The words of ``text``'s first sentence, as the reference reads them (or keeping the closing
    punctuation on the last word)."""
    first = re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]
    return (first.rstrip(".!?") if strip_punctuation else first).split()


def _reward_variant(kind: str):
    def wrong(reply, answer):
        if kind != "no_checks":
            grpo("verifiable_reward")(reply, answer)
        if kind == "substring":
            return 1.0 if answer.strip() in reply else 0.0
        if kind == "whole_reply":
            return 1.0 if reply.strip().rstrip(".!?") == answer.strip().rstrip(".!?") else 0.0
        if kind == "fact_only":
            got, want = _first_sentence(reply), _first_sentence(answer)
            return 1.0 if got and got[-1] == want[-1] else 0.0
        if kind == "case":
            return 1.0 if [w.lower() for w in _first_sentence(reply)] == [w.lower() for w in _first_sentence(answer)] \
                else 0.0
        if kind == "punctuation":
            return 1.0 if _first_sentence(reply, False) == _first_sentence(answer, False) else 0.0
        if kind == "startswith":
            return 1.0 if reply.strip().startswith(answer.strip().rstrip(".!?")) else 0.0
        if kind == "split_anywhere":  # any . ! ? ends the sentence, a space after it or not
            def words(text):
                return re.split(r"[.!?]", text.strip(), maxsplit=1)[0].split()
            return 1.0 if words(reply) == words(answer) else 0.0
        if kind == "question_mark":  # only . and ! end a sentence
            def words(text):
                return re.split(r"(?<=[.!])\s+", text.strip(), maxsplit=1)[0].rstrip(".!").split()
            return 1.0 if words(reply) == words(answer) else 0.0
        if kind == "strip_one":  # one closing mark removed, not all of them
            def words(text):
                first = re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]
                return (first[:-1] if first[-1:] in (".", "!", "?") else first).split()
            return 1.0 if words(reply) == words(answer) else 0.0
        return 1.0 if _first_sentence(reply) == _first_sentence(answer) else 0.0  # no_checks

    wrong.__name__ = f"verifiable_reward_{kind}"
    return wrong


REWARD_MISTAKES = ("substring", "whole_reply", "fact_only", "case", "punctuation", "startswith", "split_anywhere",
                   "question_mark", "strip_one", "no_checks")

NAMES = ("Hugo", "Mia", "Ned", "Lucia", "Theo", "Renée", "Zoë", "Ben")
TOWNS = ("Elmford", "Silverbury", "Riverwell", "Oakmere", "Hawkstead")


def reward_cases(rng: random.Random) -> list[Case]:
    def case(label, reply, answer, hint="default"):
        return Case(label, (reply, answer), hint)

    cases = [
        case("the answer sentence itself", "Robin lives in Elmford.", "Robin lives in Elmford."),
        case("the answer without its closing period", "Robin lives in Elmford", "Robin lives in Elmford.",
             "punctuation"),
        case("the right fact after the wrong hero: every name counts", "Lucia's best friend is Ned.",
             "Mia's best friend is Ned.", "fact_only"),
        case("the answer inside a longer first sentence is not the answer", "I think Robin lives in Elmford.",
             "Robin lives in Elmford.", "substring"),
        case("a longer name that starts like the fact is another name", "Robin lives in Elmfordshire.",
             "Robin lives in Elmford.", "startswith"),
        case("the right answer first, then more: the answer is the first sentence",
             "The story is about Ned. Ned lives in Elmvale.", "The story is about Ned.", "whole_reply"),
        case("a wrong answer first, the right one after it: wrong", "The story is about Mia. The story is about Ned.",
             "The story is about Ned.", "substring"),
        case("a name in the wrong case is another name", "The story is about ned.", "The story is about Ned.",
             "case"),
        case("accents count: Renee is not Renée", "The story is about Renee.", "The story is about Renée.", "case"),
        case("surrounding whitespace and a doubled space do not count", "  Rusty is  a hamster.\n",
             "Rusty is a hamster.", "whole_reply"),
        case("an exclamation mark ends a sentence too", "Rusty is a parrot! What a bird.", "Rusty is a parrot.",
             "whole_reply"),
        case("a question mark followed by a space ends the first sentence too (and is removed like a period)",
             "Robin lives in Elmford? I think so.", "Robin lives in Elmford.", "question_mark"),
        case("a period with no space after it ends nothing: 'Elmford.Ned' is one word",
             "Robin lives in Elmford.Ned is here.", "Robin lives in Elmford.", "split_anywhere"),
        case("the period inside 2.5 ends nothing: 2.5 is not 2.7", "Rusty is 2.5 years old.",
             "Rusty is 2.7 years old.", "split_anywhere"),
        case("all the closing punctuation goes: 'Elmford...' is 'Elmford'", "Robin lives in Elmford...",
             "Robin lives in Elmford.", "strip_one"),
        case("'parrot!!' is 'parrot' too", "Rusty is a parrot!!", "Rusty is a parrot.", "strip_one"),
        case("an empty reply is wrong", "", "The story is about Ned."),
        case("an answer of '': ValueError (every empty reply would be right)", "", "", "no_checks"),
        case("an answer of only punctuation: ValueError", "...", "...", "no_checks"),
        case("a reply of bytes, not str: ValueError", b"Robin lives in Elmford.", "Robin lives in Elmford.",
             "not_a_string"),
        case("a reply of None: ValueError", None, "Robin lives in Elmford.", "not_a_string"),
        case("an answer of 3, not a string: ValueError", "Robin lives in Elmford.", 3, "not_a_string"),
    ]
    for n in range(6):
        hero, friend = rng.sample(NAMES, 2)
        town, other = rng.sample(TOWNS, 2)
        answer = f"{hero} lives in {town}."
        kind = rng.choice(["right", "wrong_hero", "wrong_town", "ramble", "bare"])
        reply = {"right": answer, "wrong_hero": f"{friend} lives in {town}.", "wrong_town": f"{hero} lives in {other}.",
                 "ramble": f"{answer} {hero} loves {other}.", "bare": f"{town}."}[kind]
        cases.append(case(f"a random reply (case {n + 1})", reply, answer))
    return cases


register(Checkpoint(
    id="12.verifiable_reward",
    points=1,
    title="a verifiable reward: the reply's first sentence against the answer sentence, word for word",
    signature="verifiable_reward(reply, answer)",
    cases=reward_cases,
    reference=grpo("verifiable_reward"),
    tol=0.0,
    fingerprints=[(kind, _reward_variant(kind)) for kind in REWARD_MISTAKES],
    hints={
        "default": "Read reply and answer the same way: strip; the first sentence ends at the first '.', '!' or '?' "
        "followed by whitespace (or at the end); remove that closing punctuation; split on whitespace. Return 1.0 if "
        "the two word lists are equal, else 0.0. ValueError if reply or answer is not a str, or answer has no word.",
        "substring": "`answer in reply` is true for a reply that says something else first, or wraps the answer in "
        "other words: compare the reply's first sentence with the answer, word for word.",
        "whole_reply": "Read only the reply's first sentence, with its words split on whitespace: what comes after it "
        "(or a doubled space) does not change the answer.",
        "fact_only": "Every name of the answer sentence must be right, not only its last word: a reply with the right "
        "fact about the wrong person is a wrong answer. Compare the whole first sentence.",
        "case": "Compare exactly: a name in the wrong case, or without its accent, is not the story's name.",
        "punctuation": "Remove the first sentence's closing punctuation (of both texts) before comparing: 'Elmford' "
        "and 'Elmford.' are the same answer.",
        "startswith": "A reply that starts like the answer may go on with a longer word ('Elmfordshire'): compare the "
        "first sentence's words, not the characters it starts with.",
        "split_anywhere": "A '.', '!' or '?' ends the first sentence only when whitespace follows it (or the text "
        "ends there): the period of '2.5', or of 'Elmford.Ned', ends nothing. Splitting at every punctuation mark "
        "cuts such a sentence short.",
        "question_mark": "A '?' followed by whitespace ends the first sentence as '.' and '!' do, and is removed with "
        "them: read the sentence up to the first of the three.",
        "strip_one": "Remove all the closing punctuation of the first sentence (rstrip('.!?')), not one character: "
        "'Elmford...' and 'parrot!!' read as 'Elmford' and 'parrot'.",
        "not_a_string": "Raise ValueError if reply or answer is not a str (isinstance(reply, str)), before reading "
        "them: None, bytes or a number is not a reply to score.",
        "no_checks": "Raise ValueError if answer has no word once read (an empty answer, or only punctuation): every "
        "empty reply would match it.",
    },
))


# ---------------------------------------------------------------------------- 12.group_advantages


def _advantage_variant(kind: str):
    def wrong(rewards, group_size, scale, eps):
        if kind != "no_checks":
            grpo("group_advantages")(rewards, group_size, scale, eps)
        r = rewards.float()
        if kind == "interleaved":
            grouped = r.view(group_size, -1).T  # (n_prompts, G) with rows taken every n_prompts
        else:
            grouped = r.view(-1, group_size)
        mean = r.mean() if kind == "batch_mean" else grouped.mean(1, keepdim=True)
        adv = grouped - mean
        if scale == "std" or kind == "none_divides":
            with warnings.catch_warnings():  # a group of one (no_checks): torch warns of its std, NaN
                warnings.simplefilter("ignore")
                std = {"batch_std": lambda: r.std(),
                       "biased_std": lambda: grouped.std(1, unbiased=False, keepdim=True)}.get(
                    kind, lambda: grouped.std(1, keepdim=True))()
            adv = adv / (std if kind == "no_eps" else std + (1e-4 if kind == "eps_fixed" else eps))
        if kind == "interleaved":
            return adv.T.reshape(-1)
        return adv.reshape(-1)

    wrong.__name__ = f"group_advantages_{kind}"
    return wrong


ADVANTAGE_MISTAKES = ("no_eps", "batch_std", "batch_mean", "biased_std", "interleaved", "none_divides", "eps_fixed",
                      "no_checks")


def advantage_cases(rng: random.Random) -> list[Case]:
    def case(label, rewards, group_size, scale="std", hint="default", probe=False, eps=1e-4, dtype=torch.float32):
        rewards = torch.tensor(rewards, dtype=dtype)
        args = (rewards, group_size, scale, eps)
        return Case(label, args, hint, show=_show(*args), probe=probe)

    def binary(n_groups, group_size):
        return [float(rng.random() < 0.5) for _ in range(n_groups * group_size)]

    cases = [
        case("a group of four right replies, then a mixed group: equal rewards give advantages 0, not 0 / 0",
             [1, 1, 1, 1, 0, 1, 0, 0], 4),
        case("two groups of 4, one mostly right, one mostly wrong: each group is its own baseline",
             [1, 1, 1, 0, 0, 0, 1, 0], 4, hint="batch_mean"),
        case("groups of different spreads: each divided by its own std", [1, 0, 1, 0, 0.5, 0.25, 0.5, 0.5], 4,
             hint="batch_std"),
        case("a group of 3: the unbiased std (divide by G - 1), as torch.std", [1, 0, 0, 0, 1, 1], 3,
             hint="biased_std"),
        case("rewards[0:4] are group 0, rewards[4:8] group 1 (consecutive)", [1, 1, 0, 1, 0, 0, 0, 1], 4,
             hint="interleaved"),
        case("scale 'none' (Dr. GRPO): the mean is subtracted, nothing divided", [1, 0, 0, 0, 1, 1, 1, 0, 0.5, 0.5,
                                                                                1, 0], 4, "none", "none_divides"),
        case("groups of 2", [1, 0, 0, 0, 0, 1], 2),
        case("eps = 0.5, not the default: divide by the std + eps given", [1, 0, 1, 1, 0.25, 0.75], 2,
             hint="eps_fixed", eps=0.5),
        case("int64 rewards (torch.tensor([1, 0, ...])): cast them, the advantages are float32",
             [1, 0, 0, 1, 1, 1], 3, hint="no_float", dtype=torch.int64),
        case("float64 rewards: the advantages are float32 all the same", [1, 0, 0.5, 1, 1, 0.25], 3,
             hint="dtype", dtype=torch.float64),
        case("a group of one: ValueError (nothing to compare with)", [1, 0, 1], 1, hint="no_checks"),
        case("group_size 2.0, a float: ValueError (an int >= 2)", [1, 0, 1, 1], 2.0, hint="no_checks"),
        case("5 rewards in groups of 2: ValueError", [1, 0, 1, 0, 1], 2, hint="no_checks"),
        case("no rewards: ValueError (an empty group)", [], 4, hint="no_checks"),
        case("scale 'max': ValueError (only 'std' or 'none')", [1, 0, 1, 1], 2, "max", "no_checks"),
        case("eps = -0.1: ValueError (eps >= 0)", [1, 0, 1, 1], 2, hint="no_checks", eps=-0.1),
    ]
    two_d = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    cases.append(Case("rewards of shape (2, 2): ValueError (give one flat tensor, groups consecutive)",
                      (two_d, 2, "std", 1e-4), "no_checks", show=_show(two_d, 2, "std", 1e-4)))
    for n in range(4):
        group_size, n_groups = rng.choice([2, 4, 8]), rng.randint(2, 5)
        cases.append(case(f"random groups of {group_size} (case {n + 1})", binary(n_groups, group_size), group_size,
                          ("std", "none")[n % 2]))
    return cases


register(Checkpoint(
    id="12.group_advantages",
    points=2,
    title="group-relative advantages: each group's mean subtracted, divided by its std (or not, Dr. GRPO)",
    signature="group_advantages(rewards, group_size, scale, eps)",
    cases=advantage_cases,
    reference=grpo("group_advantages"),
    tol=1e-6,
    fingerprint_tol=1e-6,
    exact_dtype=True,  # float32, as the docstring promises, whatever the rewards' dtype
    fingerprints=[(kind, _advantage_variant(kind)) for kind in ADVANTAGE_MISTAKES],
    # the mean or std of an integer tensor: the rewards were not cast to float
    raised_hints=[(r"mean\(\): could not infer output dtype|std and var only support floating point", "no_float")],
    hints={
        "default": "Check the inputs (else ValueError); grouped = rewards.float().view(-1, group_size) (n_prompts, G); "
        "adv = grouped - grouped.mean(1, keepdim=True); for scale 'std' divide by grouped.std(1, keepdim=True) + "
        "eps (unbiased, per group); return adv.reshape(-1), float32.",
        "no_eps": "A group whose rewards are all equal has std 0, and yours divides 0 by 0 (NaN). Add eps = 1e-4 to "
        "the std: such a group gets advantages 0, and carries no gradient.",
        "batch_std": "Divide by each group's own std, not the std of the whole batch: a prompt the policy nearly always "
        "solves must not be scaled like one it solves half the time.",
        "batch_mean": "Subtract each group's own mean, not the batch's: the group of replies to one prompt is that "
        "prompt's baseline (a hard prompt's best reply beats its group, even if below the batch's mean).",
        "biased_std": "Use the unbiased std, grouped.std(1) (divide by G - 1; torch's default and TRL's choice), not "
        "unbiased=False.",
        "interleaved": "The groups are consecutive: rewards[0:G] is the first prompt's group. view(-1, group_size) "
        "gives one group per row; view(group_size, -1) mixes replies of different prompts.",
        "none_divides": "scale='none' is Dr. GRPO: subtract the group's mean and stop, no division by the std (which "
        "weighs too easy and too hard prompts more).",
        "eps_fixed": "Add the eps you are given to the std, not a fixed 1e-4: 1e-4 is only its default, and the "
        "caller may pass another.",
        "no_float": "Cast the rewards to float32 first, grouped = rewards.float().view(-1, group_size): rewards may "
        "come as integers (torch.tensor([1, 0, 1]) is int64, whose mean and std torch refuses), and the advantages "
        "are float32 whatever the rewards' dtype.",
        "dtype": "Return float32 advantages whatever the rewards' dtype: yours are right in value but keep the "
        "rewards' float64. Cast first, grouped = rewards.float().view(-1, group_size).",
        "no_checks": "Raise ValueError for rewards that are not a non-empty 1-d tensor, a group_size that is not an "
        "int >= 2 (a group of one has no other reply to compare with; 2.0 is a float), a length that is not a "
        "multiple of group_size, eps < 0, or a scale other than 'std' or 'none'.",
    },
))


# ---------------------------------------------------------------------------- 12.zero_variance


def _zero_variance_variant(kind: str):
    def wrong(rewards, group_size):
        if kind != "no_checks":
            grpo("zero_variance_fraction")(rewards, group_size)
        r = rewards.float()
        grouped = r.view(group_size, -1).T if kind == "interleaved" else r.view(-1, group_size)
        if kind == "batch":
            return float(r.std() == 0)
        if kind == "std_zero":  # a spread computed from the float32 mean: not exactly 0 for equal rewards like 0.9
            return (grouped.std(1) == 0).float().mean().item()
        if kind == "deviation_zero":  # the same mistake, through the deviations from the mean
            return ((grouped - grouped.mean(1, keepdim=True)).abs().amax(1) == 0).float().mean().item()
        if kind == "tolerance":  # nearly equal rewards counted as equal
            return (grouped.std(1) < 1e-3).float().mean().item()
        if kind == "all_wrong":
            equal = grouped.amax(1) == 0
        elif kind == "all_right":
            equal = grouped.amin(1) == 1
        else:
            equal = grouped.amax(1) == grouped.amin(1)
        return float(equal.sum()) if kind == "count" else equal.float().mean().item()

    wrong.__name__ = f"zero_variance_fraction_{kind}"
    return wrong


ZERO_MISTAKES = ("batch", "all_wrong", "all_right", "count", "interleaved", "std_zero", "tolerance", "no_checks")


def zero_variance_cases(rng: random.Random) -> list[Case]:
    def case(label, rewards, group_size, hint="default"):
        rewards = torch.tensor(rewards, dtype=torch.float32)
        return Case(label, (rewards, group_size), hint, show=_show(rewards, group_size))

    cases = [
        case("one all-wrong group of four, one mixed: the fraction is 0.5", [0, 0, 0, 0, 1, 0, 0, 1], 4, "batch"),
        case("an all-right group has zero variance too", [1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0], 4, "all_wrong"),
        case("an all-wrong group has zero variance too", [0, 0, 1, 0, 0, 0, 1, 1], 2, "all_right"),
        case("3 of 4 groups equal: a fraction, not a count", [1, 1, 0, 0, 0, 0, 1, 0], 2, "count"),
        case("groups are consecutive: rewards[0:3] is one group", [1, 1, 1, 0, 0, 0, 1, 0, 1], 3, "interleaved"),
        case("equal partial rewards (0.5, 0.5) are equal too", [0.5, 0.5, 1, 0, 0.25, 0.25], 2),
        # torch.std of a single row is computed in two passes (7e-8 here, not 0), of several rows by
        # Welford's update (exactly 0 for equal values): the single group catches `std == 0`, the
        # next case a deviation from the mean (`grouped == grouped.mean(1, keepdim=True)`)
        case("one group of three rewards of 0.9: all equal, though their float32 std is not exactly 0",
             [0.9, 0.9, 0.9], 3, "std_zero"),
        case("groups of equal rewards 0.9 and 0.45: equal, whatever the rounding of their mean",
             [0.9, 0.9, 0.9, 1, 0, 0, 0.45, 0.45, 0.45], 3, "std_zero"),
        case("0.5 and 0.5004 differ (their advantages are not 0): nearly equal is not equal", [0.5, 0.5004, 1, 1], 2,
             "tolerance"),
        case("a group of one: ValueError", [1, 0], 1, "no_checks"),
        case("group_size 2.0, a float: ValueError (an int >= 2)", [1, 1, 0, 1], 2.0, "no_checks"),
        case("7 rewards in groups of 2: ValueError", [1, 0, 1, 0, 1, 1, 0], 2, "no_checks"),
        case("no rewards: ValueError", [], 2, "no_checks"),
    ]
    for n in range(4):
        group_size, n_groups = rng.choice([2, 4, 8]), rng.randint(2, 8)
        p = rng.choice([0.1, 0.5, 0.9])
        cases.append(case(f"random groups of {group_size} (case {n + 1})",
                          [float(rng.random() < p) for _ in range(group_size * n_groups)], group_size))
    return cases


register(Checkpoint(
    id="12.zero_variance",
    points=1,
    title="the fraction of groups with equal rewards, which carry no gradient",
    signature="zero_variance_fraction(rewards, group_size)",
    cases=zero_variance_cases,
    reference=grpo("zero_variance_fraction"),
    tol=1e-6,
    fingerprints=[(kind, _zero_variance_variant(kind)) for kind in ZERO_MISTAKES]
    + [("std_zero", _zero_variance_variant("deviation_zero"))],
    hints={
        "default": "Check the inputs as group_advantages does (else ValueError); grouped = rewards.view(-1, "
        "group_size); return (grouped.amax(1) == grouped.amin(1)).float().mean().item(), a Python float.",
        "batch": "Count groups, not the batch: a group is 'zero variance' when its own rewards are all equal, even if "
        "other groups differ.",
        "all_wrong": "A group whose replies are all right has zero variance as well: every advantage 0, no gradient. "
        "Count every group whose rewards are all equal.",
        "all_right": "A group whose replies are all wrong has zero variance as well (the commonest case on a hard "
        "task). Count every group whose rewards are all equal.",
        "count": "Return the fraction of groups (between 0 and 1), not their number.",
        "interleaved": "The groups are consecutive: rewards[0:G] is the first prompt's group (view(-1, group_size)).",
        "std_zero": "Compare each group's largest and smallest reward (amax(1) == amin(1)): a spread computed through "
        "the mean (std, var, deviations from the mean) is not exactly 0 for equal float32 rewards such as 0.9, "
        "because their mean rounds.",
        "tolerance": "Equal means equal: rewards that differ at all, even 0.5 and 0.5004, have advantages that are not "
        "0 and carry a gradient. Compare amax(1) == amin(1) exactly, without a tolerance.",
        "no_checks": "Raise ValueError for rewards that are not a non-empty 1-d tensor, a group_size that is not an "
        "int >= 2 (2.0 is a float), or a length that is not a multiple of group_size.",
    },
))


# ---------------------------------------------------------------------------- 12.grpo_loss

GARBAGE = 37.0  # what padding holds in the cases: finite, far from any log-probability


def _grpo_variant(kind: str):
    def wrong(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, max_length):
        if kind != "no_checks":
            grpo("grpo_loss")(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation,
                              max_length)
        m = true_mask = mask.bool()
        if kind == "padding":  # the loss reaches the padding; the logged statistics still count reply tokens
            m = torch.ones_like(m)
        old = old_logprobs.detach()
        lengths = m.sum(1)
        if kind == "ratio_of_logprobs":
            ratio = logprobs / old
        else:
            ratio = torch.exp(logprobs - old)
        adv = advantages.detach()[:, None]
        unclipped = ratio * adv
        clipped = unclipped if kind == "no_clip" else torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
        per_token = -(torch.maximum if kind == "max" else torch.minimum)(unclipped, clipped)
        kl = torch.zeros_like(logprobs)
        if ref_logprobs is not None:
            ref = ref_logprobs.detach()
            if kind == "k1":
                kl = logprobs - ref
            else:
                d = (logprobs - ref) if kind == "kl_upside_down" else (ref - logprobs)
                kl = torch.exp(d) - d - 1
            per_token = per_token + (-beta if kind == "kl_sign" else beta) * kl
        if kind == "mask_multiply":  # masked by a product: 0 * inf and 0 * NaN are NaN
            per_token, kl = per_token * m, kl * true_mask
        else:
            per_token = torch.where(m, per_token, torch.zeros_like(per_token))
            kl = torch.where(true_mask, kl, torch.zeros_like(kl))
        n_tokens = lengths.sum()
        if aggregation == "token" or (kind == "token_mean" and aggregation == "sequence"):
            loss = per_token.sum() / n_tokens
        elif aggregation == "sequence":
            loss = per_token.sum(1).mean() if kind == "sequence_sum" else (per_token.sum(1) / lengths).mean()
        else:
            width = max_length if max_length is not None else logprobs.shape[1]
            loss = per_token.sum() / (n_tokens if kind == "dr_grpo_tokens" else logprobs.shape[0] * width)
        if kind == "clip_any":
            clipped_tokens = ((ratio - 1).abs() > clip_eps) & true_mask
        else:
            clipped_tokens = (clipped < unclipped) & true_mask
        n_reply = true_mask.sum()
        stats = {"kl": float(kl.sum() / n_reply), "clip_fraction": float(clipped_tokens.sum() / n_reply)}
        return loss, stats

    wrong.__name__ = f"grpo_loss_{kind}"
    return wrong


GRPO_MISTAKES = ("kl_upside_down", "k1", "kl_sign", "padding", "mask_multiply", "no_clip", "max", "ratio_of_logprobs",
                 "token_mean", "sequence_sum", "dr_grpo_tokens", "clip_any", "no_checks")


def _rollout(g: torch.Generator, lengths: list[int], width: int, ratio_scale: float = 0.4, ref_scale: float = 0.5,
             adv: list[float] | None = None, garbage: float = GARBAGE):
    """Per-token log-probabilities of sampled replies: ``(logprobs, old, ref, advantages, mask)``.

    The policy's log-probabilities around -2, the sampling policy's and the reference's off by
    up to about +-1 (ratios leave [0.8, 1.2] on both sides); padding holds ``garbage``."""
    batch = len(lengths)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    logprobs = -(randn(g, batch, width, scale=0.8).abs() + 0.3)
    old = logprobs + randn(g, batch, width, scale=ratio_scale)
    ref = logprobs + randn(g, batch, width, scale=ref_scale)
    garbage = torch.full_like(logprobs, garbage)
    logprobs, old, ref = (torch.where(mask, t, garbage) for t in (logprobs, old, ref))
    advantages = randn(g, batch) if adv is None else torch.tensor(adv)
    return logprobs, old, ref, advantages, mask


def grpo_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, rollout, clip_eps=0.2, beta=0.04, aggregation="sequence", max_length=None, hint="default",
             probe=False, ref=True):
        logprobs, old, ref_lp, adv, mask = rollout
        args = (logprobs, old, ref_lp if ref else None, adv, mask, clip_eps, beta, aggregation, max_length)
        return Case(label, args, hint, show=_show(*args), probe=probe)

    cases = [
        case("k3 = pi_ref / pi - log(pi_ref / pi) - 1: reference over policy", _rollout(g, [5, 3, 4], 5, 0.05, 0.8),
             beta=0.5, hint="kl_upside_down"),
        case("the k3 estimator, not the plain log-ratio (k1)", _rollout(g, [4, 4], 4, 0.05, 0.6), beta=0.3,
             hint="k1"),
        case("the KL term is added to the loss (a penalty)", _rollout(g, [6, 2, 5], 6, 0.1, 0.7), beta=0.2,
             hint="kl_sign"),
        case("row 1 has 2 reply tokens and 4 pads holding garbage: padding gets no advantage and no loss",
             _rollout(g, [6, 2, 6], 6), hint="padding"),
        # (no reference here: a statistic that is NaN is a float, and NaN != NaN, so a stored known
        # mistake could not be recognised by its NaN kl on fixtures)
        case("padding holding -inf (what a masked log-softmax leaves): the loss stays finite",
             _rollout(g, [5, 2, 4], 5, garbage=-math.inf), beta=0.0, ref=False, hint="mask_multiply"),
        case("padding holding NaN: the loss stays finite", _rollout(g, [3, 4, 1], 4, garbage=math.nan), beta=0.0,
             aggregation="token", ref=False, hint="mask_multiply"),
        case("ratios far outside [0.8, 1.2], advantages of both signs: the ratio is clipped",
             _rollout(g, [5, 5, 5, 5], 5, 0.8, 0.6, adv=[1.5, -1.0, 0.7, -2.0]), beta=0.0, hint="no_clip"),
        case("the pessimistic bound: min of the two surrogates (in the loss, max of their negatives)",
             _rollout(g, [4, 4, 4], 4, 0.6, 0.6, adv=[1.0, -1.2, 0.8]), beta=0.0, hint="max"),
        case("the ratio is exp(log pi - log pi_old), a ratio of probabilities",
             _rollout(g, [4, 3], 4, 0.3, 0.3), hint="ratio_of_logprobs"),
        case("aggregation 'sequence': each reply's mean over its tokens, then the mean over replies",
             _rollout(g, [7, 2, 4], 7), hint="token_mean"),
        case("aggregation 'sequence' divides each reply's sum by its length", _rollout(g, [6, 3, 1], 6),
             hint="sequence_sum"),
        case("aggregation 'token': the sum over the batch's reply tokens over their number", _rollout(g, [6, 2, 3], 6),
             aggregation="token"),
        case("aggregation 'dr_grpo': the sum over batch size x max_length (16), a constant",
             _rollout(g, [6, 2, 3], 6), aggregation="dr_grpo", max_length=16, hint="dr_grpo_tokens"),
        case("aggregation 'dr_grpo' without max_length: the mask's width", _rollout(g, [5, 1, 3, 2], 5),
             aggregation="dr_grpo", hint="dr_grpo_tokens"),
        case("clip_fraction: the share of reply tokens where the clipped term is taken (the ratio beyond the clip "
             "range in the advantage's direction)", _rollout(g, [5, 5, 5], 5, 0.7, 0.6, adv=[1.0, -1.0, 0.5]),
             beta=0.0, hint="clip_any"),
        case("beta 0 and no reference: no KL term, kl reported as 0", _rollout(g, [3, 4], 4), beta=0.0, ref=False),
        case("beta > 0 without the reference's log-probabilities: ValueError", _rollout(g, [3, 4], 4), beta=0.04,
             ref=False, hint="no_checks"),
        case("a row without any reply token: ValueError", _rollout(g, [3, 0], 4), hint="no_checks"),
        case("clip_eps = 0: ValueError", _rollout(g, [3, 4], 4), clip_eps=0.0, hint="no_checks"),
        case("aggregation 'mean': ValueError (only 'sequence', 'token', 'dr_grpo')", _rollout(g, [3, 4], 4),
             aggregation="mean", hint="no_checks"),
        case("max_length 3 below a reply of 5 tokens: ValueError", _rollout(g, [5, 2], 5), aggregation="dr_grpo",
             max_length=3, hint="no_checks"),
    ]
    lp, old, ref, _, mask = _rollout(g, [4, 3], 4)
    cases.append(Case("advantages of shape (2, 4), one per token: ValueError (one per reply)",
                      (lp, old, ref, randn(g, 2, 4), mask, 0.2, 0.04, "sequence", None), "no_checks",
                      show=_show(lp, old, ref, randn(g, 2, 4), mask, 0.2, 0.04, "sequence", None)))
    lp, old, ref, adv, mask = _rollout(g, [4, 3], 4)
    cases.append(Case("old_logprobs of another shape: ValueError",
                      (lp, old[:, :3], ref, adv, mask, 0.2, 0.04, "sequence", None), "no_checks",
                      show=_show(lp, old[:, :3], ref, adv, mask, 0.2, 0.04, "sequence", None)))
    wrong_shapes = [
        ("ref_logprobs of another shape: ValueError", lambda lp, old, ref, mask: (lp, old, ref[:, :3], mask)),
        ("a mask of another shape: ValueError", lambda lp, old, ref, mask: (lp, old, ref, mask[:, :3])),
        ("logprobs of shape (2, 4, 1), not (batch, T): ValueError",
         lambda lp, old, ref, mask: (lp[..., None], old[..., None], ref[..., None], mask[..., None])),
    ]
    for label, reshape in wrong_shapes:
        lp, old, ref, adv, mask = _rollout(g, [4, 3], 4)
        lp, old, ref, mask = reshape(lp, old, ref, mask)
        args = (lp, old, ref, adv, mask, 0.2, 0.04, "sequence", None)
        cases.append(Case(label, args, "no_checks", show=_show(*args)))
    cases.append(case("beta = -0.04: ValueError (beta >= 0; a negative beta rewards drifting from the reference)",
                      _rollout(g, [3, 4], 4), beta=-0.04, hint="no_checks"))
    for n in range(3):
        batch, width = rng.randint(2, 6), rng.randint(3, 9)
        lengths = [rng.randint(1, width) for _ in range(batch)]
        aggregation = ("sequence", "token", "dr_grpo")[n]
        cases.append(case(f"random batch, aggregation {aggregation!r} (case {n + 1})",
                          _rollout(g, lengths, width, rng.uniform(0.05, 0.6), rng.uniform(0.4, 0.8)),
                          rng.choice([0.1, 0.2, 0.3]), rng.choice([0.0, 0.04, 0.1]), aggregation,
                          width + 2 if aggregation == "dr_grpo" else None, probe=True))
    return cases


register(Checkpoint(
    id="12.grpo_loss",
    points=3,
    title="the GRPO loss: clipped ratio times advantage, plus beta k3 KL, per token, three aggregations",
    signature="grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, "
              "max_length)",
    cases=grpo_cases,
    reference=grpo("grpo_loss"),
    tol=TOL,
    grad_probe=True,
    fingerprints=[(kind, _grpo_variant(kind)) for kind in GRPO_MISTAKES],
    hints={
        "default": "Per token: ratio = exp(logprobs - old_logprobs.detach()); pg = -min(ratio * A, clamp(ratio, 1 - "
        "clip_eps, 1 + clip_eps) * A) with A = advantages[:, None]; kl = exp(d) - d - 1 with d = ref - logprobs; "
        "loss per token = pg + beta * kl, kept on the mask only (torch.where). Then 'sequence': mean over each row's "
        "tokens, then over rows; 'token': sum / number of tokens; 'dr_grpo': sum / (batch * (max_length or T)). "
        "stats = {'kl': mean k3 over reply tokens, 'clip_fraction': share of reply tokens where the clipped term is "
        "smaller}.",
        "kl_upside_down": "The k3 ratio is upside down: k3 = r - log r - 1 with r = pi_ref / pi, i.e. d = ref_logprobs "
        "- logprobs and k3 = exp(d) - d - 1. Its mean over tokens sampled from pi is KL(pi || pi_ref); with pi / pi_ref "
        "it estimates another quantity.",
        "k1": "That is the plain log-ratio log pi - log pi_ref (k1): unbiased but negative on many tokens, so a "
        "per-token penalty can reward drifting away. GRPO uses k3 = exp(d) - d - 1 with d = log pi_ref - log pi, "
        "never negative.",
        "kl_sign": "The KL is a penalty: add beta * k3 to the per-token loss. Subtracting it rewards moving away from "
        "the reference.",
        "padding": "The advantage and the loss reach the padding: keep only the mask's tokens (torch.where(mask, "
        "per_token, 0)) and count only them; padding holds whatever the batch was filled with.",
        "mask_multiply": "Padding can hold anything, -inf or NaN too, and here it reached your loss as NaN, as it "
        "does through a product with the mask (0 * inf and 0 * NaN are NaN). Select instead: torch.where(mask, x, 0) "
        "(or x[mask]) on the log-probabilities before computing with them, or on every per-token term before summing "
        "it (the loss's and the kl statistic's).",
        "no_clip": "Clip the ratio: -min(ratio * A, clamp(ratio, 1 - clip_eps, 1 + clip_eps) * A). Without the clip a "
        "few samples can move the policy far from the one that sampled them.",
        "max": "Take the pessimistic bound: the minimum of the clipped and unclipped objectives (the loss is minus it, "
        "so the larger of the two negatives). Yours takes the optimistic one, which never clips.",
        "ratio_of_logprobs": "The ratio is of probabilities: exp(logprobs - old_logprobs), not logprobs / "
        "old_logprobs (a ratio of two negative numbers, 1 at the start too, but a different function).",
        "token_mean": "aggregation='sequence' averages each reply over its own tokens, then the replies "
        "(DeepSeekMath): a token of a short reply weighs more. Yours gives every token of the batch the same weight "
        "(that is 'token').",
        "sequence_sum": "aggregation='sequence' divides each reply's summed loss by its number of tokens (mask.sum(1)) "
        "before the mean over replies.",
        "dr_grpo_tokens": "aggregation='dr_grpo' divides by a constant, batch size x max_length (the mask's width when "
        "max_length is None), not by the number of tokens: a long reply's tokens then count as much as a short one's.",
        "clip_any": "clip_fraction counts the tokens where the clipped term is the one taken: ratio > 1 + eps with A > "
        "0, or ratio < 1 - eps with A < 0 ((clipped < unclipped) on the mask); outside the range in the other "
        "direction the unclipped term is kept.",
        "grad_leak": "old_logprobs, ref_logprobs and advantages are constants of the loss (computed under "
        "torch.no_grad() from the sampling policy and the reference): detach them, so that the gradient reaches only "
        "logprobs.",
        "no_checks": "Raise ValueError for: logprobs not (batch, T); old_logprobs, ref_logprobs or mask of another "
        "shape; advantages not (batch,); a row of the mask without a reply token; clip_eps <= 0; beta < 0, or beta > "
        "0 with ref_logprobs None; max_length below the longest reply; an unknown aggregation.",
    },
))
