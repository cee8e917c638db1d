"""Chapter 03 checkpoints: attention, grouped-query attention, the KV cache, latent attention.

Inputs are float32 tensors drawn from a ``torch.Generator`` seeded by the case RNG;
expected outputs come from ``solutions.attention``, compared within ``tol``.

How the cases expose mistakes:

* edge cases first, each built around one mistake: a single key, no mask, a causal mask,
  the last queries of a longer sequence, a padding mask; empty and non-empty caches; MHA,
  GQA and MQA;
* realistic cases: a batch of 2 with 8 query heads, several KV groups (8 query heads on 2
  KV heads, 32 on 8), odd and non-square lengths (5 queries on 7 keys), head_dim up to 16,
  caches of 9 positions, MLA with head_dim != rope_dim; then seeded random shapes;
* a known mistake is named only on evidence: a variant of the reference with that one
  mistake in it (``fingerprints``, stored in the fixtures, so a release names it too) that
  the learner's output matches within the fingerprint tolerance on every case where the
  variant is wrong, or the exception the learner raised;
* attention, repeat_kv, the GQA forward and MLA are trained through: once the values pass, a
  gradient probe checks that the gradients reaching q, k, v, x and the caches are the
  reference's (a computation under no_grad, through .detach(), .item() or numpy is
  rejected). Decoding with a KV cache is inference only: no probe.
"""

from __future__ import annotations

import functools
import math
import random

import torch
import torch.nn.functional as F

from ..core import Case, Checkpoint, Label, register
from ..reference import reference
from .inputs import generator, randn, tensor_label

att = functools.partial(reference, "solutions.attention")
layers = functools.partial(reference, "solutions.layers")

TOL = 1e-5  # float32, a few operations deep


def shown(name: str, t: torch.Tensor | None) -> Label:
    """A tensor argument in a report: by value when tiny, else by name, shape and dtype."""
    return Label("None") if t is None else tensor_label(t, name, small=0)


def causal(q_len: int, kv_len: int | None = None) -> torch.Tensor:
    return layers("causal_mask")(q_len, kv_len)


def random_mask(g: torch.Generator, q_len: int, kv_len: int) -> torch.Tensor:
    """A boolean mask in which every query sees at least one key."""
    mask = torch.rand(q_len, kv_len, generator=g) < 0.6
    mask[torch.arange(q_len), torch.randint(kv_len, (q_len,), generator=g)] = True
    return mask


def rope_table(head_dim: int, max_len: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return layers("rope_cache")(head_dim, max_len)


def mask_label(mask: torch.Tensor | None, how: str) -> Label:
    return Label("None") if mask is None else Label(how)


def checkpoint(**fields) -> Checkpoint:
    return register(Checkpoint(**fields))


# ------------------------------------------------------------------------ 03.attention

def attention_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, shape, mask, how="", hint="default", **fields):
        b, h, q_len, kv_len, d = shape
        q, k, v = randn(g, b, h, q_len, d), randn(g, b, h, kv_len, d), randn(g, b, h, kv_len, d)
        return Case(label, (q, k, v, mask), hint,
                    show=(shown("q", q), shown("k", k), shown("v", v), mask_label(mask, how)), **fields)

    padding = torch.tensor([[True, False, True, True]] * 3)
    cases = [
        case("a single key: the output is its value", (1, 2, 1, 1, 4), None, hint="no_mask"),
        case("no mask: every query sees every key", (1, 2, 3, 3, 4), None, hint="no_mask"),
        case("a causal mask", (1, 2, 4, 4, 4), causal(4), "causal_mask(4)", "mask"),
        case("the last 2 of 5 positions attend (as with a KV cache)", (1, 2, 2, 5, 4), causal(2, 5),
             "causal_mask(2, 5)", "given_mask"),
        case("a padding mask: key 1 is hidden from every query", (1, 1, 3, 4, 6), padding,
             "mask(3, 4) hiding key 1", "given_mask", probe=True),
        case("batch 2, 8 heads of 16: the last 5 of 7 positions attend", (2, 8, 5, 7, 16), causal(5, 7),
             "causal_mask(5, 7)", "given_mask", probe=True),
    ]
    for n in range(4):
        b, h, q_len, d = rng.randint(1, 3), rng.randint(1, 4), rng.randint(1, 5), rng.choice([2, 4, 8])
        kv_len = rng.randint(q_len, 6)
        kind = rng.choice(["none", "causal", "random"])
        mask = {"none": None, "causal": causal(q_len, kv_len), "random": random_mask(g, q_len, kv_len)}[kind]
        cases.append(case(f"random shapes and mask (case {n + 1})", (b, h, q_len, kv_len, d), mask,
                          f"{kind} mask({q_len}, {kv_len})"))
    # "broadcastable to (q_len, kv_len)": one row for every query (appended: the draws above stay)
    cases.append(case("a padding mask of shape (1, 5), one row broadcast over the 3 queries", (2, 2, 3, 5, 4),
                      torch.tensor([[True, True, False, True, False]]), "mask(1, 5) hiding keys 2 and 4", "given_mask"))
    cases.append(case("a padding mask of shape (4,), one per key", (1, 2, 2, 4, 4),
                      torch.tensor([False, True, True, True]), "mask(4,) hiding key 0", "given_mask"))
    return cases


