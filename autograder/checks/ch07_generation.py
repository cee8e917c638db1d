"""Chapter 07 checkpoints: temperature, top-k, top-p, sampling a next token, the decoding loop.

Every checkpoint is a function of plain data. The filters map logit tensors to logit tensors
(removed tokens at -inf) and are compared within :data:`TOL`. Sampling takes its randomness as
an argument, ``u``, one uniform number per row, so a sample is a deterministic function of its
inputs: a batch of identical rows with evenly spaced ``u`` draws every quantile of the
distribution at once, and any mistake that changes the distribution changes some of those draws.
The decoding loop is checked through ``generate_from_weights(config, weights, prompt, options)``
(given in the notebook), which builds a tiny random ``Transformer`` from plain data and collects
what the learner's ``generate`` yields; the expected tokens come from the reference, whose cached
and uncached greedy outputs agree (the weights are redrawn until every greedy step's best logit
leads the second by a clear margin, so rounding cannot flip a choice).

How the cases expose mistakes: small hand-made rows isolate one rule each (temperature 0, a tie at
the k-th logit, the token that crosses p, a stop token inside the prompt, a prompt that fills the
context exactly); realistic cases add what small ones hide (vocabularies of 300-500 with
Zipf-shaped logits, ids of three digits, square and non-square batches, a model of 6 layers, a
prompt of two-digit ids); and every ``ValueError`` the reference documents has a case (T <= 0,
k = 0 or not an int, p outside (0, 1], temperature inf, a parameter out of range even when
decoding is greedy, an empty prompt, max_new_tokens < 0, a prompt past the context).

A hint names a mistake only on evidence: a known mistake's output (a variant: the reference with
that one mistake) matched on every case where it shows; the exception raised (torch.topk's "k out
of range", a ValueError about the context where everything fits, a temperature refused where
decoding is greedy); or a property of the output (rows with equal logits and equal ``u`` that draw
different tokens; a sampled case failing after every greedy case passed). Inputs are drawn from
uniform numbers, permutations and integers, whose bits are the same on every CPU.
"""

from __future__ import annotations

import functools
import math
import random

import torch

from ..compare import difference
from ..core import Case, Checkpoint, Label, register
from ..reference import reference
from .inputs import generator as _gen
from .inputs import model_config as _config
from .inputs import random_model_weights as _weights
from .inputs import spread as _spread
from .inputs import rand, tensor_label

gen = functools.partial(reference, "solutions.generate")
mdl = functools.partial(reference, "solutions.model")
TOL = 1e-6  # float32, one division deep
INF = float("-inf")


LAST_DIM = ("Work along the last dimension, dim=-1 (and [..., -1:], not [:, -1:]): logits are (..., vocab), one row "
            "(vocab,), a batch (batch, vocab) or more leading dimensions (batch, seq, vocab); dim=1 is the vocabulary "
            "only for 2-D logits.")


def _shown(t: torch.Tensor, name: str = "logits"):
    return tensor_label(t, name, small=12)


def _realistic(g: torch.Generator, rows: int, vocab: int) -> torch.Tensor:
    """Logits shaped like a language model's: Zipf-like (a few likely tokens, a long tail) in a
    random order per row, plus uniform noise. Drawn from uniform numbers and permutations only, whose
    values are the same on every CPU (torch.randn's vectorised transform is not, to the last bits)."""
    zipf = -1.2 * torch.log(torch.arange(1, vocab + 1, dtype=torch.float32))
    order = torch.stack([torch.randperm(vocab, generator=g) for _ in range(rows)])
    return zipf[order] + rand(g, rows, vocab, low=-1.0, high=1.0)


def _log(*probs: float) -> torch.Tensor:
    """One row of logits whose softmax is ``probs``: (1, len(probs))."""
    return torch.tensor([probs]).log()


def _validated_temperature(fn):
    def wrong(logits, temperature):
        if not temperature > 0:
            raise ValueError("temperature must be > 0")
        return fn(logits, temperature)
    return wrong


def _validated_k(fn):
    def wrong(logits, k):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError("k must be an int >= 1")
        return fn(logits, k)
    return wrong


def _validated_p(fn, shortcut: bool = True):
    """``fn`` with the reference's validation and (unless ``shortcut`` is False) its p == 1 shortcut."""
    def wrong(logits, p):
        if not 0 < p <= 1:
            raise ValueError("p must be in (0, 1]")
        return logits.clone() if p == 1 and shortcut else fn(logits, p)
    return wrong


# --------------------------------------------------------------------- 07.temperature

def temperature_cases(rng: random.Random) -> list[Case]:
    g = _gen(rng)
    row = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])
    cases = [
        Case("temperature 1 leaves the logits as they are", (row, 1.0)),
        Case("temperature 0.5 sharpens: the logits are doubled", (row, 0.5), "multiply"),
        Case("temperature 2 flattens: the logits are halved", (row, 2.0), "multiply"),
        Case("a batch of 3 rows of 6 logits, temperature 0.7", (_spread(g, 3, 6, scale=2.0), 0.7)),
        Case("removed tokens (-inf logits) stay removed", (torch.tensor([[1.0, INF, 0.5, INF]]), 1.5)),
        Case("a realistic batch: 4 rows over a vocabulary of 300, logits around 5, temperature 0.8",
             (_realistic(g, 4, 300) + 5.0, 0.8), "shifted"),
        Case("temperature 0: ValueError (greedy decoding takes the argmax, it does not divide by 0)",
             (row, 0.0), "zero"),
        Case("a negative temperature: ValueError", (row, -1.0), "negative"),
    ]
    for n in range(8):
        shape = (rng.randint(2, 10),) if rng.random() < 0.3 else (rng.randint(1, 3), rng.randint(2, 10))
        logits = _spread(g, *shape, scale=3.0)
        cases.append(Case(f"random logits {tuple(shape)} (case {n + 1})", (logits, round(rng.uniform(0.1, 3.0), 2))))
    for case in cases:
        case.show = (_shown(case.args[0]), case.args[1])
    return cases


TEMPERATURE_MISTAKES = {
    "multiply": lambda logits, t: logits * t,
    "probabilities": lambda logits, t: torch.softmax(logits / t, dim=-1),
    "divide_probs": lambda logits, t: torch.softmax(logits, dim=-1) / t,
    "log_probs": lambda logits, t: torch.log_softmax(logits / t, dim=-1),
    # "for numerical stability": the maximum subtracted first (same softmax, other logits)
    "shifted": lambda logits, t: (logits - logits.max(dim=-1, keepdim=True).values) / t,
}

