"""Chapter 13 checkpoints: the acceptance step, the theory (expected tokens per step and the
speed-up bound), the draft-and-verify loop with its cache rollback, and (bonus) the
self-distillation loss of multi-token heads.

The acceptance step is a function of plain tensors whose randomness is an argument, ``u``, so
its output is a deterministic list of ints. Its cases draw ``p`` and ``q`` as softmaxes of
random logits (in float64, cast) over vocabularies of 5 to 40, the drafted tokens from ``q``,
and ``u`` away from every decision boundary (no ``u_i q_i(x_i)`` within 1e-4 of ``p_i(x_i)``, no
inverse-CDF draw within 1e-4 of a cumulative sum), so that rounding on another CPU cannot flip a
choice. Hand-made cases isolate one rule each: a token the draft over-proposes (``q > p``), one it
under-proposes (always accepted), a rejection whose residual differs from ``p``, every token
accepted (the bonus), greedy as one-hot rows.

The loop is checked through ``speculative_from_weights`` (given in the notebook), which builds a
tiny random target and draft from plain data, runs the learner's ``speculative_generate`` and
returns the tokens, the per-step statistics and the length of each model's cache at every call:
a missing rollback shows in the lengths even where the tokens happen to survive it. Drafts are
noisy copies of the target (so that steps accept some tokens and reject others) or independent
smaller models (mostly rejections). Every ``ValueError`` the reference documents has a case,
and the reference raises it when iteration starts, before any token: the adapter returns an error
raised after some tokens (the model's own "positions do not fit max_seq_len" where the context was
never checked) with the tokens, not as the same refusal, and cases where every token is a stop
token (generation would end at once) catch a missing check even through an adapter that does not
(as chapter 07's ``context_late``), for the target's context and for a draft's smaller one. The
adapter reads at most ``max_new_tokens + 1`` tokens, so a generator that never ends shows as one
token too many instead of filling the memory.

The multi-token loss takes plain logits: head and teacher logits drawn in float64 (scale 1 to 3,
vocabularies of 5 to 24, T from K + 2 up), cast to float32, compared within 1e-5; hand-made
cases isolate the shift (heads that copy the teacher k positions later score 0), the direction
of the KL, the positions left out, the averaging count, the distribution against its argmax,
log_softmax on each side, the mean over heads, and each ``ValueError``. Its gradient probe
catches a teacher that is not detached.

A hint names a mistake only on evidence: a known mistake's output (a variant: the reference with
that one mistake) matched on every case where it shows, or the exception raised.
"""

from __future__ import annotations

import functools
import itertools
import math
import random

import torch

from ..core import Case, Checkpoint, Label, Raised, register
from ..reference import reference
from .inputs import generator as _gen
from .inputs import model_config as _config
from .inputs import random_model_weights as _weights
from .inputs import spread as _spread
from .inputs import rand, randn, tensor_label

spec = functools.partial(reference, "solutions.speculative")
gen = functools.partial(reference, "solutions.generate")
mdl = functools.partial(reference, "solutions.model")
MARGIN = 1e-4


# --------------------------------------------------------------------------- 13.accept

def _probs(g: torch.Generator, rows: int, vocab: int, scale: float = 1.5) -> torch.Tensor:
    return torch.softmax(randn(g, rows, vocab, scale=scale, dtype=torch.float64), dim=-1).float()


def _draw(probs: torch.Tensor, u: float) -> int:
    cdf = probs.cumsum(-1)
    return int((cdf <= u * cdf[-1]).sum().clamp(max=probs.shape[-1] - 1))


def _safe_u(p: torch.Tensor, q: torch.Tensor, drafted: list[int], u: torch.Tensor) -> bool:
    """No decision of the reference within MARGIN of its boundary."""
    gamma = len(drafted)
    for i, x in enumerate(drafted):
        if abs(float(u[i] * q[i, x] - p[i, x])) < MARGIN:
            return False
        if not u[i] * q[i, x] < p[i, x]:
            dist = (p[i] - q[i]).clamp(min=0)
            break
    else:
        dist = p[gamma]
    cdf = dist.cumsum(-1) / dist.sum()
    return bool(((cdf - u[gamma]).abs() > MARGIN).all())


def _step(g: torch.Generator, gamma: int, vocab: int, *, close: bool = False):
    """A realistic step: target and draft distributions (the draft a noisy copy if ``close``),
    tokens drafted from q, u away from every boundary."""
    while True:
        p = _probs(g, gamma + 1, vocab)
        if close:
            noise = randn(g, gamma, vocab, scale=0.6, dtype=torch.float64)
            q = torch.softmax(p[:gamma].double().log() + noise, dim=-1).float()
        else:
            q = _probs(g, gamma, vocab)
        draws = rand(g, gamma)
        drafted = [_draw(q[i], float(draws[i])) for i in range(gamma)]
        u = rand(g, gamma + 1)
        if _safe_u(p, q, drafted, u):
            return p, q, drafted, u


def _hand(p_rows, q_rows, drafted, u):
    p = torch.tensor(p_rows, dtype=torch.float64)
    q = torch.tensor(q_rows, dtype=torch.float64).reshape(-1, p.shape[1])
    return (p / p.sum(-1, keepdim=True)).float(), (q / q.sum(-1, keepdim=True)).float(), drafted, torch.tensor(u)


def _onehot(ids: list[int], vocab: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(ids, dtype=torch.long), vocab).float().reshape(len(ids), vocab)


