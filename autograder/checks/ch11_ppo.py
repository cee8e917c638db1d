"""Chapter 11 checkpoints: the KL estimators, per-token rewards, masked whitening, GAE, PPO's
clipped policy and value losses, and a rollout.

Six are functions of plain tensors. ``11.rollout`` drives models (``kind="rollout"``, through
``runners.run_rollout``): the learner's ``rollout(policy, reference, reward_model, prompt_ids,
max_new_tokens, temperature, stop_id, pad_id, generator)`` is called on the notebook's own
``PolicyWithValue`` (its ``Transformer`` with a value head), a reference ``Transformer`` and a
``RewardModel``, all tiny (64 ids, dimension 8) and loaded with random weights, with a
``torch.Generator`` seeded by the case; the runner returns the ``Rollout``'s fields as a dict.

How the cases expose mistakes: log-probabilities on both sides of the reference's (the sign of
a KL estimate shows) and far from it (k1, k2 and k3 differ by far more than rounding); masks
with rows padded by different amounts and one row not padded at all (the score at the last
column, or one past the last token, shows), with rewards, values and log-probabilities that are
NOT zero on padding (anything read there shows); ``gamma`` and ``lambda`` below 1 (a forward
recursion, a missing factor and Monte-Carlo returns differ); advantages of both signs with
ratios far outside the clip range (min for max, an inverted ratio, a missing clip show), a
ratio of exactly 1 (old log-probabilities recomputed from the current policy); old values away
from both the new values and the returns (clipping around the wrong baseline shows); in the
rollout, a temperature below 1, a stop token drawn early (in the reply to the longest prompt
too: the padded width shows), a stop token drawn as the last token ``max_new_tokens`` allows
(finished, though as long as a truncated reply), a prompt that fills the context exactly,
prompts of different lengths and a reference model that differs from the policy. Every
``ValueError`` the reference documents has a case, and so do both ends of every range (a
``gamma`` of 0 is valid; a ``clip_eps`` of 0 is not).

A hint names a mistake only on evidence: a known mistake's output matched on every case where
it shows, or the exception raised. Inputs are drawn in float64 (``checks/inputs.py``) and cast.
"""

from __future__ import annotations

import functools
import math
import random

import torch

from ..core import Case, Checkpoint, Label, register
from ..reference import reference
from .inputs import generator, model_config, rand, randn, random_model_weights, tensor_label

ppo = functools.partial(reference, "solutions.ppo")
TOL = 1e-5


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    """A right-padded float mask: row ``b`` has ``lengths[b]`` ones, then zeros."""
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()


def _logprobs(g: torch.Generator, *shape: int) -> torch.Tensor:
    """Log-probabilities of sampled tokens: negative, between about -4 and 0."""
    return -rand(g, *shape, low=0.05, high=4.0)


def _show(*args):
    return tuple(tensor_label(a) for a in args)


# ---------------------------------------------------------------------------- 11.kl_penalty


def _kl_variant(kind: str):
    def wrong(logprobs, ref_logprobs, estimator="k1"):
        if kind != "no_checks":
            ppo("kl_penalty")(logprobs, ref_logprobs, estimator)
        log_ratio = logprobs - ref_logprobs
        if kind == "sign":
            log_ratio = -log_ratio
        if kind == "abs":
            return log_ratio.abs() if estimator == "k1" else ppo("kl_penalty")(logprobs, ref_logprobs, estimator)
        if estimator == "k1" or (kind == "k3_as_k1" and estimator == "k3"):
            return log_ratio
        if estimator == "k2":
            return log_ratio ** 2 if kind == "k2_half" else 0.5 * log_ratio ** 2
        if kind == "k3_inverted":  # rho = pi / pi_ref
            return torch.expm1(log_ratio) - log_ratio
        if kind == "k3_sign":  # (rho - 1) + log rho
            return torch.expm1(-log_ratio) - log_ratio
        return torch.expm1(-log_ratio) + log_ratio

    wrong.__name__ = f"kl_penalty_{kind}"
    return wrong


KL_MISTAKES = ("sign", "abs", "k3_as_k1", "k3_inverted", "k3_sign", "k2_half", "no_checks")


def kl_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, logprobs, ref_logprobs, kind, hint="default"):
        args = (logprobs, ref_logprobs, kind)
        return Case(label, args, hint, show=_show(*args))

    lp = _logprobs(g, 2, 5)
    cases = [
        case("k1: log pi - log pi_ref, positive where the policy gives the token more probability than the reference",
             lp, lp + randn(g, 2, 5, scale=0.8), "k1", "sign"),
        case("k1 of one token: it may be negative (only its mean over samples is the KL)",
             torch.tensor([-2.0, -0.5, -1.0]), torch.tensor([-1.0, -1.5, -1.0]), "k1", "abs"),
        case("k3: (rho - 1) - log rho with rho = pi_ref / pi, never negative", lp, lp + randn(g, 2, 5, scale=0.8),
             "k3", "k3_as_k1"),
        case("k3 where the policy and the reference differ a lot (rho far from 1)", torch.tensor([-0.2, -3.0, -1.0]),
             torch.tensor([-2.5, -0.4, -1.0]), "k3", "k3_inverted"),
        case("k3 is 0 where the two models agree and grows on both sides", torch.tensor([[-1.0, -0.5], [-2.0, -3.0]]),
             torch.tensor([[-1.0, -1.5], [-1.25, -3.0]]), "k3", "k3_sign"),
        case("k2: half the square of the log-ratio", lp, lp + randn(g, 2, 5, scale=0.8), "k2", "k2_half"),
        case("an estimator that does not exist ('k4'): ValueError", lp, lp, "k4", "no_checks"),
        case("kind 'k', a piece of 'k1' but not an estimator: ValueError (only 'k1', 'k2', 'k3' exist)", lp, lp, "k",
             "no_checks"),
        case("log-probs (2, 5) and reference log-probs (2, 4): ValueError", lp, lp[:, :4], "k1", "no_checks"),
    ]
    for n in range(3):
        shape = (rng.randint(1, 4), rng.randint(3, 9))
        logprobs = _logprobs(g, *shape)
        cases.append(case(f"random log-probs, {('k1', 'k2', 'k3')[n]} (case {n + 1})", logprobs,
                          logprobs + randn(g, *shape, scale=rng.uniform(0.2, 1.5)), ("k1", "k2", "k3")[n]))
    return cases