def attention_variant(scale="sqrt", softmax_dim=-1, mask_mode="before", fill=float("-inf")):
    """A wrong ``attention``: one of its choices bent."""

    def wrong(q, k, v, mask):
        d = q.shape[-1]
        scores = q @ k.transpose(-2, -1)
        scores = {"sqrt": scores / math.sqrt(d), "d": scores / d, "none": scores}[scale]
        if mask_mode == "own":
            mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        if mask is not None and mask_mode in ("before", "own"):
            scores = scores.masked_fill(~mask, fill)
        if mask is not None and mask_mode == "inverted":
            scores = scores.masked_fill(mask, fill)
        weights = torch.softmax(scores, dim=softmax_dim)
        if mask is not None and mask_mode == "after":
            weights = weights.masked_fill(~mask, 0.0)
        return weights @ v

    return wrong


checkpoint(
    id="03.attention",
    points=2,
    title="softmax(QK^T / sqrt(d)) V with a boolean mask, as F.scaled_dot_product_attention",
    signature="attention(q, k, v, mask)",
    cases=attention_cases,
    reference=att("attention"),
    tol=TOL,
    fingerprints=[
        ("scale_d", attention_variant(scale="d")),
        ("no_scale", attention_variant(scale="none")),
        ("softmax_axis", attention_variant(softmax_dim=-2)),
        ("mask_after_softmax", attention_variant(mask_mode="after")),
        ("mask_zero", attention_variant(fill=0.0)),
        ("mask_inverted", attention_variant(mask_mode="inverted")),
        ("own_mask", attention_variant(mask_mode="own")),
    ],
    raised_hints=[
        (r"unary ~: 'NoneType'|NoneType", "no_mask"),
        # `if mask:` to test for None: a tensor of several values has no truth value (the learner's
        # line, quoted after the message, must test the mask: Python's max() of a tensor says the same)
        (r"Boolean value of Tensor with more than one (value|element) is ambiguous.*\bif\b[^:]*mask", "mask_truthy"),
        # a (q_len, kv_len) mask assumed: .view(1, 1, q_len, kv_len) of a mask of another shape
        (r"shape '\[1, 1, \d+, \d+\]' is invalid for input of size", "given_mask"),
        # mask[None, None, :, :] (or mask[:, :]) of a one-dimensional mask
        (r"too many indices for tensor of dimension 1", "given_mask"),
    ],
    grad_probe=True,
    hints={
        "mask_truthy": "Test `if mask is not None:`, not `if mask:`: a mask of several values has no "
        "truth value (RuntimeError), and None is what means 'no mask'.",
        "default": "scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim); set masked scores to "
        "-inf with scores.masked_fill(~mask, float('-inf')); softmax over the last axis (the keys); "
        "multiply by v.",
        "no_mask": "mask=None means every query may attend to every key: only mask when a mask is given.",
        "mask": "Where mask is False the score must become -inf before the softmax, so that the weight is 0.",
        "given_mask": "Apply the mask you are given, whatever its shape: it is not always a square causal mask.",
        "scale_d": "Divide the scores by sqrt(head_dim), not head_dim: with unit-variance q and k, "
        "q·k has variance head_dim, so its standard deviation is sqrt(head_dim).",
        "no_scale": "Scale the scores by 1 / sqrt(head_dim) (head_dim = q.shape[-1]) before the "
        "softmax: unscaled scores grow with head_dim and saturate the softmax.",
        "softmax_axis": "Take the softmax over the last axis, the keys (dim=-1): each query's "
        "weights over the keys must sum to 1, not each key's weights over the queries.",
        "mask_after_softmax": "Mask before the softmax: zeroing weights after it leaves rows that "
        "no longer sum to 1. Fill the masked scores with -inf, then softmax.",
        "mask_zero": "Fill masked scores with float('-inf'), not 0: a score of 0 still gets weight "
        "exp(0) = 1 in the softmax.",
        "mask_inverted": "True in the mask means 'may attend' (as in F.scaled_dot_product_attention): "
        "fill the scores where the mask is False, i.e. masked_fill(~mask, float('-inf')).",
        "own_mask": "Use the mask argument instead of building a causal mask yourself: a padding mask, "
        "None, or the last queries of a longer sequence (KV cache) are not torch.tril(ones(q_len, kv_len)).",
    },
)