register(Checkpoint(
    id="07.temperature",
    points=1,
    title="logits divided by the temperature; T <= 0 refused",
    signature="apply_temperature(logits, temperature)",
    cases=temperature_cases,
    reference=gen("apply_temperature"),
    tol=TOL,
    fingerprints=[(hint, _validated_temperature(fn)) for hint, fn in TEMPERATURE_MISTAKES.items()],
    hints={
        "default": "Return logits / temperature (a new tensor); raise ValueError when temperature <= 0.",
        "multiply": "Divide by the temperature, do not multiply: T = 0.5 must *sharpen* the distribution, "
        "which doubles the logits (logits / 0.5).",
        "probabilities": "Return the scaled *logits*, logits / temperature, not their softmax: the filters "
        "that come next (top-k, top-p) work on logits.",
        "divide_probs": "Divide the logits, not the probabilities: softmax(logits) / T is only rescaled, and "
        "normalising it again gives back softmax(logits), as if T were 1.",
        "log_probs": "Return logits / temperature itself, not a log-softmax of it: the distribution is the same, "
        "but the next steps expect the scaled logits.",
        "shifted": "Return logits / temperature exactly, without subtracting the maximum first: the softmax would "
        "be the same, but the next steps (top-k, top-p, and whoever reads the logits) expect the scaled logits.",
        "zero": "Temperature 0 cannot be divided by: raise ValueError (greedy decoding, T = 0, takes the "
        "argmax in sample_next, without calling apply_temperature).",
        "negative": "Raise ValueError for a negative temperature too (test temperature <= 0, not == 0): "
        "dividing by T < 0 would make the least likely tokens the most likely.",
    },
))


# --------------------------------------------------------------------------- 07.top_k

def top_k_cases(rng: random.Random) -> list[Case]:
    g = _gen(rng)
    row = torch.tensor([[1.0, 3.0, -0.5, 2.0, 0.0]])
    cases = [
        Case("k = 2 of 5 distinct logits", (row, 2)),
        Case("k = 1 keeps only the largest logit", (row, 1), "off_by_one"),
        Case("negative logits: removed tokens become -inf, not 0", (torch.tensor([[-1.0, -3.0, -2.0, -0.5]]), 2),
             "zero_fill"),
        Case("two tokens tied at the k-th largest logit: both are kept", (torch.tensor([[0.5, 2.0, 1.0, 1.0, -1.0]]), 2),
             "ties"),
        Case("a batch of 3 rows of 3: each row keeps its own k largest",
             (torch.tensor([[3.0, 2.0, 1.0], [0.0, 10.0, 20.0], [-5.0, -4.0, -6.0]]), 2), "per_row"),
        Case("a batch of 2 rows of 4", (torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 10.0, 20.0, 30.0]]), 2), "per_row"),
        Case("k larger than the vocabulary keeps every token", (row, 8), "k_large"),
        Case("tokens already at -inf stay removed", (torch.tensor([[1.0, INF, 2.0, INF, 0.0]]), 2)),
        Case("1-D logits (one row)", (torch.tensor([0.3, -0.2, 1.5, 0.9]), 3)),
        Case("a realistic batch: 3 rows over a vocabulary of 500, k = 50", (_realistic(g, 3, 500), 50),
             "kth_index"),
        Case("k = vocabulary size keeps every token", (row, 5), "kth_index"),
        Case("k = 0: ValueError", (row, 0), "validate"),
        Case("k = 2.5, not an int: ValueError", (row, 2.5), "validate"),
    ]
    for n in range(10):
        shape = (rng.randint(1, 3), rng.randint(3, 12))
        if rng.random() < 0.4:  # small integers: ties
            logits = torch.randint(-2, 3, shape, generator=g).float()
        else:
            logits = _spread(g, *shape, scale=2.0)
        cases.append(Case(f"random logits {shape}, ties possible (case {n + 1})", (logits, rng.randint(1, shape[1] + 2))))
    for case in cases:
        case.show = (_shown(case.args[0]), case.args[1])
    return cases


def _topk_off_by_one(logits, k):
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits <= kth, INF)


def _topk_exact(logits, k):
    idx = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, idx, True)
    return logits.masked_fill(~keep, INF)


def _topk_zero_fill(logits, k):
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, 0.0)


def _topk_smallest(logits, k):
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1, largest=False).values[..., -1:]
    return logits.masked_fill(logits > kth, INF)


def _topk_global(logits, k):
    kth = torch.topk(logits.flatten(), min(k, logits.numel())).values[-1]
    return logits.masked_fill(logits < kth, INF)


def _topk_probabilities(logits, k):
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return torch.softmax(logits.masked_fill(logits < kth, INF), dim=-1)


def _topk_kth_index(logits, k):
    kth = logits.sort(dim=-1, descending=True).values[..., k, None]  # index k: the (k+1)-th largest
    return logits.masked_fill(logits < kth, INF)


def _topk_no_keepdim(logits, k):
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1]  # (batch,): broadcasts wrongly
    return logits.masked_fill(logits < kth, INF)


def _topk_unclamped(logits, k):
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # RuntimeError when k > vocab
    return logits.masked_fill(logits < kth, INF)


register(Checkpoint(
    id="07.top_k",
    points=1,
    title="every logit below the k-th largest of its row set to -inf, ties kept",
    signature="top_k_filter(logits, k)",
    cases=top_k_cases,
    reference=gen("top_k_filter"),
    tol=TOL,
    fingerprints=[(hint, _validated_k(fn)) for hint, fn in [
        ("off_by_one", _topk_off_by_one), ("ties", _topk_exact), ("zero_fill", _topk_zero_fill),
        ("smallest", _topk_smallest), ("per_row", _topk_global), ("probabilities", _topk_probabilities),
        ("k_large", _topk_unclamped), ("kth_index", _topk_kth_index), ("keepdim", _topk_no_keepdim),
    ]],
    # torch.topk's own error when k exceeds the vocabulary (no case has a negative k, which raises it too)
    raised_hints=[(r"selected index k out of range", "k_large"),
                  # dim=1 (or [:, ...]) on the case of 1-D logits: written for (batch, vocab) only
                  (r"Dimension out of range|too many indices for tensor of dimension 1", "last_dim")],
    hints={
        "default": "kth = torch.topk(logits, min(k, vocab), dim=-1).values[..., -1:] (keep the last dimension), then "
        "logits.masked_fill(logits < kth, float('-inf')); raise ValueError if k < 1.",
        "off_by_one": "Remove only the logits strictly *below* the k-th largest (logits < kth): with <= the k-th "
        "token itself is removed and k = 1 leaves nothing.",
        "zero_fill": "Set removed tokens to float('-inf'), not 0: a logit of 0 still has probability e^0 / Z > 0, "
        "more than any negative logit.",
        "ties": "Keep every token whose logit equals the k-th largest: compare with the k-th value (logits < kth) "
        "instead of keeping exactly the k indices torch.topk returns, which breaks ties arbitrarily.",
        "per_row": "Each row has its own k-th largest logit: take torch.topk(..., dim=-1).values[..., -1:] (shape "
        "(batch, 1), which broadcasts against (batch, vocab)), not one threshold for the whole batch.",
        "keepdim": "Keep the last dimension of the threshold: values[..., -1:] has shape (batch, 1) and compares "
        "each row with its own k-th largest; values[..., -1] has shape (batch,), which broadcasts along the "
        "vocabulary, so row b's token j is compared with row j's threshold (or the shapes do not fit).",
        "smallest": "Keep the k *largest* logits: torch.topk returns the largest by default (largest=True).",
        "probabilities": "Return the filtered *logits* (removed ones at -inf), not probabilities: the softmax "
        "comes once, after every filter.",
        "k_large": "torch.topk fails when k exceeds the vocabulary: use min(k, logits.shape[-1]), so that a large "
        "k keeps every token.",
        "kth_index": "The k-th largest logit is at index k - 1 of the values sorted in descending order (indices "
        "start at 0): index k is the (k + 1)-th, which keeps one token too many, and fails when k is the vocabulary "
        "size. torch.topk(logits, k, dim=-1).values[..., -1:] gives it directly.",
        "validate": "Raise ValueError when k is not an int >= 1 (isinstance(k, int) and k >= 1): top-0 would remove "
        "every token, and a negative or fractional k means nothing.",
        "last_dim": LAST_DIM,
    },
))