register(Checkpoint(
    id="11.kl_penalty",
    points=1,
    title="per-token KL estimates k1, k2 and k3 of sampled tokens",
    signature="kl_penalty(logprobs, ref_logprobs, kind)",
    cases=kl_cases,
    reference=ppo("kl_penalty"),
    tol=TOL,
    fingerprints=[(kind, _kl_variant(kind)) for kind in KL_MISTAKES],
    hints={
        "default": "log_ratio = logprobs - ref_logprobs; k1 = log_ratio; k2 = 0.5 * log_ratio ** 2; k3 = (rho - 1) - "
        "log(rho) with log(rho) = -log_ratio, i.e. torch.expm1(-log_ratio) + log_ratio. ValueError for another kind "
        "or shapes that differ.",
        "sign": "The sign is flipped: k1 = log pi(y) - log pi_ref(y) (logprobs minus ref_logprobs), positive where the "
        "policy makes the sampled token more likely than the reference does.",
        "abs": "Keep the sign of k1: on a single token log pi - log pi_ref can be negative, and only its average over "
        "tokens sampled from pi is the KL. An absolute value makes it biased; k3 is the estimator that is never "
        "negative.",
        "k3_as_k1": "For kind 'k3' you returned k1: k3 = (rho - 1) - log(rho) with rho = pi_ref / pi, which is never "
        "negative.",
        "k3_inverted": "rho is pi_ref / pi (exp(ref_logprobs - logprobs)), not pi / pi_ref: k3 = (rho - 1) - log(rho) "
        "with that rho. The other ratio gives an estimate of the reverse KL.",
        "k3_sign": "k3 = (rho - 1) - log(rho): the log is subtracted (log(rho) <= rho - 1 is what makes k3 >= 0).",
        "k2_half": "k2 is HALF the squared log-ratio: 0.5 * (log pi - log pi_ref) ** 2.",
        "no_checks": "Raise ValueError for a kind other than 'k1', 'k2', 'k3' (compare with the tuple of the three "
        "names: `kind not in \"k1k2k3\"` tests for a substring, and lets 'k', '1k' or '' through), and when logprobs "
        "and ref_logprobs differ in shape (one log-probability per sampled token under each model).",
    },
))


# ---------------------------------------------------------------------------- 11.per_token_rewards


def _rewards_variant(kind: str):
    def wrong(scores, logprobs, ref_logprobs, mask, beta, estimator="k1"):
        if kind != "no_checks":
            ppo("per_token_rewards")(scores, logprobs, ref_logprobs, mask, beta, estimator)
        used = "k1" if kind == "k3_as_k1" else estimator
        log_ratio = logprobs - ref_logprobs
        kl = {"k1": log_ratio, "k2": 0.5 * log_ratio ** 2,
              "k3": torch.expm1(-log_ratio) + log_ratio}.get(used, log_ratio)
        if kind != "no_mask":
            kl = kl * mask
        rewards = (beta if kind == "kl_sign" else -beta) * kl
        lengths = mask.sum(1).long()
        rows = torch.arange(mask.shape[0])
        if kind == "every_token":
            rewards = rewards + scores[:, None] * mask
        elif kind == "last_column":
            rewards[:, -1] += scores
        elif kind == "first_token":
            rewards[:, 0] += scores
        elif kind == "one_past":
            rewards[rows, lengths] += scores
        else:
            rewards[rows, lengths - 1] += scores
        return rewards, kl

    wrong.__name__ = f"per_token_rewards_{kind}"
    return wrong


REWARDS_MISTAKES = ("kl_sign", "every_token", "last_column", "first_token", "one_past", "no_mask", "k3_as_k1",
                    "no_checks")


def rewards_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, lengths, width, beta, kind="k1", hint="default", scores=None, mask=None):
        n = len(lengths)
        mask = _mask(lengths, width) if mask is None else mask
        logprobs = _logprobs(g, n, width)
        ref = logprobs + randn(g, n, width, scale=0.6)
        scores = randn(g, n, scale=2.0) if scores is None else scores
        args = (scores, logprobs, ref, mask, beta, kind)
        return Case(label, args, hint, show=_show(*args))

    cases = [
        case("beta 0.1: the KL is a cost, -beta * kl at every reply token", [4, 4], 4, 0.1, hint="kl_sign"),
        case("rows of 5, 3 and 2 reply tokens: the score is added once, at each row's LAST reply token", [5, 3, 2], 5,
             0.05, hint="every_token"),
        case("row 1 is padded by 3: its score goes on its own last token, not on the last column (padding)",
             [6, 3], 6, 0.2, hint="last_column"),
        case("the score is a verdict on the finished reply: it arrives at the end, not at the first token",
             [4, 5, 2], 5, 0.1, hint="first_token"),
        case("a row padded by one and a full row: the last reply token is at index length - 1", [4, 5], 5, 0.1,
             hint="one_past"),
        case("log-probs that are not 0 on padding: the KL (and so the reward) is 0 there", [2, 5, 3], 5, 0.3,
             hint="no_mask"),
        case("kind 'k3': the penalty uses the k3 estimate", [5, 2], 5, 0.2, "k3", hint="k3_as_k1"),
        case("beta 0: no penalty, the score alone", [3, 1], 3, 0.0),
        case("a reply of one token: the penalty and the score on the same token", [1, 4], 4, 0.5, "k3"),
        case("beta -0.1: ValueError (a negative coefficient would reward drifting from the reference)", [2, 2], 2,
             -0.1, hint="no_checks"),
        case("a row with no reply token: ValueError (its score has no token to go on)", [3, 0], 3, 0.1,
             hint="no_checks"),
        case("three scores for two replies: ValueError", [3, 2], 3, 0.1, hint="no_checks", scores=randn(g, 3)),
    ]
    for n in range(3):
        batch, width = rng.randint(2, 5), rng.randint(3, 10)
        lengths = [rng.randint(1, width) for _ in range(batch)]
        lengths[0] = width
        cases.append(case(f"random batch (case {n + 1})", lengths, width, round(rng.uniform(0.01, 0.5), 3),
                          ("k1", "k3", "k2")[n]))
    return cases


register(Checkpoint(
    id="11.per_token_rewards",
    points=2,
    title="per-token rewards: -beta * KL at every reply token, the score at the last one",
    signature="per_token_rewards(scores, logprobs, ref_logprobs, mask, beta, kind)",
    cases=rewards_cases,
    reference=ppo("per_token_rewards"),
    tol=TOL,
    fingerprints=[(kind, _rewards_variant(kind)) for kind in REWARDS_MISTAKES],
    raised_hints=[(r"(IndexError|RuntimeError): index \d+ is out of bounds", "one_past")],
    hints={
        "default": "kl = kl_penalty(logprobs, ref_logprobs, kind) * mask; rewards = -beta * kl; last = "
        "mask.sum(1).long() - 1; rewards[torch.arange(batch), last] += scores; return (rewards, kl). ValueError for "
        "beta < 0, shapes that differ, scores not (batch,), or a mask row with no token.",
        "kl_sign": "The KL penalty is subtracted: rewards = -beta * kl. With +beta * kl the policy is paid for moving "
        "away from the reference, and nothing holds it near the model the reward model was trained on.",
        "every_token": "Add the score once per reply, at its last token: the reward model judged the whole reply. "
        "Added at every token, a long reply collects it many times and the policy learns to ramble.",
        "last_column": "rewards[:, -1] is padding in every padded row: put each row's score at its own last reply "
        "token, mask.sum(1) - 1.",
        "first_token": "The score belongs to the action that finished the reply, its last token (mask.sum(1) - 1), "
        "not the first.",
        "one_past": "That is one position too far: mask.sum(1) counts the reply's tokens, so the last one is at index "
        "count - 1 (index count is padding, or past the end of a full row).",
        "no_mask": "Multiply the KL by the mask: log-probabilities on padding are not tokens of the reply, and "
        "whatever they hold must not become a reward.",
        "k3_as_k1": "Use the estimator the kind names: for 'k3' the penalty is beta times (rho - 1) - log(rho), not "
        "the k1 log-ratio (your kl_penalty(logprobs, ref_logprobs, kind)).",
        "no_checks": "Check the inputs and raise ValueError: beta >= 0; logprobs, ref_logprobs and mask all "
        "(batch, resp_len); scores (batch,); every mask row has at least one reply token.",
    },
))


