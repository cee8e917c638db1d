"""Chapter 04 checkpoints: mixture of experts.

Every checkpoint is a plain function of small tensors (or ints), so the cases, the
expected outputs and the known mistakes' outputs can be stored as data. Inputs come from
the shared seeded helpers (``checks/inputs.py``); expected outputs from ``solutions.moe``.
Floats are compared within ``tol``; expert ids and counts exactly.

How the cases expose mistakes:

* edge cases first: every ``ValueError`` the reference documents (top_k = 0 or above the
  number of experts, expert ids below 0 or above n_experts - 1, an empty batch, a layout
  that cannot be split), then the small hand-written cases each built around one mistake
  (top-1 weights, experts with no token, ties of a stable sort, a perfectly balanced load);
* realistic cases: 64 experts with top-6 or top-8 (two-digit expert ids, many tokens per
  expert), bfloat16 logits for the router (its softmax runs in float32), then seeded random
  routings;
* the router's weights and probabilities, the aux-loss-free router's weights and the
  load-balancing loss are float32 whatever the inputs, as documented (``exact_dtype``: a
  float64 answer is refused with the hint ``dtype``);
* known mistakes are named only on evidence: a variant of the reference with that one
  mistake in it (``fingerprints``) that the learner's output matches on every case where
  the variant is wrong, or the exception the learner raised;
* the router, dispatch, combine, the load-balancing loss and the aux-loss-free router are
  trained through: after the values pass, a gradient probe checks that the gradient reaches
  the router's logits, the tokens, the expert outputs, the weights and the probabilities as
  the reference's does (and that nothing reaches the aux-loss-free bias).
"""

from __future__ import annotations

import functools
import random

import torch
import torch.nn.functional as F

from ..core import Case, Checkpoint, register
from ..reference import reference
from .inputs import generator, rand, randn, tensor_label

moe = functools.partial(reference, "solutions.moe")
TOL = 1e-5  # float32


def _case(label: str, args: tuple, names: tuple, hint: str = "default", **fields) -> Case:
    """A case whose tensor arguments are shown by value when small, else by name and shape."""
    return Case(label, args, hint, show=tuple(tensor_label(a, n) for a, n in zip(args, names)), **fields)


def _choices(g: torch.Generator, n_tokens: int, n_experts: int, top_k: int) -> torch.Tensor:
    """``(n_tokens, top_k)`` distinct random expert ids per token, int64."""
    return torch.rand(n_tokens, n_experts, generator=g).argsort(dim=-1)[:, :top_k]


def _order(indices: torch.Tensor) -> torch.Tensor:
    return torch.argsort(indices.reshape(-1), stable=True)


def _renorm(w: torch.Tensor) -> torch.Tensor:
    return w / w.sum(dim=-1, keepdim=True)