# --------------------------------------------------------------------------- 07.top_p

def _boundary_safe(logits: torch.Tensor, p: float, margin: float = 2e-3) -> bool:
    """No cumulative probability of any row is within ``margin`` of ``p``."""
    probs = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True).values
    cum = probs.cumsum(dim=-1)
    return bool(((cum - p).abs() > margin).all()) and bool(((cum - probs - p).abs() > margin).all())


def top_p_cases(rng: random.Random) -> list[Case]:
    g = _gen(rng)
    four = _log(0.5, 0.3, 0.15, 0.05)
    cases = [
        Case("p = 0.9 over probabilities 0.5, 0.3, 0.15, 0.05: the first three are kept", (four, 0.9)),
        Case("the token that crosses p is kept: p = 0.6 keeps 0.5 and 0.3", (four, 0.6), "crossing"),
        Case("the most likely token alone exceeds p: it is kept, alone", (_log(0.7, 0.2, 0.1), 0.5), "keep_top"),
        Case("tokens in any order: the nucleus follows probability, not position (0.05, 0.3, 0.15, 0.5; p = 0.7)",
             (_log(0.05, 0.3, 0.15, 0.5), 0.7), "unsort"),
        Case("a batch of 2 rows: each row has its own nucleus",
             (torch.cat([_log(0.6, 0.25, 0.1, 0.05), _log(0.1, 0.2, 0.3, 0.4)]), 0.8), "softmax_dim"),
        Case("tokens already at -inf stay removed", (torch.tensor([[1.0, INF, 0.5, 2.0, INF]]), 0.8)),
        Case("p = 1 keeps every token", (_log(0.4, 0.3, 0.2, 0.1), 1.0)),
        Case("p = 1 keeps every token, even a tail too small to add to 1 in float32 (the cumulative sum is 1.0 "
             "from the first token on)", (torch.tensor([[0.0, -23.0, -24.0, -25.0, -30.0]]), 1.0), "p_one"),
        Case("p = 0: ValueError", (four, 0.0), "validate"),
        Case("p = 1.5: ValueError", (four, 1.5), "validate"),
        Case("p = -0.2: ValueError", (four, -0.2), "validate"),
    ]
    while True:  # a realistic batch: 2 rows over a vocabulary of 500, a nucleus of dozens of tokens
        big, p = _realistic(g, 2, 500), 0.8
        if _boundary_safe(big, p, margin=1e-4):
            break
    cases.insert(6, Case("a realistic batch: 2 rows over a vocabulary of 500, p = 0.8", (big, p)))
    for n in range(10):
        shape = (rng.randint(1, 3), rng.randint(3, 16))
        while True:
            logits = _spread(g, *shape, scale=1.5)
            p = round(rng.uniform(0.05, 0.98), 3)
            if _boundary_safe(logits, p):
                break
        cases.append(Case(f"random logits {shape}, p = {p} (case {n + 1})", (logits, p)))
    while True:  # (after the random cases: their draws stay as they were)
        deep = _realistic(g, 6, 40).reshape(2, 3, 40)
        if _boundary_safe(deep, 0.7):
            break
    cases.append(Case("logits (2, 3, 40), batch and sequence dimensions, p = 0.7: the vocabulary is the last dimension",
                      (deep, 0.7), "last_dim"))
    for case in cases:
        case.show = (_shown(case.args[0]), case.args[1])
    return cases


def _nucleus(logits, p, *, rule="before", descending=True, scatter=True, source="probs", dim=-1, fill=INF,
             keep_top=False, out="logits"):
    probs = torch.softmax(logits.float(), dim=dim) if source == "probs" else logits
    sorted_probs, order = probs.sort(dim=-1, descending=descending, stable=True)
    cum = sorted_probs.cumsum(dim=-1)
    remove_sorted = (cum - sorted_probs >= p) if rule == "before" else (cum > p)
    if keep_top:
        remove_sorted[..., 0] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted) if scatter else remove_sorted
    filtered = logits.masked_fill(remove, fill)
    return torch.softmax(filtered, dim=-1) if out == "probs" else filtered


def _nucleus_dim1(logits, p):
    """Every step along dim=1, written for (batch, vocab) logits."""
    probs = torch.softmax(logits.float(), dim=1)
    sorted_probs, order = probs.sort(dim=1, descending=True, stable=True)
    remove_sorted = sorted_probs.cumsum(dim=1) - sorted_probs >= p
    return logits.masked_fill(remove_sorted.scatter(1, order, remove_sorted), INF)


# keep_top before crossing: its output is wrong wherever crossing's is (and more), so a learner
# who keeps the most likely token is tried against keep_top first and does not match it there.
TOP_P_MISTAKES = {
    "keep_top": functools.partial(_nucleus, rule="inclusive"),
    "crossing": functools.partial(_nucleus, rule="inclusive", keep_top=True),
    "sort_order": functools.partial(_nucleus, descending=False),
    "unsort": functools.partial(_nucleus, scatter=False),
    "logits_cumsum": functools.partial(_nucleus, source="logits"),
    "softmax_dim": functools.partial(_nucleus, dim=0),
    "zero_fill": functools.partial(_nucleus, fill=0.0),
    "probabilities": functools.partial(_nucleus, out="probs"),
    "p_one": _nucleus,  # the rule without p == 1's shortcut: rounding removes the tail at p = 1
    "last_dim": _nucleus_dim1,
}

register(Checkpoint(
    id="07.top_p",
    points=2,
    title="nucleus filter: the smallest set of most likely tokens reaching p, the crossing token kept",
    signature="top_p_filter(logits, p)",
    cases=top_p_cases,
    reference=gen("top_p_filter"),
    tol=TOL,
    fingerprints=[(hint, _validated_p(fn, shortcut=hint != "p_one")) for hint, fn in TOP_P_MISTAKES.items()]
    + [("last_dim", _validated_p(functools.partial(_nucleus, dim=1)))],  # only the softmax along dim=1
    raised_hints=[(r"Dimension out of range|too many indices for tensor of dimension 1", "last_dim")],
    hints={
        "default": "probs = softmax(logits); sort descending; before = cumsum - sorted_probs (the mass of the more "
        "likely tokens); remove where before >= p; scatter the mask back to vocabulary order; masked_fill with -inf.",
        "crossing": "Keep the token whose cumulative probability *crosses* p: the nucleus is the smallest set whose "
        "mass reaches p, so test the mass *before* each token (cumsum - p_sorted < p), not the cumsum including it.",
        "keep_top": "The most likely token must always be kept, even when its probability alone exceeds p: test "
        "the mass *before* each token (0 for the first), not the cumulative sum including it.",
        "sort_order": "Sort the probabilities in *descending* order: the nucleus is made of the most likely tokens.",
        "unsort": "The mask is computed in sorted order: scatter it back to vocabulary order "
        "(mask.scatter(-1, order, mask)) before applying it to the logits.",
        "logits_cumsum": "Accumulate *probabilities* (softmax of the logits), not the logits themselves: p is a "
        "probability mass.",
        "softmax_dim": "Take the softmax over the vocabulary, the last dimension (dim=-1): each row is its own "
        "distribution.",
        "zero_fill": "Set removed tokens to float('-inf'), not 0: a logit of 0 keeps a non-zero probability.",
        "probabilities": "Return the filtered *logits* (removed ones at -inf), not probabilities.",
        "validate": "Raise ValueError when p is not in (0, 1]: p = 0 would remove everything, p > 1 is no probability.",
        "last_dim": LAST_DIM,
        "p_one": "p = 1 keeps every token: return the logits unchanged (a copy) when p == 1. Computed, the rule "
        "removes tokens there: in float32 the cumulative probability reaches 1.0 before a tail of tiny "
        "probabilities, and 'mass before >= 1' is then true for tokens that can still be drawn.",
    },
))