def accept_cases(rng: random.Random) -> list[Case]:
    g = _gen(rng)

    def case(label, args, hint="default"):
        p, q, drafted, u = args
        return Case(label, (p, q, list(drafted), u), hint,
                    show=(tensor_label(p, "p", small=12), tensor_label(q, "q", small=12), list(drafted),
                          tensor_label(u, "u", small=12)))

    cases = [
        case("q(x) = 0.6 > p(x) = 0.3 and u = 0.6 >= 0.3 / 0.6: rejected; the residual max(0, p - q) keeps only token 2",
             _hand([[0.3, 0.2, 0.5], [0.2, 0.3, 0.5]], [[0.6, 0.3, 0.1]], [0], [0.6, 0.3]), "p_only"),
        case("q(x) = 0.6 > p(x) = 0.3 and u = 0.4 < 0.3 / 0.6: accepted, then the bonus token from p's last row",
             _hand([[0.3, 0.2, 0.5], [0.1, 0.7, 0.2]], [[0.6, 0.3, 0.1]], [0], [0.4, 0.5]), "p_only"),
        case("q(x) = 0.1 < p(x) = 0.5: always accepted (u = 0.9), then a bonus token",
             _hand([[0.3, 0.2, 0.5], [0.6, 0.3, 0.1]], [[0.6, 0.3, 0.1]], [2], [0.9, 0.75]), "inverted"),
        case("two accepted, the third rejected: the residual of row 2, and no bonus",
             _hand([[0.5, 0.3, 0.1, 0.1], [0.2, 0.6, 0.1, 0.1], [0.05, 0.05, 0.3, 0.6], [0.25, 0.25, 0.25, 0.25]],
                   [[0.4, 0.4, 0.1, 0.1], [0.3, 0.5, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1]], [0, 1, 0], [0.5, 0.5, 0.5, 0.2]),
             "resample_p"),
        case("every drafted token accepted: gamma + 1 tokens, the last drawn from p's last row",
             _hand([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]], [[0.2, 0.6, 0.2], [0.2, 0.2, 0.6]], [1, 2],
                   [0.3, 0.8, 0.95]), "no_bonus"),
        case("a rejection at the first token: later drafted tokens are never tested",
             _hand([[0.05, 0.9, 0.05], [0.1, 0.1, 0.8], [0.4, 0.3, 0.3]], [[0.9, 0.05, 0.05], [0.1, 0.1, 0.8]], [0, 2],
                   [0.5, 0.1, 0.3]), "no_stop"),
        case("greedy as one-hot rows: the draft's argmax 3 is the target's, 1 is not: [3, target's 2]",
             (_onehot([3, 2, 0], 5), _onehot([3, 1], 5), [3, 1], torch.zeros(3)), "bonus_row"),
        case("greedy, every token the target's argmax: the bonus is the target's next argmax",
             (_onehot([4, 0, 2, 1], 6), _onehot([4, 0, 2], 6), [4, 0, 2], torch.zeros(4)), "no_bonus"),
    ]
    realistic = [(1, 6, False), (3, 12, True), (4, 40, True), (2, 8, False), (6, 30, True), (5, 20, True)]
    for n, (gamma, vocab, close) in enumerate(realistic):
        kind = "a draft close to the target" if close else "an unrelated draft"
        cases.append(case(f"gamma {gamma}, vocabulary {vocab}, {kind} (case {n + 1})", _step(g, gamma, vocab, close=close)))
    for n in range(6):
        gamma, vocab = rng.randint(1, 6), rng.randint(5, 30)
        cases.append(case(f"random step: gamma {gamma}, vocabulary {vocab} (case {n + 1})",
                          _step(g, gamma, vocab, close=rng.random() < 0.6)))
    # the shapes the reference refuses (after the random cases: no draw of g or rng moves)
    p3, q2 = [[0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]], [[0.2, 0.6, 0.2], [0.2, 0.2, 0.6]]
    cases += [
        case("p with gamma = 2 rows, none for the bonus token (both drafted tokens accepted): ValueError",
             _hand(p3[:2], q2, [1, 2], [0.3, 0.8, 0.95]), "shapes"),
        case("p with gamma + 2 = 4 rows: ValueError", _hand(p3 + [[0.3, 0.3, 0.4]], q2, [1, 2], [0.3, 0.8, 0.95]),
             "shapes"),
        case("q with gamma + 1 = 3 rows (one per row of p): ValueError",
             _hand(p3, q2 + [[0.5, 0.25, 0.25]], [1, 2], [0.3, 0.8, 0.95]), "shapes"),
        case("u with gamma = 2 entries, none for the last draw: ValueError", _hand(p3, q2, [1, 2], [0.3, 0.8]),
             "shapes"),
    ]
    return cases


def _accept_variant(kind: str):
    """The reference acceptance step with one mistake in it."""

    def wrong(p, q, drafted, u):
        if kind != "shapes":
            spec("accept_draft")(p, q, drafted, u)  # its ValueErrors
        gamma = len(drafted)
        out = []
        for i, x in enumerate(drafted):
            row = i + 1 if kind == "shift" else i
            if kind == "p_only":
                accept = u[i] < p[row, x]
            elif kind == "inverted":
                accept = u[i] * p[row, x] < q[i, x]
            else:
                accept = u[i] * q[i, x] < p[row, x]
            if accept:
                out.append(int(x))
                continue
            if kind == "no_stop":  # the draw appended, but no return: the loop goes on
                out.append(_draw((p[row] - q[i]).clamp(min=0), float(u[gamma])))
                continue
            if kind == "resample_p":
                residual = p[row]
            elif kind == "abs_residual":
                residual = (p[row] - q[i]).abs()
            else:
                residual = (p[row] - q[i]).clamp(min=0)
                if not residual.sum() > 0:
                    residual = p[row]
            if kind == "unnormalised":
                cdf = residual.cumsum(-1)
                out.append(int((cdf <= u[gamma]).sum().clamp(max=residual.shape[-1] - 1)))
            else:
                out.append(_draw(residual, float(u[i] if kind == "same_u" else u[gamma])))
            return out
        if kind == "no_bonus":
            return out
        out.append(_draw(p[gamma - 1 if kind == "bonus_row" and gamma else gamma], float(u[gamma])))
        return out

    wrong.__name__ = f"accept_draft_{kind}"
    return wrong


ACCEPT_MISTAKES = ("p_only", "inverted", "resample_p", "abs_residual", "no_bonus", "bonus_row", "no_stop", "same_u",
                   "unnormalised", "shift", "shapes")

register(Checkpoint(
    id="13.accept",
    points=3,
    title="accept with probability min(1, p/q), resample from norm(max(0, p - q)), a bonus token after gamma",
    signature="accept_draft(p, q, drafted, u)",
    cases=accept_cases,
    reference=spec("accept_draft"),
    fingerprints=[(kind, _accept_variant(kind)) for kind in ACCEPT_MISTAKES],
    hints={
        "default": "For each drafted x_i: accept if u[i] * q[i, x] < p[i, x] (probability min(1, p/q)); at the first "
        "rejection draw from max(0, p[i] - q[i]) (normalised) with u[gamma] by the inverse CDF and stop; if all are "
        "accepted, draw the bonus token from p[gamma] with u[gamma]. Return the list of ints. ValueError unless p has "
        "gamma + 1 rows, q gamma rows and u gamma + 1 entries.",
        "p_only": "Accept with probability min(1, p(x) / q(x)), not p(x): a token the draft proposes too often "
        "(q(x) > p(x)) must be thinned by q, and one it proposes too rarely (q(x) <= p(x)) always accepted.",
        "inverted": "The ratio is p(x) / q(x), target over draft: accept when u * q(x) < p(x). With q / p a token the "
        "target likes more than the draft would be rejected.",
        "resample_p": "On rejection draw from the residual max(0, p - q), normalised, not from p: the accepted tokens "
        "already gave the tokens the draft over-proposes their share, and drawing from p again would count them twice.",
        "abs_residual": "The residual is max(0, p - q), not |p - q|: only tokens the target wants *more* than the draft "
        "proposed them get the rejected probability mass.",
        "no_bonus": "When every drafted token is accepted, the target's last row p[gamma] (computed in the same pass) "
        "still gives one more token: append a draw from it with u[gamma]. Without it, a step of gamma accepted tokens "
        "yields gamma tokens instead of gamma + 1.",
        "bonus_row": "The bonus token comes from p[gamma], the target's distribution *after* all gamma drafted tokens "
        "(p has gamma + 1 rows), not from p[gamma - 1].",
        "no_stop": "Stop at the first rejection: the drafted tokens after it were drafted from a prefix that is now "
        "gone, so they are never tested. Return the accepted ones plus the token drawn from the residual.",
        "same_u": "Draw the replacement token with a fresh uniform, u[gamma], not with u[i] used for the acceptance "
        "test: u[i] is known to be >= p/q there, so reusing it biases the draw.",
        "unnormalised": "Normalise the residual max(0, p - q) before drawing (or compare with u times its total): its "
        "entries sum to less than 1, so (cdf <= u).sum() can run past the last token.",
        "shift": "Row i of p is the target's distribution for drafted token i (the target pass on [last, x_1, ...] "
        "predicts x_1 at its first position): compare p[i, x_i], not p[i + 1, x_i].",
        "shapes": "Check the shapes before anything else: with gamma = len(drafted), p needs gamma + 1 rows, q gamma "
        "rows and u gamma + 1 entries; raise ValueError otherwise. Without the check a missing row shows up as an "
        "IndexError (or not at all, when a rejection comes first) and a surplus one is silently ignored.",
    },
))


