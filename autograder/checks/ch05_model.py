"""Chapter 05 checkpoints: the block, the model's logits, the parameter count, Hugging Face names.

Every checkpoint is a plain function of small tensors, dicts, strings or ints, so cases,
expected outputs and the fingerprints of known mistakes are stored as data. Weights are
drawn from a ``torch.Generator`` seeded by the case RNG (``dim`` 8, two or four heads);
expected outputs come from ``solutions.model``. Floats are compared within :data:`TOL`,
counts and names exactly.

How the cases expose mistakes: norm gains far from 1 and different in the two norms (a
swapped or missing norm shows); o_proj = down_proj = 0 (the block must be the identity, so
a missing residual shows); eps = 1 on small activations (an eps that is not passed on
shows); batches of 2 and 3, odd sequence lengths, GQA; a model of twelve layers whose
token ids have three digits (a layer loop that stops early, or selects ``layers.1`` with
``layers.10`` and ``layers.11``, shows); tied and untied output projections; rope_theta
500000; real configs (LLaMA-2 7B, Mixtral 8x7B, Llama 3.2 1B) for the counts; names with
two-digit layer and expert numbers, and names of no Llama tensor (in a layer or outside
the layers, as a classification head's ``score.weight``), which must raise ``ValueError``;
``norm_eps`` 1.0 in the logits' last case (a hard-coded eps shows). The block's gradient with respect to its input is probed: a block that
computes a sub-layer under ``torch.no_grad()`` or on detached tensors has the right values
and the wrong gradient.

Known mistakes are named by *fingerprints*: the reference with one mistake in it (a
post-norm block, a missing residual, tied embeddings counted twice, ``w2`` taken for the up
projection...) that reproduces the learner's output on every case where it shows.
"""

from __future__ import annotations

import functools
import math
import random

import torch
import torch.nn.functional as F

from ..core import Case, Checkpoint, Label, register
from ..reference import reference
from .inputs import generator, tensor_label

model = functools.partial(reference, "solutions.model")
layers = functools.partial(reference, "solutions.layers")
attention = functools.partial(reference, "solutions.attention")
TOL = 1e-5  # float32

def _randn(*shape: int, generator: torch.Generator) -> torch.Tensor:
    """A float32 normal tensor drawn in float64 and cast: torch's float32 normal sampler takes
    another code path on another CPU (values differ in the last bits), its float64 one does not."""
    return torch.randn(*shape, generator=generator, dtype=torch.float64).float()


ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


def _layer_weights(g: torch.Generator, dim: int, n_heads: int, n_kv_heads: int, hidden: int,
                   gains: bool = True) -> dict[str, torch.Tensor]:
    head_dim = dim // n_heads
    s = 1 / math.sqrt(dim)
    w = {
        "input_layernorm.weight": 1 + 0.5 * _randn(dim, generator=g) if gains else torch.ones(dim),
        "self_attn.q_proj.weight": _randn(n_heads * head_dim, dim, generator=g) * s,
        "self_attn.k_proj.weight": _randn(n_kv_heads * head_dim, dim, generator=g) * s,
        "self_attn.v_proj.weight": _randn(n_kv_heads * head_dim, dim, generator=g) * s,
        "self_attn.o_proj.weight": _randn(dim, n_heads * head_dim, generator=g) * s,
        "post_attention_layernorm.weight": 1 + 0.5 * _randn(dim, generator=g) if gains else torch.ones(dim),
        "mlp.gate_proj.weight": _randn(hidden, dim, generator=g) * s,
        "mlp.up_proj.weight": _randn(hidden, dim, generator=g) * s,
        "mlp.down_proj.weight": _randn(dim, hidden, generator=g) / math.sqrt(hidden),
    }
    return w


def _weights_label(weights: dict) -> Label:
    return Label(f"<{len(weights)} tensors: {', '.join(list(weights)[:3])}, ...>")


# ----------------------------------------------------------------------------- 05.block

