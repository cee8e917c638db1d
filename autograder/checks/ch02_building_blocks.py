"""Chapter 02 checkpoints: RMSNorm, the RoPE cache, applying RoPE, SwiGLU, the causal mask.

The inputs are small tensors built here (hand-made edge cases, then tensors drawn from a
``torch.Generator`` seeded by the case's ``random.Random``); the expected outputs come from
``solutions.layers``. Floats are compared with the tolerance :data:`TOL`.

Each edge case is placed so that a known mistake fails on it *first*, and its hint names
that mistake: an RMSNorm that subtracts the mean passes the zero-mean vector and fails on
the vector with a nonzero mean; a sigmoid gate passes nothing but is caught where SiLU
equals ReLU (large positive pre-activations); interleaved RoPE pairs pass ``head_dim`` 2
(one pair is both "halves" and "neighbours") and fail on ``head_dim`` 8. These hints are
data, so a release without ``solutions/`` gives the same ones. Fingerprints (known-wrong
variants, compared exactly) name a few mistakes no case isolates, such as a mask with
True and False swapped.
"""

from __future__ import annotations

import functools
import random

import torch

from ..core import Case, Checkpoint, Label, register
from ..reference import reference

layers = functools.partial(reference, "solutions.layers")

TOL = 1e-5  # float32 results; low-precision cases are built to be exact in any order of operations


def randn(rng: random.Random, *shape: int, scale: float = 1.0) -> torch.Tensor:
    """A float32 normal tensor drawn from a generator seeded by ``rng``: same seed, same tensor."""
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    return torch.randn(*shape, generator=generator) * scale


def shown(value):
    """How an argument is printed in a report: small tensors by value, others by shape."""
    if not isinstance(value, torch.Tensor):
        return value
    dtype = "" if value.dtype == torch.float32 else f", dtype={str(value.dtype).replace('torch.', '')}"
    if value.numel() <= 8:
        return Label(f"tensor({_rounded(value.tolist())}{dtype})")
    return Label(f"<tensor of shape {tuple(value.shape)}{dtype}>")


def _rounded(values) -> str:
    if isinstance(values, list):
        return "[" + ", ".join(_rounded(v) for v in values) + "]"
    if not isinstance(values, float):
        return repr(values)
    text = f"{values:.4g}"
    return text + ".0" if text.lstrip("-").isdigit() else text


def case(label: str, args: tuple, hint: str = "default") -> Case:
    return Case(label, args, hint, show=tuple(shown(a) for a in args))


# ---------------------------------------------------------------------------- 02.rmsnorm

def rmsnorm_cases(rng: random.Random) -> list[Case]:
    t = torch.tensor
    ones = torch.ones(4)
    zero_mean = t([0.5, -1.5, 2.0, -1.0])
    # rows with a different scale each, and no dimension of the same size as another
    rows = randn(rng, 2, 3, 5) * t([0.1, 1.0, 10.0])[None, :, None]
    cases = [
        case("a vector with zero mean", (zero_mean, ones, 1e-6), "mean_square"),
        case("a vector with a nonzero mean", (t([1.0, 2.0, 3.0, 6.0]), ones, 1e-6), "mean_subtracted"),
        case("a learned gain (weight)", (zero_mean, t([0.5, 2.0, -1.0, 3.0]), 1e-6), "weight"),
        case("tiny activations, where eps matters (eps=1e-5)", (t([0.003, -0.001, 0.002, -0.004]), ones, 1e-5), "eps"),
        case("a batch of sequences (2, 3, 5) whose vectors differ in scale: each vector is normalised on its own",
             (rows, randn(rng, 5), 1e-6), "wrong_dim"),
        # RMS 2.5 and 5: float32-then-cast and bfloat16 arithmetic give the same bfloat16
        # values here, so only the returned dtype's rounding is tested.
        case("bfloat16 in, bfloat16 out",
             (t([[1.0, 2.0, 2.0, 4.0], [3.0, 4.0, 0.0, 0.0], [-4.0, 8.0, -8.0, 0.0]], dtype=torch.bfloat16),
              torch.ones(4, dtype=torch.bfloat16), 1e-6), "cast_back"),
        case("float16 activations in the hundreds, whose squares overflow float16 (max 65504)",
             (t([[300.0, -500.0, 700.0, -200.0], [260.0, 280.0, -900.0, 1000.0]], dtype=torch.float16),
              torch.ones(4, dtype=torch.float16), 1e-6), "float32"),
    ]
    for n in range(16):
        dim = rng.randint(2, 12)
        shape = rng.choice([(dim,), (rng.randint(1, 4), dim), (rng.randint(1, 3), rng.randint(1, 4), dim)])
        x = randn(rng, *shape, scale=rng.choice([0.01, 1.0, 30.0])) + rng.uniform(-1, 1)
        eps = rng.choice([1e-6, 1e-5, 1e-2])
        cases.append(case(f"random x of shape {shape}, eps={eps:g} (case {n + 1})", (x, randn(rng, dim), eps)))
    return cases