# ---------------------------------------------------------------------- 13.expected_tokens

def expected_cases(rng: random.Random) -> list[Case]:
    cases = [
        Case("alpha 0.8, gamma 4: (1 - 0.8^5) / 0.2 = 3.3616", (0.8, 4)),
        Case("alpha 0.5, gamma 1: 1.5 (one drafted token, accepted half the time, plus one)", (0.5, 1), "exponent"),
        Case("alpha 0: every draft rejected, still one token per step", (0.0, 3), "no_bonus"),
        Case("alpha 1: every draft accepted, gamma + 1 = 6 tokens per step", (1.0, 5), "alpha_one"),
        Case("alpha 0.9, gamma 8: the geometric sum is truncated at gamma", (0.9, 8), "untruncated"),
        Case("gamma 0: one token per step, the target's own", (0.7, 0), "exponent"),
        Case("alpha 1.2: ValueError (a probability)", (1.2, 4), "validate"),
        Case("alpha -0.1: ValueError", (-0.1, 4), "validate"),
        Case("gamma -1: ValueError (a number of drafted tokens, >= 0)", (0.8, -1), "gamma"),
        Case("gamma 2.5: ValueError (an int)", (0.5, 2.5), "gamma"),
    ]
    for n in range(6):
        alpha, gamma = round(rng.uniform(0.05, 0.98), 3), rng.randint(1, 10)
        cases.append(Case(f"alpha {alpha}, gamma {gamma} (case {n + 1})", (alpha, gamma)))
    return cases


def _validated_alpha(fn):
    def wrong(alpha, gamma):
        spec("expected_tokens")(alpha, gamma)  # its ValueErrors, for alpha and for gamma
        return fn(alpha, gamma)
    wrong.__name__ = fn.__name__
    return wrong


def _safe_ratio(alpha, gamma, power):
    return float(gamma + 1 if power == gamma + 1 else gamma) if alpha == 1 else (1 - alpha ** power) / (1 - alpha)


EXPECTED_MISTAKES = {
    "exponent": lambda alpha, gamma: _safe_ratio(alpha, gamma, gamma),
    "no_bonus": lambda alpha, gamma: float(gamma) if alpha == 1 else alpha * (1 - alpha ** gamma) / (1 - alpha),
    "untruncated": lambda alpha, gamma: math.inf if alpha == 1 else 1 / (1 - alpha),
    "linear": lambda alpha, gamma: 1 + gamma * alpha,
    "alpha_one": lambda alpha, gamma: (1 - alpha ** (gamma + 1)) / (1 - alpha),
}


def _gamma_unchecked(alpha, gamma):
    if not 0 <= alpha <= 1:
        raise ValueError("alpha must be in [0, 1]")
    return float(gamma + 1) if alpha == 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


register(Checkpoint(
    id="13.expected_tokens",
    points=1,
    title="expected tokens per step, (1 - alpha^(gamma + 1)) / (1 - alpha), and gamma + 1 at alpha = 1",
    signature="expected_tokens(alpha, gamma)",
    cases=expected_cases,
    reference=spec("expected_tokens"),
    tol=1e-9,
    fingerprints=[(hint, _validated_alpha(fn)) for hint, fn in EXPECTED_MISTAKES.items()]
    + [("gamma", _gamma_unchecked)],
    raised_hints=[(r"ZeroDivisionError", "alpha_one")],
    hints={
        "default": "Return (1 - alpha ** (gamma + 1)) / (1 - alpha), and gamma + 1 when alpha == 1; raise ValueError "
        "unless 0 <= alpha <= 1 and gamma is an int >= 0.",
        "exponent": "The exponent is gamma + 1: the step yields the accepted prefix (0 to gamma tokens) plus one more "
        "token, 1 + alpha + ... + alpha^gamma, a sum of gamma + 1 terms.",
        "no_bonus": "Count the token every step ends with (the residual draw or the bonus): a step always yields at "
        "least one token, so the expectation is 1 + alpha + ... + alpha^gamma.",
        "untruncated": "At most gamma tokens are drafted, so the geometric sum stops at alpha^gamma: "
        "(1 - alpha^(gamma + 1)) / (1 - alpha), not 1 / (1 - alpha).",
        "linear": "Acceptances are not independent of their position: token i is used only if all before it were "
        "accepted, with probability alpha^i. The expectation is 1 + alpha + alpha^2 + ... + alpha^gamma, not 1 + gamma alpha.",
        "alpha_one": "At alpha = 1 the formula is 0 / 0: its limit is gamma + 1 (every drafted token accepted, plus "
        "the bonus). Return it for alpha == 1.",
        "validate": "Raise ValueError when alpha is outside [0, 1]: it is a probability.",
        "gamma": "Raise ValueError unless gamma is an int >= 0 (isinstance(gamma, int), not a bool): it counts "
        "drafted tokens. The formula returns a number for gamma = -1 or 2.5 all the same (0 tokens per step at -1).",
    },
))


# ------------------------------------------------------------------------ 13.speedup_bound

