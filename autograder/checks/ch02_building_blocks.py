"""Chapter 02 checkpoints: RMSNorm, the RoPE cache, applying RoPE, SwiGLU, the causal mask.

The inputs are small tensors built here (hand-made edge cases, then tensors drawn from a
``torch.Generator`` seeded by the case's ``random.Random``, through ``checks/inputs.py``);
the expected outputs come from ``solutions.layers``. Floats are compared within :data:`TOL`.

How the cases expose mistakes, and how a hint rests on evidence:

* each edge case is built around one mistake (an RMSNorm that subtracts the mean passes the
  zero-mean vector and fails on the vector with a nonzero mean; ReLU passes large positive
  gates and fails where W_gate x = 1; interleaved RoPE pairs pass ``head_dim`` 2 and fail on
  ``head_dim`` 8), then realistic sizes (a LLaMA-shaped head, an FFN with ``hidden_dim`` about
  8/3 of ``dim``, a long prompt after a long cache) and seeded random cases;
* low precision with non-unit gains: RMSNorm in bfloat16 and float16, with values chosen so
  that every rounding is at least 1e-5 (relative) away from a tie, so any CPU rounds alike;
  one bfloat16 case where casting back before or after the gain gives other bits;
* eps that matters or does not, never in between: the random RMSNorm cases either have
  activations far larger than eps (eps moves the output by less than 1e-6) or a mean square
  3 to 10 times eps (eps moves it by more than 1e-2), so an eps in the wrong place is either
  invisible or caught, never a matter of the CPU's rounding;
* a known mistake is named only on evidence: a variant with that one mistake in it
  (``fingerprints``) that the learner's output matches on every case where the variant is
  wrong, or the exception the learner raised (``raised_hints``). Variants ship with a
  release as their outputs, so a release names the same mistakes as the course repository;
* RMSNorm, RoPE and SwiGLU are trained through: after the values pass, a gradient probe
  checks that the gradients reaching every tensor argument are the reference's (for RoPE,
  the gradient reaching x: its cos and sin tables are constants).
"""

from __future__ import annotations

import functools
import random

import torch
import torch.nn.functional as F

from ..core import Case, Checkpoint, register
from ..reference import reference
from .inputs import case, rand, randn

layers = functools.partial(reference, "solutions.layers")

TOL = 1e-5  # float32 results; low-precision cases are built so that their roundings are stable


# ---------------------------------------------------------------------------- 02.rmsnorm