# ------------------------------------------------------------------------ 03.repeat_kv

def repeat_kv_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, shape, n_rep, hint="default", **fields):
        x = randn(g, *shape)
        return Case(label, (x, n_rep), hint, show=(shown("x", x), n_rep), **fields)

    cases = [
        case("n_rep = 1 (MHA): nothing to repeat", (1, 2, 3, 2), 1),
        case("one KV head for four query heads (MQA)", (1, 1, 3, 2), 4),
        case("two KV heads, three query heads each (GQA)", (1, 2, 3, 2), 3, "grouping", probe=True),
        case("a batch of two, four KV heads shared by pairs", (2, 4, 2, 2), 2, "grouping"),
        case("a batch of two, 8 KV heads for 32 query heads, 5 positions", (2, 8, 5, 4), 4, probe=True),
    ]
    for n in range(3):
        shape = (rng.randint(1, 2), rng.randint(1, 4), rng.randint(1, 4), 2)
        cases.append(case(f"random shapes (case {n + 1})", shape, rng.randint(1, 4)))
    return cases


def _repeat_cycled(x, n_rep):
    return x.repeat(1, n_rep, 1, 1)


def _repeat_on_seq(x, n_rep):
    return x.repeat_interleave(n_rep, dim=2)


def _repeat_to_n_rep_heads(x, n_rep):
    return x.repeat_interleave(n_rep // x.shape[1], dim=1)


def _expand_without_reshape(x, n_rep):
    batch, n_kv_heads, seq, head_dim = x.shape
    return x[:, :, None].expand(batch, n_kv_heads, n_rep, seq, head_dim)


checkpoint(
    id="03.repeat_kv",
    points=1,
    title="each KV head repeated for its group of consecutive query heads",
    signature="repeat_kv(x, n_rep)",
    cases=repeat_kv_cases,
    reference=att("repeat_kv"),
    fingerprints=[
        ("grouping", _repeat_cycled),
        ("axis", _repeat_on_seq),
        ("n_rep", _repeat_to_n_rep_heads),
        ("reshape", _expand_without_reshape),
    ],
    grad_probe=True,
    hints={
        "default": "(batch, n_kv_heads, seq, head_dim) -> (batch, n_kv_heads * n_rep, seq, head_dim), "
        "query head h using KV head h // n_rep: x.repeat_interleave(n_rep, dim=1), or x[:, :, None] "
        "expanded to (batch, n_kv_heads, n_rep, seq, head_dim) and reshaped.",
        "grouping": "KV head k must serve query heads k*n_rep .. k*n_rep + n_rep - 1 (heads 0,0,1,1 for "
        "n_rep = 2), not cycle through them (0,1,0,1): use repeat_interleave(n_rep, dim=1), not repeat.",
        "axis": "Repeat along the heads axis (dim=1), not the sequence axis: the output has "
        "n_kv_heads * n_rep heads and the same number of positions.",
        "n_rep": "n_rep is how many query heads share each KV head (n_heads // n_kv_heads), not the "
        "number of heads to end up with: repeat each KV head n_rep times.",
        "reshape": "Return a 4-D tensor: after expanding to (batch, n_kv_heads, n_rep, seq, head_dim), "
        "reshape to (batch, n_kv_heads * n_rep, seq, head_dim).",
    },
)


# ---------------------------------------------------------------------- 03.gqa_forward

def gqa_weights(g: torch.Generator, dim: int, n_heads: int, n_kv_heads: int, head_dim: int) -> dict:
    s = dim**-0.5  # keeps q and k near unit variance
    return {
        "q_proj": randn(g, n_heads * head_dim, dim, scale=s),
        "k_proj": randn(g, n_kv_heads * head_dim, dim, scale=s),
        "v_proj": randn(g, n_kv_heads * head_dim, dim, scale=s),
        "o_proj": randn(g, dim, n_heads * head_dim, scale=(n_heads * head_dim) ** -0.5),
    }


WEIGHTS_SHOWN = Label("{q_proj, k_proj, v_proj, o_proj}")


def gqa_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, batch, seq, n_kv_heads, masked, hint="default", dim=8, n_heads=4, **fields):
        head_dim = dim // n_heads
        cos_all, sin_all = rope_table(head_dim)
        x = randn(g, batch, seq, dim)
        weights = gqa_weights(g, dim, n_heads, n_kv_heads, head_dim)
        cos, sin = cos_all[:seq].clone(), sin_all[:seq].clone()
        mask = causal(seq) if masked else None
        show = (shown("x", x), WEIGHTS_SHOWN, shown("cos", cos), shown("sin", sin),
                mask_label(mask, f"causal_mask({seq})"), n_heads, n_kv_heads)
        return Case(label, (x, weights, cos, sin, mask, n_heads, n_kv_heads), hint, show=show, **fields)

    cases = [
        case("MHA, one token (RoPE does nothing at position 0)", 1, 1, 4, False),
        case("MHA, 4 tokens, causal", 1, 4, 4, True),
        case("GQA: 4 query heads share 2 KV heads", 1, 3, 2, True, "grouping"),
        case("MQA: 4 query heads share 1 KV head", 1, 3, 1, True),
        case("GQA without a mask", 1, 3, 2, False, "mask", probe=True),
        case("batch 2, 7 tokens, 8 query heads of 4 on 2 KV heads, causal", 2, 7, 2, True, dim=32, n_heads=8, probe=True),
    ]
    for n in range(2):
        cases.append(case(f"random batch (case {n + 1})", 2, rng.randint(2, 5), rng.choice([1, 2, 4]), rng.random() < 0.7))
    return cases