def block_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, batch, seq, dim, n_heads, n_kv_heads, hidden, eps=1e-5, hint="default", gains=True,
             zero_sublayers=False, theta=10000.0, scale=2.0, probe=False):
        x = _randn(batch, seq, dim, generator=g) * scale + 0.25 * scale
        w = _layer_weights(g, dim, n_heads, n_kv_heads, hidden, gains)
        if zero_sublayers:
            w["self_attn.o_proj.weight"].zero_()
            w["mlp.down_proj.weight"].zero_()
        cos, sin = layers("rope_cache")(dim // n_heads, seq, theta)
        args = (x, w, cos, sin, n_heads, n_kv_heads, eps)
        show = (tensor_label(x, "x"), _weights_label(w), Label("cos"), Label("sin"), n_heads, n_kv_heads, eps)
        return Case(label, args, hint, show=show, probe=probe)

    cases = [
        case("attention and feed-forward outputs zeroed (o_proj = down_proj = 0): the block is the identity",
             1, 3, 8, 2, 2, 12, hint="residual", zero_sublayers=True),
        case("one token, unit norm gains", 1, 1, 8, 2, 2, 12, gains=False),
        case("different gains in input_layernorm and post_attention_layernorm", 1, 3, 8, 2, 2, 12, hint="norms_swapped"),
        case("four tokens: each sees only itself and earlier tokens", 1, 4, 8, 2, 1, 12, hint="mask"),
        case("GQA: 4 query heads, 2 key/value heads, batch 2", 2, 3, 8, 4, 2, 16, probe=True),
        case("eps = 1.0 on small activations (x about 0.05): eps decides the norm", 1, 3, 8, 2, 2, 12, eps=1.0,
             hint="eps", scale=0.05),
        case("batch 3, 7 tokens, 4 query heads sharing 1 key/value head, hidden 20", 3, 7, 8, 4, 1, 20, probe=True),
    ]
    for n in range(6):
        n_heads = rng.choice([2, 4])
        n_kv_heads = rng.choice([h for h in (1, 2, 4) if n_heads % h == 0])
        cases.append(case(f"random block (case {n + 1})", rng.randint(1, 2), rng.randint(1, 5), 8, n_heads,
                          n_kv_heads, rng.choice([8, 12, 16]), rng.choice([1e-5, 1e-6]),
                          theta=rng.choice([10000.0, 500000.0])))
    return cases


def _attn(x, weights, cos, sin, n_heads, n_kv_heads, causal=True):
    w = {name: weights[f"self_attn.{name}.weight"] for name in ATTN}
    mask = layers("causal_mask")(x.shape[1], device=x.device) if causal else None
    return attention("gqa_forward")(x, w, cos, sin, mask, n_heads, n_kv_heads)


def _ffn(x, weights):
    return layers("swiglu")(x, weights["mlp.gate_proj.weight"], weights["mlp.up_proj.weight"],
                            weights["mlp.down_proj.weight"])


def _block_variant(kind: str):
    def wrong(x, weights, cos, sin, n_heads, n_kv_heads, eps):
        norm = layers("rms_norm")
        g1, g2 = weights["input_layernorm.weight"], weights["post_attention_layernorm.weight"]
        if kind == "norms_swapped":
            g1, g2 = g2, g1
        if kind == "post_norm":
            h = norm(x + _attn(x, weights, cos, sin, n_heads, n_kv_heads), g1, eps)
            return norm(h + _ffn(h, weights), g2, eps)
        if kind == "normed_residual":
            x = norm(x, g1, eps)
            h = x + _attn(x, weights, cos, sin, n_heads, n_kv_heads)
            h = norm(h, g2, eps)
            return h + _ffn(h, weights)
        if kind == "norm_twice":
            a = norm(norm(x, g1, eps), g1, eps)
            h = x + _attn(a, weights, cos, sin, n_heads, n_kv_heads)
            return h + _ffn(norm(norm(h, g2, eps), g2, eps), weights)
        if kind == "eps":
            eps = 1e-6
        a = norm(x, g1, eps)
        attn_out = _attn(a, weights, cos, sin, n_heads, n_kv_heads, causal=kind != "mask")
        if kind == "parallel":
            return x + attn_out + _ffn(norm(x, g2, eps), weights)
        h = attn_out if kind == "residual" else x + attn_out
        ffn_out = _ffn(norm(h, g2, eps), weights)
        return ffn_out if kind == "residual_ffn" else h + ffn_out
    wrong.__name__ = f"block_{kind}"
    return wrong


BLOCK_MISTAKES = ("post_norm", "residual", "residual_ffn", "normed_residual", "norm_twice", "norms_swapped",
                  "parallel", "mask", "eps")

register(Checkpoint(
    id="05.block",
    points=2,
    title="pre-norm residual block: h = x + attn(norm(x)), out = h + ffn(norm(h))",
    signature="block_forward(x, weights, cos, sin, n_heads, n_kv_heads, eps)",
    cases=block_cases,
    reference=model("block_forward"),
    tol=TOL,
    grad_probe=True,  # the gradient reaching x (and cos, sin) through both sub-layers and residuals
    fingerprints=[(kind, _block_variant(kind)) for kind in BLOCK_MISTAKES],
    raised_hints=[(r"KeyError: '(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|input_layernorm|"
                   r"post_attention_layernorm)", "keys")],
    hints={
        "default": "h = x + gqa_forward(rms_norm(x, weights['input_layernorm.weight'], eps), attn_weights, cos, sin, "
        "causal_mask(seq), n_heads, n_kv_heads); return h + swiglu(rms_norm(h, weights['post_attention_layernorm.weight'], "
        "eps), gate, up, down).",
        "keys": "The layer's tensors are named as in Hugging Face's Llama, with '.weight': "
        "weights['self_attn.q_proj.weight'], weights['mlp.gate_proj.weight'], weights['input_layernorm.weight'], ... "
        "gqa_forward wants a dict keyed 'q_proj', 'k_proj', 'v_proj', 'o_proj'.",
        "post_norm": "This is a post-norm block (the 2017 Transformer: norm(x + sublayer(x))). LLaMA is pre-norm: "
        "normalise the *input* of each sub-layer and add its output to the un-normalised x, h = x + attn(norm(x)).",
        "residual": "The attention's residual connection is missing: h = x + attention(...), not attention(...) alone. "
        "With o_proj = 0 the block must return x unchanged.",
        "residual_ffn": "The feed-forward's residual connection is missing: return h + swiglu(...), not swiglu(...) alone.",
        "normed_residual": "The residual stream itself is never normalised: normalise a copy for the sub-layer, "
        "a = rms_norm(x, ...), and add the sub-layer's output to x, not to a.",
        "norm_twice": "Each sub-layer's input is normalised once: rms_norm(x, g) is already unit-RMS, and "
        "normalising it again multiplies by the gain twice.",
        "norms_swapped": "input_layernorm comes before attention, post_attention_layernorm before the "
        "feed-forward (despite its name, it is the *pre*-norm of the feed-forward).",
        "parallel": "The feed-forward reads the output of attention: ffn(rms_norm(h)) with h = x + attention(...), "
        "not ffn(rms_norm(x)) (that is GPT-J's parallel block, not LLaMA's).",
        "mask": "Attention must be causal: pass causal_mask(seq) (True = may attend) to gqa_forward, so that a "
        "token does not see later tokens.",
        "eps": "Pass the eps argument to both rms_norm calls (the config's norm_eps), not a constant.",
    },
))


# ---------------------------------------------------------------------------- 05.logits

def _model_weights(g: torch.Generator, vocab: int, dim: int, n_layers: int, n_heads: int, n_kv_heads: int,
                   hidden: int, tied: bool) -> dict[str, torch.Tensor]:
    w = {"embed_tokens.weight": _randn(vocab, dim, generator=g)}
    for i in range(n_layers):
        w.update({f"layers.{i}.{k}": v for k, v in _layer_weights(g, dim, n_heads, n_kv_heads, hidden).items()})
    w["norm.weight"] = 1 + 0.5 * _randn(dim, generator=g)
    if not tied:
        w["lm_head.weight"] = _randn(vocab, dim, generator=g) / math.sqrt(dim)
    return w


def _config(vocab, dim, n_layers, n_heads, n_kv_heads, hidden, tied, eps=1e-5, theta=10000.0) -> dict:
    return {"vocab_size": vocab, "dim": dim, "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_kv_heads,
            "hidden_dim": hidden, "norm_eps": eps, "rope_theta": theta, "max_seq_len": 64,
            "tie_embeddings": tied, "n_experts": 0, "top_k": 2}


def logits_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, batch, seq, vocab, n_layers, n_heads, n_kv_heads, tied, hint="default", eps=1e-5, theta=10000.0):
        cfg = _config(vocab, 8, n_layers, n_heads, n_kv_heads, 12, tied, eps, theta)
        w = _model_weights(g, vocab, 8, n_layers, n_heads, n_kv_heads, 12, tied)
        tokens = torch.randint(0, vocab, (batch, seq), generator=g)
        return Case(label, (tokens, w, cfg), hint, show=(tensor_label(tokens, "tokens"), _weights_label(w), cfg))

    cases = [
        case("one token, one layer, untied lm_head", 1, 1, 11, 1, 2, 2, False, hint="lm_head"),
        case("tied embeddings: there is no lm_head.weight, the output projection is embed_tokens.weight",
             1, 3, 11, 1, 2, 2, True, hint="tied"),
        case("two layers, four tokens", 1, 4, 11, 2, 2, 1, False, hint="layers"),
        case("rope_theta = 500000 (LLaMA 3)", 1, 5, 13, 1, 2, 2, False, hint="theta", theta=500000.0),
        case("a batch of 2, GQA 4/2, tied", 2, 3, 13, 2, 4, 2, True),
        case("twelve layers (layers.10 and layers.11 are not layers.1), 150 ids, a batch of 2", 2, 5, 150, 12, 2, 1,
             True, hint="layer_prefix"),
    ]
    for n in range(4):
        n_heads = rng.choice([2, 4])
        # rope_theta 10000 here: with a few positions, 500000 changes the logits by about the
        # tolerance, too little to tell a wrong theta from rounding (the case above shows it)
        cases.append(case(f"random model (case {n + 1})", rng.randint(1, 3), rng.randint(2, 6), rng.choice([9, 16, 40]),
                          rng.randint(1, 3), n_heads, rng.choice([h for h in (1, 2) if n_heads % h == 0]),
                          rng.random() < 0.5, eps=rng.choice([1e-5, 1e-6])))
    # after the random cases, so that they keep their weights: an eps of 1 on activations of
    # RMS about 1 halves them (1e-5 and 1e-6 change the logits by less than the tolerance)
    cases.append(case("norm_eps = 1.0: the config's eps reaches every RMSNorm", 1, 4, 11, 2, 2, 1, False,
                      hint="eps", eps=1.0))
    return cases