def rmsnorm_cases(rng: random.Random) -> list[Case]:
    t = torch.tensor
    ones = torch.ones(4)
    zero_mean = t([0.5, -1.5, 2.0, -1.0])
    gain = t([0.5, 2.0, -1.0, 3.0])
    # vectors of very different scales, none of them small enough for eps to matter
    rows = randn(rng, 2, 3, 5) * t([3.0, 30.0, 300.0])[None, :, None]
    bf16, fp16 = torch.bfloat16, torch.float16
    cases = [
        case("a vector with zero mean", (zero_mean, ones, 1e-6), "norm"),
        case("a vector with a nonzero mean", (t([1.0, 2.0, 3.0, 6.0]), ones, 1e-6), "mean_subtracted"),
        case("a learned gain (weight)", (zero_mean, gain, 1e-6), "weight", probe=True),
        case("tiny activations, where eps matters (eps=1e-5)", (t([0.003, -0.001, 0.002, -0.004]), ones, 1e-5), "eps"),
        case("activations of about 0.1 with eps=0.01: the eps you are given",
             (t([[0.1, -0.2, 0.05, 0.15], [0.3, 0.1, -0.1, 0.2]]), gain, 1e-2), "eps_arg"),
        case("a batch of sequences (2, 3, 5) whose vectors differ in scale: each vector is normalised on its own",
             (rows, randn(rng, 5), 1e-6), "wrong_dim", probe=True),
        # RMS 2.5, 5 and 6.53: the normalised values round to the same bfloat16 whether computed
        # in float32 or in bfloat16, so only the returned dtype's rounding is tested.
        case("bfloat16 in, bfloat16 out, with a gain",
             (t([[1.0, 2.0, 2.0, 4.0], [3.0, 4.0, 0.0, 0.0], [-4.0, 8.0, -8.0, 0.0]], dtype=bf16),
              t([0.5, 2.0, -1.0, 3.0], dtype=bf16), 1e-6), "cast_back"),
        # x / RMS is not a bfloat16 number: rounding it, then multiplying by the gain, differs
        # from rounding the product once (rows 2 and 3)
        case("bfloat16: cast back to bfloat16, then multiply by the gain",
             (t([[1.0, 2.0, 3.0, 4.0], [1.0, -3.0, 5.0, -7.0], [0.5, 1.5, -2.5, 3.5]], dtype=bf16),
              t([0.75, 1.25, -1.5, 3.0], dtype=bf16), 1e-6), "gain_order"),
        case("float16 activations in the hundreds, whose squares overflow float16 (max 65504)",
             (t([[300.0, -500.0, 700.0, -200.0], [260.0, 280.0, -900.0, 1000.0]], dtype=fp16),
              t([0.75, 1.25, -1.5, 3.0], dtype=fp16), 1e-6), "float32"),
    ]
    for n in range(16):
        dim = rng.randint(3, 12)
        shape = rng.choice([(dim,), (rng.randint(1, 4), dim), (rng.randint(1, 3), rng.randint(1, 4), dim)])
        if n % 2:  # every vector's RMS above 10: eps (<= 1e-5) moves the output by < 1e-6
            scale, eps = rng.choice([30.0, 300.0]), rng.choice([1e-6, 1e-5])
            x = _vectors(rng, shape, scale, lambda ms: ms >= (scale / 3) ** 2)
        else:  # every vector's mean square 3 to 30 times eps: eps moves the output by > 1e-2
            scale = rng.choice([0.03, 0.1])
            eps = round(rng.choice([0.1, 0.3]) * scale**2, 6)
            x = _vectors(rng, shape, scale, lambda ms: (ms >= 3 * eps) & (ms <= 30 * eps))
        cases.append(case(f"random x of shape {shape}, eps={eps:g} (case {n + 1})", (x, randn(rng, dim), eps)))
    return cases


def _vectors(rng: random.Random, shape: tuple, scale: float, fits) -> torch.Tensor:
    """Seeded vectors (a normal draw plus a common offset, times ``scale``) whose mean squares
    all satisfy ``fits``: drawn again until they do."""
    for _ in range(1000):
        x = (randn(rng, *shape) + rng.uniform(-1, 1)) * scale
        if bool(fits(x.pow(2).mean(-1)).all()):
            return x
    raise RuntimeError(f"no draw of shape {shape} fits")


def _inv_rms(x32, eps):
    return torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)


def _rms_layer_norm(x, weight, eps):
    centred = x.float() - x.float().mean(-1, keepdim=True)
    return weight * (centred * _inv_rms(centred, eps)).to(x.dtype)


def _rms_std(x, weight, eps):
    x32 = x.float()
    return weight * (x32 / torch.sqrt(x32.var(-1, keepdim=True) + eps)).to(x.dtype)


def _rms_norm_of_sum(x, weight, eps):
    x32 = x.float()
    return weight * (x32 / (x32.norm(dim=-1, keepdim=True) + eps)).to(x.dtype)


def _rms_eps_outside(x, weight, eps):
    x32 = x.float()
    return weight * (x32 / (x32.pow(2).mean(-1, keepdim=True).sqrt() + eps)).to(x.dtype)


def _rms_default_eps(x, weight, eps):
    x32 = x.float()
    return weight * (x32 * _inv_rms(x32, 1e-6)).to(x.dtype)


def _rms_over_everything(x, weight, eps):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean() + eps)).to(x.dtype)


def _rms_without_gain(x, weight, eps):
    x32 = x.float()
    return (x32 * _inv_rms(x32, eps)).to(x.dtype)


def _rms_float32_out(x, weight, eps):
    x32 = x.float()
    return weight * (x32 * _inv_rms(x32, eps))


