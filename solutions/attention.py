"""Attention as LLaMA uses it: causal, rotary, with key/value heads shared by groups of query heads.

One module covers the three variants, told apart by ``n_kv_heads`` alone:

* **MHA** (multi-head attention, Vaswani et al., 2017): ``n_kv_heads == n_heads``;
* **MQA** (multi-query attention, Shazeer, 2019): ``n_kv_heads == 1``;
* **GQA** (grouped-query attention, Ainslie et al., 2023; LLaMA-2 70B, LLaMA-3, Mistral):
  anything in between, each KV head serving ``n_heads // n_kv_heads`` query heads.

Fewer KV heads mean a smaller **KV cache**, the keys and values kept while generating, which
is what limits batch size and context length at inference. Multi-head latent attention
(DeepSeek-V2) goes further and caches one low-rank latent vector per token.

Shapes: activations ``(batch, seq, dim)``; queries, keys and values are projected to
``(batch, seq, n_heads, head_dim)`` (where RoPE rotates them) and then moved heads-first,
``(batch, n_heads, seq, head_dim)``, the layout of ``F.scaled_dot_product_attention``.
Parameter names follow Hugging Face's Llama (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``,
bias-free ``nn.Linear`` weights of shape ``(out_features, in_features)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from solutions.layers import apply_rope, causal_mask

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    r"""Scaled dot-product attention, written out (Vaswani et al., 2017):

    .. math:: \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\Big(\frac{Q K^\top}{\sqrt{d}}\Big) V

    ``q``: ``(batch, n_heads, q_len, head_dim)``; ``k``, ``v``: ``(batch, n_heads, kv_len,
    head_dim)``; ``mask``: boolean, broadcastable to ``(q_len, kv_len)``, True where a query
    may attend to a key, or None (every query sees every key). Masked scores become
    :math:`-\infty` *before* the softmax, so their weights are exactly 0 and each row still
    sums to 1. Dividing by :math:`\sqrt{d}` (``d = head_dim``) keeps the scores' variance
    near 1, so the softmax does not saturate. Returns ``(batch, n_heads, q_len, head_dim)``,
    what ``F.scaled_dot_product_attention(q, k, v, attn_mask=mask)`` computes.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (batch, n_heads, q_len, kv_len)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # each query's weights over the keys sum to 1
    return weights @ v  # (batch, n_heads, q_len, head_dim)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Give every query head its group's key/value head: ``(batch, n_kv_heads, seq, head_dim)``
    to ``(batch, n_kv_heads * n_rep, seq, head_dim)``.

    Query heads are grouped consecutively: KV head ``j`` serves query heads
    ``j * n_rep .. j * n_rep + n_rep - 1``, i.e. query head ``h`` uses KV head ``h // n_rep``
    (``x.repeat_interleave(n_rep, dim=1)``, as in Hugging Face's ``repeat_kv``; ``x.repeat``
    would cycle the heads instead). ``expand`` makes no copy until the reshape.
    """
    batch, n_kv_heads, seq, head_dim = x.shape
    if n_rep == 1:
        return x
    x = x[:, :, None, :, :].expand(batch, n_kv_heads, n_rep, seq, head_dim)
    return x.reshape(batch, n_kv_heads * n_rep, seq, head_dim)


def project_qkv(x: torch.Tensor, weights: dict[str, torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
                n_heads: int, n_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Project ``x`` ``(batch, seq, dim)`` to queries, keys and values, split them into
    heads, rotate queries and keys by their positions, and move the heads first.

    ``weights["q_proj"]`` is ``(n_heads * head_dim, dim)``, ``k_proj`` and ``v_proj`` are
    ``(n_kv_heads * head_dim, dim)`` (``nn.Linear`` layout: ``F.linear(x, w) = x @ w.T``);
    ``cos``, ``sin``: ``(seq, head_dim)``, the rows of ``rope_cache`` for these positions.
    Returns ``q`` ``(batch, n_heads, seq, head_dim)`` and ``k``, ``v``
    ``(batch, n_kv_heads, seq, head_dim)``. Values are not rotated: positions enter
    attention only through the scores :math:`q \cdot k`.
    """
    batch, seq, _ = x.shape
    head_dim = weights["q_proj"].shape[0] // n_heads
    q = F.linear(x, weights["q_proj"]).view(batch, seq, n_heads, head_dim)  # (batch, seq, n_heads, head_dim)
    k = F.linear(x, weights["k_proj"]).view(batch, seq, n_kv_heads, head_dim)  # (batch, seq, n_kv_heads, head_dim)
    v = F.linear(x, weights["v_proj"]).view(batch, seq, n_kv_heads, head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # heads first: (batch, heads, seq, head_dim)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           o_proj: torch.Tensor, sdpa: bool = False) -> torch.Tensor:
    """Every query head attends with its group's key/value head; the heads are concatenated
    and mixed by the output projection.

    ``q``: ``(batch, n_heads, q_len, head_dim)``; ``k``, ``v``: ``(batch, n_kv_heads,
    kv_len, head_dim)``; ``o_proj``: ``(dim, n_heads * head_dim)``. Returns ``(batch, q_len,
    dim)``. ``sdpa=True`` uses PyTorch's fused ``F.scaled_dot_product_attention`` (same
    result; its ``enable_gqa`` groups heads exactly as :func:`repeat_kv` does, without copies).
    """
    if sdpa:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    else:
        n_rep = q.shape[1] // k.shape[1]
        out = attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), mask)  # (batch, n_heads, q_len, head_dim)
    batch, n_heads, q_len, head_dim = out.shape
    out = out.transpose(1, 2).reshape(batch, q_len, n_heads * head_dim)  # heads side by side again
    return F.linear(out, o_proj)  # (batch, q_len, dim)