register(Checkpoint(
    id="02.rmsnorm",
    points=1,
    title="RMSNorm over the last dimension, in float32, cast back",
    signature="rms_norm(x, weight, eps)",
    cases=rmsnorm_cases,
    reference=layers("rms_norm"),
    tol=TOL,
    raised_hints=[
        (r"Dimension out of range", "wrong_dim"),
        (r"must match the size of tensor b", "keepdim"),
    ],
    hints={
        "default": "Divide x by sqrt(mean(x**2 over the last dimension) + eps), computed in float32; "
        "cast back to x.dtype; multiply by weight.",
        "mean_square": "Divide by the root of the MEAN of the squares, sqrt(x.pow(2).mean(-1, keepdim=True) + eps): "
        "not by the norm (the root of the sum), and not by x.std() or x.var(), which divide by d - 1.",
        "mean_subtracted": "RMSNorm does not subtract the mean (LayerNorm does, and so do x.std() and "
        "F.layer_norm): a vector whose entries are all positive stays all positive.",
        "weight": "Multiply the normalised x by the learned gain, weight * x_normed (shape (dim,), "
        "broadcast over the last dimension).",
        "eps": "Add eps inside the square root, rsqrt(mean(x**2) + eps), and use the eps argument: "
        "sqrt(mean(x**2)) + eps is another function, and it matters for small activations.",
        "wrong_dim": "Average the squares over the last dimension only (dim=-1): every vector x[..., :] "
        "is normalised by its own RMS, not by one statistic over the batch or the sequence.",
        "keepdim": "Keep the averaged dimension, x.pow(2).mean(-1, keepdim=True): a (..., 1) tensor "
        "broadcasts against x's (..., dim), a (...,) one does not.",
        "cast_back": "Compute in float32, then cast the normalised x back to x.dtype before the gain: "
        "(x32 * inv_rms).to(x.dtype). A bfloat16 model must get bfloat16 activations back.",
        "float32": "Compute the statistics in float32, x.float(), whatever x.dtype is: in float16, "
        "x**2 overflows to inf as soon as |x| > 256 and the output collapses to 0.",
    },
))


# -------------------------------------------------------------------------- 02.rope_cache

def rope_cache_cases(rng: random.Random) -> list[Case]:
    cases = [
        Case("max_seq_len=0: two empty tables of shape (0, head_dim)", (8, 0, 10000.0), "shape"),
        Case("one position, 0: it is not rotated (cos = 1, sin = 0)", (4, 1, 10000.0), "position0"),
        Case("theta=1: every pair turns by the position itself", (4, 3, 1.0), "theta"),
        Case("head_dim=8: pair i turns at theta^(-2i/8)", (8, 4, 10000.0), "freq"),
        Case("LLaMA 3's theta=500000", (8, 3, 500000.0), "theta"),
    ]
    for n in range(12):
        head_dim = rng.choice([2, 4, 6, 8, 12, 16])
        theta = rng.choice([10000.0, 500000.0, 100.0, round(rng.uniform(2.0, 1e6), 1)])
        cases.append(Case(f"random sizes (case {n + 1})", (head_dim, rng.randint(1, 10), theta)))
    return cases