# -------------------------------------------------------------------------- 07.sample

PROBS5 = (0.2, 0.35, 0.08, 0.25, 0.12)  # sorted: 0.35, 0.25, 0.2, 0.12, 0.08


def _rows(row: torch.Tensor, n: int) -> torch.Tensor:
    return row.expand(n, row.shape[-1]).clone()


def _sweep(n: int) -> torch.Tensor:
    """Evenly spaced quantiles: n draws that trace the whole inverse CDF."""
    return (torch.arange(n, dtype=torch.float32) + 0.5) / n


def sample_cases(rng: random.Random) -> list[Case]:
    g = _gen(rng)
    five = _rows(_log(*PROBS5), 20)

    def case(label, logits, temperature, top_k, top_p, u, hint="default"):
        return Case(label, (logits, temperature, top_k, top_p, u), hint,
                    show=(_shown(logits), temperature, top_k, top_p, _shown(u, "u")))

    greedy = torch.tensor([[0.1, 2.0, -1.0, 0.5], [3.0, 0.0, 1.0, 2.9], [-2.0, -1.0, -3.0, -0.5]])
    big, big_u = _realistic(g, 8, 500), torch.rand(8, generator=g)
    cases = [
        case("temperature 0 is greedy: each row's argmax, whatever u", greedy, 0.0, None, 1.0,
             torch.tensor([0.1, 0.5, 0.9]), "greedy"),
        case("20 identical rows, all with u = 0.5: the same token in every row (the draw is a function of u)",
             five, 1.0, None, 1.0, torch.full((20,), 0.5), "inverse_cdf"),
        case("inverse CDF: over probabilities 0.1, 0.2, 0.3, 0.4, u = 0.05, 0.15, 0.35, 0.95 draw tokens 0, 1, 2, 3",
             _rows(_log(0.1, 0.2, 0.3, 0.4), 4), 1.0, None, 1.0, torch.tensor([0.05, 0.15, 0.35, 0.95]), "inverse_cdf"),
        case("temperature 1, 20 evenly spaced u: every quantile of the distribution", five, 1.0, None, 1.0, _sweep(20),
             "inverse_cdf"),
        case("temperature 2 flattens the distribution before the draw", five, 2.0, None, 1.0, _sweep(20), "temperature"),
        case("temperature 0.5 sharpens it", five, 0.5, None, 1.0, _sweep(20), "temperature"),
        case("top-k 2: only the two most likely tokens are drawn", five, 1.0, 2, 1.0, _sweep(20), "top_k"),
        case("top-p 0.7: only the nucleus is drawn, renormalised", five, 1.0, None, 0.7, _sweep(20), "renormalise"),
        case("temperature 0.5, then top-p 0.7 on the sharpened distribution", five, 0.5, None, 0.7, _sweep(20),
             "order_temperature"),
        case("top-k 3, then top-p 0.65 on what top-k left", five, 1.0, 3, 0.65, _sweep(20), "order"),
        case("a realistic batch: 8 rows over a vocabulary of 500, T = 0.8, top-k 50, top-p 0.9", big, 0.8, 50, 0.9,
             big_u),
        case("u = 0 (torch.rand can return it): the first token of non-zero probability, here token 3 (top-k 2 "
             "removed tokens 0 to 2)", _rows(_log(0.05, 0.1, 0.15, 0.3, 0.4), 3), 1.0, 2, 1.0, torch.zeros(3),
             "u_zero"),
        case("greedy over a vocabulary of 500", big, 0.0, None, 1.0, big_u, "greedy"),
        case("top_p = 1.5: ValueError", five, 1.0, None, 1.5, _sweep(20), "validate"),
        case("top_p = 0: ValueError", five, 1.0, None, 0.0, _sweep(20), "validate"),
        case("a negative temperature: ValueError", five, -0.5, None, 1.0, _sweep(20), "validate"),
        case("temperature = inf: ValueError (it must be finite)", five, math.inf, None, 1.0, _sweep(20), "validate"),
        case("top_k = 0: ValueError", five, 1.0, 0, 1.0, _sweep(20), "validate"),
        case("top_k = 2.0, a float: ValueError (top_k is an int or None)", five, 1.0, 2.0, 1.0, _sweep(20), "validate"),
        case("greedy (T = 0) with top_k = 0: ValueError all the same (validate before the greedy shortcut)",
             greedy, 0.0, 0, 1.0, torch.tensor([0.1, 0.5, 0.9]), "validate"),
    ]
    for n in range(8):
        batch, vocab = rng.randint(4, 16), rng.randint(4, 12)
        temperature = rng.choice([0.0, 0.6, 1.0, 1.0, 1.3])
        top_k = rng.choice([None, None, rng.randint(1, vocab)])
        top_p = rng.choice([1.0, round(rng.uniform(0.3, 0.95), 2)])
        logits = _spread(g, batch, vocab, scale=2.0)
        u = torch.rand(batch, generator=g)
        case_ = case(f"random: {batch} rows of {vocab}, T = {temperature}, top_k = {top_k}, top_p = {top_p} "
                     f"(case {n + 1})", logits, temperature, top_k, top_p, u)
        cases.append(case_)
    # (after the random cases: their draws stay as they were)
    deep = _realistic(g, 6, 30).reshape(2, 3, 30)
    cases += [
        case("greedy with ties: the first of the tied largest logits (argmax's rule)",
             torch.tensor([[1.0, 2.0, 2.0, 0.0], [0.5, 0.5, 0.5, 0.5]]), 0.0, None, 1.0, torch.tensor([0.3, 0.7]),
             "greedy"),
        case("logits (2, 3, 30), batch and sequence dimensions, u (2, 3), T = 0.9, top-p 0.9: one token per row, "
             "the vocabulary is the last dimension", deep, 0.9, None, 0.9, _sweep(6).reshape(2, 3), "last_dim"),
        case("1-D logits (one row of 30) and a 0-d u, T = 1.2, top-k 10: a 0-d token id", deep[1, 2], 1.2, 10, 1.0,
             torch.tensor(0.8), "last_dim"),
        # 47 equal logits: every probability is fl(1/47), and the cumulative sum ends at 1 - 2^-24 (in float64
        # and in float32 accumulation alike), the largest u torch.rand can return: unscaled, no F_j exceeds it
        case("47 equally likely tokens, u = 1 - 2^-24 (torch.rand's largest value), 0.5, 0: rounding leaves the last "
             "cumulative probability at 1 - 2^-24, so u must be scaled by it (u * cdf[..., -1]) to land on token 46",
             torch.zeros(3, 47), 1.0, None, 1.0, torch.tensor([1 - 2**-24, 0.5, 0.0]), "u_scale"),
    ]
    return cases


