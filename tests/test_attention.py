"""The reference attention (solutions/attention.py), each piece against an independent
computation: explicit loops over heads and positions, PyTorch's fused kernel, and the full
forward pass for every decoding path. float32, compared within TOL."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from solutions.attention import (
    Attention,
    KVCache,
    attention,
    check_config,
    gqa_decode,
    gqa_forward,
    kv_cache_bytes,
    latent_cache_bytes,
    mla_forward,
    project_qkv,
    repeat_kv,
)
from solutions.layers import apply_rope, causal_mask, rope_cache

TOL = 1e-5


def close(a, b, tol=TOL):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def weights_for(layer: Attention) -> dict:
    return {name: p.detach() for name, p in layer.weights().items()}


def loop_attention(x, w, cos, sin, n_heads, n_kv_heads):
    """Causal GQA one query at a time, one head at a time, from the formulas."""
    batch, seq, _ = x.shape
    head_dim = w["q_proj"].shape[0] // n_heads
    group = n_heads // n_kv_heads
    q = apply_rope((x @ w["q_proj"].T).view(batch, seq, n_heads, head_dim), cos, sin)
    k = apply_rope((x @ w["k_proj"].T).view(batch, seq, n_kv_heads, head_dim), cos, sin)
    v = (x @ w["v_proj"].T).view(batch, seq, n_kv_heads, head_dim)
    out = torch.zeros(batch, seq, n_heads, head_dim)
    for b in range(batch):
        for h in range(n_heads):
            j = h // group  # the KV head of query head h
            for i in range(seq):
                scores = torch.stack([q[b, i, h] @ k[b, t, j] for t in range(i + 1)]) / math.sqrt(head_dim)
                out[b, i, h] = torch.softmax(scores, dim=0) @ v[b, : i + 1, j]
    return out.reshape(batch, seq, n_heads * head_dim) @ w["o_proj"].T


# ------------------------------------------------------------------------------ attention

@pytest.mark.parametrize("mask_kind", ["none", "causal", "offset", "random"])
def test_attention_equals_scaled_dot_product_attention(mask_kind):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 4, 8, generator=g)
    k, v = torch.randn(2, 3, 6, 8, generator=g), torch.randn(2, 3, 6, 8, generator=g)
    mask = {
        "none": None,
        "causal": causal_mask(4, 4),
        "offset": causal_mask(4, 6),
        "random": (torch.rand(4, 6, generator=g) < 0.5) | torch.eye(4, 6, dtype=torch.bool),
    }[mask_kind]
    if mask_kind == "causal":
        k, v = k[:, :, :4], v[:, :, :4]
    close(attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_attention_weights_are_a_softmax_over_allowed_keys():
    q, k = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 5, 4)
    mask = causal_mask(3, 5)
    weights = attention(q, k, torch.eye(5)[None, None], mask)[0, 0]  # v = I gives the weights
    close(weights.sum(-1), torch.ones(3))
    assert (weights[~mask] == 0).all()
    expected = torch.softmax((q[0, 0] @ k[0, 0].T / 2).masked_fill(~mask, -math.inf), dim=-1)
    close(weights, expected)


# ------------------------------------------------------------------------------ repeat_kv

@pytest.mark.parametrize("n_kv_heads, n_rep", [(1, 4), (2, 3), (4, 1), (3, 2)])
def test_repeat_kv_groups_consecutive_query_heads(n_kv_heads, n_rep):
    x = torch.randn(2, n_kv_heads, 5, 4)
    out = repeat_kv(x, n_rep)
    assert out.shape == (2, n_kv_heads * n_rep, 5, 4)
    for h in range(n_kv_heads * n_rep):
        assert torch.equal(out[:, h], x[:, h // n_rep])
    assert torch.equal(out, x.repeat_interleave(n_rep, dim=1))


# ----------------------------------------------------------------------------- the layer

@pytest.mark.parametrize("n_kv_heads", [8, 4, 2, 1])
def test_gqa_forward_matches_per_head_loops(n_kv_heads):
    torch.manual_seed(n_kv_heads)
    layer = Attention(32, 8, n_kv_heads)
    x = torch.randn(2, 5, 32)
    cos, sin = rope_cache(layer.head_dim, 5)
    w = weights_for(layer)
    close(gqa_forward(x, w, cos, sin, causal_mask(5), 8, n_kv_heads), loop_attention(x, w, cos, sin, 8, n_kv_heads))


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_gqa_is_mha_with_each_kv_head_copied_to_its_group(n_kv_heads):
    """GQA with n_kv_heads equals MHA whose k/v projections repeat each KV head's rows."""
    torch.manual_seed(0)
    gqa = Attention(32, 4, n_kv_heads)
    mha = Attention(32, 4)
    g, head_dim = 4 // n_kv_heads, gqa.head_dim
    with torch.no_grad():
        for name in ("q_proj", "o_proj"):
            getattr(mha, name).weight.copy_(getattr(gqa, name).weight)
        for name in ("k_proj", "v_proj"):
            rows = getattr(gqa, name).weight.view(n_kv_heads, head_dim, 32)
            getattr(mha, name).weight.copy_(rows.repeat_interleave(g, dim=0).reshape(4 * head_dim, 32))
        x = torch.randn(1, 6, 32)
        cos, sin = rope_cache(head_dim, 6)
        close(gqa(x, cos, sin, causal_mask(6)), mha(x, cos, sin, causal_mask(6)))