def _distinct_logits(g: torch.Generator, n_tokens: int, n_experts: int, step: float = 0.25,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Logits with no tie in any row (each row a permutation of a grid with spacing ``step``,
    exact in bfloat16), so that the top-k is the same on every computer."""
    perm = torch.rand(n_tokens, n_experts, generator=g).argsort(dim=-1).float()
    return (perm * step - step * n_experts / 2).to(dtype)


# ---------------------------------------------------------------------------- 04.router

def router_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, logits, top_k, hint="default", **fields):
        return _case(label, (logits, top_k), ("logits", "top_k"), hint, **fields)

    cases = [
        case("top_k larger than the number of experts", randn(g, 3, 4), 5, "validate"),
        case("top_k = 0", randn(g, 3, 4), 0, "validate"),
        case("one token, top-1: the chosen expert's weight is 1", torch.tensor([[0.5, 2.0, -1.0, 0.3]]), 1, "renormalise"),
        case("two tokens, top-2 of 4 experts", torch.tensor([[1.0, -0.5, 2.0, 0.0], [0.2, 0.1, -1.0, 3.0]]), 2,
             "renormalise", probe=True),
        case("negative logits", torch.tensor([[-3.0, -1.0, -2.0], [-0.5, -4.0, -0.1]]), 2, "logits"),
        case("four tokens, one of them far more confident", torch.tensor(
            [[0.1, 0.2, 0.3, 0.4, 0.5], [5.0, 0.0, 0.0, 0.0, 0.0], [0.3, -0.2, 0.1, 0.0, 0.2], [0.0, 0.4, -0.3, 0.2, 0.1]]), 3, "softmax_dim"),
        case("top_k = n_experts: every expert, largest first", torch.tensor([[0.3, -1.2, 2.5, 0.9]]), 4, "order"),
        case("64 experts, top-8, 12 tokens (two-digit expert ids)", randn(g, 12, 64, scale=2.0), 8, probe=True),
        case("bfloat16 logits: the softmax runs in float32", _distinct_logits(g, 4, 16, dtype=torch.bfloat16), 4, "float32"),
    ]
    for n in range(6):
        n_experts = rng.randint(2, 16)
        top_k = rng.randint(1, min(4, n_experts))
        logits = randn(g, rng.randint(1, 8), n_experts, scale=rng.choice([0.5, 1.0, 3.0]))
        cases.append(case(f"random logits (case {n + 1})", logits, top_k))
    return cases


def _router_with(weights_fn=None, probs_dim=-1, largest=True, sort_by_id=False, full_probs=True, upcast=True):
    def wrong(logits, top_k):
        n_experts = logits.shape[-1]
        if not 1 <= top_k <= n_experts:
            raise ValueError("top_k out of range")
        probs = F.softmax(logits.float() if upcast else logits, dim=probs_dim)
        top, indices = probs.topk(top_k, dim=-1, largest=largest)
        weights = weights_fn(top, probs, logits, indices) if weights_fn else _renorm(top)
        if sort_by_id:
            indices, perm = indices.sort(dim=-1)
            weights = weights.gather(-1, perm)
        if not full_probs:
            probs = torch.zeros_like(probs).scatter(-1, indices, weights)
        return weights, indices, probs
    return wrong


register(Checkpoint(
    id="04.router",
    points=2,
    title="softmax over experts, top-k, renormalised; full probabilities returned",
    signature="top_k_router(logits, top_k)",
    cases=router_cases,
    reference=moe("top_k_router"),
    tol=TOL,
    fingerprints=[
        ("renormalise", _router_with(lambda top, probs, logits, idx: top)),
        ("softmax_dim", _router_with(probs_dim=0)),
        ("logits", _router_with(lambda top, probs, logits, idx: logits.float().gather(-1, idx))),
        ("largest", _router_with(largest=False)),
        ("order", _router_with(sort_by_id=True)),
        ("probs_full", _router_with(full_probs=False)),
        ("float32", _router_with(upcast=False)),
    ],
    grad_probe=True,
    exact_dtype=True,  # weights and probs are float32 whatever the logits' dtype (the docstring's promise)
    hints={
        "default": "probs = F.softmax(logits.float(), dim=-1); top, indices = probs.topk(top_k, dim=-1); "
        "weights = top / top.sum(dim=-1, keepdim=True); return weights, indices, probs.",
        "validate": "top_k must be between 1 and the number of experts (logits.shape[-1]): check it first "
        "and raise ValueError saying so; torch.topk's own error is a RuntimeError that does not name the setting.",
        "renormalise": "Renormalise over the k chosen experts: divide the top-k probabilities by their own sum "
        "(not by the sum over all experts, which is already 1), so that each token's k weights sum to 1 "
        "(Mixtral); a top-1 token gets weight 1.",
        "softmax_dim": "The softmax runs over the experts of each token (dim=-1), not over the tokens (dim=0): "
        "every row of probs must sum to 1.",
        "logits": "The weights are probabilities, not logits: softmax first (then top-k and renormalise); "
        "logits can be negative and do not sum to 1.",
        "largest": "Pick the k *largest* probabilities: topk's default largest=True (an ascending argsort "
        "keeps the k least likely experts).",
        "order": "Return the chosen experts largest weight first, as torch.topk does (sorted=True), each weight "
        "beside its expert; do not re-sort them by expert id.",
        "probs_full": "probs is the full softmax over all n_experts (rows sum to 1), not the renormalised weights "
        "scattered back: the load-balancing loss needs the probabilities of the experts not chosen too.",
        "float32": "Compute the softmax in float32, F.softmax(logits.float(), dim=-1), whatever the logits' dtype: "
        "in bfloat16 the probabilities keep 3 significant digits, and the router's choices and weights drift.",
        "dtype": "Return weights and probs as float32 tensors (F.softmax(logits.float(), dim=-1)), not float64: "
        "the rest of the layer, and the load-balancing loss added to a float32 training loss, expect float32.",
    },
))


# -------------------------------------------------------------------------- 04.dispatch

def dispatch_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, n_tokens, dim, indices, n_experts, hint="default", **fields):
        x = randn(g, n_tokens, dim)
        return _case(label, (x, indices, n_experts), ("x", "indices", "n_experts"), hint, **fields)

    many = torch.stack([torch.tensor([i % 3, (i + 1) % 3]) for i in range(12)])  # 24 rows on 3 experts
    cases = [
        case("an expert id out of range", 3, 2, torch.tensor([[0, 1], [2, 4], [1, 0]]), 4, "range"),
        case("a negative expert id", 3, 2, torch.tensor([[0, 1], [2, -1], [1, 0]]), 4, "range"),
        case("top-1: each token once, rows grouped by expert", 4, 2, torch.tensor([[2], [0], [2], [1]]), 3, "default"),
        case("top-2: each token twice", 3, 2, torch.tensor([[1, 0], [0, 2], [2, 1]]), 3, "token_of_slot", probe=True),
        case("the last experts get no token", 3, 2, torch.tensor([[1, 0], [0, 1], [1, 0]]), 4, "minlength"),
        case("an expert in the middle gets no token", 3, 2, torch.tensor([[0], [3], [0]]), 4, "default"),
        case("12 tokens on 3 experts: tokens keep their order inside each expert", 12, 2, many, 3, "stable"),
        case("64 experts, top-6, 20 tokens (two-digit expert ids)", 20, 8, _choices(g, 20, 64, 6), 64, probe=True),
    ]
    for n in range(6):
        n_experts = rng.randint(2, 16)
        top_k = rng.randint(1, min(4, n_experts))
        n_tokens = rng.randint(1, 8)
        cases.append(case(f"random routing (case {n + 1})", n_tokens, 3, _choices(g, n_tokens, n_experts, top_k), n_experts))
    return cases


def _dispatch_with(rows=lambda order, k, n, E: order // k, flat=lambda idx: idx.reshape(-1), descending=False,
                   stable=True, minlength=True, check=True):
    def wrong(x, indices, n_experts):
        if check and indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_experts):
            raise ValueError("expert id out of range")
        k = indices.shape[-1]
        f = flat(indices)
        order = torch.argsort(f, descending=descending, stable=stable)
        counts = torch.bincount(f, minlength=n_experts if minlength else 0)
        return x[rows(order, k, x.shape[0], n_experts)], order, counts
    return wrong


register(Checkpoint(
    id="04.dispatch",
    points=2,
    title="(token, slot) rows grouped by expert with a stable sort; counts per expert",
    signature="dispatch(x, indices, n_experts)",
    cases=dispatch_cases,
    reference=moe("dispatch"),
    tol=TOL,  # x_sorted copies rows of x; ids and counts are integers, compared exactly
    fingerprints=[
        ("token_of_slot", _dispatch_with(rows=lambda order, k, n, E: order)),
        ("divide_by_k", _dispatch_with(rows=lambda order, k, n, E: order // E)),
        ("modulo", _dispatch_with(rows=lambda order, k, n, E: order % n)),
        ("all_slots", _dispatch_with(flat=lambda idx: idx[:, 0])),
        ("slot_major", _dispatch_with(flat=lambda idx: idx.T.reshape(-1))),
        ("ascending", _dispatch_with(descending=True)),
        ("stable", _dispatch_with(stable=False)),
        ("minlength", _dispatch_with(minlength=False)),
    ],
    raised_hints=[(r"index \d+ is out of bounds", "token_of_slot")],
    grad_probe=True,
    hints={
        "default": "flat = indices.reshape(-1); order = torch.argsort(flat, stable=True); counts = "
        "torch.bincount(flat, minlength=n_experts); x_sorted = x[order // top_k].",
        "range": "Expert ids must lie in 0..n_experts-1: check both ends (indices.min() >= 0 and "
        "indices.max() < n_experts) first and raise ValueError naming the bad ids (bincount would "
        "silently grow an extra expert, or fail on a negative id).",
        "token_of_slot": "order numbers (token, slot) pairs, token * top_k + slot, not tokens: the token of "
        "row r is order[r] // top_k, so gather x[order // top_k].",
        "divide_by_k": "The token of a flat (token, slot) number is order // top_k (top_k = indices.shape[-1]), "
        "not order // n_experts.",
        "modulo": "Flat numbers are token * top_k + slot (row-major): the token is order // top_k, not "
        "order % n_tokens (that is the slot-major numbering).",
        "all_slots": "Every token goes to all of its top_k experts: sort the n_tokens * top_k entries of "
        "indices.reshape(-1), not only the first column.",
        "slot_major": "Number the (token, slot) pairs row-major, token * top_k + slot: flatten indices as it "
        "is (indices.reshape(-1)), not transposed.",
        "ascending": "Sort by expert id in increasing order, so expert 0's rows come first and "
        "x_sorted.split(counts) hands each expert its own rows.",
        "stable": "Use a stable sort, torch.argsort(flat, stable=True): within an expert the rows must keep "
        "the tokens' order (the default sort may shuffle equal keys).",
        "minlength": "Experts with no token still need their count: torch.bincount(flat, minlength=n_experts) "
        "has exactly n_experts entries.",
    },
))


# --------------------------------------------------------------------------- 04.combine

def combine_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, indices, weights, dim=3, hint="default", **fields):
        order = _order(indices)
        y = randn(g, indices.numel(), dim)
        return _case(label, (y, weights, order), ("y_sorted", "weights", "order"), hint, **fields)

    def rand_weights(n, k):
        return _renorm(rand(g, n, k, low=0.1, high=1.1))

    cases = [
        case("one token, top-2", torch.tensor([[1, 0]]), torch.tensor([[0.7, 0.3]]), 2, "weights"),
        case("top-1 with weight 1: the sort moved the tokens", torch.tensor([[2], [0], [1]]), torch.ones(3, 1), 2, "unsort"),
        case("top-2: two rows per token to add up", torch.tensor([[0, 1], [1, 0], [0, 2]]), rand_weights(3, 2), 2, "accumulate"),
        case("weights that differ per slot", torch.tensor([[2, 0], [0, 1], [1, 2], [2, 1]]),
             torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]]), 2, "weights_order", probe=True),
        case("64 experts, top-6, 20 tokens (two-digit expert ids)", _choices(g, 20, 64, 6), rand_weights(20, 6), 8,
             probe=True),
    ]
    for n in range(6):
        n_experts = rng.randint(2, 16)
        top_k = rng.randint(1, min(4, n_experts))
        n_tokens = rng.randint(1, 8)
        cases.append(case(f"random routing (case {n + 1})", _choices(g, n_tokens, n_experts, top_k), rand_weights(n_tokens, top_k)))
    return cases


def _combine_with(weight=lambda w, order: w.reshape(-1)[order], scale=lambda y, w, k: y * w[:, None],
                  token=lambda order, k, n: order // k, op="index_add"):
    def wrong(y_sorted, weights, order):
        n, k = weights.shape
        w = weight(weights, order)
        out = y_sorted.new_zeros(n, y_sorted.shape[-1])
        getattr(out, op + "_")(0, token(order, k, n), scale(y_sorted, w, k))
        return out
    return wrong


def _combine_no_unsort(y_sorted, weights, order):
    n, k = weights.shape
    w = weights.reshape(-1)[order]
    return (y_sorted * w[:, None]).reshape(n, k, -1).sum(dim=1)


register(Checkpoint(
    id="04.combine",
    points=2,
    title="each row weighted by its own weight and added back to its token",
    signature="combine(y_sorted, weights, order)",
    cases=combine_cases,
    reference=moe("combine"),
    tol=TOL,
    fingerprints=[
        ("weights", _combine_with(scale=lambda y, w, k: y)),
        ("weights_twice", _combine_with(scale=lambda y, w, k: y * w[:, None] * w[:, None])),
        ("weights_order", _combine_with(weight=lambda w, order: w.reshape(-1))),
        ("unsort", _combine_no_unsort),
        ("accumulate", _combine_with(op="index_copy")),
        ("sum", _combine_with(scale=lambda y, w, k: y * w[:, None] / k)),
        ("modulo", _combine_with(token=lambda order, k, n: order % n)),
    ],
    raised_hints=[(r"index_add_\(\).*for dim: 1|source tensor shape must match self tensor shape", "axis")],
    grad_probe=True,
    hints={
        "default": "n_tokens, top_k = weights.shape; w = weights.reshape(-1)[order]; out = zeros(n_tokens, dim)"
        ".index_add_(0, order // top_k, y_sorted * w[:, None]).",
        "weights": "Multiply each expert output by its router weight before adding it to its token: the output "
        "is a weighted sum, sum_j w_j * E_j(x).",
        "weights_twice": "Apply each router weight once: y_sorted * w[:, None], not twice.",
        "weights_order": "The rows of y_sorted are in dispatch order: the weight of row r is "
        "weights.reshape(-1)[order[r]], so permute the weights with order too.",
        "unsort": "The sort moved the rows: row r belongs to token order[r] // top_k. Add each row back to its "
        "own token with index_add_(0, order // top_k, ...); reshaping y_sorted keeps the sorted order.",
        "accumulate": "A token receives top_k rows, one per chosen expert: add them up (index_add_), do not "
        "overwrite (index_copy_, scatter_, out[i] = ...).",
        "sum": "Sum the k weighted outputs; do not average them: the weights already sum to 1.",
        "modulo": "Flat numbers are token * top_k + slot: the token of row r is order[r] // top_k, not "
        "order[r] % n_tokens.",
        "axis": "index_add_ along dim 0, the token axis: out.index_add_(0, order // top_k, rows).",
    },
))


# --------------------------------------------------------------- 04.load_balancing_loss

def loss_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, probs, indices, n_experts, hint="default", **fields):
        return _case(label, (probs, indices, n_experts), ("probs", "indices", "n_experts"), hint, **fields)

    def routed(logits, k):
        probs = F.softmax(logits, dim=-1)
        return probs, probs.topk(k, dim=-1).indices

    uniform = torch.full((4, 4), 0.25)
    collapsed = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 3)
    cases = [
        case("an empty batch", torch.zeros(0, 4), torch.zeros(0, 2, dtype=torch.long), 4, "empty"),
        case("perfect balance: uniform probabilities, each expert chosen once", uniform, torch.tensor([[0], [1], [2], [3]]), 4, "scale"),
        case("collapse: every token on expert 0", collapsed, torch.zeros(3, 1, dtype=torch.long), 4, "f_counts"),
        case("top-2: both choices count in f", *routed(torch.tensor([[2.0, 1.0, -1.0], [1.5, 0.0, 1.0], [0.0, 2.0, 1.0]]), 2), 3,
             "f_topk", probe=True),
        case("the last expert is never chosen", *routed(torch.tensor([[1.0, 0.5, -2.0], [0.0, 1.0, -1.0]]), 1), 3, "minlength"),
        case("64 experts, top-6, 40 tokens (two-digit expert ids)", *routed(_distinct_logits(g, 40, 64, 0.05), 6), 64,
             probe=True),
    ]
    for n in range(6):
        n_experts = rng.randint(2, 16)
        top_k = rng.randint(1, min(4, n_experts))
        probs, indices = routed(randn(g, rng.randint(1, 8), n_experts, scale=1.5), top_k)
        cases.append(case(f"random routing (case {n + 1})", probs, indices, n_experts))
    return cases


def _loss_with(f_fn=None, p_fn=None, scale=lambda E: E, reduce="sum"):
    def wrong(probs, indices, n_experts):
        n, k = indices.shape
        if n == 0:
            raise ValueError("empty batch")
        if f_fn is None:
            f = torch.bincount(indices.reshape(-1), minlength=n_experts).float() / (n * k)
        else:
            f = f_fn(probs, indices, n_experts)
        P = probs.float().mean(dim=0) if p_fn is None else p_fn(probs, indices, n_experts)
        fp = f * P
        return scale(n_experts) * (fp.sum() if reduce == "sum" else fp.mean())
    return wrong


def _chosen_probs(probs, indices, n_experts):
    mask = torch.zeros_like(probs).scatter(-1, indices, 1.0)
    return (probs * mask).mean(dim=0)


register(Checkpoint(
    id="04.load_balancing_loss",
    points=2,
    title="N * sum_i f_i * P_i, f over all top-k assignments, 1 at perfect balance",
    signature="load_balancing_loss(probs, indices, n_experts)",
    cases=loss_cases,
    reference=moe("load_balancing_loss"),
    tol=TOL,
    fingerprints=[
        ("scale", _loss_with(scale=lambda E: 1)),
        ("scale_mean", _loss_with(scale=lambda E: 1, reduce="mean")),
        ("f_counts", _loss_with(f_fn=lambda probs, idx, E: probs.float().mean(dim=0))),
        ("f_topk", _loss_with(f_fn=lambda probs, idx, E: torch.bincount(idx[:, 0], minlength=E).float() / idx.shape[0])),
        ("f_norm", _loss_with(f_fn=lambda probs, idx, E: torch.bincount(idx.reshape(-1), minlength=E).float() / idx.shape[0])),
        ("P_full", _loss_with(p_fn=_chosen_probs)),
        ("minlength", _loss_with(f_fn=lambda probs, idx, E: torch.bincount(idx.reshape(-1)).float() / idx.numel())),
    ],
    raised_hints=[(r"size of tensor a \(\d+\) must match", "shapes")],
    grad_probe=True,
    exact_dtype=True,  # a 0-dimensional float32 tensor, as documented
    hints={
        "default": "counts = torch.bincount(indices.reshape(-1), minlength=n_experts); f = counts / (n_tokens * "
        "top_k); P = probs.mean(dim=0); return n_experts * (f * P).sum().",
        "scale": "Multiply by n_experts and sum over the experts (not a mean): with perfect balance, "
        "f_i = P_i = 1/N, and N * sum_i (1/N)(1/N) = 1.",
        "scale_mean": "Sum f_i * P_i over the experts and multiply by n_experts; a mean over the experts "
        "without the factor N gives 1/N at perfect balance instead of 1.",
        "f_counts": "f_i counts the tokens actually sent to expert i (a bincount of indices), not the mean "
        "probability: that is P_i. The product of a count (no gradient) and a probability is what balances.",
        "f_topk": "With top_k > 1 every choice counts: bincount all n_tokens * top_k entries of indices, not "
        "only each token's first expert.",
        "f_norm": "Normalise the counts by n_tokens * top_k, the number of assignments, so that f sums to 1 "
        "and perfect balance gives 1 whatever top_k (Hugging Face's Mixtral code divides by n_tokens only).",
        "P_full": "P_i is the mean of the full softmax probability of expert i over all tokens, chosen or not: "
        "probs.mean(dim=0). Masking the unchosen leaves no gradient towards idle experts.",
        "minlength": "Use torch.bincount(..., minlength=n_experts): experts that got no token still need "
        "their f_i = 0.",
        "empty": "An empty batch has no load to balance (f would be 0 / 0): raise ValueError when "
        "indices has no row.",
        "shapes": "f and P must both have one entry per expert: bincount with minlength=n_experts, and "
        "average the probabilities over the tokens, probs.mean(dim=0) (not over the experts).",
        "dtype": "Return a float32 loss (counts.float(), probs.float()), not float64: it is added to the float32 "
        "training loss, and a float64 term would turn the whole loss, and its backward pass, into float64.",
    },
))


# ------------------------------------------------------------------- 04.shared_experts

def layout_cases(rng: random.Random) -> list[Case]:
    cases = [
        Case("hidden_dim not divisible by granularity", (8, 2, 100, 3, 0), "divisible"),
        Case("as many shared experts as active experts", (8, 2, 64, 2, 4), "shared_limit"),
        Case("top_k larger than n_experts", (4, 6, 64, 1, 0), "top_k"),
        Case("granularity 0", (8, 2, 64, 0, 0), "arguments"),
        Case("a negative number of shared experts", (8, 2, 64, 2, -1), "arguments"),
        Case("hidden_dim 0", (8, 2, 0, 2, 0), "arguments"),
        Case("no experts (n_experts 0)", (0, 1, 64, 1, 0), "arguments"),
        Case("top_k 0", (8, 0, 64, 2, 0), "arguments"),
        Case("granularity 1, no shared expert: the coarse MoE unchanged", (8, 2, 64, 1, 0)),
        Case("one shared expert, no segmentation", (8, 2, 64, 1, 1), "shared_total"),
        Case("DeepSeekMoE 2B: 16 experts top-2 -> 1 shared + 63 routed, 7 active", (16, 2, 1024, 4, 1), "shared_active"),
        Case("segmentation only: 8 experts top-2, granularity 4", (8, 2, 64, 4, 0), "active_scale"),
        Case("32 experts top-4, granularity 8, 3 shared: 253 routed, 29 active", (32, 4, 2048, 8, 3)),
    ]
    for n in range(10):
        n_experts = rng.randint(2, 16)
        top_k = rng.randint(1, min(4, n_experts))
        granularity = rng.randint(1, 8)
        hidden = granularity * rng.randint(1, 64)
        n_shared = rng.randint(0, granularity * top_k - 1)
        cases.append(Case(f"random layout (case {n + 1})", (n_experts, top_k, hidden, granularity, n_shared)))
    return cases


def _layout_with(total=lambda N, K, m, s: m * N - s, active=lambda N, K, m, s: m * K - s,
                 hidden=lambda h, m: h // m, divisible=True, shared_limit=True):
    def wrong(n_experts, top_k, hidden_dim, granularity, n_shared):
        if min(n_experts, top_k, hidden_dim, granularity) < 1 or n_shared < 0:
            raise ValueError("arguments out of range")
        if top_k > n_experts:
            raise ValueError("top_k > n_experts")
        if divisible and hidden_dim % granularity:
            raise ValueError("hidden_dim not divisible")
        if shared_limit and n_shared >= granularity * top_k:
            raise ValueError("too many shared experts")
        m = granularity
        return total(n_experts, top_k, m, n_shared), active(n_experts, top_k, m, n_shared), hidden(hidden_dim, m)
    return wrong


register(Checkpoint(
    id="04.shared_experts",
    points=2,
    title="fine-grained segmentation and shared experts at equal parameters and compute",
    signature="fine_grained_layout(n_experts, top_k, hidden_dim, granularity, n_shared)",
    cases=layout_cases,
    reference=moe("fine_grained_layout"),
    fingerprints=[
        ("segment", _layout_with(hidden=lambda h, m: h)),
        ("shared_total", _layout_with(total=lambda N, K, m, s: m * N)),
        ("shared_active", _layout_with(active=lambda N, K, m, s: m * K)),
        ("active_scale", _layout_with(active=lambda N, K, m, s: K - s)),
        ("total_scale", _layout_with(total=lambda N, K, m, s: N - s)),
        ("shared_units", _layout_with(total=lambda N, K, m, s: m * (N - s), active=lambda N, K, m, s: m * (K - s))),
    ],
    hints={
        "default": "m = granularity: n_routed = m * n_experts - n_shared, routed_top_k = m * top_k - n_shared, "
        "expert_hidden_dim = hidden_dim // m (after checking that m divides hidden_dim and n_shared < m * top_k).",
        "divisible": "Each expert splits into granularity equal experts: if hidden_dim % granularity != 0, "
        "raise ValueError saying so instead of rounding down (which would lose parameters).",
        "top_k": "A token cannot visit more experts than there are: raise ValueError if top_k > n_experts.",
        "arguments": "n_experts, top_k, hidden_dim and granularity must be at least 1 and n_shared at least 0: "
        "check them first and raise ValueError naming the bad value.",
        "shared_limit": "Shared experts take their compute from the routed ones: if n_shared >= granularity * "
        "top_k no routed expert is left active, so raise ValueError.",
        "segment": "Fine-grained experts are smaller: each has hidden size hidden_dim // granularity, so that "
        "granularity of them hold what one coarse expert held.",
        "shared_total": "The shared experts are carved out of the m * n_experts small experts: n_routed = "
        "granularity * n_experts - n_shared keeps the total parameters.",
        "shared_active": "Shared experts are always active, so the router picks n_shared fewer: routed_top_k = "
        "granularity * top_k - n_shared keeps the compute per token.",
        "active_scale": "Segmentation multiplies the active experts too: granularity * top_k small experts "
        "do the work of top_k coarse ones (then subtract the shared ones).",
        "total_scale": "Segmentation multiplies the number of experts: granularity * n_experts small experts, "
        "of which n_shared become shared.",
        "shared_units": "n_shared counts *small* (fine-grained) experts: subtract n_shared itself, not "
        "granularity * n_shared.",
    },
))


# ------------------------------------------------------------------- 04.aux_free_bias

def aux_free_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, logits, bias, top_k, hint="default", **fields):
        return _case(label, (logits, bias, top_k), ("logits", "bias", "top_k"), hint, **fields)

    logits = torch.tensor([[1.0, 0.5, -0.5, 0.0], [0.2, 1.5, 0.3, -1.0]])
    cases = [
        case("top_k larger than the number of experts", randn(g, 2, 3), torch.zeros(3), 4, "validate"),
        case("top_k = 0", randn(g, 2, 3), torch.zeros(3), 0, "validate"),
        case("zero bias: the plain sigmoid top-k", logits, torch.zeros(4), 2, "sigmoid"),
        case("a large bias pulls expert 3 in", logits, torch.tensor([0.0, 0.0, 0.0, 1.0]), 2, "bias_select"),
        case("a bias that reorders the choice but must not change what weights mean", logits,
             torch.tensor([-0.3, 0.2, 0.4, 0.0]), 2, "bias_in_weights", probe=True),
        case("64 experts, top-8, 12 tokens (two-digit expert ids)", randn(g, 12, 64, scale=1.5), randn(g, 64, scale=0.3),
             8, probe=True),
    ]
    for n in range(6):
        n_experts = rng.randint(2, 16)
        top_k = rng.randint(1, min(4, n_experts))
        cases.append(case(f"random logits and bias (case {n + 1})", randn(g, rng.randint(1, 8), n_experts, scale=1.5),
                          randn(g, n_experts, scale=0.3), top_k))
    return cases


def _aux_free_with(score=torch.sigmoid, select=lambda s, b, logits: s + b, weight_from=lambda s, b: s, renorm=True,
                   sort_by_id=False):
    def wrong(logits, bias, top_k):
        if not 1 <= top_k <= logits.shape[-1]:
            raise ValueError("top_k out of range")
        s = score(logits.float())
        indices = select(s, bias, logits.float()).topk(top_k, dim=-1).indices
        if sort_by_id:
            indices = indices.sort(dim=-1).values
        chosen = weight_from(s, bias).gather(-1, indices)
        return (_renorm(chosen) if renorm else chosen), indices
    return wrong


register(Checkpoint(
    id="04.aux_free_bias",
    points=2,
    title="sigmoid scores; the bias picks the experts, the unbiased scores weigh them",
    signature="aux_free_router(logits, bias, top_k)",
    cases=aux_free_cases,
    reference=moe("aux_free_router"),
    tol=TOL,
    fingerprints=[
        ("bias_in_weights", _aux_free_with(weight_from=lambda s, b: s + b)),
        ("bias_select", _aux_free_with(select=lambda s, b, logits: s)),
        ("sigmoid", _aux_free_with(score=lambda logits: F.softmax(logits, dim=-1))),
        ("bias_on_logits", _aux_free_with(select=lambda s, b, logits: torch.sigmoid(logits + b))),
        ("renormalise", _aux_free_with(renorm=False)),
        ("bias_sign", _aux_free_with(select=lambda s, b, logits: s - b)),
        ("order", _aux_free_with(sort_by_id=True)),
    ],
    grad_probe=True,
    exact_dtype=True,  # weights float32, as documented
    hints={
        "default": "scores = torch.sigmoid(logits.float()); indices = (scores + bias).topk(top_k, dim=-1).indices; "
        "w = scores.gather(-1, indices); weights = w / w.sum(dim=-1, keepdim=True).",
        "validate": "top_k must be between 1 and the number of experts (check both ends): raise ValueError saying so.",
        "sigmoid": "DeepSeek-V3 scores each expert with its own sigmoid, torch.sigmoid(logits), not a softmax "
        "over the experts.",
        "bias_select": "The bias must steer the choice: take the top-k of scores + bias (it is how an "
        "underloaded expert gets tokens).",
        "bias_in_weights": "The bias is for selection only: gather the weights from the unbiased sigmoid scores, "
        "not from scores + bias, then renormalise over the chosen k.",
        "bias_on_logits": "Add the bias to the sigmoid scores, not to the logits inside the sigmoid: "
        "topk(torch.sigmoid(logits) + bias).",
        "renormalise": "Renormalise the chosen scores so that each token's k weights sum to 1.",
        "bias_sign": "Add the bias (scores + bias): a positive bias makes an expert more likely to be chosen.",
        "dtype": "Return the weights as a float32 tensor (torch.sigmoid(logits.float())), not float64.",
        "order": "Return the chosen experts in decreasing biased score, as torch.topk gives them (sorted=True), "
        "each weight beside its expert; do not re-sort them by expert id.",
    },
))


# --------------------------------------------------------------------- 04.bias_update

def bias_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, bias, indices, n_experts, gamma, hint="default"):
        return _case(label, (bias, indices, n_experts, gamma), ("bias", "indices", "n_experts", "gamma"), hint)

    cases = [
        case("one overloaded expert", torch.zeros(3), torch.tensor([[0], [0], [0], [1], [2], [0]]), 3, 0.1, "sign"),
        case("loads 5, 1, 1, 1 of top-2 choices", torch.tensor([0.5, -0.2, 0.0, 0.1]),
             torch.tensor([[0, 1], [0, 2], [3, 0], [0, 2], [0, 3]]), 4, 0.01, "sign_only"),
        case("perfectly balanced except experts 0 and 1: the balanced ones stay", torch.zeros(3),
             torch.tensor([[0], [0], [2], [1], [2], [0], [1], [2], [1], [1], [0], [2]]), 3, 0.05, "balanced"),
        case("top-2: both choices count", torch.zeros(3), torch.tensor([[0, 1], [0, 2], [0, 1], [2, 1]]), 3, 0.1, "all_slots"),
        case("the last expert gets no token", torch.zeros(4), torch.tensor([[0], [1], [2], [0]]), 4, 0.1, "minlength"),
        case("64 experts, top-8, 40 tokens (two-digit expert ids)", randn(g, 64, scale=0.01), _choices(g, 40, 64, 8), 64, 1e-3),
    ]
    for n in range(6):
        n_experts = rng.randint(2, 16)
        top_k = rng.randint(1, min(4, n_experts))
        n_tokens = rng.randint(1, 10)
        bias = randn(g, n_experts, scale=0.1)
        cases.append(case(f"random routing (case {n + 1})", bias, _choices(g, n_tokens, n_experts, top_k), n_experts,
                          rng.choice([1e-3, 0.01, 0.1])))
    return cases


def _bias_with(step=lambda error, gamma: gamma * torch.sign(error),
               load=lambda idx, E: torch.bincount(idx.reshape(-1), minlength=E),
               mean=lambda c, idx: c.mean()):
    def wrong(bias, indices, n_experts, gamma):
        c = load(indices, n_experts).float()
        return bias + step(mean(c, indices) - c, gamma).to(bias.dtype)
    return wrong


register(Checkpoint(
    id="04.bias_update",
    points=1,
    title="b_i += gamma * sign(mean load - load_i), all top-k choices counted",
    signature="update_bias(bias, indices, n_experts, gamma)",
    cases=bias_cases,
    reference=moe("update_bias"),
    tol=1e-6,
    fingerprints=[
        ("sign", _bias_with(step=lambda error, gamma: -gamma * torch.sign(error))),
        ("sign_only", _bias_with(step=lambda error, gamma: gamma * error)),
        ("balanced", _bias_with(step=lambda error, gamma: torch.where(error > 0, gamma, -gamma))),
        ("all_slots", _bias_with(load=lambda idx, E: torch.bincount(idx[:, 0], minlength=E))),
        ("minlength", _bias_with(load=lambda idx, E: torch.bincount(idx.reshape(-1)))),
        ("mean_load", _bias_with(mean=lambda c, idx: idx.shape[0] / c.numel())),
    ],
    raised_hints=[(r"size of tensor a \(\d+\) must match", "minlength")],
    hints={
        "default": "load = torch.bincount(indices.reshape(-1), minlength=n_experts).float(); return bias + "
        "gamma * torch.sign(load.mean() - load).",
        "sign": "Overloaded experts (load above the mean) must become *less* attractive: b_i += gamma * "
        "sign(mean - load_i), which is negative for them.",
        "sign_only": "Only the sign of the load error counts: every expert moves by exactly gamma "
        "(+gamma underloaded, -gamma overloaded), however large its error. It is not a gradient step.",
        "balanced": "An expert whose load equals the mean stays where it is: torch.sign(0) is 0, so use "
        "torch.sign rather than a two-way choice.",
        "all_slots": "The load counts every top_k choice: bincount all entries of indices, not only the first "
        "column.",
        "minlength": "An expert with no token has load 0 (and is the most underloaded): use "
        "torch.bincount(..., minlength=n_experts).",
        "mean_load": "The mean load is the mean of the counts, n_tokens * top_k / n_experts (every top_k choice "
        "is an assignment), not n_tokens / n_experts: use load.mean().",
    },
))