# ---------------------------------------------------------------------------- 11.masked_whiten


def _whiten_variant(kind: str):
    def wrong(x, mask, shift_mean=True):
        if kind != "no_checks":
            ppo("masked_whiten")(x, mask, shift_mean)
        m = mask.to(x.dtype)
        if kind == "padding_stats":
            mean, var = x.mean(), x.var()
        elif kind == "per_row":
            n = m.sum(1, keepdim=True)
            mean = (x * m).sum(1, keepdim=True) / n
            var = ((x - mean) ** 2 * m).sum(1, keepdim=True) / (n - 1).clamp(min=1)
        else:
            n = m.sum()
            mean = (x * m).sum() / n
            var = ((x - mean) ** 2 * m).sum() / (n if kind == "biased_var" else n - 1)
        scale = 1 / (var + 1e-8) if kind == "divide_by_var" else torch.rsqrt(var + 1e-8)
        if not shift_mean and kind == "scale_only":
            out = x * scale
        else:
            out = (x - mean) * scale
            if not shift_mean and kind != "shift_ignored":
                out = out + mean
        return out if kind == "padding_kept" else out * m

    wrong.__name__ = f"masked_whiten_{kind}"
    return wrong


WHITEN_MISTAKES = ("padding_stats", "per_row", "biased_var", "divide_by_var", "scale_only", "shift_ignored",
                   "padding_kept", "no_checks")


def whiten_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, x, mask, shift_mean=True, hint="default"):
        args = (x, mask, shift_mean)
        return Case(label, args, hint, show=_show(*args))

    def padded(lengths, width, scale=2.0, offset=1.0, pad_value=0.0):
        mask = _mask(lengths, width)
        x = randn(g, len(lengths), width, scale=scale) + offset
        return torch.where(mask.bool(), x, torch.full_like(x, pad_value)), mask

    short = padded([2, 6, 3], 6, offset=2.0)
    return [
        case("short replies in a long batch: the zeros on padding are not advantages, leave them out of the mean "
             "and the variance", *short, hint="padding_stats"),
        case("the statistics are over the whole batch, not per row", *padded([5, 4, 5], 5, offset=-1.0),
             hint="per_row"),
        case("four real tokens: the unbiased variance (divide by n - 1)", *padded([3, 1], 3, scale=1.5),
             hint="biased_var"),
        case("a spread of 4: divide by the standard deviation, not the variance", *padded([4, 2, 4], 4, scale=4.0),
             hint="divide_by_var"),
        case("shift_mean=False: scaled to unit variance, the mean kept", *padded([5, 3], 5, offset=3.0), False,
             hint="scale_only"),
        case("shift_mean=False with a mean of -2: (x - mean) / std + mean", *padded([4, 4, 2], 4, offset=-2.0), False,
             hint="shift_ignored"),
        case("values on padding that are not 0: the result is 0 there", *padded([3, 5], 5, pad_value=7.5),
             hint="padding_kept"),
        case("no row padded: the plain whitening", *padded([4, 4], 4)),
        case("a mask that selects nothing: ValueError", randn(g, 2, 3), torch.zeros(2, 3), hint="no_checks"),
        case("a mask that selects one element: ValueError (an unbiased variance needs two)", randn(g, 2, 3),
             _mask([1, 0], 3), hint="no_checks"),
        case("x (2, 4) and mask (2, 3): ValueError", randn(g, 2, 4), _mask([3, 2], 3), hint="no_checks"),
    ] + [
        case(f"random batch (case {n + 1})",
             *padded(lengths, width, scale=rng.uniform(0.5, 3), offset=rng.uniform(-2, 2)), rng.random() < 0.5)
        for n, width in enumerate(rng.randint(3, 9) for _ in range(3))
        for lengths in [[width] + [rng.randint(1, width) for _ in range(rng.randint(1, 4))]]
    ]


register(Checkpoint(
    id="11.masked_whiten",
    points=1,
    title="advantages whitened with the statistics of the real tokens only",
    signature="masked_whiten(x, mask, shift_mean)",
    cases=whiten_cases,
    reference=ppo("masked_whiten"),
    kind="masked",
    tol=TOL,
    grad_probe=True,
    fingerprints=[(kind, _whiten_variant(kind)) for kind in WHITEN_MISTAKES],
    hints={
        "default": "n = mask.sum(); mean = (x * mask).sum() / n; var = ((x - mean) ** 2 * mask).sum() / (n - 1); "
        "whitened = (x - mean) * torch.rsqrt(var + 1e-8), plus mean again if not shift_mean; return whitened * mask. "
        "ValueError if the shapes differ or the mask selects fewer than two elements.",
        "padding_stats": "The mean and variance include the padding: compute them over the real tokens only "
        "(masked_mean, masked_var). A batch of short replies is mostly padded zeros, which pull the mean towards 0 "
        "and shrink the spread.",
        "per_row": "Whiten over the whole batch (every real token of every row), as TRL does: per-row statistics "
        "would make every reply's advantages average 0, and a reply better than the others would get no push.",
        "biased_var": "Use the unbiased variance (divide by n - 1, n real tokens), as TRL's masked_var: yours divides "
        "by n.",
        "divide_by_var": "Divide by the standard deviation, the square root of the variance: "
        "torch.rsqrt(var + 1e-8).",
        "scale_only": "With shift_mean=False the result is (x - mean) / std + mean: scaled around the mean, which is "
        "kept. x / std alone also scales the mean.",
        "shift_ignored": "With shift_mean=False add the mean back: (x - mean) / std + mean (the scale is whitened, the "
        "mean kept).",
        "padding_kept": "Return 0 on padding (multiply by the mask): what is computed there is not a token's "
        "advantage, and it must not reach a loss.",
        "no_checks": "Raise ValueError when x and mask differ in shape, or the mask selects fewer than two elements "
        "(a mean of nothing is 0 / 0; an unbiased variance needs two).",
    },
))


