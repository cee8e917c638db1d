"""Wrong answers to chapter 02's checkpoints, as learners write them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import mistake

# ---------------------------------------------------------------------------- 02.rmsnorm


@mistake("02.rmsnorm", "mean_subtracted")
def rms_norm_as_layer_norm(x, weight, eps):
    x32 = x.float()
    centred = x32 - x32.mean(-1, keepdim=True)  # LayerNorm's centring
    return weight * (centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@mistake("02.rmsnorm", "mean_subtracted")
def rms_norm_with_f_layer_norm(x, weight, eps):
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype) * weight


@mistake("02.rmsnorm", "std")
def rms_norm_with_std(x, weight, eps):
    x32 = x.float()
    return weight * (x32 / torch.sqrt(x32.var(-1, keepdim=True) + eps)).to(x.dtype)  # Bessel: d - 1


@mistake("02.rmsnorm", "norm")
def rms_norm_divides_by_the_norm(x, weight, eps):
    x32 = x.float()
    return weight * (x32 / (x32.norm(dim=-1, keepdim=True) + eps)).to(x.dtype)  # forgot / sqrt(d)


@mistake("02.rmsnorm", "eps")
def rms_norm_eps_outside_the_root(x, weight, eps):
    x32 = x.float()
    return weight * (x32 / (x32.pow(2).mean(-1, keepdim=True).sqrt() + eps)).to(x.dtype)


@mistake("02.rmsnorm", "eps_arg")
def rms_norm_ignores_eps(x, weight, eps):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)


@mistake("02.rmsnorm", "wrong_dim")
def rms_norm_over_everything(x, weight, eps):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean() + eps)).to(x.dtype)


@mistake("02.rmsnorm", "wrong_dim")
def rms_norm_over_dim_1(x, weight, eps):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(1, keepdim=True) + eps)).to(x.dtype)


@mistake("02.rmsnorm", "keepdim")
def rms_norm_without_keepdim(x, weight, eps):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1) + eps)).to(x.dtype)


@mistake("02.rmsnorm", "weight")
def rms_norm_without_gain(x, weight, eps):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@mistake("02.rmsnorm", "cast_back")
def rms_norm_returns_float32(x, weight, eps):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps))


@mistake("02.rmsnorm", "float32")
def rms_norm_in_input_precision(x, weight, eps):
    return weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


@mistake("02.rmsnorm", "gain_order")
def rms_norm_gain_before_the_cast(x, weight, eps):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


@mistake("02.rmsnorm", "grad_differs")
def rms_norm_statistics_without_gradient(x, weight, eps):
    x32 = x.float()
    with torch.no_grad():  # "the RMS is just a scale": but the gradient must flow through it
        inv_rms = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (x32 * inv_rms).to(x.dtype)


# -------------------------------------------------------------------------- 02.rope_cache


def _inv_freq(head_dim, theta):
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


@mistake("02.rope_cache", "freq")
def rope_cache_exponent_i_over_d(head_dim, max_seq_len, theta=10000.0):
    inv_freq = 1.0 / theta ** (torch.arange(head_dim // 2, dtype=torch.float32) / head_dim)  # i/d, not 2i/d
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


@mistake("02.rope_cache", "reciprocal")
def rope_cache_without_reciprocal(head_dim, max_seq_len, theta=10000.0):
    freq = theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # theta^(+2i/d)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


@mistake("02.rope_cache", "from_one")
def rope_cache_positions_from_one(head_dim, max_seq_len, theta=10000.0):
    positions = torch.arange(1, max_seq_len + 1, dtype=torch.float32)
    angles = torch.outer(positions, _inv_freq(head_dim, theta))
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


@mistake("02.rope_cache", "swapped")
def rope_cache_returns_sin_first(head_dim, max_seq_len, theta=10000.0):
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), _inv_freq(head_dim, theta))
    angles = torch.cat([angles, angles], dim=-1)
    return angles.sin(), angles.cos()


@mistake("02.rope_cache", "layout")
def rope_cache_interleaved_layout(head_dim, max_seq_len, theta=10000.0):
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), _inv_freq(head_dim, theta))
    angles = angles.repeat_interleave(2, dim=-1)  # [a0, a0, a1, a1, ...]: Meta's pairing
    return angles.cos(), angles.sin()


@mistake("02.rope_cache", "shape")
def rope_cache_not_duplicated(head_dim, max_seq_len, theta=10000.0):
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), _inv_freq(head_dim, theta))
    return angles.cos(), angles.sin()  # (seq, head_dim/2)


@mistake("02.rope_cache", "theta")
def rope_cache_ignores_theta(head_dim, max_seq_len, theta=10000.0):
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), _inv_freq(head_dim, 10000.0))
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


# -------------------------------------------------------------------------- 02.apply_rope


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


@mistake("02.apply_rope", "halves")
def apply_rope_interleaved_pairs(x, cos, sin):
    half = x.shape[-1] // 2
    c, s = cos[None, :, None, :half], sin[None, :, None, :half]
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2)


@mistake("02.apply_rope", "neighbours")
def apply_rope_rotate_every_two(x, cos, sin):
    rotated = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)  # GPT-J's rotate_every_two
    return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]


@mistake("02.apply_rope", "sign")
def apply_rope_sign_flipped(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([x2, -x1], dim=-1)  # turns backwards
    return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]


@mistake("02.apply_rope", "minus")
def apply_rope_halves_swapped_without_minus(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[None, :, None, :] + torch.cat([x2, x1], dim=-1) * sin[None, :, None, :]


@mistake("02.apply_rope", "cos_sin")
def apply_rope_cos_and_sin_swapped(x, cos, sin):
    return x * sin[None, :, None, :] + _rotate_half(x) * cos[None, :, None, :]


@mistake("02.apply_rope", "axis")
def apply_rope_hf_layout_broadcast(x, cos, sin):
    # Hugging Face's q is (batch, n_heads, seq, head_dim): this broadcasts cos over the heads
    return x * cos[None, None] + _rotate_half(x) * sin[None, None]


@mistake("02.apply_rope", "axis")
def apply_rope_positions_from_heads_axis(x, cos, sin):
    n = x.shape[2]  # meant the sequence length: x.shape[1]
    return x * cos[None, :n, None, :] + _rotate_half(x) * sin[None, :n, None, :]


@mistake("02.apply_rope", "mutated_input")
def apply_rope_in_place(x, cos, sin):
    rotated = _rotate_half(x) * sin[None, :, None, :]
    x.mul_(cos[None, :, None, :])
    return x.add_(rotated)


@mistake("02.apply_rope", "grad_differs")
def apply_rope_rotate_half_in_numpy(x, cos, sin):
    half = x.shape[-1] // 2
    x_np = x.detach().numpy()  # x.numpy() refuses a tensor that requires grad, so: detach
    rotated = torch.from_numpy(np.concatenate([-x_np[..., half:], x_np[..., :half]], axis=-1))
    return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]


# ----------------------------------------------------------------------------- 02.swiglu


@mistake("02.swiglu", "silu")
def swiglu_with_relu(x, w_gate, w_up, w_down):
    return F.linear(F.relu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


@mistake("02.swiglu", "gelu")
def swiglu_with_gelu(x, w_gate, w_up, w_down):
    return F.linear(F.gelu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


@mistake("02.swiglu", "no_activation")
def swiglu_without_activation(x, w_gate, w_up, w_down):
    return F.linear(F.linear(x, w_gate) * F.linear(x, w_up), w_down)


@mistake("02.swiglu", "sigmoid")
def swiglu_with_sigmoid(x, w_gate, w_up, w_down):
    return F.linear(torch.sigmoid(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


@mistake("02.swiglu", "swap")
def swiglu_gate_and_up_swapped(x, w_gate, w_up, w_down):
    return F.linear(F.silu(F.linear(x, w_up)) * F.linear(x, w_gate), w_down)


@mistake("02.swiglu", "product")
def swiglu_silu_of_the_product(x, w_gate, w_up, w_down):
    return F.linear(F.silu(F.linear(x, w_gate) * F.linear(x, w_up)), w_down)


@mistake("02.swiglu", "down")
def swiglu_without_down_projection(x, w_gate, w_up, w_down):
    return F.silu(F.linear(x, w_gate)) * F.linear(x, w_up)


@mistake("02.swiglu", "layout")
def swiglu_weights_not_transposed(x, w_gate, w_up, w_down):
    return (F.silu(x @ w_gate) * (x @ w_up)) @ w_down


@mistake("02.swiglu", "grad_detached")
def swiglu_weights_through_data(x, w_gate, w_up, w_down):
    # .data, as in pre-1.0 PyTorch code: the values, without autograd
    return F.linear(F.silu(F.linear(x, w_gate.data)) * F.linear(x, w_up.data), w_down.data)


# ------------------------------------------------------------------------ 02.causal_mask


@mistake("02.causal_mask", "additive")
def causal_mask_additive_float(q_len, kv_len=None):
    kv_len = q_len if kv_len is None else kv_len
    mask = torch.full((q_len, kv_len), float("-inf"))
    return torch.triu(mask, diagonal=kv_len - q_len + 1)  # 0 where allowed, -inf above


@mistake("02.causal_mask", "bool")
def causal_mask_ones_and_zeros(q_len, kv_len=None):
    kv_len = q_len if kv_len is None else kv_len
    return torch.ones(q_len, kv_len).tril(diagonal=kv_len - q_len)


@mistake("02.causal_mask", "lower")
def causal_mask_upper_triangle(q_len, kv_len=None):
    kv_len = q_len if kv_len is None else kv_len
    return torch.ones(q_len, kv_len, dtype=torch.bool).triu()


@mistake("02.causal_mask", "diagonal")
def causal_mask_strict(q_len, kv_len=None):
    kv_len = q_len if kv_len is None else kv_len
    return torch.ones(q_len, kv_len, dtype=torch.bool).tril(diagonal=kv_len - q_len - 1)


@mistake("02.causal_mask", "offset")
def causal_mask_ignores_the_cache(q_len, kv_len=None):
    kv_len = q_len if kv_len is None else kv_len
    return torch.ones(q_len, kv_len, dtype=torch.bool).tril()  # query i at position i


@mistake("02.causal_mask", "inverted")
def causal_mask_true_means_masked(q_len, kv_len=None):
    kv_len = q_len if kv_len is None else kv_len
    return torch.ones(q_len, kv_len, dtype=torch.bool).triu(diagonal=kv_len - q_len + 1)


@mistake("02.causal_mask", "transposed")
def causal_mask_keys_as_rows(q_len, kv_len=None):
    kv_len = q_len if kv_len is None else kv_len
    q_pos = torch.arange(kv_len - q_len, kv_len)
    k_pos = torch.arange(kv_len)
    return q_pos[None, :] >= k_pos[:, None]  # (kv_len, q_len)


@mistake("02.causal_mask", "default_kv")
def causal_mask_needs_kv_len(q_len, kv_len=None):
    return torch.ones(q_len, kv_len, dtype=torch.bool).tril(diagonal=kv_len - q_len)


@mistake("02.causal_mask", "bool")
def causal_mask_of_int64_ones(q_len, kv_len=None):
    # the learner thought a 0/1 mask is a mask: ones and zeros in torch.ones' int64, not booleans
    kv_len = q_len if kv_len is None else kv_len
    return torch.ones(q_len, kv_len, dtype=torch.long).tril(diagonal=kv_len - q_len)


@mistake("02.causal_mask", "bool")
def causal_mask_of_uint8(q_len, kv_len=None):
    # the learner thought uint8, the old PyTorch mask dtype, is as good as bool
    kv_len = q_len if kv_len is None else kv_len
    return torch.tril(torch.ones(q_len, kv_len, dtype=torch.uint8), diagonal=kv_len - q_len)