def _rope_swapped(head_dim, max_seq_len, theta=10000.0):
    cos, sin = layers("rope_cache")(head_dim, max_seq_len, theta)
    return sin, cos


def _rope_from_one(head_dim, max_seq_len, theta=10000.0):
    cos, sin = layers("rope_cache")(head_dim, max_seq_len + 1, theta)
    return cos[1:], sin[1:]


def _rope_interleaved_layout(head_dim, max_seq_len, theta=10000.0):
    cos, sin = layers("rope_cache")(head_dim, max_seq_len, theta)
    half = head_dim // 2
    return cos[:, :half].repeat_interleave(2, dim=-1), sin[:, :half].repeat_interleave(2, dim=-1)


register(Checkpoint(
    id="02.rope_cache",
    points=1,
    title="RoPE's cos and sin tables: positions from 0, theta^(-2i/d), rotate-half layout",
    signature="rope_cache(head_dim, max_seq_len, theta)",
    cases=rope_cache_cases,
    reference=layers("rope_cache"),
    tol=TOL,
    fingerprints=[
        ("swapped", _rope_swapped),
        ("from_one", _rope_from_one),
        ("layout", _rope_interleaved_layout),
    ],
    hints={
        "default": "inv_freq = 1 / theta ** (torch.arange(0, head_dim, 2) / head_dim); angles = "
        "positions 0..max_seq_len-1 (outer) inv_freq; duplicate as torch.cat([angles, angles], -1); "
        "return (cos, sin).",
        "shape": "Return two tables of shape (max_seq_len, head_dim): the head_dim/2 angles of each "
        "position appear twice, torch.cat([angles, angles], dim=-1), one copy per half.",
        "position0": "Row m holds position m's angles and positions start at 0, so row 0 is cos = 1, "
        "sin = 0: use torch.arange(max_seq_len), and return (cos, sin) in that order.",
        "swapped": "cos and sin are swapped: return (cos, sin), in that order.",
        "from_one": "Positions start at 0, not 1: torch.arange(max_seq_len). The first token is "
        "not rotated.",
        "theta": "Use the theta argument (LLaMA 2: 10000, LLaMA 3: 500000) in the frequencies "
        "theta ** (-2i / head_dim): it is not always 10000.",
        "freq": "Pair i turns at theta ** (-2i / head_dim), i = 0 .. head_dim/2 - 1: "
        "1 / theta ** (torch.arange(0, head_dim, 2) / head_dim). Check the exponent's sign, the step 2 "
        "and that pair i's angle sits in columns i and i + head_dim/2.",
        "layout": "RoPE pairs look laid out as interleaved neighbours, not halves: this course (and "
        "Hugging Face) pairs column i with i + head_dim/2, so duplicate the angles with "
        "torch.cat([angles, angles], -1), not repeat_interleave(2).",
    },
))


# -------------------------------------------------------------------------- 02.apply_rope

def _rope_args(x: torch.Tensor, start: int = 0, theta: float = 10000.0) -> tuple:
    seq, head_dim = x.shape[1], x.shape[3]
    cos, sin = layers("rope_cache")(head_dim, start + seq, theta)
    return x, cos[start:], sin[start:]


def apply_rope_cases(rng: random.Random) -> list[Case]:
    cases = [
        case("position 0 alone (cos = 1, sin = 0): x comes back unchanged", _rope_args(randn(rng, 1, 1, 2, 4)), "cos_sin"),
        case("head_dim=2: each head is one pair, turned by its position", _rope_args(randn(rng, 1, 3, 2, 2)), "sign"),
        case("head_dim=8: pairs are (i, i + 4), not neighbours", _rope_args(randn(rng, 1, 3, 2, 8)), "halves"),
        case("as many heads as positions: the angle follows the position (axis 1), not the head",
             _rope_args(randn(rng, 1, 3, 3, 4)), "axis"),
        case("positions 5..8, as when decoding after 5 cached tokens", _rope_args(randn(rng, 2, 4, 2, 8), start=5)),
    ]
    for n in range(10):
        shape = (rng.randint(1, 2), rng.randint(1, 5), rng.randint(1, 3), rng.choice([2, 4, 6, 8, 16]))
        theta = rng.choice([10000.0, 500000.0])
        cases.append(case(f"random x of shape {shape} (case {n + 1})", _rope_args(randn(rng, *shape), rng.randint(0, 20), theta)))
    return cases