# ---------------------------------------------------------------------------- 11.gae


def _gae_variant(kind: str):
    def wrong(rewards, values, mask, gamma=1.0, lam=0.95):
        if kind != "no_checks":
            ppo("gae")(rewards, values, mask, gamma, lam)
        m = mask.to(values.dtype)
        r, v = (rewards, values) if kind == "no_mask" else (rewards * m, values * m)
        width = v.shape[1]
        advantages = torch.zeros_like(v)
        if kind == "forward":
            previous = torch.zeros_like(v[:, 0])
            for t in range(width):
                following = v[:, t + 1] if t + 1 < width else torch.zeros_like(v[:, 0])
                delta = r[:, t] + gamma * following - v[:, t]
                advantages[:, t] = (delta + gamma * lam * previous) * m[:, t]
                previous = advantages[:, t]
        else:
            next_value = torch.zeros_like(v[:, 0])
            next_adv = torch.zeros_like(v[:, 0])
            for t in reversed(range(width)):
                if kind == "same_value":
                    delta = r[:, t] + gamma * v[:, t] - v[:, t]
                else:
                    delta = r[:, t] + gamma * next_value - v[:, t]
                factor = lam if kind == "no_gamma" else gamma * lam
                advantages[:, t] = delta + factor * next_adv
                if kind != "no_mask":
                    advantages[:, t] = advantages[:, t] * m[:, t]
                next_value, next_adv = v[:, t], advantages[:, t]
        if kind == "returns_no_values":
            returns = advantages
        elif kind == "mc_returns":
            returns = torch.zeros_like(v)
            running = torch.zeros_like(v[:, 0])
            for t in reversed(range(width)):
                running = r[:, t] + gamma * running
                returns[:, t] = running
        else:
            returns = advantages + v
        if kind == "no_mask":
            return advantages * m, returns * m
        return advantages, returns * m

    wrong.__name__ = f"gae_{kind}"
    return wrong


GAE_MISTAKES = ("forward", "no_mask", "same_value", "no_gamma", "returns_no_values", "mc_returns", "no_checks")


def gae_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, lengths, width, gamma, lam, hint="default", mask=None, rewards=None):
        mask = _mask(lengths, width) if mask is None else mask
        n = mask.shape[0]
        rewards = randn(g, n, width, scale=0.5) if rewards is None else rewards
        values = randn(g, n, width)  # not 0 on padding: a value read there shows
        args = (rewards, values, mask, gamma, lam)
        return Case(label, args, hint, show=_show(*args))

    return [
        case("gamma 1, lambda 0.95: each advantage looks at the rewards AFTER its token (run backwards)", [5, 5], 5,
             1.0, 0.95, "forward"),
        case("rows of 2, 5 and 3 tokens, values not 0 on padding: after the last token the value is 0", [2, 5, 3], 5,
             1.0, 0.95, "no_mask"),
        case("lambda 0: the one-step TD error r_t + gamma V_{t+1} - V_t", [4, 4], 4, 1.0, 0.0, "same_value"),
        case("gamma 0.9, lambda 0.8: the recursion's factor is gamma * lambda", [6, 4], 6, 0.9, 0.8, "no_gamma"),
        case("returns are the value head's targets: advantages + values", [3, 5], 5, 1.0, 0.95,
             "returns_no_values"),
        case("lambda 0.5: the returns are A + V (TRL), not the discounted sums of rewards", [5, 3], 5, 0.95, 0.5,
             "mc_returns"),
        case("lambda 1: the Monte-Carlo advantage, rewards-to-go minus V", [4, 2], 4, 1.0, 1.0),
        case("a reply of one token", [1, 3], 3, 0.99, 0.95),
        case("gamma 0: valid (only the immediate reward counts), the advantage is r_t - V_t", [4, 2], 4, 0.0, 0.95),
        case("lambda 1.5: ValueError (lambda must be in [0, 1])", [3, 2], 3, 1.0, 1.5, "no_checks"),
        case("lambda -0.1: ValueError", [3, 2], 3, 1.0, -0.1, "no_checks"),
        case("gamma -0.1: ValueError", [3, 2], 3, -0.1, 0.95, "no_checks"),
        case("gamma 1.5: ValueError (a discount above 1 weighs later rewards more than sooner ones)", [3, 2], 3, 1.5,
             0.95, "no_checks"),
        case("a row with no reply token: ValueError", [3, 0], 3, 1.0, 0.95, "no_checks"),
        case("rewards (2, 4) and values (2, 3): ValueError", [3, 2], 3, 1.0, 0.95, "no_checks",
             rewards=randn(g, 2, 4)),
    ] + [
        case(f"random batch (case {n + 1})", lengths, width, round(rng.uniform(0.9, 1.0), 3),
             round(rng.uniform(0.6, 1.0), 3))
        for n, width in enumerate(rng.randint(3, 10) for _ in range(3))
        for lengths in [[width] + [rng.randint(1, width) for _ in range(rng.randint(1, 4))]]
    ]


register(Checkpoint(
    id="11.gae",
    points=2,
    title="generalized advantage estimation, backwards, with masks for finished replies",
    signature="gae(rewards, values, mask, gamma, lam)",
    cases=gae_cases,
    reference=ppo("gae"),
    tol=TOL,
    fingerprints=[(kind, _gae_variant(kind)) for kind in GAE_MISTAKES],
    # a ValueError about gamma or lam where the reference returns: a range check that refuses an end of [0, 1]
    raised_hints=[(r"^ValueError: .*\b(gamma|lam|lambda)\b", "range_ends")],
    hints={
        "default": "Loop t from the last column to the first, with next_value = next_advantage = 0 at the start: "
        "delta = r[:, t] + gamma * next_value - V[:, t]; A[:, t] = (delta + gamma * lam * next_advantage) * "
        "mask[:, t]; then next_value = V[:, t] * mask[:, t], next_advantage = A[:, t]. returns = (A + V) * mask. "
        "ValueError for gamma or lam outside [0, 1], shapes that differ, or an empty mask row.",
        "forward": "Run the recursion backwards, from the last token to the first: A_t = delta_t + gamma * lambda * "
        "A_{t+1} needs the advantage of the token AFTER t. Going forwards sums the past instead of the future.",
        "no_mask": "After a reply's last token nothing follows: its V_{t+1} and A_{t+1} are 0. Yours reads the values "
        "(and rewards) on padding; multiply rewards and values by the mask (and the advantages), so padding "
        "contributes nothing.",
        "same_value": "delta_t = r_t + gamma * V_{t+1} - V_t: the value of the NEXT state, not of the same one.",
        "no_gamma": "The recursion's factor is gamma * lambda: A_t = delta_t + gamma * lambda * A_{t+1}.",
        "returns_no_values": "The returns (the value head's targets) are advantages + values: R_t = A_t + V_t.",
        "mc_returns": "The returns are A_t + V_t (the lambda-return, TRL's choice), not the discounted sums of the "
        "rewards: the two agree only when lambda = 1.",
        "no_checks": "Raise ValueError when gamma or lam is outside [0, 1], when rewards, values and mask differ in "
        "shape, or when a mask row has no reply token.",
        "range_ends": "Your check refuses a gamma or lam that is valid: both must be in [0, 1] with the ends "
        "included, 0 <= gamma <= 1 and 0 <= lam <= 1. gamma = 0 counts only the immediate reward, lam = 0 is the "
        "one-step TD error and lam = 1 the Monte-Carlo advantage.",
    },
))