def _rms_in_input_dtype(x, weight, eps):
    return weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rms_gain_then_cast(x, weight, eps):
    x32 = x.float()
    return (weight.float() * (x32 * _inv_rms(x32, eps))).to(x.dtype)


register(Checkpoint(
    id="02.rmsnorm",
    points=1,
    title="RMSNorm over the last dimension, in float32, cast back",
    signature="rms_norm(x, weight, eps)",
    cases=rmsnorm_cases,
    reference=layers("rms_norm"),
    tol=TOL,
    grad_probe=True,
    fingerprints=[
        ("mean_subtracted", _rms_layer_norm),
        ("std", _rms_std),
        ("norm", _rms_norm_of_sum),
        ("eps", _rms_eps_outside),
        ("eps_arg", _rms_default_eps),
        ("wrong_dim", _rms_over_everything),
        ("weight", _rms_without_gain),
        ("cast_back", _rms_float32_out),
        ("float32", _rms_in_input_dtype),
        ("gain_order", _rms_gain_then_cast),
    ],
    raised_hints=[
        (r"Dimension out of range", "wrong_dim"),
        (r"must match the size of tensor b", "keepdim"),
    ],
    hints={
        "default": "Divide x by sqrt(mean(x**2 over the last dimension) + eps), computed in float32; "
        "cast back to x.dtype; multiply by weight.",
        "norm": "Divide by the root of the MEAN of the squares, sqrt(x.pow(2).mean(-1, keepdim=True) + eps), "
        "not by the norm (the root of their sum, which is sqrt(dim) times larger).",
        "std": "x.var() and x.std() subtract the mean and divide by dim - 1: RMSNorm divides by the root "
        "of the plain mean of the squares, sqrt(x.pow(2).mean(-1, keepdim=True) + eps).",
        "mean_subtracted": "RMSNorm does not subtract the mean (LayerNorm does, and so do x.std() and "
        "F.layer_norm): a vector whose entries are all positive stays all positive.",
        "weight": "Multiply the normalised x by the learned gain, weight * x_normed (shape (dim,), "
        "broadcast over the last dimension).",
        "eps": "Add eps inside the square root, rsqrt(mean(x**2) + eps): sqrt(mean(x**2)) + eps is "
        "another function, and it matters for small activations.",
        "eps_arg": "Use the eps argument you are given: a fixed 1e-6 gives another output wherever the "
        "activations are as small as eps.",
        "wrong_dim": "Average the squares over the last dimension only (dim=-1): every vector x[..., :] "
        "is normalised by its own RMS, not by one statistic over the batch or the sequence.",
        "keepdim": "Keep the averaged dimension, x.pow(2).mean(-1, keepdim=True): a (..., 1) tensor "
        "broadcasts against x's (..., dim), a (...,) one does not.",
        "cast_back": "Compute in float32, then cast the normalised x back to x.dtype before the gain: "
        "(x32 * inv_rms).to(x.dtype). A bfloat16 model must get bfloat16 activations back.",
        "float32": "Compute the statistics in float32, x.float(), whatever x.dtype is: in float16, "
        "x**2 overflows to inf as soon as |x| > 256 and the output collapses to 0.",
        "gain_order": "Cast back to x.dtype first, then multiply by the gain: weight * (x32 * inv_rms)"
        ".to(x.dtype), as LLaMA does. Multiplying in float32 and casting after rounds differently.",
    },
))


# -------------------------------------------------------------------------- 02.rope_cache

THETAS = (10000.0, 500000.0, 100.0, 1000000.0, 25000.0, 5000.0)