def gqa_variant(rope_q=True, rope_k=True, rope_v=False, grouping="interleave", heads_first="transpose",
                merge="transpose", linear="linear", use_mask=True, own_mask=False, o_proj=True):
    """A wrong ``gqa_forward``: one of its choices bent."""
    apply_rope = layers("apply_rope")

    def wrong(x, weights, cos, sin, mask, n_heads, n_kv_heads):
        batch, seq, _ = x.shape
        head_dim = weights["q_proj"].shape[0] // n_heads

        def proj(name, heads):
            w = weights[name]
            y = x @ w if linear == "no_transpose" else F.linear(x, w)
            return y.view(batch, seq, heads, head_dim)

        q, k, v = proj("q_proj", n_heads), proj("k_proj", n_kv_heads), proj("v_proj", n_kv_heads)
        q = apply_rope(q, cos, sin) if rope_q else q
        k = apply_rope(k, cos, sin) if rope_k else k
        v = apply_rope(v, cos, sin) if rope_v else v
        if heads_first == "transpose":
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        else:
            q, k, v = (t.reshape(batch, t.shape[2], seq, head_dim) for t in (q, k, v))
        n_rep = n_heads // n_kv_heads
        if grouping == "interleave":
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        else:
            k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)
        if own_mask:
            mask = causal(seq)
        out = att("attention")(q, k, v, mask if use_mask else None)
        if merge == "transpose":
            out = out.transpose(1, 2)
        out = out.reshape(batch, seq, n_heads * head_dim)
        if not o_proj:
            return out
        w = weights["o_proj"]
        return out @ w if linear == "no_transpose" else F.linear(out, w)

    return wrong