# ---------------------------------------------------------------------------- 11.policy_loss


def _policy_variant(kind: str):
    def wrong(logprobs, old_logprobs, advantages, mask, clip_eps=0.2):
        if kind != "no_checks":
            ppo("policy_loss")(logprobs, old_logprobs, advantages, mask, clip_eps)
        m = mask.to(logprobs.dtype)
        old = logprobs.detach() if kind == "ratio_one" else old_logprobs.detach()
        log_ratio = old - logprobs if kind == "inverted" else logprobs - old
        ratio = torch.exp(log_ratio)
        a = advantages.detach()
        unclipped = -a * ratio
        clipped = unclipped if kind == "no_clip" else -a * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
        losses = torch.minimum(unclipped, clipped) if kind == "min" else torch.maximum(unclipped, clipped)
        if kind == "sign":
            losses = -losses
        loss = (losses * m).mean() if kind == "padding_mean" else (losses * m).sum() / m.sum()
        if kind == "clipfrac_outside":
            clipfrac = (((ratio - 1).abs() > clip_eps).to(m.dtype) * m).sum() / m.sum()
        else:
            clipfrac = ((clipped > unclipped).to(m.dtype) * m).sum() / m.sum()
        lr = log_ratio.detach()
        approx_kl = (-lr * m).sum() / m.sum() if kind == "approx_kl_k1" else 0.5 * (lr ** 2 * m).sum() / m.sum()
        return loss, clipfrac.item(), approx_kl.item()

    wrong.__name__ = f"policy_loss_{kind}"
    return wrong


POLICY_MISTAKES = ("min", "inverted", "no_clip", "ratio_one", "sign", "padding_mean", "clipfrac_outside",
                   "approx_kl_k1", "no_checks")


def policy_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, lengths, width, clip_eps=0.2, hint="default", spread_=0.5, advantages=None, probe=False,
             old=None, mask=None):
        mask = _mask(lengths, width) if mask is None else mask
        n = mask.shape[0]
        logprobs = _logprobs(g, n, width)
        old = logprobs + randn(g, n, width, scale=spread_) if old is None else old
        advantages = randn(g, n, width) if advantages is None else advantages
        args = (logprobs, old, advantages, mask, clip_eps)
        return Case(label, args, hint, show=_show(*args), probe=probe)

    return [
        case("ratios far outside [0.8, 1.2], advantages of both signs: the loss is the max of the two negatives "
             "(pessimistic)", [5, 5], 5, hint="min"),
        case("the ratio is pi_new / pi_old = exp(logprobs - old_logprobs)", [4, 3], 4, hint="inverted"),
        case("clip_eps 0.1: outside [0.9, 1.1] the clipped term takes over", [6, 6], 6, 0.1, hint="no_clip"),
        case("after some updates the policy differs from the one that sampled: the ratio is not 1", [5, 2], 5,
             spread_=0.3, hint="ratio_one"),
        case("a positive advantage: the loss falls as the token's probability rises", [3, 3], 3, spread_=0.05,
             advantages=rand(g, 2, 3, low=0.5, high=2.0), hint="sign"),
        case("rows of 6, 2 and 3 tokens: the loss is a mean over the real tokens", [6, 2, 3], 6, hint="padding_mean"),
        case("a ratio outside the range in the direction the advantage does not favour is not clipped (clipfrac)",
             [5, 4], 5, spread_=0.6, hint="clipfrac_outside"),
        case("approx_kl: half the mean squared log-ratio (the k2 estimate)", [4, 4], 4, spread_=0.4,
             hint="approx_kl_k1"),
        case("clip_eps 0: ValueError (the clipping range must be > 0)", [3, 3], 3, 0.0, hint="no_checks"),
        case("clip_eps -0.1: ValueError (a negative range is no range: 1 - eps > 1 + eps)", [3, 3], 3, -0.1,
             hint="no_checks"),
        case("advantages (2, 3) for log-probs (2, 4): ValueError", [4, 2], 4, hint="no_checks",
             advantages=randn(g, 2, 3)),
        case("a row with no reply token: ValueError", [4, 0], 4, hint="no_checks"),
    ] + [
        case(f"random batch (case {n + 1})", lengths, width, round(rng.uniform(0.1, 0.3), 3),
             spread_=rng.uniform(0.05, 0.6), probe=True)
        for n, width in enumerate(rng.randint(3, 9) for _ in range(2))
        for lengths in [[width] + [rng.randint(1, width) for _ in range(rng.randint(1, 4))]]
    ]


register(Checkpoint(
    id="11.policy_loss",
    points=2,
    title="PPO's clipped policy loss, with its clip fraction and approximate KL",
    signature="policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps)",
    cases=policy_cases,
    reference=ppo("policy_loss"),
    kind="masked",
    tol=TOL,
    grad_probe=True,
    fingerprints=[(kind, _policy_variant(kind)) for kind in POLICY_MISTAKES],
    hints={
        "default": "log_ratio = logprobs - old_logprobs.detach(); ratio = exp(log_ratio); losses = max(-A * ratio, "
        "-A * clamp(ratio, 1 - eps, 1 + eps)) with A = advantages.detach(); loss = masked mean of losses; clipfrac = "
        "masked mean of (clipped term > unclipped term); approx_kl = 0.5 * masked mean of log_ratio ** 2 (both "
        ".item()). ValueError for clip_eps <= 0, shapes that differ or an empty mask row.",
        "min": "PPO's objective min(ratio * A, clip(ratio) * A) becomes, as a loss, the MAX of the negatives: "
        "torch.maximum(-A * ratio, -A * clipped_ratio). The min of the negatives is the optimistic bound, and it "
        "never stops a step.",
        "inverted": "The ratio is pi_new / pi_old = exp(logprobs - old_logprobs): the current policy's "
        "log-probabilities minus those recorded at the rollout. Yours is inverted.",
        "no_clip": "Clip the ratio to [1 - clip_eps, 1 + clip_eps] and take the max of the two losses: without "
        "the clipped term nothing keeps an update from moving the policy too far from the one that sampled.",
        "ratio_one": "Your ratio is 1 on every token: old_logprobs must be those recorded at the rollout, before "
        "any update (the argument), not the current policy's log-probabilities detached. Recomputed after an update, "
        "the ratio is always 1 and nothing is ever clipped.",
        "sign": "The loss is the NEGATIVE of the objective: minimising -A * ratio raises the probability of tokens "
        "with a positive advantage. Yours lowers it.",
        "padding_mean": "Average over the real tokens only, sum(losses * mask) / sum(mask): a plain mean also counts "
        "the padding.",
        "clipfrac_outside": "clipfrac is the share of real tokens where the clipped term is the larger one, "
        "(clipped_loss > unclipped_loss), the tokens that give no gradient (TRL's pg_clipfrac): a ratio outside the "
        "range in the direction the advantage does not favour is not clipped.",
        "approx_kl_k1": "approx_kl is half the mean squared log-ratio over the real tokens, "
        "0.5 * masked_mean(log_ratio ** 2) (TRL's approxkl, the k2 estimate), not the mean of -log_ratio.",
        "no_checks": "Raise ValueError when clip_eps <= 0, when logprobs, old_logprobs, advantages and mask differ "
        "in shape, or when a mask row is empty.",
    },
))