def _logits_variant(kind: str):
    def wrong(tokens, weights, config):
        norm, block = layers("rms_norm"), model("block_forward")
        embed = weights["embed_tokens.weight"]
        head_dim = embed.shape[1] // config["n_heads"]
        theta = 10000.0 if kind == "theta" else config["rope_theta"]
        eps = 1e-5 if kind == "eps" else config["norm_eps"]
        cos, sin = layers("rope_cache")(head_dim, tokens.shape[1], theta)
        x = embed[tokens]
        if kind == "scaled":
            x = x * math.sqrt(embed.shape[1])
        for i in range(1 if kind == "layers" else config["n_layers"]):
            prefix = f"layers.{i}."
            if kind == "layer_prefix":  # "layers.1" also selects layers.10, layers.11, ... (later ones win)
                layer = {k.split(".", 2)[2]: v for k, v in weights.items() if k.startswith(f"layers.{i}")}
            else:
                layer = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
            x = block(x, layer, cos, sin, config["n_heads"], config["n_kv_heads"], eps)
        if kind != "final_norm":
            x = norm(x, weights["norm.weight"], eps)
        w_out = embed if (config["tie_embeddings"] or kind == "lm_head") else weights["lm_head.weight"]
        logits = F.linear(x, w_out)
        if kind == "softmax":
            return torch.softmax(logits, dim=-1)
        if kind == "last":
            return logits[:, -1]
        return logits
    wrong.__name__ = f"logits_{kind}"
    return wrong