checkpoint(
    id="03.gqa_forward",
    points=3,
    title="grouped-query attention: MHA, GQA and MQA by n_kv_heads, RoPE on queries and keys",
    signature="gqa_forward(x, weights, cos, sin, mask, n_heads, n_kv_heads)",
    cases=gqa_cases,
    reference=att("gqa_forward"),
    tol=TOL,
    fingerprints=[
        ("rope_values", gqa_variant(rope_v=True)),
        ("rope_keys", gqa_variant(rope_k=False)),
        ("rope_queries", gqa_variant(rope_q=False)),
        ("grouping", gqa_variant(grouping="cycle")),
        ("split_heads", gqa_variant(heads_first="reshape")),
        ("merge_heads", gqa_variant(merge="reshape")),
        ("linear_layout", gqa_variant(linear="no_transpose")),
        ("mask", gqa_variant(use_mask=False)),
        ("own_mask", gqa_variant(own_mask=True)),
        ("o_proj", gqa_variant(o_proj=False)),
    ],
    raised_hints=[
        # `if mask:` to test for None: a tensor of several values has no truth value (the learner's
        # line, quoted after the message, must test the mask: Python's max() of a tensor says the same)
        (r"Boolean value of Tensor with more than one (value|element) is ambiguous.*\bif\b[^:]*mask", "mask_truthy"),
        # .view on the transposed (batch, seq, n_heads, head_dim) output, which is not contiguous
        (r"view size is not compatible with input tensor's size and stride", "contiguous"),
        # apply_rope on the heads-first (batch, heads, seq, head_dim) layout: x's third axis is cos's
        # first (a whole, unsliced table of 16 rows in 03.kv_cache is another mistake)
        (r"apply_rope takes x as .*got x \(\d+, \d+, (\d+), (\d+)\), cos \(\1, \2\)", "rope_layout"),
    ],
    grad_probe=True,
    hints={
        "mask_truthy": "Test `if mask is not None:`, not `if mask:`: a mask of several values has no "
        "truth value (RuntimeError), and None is what means 'no mask'.",
        "contiguous": "After transpose(1, 2) the tensor is not contiguous, so .view cannot merge the heads: "
        "use .reshape(batch, seq, n_heads * head_dim) (or .contiguous().view(...)).",
        "rope_layout": "apply_rope takes (batch, seq, n_heads, head_dim): rotate q and k right after "
        "the projection and view, BEFORE transpose(1, 2) moves the heads first.",
        "default": "project with F.linear(x, w) and view as (batch, seq, heads, head_dim); apply_rope to "
        "q and k; transpose(1, 2) to heads-first; repeat_kv k and v by n_heads // n_kv_heads; attention; "
        "transpose back, reshape to (batch, seq, n_heads * head_dim); F.linear with o_proj.",
        "rope_values": "Rotate queries and keys only: values carry content, and positions enter "
        "attention through the scores q·k alone.",
        "rope_keys": "Apply RoPE to the keys as well as the queries: the score of a rotated query with "
        "an unrotated key does not depend on their relative position.",
        "rope_queries": "Apply RoPE to the queries as well as the keys: both sides of q·k must be rotated "
        "by their own positions.",
        "grouping": "KV head k must serve query heads k*g .. k*g + g - 1 (g = n_heads // n_kv_heads): "
        "repeat_interleave along the heads, not repeat (which cycles 0,1,0,1).",
        "split_heads": "Move the heads axis with transpose(1, 2), not view/reshape: (batch, seq, heads, "
        "head_dim) reshaped to (batch, heads, seq, head_dim) mixes positions and heads.",
        "merge_heads": "Before the output projection, transpose(1, 2) the (batch, n_heads, seq, head_dim) "
        "output back to (batch, seq, n_heads, head_dim), then reshape to (batch, seq, n_heads * head_dim).",
        "linear_layout": "nn.Linear stores weights as (out_features, in_features): project with "
        "F.linear(x, w) = x @ w.T, not x @ w.",
        "mask": "Pass the mask to attention: without it every token sees the future.",
        "o_proj": "Finish with the output projection: the heads side by side, (batch, seq, n_heads * head_dim), "
        "go through F.linear(out, weights['o_proj']), which mixes them back into dim.",
        "own_mask": "Pass on the mask you are given, whatever it is: mask=None means every token sees every "
        "other (an encoder, or a single new token), so do not build a causal mask yourself.",
    },
)


# ------------------------------------------------------------------------- 03.kv_cache

def kv_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)
    decode = att("gqa_decode")

    def case(label, batch, past, seq, n_kv_heads, hint="default", dim=8, n_heads=4):
        head_dim = dim // n_heads
        cos, sin = rope_table(head_dim)
        weights = gqa_weights(g, dim, n_heads, n_kv_heads, head_dim)
        empty = torch.zeros(batch, n_kv_heads, 0, head_dim)
        _, k_cache, v_cache = decode(randn(g, batch, past, dim), weights, cos, sin, empty, empty, n_heads, n_kv_heads)
        x = randn(g, batch, seq, dim)
        show = (shown("x", x), WEIGHTS_SHOWN, shown("cos", cos), shown("sin", sin),
                shown("k_cache", k_cache), shown("v_cache", v_cache), n_heads, n_kv_heads)
        return Case(label, (x, weights, cos, sin, k_cache, v_cache, n_heads, n_kv_heads), hint, show=show)

    cases = [
        case("an empty cache, one token", 1, 0, 1, 4),
        case("an empty cache, a prompt of 3 tokens", 1, 0, 3, 4, "mask"),
        case("one new token after 3 cached (position 3)", 1, 3, 1, 4, "positions"),
        case("two new tokens after 3 cached", 1, 3, 2, 2, "mask_offset"),
        case("MQA: one new token after 4 cached", 1, 4, 1, 1, "positions"),
        case("batch 2, 3 new tokens after 9 cached, 8 query heads of 4 on 2 KV heads", 2, 9, 3, 2, dim=32, n_heads=8),
    ]
    for n in range(2):
        cases.append(case(f"random batch (case {n + 1})", 2, rng.randint(1, 6), rng.randint(1, 3), rng.choice([1, 2, 4])))
    return cases