# ---------------------------------------------------------------------------- 11.value_loss


def _value_variant(kind: str):
    def wrong(values, old_values, returns, mask, clip_eps_v=0.2):
        if kind != "no_checks":
            ppo("value_loss")(values, old_values, returns, mask, clip_eps_v)
        m = mask.to(values.dtype)
        old, ret = old_values.detach(), returns.detach()
        base = ret if kind == "around_returns" else old
        clipped = base + torch.clamp(values - base, -clip_eps_v, clip_eps_v)
        error = (values - ret) ** 2
        error_clipped = (clipped - ret) ** 2
        losses = torch.minimum(error, error_clipped) if kind == "min" else torch.maximum(error, error_clipped)
        loss = (losses * m).mean() if kind == "padding_mean" else (losses * m).sum() / m.sum()
        if kind != "no_half":
            loss = 0.5 * loss
        clipfrac = ((error_clipped > error).to(m.dtype) * m).sum() / m.sum()
        return loss, clipfrac.item()

    wrong.__name__ = f"value_loss_{kind}"
    return wrong


VALUE_MISTAKES = ("around_returns", "min", "no_half", "padding_mean", "no_checks")


def value_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, lengths, width, clip_eps_v=0.2, hint="default", returns=None, probe=False):
        mask = _mask(lengths, width)
        n = mask.shape[0]
        old = randn(g, n, width)
        values = old + randn(g, n, width, scale=0.5)
        returns = old + randn(g, n, width) if returns is None else returns
        args = (values, old, returns, mask, clip_eps_v)
        return Case(label, args, hint, show=_show(*args), probe=probe)

    return [
        case("new values up to 1 away from the old ones: each may move at most 0.2 from its OLD value", [5, 5], 5,
             hint="around_returns"),
        case("clip_eps_v 0.1: values that moved further are clipped", [4, 4], 4, 0.1, hint="around_returns"),
        case("the loss is the larger of the two errors (pessimistic, as the policy's)", [6, 3], 6, hint="min"),
        case("half the squared error (TRL's 0.5 * max(...))", [3, 3], 3, hint="no_half"),
        case("rows of 5, 1 and 3 tokens: a mean over the real tokens", [5, 1, 3], 5, hint="padding_mean"),
        case("clip_eps_v -0.2: ValueError", [3, 3], 3, -0.2, hint="no_checks"),
        case("clip_eps_v 0: ValueError (the range must be > 0: 0 would pin every value to its old one)", [3, 3], 3,
             0.0, hint="no_checks"),
        case("returns (2, 2) for values (2, 3): ValueError", [3, 2], 3, hint="no_checks", returns=randn(g, 2, 2)),
        case("a row with no reply token: ValueError", [3, 0], 3, hint="no_checks"),
    ] + [
        case(f"random batch (case {n + 1})", lengths, width, round(rng.uniform(0.1, 0.5), 3), probe=True)
        for n, width in enumerate(rng.randint(3, 9) for _ in range(2))
        for lengths in [[width] + [rng.randint(1, width) for _ in range(rng.randint(1, 4))]]
    ]


register(Checkpoint(
    id="11.value_loss",
    points=1,
    title="the clipped value loss, clipped around the old values",
    signature="value_loss(values, old_values, returns, mask, clip_eps_v)",
    cases=value_cases,
    reference=ppo("value_loss"),
    kind="masked",
    tol=TOL,
    grad_probe=True,
    fingerprints=[(kind, _value_variant(kind)) for kind in VALUE_MISTAKES],
    hints={
        "default": "clipped = old_values + clamp(values - old_values, -eps, eps); loss = 0.5 * masked mean of "
        "max((values - returns) ** 2, (clipped - returns) ** 2); clipfrac = masked mean of (clipped error > "
        "error), .item(). old_values and returns are detached. ValueError for clip_eps_v <= 0, shapes that differ or "
        "an empty mask row.",
        "around_returns": "Your loss is the unclipped one (and clipfrac 0): clip the new values around the OLD values "
        "recorded at the rollout, old_values + clamp(values - old_values, -eps, eps), and take the larger of the two "
        "squared errors. Clipping around the returns never makes the error larger, so the max always picks the "
        "unclipped error: it bounds nothing.",
        "min": "Take the max of the two squared errors, torch.maximum(...), as the policy loss does: the min "
        "lets a clipped value's smaller error hide a large step.",
        "no_half": "The value loss has a factor 0.5: 0.5 * masked_mean(max(...)) (TRL's vf_loss), so that its "
        "gradient is (V - R).",
        "padding_mean": "Average over the real tokens only, sum(losses * mask) / sum(mask): a plain mean also counts "
        "the padding.",
        "no_checks": "Raise ValueError when clip_eps_v <= 0, when values, old_values, returns and mask differ in "
        "shape, or when a mask row is empty.",
    },
))


# ---------------------------------------------------------------------------- 11.rollout

VOCAB, PAD, STOP = 64, 63, 62
POLICY = model_config(VOCAB, 8, 2, 2, 1, 16, True, 32)
SMALL = model_config(VOCAB, 8, 1, 2, 1, 16, True, 32)


def _policy_weights(g: torch.Generator, config: dict) -> dict[str, torch.Tensor]:
    """A ``PolicyWithValue``'s state: the model's random weights under ``model.``, and a value head
    of unit scale (not zero, so that a value read at the wrong position shows)."""
    weights = {f"model.{k}": v for k, v in random_model_weights(g, config).items()}
    weights["value_head.weight"] = randn(g, 1, config["dim"], scale=1 / math.sqrt(config["dim"]))
    weights["value_head.bias"] = randn(g, 1, scale=0.5)
    return weights