LOGITS_MISTAKES = ("final_norm", "lm_head", "scaled", "theta", "softmax", "last", "layers", "layer_prefix", "eps")

register(Checkpoint(
    id="05.logits",
    points=2,
    title="the whole model: embed, blocks, final RMSNorm, output projection (tied or not)",
    signature="llama_logits(tokens, weights, config)",
    cases=logits_cases,
    reference=model("llama_logits"),
    tol=1e-4,
    grad_probe=True,  # through every weight of the dict: a detached embedding or head is caught
    fingerprints=[(kind, _logits_variant(kind)) for kind in LOGITS_MISTAKES],
    raised_hints=[(r"KeyError: 'lm_head\.weight'", "tied"), (r"KeyError: 'model\.", "prefix")],
    hints={
        "default": "x = weights['embed_tokens.weight'][tokens]; cos, sin = rope_cache(head_dim, seq, config['rope_theta']); "
        "for each layer i, block_forward(x, its weights without the 'layers.{i}.' prefix, ...); "
        "rms_norm with 'norm.weight'; F.linear with lm_head.weight (or the embedding when tied).",
        "tied": "With config['tie_embeddings'] there is no 'lm_head.weight': the output projection is the "
        "embedding matrix itself, F.linear(x, weights['embed_tokens.weight']).",
        "prefix": "The course model's names have no 'model.' prefix: 'embed_tokens.weight', 'layers.0. ...', "
        "'norm.weight' (hf_key strips it when loading).",
        "lm_head": "When the embeddings are not tied, the output projection is its own matrix, "
        "weights['lm_head.weight'] (vocab, dim): use the embedding only when config['tie_embeddings'] is True.",
        "final_norm": "Apply the final RMSNorm (weights['norm.weight']) to the last block's output before the "
        "output projection: pre-norm blocks leave the residual stream un-normalised.",
        "scaled": "LLaMA does not multiply the embeddings by sqrt(dim) (the 2017 Transformer and Gemma do): "
        "x = weights['embed_tokens.weight'][tokens].",
        "theta": "Build the RoPE tables with config['rope_theta'] (500000 in LLaMA 3), not the default 10000.",
        "softmax": "Return the logits, before any softmax: cross-entropy and sampling take logits.",
        "last": "Return the logits of every position, (batch, seq, vocab): training predicts every next token, "
        "not only the last one.",
        "layers": "Run every layer, i = 0 .. config['n_layers'] - 1, each with its own weights "
        "('layers.{i}.' prefix removed).",
        "layer_prefix": "Select layer i's tensors by the prefix f'layers.{i}.' with its final dot: 'layers.1' is also "
        "the start of 'layers.10', 'layers.11', ..., so with ten layers or more layer 1 picks up their weights.",
        "eps": "Pass config['norm_eps'] to every block_forward and to the final rms_norm, not a constant such as 1e-5: "
        "the config decides it (1e-5 in LLaMA 2, 1e-6 in some others).",
    },
))