def kv_variant(positions="offset", mask_mode="offset", rotate_cache=False, return_new=False, o_proj=True):
    """A wrong ``gqa_decode``: one of its choices bent."""

    def wrong(x, weights, cos, sin, k_cache, v_cache, n_heads, n_kv_heads):
        past, seq = k_cache.shape[2], x.shape[1]
        total = past + seq
        rows = {"restart": slice(0, seq), "shift": slice(past + 1, total + 1), "offset": slice(past, total)}[positions]
        if rotate_cache:  # cache keys before RoPE; rotate every cached key at each step
            no_rope = torch.ones_like(cos), torch.zeros_like(sin)
            q, _, _ = att("project_qkv")(x, weights, cos[rows], sin[rows], n_heads, n_kv_heads)
            _, k, v = att("project_qkv")(x, weights, *(t[rows] for t in no_rope), n_heads, n_kv_heads)
        else:
            q, k, v = att("project_qkv")(x, weights, cos[rows], sin[rows], n_heads, n_kv_heads)
        k_cache, v_cache = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)
        keys = k_cache
        if rotate_cache:
            keys = layers("apply_rope")(k_cache.transpose(1, 2), cos[:total], sin[:total]).transpose(1, 2)
        mask = {"offset": causal(seq, total), "none": None,
                "tril": torch.ones(seq, total, dtype=torch.bool).tril()}[mask_mode]
        if o_proj:
            out = att("attend")(q, keys, v_cache, mask, weights["o_proj"])
        else:  # attend without its last step, the output projection
            n_rep = n_heads // n_kv_heads
            out = att("attention")(q, att("repeat_kv")(keys, n_rep), att("repeat_kv")(v_cache, n_rep), mask)
            out = out.transpose(1, 2).reshape(x.shape[0], seq, -1)
        return (out, k, v) if return_new else (out, k_cache, v_cache)

    return wrong


checkpoint(
    id="03.kv_cache",
    points=2,
    title="decoding with a KV cache: positions, mask and cache extended, as the full forward",
    signature="gqa_decode(x, weights, cos, sin, k_cache, v_cache, n_heads, n_kv_heads)",
    cases=kv_cases,
    reference=att("gqa_decode"),
    tol=TOL,
    fingerprints=[
        ("positions", kv_variant(positions="restart")),
        ("mask_offset", kv_variant(mask_mode="tril")),
        ("mask", kv_variant(mask_mode="none")),
        ("cache_rotated", kv_variant(rotate_cache=True)),
        ("positions_shift", kv_variant(positions="shift")),
        ("cache_return", kv_variant(return_new=True)),
        ("o_proj", kv_variant(o_proj=False)),
    ],
    raised_hints=[
        (r"Sizes of tensors must match except in dimension [013]\b", "cache_axis"),
        # .view on the transposed (batch, seq, n_heads, head_dim) output, which is not contiguous
        (r"view size is not compatible with input tensor's size and stride", "contiguous"),
        # apply_rope on the heads-first (batch, heads, seq, head_dim) layout: x's third axis is cos's
        # first (a whole, unsliced table of 16 rows in 03.kv_cache is another mistake)
        (r"apply_rope takes x as .*got x \(\d+, \d+, (\d+), (\d+)\), cos \(\1, \2\)", "rope_layout"),
    ],
    hints={
        "default": "past = k_cache.shape[2]; project_qkv the new tokens with cos[past:past + seq]; "
        "torch.cat the new keys and values to the caches on dim=2; attend with causal_mask(seq, "
        "past + seq); return (out, k_cache, v_cache).",
        "positions": "The new tokens sit at positions past .. past + seq - 1: rotate them with "
        "cos[past:past + seq] and sin[past:past + seq], not the rows of positions 0 .. seq - 1.",
        "positions_shift": "The cache holds positions 0 .. past - 1, so the first new token is at position past "
        "itself: rotate with cos[past:past + seq], not cos[past + 1:past + seq + 1].",
        "cache_return": "Return the caches extended by the new tokens, torch.cat([k_cache, k], dim=2) (and the same "
        "for v), not only the new keys and values: the next step needs every position so far.",
        "mask_offset": "The new queries are the last seq of past + seq positions: query i may see keys "
        "0 .. past + i. Use causal_mask(seq, past + seq), not a lower triangle starting at key 0.",
        "mask": "Several new tokens (a prompt) must not see each other's future: attend with "
        "causal_mask(seq, past + seq).",
        "o_proj": "Finish with the output projection: the heads side by side, (batch, seq, n_heads * head_dim), "
        "go through F.linear(out, weights['o_proj']), which mixes them back into dim.",
        "cache_rotated": "The cache holds keys after RoPE: rotate only the new keys, at their own "
        "positions, then append them. Keys already in the cache are never rotated again.",
        "cache_axis": "Append to the caches along the sequence axis: torch.cat([k_cache, k], dim=2) "
        "with both (batch, n_kv_heads, seq, head_dim).",
        "contiguous": "After transpose(1, 2) the tensor is not contiguous, so .view cannot merge the heads: "
        "use .reshape(batch, seq, n_heads * head_dim) (or .contiguous().view(...)).",
        "rope_layout": "apply_rope takes (batch, seq, n_heads, head_dim): rotate q and k right after "
        "the projection and view, BEFORE transpose(1, 2) moves the heads first.",
        "return_type": "Return three tensors, (out, k_cache, v_cache): the output and both caches "
        "extended by the new tokens.",
    },
)