def test_module_explicit_and_sdpa_paths_agree():
    torch.manual_seed(0)
    layer = Attention(48, 6, 2)
    x = torch.randn(3, 7, 48)
    cos, sin = rope_cache(layer.head_dim, 7)
    with torch.no_grad():
        explicit = layer(x, cos, sin, causal_mask(7))
        layer.sdpa = True
        close(layer(x, cos, sin, causal_mask(7)), explicit)


def test_module_uses_hugging_face_llama_names_and_shapes():
    layer = Attention(64, 8, 2)
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == {
        "q_proj.weight": (64, 64), "k_proj.weight": (16, 64), "v_proj.weight": (16, 64), "o_proj.weight": (64, 64),
    }


def test_gradients_reach_every_projection():
    layer = Attention(16, 4, 2)
    cos, sin = rope_cache(4, 3)
    layer(torch.randn(2, 3, 16), cos, sin, causal_mask(3)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_values_are_not_rotated():
    x = torch.randn(1, 4, 16)
    w = weights_for(Attention(16, 2, 1))
    cos, sin = rope_cache(8, 4)
    _, _, v = project_qkv(x, w, cos, sin, 2, 1)
    close(v, (x @ w["v_proj"].T).view(1, 4, 1, 8).transpose(1, 2))


@pytest.mark.parametrize("dim, n_heads, n_kv_heads, fix", [
    (64, 6, 6, "n_heads could be one of"),
    (64, 8, 3, "n_kv_heads could be one of [1, 2, 4, 8]"),
    (64, 8, 16, "must be a multiple of n_kv_heads"),
    (40, 8, 8, "must be even"),
    (64, 0, 1, "positive int"),
    (64, 8, 2.0, "positive int"),
])
def test_bad_configuration_says_what_to_change(dim, n_heads, n_kv_heads, fix):
    with pytest.raises(ValueError) as error:
        Attention(dim, n_heads, n_kv_heads)
    assert fix in str(error.value)


def test_check_config_returns_head_dim():
    assert check_config(8192, 64, 8) == 128  # LLaMA-2 70B


# ------------------------------------------------------------------------------ KV cache

@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("chunks", [[1] * 9, [4, 1, 1, 3], [9]])
def test_decoding_equals_the_full_forward_pass(n_kv_heads, chunks):
    torch.manual_seed(1)
    layer = Attention(32, 4, n_kv_heads)
    w = weights_for(layer)
    x = torch.randn(2, 9, 32)
    cos, sin = rope_cache(layer.head_dim, 16)
    full = gqa_forward(x, w, cos[:9], sin[:9], causal_mask(9), 4, n_kv_heads)
    k_cache = v_cache = torch.zeros(2, n_kv_heads, 0, layer.head_dim)
    outputs, start = [], 0
    for n in chunks:
        out, k_cache, v_cache = gqa_decode(x[:, start : start + n], w, cos, sin, k_cache, v_cache, 4, n_kv_heads)
        outputs.append(out)
        start += n
    close(torch.cat(outputs, dim=1), full)
    assert k_cache.shape == v_cache.shape == (2, n_kv_heads, 9, layer.head_dim)
    _, k, v = project_qkv(x, w, cos[:9], sin[:9], 4, n_kv_heads)  # the cache is rotated keys, values
    close(k_cache, k)
    close(v_cache, v)


def test_module_with_a_kv_cache_equals_the_full_forward_pass():
    torch.manual_seed(2)
    layer = Attention(32, 8, 2, sdpa=True)
    x = torch.randn(1, 6, 32)
    cos, sin = rope_cache(layer.head_dim, 6)
    with torch.no_grad():
        full = layer(x, cos, sin, causal_mask(6))
        cache = KVCache()
        steps = []
        for start, end in [(0, 3), (3, 4), (4, 5), (5, 6)]:
            past = len(cache)
            steps.append(layer(x[:, start:end], cos[start:end], sin[start:end], causal_mask(end - past, end), cache))
    close(torch.cat(steps, dim=1), full)
    assert len(cache) == 6


# ------------------------------------------------------------------------- cache in bytes

def test_kv_cache_bytes_of_llama_2_70b():
    assert kv_cache_bytes(80, 8, 128, 4096) == 1.25 * 2**30
    assert kv_cache_bytes(80, 64, 128, 4096) == 10 * 2**30
    assert kv_cache_bytes(80, 8, 128, 4096, batch=32, bytes_per_value=1) == 20 * 2**30


def test_latent_cache_of_deepseek_v2_is_gqa_with_2_25_kv_heads():
    assert latent_cache_bytes(60, 512, 64, 1) * 1.0 == kv_cache_bytes(60, 1, 128, 1) * 2.25


# ----------------------------------------------------------------------------------- MLA

def mla_weights(g, dim, n_heads, head_dim, rope_dim, rank):
    return {
        "q_proj": torch.randn(n_heads * (head_dim + rope_dim), dim, generator=g) / dim**0.5,
        "kv_a_proj_with_mqa": torch.randn(rank + rope_dim, dim, generator=g) / dim**0.5,
        "kv_b_proj": torch.randn(n_heads * 2 * head_dim, rank, generator=g) / rank**0.5,
        "o_proj": torch.randn(dim, n_heads * head_dim, generator=g) / (n_heads * head_dim) ** 0.5,
    }


def loop_mla(x, w, cos, sin, n_heads, head_dim, rope_dim):
    """MLA from the paper's equations, one head and one query at a time."""
    batch, seq, _ = x.shape
    rank = w["kv_a_proj_with_mqa"].shape[0] - rope_dim
    q = (x @ w["q_proj"].T).view(batch, seq, n_heads, head_dim + rope_dim)
    q_c, q_r = q[..., :head_dim], apply_rope(q[..., head_dim:], cos, sin)
    a = x @ w["kv_a_proj_with_mqa"].T
    c, k_r = a[..., :rank], apply_rope(a[..., None, rank:], cos, sin)[:, :, 0]
    up = (c @ w["kv_b_proj"].T).view(batch, seq, n_heads, 2 * head_dim)
    k_c, v = up[..., :head_dim], up[..., head_dim:]
    out = torch.zeros(batch, seq, n_heads, head_dim)
    for b in range(batch):
        for h in range(n_heads):
            for i in range(seq):
                s = torch.stack([q_c[b, i, h] @ k_c[b, t, h] + q_r[b, i, h] @ k_r[b, t] for t in range(i + 1)])
                out[b, i, h] = torch.softmax(s / math.sqrt(head_dim + rope_dim), dim=0) @ v[b, : i + 1, h]
    return out.reshape(batch, seq, -1) @ w["o_proj"].T, torch.cat([c, k_r], dim=-1)


def test_mla_matches_the_equations_and_caches_the_latent():
    g = torch.Generator().manual_seed(3)
    w = mla_weights(g, 16, 3, 4, 2, 5)
    x = torch.randn(2, 5, 16, generator=g)
    cos, sin = rope_cache(2, 8)
    out, cache = mla_forward(x, w, cos, sin, torch.zeros(2, 0, 7), 3, 2)
    expected_out, expected_cache = loop_mla(x, w, cos[:5], sin[:5], 3, 4, 2)
    close(out, expected_out)
    close(cache, expected_cache)


def test_mla_decoding_equals_the_full_forward_pass():
    g = torch.Generator().manual_seed(4)
    w = mla_weights(g, 16, 2, 4, 4, 6)
    x = torch.randn(1, 7, 16, generator=g)
    cos, sin = rope_cache(4, 8)
    full, full_cache = mla_forward(x, w, cos, sin, torch.zeros(1, 0, 10), 2, 4)
    cache, outputs = torch.zeros(1, 0, 10), []
    for start, end in [(0, 3), (3, 4), (4, 7)]:
        out, cache = mla_forward(x[:, start:end], w, cos, sin, cache, 2, 4)
        outputs.append(out)
    close(torch.cat(outputs, dim=1), full)
    close(cache, full_cache)
