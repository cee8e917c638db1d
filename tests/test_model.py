"""The model reference (solutions/model.py), each component against an independent computation.

Tolerances: float32 activations within 1e-5 (absolute and relative), logits of whole models
within 1e-5, parameter counts and names exactly. The independent computations are written
the long way: attention head by head with an explicit lower-triangular softmax, the SwiGLU
and RMSNorm formulas, ``sum(p.numel())`` over the built module for parameter counts.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import nbformat
import pytest
import torch
import torch.nn.functional as F

from autograder.notebooks import rendered_source, source_path
from solutions.attention import KVCache
from solutions.layers import rope_cache
from solutions.model import (
    Block,
    LlamaConfig,
    Transformer,
    block_forward,
    hf_key,
    llama_logits,
    param_count,
)

TOL = dict(atol=1e-5, rtol=1e-5)


def tiny(**overrides) -> LlamaConfig:
    base = dict(vocab_size=23, dim=16, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=24, max_seq_len=32)
    return LlamaConfig(**(base | overrides))


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights everywhere (norm gains included), so that no term hides."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim == 1 else 1 / math.sqrt(p.shape[-1])) + (1.0 if p.ndim == 1 else 0.0))
    return model


# ------------------------------------------------------------------ independent computations

def slow_rms(x, g, eps):
    return g * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def slow_rope(x, pos, theta):
    """x: (seq, head_dim); rotate-half pairs (i, i + d/2) by pos * theta^(-2i/d)."""
    d = x.shape[-1]
    out = x.clone()
    for m in range(x.shape[0]):
        for i in range(d // 2):
            a = (pos[m]) * theta ** (-2 * i / d)
            x1, x2 = x[m, i], x[m, i + d // 2]
            out[m, i] = x1 * math.cos(a) - x2 * math.sin(a)
            out[m, i + d // 2] = x1 * math.sin(a) + x2 * math.cos(a)
    return out


def slow_block(x, w, n_heads, n_kv_heads, eps, theta):
    """One sequence x (seq, dim): heads one at a time, softmax over keys j <= i."""
    seq, dim = x.shape
    hd = dim // n_heads
    a = slow_rms(x, w["input_layernorm.weight"], eps)
    q, k, v = (a @ w[f"self_attn.{n}_proj.weight"].T for n in "qkv")
    heads = []
    for h in range(n_heads):
        kv = h // (n_heads // n_kv_heads)
        qh = slow_rope(q[:, h * hd:(h + 1) * hd], list(range(seq)), theta)
        kh = slow_rope(k[:, kv * hd:(kv + 1) * hd], list(range(seq)), theta)
        vh = v[:, kv * hd:(kv + 1) * hd]
        scores = qh @ kh.T / math.sqrt(hd)
        scores = scores + torch.triu(torch.full((seq, seq), float("-inf")), diagonal=1)
        heads.append(torch.softmax(scores, -1) @ vh)
    h = x + torch.cat(heads, -1) @ w["self_attn.o_proj.weight"].T
    b = slow_rms(h, w["post_attention_layernorm.weight"], eps)
    gate, up = b @ w["mlp.gate_proj.weight"].T, b @ w["mlp.up_proj.weight"].T
    return h + (gate * torch.sigmoid(gate) * up) @ w["mlp.down_proj.weight"].T


def layer_weights(model: Transformer, i: int) -> dict:
    prefix = f"layers.{i}."
    return {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}


# --------------------------------------------------------------------------------- block

@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_block_forward_against_a_head_by_head_computation(n_kv_heads):
    cfg = tiny(n_kv_heads=n_kv_heads, rope_theta=500.0, norm_eps=1e-3)
    model = randomise(Transformer(cfg), seed=n_kv_heads)
    w = layer_weights(model, 0)
    x = torch.randn(2, 5, cfg.dim, generator=torch.Generator().manual_seed(1))
    cos, sin = rope_cache(cfg.head_dim, 5, cfg.rope_theta)
    got = block_forward(x, w, cos, sin, cfg.n_heads, n_kv_heads, cfg.norm_eps)
    for b in range(2):
        torch.testing.assert_close(got[b], slow_block(x[b], w, cfg.n_heads, n_kv_heads, cfg.norm_eps, cfg.rope_theta), **TOL)
    # the module computes the same
    with torch.no_grad():
        torch.testing.assert_close(model.layers[0](x, cos, sin), got, **TOL)


def test_block_is_the_identity_when_its_sublayers_output_zero():
    model = randomise(Transformer(tiny()))
    w = layer_weights(model, 0)
    w["self_attn.o_proj.weight"] = torch.zeros_like(w["self_attn.o_proj.weight"])
    w["mlp.down_proj.weight"] = torch.zeros_like(w["mlp.down_proj.weight"])
    x = torch.randn(1, 4, 16)
    cos, sin = rope_cache(4, 4)
    assert torch.equal(block_forward(x, w, cos, sin, 4, 2, 1e-5), x)


def test_block_is_causal():
    model = randomise(Transformer(tiny()))
    x = torch.randn(1, 6, 16)
    y = x.clone()
    y[:, 4:] += 1.0  # change the future only
    cos, sin = rope_cache(4, 6)
    with torch.no_grad():
        a, b = model.layers[0](x, cos, sin), model.layers[0](y, cos, sin)
    torch.testing.assert_close(a[:, :4], b[:, :4], **TOL)


# ---------------------------------------------------------------------------------- model

@pytest.mark.parametrize("tied", [False, True])
def test_logits_function_and_module_agree_with_a_slow_forward(tied):
    cfg = tiny(tie_embeddings=tied)
    model = randomise(Transformer(cfg))
    tokens = torch.randint(0, cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(3))
    state = model.state_dict()
    if tied:
        state.pop("lm_head.weight")
        assert model.lm_head.weight is model.embed_tokens.weight
    with torch.no_grad():
        by_module = model(tokens)
        by_function = llama_logits(tokens, state, asdict(cfg))
    x = model.embed_tokens.weight[tokens[1]]
    for i in range(cfg.n_layers):
        x = slow_block(x, layer_weights(model, i), cfg.n_heads, cfg.n_kv_heads, cfg.norm_eps, cfg.rope_theta)
    slow = slow_rms(x, model.norm.weight, cfg.norm_eps) @ model.embed_tokens.weight.T if tied else \
        slow_rms(x, model.norm.weight, cfg.norm_eps) @ model.lm_head.weight.T
    torch.testing.assert_close(by_module, by_function, **TOL)
    torch.testing.assert_close(by_module[1], slow.detach(), **TOL)


@pytest.mark.parametrize("n_experts", [0, 4])
def test_decoding_with_kv_caches_matches_the_full_forward(n_experts):
    cfg = tiny(n_experts=n_experts, top_k=2)
    model = randomise(Transformer(cfg)).eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(tokens)
        caches = model.new_caches()
        parts = [model(tokens[:, :5], caches)] + [model(tokens[:, t:t + 1], caches) for t in range(5, 9)]
    assert all(isinstance(c, KVCache) and len(c) == 9 for c in caches)
    torch.testing.assert_close(torch.cat(parts, 1), full, **TOL)


def test_moe_model_routes_each_token_and_reports_an_aux_loss():
    cfg = tiny(n_experts=4, top_k=2)
    model = randomise(Transformer(cfg))
    tokens = torch.randint(0, cfg.vocab_size, (2, 6))
    logits = model(tokens)
    assert logits.shape == (2, 6, cfg.vocab_size)
    assert model.aux_loss.item() > 0
    (logits.sum() + model.aux_loss).backward()
    assert model.layers[0].mlp.gate.weight.grad is not None


def test_too_long_an_input_says_what_to_change():
    model = Transformer(tiny(max_seq_len=4))
    with pytest.raises(ValueError, match="max_seq_len=4"):
        model(torch.zeros(1, 5, dtype=torch.long))


def test_training_is_deterministic():
    def run():
        torch.manual_seed(0)
        model = Transformer(tiny(n_experts=4))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        tokens = torch.randint(0, 23, (2, 8))
        for _ in range(3):
            logits = model(tokens[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, 23), tokens[:, 1:].reshape(-1)) + 0.01 * model.aux_loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        return loss.item()
    assert run() == run()


# ------------------------------------------------------------------------ parameter count

@pytest.mark.parametrize("overrides", [
    {}, {"tie_embeddings": True}, {"n_kv_heads": 1}, {"n_experts": 4, "top_k": 1}, {"n_experts": 8, "top_k": 2, "tie_embeddings": True},
])
def test_param_count_total_is_what_the_module_holds(overrides):
    cfg = tiny(**overrides)
    model = Transformer(cfg)
    total, active = param_count(cfg)
    assert total == sum(p.numel() for p in model.parameters())  # parameters() counts a tied tensor once
    assert param_count(asdict(cfg)) == (total, active)
    if cfg.n_experts:
        expert = sum(p.numel() for p in model.layers[0].mlp.experts[0].parameters())
        assert total - active == cfg.n_layers * (cfg.n_experts - cfg.top_k) * expert
    else:
        assert active == total


def test_param_count_of_published_models():
    mixtral = dict(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, hidden_dim=14336,
                   n_experts=8, top_k=2)
    total, active = param_count(mixtral)
    assert round(total / 1e9, 1) == 46.7 and round(active / 1e9, 1) == 12.9
    llama2_7b = dict(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, hidden_dim=11008)
    assert param_count(llama2_7b) == (6_738_415_616, 6_738_415_616)  # Meta's 6.7B
    llama3_8b = dict(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, hidden_dim=14336)
    assert param_count(llama3_8b)[0] == 8_030_261_248


# --------------------------------------------------------------------------------- names

@pytest.mark.parametrize("name, key", [
    ("model.embed_tokens.weight", "embed_tokens.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("model.norm.weight", "norm.weight"),
    ("model.layers.11.self_attn.k_proj.weight", "layers.11.self_attn.k_proj.weight"),
    ("model.layers.0.mlp.down_proj.weight", "layers.0.mlp.down_proj.weight"),
    ("model.layers.2.block_sparse_moe.gate.weight", "layers.2.mlp.gate.weight"),
    ("model.layers.2.block_sparse_moe.experts.7.w1.weight", "layers.2.mlp.experts.7.gate_proj.weight"),
    ("model.layers.2.block_sparse_moe.experts.7.w2.weight", "layers.2.mlp.experts.7.down_proj.weight"),
    ("model.layers.2.block_sparse_moe.experts.7.w3.weight", "layers.2.mlp.experts.7.up_proj.weight"),
    ("model.layers.0.self_attn.rotary_emb.inv_freq", None),
])
def test_hf_key(name, key):
    assert hf_key(name) == key


def test_every_mapped_name_is_a_parameter_of_the_model():
    model = Transformer(tiny(n_experts=4))
    names = set(model.state_dict())
    for name in ["model.layers.1.block_sparse_moe.experts.3.w3.weight", "model.layers.0.self_attn.o_proj.weight"]:
        assert hf_key(name) in names


def test_hf_key_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="q_norm.*not a tensor of a Llama or Mixtral"):
        hf_key("model.layers.0.self_attn.q_norm.weight")


# ------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("overrides, message", [
    ({"dim": 18}, r"dim \(18\) must be divisible by n_heads \(4\)"),
    ({"n_kv_heads": 3}, r"n_heads \(4\) must be a multiple of n_kv_heads \(3\)"),
    ({"n_experts": 4, "top_k": 5}, r"top_k \(5\) must be between 1 and n_experts \(4\)"),
    ({"n_experts": -1}, r"n_experts must be an int >= 0"),
    ({"vocab_size": 0}, r"vocab_size must be a positive int"),
    ({"hidden_dim": 2.5}, r"hidden_dim must be a positive int"),
    ({"norm_eps": 0.0}, r"norm_eps must be > 0"),
    ({"rope_theta": -1.0}, r"rope_theta must be > 0"),
    ({"dim": 12, "n_heads": 4, "n_kv_heads": 4}, r"head_dim .* must be even"),
])
def test_config_validation_says_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_config_defaults_n_kv_heads_to_n_heads():
    assert LlamaConfig(vocab_size=5, dim=8, n_layers=1, n_heads=2, hidden_dim=4).n_kv_heads == 2


def test_block_module_is_dense_or_moe():
    from solutions.layers import SwiGLU
    from solutions.moe import MoE

    assert isinstance(Block(tiny()).mlp, SwiGLU)
    assert isinstance(Block(tiny(n_experts=2, top_k=1)).mlp, MoE)


# ------------------------------------------------------------------------------ notebook

def test_notebook_gives_earlier_chapters_code_rendered_from_solutions():
    """The notebook cannot import solutions/: the earlier chapters' functions it builds on
    are rendered into locked preamble cells from their modules, so they cannot drift."""
    nb = nbformat.read(source_path("05_model"), as_version=4)
    given = [c for c in nb.cells if any(":" in n for n in c.metadata.get("course", {}).get("render", []))]
    assert {n.split(":")[0] for c in given for n in c.metadata["course"]["render"]} == {"=solutions.layers", "=solutions.attention"}
    for cell in given:
        assert cell.metadata["course"].get("preamble")
        assert cell.source == rendered_source("solutions.model", cell.metadata["course"]["render"])


@pytest.mark.parametrize("n_experts", [0, 4])
def test_fused_fast_path_equals_the_explicit_modules(n_experts):
    """Block's fused projections and causal SDPA compute what Attention and SwiGLU compute."""
    fast = randomise(Transformer(tiny(n_experts=n_experts)))
    slow = Transformer(tiny(n_experts=n_experts, sdpa=False))
    slow.load_state_dict(fast.state_dict())
    tokens = torch.randint(0, 23, (2, 7), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(fast(tokens), slow(tokens), **TOL)
        x = torch.randn(2, 7, 16)
        cos, sin = rope_cache(4, 7)
        block = fast.layers[0]
        explicit = x + block.self_attn(block.input_layernorm(x), cos, sin, torch.ones(7, 7).tril().bool())
        explicit = explicit + block.mlp(block.post_attention_layernorm(explicit))
        torch.testing.assert_close(block(x, cos, sin), explicit, **TOL)