def bound_cases(rng: random.Random) -> list[Case]:
    cases = [
        Case("alpha 0.8, gamma 4, c 0.25: 3.3616 / 2 = 1.6808", (0.8, 4, 0.25)),
        Case("c = 0 (a free draft): the speed-up is the tokens per step", (0.8, 4, 0.0), "no_c"),
        Case("alpha 0.5, gamma 1, c 0.5: 1.5 / 1.5 = 1", (0.5, 1, 0.5), "gamma_plus_one"),
        Case("alpha 0.6, gamma 6, c 0.1", (0.6, 6, 0.1), "c_inverted"),
        Case("alpha 1, gamma 3, c 0.2: 4 / 1.6 = 2.5", (1.0, 3, 0.2), "multiply"),
        Case("a draft as costly as the target (c = 1): always a slow-down", (0.9, 4, 1.0)),
        Case("c = -0.1: ValueError (a cost ratio)", (0.8, 4, -0.1), "validate"),
        Case("c = nan: ValueError (nan < 0 is False: the test must be not c >= 0)", (0.8, 4, math.nan), "validate"),
        Case("c = inf: ValueError (a finite cost)", (0.8, 4, math.inf), "validate"),
        Case("alpha 1.2: ValueError (expected_tokens' own check)", (1.2, 4, 0.1), "alpha"),
    ]
    for n in range(6):
        alpha, gamma, c = round(rng.uniform(0.1, 0.95), 3), rng.randint(1, 8), round(rng.uniform(0.02, 0.6), 3)
        cases.append(Case(f"alpha {alpha}, gamma {gamma}, c {c} (case {n + 1})", (alpha, gamma, c)))
    return cases


def _validated_c(fn):
    def wrong(alpha, gamma, c):
        spec("speedup_bound")(alpha, gamma, c)  # its ValueErrors: c, then alpha and gamma
        return fn(alpha, gamma, c)
    wrong.__name__ = fn.__name__
    return wrong


def _e(alpha, gamma):
    return spec("expected_tokens")(alpha, gamma)


BOUND_MISTAKES = {
    "gamma_plus_one": lambda a, g, c: _e(a, g) / ((g + 1) * c + 1),
    "no_c": lambda a, g, c: _e(a, g) / (g + 1),
    "c_inverted": lambda a, g, c: _e(a, g) / (g / c + 1) if c else math.inf,
    "multiply": lambda a, g, c: _e(a, g) * (g * c + 1),
    "no_target": lambda a, g, c: _e(a, g) / (g * c) if c else math.inf,
}


def _alpha_unchecked(alpha, gamma, c):
    """Only c checked (c < 0), and the formula inline: alpha = 1.2 gives a number."""
    if c < 0:
        raise ValueError("c must be >= 0")
    e = float(gamma + 1) if alpha == 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)
    return e / (gamma * c + 1)


register(Checkpoint(
    id="13.speedup_bound",
    points=1,
    title="the speed-up bound: expected tokens per step over the cost of a step, gamma c + 1",
    signature="speedup_bound(alpha, gamma, c)",
    cases=bound_cases,
    reference=spec("speedup_bound"),
    tol=1e-9,
    fingerprints=[(hint, _validated_c(fn)) for hint, fn in BOUND_MISTAKES.items()] + [("alpha", _alpha_unchecked)],
    hints={
        "default": "Return expected_tokens(alpha, gamma) / (gamma * c + 1); raise ValueError unless c is a finite "
        "number >= 0 (expected_tokens checks alpha and gamma).",
        "gamma_plus_one": "A step runs the draft gamma times, not gamma + 1: the cost is gamma * c + 1 target steps "
        "(the + 1 is the target's verifying pass).",
        "no_c": "Count the draft's cost in target steps: a step costs gamma * c + 1, where c is the draft's time per "
        "token over the target's; dividing by gamma + 1 prices a draft step like a target step.",
        "c_inverted": "c is the draft's cost relative to the target's (a small number for a small draft): a step costs "
        "gamma * c + 1 target steps, not gamma / c + 1.",
        "multiply": "Divide the tokens per step by the cost of a step (gamma * c + 1), do not multiply: a costlier "
        "draft means less speed-up.",
        "no_target": "The step also pays the target's verifying pass: gamma * c + 1, not gamma * c.",
        "validate": "Raise ValueError unless c is a finite number >= 0: it is a ratio of two costs. Test "
        "not (c >= 0) and math.isfinite(c): nan < 0 is False, so a test of c < 0 lets nan through (and inf gives a "
        "speed-up of 0).",
        "alpha": "Raise ValueError for alpha outside [0, 1], as expected_tokens does: call expected_tokens(alpha, "
        "gamma) rather than writing the formula again without its checks.",
    },
))


# ----------------------------------------------------------------------- 13.speculative

def _noisy(g: torch.Generator, weights: dict, config: dict, scale: float) -> dict:
    """A draft: the target's weights plus noise (same config), so that some drafted tokens are accepted."""
    out = {k: v + _spread(g, *v.shape, scale=scale * float(v.abs().mean())) for k, v in weights.items()
           if not (k == "lm_head.weight" and config["tie_embeddings"])}
    if config["tie_embeddings"]:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out


def _margin(config: dict, weights: dict, tokens: list[int], start: int) -> float:
    """The smallest lead of the best logit over the second at positions start-1 .. end-1 (one pass)."""
    model = mdl("Transformer")(mdl("LlamaConfig")(**config))
    model.load_state_dict(weights)
    with torch.no_grad():
        logits = model(torch.tensor([tokens]))[0, start - 1:]
    top2 = logits.topk(2, dim=-1).values
    return float((top2[:, 0] - top2[:, 1]).min()) if len(top2) else math.inf


def _one_thread(fn):
    @functools.wraps(fn)
    def wrapped(*args):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args)
        finally:
            torch.set_num_threads(before)
    return wrapped


def _models(g, tc, dc, runs, noise):
    """Target and draft weights whose greedy choices along ``runs`` are clear-cut (redrawn otherwise)."""
    run = spec("speculative_from_weights")
    while True:
        tw = _weights(g, tc)
        dw = _noisy(g, tw, tc, noise) if dc is tc else _weights(g, dc)
        ok = True
        for prompt, n, gamma in runs:
            out = run(tc, tw, dc, dw, prompt, {"max_new_tokens": n, "gamma": gamma})["tokens"]
            seq = prompt + out
            if _margin(tc, tw, seq, len(prompt)) < 1e-3 or _margin(dc, dw, seq, len(prompt)) < 1e-3:
                ok = False
                break
        if ok:
            return tw, dw


def _top_p_seed(tc: dict, tw: dict, dw: dict, prompt: list[int]) -> int:
    """The first seed from 5 on whose top-p 0.6 run differs from the same run without the nucleus filter."""
    run = spec("speculative_from_weights")
    for seed in range(5, 105):
        options = {"max_new_tokens": 12, "gamma": 3, "temperature": 1.0, "seed": seed}
        if run(tc, tw, tc, dw, prompt, {**options, "top_p": 0.6}) != run(tc, tw, tc, dw, prompt, options):
            return seed
    raise AssertionError("top_p 0.6 changes nothing on 100 seeds")  # noqa: TRY003 - never, on these models