# ----------------------------------------------------------------------- 05.param_count

MIXTRAL_8X7B = {"vocab_size": 32000, "dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8,
                "hidden_dim": 14336, "norm_eps": 1e-5, "rope_theta": 1e6, "max_seq_len": 32768,
                "tie_embeddings": False, "n_experts": 8, "top_k": 2}
LLAMA2_7B = {"vocab_size": 32000, "dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32,
             "hidden_dim": 11008, "norm_eps": 1e-5, "rope_theta": 10000.0, "max_seq_len": 4096,
             "tie_embeddings": False, "n_experts": 0, "top_k": 2}
LLAMA32_1B = {"vocab_size": 128256, "dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8,
              "hidden_dim": 8192, "norm_eps": 1e-5, "rope_theta": 500000.0, "max_seq_len": 131072,
              "tie_embeddings": True, "n_experts": 0, "top_k": 2}


def param_count_cases(rng: random.Random) -> list[Case]:
    def cfg(vocab, dim, n_layers, n_heads, n_kv_heads, hidden, tied=False, n_experts=0, top_k=2):
        return _config(vocab, dim, n_layers, n_heads, n_kv_heads, hidden, tied) | {"n_experts": n_experts, "top_k": top_k}

    cases = [
        Case("a one-layer dense model, untied", (cfg(10, 4, 1, 2, 2, 6),), "norms"),
        Case("tied embeddings: one matrix, counted once", (cfg(10, 4, 1, 2, 2, 6, tied=True),), "tied"),
        Case("GQA: k_proj and v_proj have n_kv_heads * head_dim rows", (cfg(10, 8, 1, 4, 1, 6),), "kv_heads"),
        Case("a MoE layer: 4 experts, top-1", (cfg(10, 4, 1, 2, 2, 6, n_experts=4, top_k=1),), "active_experts"),
        Case("LLaMA-2 7B (6.74B)", (LLAMA2_7B,)),
        Case("Mixtral 8x7B (46.7B total, 12.9B active)", (MIXTRAL_8X7B,), "router"),
        Case("Llama 3.2 1B (tied, 1.24B)", (LLAMA32_1B,), "tied"),
    ]
    for n in range(8):
        n_heads = rng.choice([1, 2, 4, 8])
        n_experts = rng.choice([0, 0, 4, 8, 16])
        c = cfg(rng.randint(10, 5000), n_heads * rng.choice([2, 4, 8]), rng.randint(1, 6), n_heads,
                rng.choice([h for h in (1, 2, 4, 8) if n_heads % h == 0]), rng.randint(4, 100),
                rng.random() < 0.5, n_experts, rng.randint(1, max(1, min(4, n_experts))))
        cases.append(Case(f"random config (case {n + 1})", (c,)))
    return cases