def _sample_variant(kind: str):
    filters = gen("apply_temperature"), gen("top_k_filter"), gen("top_p_filter")

    def wrong(logits, temperature, top_k, top_p, u):
        apply_temperature, top_k_filter, top_p_filter = filters
        gen("check_sampling")(temperature, top_k, top_p)
        if temperature == 0:
            return logits.argmax(dim=-1)
        z = logits
        if kind == "order_temperature":  # filters first, temperature last
            z = top_k_filter(z, top_k) if top_k is not None else z
            z = top_p_filter(z, top_p) if top_p < 1 else z
            z = apply_temperature(z, temperature)
        elif kind == "order":  # top-p before top-k
            z = apply_temperature(z, temperature)
            z = top_p_filter(z, top_p) if top_p < 1 else z
            z = top_k_filter(z, top_k) if top_k is not None else z
        else:
            if kind != "temperature":
                z = apply_temperature(z, temperature)
            z = top_k_filter(z, top_k) if top_k is not None else z
            z = top_p_filter(z, top_p) if top_p < 1 else z
        if kind == "logits":
            cdf = z.cumsum(dim=-1)
        elif kind == "last_dim":  # softmax and cumsum along dim=1, written for (batch, vocab) logits
            cdf = torch.softmax(z, dim=1).cumsum(dim=1)
        elif kind == "renormalise":  # probabilities of the unfiltered distribution, masked, not renormalised
            probs = torch.softmax(apply_temperature(logits, temperature), dim=-1)
            cdf = probs.masked_fill(z == INF, 0.0).cumsum(dim=-1)
        else:
            cdf = torch.softmax(z, dim=-1).cumsum(dim=-1)
        if kind == "u_zero":  # the first j with F_j >= u (searchsorted): at u = 0, a removed token
            index = (cdf < u.unsqueeze(-1)).sum(dim=-1)
        else:
            index = (cdf <= u.unsqueeze(-1)).sum(dim=-1)
        if kind == "inverse_cdf":  # the last token at or below u, not the first above it
            index = index - 1
        return index.clamp(0, logits.shape[-1] - 1)

    wrong.__name__ = f"sample_{kind}"
    return wrong


SAMPLE_MISTAKES = ("temperature", "order_temperature", "order", "logits", "renormalise", "inverse_cdf", "u_zero",
                   "last_dim")


def _sample_keepdim(logits, temperature, top_k, top_p, u):
    return gen("sample_next")(logits, temperature, top_k, top_p, u).unsqueeze(-1)


def compare_sample(case: Case, expected, got):
    """Exact equality; and a property of the output itself: rows with the same logits and the same
    ``u`` must draw the same token (the draw is a function of ``u``), else the answer drew its
    own random numbers (``torch.multinomial``)."""
    problem = difference(expected, got)
    if problem is None or not isinstance(got, torch.Tensor) or got.shape != expected.shape or got.dim() != 1:
        return problem
    logits, temperature, u = case.args[0], case.args[1], case.args[4]
    if temperature == 0 or not isinstance(u, torch.Tensor) or u.shape != got.shape:
        return problem
    for i in range(len(got)):
        for j in range(i):
            if bool(u[i] == u[j]) and torch.equal(logits[i], logits[j]) and int(got[i]) != int(got[j]):
                return (f"rows {j} and {i} have the same logits and the same u, but yours drew token {int(got[j])} "
                        f"in one and {int(got[i])} in the other: the draw must be a function of u", "inverse_cdf")
    return problem


def diagnose_sample(case: Case, expected, got) -> str | None:
    if isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor):
        if got.shape != expected.shape:
            return "shape"
        if got.is_floating_point():
            return "dtype"
        vocab, temperature, u = case.args[0].shape[-1], case.args[1], case.args[4]
        past = got >= vocab
        if temperature > 0 and isinstance(u, torch.Tensor) and u.shape == got.shape and bool(past.any()) \
                and bool((got[past] == vocab).all()) and bool((u[past] > 0.999).all()):
            return "u_scale"  # id = vocab where u is next to 1: no cumulative probability exceeded u
    return None


register(Checkpoint(
    id="07.sample",
    points=2,
    title="greedy at T = 0; otherwise temperature, top-k, top-p, softmax and an inverse-CDF draw",
    signature="sample_next(logits, temperature, top_k, top_p, u)",
    cases=sample_cases,
    reference=gen("sample_next"),
    fingerprints=[(kind, _sample_variant(kind)) for kind in SAMPLE_MISTAKES] + [("shape", _sample_keepdim)],
    compare=compare_sample,
    diagnose=diagnose_sample,
    raised_hints=[(r"NoneType|got None", "none_filters"),
                  # apply_temperature refusing T = 0: the greedy case was sent through the division
                  (r"ValueError: .*temperature.*(> ?0|greedy|positive)", "greedy"),
                  # dim=1 or [:, None] on the 1-D case: written for (batch, vocab) only
                  (r"Dimension out of range|too many indices for tensor of dimension", "last_dim")],
    hints={
        "default": "check_sampling(temperature, top_k, top_p); if temperature == 0 return logits.argmax(-1); else "
        "apply_temperature, top_k_filter (if top_k is not None), top_p_filter (if top_p < 1), softmax, cumsum, "
        "and return (cdf <= (u * cdf[..., -1])[..., None]).sum(-1), the first token whose cumulative probability "
        "exceeds u (u scaled by cdf[..., -1], which rounding can leave a hair below 1).",
        "last_dim": LAST_DIM,
        "greedy": "Temperature 0 is greedy decoding: return logits.argmax(dim=-1) before any division by the "
        "temperature (u, top_k and top_p do not matter then).",
        "inverse_cdf": "Draw with u: the token is the first j whose cumulative probability F_j = p_0 + ... + p_j "
        "exceeds u, i.e. (cdf <= (u * cdf[..., -1])[..., None]).sum(-1) (u scaled by the last F, which rounding can "
        "leave a hair below 1). torch.multinomial would draw its own random numbers.",
        "temperature": "Apply the temperature to the logits before the softmax (apply_temperature): dividing "
        "probabilities by T changes nothing once they are renormalised.",
        "top_k": "With top_k set, only the top_k most likely tokens may be drawn: filter the logits with "
        "top_k_filter before the softmax.",
        "renormalise": "After filtering, the kept tokens' probabilities must sum to 1 again: take the softmax of "
        "the filtered logits (removed ones at -inf) rather than zeroing probabilities of the full distribution.",
        "order_temperature": "Apply the temperature first, then the filters: the nucleus of top-p is the nucleus "
        "of the *tempered* distribution (as in Hugging Face's generate).",
        "order": "Apply top-k before top-p: top-p's nucleus is taken from the distribution top-k left, renormalised.",
        "logits": "Accumulate probabilities, softmax(filtered logits), not the logits themselves.",
        "validate": "Call check_sampling(temperature, top_k, top_p) first: it raises ValueError for temperature < 0, "
        "top_k < 1 or top_p outside (0, 1], even where a filter would not be called.",
        "none_filters": "top_k=None means no top-k filter and top_p=1 no nucleus filter: call top_k_filter only if "
        "top_k is not None, and top_p_filter only if top_p < 1.",
        "shape": "Return one token id per row, shape logits.shape[:-1] (for (batch, vocab) logits, (batch,)): "
        "no keepdim, no extra dimension.",
        "dtype": "Return token ids as integers (int64, what argmax and sum of booleans give), not floats.",
        "u_scale": "Yours returned a token id past the vocabulary: no cumulative probability exceeded u. torch.rand "
        "returns up to 1 - 2^-24, and rounding can leave the last cumulative probability cdf[..., -1] just as low, "
        "so compare cdf with u * cdf[..., -1]: (cdf <= (u * cdf[..., -1])[..., None]).sum(-1) always lands on a "
        "token of non-zero probability.",
        "u_zero": "At u = 0 yours drew a token of probability 0 (one the filters removed): the token is the first j "
        "whose cumulative probability is strictly above u, (cdf <= (u * cdf[..., -1])[..., None]).sum(-1). "
        "torch.searchsorted(cdf, u) "
        "and (cdf < u).sum(-1) return the first j with F_j >= u, which at u = 0 is token 0 whatever its probability.",
    },
))