def gqa_forward(x: torch.Tensor, weights: dict[str, torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """Grouped-query attention over a whole sequence: ``(batch, seq, dim)`` to the same.

    ``weights``: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (Hugging Face Llama names and
    shapes); ``cos``, ``sin``: ``(seq, head_dim)``; ``mask``: ``(seq, seq)`` boolean or None.
    MHA when ``n_kv_heads == n_heads``, MQA when it is 1.
    """
    q, k, v = project_qkv(x, weights, cos, sin, n_heads, n_kv_heads)
    return attend(q, k, v, mask, weights["o_proj"])


def gqa_decode(x: torch.Tensor, weights: dict[str, torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
               k_cache: torch.Tensor, v_cache: torch.Tensor, n_heads: int, n_kv_heads: int,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoding step with a KV cache: attend from the new tokens to every token so far.

    ``x``: the new tokens, ``(batch, seq, dim)``; ``k_cache``, ``v_cache``: the rotated keys
    and the values of the ``past`` earlier tokens, ``(batch, n_kv_heads, past, head_dim)``
    (``past`` may be 0); ``cos``, ``sin``: the whole ``rope_cache`` table,
    ``(max_seq_len, head_dim)``. The new tokens sit at positions ``past .. past + seq - 1``,
    and new query ``i`` may see keys ``0 .. past + i``. Returns ``(out, k_cache, v_cache)``:
    ``out`` ``(batch, seq, dim)`` and the caches extended along the sequence axis.
    Decoding a text token by token this way gives the outputs of :func:`gqa_forward` on the
    whole text, while projecting each token only once.
    """
    past, seq = k_cache.shape[2], x.shape[1]
    q, k, v = project_qkv(x, weights, cos[past : past + seq], sin[past : past + seq], n_heads, n_kv_heads)
    k_cache = torch.cat([k_cache, k], dim=2)  # (batch, n_kv_heads, past + seq, head_dim)
    v_cache = torch.cat([v_cache, v], dim=2)
    out = attend(q, k_cache, v_cache, causal_mask(seq, past + seq, device=x.device), weights["o_proj"])
    return out, k_cache, v_cache


# ------------------------------------------------------------------------- the module

def check_config(dim: int, n_heads: int, n_kv_heads: int) -> int:
    """Validate an attention configuration; return ``head_dim``. Errors say what to change."""
    for name, value in (("dim", dim), ("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if dim % n_heads:
        options = [h for h in range(1, dim + 1) if dim % h == 0 and (dim // h) % 2 == 0]
        raise ValueError(f"dim ({dim}) must be divisible by n_heads ({n_heads}): each head gets "
                         f"dim // n_heads dimensions. n_heads could be one of {options}")
    if n_heads % n_kv_heads:
        options = [g for g in range(1, n_heads + 1) if n_heads % g == 0]
        raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads}): each "
                         f"key/value head serves n_heads // n_kv_heads query heads. n_kv_heads "
                         f"could be one of {options} (1 = MQA, {n_heads} = MHA)")
    head_dim = dim // n_heads
    if head_dim % 2:
        raise ValueError(f"head_dim = dim // n_heads = {dim} // {n_heads} = {head_dim} must be even: "
                         "RoPE rotates pairs of dimensions. Change dim or n_heads")
    return head_dim


class KVCache:
    """The rotated keys and the values one attention layer has seen so far, each
    ``(batch, n_kv_heads, seq_so_far, head_dim)``. Only ``n_kv_heads`` heads are stored:
    this is the memory GQA and MQA save."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        """How many positions are cached: the position of the next token."""
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new keys and values along the sequence axis; return everything cached."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


class Attention(nn.Module):
    """LLaMA's attention layer: MHA, GQA or MQA by ``n_kv_heads`` (default: ``n_heads``).

    ``forward(x, cos, sin, mask=None, cache=None)``: ``x`` ``(batch, seq, dim)``; ``cos``,
    ``sin`` the RoPE rows of ``x``'s positions ``(seq, head_dim)``; ``mask`` broadcastable to
    ``(seq, kv_len)`` (the caller builds both once for all layers: with a cache of ``past``
    positions, rows ``past .. past + seq - 1`` and ``causal_mask(seq, past + seq)``);
    ``cache``: a :class:`KVCache` to read and extend, or None. ``sdpa=True`` computes
    attention with ``F.scaled_dot_product_attention`` instead of the explicit math.
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None = None, sdpa: bool = False):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.head_dim = check_config(dim, n_heads, n_kv_heads)
        self.n_heads, self.n_kv_heads, self.sdpa = n_heads, n_kv_heads, sdpa
        self.q_proj = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).weight for name in PROJECTIONS}

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        q, k, v = project_qkv(x, self.weights(), cos, sin, self.n_heads, self.n_kv_heads)
        if cache is not None:
            k, v = cache.update(k, v)  # (batch, n_kv_heads, past + seq, head_dim)
        return attend(q, k, v, mask, self.o_proj.weight, self.sdpa)  # (batch, seq, dim)


# ------------------------------------------------------------ the cache, in bytes

def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int,
                   batch: int = 1, bytes_per_value: int = 2) -> int:
    """Bytes of a KV cache: a key and a value vector per KV head, layer and token
    (``bytes_per_value`` 2 for fp16/bf16). LLaMA-2 70B (80 layers, 8 KV heads of 128) at
    4,096 tokens in fp16: 1.25 GiB per sequence, against 10 GiB with its 64 heads as MHA."""
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch * bytes_per_value