def _count_variant(kind: str):
    def wrong(config):
        c = config
        dim, head_dim = c["dim"], c["dim"] // c["n_heads"]
        n_kv = c["n_heads"] if kind == "kv_heads" else c["n_kv_heads"]
        attention_ = 2 * dim * c["n_heads"] * head_dim + 2 * dim * n_kv * head_dim
        expert = 3 * dim * c["hidden_dim"]
        n_experts = c["n_experts"]
        router = 0 if kind == "router" else n_experts * dim
        if n_experts:
            total_ffn = n_experts * expert + router
            active_router = 0 if kind == "router_active" else router
            active_ffn = (n_experts if kind == "active_experts" else c["top_k"]) * expert + active_router
        else:
            total_ffn = active_ffn = expert
        norms = 0 if kind == "norms" else 2 * dim
        final = 0 if kind in ("norms", "final_norm") else dim
        tied = c["tie_embeddings"] and kind != "tied"
        emb = c["vocab_size"] * dim * (1 if tied else 2)
        total = c["n_layers"] * (attention_ + total_ffn + norms) + emb + final
        active = c["n_layers"] * (attention_ + active_ffn + norms) + (0 if kind == "active_embeddings" else emb + final)
        if kind == "swapped":
            return active, total
        return total, active
    wrong.__name__ = f"count_{kind}"
    return wrong