# ------------------------------------------------------------------------ 07.generate

def _greedy_margin(config: dict, weights: dict, prompt: list[int], n: int) -> float:
    """The smallest lead of the best logit over the second, over n greedy steps (uncached)."""
    model = mdl("Transformer")(mdl("LlamaConfig")(**config))
    model.load_state_dict(weights)
    tokens, margin = torch.tensor([prompt]), math.inf
    with torch.no_grad():
        for _ in range(min(n, config["max_seq_len"] - len(prompt))):
            logits = model(tokens)[0, -1]  # (vocab,)
            top2 = logits.topk(2).values
            margin = min(margin, float(top2[0] - top2[1]))
            tokens = torch.cat([tokens, logits.argmax().view(1, 1)], dim=1)
    return margin


def _model(g: torch.Generator, config: dict, runs: list[tuple[list[int], int]]) -> dict:
    """Weights whose greedy continuations are clear-cut for every (prompt, new tokens) in ``runs``
    (redrawn otherwise)."""
    while True:
        weights = _weights(g, config)
        if all(_greedy_margin(config, weights, prompt, n) > 1e-3 for prompt, n in runs):
            return weights


def _one_thread(fn):
    """``fn`` with one intra-op thread, the setting restored after: decoding a tiny model one token
    at a time is all overhead, and a second thread only adds synchronisation (ruinous on a busy machine)."""

    @functools.wraps(fn)
    def wrapped(*args):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args)
        finally:
            torch.set_num_threads(before)

    return wrapped


def _stop_tokens(free: list[int], prompt: list[int], free_w: list[int], prompt_w: list[int]):
    """A stop token, not in ``prompt``, that the greedy run ``free`` first produces at step 4 or later; and stop tokens
    for the run ``free_w`` from ``prompt_w``: one it first produces at step 3 or later, and one of
    the prompt's that it does not produce before. None if the runs offer none (redraw the weights)."""
    first = [i for i in range(3, len(free)) if free[i] not in free[:i] and free[i] not in prompt]
    later = [i for i in range(2, len(free_w)) if free_w[i] not in free_w[:i] and free_w[i] not in prompt_w]
    if not first or not later:
        return None
    in_prompt = [t for t in prompt_w if t not in free_w[: later[0] + 1]]
    if not in_prompt:
        return None
    return free[first[0]], [free_w[later[0]], in_prompt[0]]


def _label(config: dict, weights: dict) -> Label:
    tied = ", tied" if config["tie_embeddings"] else ""
    return Label(f"<vocab {config['vocab_size']}, {config['n_layers']} layer(s), {config['n_heads']}/"
                 f"{config['n_kv_heads']} heads, max_seq_len {config['max_seq_len']}{tied}>")


@_one_thread
def generate_cases(rng: random.Random) -> list[Case]:
    g = _gen(rng)
    run = gen("generate_from_weights")

    def case(label, config, weights, prompt, hint="default", **options):
        return Case(label, (config, weights, prompt, options), hint,
                    show=(_label(config, weights), Label("<weights>"), prompt, options))

    c1 = _config(24, 16, 2, 4, 2, 32, False, 24)
    p1, p6, p5, pw = [3, 7, 1], [5, 11, 2, 19, 8, 4], [1, 2, 3, 4, 5], [5, 2, 13]
    while True:
        w1 = _model(g, c1, [(p1, 12), (p6, 5), (p5, 4), ([9] * 20, 4), (pw, 12)])
        stops = _stop_tokens(run(c1, w1, p1, {"max_new_tokens": 12})["tokens"], p1,
                             run(c1, w1, pw, {"max_new_tokens": 12})["tokens"], pw)
        if stops is not None:
            break
    stop, stop_set = stops
    c2 = _config(20, 16, 1, 2, 1, 24, True, 32)
    w2 = _model(g, c2, [([4, 4, 9], 14)])
    c3 = _config(64, 8, 6, 2, 1, 16, False, 32)  # many layers: each must get its own cache
    p3 = [rng.randrange(10, 64) for _ in range(5)]
    w3 = _model(g, c3, [(p3, 10)])

    cases = [
        case("greedy with the KV cache: a prompt of 3 tokens, 3 new tokens", c1, w1, p1, "whole_sequence",
             max_new_tokens=3),
        case("greedy with the KV cache: a prompt of 3 tokens, 6 new tokens", c1, w1, p1, max_new_tokens=6),
        case("greedy without the cache (use_cache=False): the whole sequence every step", c1, w1, p1, "uncached",
             max_new_tokens=6, use_cache=False),
        case("a prompt of 6 tokens: the first new token comes from the last position's logits", c1, w1, p6,
             "last_position", max_new_tokens=5),
        case("max_new_tokens counts the new tokens only (a prompt of 5, 4 new tokens)", c1, w1, [1, 2, 3, 4, 5],
             "max_length", max_new_tokens=4),
        case("max_new_tokens = 0 yields nothing", c1, w1, p1, "count", max_new_tokens=0),
        case(f"stop token {stop}: generation ends there, and the stop token is not yielded", c1, w1, p1, "stop",
             max_new_tokens=12, stop_tokens=[stop]),
        case(f"stop tokens {stop_set}: {stop_set[1]} is in the prompt, but only new tokens stop generation", c1, w1,
             pw, "stop_in_prompt", max_new_tokens=12, stop_tokens=stop_set),
        case("GQA 2/1, tied embeddings: 14 new tokens through the cache", c2, w2, [4, 4, 9], "cache",
             max_new_tokens=14),
        case("the context exactly full: a prompt of 20 + 4 new tokens = max_seq_len 24", c1, w1, [9] * 20, "context",
             max_new_tokens=4, use_cache=False),
        case("past the context: a prompt of 20 + 8 new tokens > max_seq_len 24: ValueError", c1, w1, [9] * 20,
             "context", max_new_tokens=8, use_cache=False),
        case("past the context, though every token is a stop token (generation would end at once): ValueError "
             "all the same, raised before generating", c1, w1, [9] * 20, "context_late", max_new_tokens=8,
             stop_tokens=list(range(c1["vocab_size"]))),
        case(f"6 layers, a prompt of ids {p3}: 10 new tokens through the cache", c3, w3, p3, "cache",
             max_new_tokens=10),
        case("an empty prompt: ValueError", c1, w1, [], "empty_prompt", max_new_tokens=3),
        case("max_new_tokens = -1: ValueError", c1, w1, p1, "negative", max_new_tokens=-1),
        case("top_p = 0: ValueError", c1, w1, p1, "validate", max_new_tokens=3, temperature=1.0, top_p=0.0),
        case("top_k = 0: ValueError", c1, w1, p1, "validate", max_new_tokens=3, temperature=1.0, top_k=0),
        case("a negative temperature: ValueError", c1, w1, p1, "validate", max_new_tokens=3, temperature=-0.5),
        case("sampling (T = 1.3, top-k 8) with the cache, seed 3: one u = torch.rand(1, generator=generator) "
             "per new token", c1, w1, p1, "sampling", max_new_tokens=10, temperature=1.3, top_k=8, seed=3),
        case("the same sampling without the cache", c1, w1, p1, "sampling", max_new_tokens=10, temperature=1.3,
             top_k=8, seed=3, use_cache=False),
    ]
    # Sampling where each parameter shows: a seed (no RNG draw: the first that works) whose tokens change
    # when the temperature, top_k or top_p is left out, so that a loop that does not pass one of them on to
    # sample_next fails on every seed of the checks, not only where a random case happens to catch it.
    sampled = {"max_new_tokens": 16, "temperature": 0.6, "top_k": 6, "top_p": 0.8}
    without = [{"temperature": 1.0}, {"top_k": None}, {"top_p": 1.0}]
    for seed in range(100, 200):
        tokens = run(c1, w1, p1, {**sampled, "seed": seed})["tokens"]
        if all(run(c1, w1, p1, {**sampled, **left_out, "seed": seed})["tokens"] != tokens for left_out in without):
            break
    cases.append(case(f"sampling with every parameter (T = 0.6, top-k 6, top-p 0.8), seed {seed}: each of them "
                      "changes the tokens", c1, w1, p1, "sampling", **sampled, seed=seed))
    for n in range(3):
        n_heads = rng.choice([2, 4])
        config = _config(rng.randint(16, 32), 16, rng.randint(1, 2), n_heads,
                         rng.choice([h for h in (1, 2, 4) if n_heads % h == 0]), rng.choice([16, 32]),
                         rng.random() < 0.5, 32)
        prompt = [rng.randrange(config["vocab_size"]) for _ in range(rng.randint(1, 8))]
        new = rng.randint(1, 12)
        weights = _model(g, config, [(prompt, new)])
        options = {"max_new_tokens": new, "use_cache": rng.random() < 0.7}
        if rng.random() < 0.4:
            options.update(temperature=round(rng.uniform(0.7, 1.5), 2), top_p=round(rng.uniform(0.6, 1.0), 2),
                           seed=rng.randrange(1000))
        cases.append(case(f"a random model and prompt (case {n + 1})", config, weights, prompt,
                          "sampling" if "seed" in options else "default", **options))
    return cases