def _label(config: dict) -> Label:
    return Label(f"<vocab {config['vocab_size']}, {config['n_layers']} layer(s), dim {config['dim']}, "
                 f"max_seq_len {config['max_seq_len']}>")


@_one_thread
def speculative_cases(rng: random.Random) -> list[Case]:
    g = _gen(rng)

    def case(label, tc, tw, dc, dw, prompt, hint="default", **options):
        return Case(label, (tc, tw, dc, dw, prompt, options), hint,
                    show=(_label(tc), Label("<weights>"), _label(dc), Label("<weights>"), prompt, options))

    tc = _config(24, 16, 2, 4, 2, 24, False, 40)
    p1, p2 = [3, 7, 1, 12], [5, 11, 2]
    tw, dw = _models(g, tc, tc, [(p1, 14, 3), (p2, 12, 2), (p1, 10, 5)], noise=0.25)
    small = _config(24, 8, 1, 2, 1, 16, True, 40)
    sw = _weights(g, small)
    other = _config(30, 8, 1, 2, 1, 16, True, 40)
    ow = _weights(g, other)
    short = dict(small, max_seq_len=20)  # the small draft's weights (RoPE tables are not in a state dict)
    every = list(range(tc["vocab_size"]))  # every token a stop token: generation would end at once
    nucleus = _top_p_seed(tc, tw, dw, p1)
    cases = [
        case("greedy, gamma 3, a draft close to the target: 14 new tokens", tc, tw, tc, dw, p1, "rollback",
             max_new_tokens=14, gamma=3),
        case("greedy, gamma 2", tc, tw, tc, dw, p2, "rollback", max_new_tokens=12, gamma=2),
        case("greedy, gamma 5: steps that accept every drafted token need the bonus token", tc, tw, tc, dw, p1,
             "bonus", max_new_tokens=10, gamma=5),
        case("greedy, gamma 1, an unrelated 1-layer draft (most drafts rejected)", tc, tw, small, sw, p2,
             "rollback", max_new_tokens=8, gamma=1),
        case("a one-token prompt (nothing to prefill but the caches)", tc, tw, tc, dw, [9], "prefill",
             max_new_tokens=6, gamma=3),
        case("max_new_tokens 7 with gamma 4: the last step drafts fewer tokens, never more than asked", tc, tw, tc,
             dw, p2, "overrun", max_new_tokens=7, gamma=4),
        case("max_new_tokens 0 yields nothing", tc, tw, tc, dw, p1, "overrun", max_new_tokens=0, gamma=3),
        case("sampling, T = 1, seed 5: the drafts with torch.rand(1, generator=generator), then u = "
             "torch.rand(gamma + 1, generator=generator)", tc, tw, tc, dw, p1, "sampling", max_new_tokens=12,
             gamma=3, temperature=1.0, seed=5),
        case("sampling, T = 0.8, top-k 6, seed 11", tc, tw, tc, dw, p2, "sampling", max_new_tokens=10, gamma=2,
             temperature=0.8, top_k=6, seed=11),
        case(f"sampling, T = 1, top-p 0.6, seed {nucleus}: the nucleus filter on both q and p", tc, tw, tc, dw, p1,
             "top_p", max_new_tokens=12, gamma=3, temperature=1.0, top_p=0.6, seed=nucleus),
        case("gamma 0: ValueError (nothing to speculate)", tc, tw, tc, dw, p1, "validate", max_new_tokens=4, gamma=0),
        case("temperature -1: ValueError", tc, tw, tc, dw, p1, "validate", max_new_tokens=4, gamma=2,
             temperature=-1.0),
        case("a draft with 30 token ids for a target with 24: ValueError", tc, tw, other, ow, p1, "vocab",
             max_new_tokens=4, gamma=2),
        case("a prompt of 36 + 8 new tokens > max_seq_len 40: ValueError", tc, tw, tc, dw, [4] * 36, "context",
             max_new_tokens=8, gamma=2),
        case("past the context, though every token is a stop token (generation would end at once): ValueError all "
             "the same, raised before generating", tc, tw, tc, dw, [4] * 36, "context_late", max_new_tokens=8,
             gamma=2, stop_tokens=every),
        case("a draft with max_seq_len 20 (the target's is 40): a prompt of 16 + 8 new tokens fits the target, not "
             "the draft: ValueError", tc, tw, short, sw, p1 * 4, "context_draft", max_new_tokens=8, gamma=2),
        case("the same draft and prompt, every token a stop token: ValueError all the same, raised before generating",
             tc, tw, short, sw, p1 * 4, "context_draft", max_new_tokens=8, gamma=2, stop_tokens=every),
        case("an empty prompt: ValueError", tc, tw, tc, dw, [], "validate", max_new_tokens=4, gamma=2),
        case("max_new_tokens = -1: ValueError", tc, tw, tc, dw, p1, "negative", max_new_tokens=-1, gamma=2),
    ]
    # stop tokens: one the greedy run produces at step 3 or later, not in the prompt
    free = spec("speculative_from_weights")(tc, tw, tc, dw, p1, {"max_new_tokens": 14, "gamma": 3})["tokens"]
    later = [free[i] for i in range(3, len(free)) if free[i] not in free[:i] and free[i] not in p1]
    if later:
        cases.insert(6, case(f"stop token {later[0]}: generation ends there, the stop token not yielded", tc, tw, tc,
                             dw, p1, "stop", max_new_tokens=14, gamma=3, stop_tokens=[later[0]]))
    for n in range(2):
        tc2 = _config(rng.randint(16, 28), 16, rng.randint(1, 2), 2, rng.choice([1, 2]), 24, rng.random() < 0.5, 48)
        prompt = [rng.randrange(tc2["vocab_size"]) for _ in range(rng.randint(1, 6))]
        gamma, new = rng.randint(1, 5), rng.randint(4, 14)
        tw2, dw2 = _models(g, tc2, tc2, [(prompt, new, gamma)], noise=0.3)
        options = {"max_new_tokens": new, "gamma": gamma}
        if n == 1:
            options.update(temperature=round(rng.uniform(0.7, 1.3), 2), seed=rng.randrange(1000))
        cases.append(case(f"random models and prompt (case {n + 1})", tc2, tw2, tc2, dw2, prompt,
                          "sampling" if "seed" in options else "default", **options))
    return cases