# ------------------------------------------------------------------------------ 03.mla

def mla_weights(g: torch.Generator, dim: int, n_heads: int, head_dim: int, rope_dim: int, rank: int) -> dict:
    return {
        "q_proj": randn(g, n_heads * (head_dim + rope_dim), dim, scale=dim**-0.5),
        "kv_a_proj_with_mqa": randn(g, rank + rope_dim, dim, scale=dim**-0.5),
        "kv_b_proj": randn(g, n_heads * 2 * head_dim, rank, scale=rank**-0.5),
        "o_proj": randn(g, dim, n_heads * head_dim, scale=(n_heads * head_dim) ** -0.5),
    }


def mla_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)
    forward = att("mla_forward")
    names = Label("{q_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj}")

    def case(label, batch, past, seq, n_heads, hint="default", dim=8, head_dim=2, rope_dim=2, rank=3, **fields):
        cos, sin = rope_table(rope_dim)
        weights = mla_weights(g, dim, n_heads, head_dim, rope_dim, rank)
        empty = torch.zeros(batch, 0, rank + rope_dim)
        _, cache = forward(randn(g, batch, past, dim), weights, cos, sin, empty, n_heads, rope_dim)
        x = randn(g, batch, seq, dim)
        show = (shown("x", x), names, shown("cos", cos), shown("sin", sin), shown("latent_cache", cache), n_heads, rope_dim)
        return Case(label, (x, weights, cos, sin, cache, n_heads, rope_dim), hint, show=show, **fields)

    cases = [
        case("an empty cache, one token", 1, 0, 1, 2),
        case("an empty cache, 3 tokens", 1, 0, 3, 2, probe=True),
        case("one new token after 3 cached (position 3)", 1, 3, 1, 2, "positions"),
        case("two new tokens after 2 cached", 1, 2, 2, 2, "mask_offset"),
        case("batch 2, 3 new tokens after 6 cached, 4 heads, head_dim 6, rope_dim 4, rank 5", 2, 6, 3, 4,
             dim=16, head_dim=6, rope_dim=4, rank=5, probe=True),
    ]
    for n in range(2):
        cases.append(case(f"random batch (case {n + 1})", 2, rng.randint(0, 5), rng.randint(1, 3), rng.randint(1, 4)))
    return cases