def rope_cache_cases(rng: random.Random) -> list[Case]:
    cases = [
        Case("max_seq_len=0: two empty tables of shape (0, head_dim)", (8, 0, 10000.0), "shape"),
        Case("one position, 0: it is not rotated (cos = 1, sin = 0)", (4, 1, 10000.0), "position0"),
        Case("theta=1: every pair turns by the position itself", (4, 3, 1.0), "theta"),
        Case("theta=4, head_dim=4: pair 1 turns by 4^(-2/4) = 0.5 per position", (4, 4, 4.0), "reciprocal"),
        Case("head_dim=8: pair i turns at theta^(-2i/8)", (8, 4, 10000.0), "freq"),
        Case("LLaMA 3's theta=500000", (8, 3, 500000.0), "theta"),
        Case("a LLaMA-sized head: head_dim=64, 16 positions", (64, 16, 500000.0), "layout"),
    ]
    for n in range(12):
        head_dim = rng.choice([2, 4, 6, 8, 12, 16, 32])
        cases.append(Case(f"random sizes (case {n + 1})", (head_dim, rng.randint(1, 12), rng.choice(THETAS))))
    return cases


def _angles(head_dim, max_seq_len, inv_freq, duplicate=True):
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    return torch.cat([angles, angles], dim=-1) if duplicate else angles


def _inv_freq(head_dim, theta):
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


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


def _rope_exponent_i_over_d(head_dim, max_seq_len, theta=10000.0):
    angles = _angles(head_dim, max_seq_len, 1.0 / theta ** (torch.arange(head_dim // 2, dtype=torch.float32) / head_dim))
    return angles.cos(), angles.sin()


def _rope_positive_exponent(head_dim, max_seq_len, theta=10000.0):
    """theta^(+2i/d). Its angles grow as theta^(1 - 2/d): beyond about 20 radians float32
    cannot pin down their cosines (one ulp of a frequency moves them by more than the
    tolerance), so there the variant gives the reference's tables and is no evidence."""
    if max(max_seq_len - 1, 0) * theta ** (1 - 2 / head_dim) > 20:
        return layers("rope_cache")(head_dim, max_seq_len, theta)
    angles = _angles(head_dim, max_seq_len, 1.0 / _inv_freq(head_dim, theta))
    return angles.cos(), angles.sin()


def _rope_not_duplicated(head_dim, max_seq_len, theta=10000.0):
    angles = _angles(head_dim, max_seq_len, _inv_freq(head_dim, theta), duplicate=False)
    return angles.cos(), angles.sin()


def _rope_theta_10000(head_dim, max_seq_len, theta=10000.0):
    return layers("rope_cache")(head_dim, max_seq_len, 10000.0)


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
        ("freq", _rope_exponent_i_over_d),
        ("reciprocal", _rope_positive_exponent),
        ("shape", _rope_not_duplicated),
        ("theta", _rope_theta_10000),
    ],
    hints={
        "default": "inv_freq = 1 / theta ** (torch.arange(0, head_dim, 2) / head_dim); angles = "
        "positions 0..max_seq_len-1 (outer) inv_freq; duplicate as torch.cat([angles, angles], -1); "
        "return (cos, sin).",
        "shape": "Return two tables of shape (max_seq_len, head_dim): the head_dim/2 angles of each "
        "position appear twice, torch.cat([angles, angles], dim=-1), one copy per half.",
        "swapped": "cos and sin are swapped: return (cos, sin), in that order.",
        "from_one": "Positions start at 0, not 1: torch.arange(max_seq_len). The first token is "
        "not rotated.",
        "theta": "Use the theta argument (LLaMA 2: 10000, LLaMA 3: 500000) in the frequencies "
        "theta ** (-2i / head_dim): it is not always 10000.",
        "freq": "Pair i turns at theta ** (-2i / head_dim), i = 0 .. head_dim/2 - 1: the exponents "
        "step by 2 / head_dim, torch.arange(0, head_dim, 2) / head_dim, not by 1 / head_dim.",
        "reciprocal": "The frequencies are 1 / theta ** (2i / head_dim), at most 1 radian per position: "
        "theta ** (+2i / head_dim) makes the high pairs spin fastest instead of slowest.",
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
        case("positions 5..8, as when decoding after 5 cached tokens", _rope_args(randn(rng, 2, 4, 2, 8), start=5),
             probe=True),
        case("a LLaMA-sized head: 8 positions of 4 heads of 64, theta=500000",
             _rope_args(randn(rng, 1, 8, 4, 64), start=3, theta=500000.0), probe=True),
    ]
    for n in range(10):
        shape = (rng.randint(1, 2), rng.randint(1, 5), rng.randint(1, 3), rng.choice([2, 4, 6, 8, 16]))
        theta = rng.choice([10000.0, 500000.0])
        cases.append(case(f"random x of shape {shape} (case {n + 1})", _rope_args(randn(rng, *shape), rng.randint(0, 20), theta)))
    return cases


def _per_position(t):
    return t[None, :, None, :]


def _halves_rotated(x, how):
    x1, x2 = x.chunk(2, dim=-1)
    return {"forward": torch.cat([-x2, x1], -1), "backward": torch.cat([x2, -x1], -1), "no_minus": torch.cat([x2, x1], -1)}[how]


def _rope_rotate(how):
    def apply(x, cos, sin):
        return x * _per_position(cos) + _halves_rotated(x, how) * _per_position(sin)
    return apply


def _rope_cos_sin_swapped(x, cos, sin):
    return x * _per_position(sin) + _halves_rotated(x, "forward") * _per_position(cos)


def _rope_meta_pairs(x, cos, sin):
    half = x.shape[-1] // 2
    c, s = _per_position(cos[:, :half]), _per_position(sin[:, :half])
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2)


def _rope_rotate_every_two(x, cos, sin):
    rotated = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)
    return x * _per_position(cos) + rotated * _per_position(sin)


