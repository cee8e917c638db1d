"""Wrong answers to chapter 05's checkpoints, as learners write them.

They call the earlier chapters' functions exactly as the notebook's given code does, so a
mistake in the block's wiring is the only difference from the reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from solutions.attention import gqa_forward
from solutions.layers import causal_mask, rms_norm, rope_cache, swiglu

from . import mistake


def _attn(x, weights, cos, sin, n_heads, n_kv_heads, mask="causal"):
    w = {name: weights[f"self_attn.{name}.weight"] for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
    mask = causal_mask(x.shape[1], device=x.device) if mask == "causal" else None
    return gqa_forward(x, w, cos, sin, mask, n_heads, n_kv_heads)


def _ffn(x, weights):
    return swiglu(x, weights["mlp.gate_proj.weight"], weights["mlp.up_proj.weight"], weights["mlp.down_proj.weight"])


# ------------------------------------------------------------------------------ 05.block


@mistake("05.block", "post_norm")
def block_post_norm(x, weights, cos, sin, n_heads, n_kv_heads, eps):
    h = rms_norm(x + _attn(x, weights, cos, sin, n_heads, n_kv_heads), weights["input_layernorm.weight"], eps)
    return rms_norm(h + _ffn(h, weights), weights["post_attention_layernorm.weight"], eps)


@mistake("05.block", "residual")
def block_without_attention_residual(x, weights, cos, sin, n_heads, n_kv_heads, eps):
    h = _attn(rms_norm(x, weights["input_layernorm.weight"], eps), weights, cos, sin, n_heads, n_kv_heads)
    return h + _ffn(rms_norm(h, weights["post_attention_layernorm.weight"], eps), weights)


@mistake("05.block", "residual_ffn")
def block_without_ffn_residual(x, weights, cos, sin, n_heads, n_kv_heads, eps):
    h = x + _attn(rms_norm(x, weights["input_layernorm.weight"], eps), weights, cos, sin, n_heads, n_kv_heads)
    return _ffn(rms_norm(h, weights["post_attention_layernorm.weight"], eps), weights)


@mistake("05.block", "normed_residual")
def block_normalises_the_stream(x, weights, cos, sin, n_heads, n_kv_heads, eps):
    x = rms_norm(x, weights["input_layernorm.weight"], eps)  # overwrites the residual stream
    h = x + _attn(x, weights, cos, sin, n_heads, n_kv_heads)
    h = rms_norm(h, weights["post_attention_layernorm.weight"], eps)
    return h + _ffn(h, weights)


@mistake("05.block", "norm_twice")
def block_norm_applied_twice(x, weights, cos, sin, n_heads, n_kv_heads, eps):
    g1, g2 = weights["input_layernorm.weight"], weights["post_attention_layernorm.weight"]
    h = x + _attn(rms_norm(rms_norm(x, g1, eps), g1, eps), weights, cos, sin, n_heads, n_kv_heads)
    return h + _ffn(rms_norm(rms_norm(h, g2, eps), g2, eps), weights)


@mistake("05.block", "norms_swapped")
def block_norms_swapped(x, weights, cos, sin, n_heads, n_kv_heads, eps):
    h = x + _attn(rms_norm(x, weights["post_attention_layernorm.weight"], eps), weights, cos, sin, n_heads, n_kv_heads)
    return h + _ffn(rms_norm(h, weights["input_layernorm.weight"], eps), weights)


@mistake("05.block", "parallel")
def block_parallel(x, weights, cos, sin, n_heads, n_kv_heads, eps):
    attn_out = _attn(rms_norm(x, weights["input_layernorm.weight"], eps), weights, cos, sin, n_heads, n_kv_heads)
    return x + attn_out + _ffn(rms_norm(x, weights["post_attention_layernorm.weight"], eps), weights)


@mistake("05.block", "mask")
def block_without_mask(x, weights, cos, sin, n_heads, n_kv_heads, eps):
    a = rms_norm(x, weights["input_layernorm.weight"], eps)
    h = x + _attn(a, weights, cos, sin, n_heads, n_kv_heads, mask=None)
    return h + _ffn(rms_norm(h, weights["post_attention_layernorm.weight"], eps), weights)


@mistake("05.block", "eps")
def block_default_eps(x, weights, cos, sin, n_heads, n_kv_heads, eps):
    h = x + _attn(rms_norm(x, weights["input_layernorm.weight"]), weights, cos, sin, n_heads, n_kv_heads)
    return h + _ffn(rms_norm(h, weights["post_attention_layernorm.weight"]), weights)


@mistake("05.block", "grad_differs")
def block_attention_under_no_grad(x, weights, cos, sin, n_heads, n_kv_heads, eps):
    with torch.no_grad():  # "attention is the expensive part"
        attn_out = _attn(rms_norm(x, weights["input_layernorm.weight"], eps), weights, cos, sin, n_heads, n_kv_heads)
    h = x + attn_out
    return h + _ffn(rms_norm(h, weights["post_attention_layernorm.weight"], eps), weights)


@mistake("05.block", "keys")
def block_short_keys(x, weights, cos, sin, n_heads, n_kv_heads, eps):
    a = rms_norm(x, weights["input_layernorm.weight"], eps)
    w = {name: weights[name] for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
    h = x + gqa_forward(a, w, cos, sin, causal_mask(x.shape[1]), n_heads, n_kv_heads)
    return h + _ffn(rms_norm(h, weights["post_attention_layernorm.weight"], eps), weights)


# ----------------------------------------------------------------------------- 05.logits


def _blocks(x, weights, config, cos, sin, n_layers=None):
    from solutions.model import block_forward

    for i in range(config["n_layers"] if n_layers is None else n_layers):
        prefix = f"layers.{i}."
        layer = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        x = block_forward(x, layer, cos, sin, config["n_heads"], config["n_kv_heads"], config["norm_eps"])
    return x


def _tables(tokens, weights, config, theta=None):
    head_dim = weights["embed_tokens.weight"].shape[1] // config["n_heads"]
    return rope_cache(head_dim, tokens.shape[1], config["rope_theta"] if theta is None else theta)


@mistake("05.logits", "final_norm")
def logits_without_final_norm(tokens, weights, config):
    cos, sin = _tables(tokens, weights, config)
    x = _blocks(weights["embed_tokens.weight"][tokens], weights, config, cos, sin)
    w_out = weights["embed_tokens.weight"] if config["tie_embeddings"] else weights["lm_head.weight"]
    return F.linear(x, w_out)


@mistake("05.logits", "tied")
def logits_always_lm_head(tokens, weights, config):
    cos, sin = _tables(tokens, weights, config)
    x = _blocks(weights["embed_tokens.weight"][tokens], weights, config, cos, sin)
    x = rms_norm(x, weights["norm.weight"], config["norm_eps"])
    return F.linear(x, weights["lm_head.weight"])  # KeyError when tied


@mistake("05.logits", "lm_head")
def logits_always_tied(tokens, weights, config):
    cos, sin = _tables(tokens, weights, config)
    x = _blocks(weights["embed_tokens.weight"][tokens], weights, config, cos, sin)
    x = rms_norm(x, weights["norm.weight"], config["norm_eps"])
    return F.linear(x, weights["embed_tokens.weight"])


@mistake("05.logits", "scaled")
def logits_scaled_embeddings(tokens, weights, config):
    cos, sin = _tables(tokens, weights, config)
    embed = weights["embed_tokens.weight"]
    x = _blocks(embed[tokens] * math.sqrt(embed.shape[1]), weights, config, cos, sin)
    x = rms_norm(x, weights["norm.weight"], config["norm_eps"])
    return F.linear(x, embed if config["tie_embeddings"] else weights["lm_head.weight"])


@mistake("05.logits", "theta")
def logits_default_theta(tokens, weights, config):
    cos, sin = _tables(tokens, weights, config, theta=10000.0)
    x = _blocks(weights["embed_tokens.weight"][tokens], weights, config, cos, sin)
    x = rms_norm(x, weights["norm.weight"], config["norm_eps"])
    return F.linear(x, weights["embed_tokens.weight"] if config["tie_embeddings"] else weights["lm_head.weight"])


@mistake("05.logits", "softmax")
def logits_returns_probabilities(tokens, weights, config):
    cos, sin = _tables(tokens, weights, config)
    x = _blocks(weights["embed_tokens.weight"][tokens], weights, config, cos, sin)
    x = rms_norm(x, weights["norm.weight"], config["norm_eps"])
    logits = F.linear(x, weights["embed_tokens.weight"] if config["tie_embeddings"] else weights["lm_head.weight"])
    return torch.softmax(logits, dim=-1)


@mistake("05.logits", "last")
def logits_last_position_only(tokens, weights, config):
    cos, sin = _tables(tokens, weights, config)
    x = _blocks(weights["embed_tokens.weight"][tokens], weights, config, cos, sin)
    x = rms_norm(x, weights["norm.weight"], config["norm_eps"])
    return F.linear(x, weights["embed_tokens.weight"] if config["tie_embeddings"] else weights["lm_head.weight"])[:, -1]


@mistake("05.logits", "layers")
def logits_first_layer_only(tokens, weights, config):
    cos, sin = _tables(tokens, weights, config)
    x = _blocks(weights["embed_tokens.weight"][tokens], weights, config, cos, sin, n_layers=1)
    x = rms_norm(x, weights["norm.weight"], config["norm_eps"])
    return F.linear(x, weights["embed_tokens.weight"] if config["tie_embeddings"] else weights["lm_head.weight"])


@mistake("05.logits", "layer_prefix")
def logits_layer_prefix_without_dot(tokens, weights, config):
    from solutions.model import block_forward

    cos, sin = _tables(tokens, weights, config)
    x = weights["embed_tokens.weight"][tokens]
    for i in range(config["n_layers"]):
        layer = {k.split(".", 2)[2]: v for k, v in weights.items() if k.startswith(f"layers.{i}")}
        x = block_forward(x, layer, cos, sin, config["n_heads"], config["n_kv_heads"], config["norm_eps"])
    x = rms_norm(x, weights["norm.weight"], config["norm_eps"])
    return F.linear(x, weights["embed_tokens.weight"] if config["tie_embeddings"] else weights["lm_head.weight"])


@mistake("05.logits", "eps")
def logits_default_eps(tokens, weights, config):
    from solutions.model import block_forward

    eps = 1e-5  # "LLaMA's norm eps": the config's norm_eps is never read
    cos, sin = _tables(tokens, weights, config)
    x = weights["embed_tokens.weight"][tokens]
    for i in range(config["n_layers"]):
        prefix = f"layers.{i}."
        layer = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        x = block_forward(x, layer, cos, sin, config["n_heads"], config["n_kv_heads"], eps)
    x = rms_norm(x, weights["norm.weight"], eps)
    w_out = weights["embed_tokens.weight"] if config["tie_embeddings"] else weights["lm_head.weight"]
    return F.linear(x, w_out)


@mistake("05.logits", "prefix")
def logits_hf_names(tokens, weights, config):
    embed = weights["model.embed_tokens.weight"]
    return F.linear(embed[tokens], embed)


# ------------------------------------------------------------------------ 05.param_count


def _count(config, *, tied_once=True, experts="top_k", router=True, norms=True, kv="n_kv_heads",
           active_embeddings=True):
    d, layers, v = config["dim"], config["n_layers"], config["vocab_size"]
    head_dim = d // config["n_heads"]
    attn = 2 * d * config["n_heads"] * head_dim + 2 * d * config[kv] * head_dim
    mlp = 3 * d * config["hidden_dim"]
    n = config["n_experts"]
    r = n * d if router else 0
    total_ffn = n * mlp + r if n else mlp
    active_ffn = (config[experts] * mlp + r if n else mlp)
    per_norms = 2 * d if norms else 0
    emb = v * d if (config["tie_embeddings"] and tied_once) else 2 * v * d
    final = d if norms else 0
    total = layers * (attn + total_ffn + per_norms) + emb + final
    active = layers * (attn + active_ffn + per_norms) + (emb + final if active_embeddings else 0)
    return total, active


@mistake("05.param_count", "tied")
def count_tied_twice(config):
    return _count(config, tied_once=False)


@mistake("05.param_count", "active_experts")
def count_active_all_experts(config):
    return _count(config, experts="n_experts")


@mistake("05.param_count", "router")
def count_without_router(config):
    return _count(config, router=False)


@mistake("05.param_count", "norms")
def count_without_norms(config):
    return _count(config, norms=False)


@mistake("05.param_count", "kv_heads")
def count_kv_as_query_heads(config):
    return _count(config, kv="n_heads")


@mistake("05.param_count", "active_embeddings")
def count_active_without_embeddings(config):
    return _count(config, active_embeddings=False)


@mistake("05.param_count", "swapped")
def count_active_first(config):
    total, active = _count(config)
    return active, total


@mistake("05.param_count", "router")
def count_router_in_total_only(config):
    # "the router is overhead, not something a token's forward pass uses"
    total, active = _count(config)
    if config["n_experts"]:
        active -= config["n_layers"] * config["n_experts"] * config["dim"]
    return total, active


@mistake("05.param_count", "norms")
def count_without_final_norm(config):
    total, active = _count(config)
    return total - config["dim"], active - config["dim"]  # "the norms live in the blocks"


# --------------------------------------------------------------------- 05.hf_key_mapping

EXPERT = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
KNOWN = ("embed_tokens", "norm", "lm_head", "input_layernorm", "post_attention_layernorm", "q_proj", "k_proj",
         "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "gate")


def _checked(name, key):
    if not key.endswith(".weight") or key.split(".")[-2] not in KNOWN:
        raise ValueError(f"unknown tensor {name}")
    return key


@mistake("05.hf_key_mapping", "prefix")
def key_keeps_prefix(name):
    if name.endswith("inv_freq"):
        return None
    key = name.replace("block_sparse_moe", "mlp")
    for old, new in EXPERT.items():
        key = key.replace(f".{old}.", f".{new}.")
    return _checked(name, key)


@mistake("05.hf_key_mapping", "lm_head")
def key_slices_prefix(name):
    if name.endswith("inv_freq"):
        return None
    key = name[6:].replace("block_sparse_moe", "mlp")
    for old, new in EXPERT.items():
        key = key.replace(f".{old}.", f".{new}.")
    return _checked(name, key)


@mistake("05.hf_key_mapping", "moe")
def key_keeps_block_sparse_moe(name):
    if name.endswith("inv_freq"):
        return None
    key = name.removeprefix("model.")
    for old, new in EXPERT.items():
        key = key.replace(f".{old}.", f".{new}.")
    return _checked(name, key)


@mistake("05.hf_key_mapping", "w1_w3")
def key_w1_is_up(name):
    if name.endswith("inv_freq"):
        return None
    key = name.removeprefix("model.").replace("block_sparse_moe", "mlp")
    for old, new in {"w1": "up_proj", "w2": "down_proj", "w3": "gate_proj"}.items():
        key = key.replace(f".{old}.", f".{new}.")
    return _checked(name, key)


@mistake("05.hf_key_mapping", "w2")
def key_in_numeric_order(name):
    if name.endswith("inv_freq"):
        return None
    key = name.removeprefix("model.").replace("block_sparse_moe", "mlp")
    for old, new in {"w1": "gate_proj", "w2": "up_proj", "w3": "down_proj"}.items():  # gate, up, down in order
        key = key.replace(f".{old}.", f".{new}.")
    return _checked(name, key)


@mistake("05.hf_key_mapping", "unknown")
def key_without_validation(name):
    if name.endswith("inv_freq"):
        return None
    key = name.removeprefix("model.").replace("block_sparse_moe", "mlp")
    for old, new in EXPERT.items():
        key = key.replace(f".{old}.", f".{new}.")
    return key


@mistake("05.hf_key_mapping", "unknown")
def key_checks_layer_names_only(name):
    if name.endswith("inv_freq"):
        return None
    key = name.removeprefix("model.").replace("block_sparse_moe", "mlp")
    if not key.startswith("layers."):
        return key  # "outside the layers there are only the embedding, the final norm and lm_head"
    for old, new in EXPERT.items():
        key = key.replace(f".{old}.", f".{new}.")
    return _checked(name, key)
