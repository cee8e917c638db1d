"""The building blocks of a LLaMA block: RMSNorm, rotary position embedding, SwiGLU, causal mask.

Shapes follow the course's convention: activations are ``(batch, seq, dim)``, and queries
and keys inside attention ``(batch, seq, n_heads, head_dim)``. Parameter names follow
Hugging Face's Llama (``weight``, ``gate_proj``, ``up_proj``, ``down_proj``) so that
checkpoints load by name (chapter 05).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    r"""Root-mean-square layer norm (Zhang & Sennrich, 2019) over the last dimension.

    .. math:: \mathrm{RMSNorm}(x) = \frac{x}{\sqrt{\frac{1}{d}\sum_{i=1}^{d} x_i^2 + \epsilon}} \odot g

    No mean subtraction and no bias: cheaper than LayerNorm, as good in practice. As in
    LLaMA, the statistics are computed in float32 whatever the input dtype (``x**2``
    overflows float16 beyond 256), then the result is cast back to ``x.dtype`` before the
    gain ``g`` (``weight``) is applied.

    ``x``: ``(..., dim)``; ``weight``: ``(dim,)``. Returns ``(..., dim)``.
    """
    if weight.shape != x.shape[-1:]:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)} but x's last dimension is {x.shape[-1]}: "
            f"RMSNorm normalises the last dimension, so weight must be ({x.shape[-1]},)"
        )
    x32 = x.float()  # (..., dim)
    inv_rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)  # (..., 1)
    return weight * (x32 * inv_rms).to(x.dtype)


class RMSNorm(nn.Module):
    """:func:`rms_norm` as a module with a learned gain ``weight`` (Hugging Face's name)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rope_cache(head_dim: int, max_seq_len: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Cosines and sines of RoPE's rotation angles (Su et al., 2021), precomputed once.

    Dimension pair :math:`i` of position :math:`m` is rotated by :math:`m\,\theta^{-2i/d}`:
    low pairs spin fast (local order), high pairs slowly (long range). Positions start at
    0, so row 0 is ``cos = 1, sin = 0``. ``theta`` is the config's ``rope_theta`` (10000 in
    LLaMA 2, 500000 in LLaMA 3). Returned in the *rotate-half* layout used by Hugging Face
    checkpoints: the ``head_dim / 2`` angles are repeated, ``[a_0 .. a_{d/2-1}, a_0 .. a_{d/2-1}]``.

    Returns ``(cos, sin)``, each ``(max_seq_len, head_dim)``.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE rotates pairs of dimensions: head_dim must be even, got {head_dim}")
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (head_dim/2,)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (seq, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)  # (seq, head_dim)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension: dimension ``i`` is paired with ``i + d/2``."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    r"""Rotate queries or keys by their positions (rotate-half convention).

    ``x``: ``(batch, seq, n_heads, head_dim)``; ``cos``, ``sin``: ``(seq, head_dim)``, the
    rows of :func:`rope_cache` for these positions (slice ``cos[start:start + seq]`` when
    decoding with a cache). Each pair :math:`(x_i, x_{i+d/2})` turns by its angle:

    .. math:: x' = x \odot \cos + \mathrm{rotate\_half}(x) \odot \sin

    so that :math:`\langle q'_m, k'_n \rangle` depends on :math:`m - n` only.
    Meta's original LLaMA code pairs *neighbours* :math:`(x_{2i}, x_{2i+1})` instead
    (:func:`apply_rope_interleaved`); the two agree up to a fixed permutation of the
    head dimension, which Hugging Face's conversion script applies to ``q_proj``/``k_proj``.
    """
    if x.ndim != 4 or cos.shape != (x.shape[1], x.shape[3]) or sin.shape != cos.shape:
        raise ValueError(
            f"apply_rope takes x as (batch, seq, n_heads, head_dim) and cos, sin as (seq, head_dim); "
            f"got x {tuple(x.shape)}, cos {tuple(cos.shape)}, sin {tuple(sin.shape)}. Pass the rows "
            "of rope_cache for x's positions: cos[start:start + seq], sin[start:start + seq]"
        )
    cos = cos[None, :, None, :].to(x.dtype)  # (1, seq, 1, head_dim)
    sin = sin[None, :, None, :].to(x.dtype)
    return x * cos + rotate_half(x) * sin  # (batch, seq, n_heads, head_dim)


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE with neighbouring pairs ``(x_0, x_1), (x_2, x_3), ...`` (Meta's LLaMA, RoFormer).

    Takes the same ``cos``/``sin`` as :func:`apply_rope` (only the first half is used).
    """
    half = x.shape[-1] // 2
    cos = cos[None, :, None, :half].to(x.dtype)  # (1, seq, 1, head_dim/2)
    sin = sin[None, :, None, :half].to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]  # (batch, seq, n_heads, head_dim/2)
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.flatten(-2)


def swiglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    r"""The gated feed-forward network of LLaMA (Shazeer, 2020):

    .. math:: \mathrm{FFN}(x) = W_{down}\,\big(\mathrm{SiLU}(W_{gate}\,x) \odot W_{up}\,x\big),
              \qquad \mathrm{SiLU}(z) = z\,\sigma(z)

    The weights are stored as ``nn.Linear`` stores them, ``(out_features, in_features)``:
    ``w_gate``, ``w_up``: ``(hidden_dim, dim)``; ``w_down``: ``(dim, hidden_dim)``; so
    :math:`W x` is ``F.linear(x, W)`` (``x @ W.T``). ``x``: ``(..., dim)``; returns ``(..., dim)``.
    """
    if w_gate.shape != w_up.shape or w_down.shape != w_gate.shape[::-1] or x.shape[-1] != w_gate.shape[1]:
        raise ValueError(
            f"x (..., {x.shape[-1]}), w_gate {tuple(w_gate.shape)}, w_up {tuple(w_up.shape)} and "
            f"w_down {tuple(w_down.shape)} do not fit: expected (hidden_dim, dim), (hidden_dim, dim) "
            "and (dim, hidden_dim), nn.Linear's (out_features, in_features) layout"
        )
    gate = F.silu(F.linear(x, w_gate))  # (..., hidden_dim)
    up = F.linear(x, w_up)  # (..., hidden_dim)
    return F.linear(gate * up, w_down)  # (..., dim)


class SwiGLU(nn.Module):
    r""":func:`swiglu` with its three bias-free projections as ``nn.Linear`` layers.

    ``forward`` calls the layers themselves rather than passing their weights to
    :func:`swiglu`, so that a wrapped projection (chapter 09's LoRA) takes part.
    ``hidden_dim`` is usually about :math:`\frac{8}{3}` of ``dim``, so that the three
    matrices hold as many parameters as a classic two-matrix MLP with a 4x hidden layer.
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (..., dim)


def causal_mask(q_len: int, kv_len: int | None = None, device=None) -> torch.Tensor:
    """Which keys each query may attend to: ``(q_len, kv_len)``, True = allowed.

    The queries are the *last* ``q_len`` of ``kv_len`` positions (with a KV cache the keys
    include earlier tokens), so query ``i`` sits at position ``kv_len - q_len + i`` and
    sees every key at or before it. ``kv_len=None`` means ``kv_len = q_len`` (no cache).
    Boolean, as ``scaled_dot_product_attention`` expects.
    """
    kv_len = q_len if kv_len is None else kv_len
    if kv_len < q_len:
        raise ValueError(f"kv_len ({kv_len}) must be at least q_len ({q_len}): the keys include the queries")
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]  # (q_len, 1)
    k_pos = torch.arange(kv_len, device=device)[None, :]  # (1, kv_len)
    return k_pos <= q_pos
