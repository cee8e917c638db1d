"""The reference building blocks (solutions/layers.py), each against an independent computation.

Independent means written another way: loops over scalars in float64, 2x2 rotation matrices,
complex numbers, PyTorch's own ``F.rms_norm`` / ``nn.RMSNorm`` and
``F.scaled_dot_product_attention``, and Hugging Face's ``apply_rotary_pos_emb`` transcribed
in its own (batch, heads, seq, head_dim) layout. Tolerances are stated per test: 1e-6 against
float64 for float32 results of a few operations, 1e-5 where sums of products are involved.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from solutions.layers import (
    RMSNorm,
    SwiGLU,
    apply_rope,
    apply_rope_interleaved,
    causal_mask,
    rms_norm,
    rope_cache,
    rotate_half,
    swiglu,
)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ RMSNorm

def test_rms_norm_matches_a_float64_loop():
    x = torch.randn(2, 3, 7, generator=generator(1)) * 3 + 0.5
    w = torch.randn(7, generator=generator(2))
    out = rms_norm(x, w, 1e-5)
    for b in range(2):
        for t in range(3):
            row = [float(v) for v in x[b, t]]
            rms = math.sqrt(sum(v * v for v in row) / len(row) + 1e-5)
            for i, v in enumerate(row):
                assert abs(float(out[b, t, i]) - float(w[i]) * v / rms) < 1e-5


def test_rms_norm_matches_pytorch():
    x = torch.randn(4, 5, 16, generator=generator(3))
    w = torch.randn(16, generator=generator(4))
    torch.testing.assert_close(rms_norm(x, w, 1e-6), F.rms_norm(x, (16,), w, 1e-6), rtol=1e-6, atol=1e-6)
    module = nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        module.weight.copy_(w)
        torch.testing.assert_close(rms_norm(x, w, 1e-6), module(x), rtol=1e-6, atol=1e-6)


def test_rms_norm_does_not_subtract_the_mean():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])
    out = rms_norm(x, torch.ones(4), 0.0)
    assert (out > 0).all()
    torch.testing.assert_close(out, x / math.sqrt((1 + 4 + 9 + 36) / 4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rms_norm_keeps_low_precision_dtypes_and_does_not_overflow(dtype):
    x = torch.tensor([[300.0, -500.0, 700.0, -200.0]], dtype=dtype)  # x**2 > 65504, float16's max
    out = rms_norm(x, torch.ones(4, dtype=dtype), 1e-6)
    assert out.dtype == dtype and torch.isfinite(out).all()
    expected = x.double() / x.double().pow(2).mean().sqrt()
    torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)  # low-precision rounding


def test_rms_norm_module_has_hugging_face_names_and_calls_rms_norm():
    norm = RMSNorm(6, eps=1e-5)
    assert list(norm.state_dict()) == ["weight"] and torch.equal(norm.weight, torch.ones(6))
    with torch.no_grad():
        norm.weight.copy_(torch.arange(6.0))
        x = torch.randn(3, 6, generator=generator(5))
        assert torch.equal(norm(x), rms_norm(x, norm.weight, 1e-5))


def test_rms_norm_refuses_a_weight_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"weight must be \(8,\)"):
        rms_norm(torch.ones(2, 8), torch.ones(4), 1e-6)


# ----------------------------------------------------------------------------- RoPE cache

@pytest.mark.parametrize("theta", [10000.0, 500000.0, 1.0])
def test_rope_cache_matches_the_formula_in_float64(theta):
    head_dim, seq = 8, 12
    cos, sin = rope_cache(head_dim, seq, theta)
    assert cos.shape == sin.shape == (seq, head_dim)
    for m in range(seq):
        for i in range(head_dim // 2):
            angle = m * theta ** (-2 * i / head_dim)
            for column in (i, i + head_dim // 2):  # rotate-half layout: each angle twice
                assert abs(float(cos[m, column]) - math.cos(angle)) < 1e-6
                assert abs(float(sin[m, column]) - math.sin(angle)) < 1e-6


def test_rope_cache_position_zero_is_not_rotated():
    cos, sin = rope_cache(16, 3)
    assert torch.equal(cos[0], torch.ones(16)) and torch.equal(sin[0], torch.zeros(16))


def test_rope_cache_rows_are_the_same_for_any_length():
    """A longer table extends a shorter one: decoding can slice the rows it needs."""
    short, long = rope_cache(8, 5), rope_cache(8, 50)
    assert torch.equal(short[0], long[0][:5]) and torch.equal(short[1], long[1][:5])


def test_rope_cache_refuses_an_odd_head_dim():
    with pytest.raises(ValueError, match="head_dim must be even"):
        rope_cache(7, 4)


# ---------------------------------------------------------------------------- apply RoPE

def test_rotate_half():
    x = torch.arange(6.0)
    assert torch.equal(rotate_half(x), torch.tensor([-3.0, -4.0, -5.0, 0.0, 1.0, 2.0]))


def test_apply_rope_is_a_2x2_rotation_of_pairs_i_and_i_plus_half():
    head_dim, seq, start = 6, 4, 3
    x = torch.randn(2, seq, 3, head_dim, generator=generator(6))
    cos, sin = rope_cache(head_dim, start + seq, 10000.0)
    out = apply_rope(x, cos[start:], sin[start:])
    half = head_dim // 2
    for t in range(seq):
        for i in range(half):
            angle = (start + t) * 10000.0 ** (-2 * i / head_dim)
            rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
            pair = x[:, t, :, [i, i + half]].double()  # (batch, heads, 2)
            expected = pair @ rotation.T
            torch.testing.assert_close(out[:, t, :, [i, i + half]].double(), expected, rtol=1e-5, atol=1e-5)


def test_apply_rope_matches_hugging_face_formula_in_its_own_layout():
    """transformers' apply_rotary_pos_emb, transcribed: q is (batch, heads, seq, head_dim)."""
    def hf_rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    def hf_apply_rotary_pos_emb(q, cos, sin, unsqueeze_dim=1):
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return (q * cos) + (hf_rotate_half(q) * sin)

    q = torch.randn(2, 4, 5, 16, generator=generator(7))  # (batch, heads, seq, head_dim)
    cos, sin = rope_cache(16, 5, 500000.0)
    theirs = hf_apply_rotary_pos_emb(q, cos[None].expand(2, -1, -1), sin[None].expand(2, -1, -1))
    ours = apply_rope(q.transpose(1, 2), cos, sin).transpose(1, 2)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_apply_rope_scores_depend_only_on_relative_position():
    head_dim, n = 32, 40
    q, k = torch.randn(2, head_dim, generator=generator(8)).double()
    cos, sin = (t.double() for t in rope_cache(head_dim, n))
    Q = apply_rope(q.expand(1, n, 1, head_dim), cos, sin)[0, :, 0]
    K = apply_rope(k.expand(1, n, 1, head_dim), cos, sin)[0, :, 0]
    scores = Q @ K.T
    for offset in range(-n + 1, n):
        diagonal = scores.diagonal(offset)
        # 1e-5: the tables' angles are float32, rounded by up to m * 1e-7 radian
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(Q.norm(dim=-1), q.norm().expand(n))  # rotations keep lengths