register(Checkpoint(
    id="02.apply_rope",
    points=2,
    title="rotate-half RoPE, positions along the sequence axis",
    signature="apply_rope(x, cos, sin)",
    cases=apply_rope_cases,
    reference=layers("apply_rope"),
    tol=TOL,
    # the gradient reaching x: cos and sin are constant tables, and an answer that reads
    # cos[..., :head_dim // 2] (both halves are equal) is right
    grad_probe=True,
    kind="tables",
    fingerprints=[
        ("cos_sin", _rope_cos_sin_swapped),
        ("sign", _rope_rotate("backward")),
        ("minus", _rope_rotate("no_minus")),
        ("halves", _rope_meta_pairs),
        ("neighbours", _rope_rotate_every_two),
    ],
    raised_hints=[(r"must match the size of tensor b", "axis")],
    hints={
        "default": "x * cos + rotate_half(x) * sin, with cos and sin broadcast as cos[None, :, None, :] "
        "and rotate_half(x) = torch.cat([-x2, x1], -1) for the halves x1, x2 of the last dimension.",
        "cos_sin": "x is multiplied by cos and rotate_half(x) by sin: x * cos + rotate_half(x) * sin. "
        "At position 0 (cos = 1, sin = 0) that leaves x unchanged.",
        "sign": "Rotate forwards: rotate_half([x1, x2]) = [-x2, x1] (minus on the SECOND half, moved "
        "to the front), so that (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).",
        "minus": "rotate_half needs a minus sign: [x1, x2] -> [-x2, x1]. Without it, (x1, x2) -> "
        "(x1 cos + x2 sin, x2 cos + x1 sin) is not a rotation and changes the vector's length.",
        "halves": "RoPE pairs look rotated as interleaved neighbours (x0, x1), (x2, x3), not halves: "
        "pair dimension i with i + head_dim/2, rotate_half(x) = torch.cat([-x[..., d//2:], x[..., :d//2]], -1).",
        "neighbours": "rotate_half pairs dimension i with i + head_dim/2, not with its neighbour: "
        "torch.cat([-x[..., d//2:], x[..., :d//2]], -1), not GPT-J's rotate_every_two (x[..., 1::2], x[..., 0::2]).",
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
    big = rand(rng, hidden, dim, low=5.0, high=8.0)
    cases = [
        case("an all-zero up projection: the output is zeros of shape (..., dim)",
             (randn(rng, 2, dim), randn(rng, hidden, dim), torch.zeros(hidden, dim), w_down), "down"),
        case("large positive gate pre-activations (>= 20), where SiLU(z) = z",
             (rand(rng, 2, dim, low=1.0, high=2.0), big, big.clone(), w_down), "sigmoid"),
        case("W_gate x = W_up x = 1 everywhere: each hidden unit is SiLU(1) * 1 = 0.7311",
             (torch.full((2, dim), 0.25), torch.ones(hidden, dim), torch.ones(hidden, dim), w_down), "silu"),
        case("equal gate and up weights", (randn(rng, 3, dim), same, same.clone(), w_down), "product"),
        case("different gate and up weights", (randn(rng, 3, dim), randn(rng, hidden, dim), randn(rng, hidden, dim), w_down),
             "swap", probe=True),
        # LLaMA's hidden_dim is about 8/3 of dim; 1/sqrt(dim) weights keep activations of order 1
        case("a LLaMA-shaped FFN: dim=24, hidden_dim=64, a batch of 2 sequences of 5",
             (randn(rng, 2, 5, 24), randn(rng, 64, 24, scale=24 ** -0.5), randn(rng, 64, 24, scale=24 ** -0.5),
              randn(rng, 24, 64, scale=64 ** -0.5)), probe=True),
    ]
    for n in range(10):
        dim, hidden = rng.randint(2, 8), rng.randint(2, 12)
        shape = rng.choice([(dim,), (rng.randint(1, 4), dim), (rng.randint(1, 2), rng.randint(1, 3), dim)])
        # pre-activations of order 1, where SiLU, ReLU, GELU and no activation differ most
        args = (randn(rng, *shape), randn(rng, hidden, dim, scale=dim ** -0.5), randn(rng, hidden, dim, scale=dim ** -0.5),
                randn(rng, dim, hidden, scale=hidden ** -0.5))
        cases.append(case(f"random x of shape {shape}, hidden_dim={hidden} (case {n + 1})", args))
    return cases


def _ffn(activation, gate="gate", product=False, down=True):
    """W_down(activation(W_gate x) * W_up x) with one choice bent."""

    def swiglu(x, w_gate, w_up, w_down):
        g, u = (F.linear(x, w_gate), F.linear(x, w_up)) if gate == "gate" else (F.linear(x, w_up), F.linear(x, w_gate))
        hidden = activation(g * u) if product else activation(g) * u
        return F.linear(hidden, w_down) if down else hidden

    return swiglu


register(Checkpoint(
    id="02.swiglu",
    points=1,
    title="SwiGLU: W_down(SiLU(W_gate x) * W_up x)",
    signature="swiglu(x, w_gate, w_up, w_down)",
    cases=swiglu_cases,
    reference=layers("swiglu"),
    tol=TOL,
    grad_probe=True,
    fingerprints=[
        ("down", _ffn(F.silu, down=False)),
        ("sigmoid", _ffn(torch.sigmoid)),
        ("silu", _ffn(F.relu)),
        ("gelu", _ffn(F.gelu)),
        ("no_activation", _ffn(lambda z: z)),
        ("product", _ffn(F.silu, product=True)),
        ("swap", _ffn(F.silu, gate="up")),
    ],
    raised_hints=[(r"shapes cannot be multiplied|size for first two dimensions of batch2", "layout")],
    hints={
        "default": "F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down).",
        "down": "Multiply the gate by the up projection element-wise, then finish with the down "
        "projection, F.linear(hidden, w_down), which takes (..., hidden_dim) back to (..., dim).",
        "layout": "The weights are stored like nn.Linear's, (out_features, in_features): W x is "
        "F.linear(x, w) = x @ w.T, not x @ w.",
        "sigmoid": "SiLU(z) = z * sigmoid(z) (F.silu), not sigmoid(z): for large z it is z itself.",
        "silu": "The gate goes through SiLU, z * sigmoid(z) (F.silu), not ReLU: with W_gate x = "
        "W_up x = 1 each hidden unit is SiLU(1) * 1 = 0.7311, and SiLU lets small negative values through.",
        "gelu": "The gate goes through SiLU, z * sigmoid(z) (F.silu), not GELU (GPT-2's activation): "
        "SiLU(1) = 0.7311, GELU(1) = 0.8413.",
        "no_activation": "The gate has no activation: apply SiLU to it, F.silu(F.linear(x, w_gate)), "
        "then multiply by the up projection.",
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
        Case("a prompt of 16 tokens after 32 cached ones", (16, 48), "offset"),
    ]
    for n in range(12):
        q_len = rng.randint(1, 8)
        kv_len = q_len if rng.random() < 0.3 else q_len + rng.randint(1, 6)
        cases.append(Case(f"q_len={q_len}, kv_len={kv_len} (case {n + 1})", (q_len, kv_len)))
    return cases


def _mask(q_len, kv_len):
    return layers("causal_mask")(q_len, kv_len)


def _mask_inverted(q_len, kv_len=None):
    return ~_mask(q_len, kv_len)


def _mask_transposed(q_len, kv_len=None):
    return _mask(q_len, kv_len).T


def _mask_floats(q_len, kv_len=None):
    return _mask(q_len, kv_len).float()


def _mask_ints(q_len, kv_len=None):
    return _mask(q_len, kv_len).long()


def _mask_additive(q_len, kv_len=None):
    return torch.zeros(_mask(q_len, kv_len).shape).masked_fill(~_mask(q_len, kv_len), float("-inf"))


def _mask_triangle(diagonal, lower=True):
    """``torch.tril`` (or ``triu``) of a (q_len, kv_len) block of True, ``diagonal(q_len, kv_len)``."""

    def mask(q_len, kv_len=None):
        kv_len = q_len if kv_len is None else kv_len
        block = torch.ones(q_len, kv_len, dtype=torch.bool)
        return block.tril(diagonal(q_len, kv_len)) if lower else block.triu(diagonal(q_len, kv_len))

    return mask


def _mask_of_numbers(case: Case, expected, got) -> str | None:
    """An integer tensor of 0s and 1s exactly where the mask is False and True: the right mask,
    not boolean (0/1 floats are a variant above)."""
    if (isinstance(got, torch.Tensor) and got.dtype != torch.bool and not got.is_floating_point()
            and not got.is_complex() and got.shape == expected.shape and bool(torch.equal(got.long(), expected.long()))):
        return "bool"
    return None


register(Checkpoint(
    id="02.causal_mask",
    points=1,
    title="boolean causal mask, True = may attend, offset for a KV cache",
    signature="causal_mask(q_len, kv_len)",
    cases=causal_mask_cases,
    reference=layers("causal_mask"),
    fingerprints=[
        ("inverted", _mask_inverted),
        ("transposed", _mask_transposed),
        ("bool", _mask_floats),
        ("bool", _mask_ints),  # a release has no diagnose: it names the int64 mask by this variant
        ("additive", _mask_additive),
        ("lower", _mask_triangle(lambda q, k: 0, lower=False)),
        ("diagonal", _mask_triangle(lambda q, k: k - q - 1)),
        ("offset", _mask_triangle(lambda q, k: 0)),
    ],
    diagnose=_mask_of_numbers,
    # kv_len=None used as a number: "NoneType" in the message (q_len is never None)
    raised_hints=[(r"^TypeError: .*NoneType", "default_kv")],
    hints={
        "default": "Query i sits at position kv_len - q_len + i and may attend to every key at or "
        "before it: k_pos[None, :] <= q_pos[:, None], a (q_len, kv_len) bool tensor.",
        "bool": "Return a boolean mask, True = may attend (what F.scaled_dot_product_attention "
        "expects as attn_mask): not 0/1 numbers (floats, ints or uint8). Build it from a comparison "
        "(k_pos <= q_pos) or with dtype=torch.bool.",
        "additive": "This is an additive mask (0 where a query may attend, -inf where not), the form "
        "that is added to the scores: return the boolean mask itself, True = may attend.",
        "inverted": "True and False are swapped: True means the query MAY attend to the key (the "
        "convention of F.scaled_dot_product_attention), so the diagonal and below are True.",
        "diagonal": "A token may attend to itself: keep the diagonal (k_pos <= q_pos, torch.tril with "
        "diagonal=kv_len - q_len), not only the strictly earlier keys.",
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