def _through_adapter(generate, config, weights, prompt, options) -> dict:
    """What the given generate_from_weights does, around any ``generate``."""
    model = mdl("Transformer")(mdl("LlamaConfig")(**config))
    model.load_state_dict(weights)
    runs = []
    model.register_forward_pre_hook(lambda m, args, kwargs: runs.append((args[0] if args else kwargs["tokens"]).shape[-1]),
                                    with_kwargs=True)
    options = dict(options)
    seed = options.pop("seed", None)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    n = options.get("max_new_tokens")
    limit = max(n, 0) + 1 if isinstance(n, int) and not isinstance(n, bool) else None
    tokens = []
    for token in generate(model, prompt, generator=generator, **options):
        tokens.append(token)
        if len(tokens) == limit:  # one more than asked for: enough to show a loop that never ends
            break
    return {"tokens": tokens, "each position run once": sum(runs) <= len(prompt) + len(tokens)}


def _generate_variant(kind: str):
    """The reference decoding loop with one mistake in it, behind the checkpoint's adapter."""

    def wrong_generate(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0, stop_tokens=(),
                       use_cache=True, generator=None):
        gen("check_sampling")(temperature, top_k, top_p)
        tokens = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(1, -1)
        n_prompt, context = tokens.shape[1], model.cfg.max_seq_len
        if n_prompt == 0:
            raise ValueError("empty prompt")
        if kind not in ("crop", "context_late") and n_prompt + max_new_tokens > context:
            raise ValueError("too long")
        if kind != "negative" and max_new_tokens < 0:
            raise ValueError("negative")
        stop = set(stop_tokens)
        use_cache = (use_cache and kind != "no_cache") or kind == "uncached"
        caches = model.new_caches() if use_cache else None
        new = tokens[:, -1:] if kind == "prefill" else tokens
        steps = max_new_tokens - n_prompt if kind == "max_length" else max(max_new_tokens, 1 if kind == "count" else 0)
        for _ in range(steps):
            if kind == "context_late" and tokens.shape[1] >= context:  # checked only when it overflows
                raise ValueError("too long")
            with torch.no_grad():
                if use_cache:
                    if kind == "cache_reset":
                        caches = model.new_caches()
                    logits = model(tokens if kind == "whole_sequence" else new, caches)
                else:
                    logits = model(tokens[:, -context:] if kind == "crop" else tokens)
            position = 0 if kind == "last_position" else -1
            if kind == "multinomial" and temperature > 0:  # torch's sampler instead of sample_next with u
                z = gen("apply_temperature")(logits[:, position], temperature)
                z = gen("top_k_filter")(z, top_k) if top_k is not None else z
                z = gen("top_p_filter")(z, top_p) if top_p < 1 else z
                next_id = torch.multinomial(torch.softmax(z, dim=-1), 1, generator=generator).view(1)
            else:
                u = torch.rand(1, generator=generator) if temperature > 0 else None
                next_id = gen("sample_next")(logits[:, position], temperature, top_k, top_p, u)
            token = int(next_id.item())
            if kind == "stop_included":
                yield token
            if token in stop and kind != "stop_ignored":
                return
            if kind != "stop_included":
                yield token
            new = next_id.view(1, 1)
            tokens = torch.cat([tokens, new], dim=1)
            if kind == "stop_in_prompt" and any(int(t) in stop for t in tokens[0]):
                return

    def wrong(config, weights, prompt, options):
        return _through_adapter(wrong_generate, config, weights, prompt, options)

    wrong.__name__ = f"generate_{kind}"
    return _one_thread(wrong)


def _generate_tensors(config, weights, prompt, options):
    out = gen("generate_from_weights")(config, weights, prompt, options)
    return {**out, "tokens": [torch.tensor([t]) for t in out["tokens"]]}


GENERATE_MISTAKES = ("no_cache", "whole_sequence", "prefill", "cache_reset", "last_position", "stop_included", "stop_ignored",
                     "stop_in_prompt", "max_length", "count", "crop", "uncached", "negative", "multinomial",
                     "context_late")


def compare_generate(case: Case, expected, got):
    """Exact equality; and a property the case order gives: the greedy cases come first, so a
    sampled case (temperature > 0) that fails while its tokens are ints means that greedy
    decoding is right and sampling is not."""
    problem = difference(expected, got)
    tokens = got.get("tokens") if isinstance(got, dict) else None
    if problem is None or not isinstance(tokens, list) or case.args[3].get("temperature", 0.0) <= 0:
        return problem
    if all(isinstance(t, int) and not isinstance(t, bool) for t in tokens) and tokens != expected["tokens"]:
        return problem, "sampling"
    return problem