register(Checkpoint(
    id="02.apply_rope",
    points=2,
    title="rotate-half RoPE, positions along the sequence axis",
    signature="apply_rope(x, cos, sin)",
    cases=apply_rope_cases,
    reference=layers("apply_rope"),
    tol=TOL,
    raised_hints=[(r"must match the size of tensor b", "axis")],
    hints={
        "default": "x * cos + rotate_half(x) * sin, with cos and sin broadcast as cos[None, :, None, :] "
        "and rotate_half(x) = torch.cat([-x2, x1], -1) for the halves x1, x2 of the last dimension.",
        "cos_sin": "x is multiplied by cos and rotate_half(x) by sin: x * cos + rotate_half(x) * sin. "
        "At position 0 (cos = 1, sin = 0) that leaves x unchanged.",
        "sign": "Rotate forwards: rotate_half([x1, x2]) = [-x2, x1] (minus on the SECOND half, moved "
        "to the front), so that (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).",
        "halves": "RoPE pairs look rotated as interleaved neighbours (x0, x1), (x2, x3), not halves: "
        "pair dimension i with i + head_dim/2, rotate_half(x) = torch.cat([-x[..., d//2:], x[..., :d//2]], -1).",
        "axis": "cos and sin are (seq, head_dim) and x is (batch, seq, n_heads, head_dim): the angle "
        "follows the position, axis 1. Broadcast with cos[None, :, None, :] (not cos[None, None], "
        "which is Hugging Face's (batch, n_heads, seq, head_dim) layout).",
    },
))


# ----------------------------------------------------------------------------- 02.swiglu

def swiglu_cases(rng: random.Random) -> list[Case]:
    dim, hidden = 4, 6
    w_down = randn(rng, dim, hidden)
    same = randn(rng, hidden, dim)
    big = 5.0 + 3.0 * torch.rand(hidden, dim, generator=torch.Generator().manual_seed(rng.randrange(2**31)))
    cases = [
        case("an all-zero up projection: the output is zeros of shape (..., dim)",
             (randn(rng, 2, dim), randn(rng, hidden, dim), torch.zeros(hidden, dim), w_down), "down"),
        case("large positive gate pre-activations (>= 20), where SiLU(z) = z",
             (1.0 + torch.rand(2, dim, generator=torch.Generator().manual_seed(rng.randrange(2**31))), big, big.clone(), w_down),
             "sigmoid"),
        case("W_gate x = W_up x = 1 everywhere: each hidden unit is SiLU(1) * 1 = 0.7311",
             (torch.full((2, dim), 0.25), torch.ones(hidden, dim), torch.ones(hidden, dim), w_down), "silu"),
        case("equal gate and up weights", (randn(rng, 3, dim), same, same.clone(), w_down), "product"),
        case("different gate and up weights", (randn(rng, 3, dim), randn(rng, hidden, dim), randn(rng, hidden, dim), w_down), "swap"),
    ]
    for n in range(10):
        dim, hidden = rng.randint(2, 8), rng.randint(2, 12)
        shape = rng.choice([(dim,), (rng.randint(1, 4), dim), (rng.randint(1, 2), rng.randint(1, 3), dim)])
        args = (randn(rng, *shape, scale=2.0), randn(rng, hidden, dim), randn(rng, hidden, dim), randn(rng, dim, hidden))
        cases.append(case(f"random x of shape {shape}, hidden_dim={hidden} (case {n + 1})", args))
    return cases