COUNT_MISTAKES = ("tied", "active_experts", "router", "norms", "kv_heads", "active_embeddings", "swapped")

register(Checkpoint(
    id="05.param_count",
    points=1,
    title="total and active parameters of a dense or MoE LLaMA config",
    signature="param_count(config)",
    cases=param_count_cases,
    reference=model("param_count"),
    # the router counted in total only, and only the final norm forgotten: the same hints as
    # forgetting the router or the norms altogether, whose texts say both
    fingerprints=[(kind, _count_variant(kind)) for kind in COUNT_MISTAKES]
    + [("router", _count_variant("router_active")), ("norms", _count_variant("final_norm"))],
    hints={
        "default": "Per layer: q, o: dim x n_heads*head_dim each; k, v: dim x n_kv_heads*head_dim each; SwiGLU "
        "3 x dim x hidden_dim (times n_experts in total, times top_k active); router n_experts x dim; two norms "
        "of dim. Plus embedding vocab x dim, final norm dim, lm_head vocab x dim unless tied. Return (total, active).",
        "tied": "Tied embeddings are one tensor used twice: count vocab_size * dim once when "
        "config['tie_embeddings'] is True, twice otherwise.",
        "active_experts": "Active parameters count only the top_k experts a token is sent to, not all n_experts "
        "(Mixtral 8x7B: 46.7B total, 12.9B active).",
        "router": "Count the router of each MoE layer, an n_experts x dim matrix (no bias), in both total and "
        "active: every token goes through it.",
        "norms": "Count the RMSNorm gains: two of dim per layer (input_layernorm, post_attention_layernorm) plus "
        "the final norm's dim.",
        "kv_heads": "k_proj and v_proj map dim to n_kv_heads * head_dim (GQA), not n_heads * head_dim.",
        "active_embeddings": "Active parameters include the embedding and the output projection (a token uses "
        "both), as in Mixtral's 12.9B.",
        "swapped": "Return (total, active), in that order: total >= active.",
    },
))


# ---------------------------------------------------------------------- 05.hf_key_mapping

def hf_key_cases(rng: random.Random) -> list[Case]:
    cases = [
        Case("the embedding", ("model.embed_tokens.weight",), "prefix"),
        Case("the output projection has no model. prefix", ("lm_head.weight",), "lm_head"),
        Case("a stored RoPE buffer: skip it (None)", ("model.layers.0.self_attn.rotary_emb.inv_freq",), "buffers"),
        Case("Mixtral's router", ("model.layers.1.block_sparse_moe.gate.weight",), "moe"),
        Case("Mixtral's w1: the gate projection", ("model.layers.0.block_sparse_moe.experts.3.w1.weight",), "w1_w3"),
        Case("Mixtral's w2: the down projection", ("model.layers.2.block_sparse_moe.experts.0.w2.weight",), "w2"),
        Case("Mixtral's w3: the up projection", ("model.layers.0.block_sparse_moe.experts.5.w3.weight",), "w1_w3"),
        Case("a name of no Llama tensor: ValueError", ("model.layers.0.self_attn.q_norm.weight",), "unknown"),
        Case("a bias (the course model has none): ValueError", ("model.layers.3.self_attn.q_proj.bias",), "unknown"),
        Case("an expert matrix of no Mixtral name (w4): ValueError",
             ("model.layers.5.block_sparse_moe.experts.2.w4.weight",), "unknown"),
        Case("a classification head outside the layers (score.weight): ValueError", ("score.weight",), "unknown"),
        Case("layer 12's w1", ("model.layers.12.block_sparse_moe.experts.11.w1.weight",)),
    ]
    fixed = ["model.norm.weight", "model.layers.10.input_layernorm.weight"]
    attn = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "input_layernorm",
            "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    names = fixed + [f"model.layers.{rng.randint(0, 40)}.{rng.choice(attn)}.weight" for _ in range(6)]
    names += [f"model.layers.{rng.randint(0, 40)}.block_sparse_moe.experts.{rng.randint(0, 15)}.{rng.choice(['w1', 'w2', 'w3'])}.weight"
              for _ in range(4)]
    cases += [Case(f"{name}", (name,)) for name in names]
    return cases