def _reward_weights(g: torch.Generator, config: dict) -> dict[str, torch.Tensor]:
    weights = {f"backbone.{k}": v for k, v in random_model_weights(g, config).items()}
    weights["score.weight"] = randn(g, 1, config["dim"], scale=1 / math.sqrt(config["dim"]))
    return weights


def _rollout_variant(kind: str):
    from solutions.model import LlamaConfig, Transformer
    from solutions.ppo import PolicyWithValue, Rollout, response_logprobs, sample_reply
    from solutions.reward import RewardModel

    @torch.no_grad()
    def wrong(policy, reference, reward_model, prompt_ids, max_new_tokens, temperature, stop_id, pad_id,
              generator=None):
        ppo("rollout")(policy, reference, reward_model, prompt_ids, max_new_tokens, temperature, stop_id, pad_id,
                       torch.Generator().manual_seed(0))  # refuses what the reference refuses
        sequences, finished = [], []
        banned = () if kind == "banned_pad" else (pad_id,)
        for prompt in prompt_ids:
            reply, done = sample_reply(policy.model, list(prompt), max_new_tokens, temperature, stop_id, banned,
                                       generator)
            if kind == "no_stop" and done:
                reply = reply[:-1] or reply
            sequences.append(list(prompt) + reply)
            finished.append(len(reply) < max_new_tokens if kind == "finished_by_length" else done)
        longest = max(len(s) for s in sequences)
        if kind == "fixed_width":  # room for the longest prompt's longest reply, used or not
            longest = max(len(p) for p in prompt_ids) + max_new_tokens
        input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
        for b, seq in enumerate(sequences):
            if kind == "left_padding":
                input_ids[b, longest - len(seq):] = torch.tensor(seq)
            else:
                input_ids[b, : len(seq)] = torch.tensor(seq)
        prompt_lengths = torch.tensor([len(p) for p in prompt_ids])
        t_policy = 1.0 if kind == "temperature" else temperature
        t_ref = 1.0 if kind in ("temperature", "ref_temperature") else temperature
        logprobs, values, mask = policy.response_outputs(input_ids, prompt_lengths, pad_id, t_policy)
        ref_model = policy.model if kind == "ref_from_policy" else reference
        ref_logprobs, _ = response_logprobs(ref_model, input_ids, prompt_lengths, pad_id, t_ref)
        scores = reward_model(input_ids, prompt_lengths).float()
        return Rollout(input_ids, prompt_lengths, mask, logprobs, ref_logprobs, values, scores, torch.tensor(finished))

    wrong.__name__ = f"rollout_{kind}"
    wrong.course_namespace = {"Transformer": Transformer, "LlamaConfig": LlamaConfig,
                              "PolicyWithValue": PolicyWithValue, "RewardModel": RewardModel}
    return wrong


ROLLOUT_MISTAKES = ("ref_from_policy", "temperature", "ref_temperature", "no_stop", "banned_pad", "left_padding",
                    "finished_by_length", "fixed_width")