def mla_variant(rope_key=True, positions="offset", kv_split="per_head", q_split="nope_first",
                rotate_cache=False, scale="both", mask_mode="offset", return_new=False):
    """A wrong ``mla_forward``: one of its choices bent."""
    apply_rope = layers("apply_rope")

    def wrong(x, weights, cos_all, sin_all, latent_cache, n_heads, rope_dim):
        batch, seq, _ = x.shape
        past = latent_cache.shape[1]
        total = past + seq
        rows = slice(0, seq) if positions == "restart" else slice(past, total)
        cos, sin = cos_all[rows], sin_all[rows]
        head_dim = weights["q_proj"].shape[0] // n_heads - rope_dim
        q = F.linear(x, weights["q_proj"]).view(batch, seq, n_heads, head_dim + rope_dim)
        if q_split == "nope_first":
            q_nope, q_rope = q.split([head_dim, rope_dim], dim=-1)
        else:
            q_rope, q_nope = q.split([rope_dim, head_dim], dim=-1)
        q = torch.cat([q_nope, apply_rope(q_rope, cos, sin)], dim=-1)
        latent = F.linear(x, weights["kv_a_proj_with_mqa"])
        rank = latent.shape[-1] - rope_dim
        c_kv, k_rope = latent.split([rank, rope_dim], dim=-1)
        if rope_key and not rotate_cache:
            k_rope = apply_rope(k_rope[:, :, None, :], cos, sin)[:, :, 0]
        latent_cache = torch.cat([latent_cache, torch.cat([c_kv, k_rope], dim=-1)], dim=1)
        c_kv, k_rope = latent_cache.split([rank, rope_dim], dim=-1)
        if rotate_cache:
            k_rope = apply_rope(k_rope[:, :, None, :], cos_all[:total], sin_all[:total])[:, :, 0]
        kv = F.linear(c_kv, weights["kv_b_proj"])
        if kv_split == "per_head":
            k_nope, v = kv.view(batch, total, n_heads, 2 * head_dim).split([head_dim, head_dim], dim=-1)
        else:
            k_nope, v = (t.reshape(batch, total, n_heads, head_dim) for t in kv.chunk(2, dim=-1))
        k = torch.cat([k_nope, k_rope[:, :, None, :].expand(batch, total, n_heads, rope_dim)], dim=-1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        mask = {"offset": causal(seq, total), "tril": torch.ones(seq, total, dtype=torch.bool).tril(),
                "none": torch.ones(seq, total, dtype=torch.bool)}[mask_mode]
        if scale == "nope":  # scores divided by sqrt(head_dim), forgetting the rope part
            scores = (q @ k.transpose(-2, -1) / math.sqrt(head_dim)).masked_fill(~mask, float("-inf"))
            out = torch.softmax(scores, dim=-1) @ v
        else:
            out = att("attention")(q, k, v, mask)
        out = out.transpose(1, 2).reshape(batch, seq, n_heads * head_dim)
        return F.linear(out, weights["o_proj"]), latent_cache[:, past:] if return_new else latent_cache

    return wrong


checkpoint(
    id="03.mla",
    points=2,
    title="(bonus) multi-head latent attention with its latent cache",
    signature="mla_forward(x, weights, cos, sin, latent_cache, n_heads, rope_dim)",
    cases=mla_cases,
    reference=att("mla_forward"),
    tol=TOL,
    fingerprints=[
        ("rope_key", mla_variant(rope_key=False)),
        ("positions", mla_variant(positions="restart")),
        ("kv_split", mla_variant(kv_split="halves")),
        ("q_split", mla_variant(q_split="rope_first")),
        ("cache_rotated", mla_variant(rotate_cache=True)),
        ("scale", mla_variant(scale="nope")),
        ("mask_offset", mla_variant(mask_mode="tril")),
        ("cache_return", mla_variant(return_new=True)),
        ("mask", mla_variant(mask_mode="none")),
    ],
    raised_hints=[
        # the latent cache is (batch, past, kv_lora_rank + rope_dim): appended on another axis than 1
        # (the learner's line, quoted after the message, names the cache: q and k are concatenated too)
        (r"Sizes of tensors must match except in dimension [02]\b.*cache", "cache_axis"),
        # .view on the transposed (batch, seq, n_heads, head_dim) output, which is not contiguous
        (r"view size is not compatible with input tensor's size and stride", "contiguous"),
    ],
    grad_probe=True,
    hints={
        "contiguous": "After transpose(1, 2) the tensor is not contiguous, so .view cannot merge the heads: "
        "use .reshape(batch, seq, n_heads * head_dim) (or .contiguous().view(...)).",
        "mask": "Latent attention is causal: several new tokens must not see each other's future. Attend "
        "with causal_mask(seq, past + seq).",
        "cache_axis": "Append to the latent cache along the sequence axis: torch.cat([latent_cache, new], dim=1), "
        "both (batch, positions, kv_lora_rank + rope_dim).",
        "cache_return": "Return the latent cache extended by the new tokens, torch.cat([latent_cache, new], "
        "dim=1), not only the new tokens' latents: the next step needs every position so far.",
        "default": "Queries: q_proj, view (batch, seq, n_heads, head_dim + rope_dim), split [head_dim, "
        "rope_dim], rotate the rope part. Latent: kv_a_proj_with_mqa, split [rank, rope_dim], rotate "
        "k_rope, append [c_kv; k_rope] to the cache. Keys and values: kv_b_proj of the cached c_kv, "
        "per head [k_nope; v]; every head's key is [k_nope; k_rope].",
        "rope_key": "Rotate the shared key part k_rope (the last rope_dim values of kv_a_proj_with_mqa) "
        "by its positions: it is the only place where keys learn their position.",
        "positions": "The new tokens sit at positions past .. past + seq - 1 (past = latent_cache.shape[1]): "
        "rotate with cos[past:past + seq], not from position 0.",
        "kv_split": "kv_b_proj gives each head its key and value side by side: view as (batch, seq, "
        "n_heads, 2 * head_dim) first, then split the last axis into [k_nope, v].",
        "q_split": "Each head's query is [q_nope; q_rope], in that order: split the last axis into "
        "[head_dim, rope_dim].",
        "cache_rotated": "Cache k_rope after rotating it at its own position; rotate only the new tokens' "
        "k_rope, never the cached ones again.",
        "scale": "The scores q·k add the nope and rope parts: scale by 1 / sqrt(head_dim + rope_dim), "
        "the full query length (attention does this when q has head_dim + rope_dim values).",
        "mask_offset": "The new queries are the last seq of past + seq positions: use "
        "causal_mask(seq, past + seq), not a lower triangle starting at key 0.",
    },
)