def _spec_variant(kind: str):
    """The reference loop with one mistake in it, behind the checkpoint's adapter."""

    def wrong_generate(target, draft, prompt_ids, max_new_tokens, gamma=4, temperature=0.0, top_k=None, top_p=1.0,
                       stop_tokens=(), generator=None, stats=None):
        if kind != "validate":
            spec("check_speculative")(gamma, temperature, target.cfg.vocab_size,
                                      draft.cfg.vocab_size if kind != "vocab" else target.cfg.vocab_size)
        gen("check_sampling")(temperature, top_k, top_p) if kind != "validate" else None
        if kind != "negative" and max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        prompt = list(prompt_ids)
        if not prompt:
            raise ValueError("empty prompt")
        context = target.cfg.max_seq_len if kind == "context_draft" else min(target.cfg.max_seq_len,
                                                                            draft.cfg.max_seq_len)
        if kind != "context_late" and len(prompt) + max_new_tokens > context:  # context_late: the model's own error
            raise ValueError("does not fit the context")
        if kind == "top_p":  # the nucleus filter left out of to_probs
            top_p = 1.0
        stop = set(stop_tokens)
        t_caches, d_caches = target.new_caches(), draft.new_caches()
        with torch.no_grad():
            if len(prompt) > 1:
                target(torch.tensor([prompt[:-1]]), t_caches)
                draft(torch.tensor([prompt[:-1]]), d_caches)
        committed, last, draft_todo, produced = len(prompt), prompt[-1], [prompt[-1]], 0
        limit = max_new_tokens + 1 if kind == "too_many" else max_new_tokens  # too_many: counted inclusively
        while produced < limit:
            g = gamma if kind == "overrun" else min(gamma, limit - produced - 1)
            if kind == "overrun":
                g = min(g, min(target.cfg.max_seq_len, draft.cfg.max_seq_len) - committed)
            drafted, q_rows = [], []
            with torch.no_grad():
                for _ in range(g):
                    logits = draft(torch.tensor([draft_todo]), d_caches)[0, -1]
                    q = spec("to_probs")(logits, temperature, top_k, top_p)
                    x = int(logits.argmax()) if temperature == 0 else _draw(q, float(torch.rand(1, generator=generator)))
                    drafted.append(x)
                    q_rows.append(q)
                    draft_todo = [x]
                if kind == "per_token":  # the target verifies each drafted token in a call of its own
                    rows = [target(torch.tensor([[t]]), t_caches)[0] for t in [last] + drafted]
                    logits = torch.cat(rows)
                else:
                    logits = target(torch.tensor([[last] + drafted]), t_caches)[0]
            p = spec("to_probs")(logits, temperature, top_k, top_p)
            u = torch.rand(g + 1, generator=generator) if temperature > 0 else torch.zeros(g + 1)
            q = torch.stack(q_rows) if q_rows else p[:0]
            new = _accept_variant(kind)(p, q, drafted, u) if kind in ACCEPT_MISTAKES and g else \
                spec("accept_draft")(p, q, drafted, u)
            n = len(new) - 1
            if stats is not None:
                stats.append((g, n))
            committed += len(new)
            if kind != "no_rollback":
                spec("rollback")(t_caches, committed - 1)
            if g == 0:
                draft_todo = draft_todo + new
            elif n == g:
                draft_todo = [new[-1]] if kind == "draft_gap" else [drafted[-1], new[-1]]
            else:
                if kind != "no_draft_rollback":
                    spec("rollback")(d_caches, committed - 1)
                draft_todo = [new[-1]]
            last = new[-1]
            for token in new:
                if token in stop:
                    return
                yield token
                produced += 1

    def wrong(tc, tw, dc, dw, prompt, options):
        return _through_adapter(wrong_generate, tc, tw, dc, dw, prompt, options)

    wrong.__name__ = f"speculative_{kind}"
    return _one_thread(wrong)


def _through_adapter(generate, tc, tw, dc, dw, prompt, options) -> dict:
    """What the given speculative_from_weights does, around any ``speculative_generate``; and two
    things it must do too (see the module docstring): at most ``max_new_tokens + 1`` tokens read,
    and a ``ValueError`` raised after the first token returned under :data:`LATE`, not raised."""
    models = {}
    for name, config, weights in (("target", tc, tw), ("draft", dc, dw)):
        model = mdl("Transformer")(mdl("LlamaConfig")(**config))
        model.load_state_dict(weights)
        models[name] = model.eval()
    lengths = {"target": [], "draft": []}

    def recorder(name):
        def hook(module, args, kwargs):
            caches = args[1] if len(args) > 1 else kwargs.get("caches")
            lengths[name].append(len(caches[0]) if caches else 0)
        return hook

    for name, model in models.items():
        model.register_forward_pre_hook(recorder(name), with_kwargs=True)
    options = dict(options)
    seed = options.pop("seed", None)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    steps = []
    # at most one token more than asked for: a generator that never ends is cut there, and the extra token shows
    asked = options.get("max_new_tokens")
    limit = asked + 1 if isinstance(asked, int) and asked >= 0 else 1
    tokens = []
    try:
        for token in itertools.islice(generate(models["target"], models["draft"], prompt, generator=generator,
                                               stats=steps, **options), limit):
            tokens.append(token)
    except ValueError as error:
        if not tokens:
            raise  # before the first token: a refusal, like the reference's
        # after some tokens (the model's own "positions do not fit max_seq_len", say): not the same outcome as a
        # refusal at once, so it is returned, first in the dict, where the report shows it
        return {LATE: f"{type(error).__name__}: {_message(error)}", "tokens": tokens, "steps": steps,
                "target cache": lengths["target"], "draft cache": lengths["draft"]}
    return {"tokens": tokens, "steps": steps, "target cache": lengths["target"], "draft cache": lengths["draft"]}


LATE = "raised after yielding tokens"


