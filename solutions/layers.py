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


class RMSNorm(nn.Module):
    r"""Root-mean-square layer norm (Zhang & Sennrich, 2019).

    .. math:: \mathrm{RMSNorm}(x) = \frac{x}{\sqrt{\frac{1}{d}\sum_i x_i^2 + \epsilon}} \odot g

    No mean subtraction and no bias: cheaper than LayerNorm, as good in practice. As in
    LLaMA, the statistics are computed in float32 whatever the input dtype, then cast back
    before the gain ``g`` (``weight``) is applied.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # (..., dim)
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rope_cache(head_dim: int, max_seq_len: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Cosines and sines of RoPE's rotation angles (Su et al., 2021), precomputed once.

    Dimension pair :math:`i` of position :math:`m` is rotated by :math:`m\,\theta^{-2i/d}`:
    low pairs spin fast (local order), high pairs slowly (long range). Returned in the
    *rotate-half* layout used by Hugging Face checkpoints: the ``head_dim / 2`` angles are
    repeated, ``[a_0 .. a_{d/2-1}, a_0 .. a_{d/2-1}]``.

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
    cos = cos[None, :, None, :].to(x.dtype)  # (1, seq, 1, head_dim)
    sin = sin[None, :, None, :].to(x.dtype)
    return x * cos + rotate_half(x) * sin


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


class SwiGLU(nn.Module):
    r"""The gated feed-forward network of LLaMA (Shazeer, 2020):

    .. math:: \mathrm{FFN}(x) = W_{down}\,(\mathrm{SiLU}(W_{gate}\,x) \odot W_{up}\,x)

    Three bias-free projections instead of two; ``hidden_dim`` is usually about
    :math:`\frac{8}{3}` of ``dim`` so that the parameter count matches a 4x MLP.
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
    sees every key at or before it. Boolean, as ``scaled_dot_product_attention`` expects.
    """
    kv_len = q_len if kv_len is None else kv_len
    if kv_len < q_len:
        raise ValueError(f"kv_len ({kv_len}) must be at least q_len ({q_len}): the keys include the queries")
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]  # (q_len, 1)
    k_pos = torch.arange(kv_len, device=device)[None, :]  # (1, kv_len)
    return k_pos <= q_pos