register(Checkpoint(
    id="02.swiglu",
    points=1,
    title="SwiGLU: W_down(SiLU(W_gate x) * W_up x)",
    signature="swiglu(x, w_gate, w_up, w_down)",
    cases=swiglu_cases,
    reference=layers("swiglu"),
    tol=TOL,
    raised_hints=[(r"shapes cannot be multiplied|size for first two dimensions of batch2", "layout")],
    hints={
        "default": "F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down).",
        "down": "Multiply the gate by the up projection element-wise, then finish with the down "
        "projection, F.linear(hidden, w_down), which takes (..., hidden_dim) back to (..., dim).",
        "layout": "The weights are stored like nn.Linear's, (out_features, in_features): W x is "
        "F.linear(x, w) = x @ w.T, not x @ w.",
        "sigmoid": "SiLU(z) = z * sigmoid(z) (F.silu), not sigmoid(z): for large z it is z itself.",
        "silu": "The gate goes through SiLU, z * sigmoid(z) (F.silu): not ReLU, not GELU, and not "
        "nothing. With W_gate x = W_up x = 1, each hidden unit is SiLU(1) * 1 = 0.7311.",
        "product": "Apply SiLU to the gate alone, then multiply: F.silu(gate) * up, not F.silu(gate * up).",
        "swap": "SiLU goes on the gate projection (w_gate), and the up projection (w_up) is the "
        "linear branch: F.silu(F.linear(x, w_gate)) * F.linear(x, w_up).",
    },
))


# ------------------------------------------------------------------------ 02.causal_mask

def causal_mask_cases(rng: random.Random) -> list[Case]:
    cases = [
        Case("an empty sequence: a (0, 0) mask of dtype torch.bool", (0, 0), "bool"),
        Case("one token: it may attend to itself", (1, 1), "diagonal"),
        Case("four tokens: query i sees keys 0..i", (4, 4), "lower"),
        Case("kv_len=None: as many keys as queries", (4, None), "default_kv"),
        Case("two new queries after three cached tokens: query i sits at position 3 + i", (2, 5), "offset"),
        Case("decoding one token after five cached ones: it sees all six keys", (1, 6), "offset"),
    ]
    for n in range(12):
        q_len = rng.randint(1, 8)
        kv_len = q_len if rng.random() < 0.3 else q_len + rng.randint(1, 6)
        cases.append(Case(f"q_len={q_len}, kv_len={kv_len} (case {n + 1})", (q_len, kv_len)))
    return cases


def _mask_inverted(q_len, kv_len=None):
    return ~layers("causal_mask")(q_len, kv_len)


def _mask_transposed(q_len, kv_len=None):
    return layers("causal_mask")(q_len, kv_len).T


register(Checkpoint(
    id="02.causal_mask",
    points=1,
    title="boolean causal mask, True = may attend, offset for a KV cache",
    signature="causal_mask(q_len, kv_len)",
    cases=causal_mask_cases,
    reference=layers("causal_mask"),
    fingerprints=[("inverted", _mask_inverted), ("transposed", _mask_transposed)],
    hints={
        "default": "Query i sits at position kv_len - q_len + i and may attend to every key at or "
        "before it: k_pos[None, :] <= q_pos[:, None], a (q_len, kv_len) bool tensor.",
        "bool": "Return a boolean mask, True = may attend (what F.scaled_dot_product_attention "
        "expects as attn_mask): not 0/1 floats and not an additive 0/-inf mask.",
        "inverted": "True and False are swapped: True means the query MAY attend to the key (the "
        "convention of F.scaled_dot_product_attention), so the diagonal and below are True.",
        "diagonal": "A token may attend to itself: keep the diagonal (k_pos <= q_pos, torch.tril with "
        "diagonal=0 or more), not only the strictly earlier keys.",
        "lower": "Queries are rows, keys are columns, and a query sees the keys at or BEFORE it: "
        "the lower triangle (torch.tril), not the upper one.",
        "default_kv": "kv_len=None means kv_len = q_len (no cache): start with "
        "`if kv_len is None: kv_len = q_len`.",
        "offset": "With a KV cache the q_len queries are the LAST q_len of kv_len positions: query i "
        "is at kv_len - q_len + i, so shift the diagonal, torch.tril(..., diagonal=kv_len - q_len).",
        "transposed": "The mask is transposed: it is (q_len, kv_len), one row per query and one "
        "column per key.",
    },
))