def _message(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # noqa: BLE001 - a learner's exception whose __str__ fails
        return "(its message cannot be shown)"


def diagnose_speculative(case: Case, expected, got) -> str | None:
    """What the adapter's output shows by itself: more tokens than max_new_tokens, or the model's own
    context error after some tokens where the reference returns (drafting past the end). A late
    error where the reference refuses at once gets the case's own hint (run() falls back to it)."""
    if isinstance(expected, Raised) or not isinstance(got, dict):
        return None
    asked = case.args[5].get("max_new_tokens")
    tokens = got.get("tokens")
    if isinstance(tokens, list) and isinstance(asked, int) and len(tokens) > asked:
        return "too_many"
    if "positions do not fit max_seq_len" in str(got.get(LATE, "")):
        return "overrun"
    return None


SPEC_MISTAKES = ("no_rollback", "no_draft_rollback", "draft_gap", "no_bonus", "resample_p", "p_only", "per_token",
                 "overrun", "validate", "vocab", "top_p", "negative", "context_late", "context_draft", "too_many")

register(Checkpoint(
    id="13.speculative",
    points=4,
    title="draft gamma tokens with the draft's cache, verify them in one target pass, roll both caches back",
    signature="speculative_from_weights(target_config, target_weights, draft_config, draft_weights, prompt, options)",
    cases=speculative_cases,
    reference=_one_thread(spec("speculative_from_weights")),
    fingerprints=[(kind, _spec_variant(kind)) for kind in SPEC_MISTAKES],
    diagnose=diagnose_speculative,
    raised_hints=[(r"positions do not fit max_seq_len", "overrun")],
    hints={
        "default": "Validate (check_speculative, check_sampling, max_new_tokens, the prompt, the context) before "
        "yielding anything; prefill both caches with "
        "prompt[:-1]; each step: draft g = min(gamma, tokens left - 1) tokens one at a time through the draft's "
        "cache, run the target once on [last] + drafted, accept_draft, then roll the target's cache back to "
        "len(committed) - 1 and the draft's too (or feed it its last drafted token next step if all were accepted).",
        "rollback": "The tokens or the caches' lengths differ: after each step both caches must hold exactly the "
        "committed tokens but the last (rollback(caches, committed - 1)), whatever was drafted past the first rejection.",
        "no_rollback": "Roll the target's cache back after each step: it holds the gamma + 1 positions of the "
        "verifying pass, including drafted tokens that were rejected, and the next pass would attend to them.",
        "no_draft_rollback": "Roll the draft's cache back after a rejection too: it holds the drafted tokens after "
        "the rejected one, which are no longer part of the text.",
        "draft_gap": "When every drafted token is accepted, the draft has not yet seen its own last drafted token (it "
        "was drawn, never fed): feed [x_gamma, bonus] to the draft at the start of the next step.",
        "no_bonus": "When all gamma drafted tokens are accepted, the target's last row gives one more token (the "
        "bonus): a step yields up to gamma + 1 tokens.",
        "resample_p": "On rejection draw from the residual max(0, p - q), not from p (see 13.accept).",
        "p_only": "Accept with probability min(1, p(x) / q(x)), not p(x) (see 13.accept).",
        "per_token": "The tokens are right, but the target ran once per drafted token: run it once on "
        "[last, x_1, ..., x_gamma], a (1, gamma + 1) tensor. That single pass is where the speed-up comes from.",
        "overrun": "Never draft past the end: draft min(gamma, max_new_tokens - produced - 1) tokens, so that the "
        "caches never hold more than the prompt and the new tokens, and at most max_new_tokens tokens are yielded.",
        "prefill": "Prefill both caches with every prompt token but the last (nothing when the prompt is one token), "
        "then feed the last prompt token to each model at the first step.",
        "stop": "When a yielded token would be a stop token, end the generator there, without yielding it.",
        "bonus": "A step that accepts every drafted token yields gamma + 1 tokens: the last from the target's last row.",
        "sampling": "Greedy decoding is right but sampling differs: draw each drafted token with "
        "torch.rand(1, generator=generator) by the inverse CDF of q, then u = torch.rand(gamma + 1, "
        "generator=generator) for accept_draft, in that order, with to_probs for both p and q.",
        "validate": "Call check_speculative(gamma, temperature, target.cfg.vocab_size, draft.cfg.vocab_size) and "
        "check_sampling(...) first, and refuse an empty prompt: a bad setting must raise ValueError at once.",
        "vocab": "Refuse a draft whose vocabulary differs from the target's (check_speculative): the target would "
        "score the draft's ids as other tokens, or index past its vocabulary.",
        "context": "Raise ValueError when len(prompt) + max_new_tokens exceeds either model's max_seq_len.",
        "context_late": "Check the context before generating anything: raise ValueError as soon as len(prompt) + "
        "max_new_tokens > min(target.cfg.max_seq_len, draft.cfg.max_seq_len), even if a stop token would end "
        "generation in time. Leaving it to the models' own error fails half-way, after some tokens were yielded, or "
        "not at all, depending on what the models happen to say.",
        "context_draft": "The draft needs room too: it holds the prompt and every drafted token, so check "
        "len(prompt) + max_new_tokens against min(target.cfg.max_seq_len, draft.cfg.max_seq_len), not the target's "
        "max_seq_len alone, and raise ValueError before generating anything.",
        "negative": "Raise ValueError when max_new_tokens is negative (or not an int): the while loop would silently "
        "yield nothing for a request that makes no sense.",
        "top_p": "Pass top_p to to_probs for both models, as temperature and top_k: the draft's q and the target's p "
        "must be the distributions each really samples from, nucleus filter included.",
        "too_many": "Yield at most max_new_tokens tokens: count them and end the generator when produced == "
        "max_new_tokens (the check stopped reading after max_new_tokens + 1, so a loop that never ends shows here).",
    },
))


# ------------------------------------------------------------------------ 13.mtp_loss (bonus)

def _mtp_logits(g: torch.Generator, K: int, B: int, T: int, V: int, scale: float = 2.0):
    return randn(g, K, B, T, V, scale=scale), randn(g, B, T, V, scale=scale)


def mtp_cases(rng: random.Random) -> list[Case]:
    g = _gen(rng)

    def case(label, head_logits, teacher_logits, hint="default", probe=False):
        return Case(label, (head_logits, teacher_logits), hint, probe=probe,
                    show=(tensor_label(head_logits, "head_logits", small=12),
                          tensor_label(teacher_logits, "teacher_logits", small=12)))

    # heads that copy the teacher k positions later: the loss is 0 exactly where the shift is right
    teacher = randn(g, 2, 7, 9, scale=2.0)
    copy = torch.stack([torch.cat([teacher[:, k:], randn(g, 2, k, 9, scale=2.0)], dim=1) for k in (1, 2, 3)])
    # a peaked teacher: its distribution is far from the one-hot on its argmax
    soft = randn(g, 1, 6, 8, scale=0.5)
    cases = [
        case("one head, one batch row, 3 positions: head 1 at t against the teacher at t + 1, t = 0, 1",
             *_mtp_logits(g, 1, 1, 3, 6), "shift_late"),
        case("three heads that copy the teacher k positions later (and noise where it has none): loss 0",
             copy, teacher, "shift_early"),
        case("KL(teacher || head), not KL(head || teacher): two heads on a spread-out teacher",
             *_mtp_logits(g, 2, 2, 6, 10, scale=3.0), "reverse_kl"),
        case("head 2's last 2 positions have no teacher: only T - k positions count (no wrap-around, no padding)",
             *_mtp_logits(g, 2, 2, 5, 7), "wrap"),
        case("mean over the T - k positions with a teacher (and the batch), not a sum, not over T",
             *_mtp_logits(g, 3, 2, 6, 8), "divide_T"),
        case("a teacher close to uniform: the loss pulls towards its distribution, not its argmax",
             randn(g, 1, 1, 6, 8, scale=2.0), soft, "ce_argmax"),
        case("logits shifted by a constant change nothing: log_softmax on both sides",
             *(t + 5.0 for t in _mtp_logits(g, 2, 1, 6, 9)), "raw_head"),
        case("the loss is the mean of the heads' losses, not their sum", *_mtp_logits(g, 4, 1, 8, 6), "heads_sum"),
        case("T = K = 2: no position left for head 2: ValueError", *_mtp_logits(g, 2, 1, 2, 5), "validate"),
        case("K = 0 heads: ValueError", randn(g, 0, 1, 4, 5), randn(g, 1, 4, 5), "validate"),
        case("head_logits (2, 1, 5, 6) for teacher_logits (1, 5, 7): ValueError", randn(g, 2, 1, 5, 6),
             randn(g, 1, 5, 7), "validate"),
        case("teacher_logits without the batch dimension (5, 6): ValueError", randn(g, 2, 1, 5, 6), randn(g, 5, 6),
             "validate"),
    ]
    for n in range(4):
        K, B, V = rng.randint(1, 4), rng.randint(1, 3), rng.randint(5, 24)
        T = rng.randint(K + 2, 12)
        cases.append(case(f"random: K {K}, batch {B}, T {T}, vocabulary {V} (case {n + 1})",
                          *_mtp_logits(g, K, B, T, V, scale=rng.choice([1.0, 2.0, 3.0])), probe=n >= 2))
    return cases


def _mtp_variant(kind: str):
    """The reference self-distillation loss with one mistake in it."""

    def wrong(head_logits, teacher_logits):
        if kind != "validate":
            spec("mtp_loss")(head_logits, teacher_logits)  # its ValueErrors
        K, B, T, V = head_logits.shape
        teacher = teacher_logits.detach().float()
        losses = []
        for k in range(1, K + 1):
            head = head_logits[k - 1].float()  # (B, T, V)
            if kind == "shift_late":
                q, p = head[:, :T - k - 1], teacher[:, k + 1:]
            elif kind == "shift_early":
                q, p = head[:, :T - k + 1], teacher[:, k - 1:]
            elif kind == "wrap":
                q, p = head, torch.roll(teacher, -k, dims=1)
            elif kind == "padded":  # zeros (a uniform teacher) where there is none
                q, p = head, torch.cat([teacher[:, k:], torch.zeros(B, k, V)], dim=1)
            else:
                q, p = head[:, :T - k], teacher[:, k:]
            log_q = q if kind == "raw_head" else q.log_softmax(-1)
            log_p = p if kind == "raw_teacher" else p.log_softmax(-1)
            probs = p.softmax(-1)
            if kind == "ce_argmax":
                kl = -log_q.gather(-1, p.argmax(-1, keepdim=True)).squeeze(-1)
            elif kind == "reverse_kl":
                kl = (log_q.exp() * (log_q - log_p)).sum(-1)
            else:
                kl = (probs * (log_p - log_q)).sum(-1)  # (B, positions)
            if kind == "sum_positions":
                losses.append(kl.sum(-1).mean())
            elif kind == "divide_T":
                losses.append(kl.sum() / (B * T))
            else:  # (a head with no position left, possible only unvalidated, gives 0, not nan: nan == nan is False)
                losses.append(kl.mean() if kl.numel() else kl.sum())
        per_head = torch.stack(losses)
        loss = per_head.sum() if kind == "heads_sum" else per_head.mean()
        return loss, [float(x) for x in per_head.detach()]

    wrong.__name__ = f"mtp_loss_{kind}"
    return wrong


MTP_MISTAKES = ("shift_late", "shift_early", "reverse_kl", "wrap", "padded", "sum_positions", "divide_T", "ce_argmax",
                "raw_head", "raw_teacher", "heads_sum", "validate")

register(Checkpoint(
    id="13.mtp_loss",
    points=1,
    title="(bonus) multi-token heads distilled from the target: KL(teacher at t + k || head k at t) on T - k positions",
    signature="mtp_loss(head_logits, teacher_logits)",
    cases=mtp_cases,
    reference=spec("mtp_loss"),
    tol=1e-5,
    grad_probe=True,
    fingerprints=[(kind, _mtp_variant(kind)) for kind in MTP_MISTAKES],
    hints={
        "default": "For k = 1..K: log_p = teacher_logits[:, k:].log_softmax(-1) (detached), log_q = "
        "head_logits[k - 1, :, :T - k].log_softmax(-1), L_k = (log_p.exp() * (log_p - log_q)).sum(-1).mean(); "
        "return (mean of the L_k, [float(L_k) for each k]). ValueError for shapes that do not match, K < 1 or T <= K.",
        "shift_late": "Head k at position t guesses token t + 1 + k, which the teacher predicts at position t + k "
        "(position t predicts t + 1): compare with teacher_logits[:, k:], not [:, k + 1:].",
        "shift_early": "Head k at position t guesses token t + 1 + k, which the teacher predicts at position t + k, "
        "not t + k - 1: with teacher_logits[:, k - 1:] head 1 learns what the target itself already predicts.",
        "reverse_kl": "The KL is the wrong way round: distil with KL(teacher || head) = sum p (log p - log q), p the "
        "teacher's softmax, q the head's. KL(head || teacher) lets a head put all its mass on one likely token.",
        "wrap": "The last k positions have no teacher k positions later: leave them out (head_logits[k - 1, :, :T - k] "
        "against teacher_logits[:, k:]). torch.roll wraps the first positions' teacher round to the end.",
        "padded": "The last k positions have no teacher: leave them out rather than pad the teacher (zero logits are a "
        "uniform distribution the head would be trained towards). Average over the T - k positions that have one.",
        "sum_positions": "Average over positions too, not only over the batch: the mean over the B * (T - k) pairs, so "
        "that the loss does not grow with the sequence length.",
        "divide_T": "Head k has T - k positions with a teacher, not T: average over those (kl.mean() of the sliced "
        "tensor), not sum / (B * T), which shrinks the later heads' losses.",
        "ce_argmax": "Distil the teacher's whole distribution (KL against softmax(teacher)), not cross-entropy against "
        "its argmax: a target that hesitates between two tokens should teach the head to hesitate too.",
        "raw_head": "Take log_softmax of the head's logits: logits are not log-probabilities (they are unnormalised; "
        "adding a constant to them changes yours).",
        "raw_teacher": "Take log_softmax of the teacher's logits for log p: logits are not log-probabilities (they "
        "are unnormalised; adding a constant to them changes yours).",
        "heads_sum": "The loss is the mean of the K heads' losses, not their sum (per_head holds each one).",
        "validate": "Raise ValueError unless head_logits is (K, B, T, V) and teacher_logits (B, T, V) with the same "
        "B, T, V, K >= 1, and T > K (head K needs a teacher K positions later).",
        "grad_leak": "A gradient reaches teacher_logits: the target is frozen, so detach its logits "
        "(teacher_logits.detach()) before the softmax. Otherwise the loss would also move the target.",
    },
))