def diagnose_generate(case: Case, expected, got) -> str | None:
    tokens = got.get("tokens") if isinstance(got, dict) else None
    if isinstance(tokens, list) and any(not isinstance(t, int) or isinstance(t, bool) for t in tokens):
        return "ints"
    prompt = list(case.args[2])
    if isinstance(tokens, list) and isinstance(expected, dict) and prompt and tokens[:len(prompt)] == prompt \
            and expected["tokens"][:len(prompt)] != prompt:
        return "echo"  # the prompt came back first (and the expected tokens do not start with it)
    if isinstance(tokens, list) and isinstance(expected, dict) and len(tokens) > case.args[3].get("max_new_tokens", 0):
        return "too_many"  # more tokens than asked for (the adapter reads one more, so an endless loop shows)
    if isinstance(got, dict) and isinstance(expected, dict) and got.get("tokens") == expected["tokens"]:
        if expected["each position run once"] and not got.get("each position run once"):
            return "no_cache"
        if not expected["each position run once"] and got.get("each position run once"):
            return "uncached"
    return None


register(Checkpoint(
    id="07.generate",
    points=3,
    title="the decoding loop: prefill, one new token per step through the KV cache, stop tokens, the context",
    signature="generate_from_weights(config, weights, prompt, options)",
    cases=generate_cases,
    reference=_one_thread(gen("generate_from_weights")),
    fingerprints=[(kind if kind != "multinomial" else "sampling", _generate_variant(kind)) for kind in GENERATE_MISTAKES]
    + [("ints", _one_thread(_generate_tensors))],
    compare=compare_generate,
    diagnose=diagnose_generate,
    # the model's own error, "N positions do not fit max_seq_len", where the prompt and the new tokens
    # fit: the model ran on more positions than they hold, which a cache fed whole sequences and a loop
    # that ignores max_new_tokens both do, so the hint says both (a safety net: the first case, 3 new
    # tokens, fits even whole sequences, so there their variant names whole_sequence; and the adapter
    # reads at most max_new_tokens + 1 tokens, so an endless loop shows as too_many first). Then a
    # ValueError of the learner's own about the context, raised where everything fits exactly.
    raised_hints=[(r"^ValueError: \d+ positions do not fit max_seq_len", "overflow"),
                  (r"^ValueError: .*(context|max_seq_len|too long|does not fit|exceed)", "context")],
    hints={
        "default": "Validate; caches = model.new_caches() once; logits = model(prompt, caches) (prefill); then each "
        "step: token = sample_next(logits[:, -1], ...), stop if it is a stop token, yield it, and logits = "
        "model(token as a (1, 1) tensor, caches). Without the cache, model(all tokens so far) each step.",
        "uncached": "With use_cache=False run the whole sequence so far, model(tokens), at every step (no caches), "
        "and append each new token to it: it is the baseline the cache is measured against.",
        "no_cache": "The tokens are right, but the model ran on the whole sequence again at every step: with "
        "use_cache=True, create model.new_caches() once, run the prompt through it, then feed each new token "
        "alone, model(token as a (1, 1) tensor, caches).",
        "last_position": "The next token comes from the logits of the *last* position, logits[:, -1]: after a "
        "prefill of several tokens, logits[:, 0] predicts the prompt's second token.",
        "max_length": "max_new_tokens counts the *new* tokens: loop max_new_tokens times, whatever the prompt's "
        "length (Hugging Face's max_length would include the prompt; max_new_tokens does not).",
        "count": "Generate exactly max_new_tokens tokens: none at all when it is 0 (no first token before the loop).",
        "echo": "Yield only the new tokens: yours yielded the prompt first. The caller has the prompt already (Hugging "
        "Face's generate returns both; this generate streams what the model adds).",
        "too_many": "Yours yielded more than max_new_tokens tokens: stop after max_new_tokens new tokens (for _ in "
        "range(max_new_tokens)), whatever the model says; a stop token may never come. (The checkpoint reads at most "
        "max_new_tokens + 1 of them, so a loop that never ends shows as one token too many.)",
        "overflow": "The model refused to run past max_seq_len although the prompt and max_new_tokens fit: it was "
        "run on more positions than the prompt and the new tokens hold. Either the loop ran more than "
        "max_new_tokens steps (loop for _ in range(max_new_tokens): a stop token may never come), or the cache was "
        "fed tokens it had already seen (after the prefill, feed only the newest token, a (1, 1) tensor).",
        "stop": "When the new token is a stop token, end the generator (return) *before* yielding it: the caller "
        "gets the text without the end-of-text marker.",
        "stop_included": "Check for a stop token before yielding: the stop token itself is not part of the output.",
        "stop_ignored": "End generation when a token in stop_tokens is produced.",
        "stop_in_prompt": "Only a *new* token can stop generation: a prompt often contains <|endoftext|> (between "
        "documents), so test the token you just sampled, not the whole sequence.",
        "cache": "Feed the model only what it has not seen: the prompt once, then each new token alone, all with the "
        "same caches (the model places new tokens after the cached positions).",
        "whole_sequence": "With a cache, feed only the newest token, a (1, 1) tensor: feeding the whole sequence "
        "again appends every earlier token to the cache a second time.",
        "prefill": "Run the whole prompt through the model with the caches first (prefill): feeding only its last "
        "token leaves the earlier prompt tokens out of the cache, so the model never sees them.",
        "cache_reset": "Create the caches once, before the loop: new caches at every step forget the context, and "
        "the model sees only the newest token.",
        "context": "The model has max_seq_len positions: raise ValueError when len(prompt) + max_new_tokens > "
        "max_seq_len (exactly max_seq_len is fine). Cropping the sequence to its last max_seq_len tokens (nanoGPT) "
        "does not work with a KV cache, whose positions only grow.",
        "crop": "Raise ValueError when len(prompt) + max_new_tokens exceeds max_seq_len instead of cropping the "
        "sequence (nanoGPT's idx[:, -block_size:]): the KV cache cannot drop positions, and both paths must agree.",
        "context_late": "Check the context before generating anything: raise ValueError as soon as "
        "len(prompt) + max_new_tokens > max_seq_len, even if a stop token would have ended generation in time. "
        "The caller asked for more than the model can hold; a check that fires only when the sequence overflows "
        "accepts the request or fails half-way, depending on what the model happens to say.",
        "empty_prompt": "Raise ValueError for an empty prompt: there are no logits to predict the first token from.",
        "negative": "Raise ValueError when max_new_tokens is negative (range() would silently yield nothing): the "
        "caller asked for something impossible.",
        "validate": "Call check_sampling(temperature, top_k, top_p) before generating: a bad parameter must raise "
        "ValueError at once, not after the prefill.",
        "sampling": "Greedy decoding is right but sampled decoding differs: pass 07.sample first, then draw "
        "u = torch.rand(1, generator=generator) once per new token (only when temperature > 0) and call "
        "sample_next(logits[:, -1], temperature, top_k, top_p, u).",
        "ints": "Yield each token as a Python int (int(next_id.item())), not as a tensor.",
    },
))