def _policy_model(config, weights):
    from solutions.model import LlamaConfig, Transformer

    model = Transformer(LlamaConfig(**config))
    model.load_state_dict({k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")})
    return model


def _early_stop(model, prompt, temperature, seed) -> tuple[int, int]:
    """``(stop id, seed)``: a stop id the policy draws early in its reply to ``prompt``, sampled
    with ``seed`` (or the next seed whose reply has one), never as its first token (a reply of
    the stop token alone hides a dropped stop token), never as its sixth and last (a reply that
    stops there is as long as one cut off: a stop id ignored would then change only
    ``finished``, as the ``finished_by_length`` mistake does), never the pad."""
    for attempt in range(100):
        generator = torch.Generator().manual_seed(seed + attempt)
        reply, _ = ppo("sample_reply")(model, prompt, 6, temperature, -1, (PAD,), generator)
        later = [t for t in reply[1:-1] if t != reply[0]]
        if later:  # some seeds draw the same token six times
            return later[0], seed + attempt
    raise RuntimeError("no seed found whose reply has a second distinct token before its last")


def _stop_at_last(model, prompt, max_new_tokens, temperature, seed) -> tuple[int, int]:
    """``(stop id, seed)``: a stop id the policy draws for the first time as the LAST token
    ``max_new_tokens`` allows in its reply to ``prompt``, sampled with ``seed`` (or the next seed
    whose reply has one), never the pad. The reply then ends with the stop token exactly when
    its length reaches ``max_new_tokens``: finished, though as long as a truncated one."""
    for attempt in range(100):
        generator = torch.Generator().manual_seed(seed + attempt)
        reply, _ = ppo("sample_reply")(model, prompt, max_new_tokens, temperature, -1, (PAD,), generator)
        if reply[-1] not in reply[:-1]:
            return reply[-1], seed + attempt
    raise RuntimeError("no seed found whose reply's last token is new")


def _no_stop_at_last(model, prompt_ids, max_new_tokens, temperature, seed) -> int:
    """``seed``, or the next seed under which no reply draws ``STOP`` as the last token
    ``max_new_tokens`` allows. Only the case built for it has such a reply: there a stop id
    ignored changes nothing but ``finished``, exactly as the ``finished_by_length`` mistake
    does, and a case before it must not show the one as the other."""
    sample = ppo("sample_reply")
    for attempt in range(100):
        generator = torch.Generator().manual_seed(seed + attempt)
        replies = [sample(model, list(p), max_new_tokens, temperature, STOP, (PAD,), generator) for p in prompt_ids]
        if not any(done and len(reply) == max_new_tokens for reply, done in replies):
            return seed + attempt
    raise RuntimeError("no seed found under which no reply stops at its last allowed token")


def _pad_matters(model, rng, prompt, max_new_tokens, temperature) -> int:
    """A seed under which banning the pad id changes what is sampled (it always changes the
    distribution; on a short reply the draws may still coincide)."""
    sample = ppo("sample_reply")
    for _ in range(100):
        seed = rng.randrange(2**31)
        banned = sample(model, prompt, max_new_tokens, temperature, STOP, (PAD,), torch.Generator().manual_seed(seed))
        free = sample(model, prompt, max_new_tokens, temperature, STOP, (), torch.Generator().manual_seed(seed))
        if banned != free:
            return seed
    raise RuntimeError("no seed found under which the pad id matters")


def rollout_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)
    policy = _policy_weights(g, POLICY)
    ref = {k[len("model."):]: v + randn(g, *v.shape, scale=0.3) for k, v in policy.items() if k.startswith("model.")}
    ref["lm_head.weight"] = ref["embed_tokens.weight"]  # tied
    reward = _reward_weights(g, SMALL)

    def prompts(*lengths):
        return [[rng.randrange(1, STOP - 1) for _ in range(n)] for n in lengths]

    def case(label, prompt_ids, max_new_tokens, temperature, stop_id=STOP, hint="default", seed=None):
        if seed is None:
            seed = rng.randrange(2**31)
            if hint != "no_checks":
                seed = _no_stop_at_last(model, prompt_ids, max_new_tokens, temperature, seed)
        args = (POLICY, policy, ref, SMALL, reward, prompt_ids, max_new_tokens, temperature, stop_id, PAD, seed)
        show = (Label("<PolicyWithValue: Transformer dim=8, 2 layers, value head>"),
                Label("<reference Transformer dim=8, 2 layers>"), Label("<RewardModel dim=8, 1 layer>"),
                prompt_ids, max_new_tokens, temperature, stop_id, PAD, Label(f"torch.Generator().manual_seed({seed})"))
        return Case(label, args, hint, show=show)

    model = _policy_model(POLICY, policy)
    first = prompts(4, 6)
    stop, seed = _early_stop(model, first[0], 1.0, rng.randrange(2**31))
    long_prompt = prompts(3)
    at_last = prompts(5, 4)
    last_stop, last_seed = _stop_at_last(model, at_last[0], 5, 1.0, rng.randrange(2**31))
    longer = prompts(6, 3)
    early_stop, early_seed = _early_stop(model, longer[0], 1.0, rng.randrange(2**31))
    return [
        case("two prompts at temperature 1: the reference's log-probs come from the reference model", prompts(5, 3), 5,
             1.0, hint="ref_from_policy"),
        case("temperature 0.7: the tokens were drawn from softmax(logits / 0.7), so that is what is scored",
             prompts(4, 7, 3), 6, 0.7, hint="temperature"),
        case("temperature 1.5: the reference's log-probs at the sampling temperature too", prompts(6, 2), 5, 1.5,
             hint="ref_temperature"),
        case(f"stop id {stop}, drawn early in reply 0: the reply keeps it (it is the action that ends "
             "the reply, where the score is read)", first, 6, 1.0, stop, "no_stop", seed),
        case("a long reply at temperature 1.3: the pad id is never sampled", long_prompt, 12, 1.3, hint="banned_pad",
             seed=_pad_matters(model, rng, long_prompt[0], 12, 1.3)),
        case("prompts of 2, 8 and 5 tokens: right padding", prompts(2, 8, 5), 4, 1.0, hint="left_padding"),
        case(f"stop id {last_stop}, drawn as reply 0's 5th token, the last max_new_tokens=5 allows: that reply "
             "finished (it ends with the stop token), it was not cut off", at_last, 5, 1.0, last_stop,
             "finished_by_length", last_seed),
        case(f"stop id {early_stop}, drawn early in the reply to the longest prompt: input_ids is as wide as the "
             "longest prompt + reply, not the longest prompt + max_new_tokens", longer, 8, 1.0, early_stop,
             "fixed_width", early_seed),
        case("a prompt of 28 tokens plus 4 new ones fills a context of 32 exactly: it fits (no ValueError)",
             prompts(28, 6), 4, 1.0),
        case("temperature 0: ValueError (PPO samples)", prompts(3), 4, 0.0, hint="no_checks"),
        case("max_new_tokens 0: ValueError", prompts(3), 0, 1.0, hint="no_checks"),
        case("no prompts: ValueError", [], 4, 1.0, hint="no_checks"),
        case("an empty prompt among the prompts: ValueError (the first reply token needs something to follow)",
             [[5, 6], []], 4, 1.0, hint="no_checks"),
        case("a prompt of 30 tokens plus 4 new ones does not fit a context of 32: ValueError", prompts(30), 4, 1.0,
             hint="no_checks"),
    ]


register(Checkpoint(
    id="11.rollout",
    points=2,
    title="a rollout: sampled replies with old log-probs, reference log-probs, values and scores",
    signature="rollout(policy, reference, reward_model, prompt_ids, max_new_tokens, temperature, stop_id, pad_id, "
              "generator)",
    cases=rollout_cases,
    reference=ppo("rollout"),
    kind="rollout",
    tol=TOL,
    fingerprints=[(kind, _rollout_variant(kind)) for kind in ROLLOUT_MISTAKES],
    raised_hints=[(r"pad token before a real token", "left_padding")],
    hints={
        "default": "For each prompt in order: reply, done = sample_reply(policy.model, prompt, max_new_tokens, "
        "temperature, stop_id, (pad_id,), generator). Right-pad prompt + reply with pad_id into input_ids; "
        "prompt_lengths = the prompts' lengths; logprobs, values, mask = policy.response_outputs(input_ids, "
        "prompt_lengths, pad_id, temperature); ref_logprobs, _ = response_logprobs(reference, input_ids, "
        "prompt_lengths, pad_id, temperature); scores = reward_model(input_ids, prompt_lengths); return a Rollout. "
        "ValueError for temperature <= 0, max_new_tokens < 1, no prompts, an empty prompt, or a prompt that does not "
        "fit (len(prompt) + max_new_tokens > max_seq_len; equal fits).",
        "ref_from_policy": "ref_logprobs must come from the frozen reference model, not from the policy: the KL "
        "penalty measures how far the policy has moved from the reference, and the policy against itself is 0.",
        "temperature": "Score the tokens at the sampling temperature: the replies were drawn from softmax(logits / "
        "temperature), so pass temperature to response_outputs and response_logprobs. At temperature 1 the "
        "old log-probs describe another distribution than the one that sampled.",
        "ref_temperature": "The reference's log-probs need the sampling temperature too (response_logprobs(reference, "
        "..., temperature)): otherwise the KL compares the policy at one temperature with the reference at another, "
        "and it is not 0 even before any update.",
        "no_stop": "Keep the stop token in the reply: sample_reply returns it as the last token of a finished reply, "
        "and it is an action of the policy (the one that ended the reply), scored, penalised and where the reward "
        "model reads its score.",
        "banned_pad": "Ban the pad id when sampling (banned_ids=(pad_id,)): a sampled <|pad|> would read as padding, "
        "cutting the reply short in the mask and in the reward model.",
        "left_padding": "Pad on the right: each row is prompt + reply, then pad_id up to the longest row (the "
        "response masks and the reward model read real tokens first).",
        "no_checks": "Raise ValueError for temperature <= 0, max_new_tokens < 1, an empty list of prompts, a prompt of "
        "no token, or a prompt whose length plus max_new_tokens exceeds policy.model.cfg.max_seq_len.",
        "finished_by_length": "finished is whether the reply ended with the stop token (sample_reply's done), not "
        "whether it is shorter than max_new_tokens: a stop token drawn as the last allowed token finishes the reply "
        "too. Marked unfinished, a complete reply would get the penalty for a truncated one.",
        "fixed_width": "Pad the rows to the longest sequence actually sampled (prompt + reply), not to the longest "
        "prompt + max_new_tokens: when the replies stop early, the extra columns are padding in every row, and "
        "input_ids, mask, logprobs, ref_logprobs and values come out wider than the reference's.",
    },
))