_EXPERT = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}


def _key_variant(kind: str):
    def wrong(name):
        if name.endswith("rotary_emb.inv_freq"):
            return None
        if kind != "unknown":
            model("hf_key")(name)  # the others refuse the names the reference refuses
        if kind == "prefix":
            key = name
        elif kind == "lm_head":
            key = name[len("model."):]  # also cuts "lm_head." to "ad."
        else:
            key = name.removeprefix("model.")
        if kind != "moe":
            key = key.replace(".block_sparse_moe.", ".mlp.")
        mapping = dict(_EXPERT)
        if kind == "w1_w3":
            mapping = {"w1": "up_proj", "w3": "gate_proj", "w2": "down_proj"}
        if kind == "w2":
            mapping = {"w1": "gate_proj", "w2": "up_proj", "w3": "down_proj"}
        parts = key.split(".")
        if "experts" in parts and parts[-2] in mapping:
            parts[-2] = mapping[parts[-2]]
            key = ".".join(parts)
        return key
    wrong.__name__ = f"key_{kind}"
    return wrong


KEY_MISTAKES = ("prefix", "lm_head", "moe", "w1_w3", "w2", "unknown")

register(Checkpoint(
    id="05.hf_key_mapping",
    points=1,
    title="Hugging Face tensor names to the course model's",
    signature="hf_key(name)",
    cases=hf_key_cases,
    reference=model("hf_key"),
    fingerprints=[(kind, _key_variant(kind)) for kind in KEY_MISTAKES],
    # a ValueError naming lm_head.weight (and no list of valid names): the prefix was cut
    # from a name that has none, and the validation refused what was left
    raised_hints=[(r"^ValueError: (?!.*embed_tokens)(?!.*q_proj).*\blm_head\.weight", "lm_head")],
    hints={
        "default": "Strip the 'model.' prefix; rename block_sparse_moe to mlp and an expert's w1, w3, w2 to "
        "gate_proj, up_proj, down_proj; return None for rotary_emb.inv_freq; raise ValueError for any other name.",
        "prefix": "Hugging Face nests the transformer in a 'model.' prefix that the course model does not have: "
        "'model.embed_tokens.weight' -> 'embed_tokens.weight' (name.removeprefix('model.')).",
        "lm_head": "lm_head.weight sits outside 'model.' in Hugging Face's checkpoints and keeps its name: remove "
        "the prefix only where it is there, name.removeprefix('model.'), not name[6:].",
        "buffers": "Return None for a stored 'rotary_emb.inv_freq': it is a buffer the model recomputes from "
        "rope_theta, not a parameter to load.",
        "moe": "Mixtral's MoE layer is 'block_sparse_moe' in its checkpoints, the course's 'mlp': "
        "'layers.1.block_sparse_moe.gate.weight' -> 'layers.1.mlp.gate.weight'.",
        "w1_w3": "In Mixtral's experts w1 is the gate projection and w3 the up projection (the one not passed "
        "through SiLU): w1 -> gate_proj, w3 -> up_proj.",
        "w2": "In Mixtral's experts w2 is the down projection, (dim, hidden_dim), the last matrix: w2 -> down_proj.",
        "unknown": "A name that is not a Llama or Mixtral tensor (a Qwen3 'q_norm', a bias, an expert's 'w4', a "
        "classification head's 'score.weight', inside the layers or outside them) must raise ValueError naming it, "
        "not be passed on: loading would fail later with a less clear error.",
    },
))