def test_apply_rope_keeps_dtype_and_does_not_modify_its_input():
    x = torch.randn(1, 3, 2, 8, generator=generator(9)).to(torch.bfloat16)
    before = x.clone()
    out = apply_rope(x, *rope_cache(8, 3))
    assert out.dtype == torch.bfloat16 and torch.equal(x, before)


def test_apply_rope_refuses_tables_of_the_wrong_shape():
    x = torch.randn(1, 3, 2, 8)
    cos, sin = rope_cache(8, 10)
    with pytest.raises(ValueError, match=r"cos\[start:start \+ seq\]"):
        apply_rope(x, cos, sin)  # the whole table, not the rows of x's positions
    with pytest.raises(ValueError, match=r"\(batch, seq, n_heads, head_dim\)"):
        apply_rope(x[0], cos[:3], sin[:3])


def test_interleaved_rope_matches_metas_complex_formulation():
    """Meta's llama/model.py: view neighbouring pairs as complex numbers, multiply by e^{i m theta}."""
    head_dim, seq = 8, 6
    x = torch.randn(2, seq, 3, head_dim, generator=generator(10))
    freqs = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2)[: head_dim // 2].double() / head_dim)
    freqs_cis = torch.polar(torch.ones(seq, head_dim // 2, dtype=torch.float64), torch.outer(torch.arange(seq).double(), freqs))
    x_complex = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
    expected = torch.view_as_real(x_complex * freqs_cis[None, :, None, :]).flatten(3)
    torch.testing.assert_close(apply_rope_interleaved(x, *rope_cache(head_dim, seq)).double(), expected, rtol=1e-5, atol=1e-5)


def test_the_two_conventions_differ_by_a_permutation_of_each_head():
    head_dim = 8
    x = torch.randn(2, 5, 3, head_dim, generator=generator(11))
    cos, sin = rope_cache(head_dim, 5)
    order = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    torch.testing.assert_close(apply_rope_interleaved(x, cos, sin)[..., order], apply_rope(x[..., order], cos, sin))
    assert not torch.allclose(apply_rope_interleaved(x, cos, sin), apply_rope(x, cos, sin))


# ------------------------------------------------------------------------------- SwiGLU

def test_swiglu_matches_an_explicit_computation():
    dim, hidden = 6, 10
    x = torch.randn(2, 3, dim, generator=generator(12)).double()
    w_gate, w_up = torch.randn(2, hidden, dim, generator=generator(13)).double()
    w_down = torch.randn(dim, hidden, generator=generator(14)).double()
    gate = x @ w_gate.T
    expected = (gate / (1 + torch.exp(-gate)) * (x @ w_up.T)) @ w_down.T
    torch.testing.assert_close(swiglu(x, w_gate, w_up, w_down), expected, rtol=1e-10, atol=1e-10)


def test_swiglu_module_has_hugging_face_names_and_equals_swiglu():
    torch.manual_seed(0)
    ffn = SwiGLU(8, 20)
    shapes = {name: tuple(t.shape) for name, t in ffn.state_dict().items()}
    assert shapes == {"gate_proj.weight": (20, 8), "up_proj.weight": (20, 8), "down_proj.weight": (8, 20)}
    x = torch.randn(2, 4, 8, generator=generator(15))
    with torch.no_grad():
        torch.testing.assert_close(ffn(x), swiglu(x, ffn.gate_proj.weight, ffn.up_proj.weight, ffn.down_proj.weight))


def test_swiglu_refuses_weights_in_the_wrong_layout():
    x = torch.randn(2, 6)
    with pytest.raises(ValueError, match=r"\(out_features, in_features\)"):
        swiglu(x, torch.randn(6, 10), torch.randn(6, 10), torch.randn(10, 6))  # transposed


# -------------------------------------------------------------------------- causal mask

@pytest.mark.parametrize("q_len,kv_len", [(1, 1), (4, 4), (2, 5), (1, 6), (3, None), (0, 0)])
def test_causal_mask_matches_a_loop(q_len, kv_len):
    mask = causal_mask(q_len, kv_len)
    total = q_len if kv_len is None else kv_len
    assert mask.dtype == torch.bool and mask.shape == (q_len, total)
    for i in range(q_len):
        for j in range(total):
            assert bool(mask[i, j]) == (j <= total - q_len + i)


def test_causal_mask_in_attention_equals_pytorchs_is_causal_and_a_kv_cache():
    q, k, v = torch.randn(3, 1, 2, 6, 4, generator=generator(16))  # (batch, heads, seq, head_dim)
    full = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(6))
    torch.testing.assert_close(full, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    last = F.scaled_dot_product_attention(q[:, :, 4:], k, v, attn_mask=causal_mask(2, 6))
    torch.testing.assert_close(last, full[:, :, 4:])


def test_causal_mask_refuses_fewer_keys_than_queries():
    with pytest.raises(ValueError, match="at least q_len"):
        causal_mask(5, 3)


# ------------------------------------------------- the checks accept right answers written another way

def _rms_norm_in_float64(x, weight, eps):
    x64 = x.double()
    return weight * (x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rope_cache_in_float64(head_dim, max_seq_len, theta=10000.0):
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    angles = torch.arange(max_seq_len, dtype=torch.float64)[:, None] * theta ** -exponents[None, :]
    angles = angles.repeat(1, 2)
    return angles.cos().float(), angles.sin().float()


def _apply_rope_with_half_tables(x, cos, sin):
    half = x.shape[-1] // 2  # the two halves of each table are equal: read one
    c, s = cos[None, :, None, :half], sin[None, :, None, :half]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def _swiglu_with_matmul(x, w_gate, w_up, w_down):
    gate = x @ w_gate.T
    return (gate * torch.sigmoid(gate) * (x @ w_up.T)) @ w_down.T


def _causal_mask_with_tril(q_len, kv_len=None):
    kv_len = q_len if kv_len is None else kv_len
    return torch.ones(q_len, kv_len, dtype=torch.bool).tril(diagonal=kv_len - q_len)


@pytest.mark.parametrize("checkpoint_id, answer", [
    ("02.rmsnorm", _rms_norm_in_float64),
    ("02.rope_cache", _rope_cache_in_float64),
    ("02.apply_rope", _apply_rope_with_half_tables),  # its gradient probe looks at x, not at the tables
    ("02.swiglu", _swiglu_with_matmul),
    ("02.causal_mask", _causal_mask_with_tril),
], ids=lambda v: getattr(v, "__name__", v))
def test_the_checks_accept_right_answers_written_another_way(checkpoint_id, answer):
    from autograder import _hidden_seed
    from autograder.core import lookup, run
    from autograder.fixtures import load_registry

    for result in (run(lookup(checkpoint_id), answer), run(lookup(checkpoint_id), answer, seed=_hidden_seed()),
                   run(load_registry()[checkpoint_id], answer)):
        assert result.passed, result.report()