def latent_cache_bytes(n_layers: int, kv_lora_rank: int, rope_dim: int, seq_len: int,
                       batch: int = 1, bytes_per_value: int = 2) -> int:
    """Bytes of a multi-head latent attention cache: one latent of ``kv_lora_rank`` values and
    one shared rotary key of ``rope_dim`` values per layer and token, whatever the head count.
    DeepSeek-V2 (512 + 64): the cache of a GQA model with 2.25 KV heads of 128 dimensions."""
    return n_layers * (kv_lora_rank + rope_dim) * seq_len * batch * bytes_per_value


# ------------------------------------------------- bonus: multi-head latent attention

def mla_forward(x: torch.Tensor, weights: dict[str, torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
                latent_cache: torch.Tensor, n_heads: int, rope_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Multi-head latent attention (DeepSeek-V2, 2024), simplified, with its latent cache.

    Keys and values are not cached per head. Each token is compressed to one latent
    :math:`c^{KV} = W^{DKV} x` of ``kv_lora_rank`` values, and every head's key and value
    are *up-projected* from it, :math:`[k^C_h; v_h] = W^{UK,UV}_h c^{KV}`. RoPE must stay
    out of that path: a position-dependent rotation between :math:`W^{UK}` and the query
    would stop :math:`W^{UK}` from being folded into the query projection at inference. So
    position is carried by a small *decoupled* rotary key :math:`k^R = \mathrm{RoPE}(W^{KR} x)`
    of ``rope_dim`` values, shared by all heads, and each head's query has a rotary part
    too. Scores are :math:`q^C_h \cdot k^C_h + q^R_h \cdot k^R`, scaled by
    :math:`1/\sqrt{\text{head\_dim} + \text{rope\_dim}}`. The cache holds
    :math:`[c^{KV}; k^R]`: ``kv_lora_rank + rope_dim`` values per token.

    Hugging Face DeepSeek-V2 names (without query compression and without the RMSNorm on
    the latent, ``kv_a_layernorm``, to keep it small): ``q_proj`` ``(n_heads * (head_dim +
    rope_dim), dim)``, each head's ``[q^C; q^R]``; ``kv_a_proj_with_mqa`` ``(kv_lora_rank +
    rope_dim, dim)``, ``[c^{KV}; k^R]``; ``kv_b_proj`` ``(n_heads * 2 * head_dim,
    kv_lora_rank)``, each head's ``[k^C; v]``; ``o_proj`` ``(dim, n_heads * head_dim)``.

    ``x``: the new tokens ``(batch, seq, dim)``; ``cos``, ``sin``: the whole rope table,
    ``(max_seq_len, rope_dim)``; ``latent_cache``: ``(batch, past, kv_lora_rank + rope_dim)``
    with the rotary keys already rotated (``past`` may be 0). Causal. Returns ``(out,
    latent_cache)``: ``(batch, seq, dim)`` and the cache extended by the new tokens.
    """
    batch, seq, _ = x.shape
    past = latent_cache.shape[1]
    cos, sin = cos[past : past + seq], sin[past : past + seq]
    head_dim = weights["q_proj"].shape[0] // n_heads - rope_dim
    q = F.linear(x, weights["q_proj"]).view(batch, seq, n_heads, head_dim + rope_dim)
    q_nope, q_rope = q.split([head_dim, rope_dim], dim=-1)
    q = torch.cat([q_nope, apply_rope(q_rope, cos, sin)], dim=-1)

    latent = F.linear(x, weights["kv_a_proj_with_mqa"])  # (batch, seq, kv_lora_rank + rope_dim)
    rank = latent.shape[-1] - rope_dim
    c_kv, k_rope = latent.split([rank, rope_dim], dim=-1)
    k_rope = apply_rope(k_rope[:, :, None, :], cos, sin)[:, :, 0]  # one rotary key for all heads
    new = torch.cat([c_kv, k_rope], dim=-1)  # (batch, seq, rank + rope_dim): all that is cached
    latent_cache = torch.cat([latent_cache, new], dim=1)  # (batch, past + seq, rank + rope_dim)

    total = past + seq
    c_kv, k_rope = latent_cache.split([rank, rope_dim], dim=-1)
    kv = F.linear(c_kv, weights["kv_b_proj"]).view(batch, total, n_heads, 2 * head_dim)
    k_nope, v = kv.split([head_dim, head_dim], dim=-1)  # (batch, total, n_heads, head_dim) each
    k = torch.cat([k_nope, k_rope[:, :, None, :].expand(batch, total, n_heads, rope_dim)], dim=-1)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # heads first
    out = attention(q, k, v, causal_mask(seq, total, device=x.device))  # scaled by sqrt(head_dim + rope_dim)
    out = out.transpose(1, 2).reshape(batch, seq, n_heads * head_dim)
    return F.linear(out, weights["o_proj"]), latent_cache
