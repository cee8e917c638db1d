r"""The model: LLaMA-class decoder blocks stacked into a language model, dense or mixture-of-experts.

A decoder-only Transformer reads token ids ``(batch, seq)`` and returns next-token logits
``(batch, seq, vocab_size)``:

.. math::
    h^{(0)} = E[\text{tokens}], \qquad
    h^{(\ell)} = \mathrm{Block}_\ell\big(h^{(\ell - 1)}\big), \qquad
    \text{logits} = \mathrm{RMSNorm}\big(h^{(L)}\big)\, W_{out}^\top

Each **pre-norm residual block** (GPT-2, LLaMA) normalises *the input of* each sub-layer and
adds the sub-layer's output to the residual stream, which itself is never normalised:

.. math::
    h = x + \mathrm{Attention}\big(\mathrm{RMSNorm}_1(x)\big), \qquad
    \mathrm{out} = h + \mathrm{FFN}\big(\mathrm{RMSNorm}_2(h)\big)

The feed-forward network is a SwiGLU (LLaMA) or a mixture of SwiGLU experts (Mixtral).

This module has

* :class:`LlamaConfig`: the hyper-parameters, validated;
* :func:`block_forward` and :func:`llama_logits`: the block and the model as plain functions
  of a state dict (what the chapter's checkpoints grade);
* :class:`Block` and :class:`Transformer`: the same as ``nn.Module`` s, with MoE and a KV cache;
* :func:`param_count`: total and active parameters from a config;
* :func:`llama3_inv_freq`: Llama 3.1's RoPE scaling (``rope_type: llama3``), which
  Llama 3.1 and 3.2 checkpoints need;
* :func:`hf_key` and :func:`load_hf_checkpoint`: Hugging Face Llama / Mixtral safetensors
  checkpoints into the course model, without ``transformers``.

Parameter names are Hugging Face's without the ``model.`` prefix (``embed_tokens.weight``,
``layers.0.self_attn.q_proj.weight``, ``layers.0.mlp.experts.3.up_proj.weight``, ``norm.weight``,
``lm_head.weight``), so that a checkpoint loads by a short, readable renaming.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from solutions.attention import Attention, KVCache, check_config, gqa_forward
from solutions.layers import RMSNorm, SwiGLU, apply_rope, causal_mask, rms_norm, rope_cache, swiglu
from solutions.moe import MoE, MoEConfig

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MixtralForCausalLM")
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM"}  # config.json without "architectures"


# ---------------------------------------------------------------------------- the config


@dataclass
class LlamaConfig:
    """Hyper-parameters of a LLaMA-class model (Hugging Face's name in brackets).

    ``n_kv_heads`` (``num_key_value_heads``): ``None`` = ``n_heads`` (MHA); 1 = MQA.
    ``hidden_dim`` (``intermediate_size``): the SwiGLU hidden size, *each* expert's in a MoE.
    ``n_experts`` (``num_local_experts``): 0 = a dense SwiGLU feed-forward; otherwise each
    block's feed-forward is a Mixtral MoE sending each token to ``top_k``
    (``num_experts_per_tok``) experts. ``tie_embeddings`` (``tie_word_embeddings``): the output
    projection is the embedding matrix itself. ``sdpa``: attention through PyTorch's fused kernel.
    ``rope_scaling`` (``rope_parameters`` with ``rope_type: llama3``): Llama 3.1's RoPE
    frequency scaling, a dict of ``factor``, ``low_freq_factor``, ``high_freq_factor`` and
    ``original_max_position_embeddings`` (:func:`llama3_inv_freq`); ``None`` = plain RoPE.
    """

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    hidden_dim: int
    n_kv_heads: int | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    n_experts: int = 0
    top_k: int = 2
    sdpa: bool = True
    rope_scaling: dict | None = None

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LlamaConfig.{name} must be a positive int, got {value!r}")
        check_config(self.dim, self.n_heads, self.n_kv_heads)  # dim % n_heads, n_heads % n_kv_heads, even head_dim
        if not isinstance(self.n_experts, int) or self.n_experts < 0:
            raise ValueError(f"LlamaConfig.n_experts must be an int >= 0 (0 = dense feed-forward), got {self.n_experts!r}")
        if self.n_experts and not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"LlamaConfig.top_k ({self.top_k}) must be between 1 and n_experts ({self.n_experts}): "
                             "each token is sent to top_k different experts")
        if not self.norm_eps > 0:
            raise ValueError(f"LlamaConfig.norm_eps must be > 0, got {self.norm_eps!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"LlamaConfig.rope_theta must be > 0, got {self.rope_theta!r}")
        if self.rope_scaling is not None:
            check_llama3_scaling(self.rope_scaling)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_hf(cls, hf: dict) -> "LlamaConfig":
        """From a Hugging Face ``config.json`` (as a dict) of a Llama or Mixtral model.

        RoPE's parameters are read from ``rope_parameters`` (transformers 5) or from
        ``rope_theta`` and ``rope_scaling`` (earlier configs, such as Meta's Llama 3.1 and 3.2)."""
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type") or rope.get("type") or "default"
        if rope_type not in ("default", "llama3"):
            raise ValueError(f"this checkpoint scales RoPE with rope_type {rope_type!r}; the course model implements "
                             "plain RoPE ('default') and Llama 3.1's scaling ('llama3') only")
        scaling = {key: rope[key] for key in LLAMA3_SCALING_KEYS if key in rope} if rope_type == "llama3" else None
        dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
        if hf.get("head_dim") not in (None, dim // n_heads):
            raise ValueError(f"config.json has head_dim={hf['head_dim']}, but the course model uses "
                             f"hidden_size // num_attention_heads = {dim // n_heads}")
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ValueError("this checkpoint has biases in attention or MLP layers; the course model is bias-free")
        moe = "num_local_experts" in hf
        return cls(
            vocab_size=hf["vocab_size"], dim=dim, n_layers=hf["num_hidden_layers"], n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads, hidden_dim=hf["intermediate_size"],
            norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
            max_seq_len=hf.get("max_position_embeddings", 2048),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            n_experts=hf["num_local_experts"] if moe else 0, top_k=hf.get("num_experts_per_tok", 2),
            rope_scaling=scaling,
        )


# ------------------------------------------------------------- Llama 3.1's RoPE scaling

LLAMA3_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def check_llama3_scaling(scaling) -> None:
    """Raise ``ValueError`` saying what to fix unless ``scaling`` is a valid Llama 3.1 RoPE scaling."""
    if not isinstance(scaling, dict) or set(scaling) != set(LLAMA3_SCALING_KEYS):
        raise ValueError(f"LlamaConfig.rope_scaling must be None or a dict of exactly {', '.join(LLAMA3_SCALING_KEYS)} "
                         f"(Llama 3.1's config.json: factor 8, low_freq_factor 1, high_freq_factor 4, "
                         f"original_max_position_embeddings 8192), got {scaling!r}")
    if not (scaling["factor"] >= 1 and 0 < scaling["low_freq_factor"] < scaling["high_freq_factor"]
            and scaling["original_max_position_embeddings"] >= 1):
        raise ValueError(f"LlamaConfig.rope_scaling needs factor >= 1, 0 < low_freq_factor < high_freq_factor and "
                         f"original_max_position_embeddings >= 1, got {scaling!r}")


def llama3_inv_freq(head_dim: int, theta: float, scaling: dict) -> torch.Tensor:
    r"""RoPE's frequencies with Llama 3.1's scaling, for contexts longer than pretraining's.

    Pair :math:`i` turns at :math:`f_i = \theta^{-2i/d}` radians per position, a wavelength of
    :math:`\lambda_i = 2\pi / f_i` positions. With the pretraining context :math:`L`
    (``original_max_position_embeddings``), the factor :math:`s` and the two thresholds
    :math:`L / h` and :math:`L / l` (``high_freq_factor`` :math:`h` > ``low_freq_factor`` :math:`l`):

    * :math:`\lambda_i < L / h`: many turns within the context, they encode local order: kept;
    * :math:`\lambda_i > L / l`: less than a turn or so within the context: divided by
      :math:`s`, so that :math:`s L` positions now span the angles pretraining saw
      (position interpolation, Chen et al., 2023);
    * in between, a smooth mix, :math:`f_i' = (1 - \gamma) f_i / s + \gamma f_i` with
      :math:`\gamma = (L / \lambda_i - l) / (h - l)`, which is 1 at :math:`L / h` and 0 at :math:`L / l`.

    Returns ``(head_dim / 2,)`` float32, in the order of :func:`~solutions.layers.rope_cache`'s angles.
    """
    check_llama3_scaling(scaling)
    s, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (head_dim/2,)
    wavelength = 2 * torch.pi / inv_freq
    gamma = ((context / wavelength - low) / (high - low)).clamp(0, 1)  # 1: keep, 0: divide by s
    return (1 - gamma) * inv_freq / s + gamma * inv_freq


def model_rope_cache(cfg: "LlamaConfig") -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``(max_seq_len, head_dim)``: :func:`~solutions.layers.rope_cache`, or
    the same layout from Llama 3.1's scaled frequencies when the config has ``rope_scaling``."""
    if cfg.rope_scaling is None:
        return rope_cache(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
    inv_freq = llama3_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float32), inv_freq)  # (seq, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)  # (seq, head_dim), rotate-half layout
    return angles.cos(), angles.sin()


# ------------------------------------------------------------- the block and the model, as functions


def block_forward(x: torch.Tensor, weights: dict[str, torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
                  n_heads: int, n_kv_heads: int, eps: float) -> torch.Tensor:
    r"""One pre-norm residual block of LLaMA, dense feed-forward:

    .. math::
        h = x + \mathrm{Attention}\big(\mathrm{RMSNorm}(x;\ g_1)\big), \qquad
        \mathrm{out} = h + \mathrm{SwiGLU}\big(\mathrm{RMSNorm}(h;\ g_2)\big)

    The residual stream ``x`` itself is never normalised: each sub-layer reads a normalised
    copy and *adds* its output, so a block starts close to the identity and gradients reach
    the first layers through the sum. Attention is causal.

    ``x``: ``(batch, seq, dim)``; ``cos``, ``sin``: ``(seq, head_dim)``; ``weights``: one
    layer's tensors under Hugging Face's names, ``input_layernorm.weight`` (:math:`g_1`),
    ``self_attn.{q,k,v,o}_proj.weight``, ``post_attention_layernorm.weight`` (:math:`g_2`),
    ``mlp.{gate,up,down}_proj.weight``. Returns ``(batch, seq, dim)``.
    """
    attn = {name: weights[f"self_attn.{name}.weight"] for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
    mask = causal_mask(x.shape[1], device=x.device)  # (seq, seq)
    h = x + gqa_forward(rms_norm(x, weights["input_layernorm.weight"], eps), attn, cos, sin, mask,
                        n_heads, n_kv_heads)  # (batch, seq, dim)
    ffn_in = rms_norm(h, weights["post_attention_layernorm.weight"], eps)
    return h + swiglu(ffn_in, weights["mlp.gate_proj.weight"], weights["mlp.up_proj.weight"],
                      weights["mlp.down_proj.weight"])  # (batch, seq, dim)


def llama_logits(tokens: torch.Tensor, weights: dict[str, torch.Tensor], config: dict) -> torch.Tensor:
    r"""The whole dense model as a function of its state dict: token ids to logits.

    .. math:: \text{logits} = \mathrm{RMSNorm}\big(\mathrm{Block}_{L-1} \circ \dots \circ \mathrm{Block}_0(E[\text{tokens}])\big)\, W_{out}^\top

    ``tokens``: ``(batch, seq)`` int64; ``weights``: the course model's state dict
    (``embed_tokens.weight`` ``(vocab, dim)``, ``layers.{i}.…`` as in :func:`block_forward`,
    ``norm.weight``, and ``lm_head.weight`` ``(vocab, dim)`` unless the embeddings are tied:
    then :math:`W_{out} = E` and there is no ``lm_head.weight``). ``config``: a dict with
    ``n_layers``, ``n_heads``, ``n_kv_heads``, ``norm_eps``, ``rope_theta``, ``tie_embeddings``.
    Positions start at 0. Returns ``(batch, seq, vocab_size)`` float logits (not probabilities).
    """
    embed = weights["embed_tokens.weight"]  # (vocab, dim)
    head_dim = embed.shape[1] // config["n_heads"]
    cos, sin = rope_cache(head_dim, tokens.shape[1], config["rope_theta"])  # (seq, head_dim)
    x = embed[tokens]  # (batch, seq, dim)
    for i in range(config["n_layers"]):
        prefix = f"layers.{i}."
        layer = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        x = block_forward(x, layer, cos, sin, config["n_heads"], config["n_kv_heads"], config["norm_eps"])
    x = rms_norm(x, weights["norm.weight"], config["norm_eps"])
    w_out = embed if config["tie_embeddings"] else weights["lm_head.weight"]  # (vocab, dim)
    return F.linear(x, w_out)  # (batch, seq, vocab)


# ------------------------------------------------------------ the block and the model, as modules


class Block(nn.Module):
    """:func:`block_forward` as a module, whose feed-forward is a SwiGLU or a :class:`~solutions.moe.MoE`.

    ``forward(x, cos, sin, mask=None, cache=None)`` as :class:`~solutions.attention.Attention`'s,
    except that ``mask=None`` means *causal* (the usual training case): then, with no cache and
    ``sdpa``, attention runs as ``F.scaled_dot_product_attention(..., is_causal=True)``, whose
    fused kernel skips the masked half of the scores instead of reading a boolean mask.
    """

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg.dim, cfg.n_heads, cfg.n_kv_heads, sdpa=cfg.sdpa)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        if cfg.n_experts:
            self.mlp = MoE(MoEConfig(cfg.dim, cfg.hidden_dim, cfg.n_experts, cfg.top_k))
        else:
            self.mlp = SwiGLU(cfg.dim, cfg.hidden_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        a = self.input_layernorm(x)
        if mask is None and cache is None and self.self_attn.sdpa and _plain(self.self_attn):
            h = x + self._causal_attention(a, cos, sin)  # (batch, seq, dim)
        else:
            if mask is None:
                past = len(cache) if cache is not None else 0
                mask = causal_mask(x.shape[1], past + x.shape[1], device=x.device)
            h = x + self.self_attn(a, cos, sin, mask, cache)  # (batch, seq, dim)
        return h + self.mlp(self.post_attention_layernorm(h))

    # The method below computes exactly what Attention computes for a whole causal sequence,
    # with q, k and v fused into one matrix product and SDPA's own causal masking. It applies
    # only while the projections are plain nn.Linear layers; a wrapped one (chapter 09's
    # LoRA) takes the module's own forward. (Fusing SwiGLU's gate and up the same way was
    # measured slower: copying the two weights into one costs more than the product saves.)

    def _causal_attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        attn = self.self_attn
        batch, seq, _ = x.shape
        hd, nh, nkv = attn.head_dim, attn.n_heads, attn.n_kv_heads
        qkv = F.linear(x, torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        q, k, v = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
        q = apply_rope(q.view(batch, seq, nh, hd), cos, sin).transpose(1, 2)  # (batch, n_heads, seq, head_dim)
        k = apply_rope(k.view(batch, seq, nkv, hd), cos, sin).transpose(1, 2)  # (batch, n_kv_heads, seq, head_dim)
        v = v.view(batch, seq, nkv, hd).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # (batch, n_heads, seq, head_dim)
        return attn.o_proj(out.transpose(1, 2).reshape(batch, seq, nh * hd))


def _plain(module: nn.Module) -> bool:
    """True if every projection of an Attention or SwiGLU module is a bare nn.Linear."""
    return all(type(m) is nn.Linear for m in module.children())


class Transformer(nn.Module):
    """The language model: embedding, ``n_layers`` :class:`Block` s, final RMSNorm, output projection.

    ``forward(tokens, caches=None)``: ``tokens`` ``(batch, seq)`` int64; ``caches``: one
    :class:`~solutions.attention.KVCache` per layer (from :meth:`new_caches`) to decode with,
    the new tokens continuing after the cached positions. Returns logits ``(batch, seq, vocab)``.
    After a forward pass of a MoE model, :attr:`aux_loss` is the sum of the layers'
    load-balancing losses (0 for a dense model).
    """

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight  # one tensor, two names
        cos, sin = model_rope_cache(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_seq_len, head_dim)
        self.register_buffer("rope_sin", sin, persistent=False)

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]

    def forward(self, tokens: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        seq = tokens.shape[1]
        past = len(caches[0]) if caches else 0
        if past + seq > self.cfg.max_seq_len:
            raise ValueError(f"{past + seq} positions do not fit max_seq_len={self.cfg.max_seq_len}: "
                             "shorten the input or build the model with a larger max_seq_len")
        cos, sin = self.rope_cos[past:past + seq], self.rope_sin[past:past + seq]  # (seq, head_dim)
        mask = causal_mask(seq, past + seq, device=tokens.device) if caches else None  # None: causal
        x = self.embed_tokens(tokens)  # (batch, seq, dim)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, caches[i] if caches else None)
        return self.lm_head(self.norm(x))  # (batch, seq, vocab)

    @property
    def aux_loss(self) -> torch.Tensor:
        losses = [layer.mlp.aux_loss for layer in self.layers if isinstance(layer.mlp, MoE)]
        return sum(losses) if losses else torch.zeros(())


# ---------------------------------------------------------------------- parameter count


def param_count(config) -> tuple[int, int]:
    r"""Parameters of the model a config describes: ``(total, active)``.

    *Active* parameters are those one token's forward pass uses: all of them in a dense
    model; in a MoE only the ``top_k`` chosen of the ``n_experts`` experts (the router is
    always used). Per layer, with :math:`d` = ``dim``, :math:`d_h` = ``head_dim``,
    :math:`h` = ``n_heads``, :math:`h_{kv}` = ``n_kv_heads``, :math:`f` = ``hidden_dim``:

    .. math::
        \underbrace{2 d\, h d_h + 2 d\, h_{kv} d_h}_{q, o \;\;\; k, v}
        + \underbrace{3 d f}_{\text{one SwiGLU}} \times (1 \text{ or } N)
        + \underbrace{N d}_{\text{router}} + \underbrace{2 d}_{\text{norms}}

    plus the embedding :math:`V d`, the final norm :math:`d`, and the output projection
    :math:`V d` unless it is tied to the embedding (one tensor, counted once). Mixtral 8x7B:
    46.7B total, 12.9B active. ``config``: a :class:`LlamaConfig` or a dict of its fields.
    """
    c = config if isinstance(config, dict) else vars(config)  # a dict, or a LlamaConfig
    dim, head_dim = c["dim"], c["dim"] // c["n_heads"]
    n_kv_heads = c.get("n_kv_heads") or c["n_heads"]
    attention = 2 * dim * c["n_heads"] * head_dim + 2 * dim * n_kv_heads * head_dim
    expert = 3 * dim * c["hidden_dim"]
    n_experts = c.get("n_experts", 0)
    if n_experts:
        ffn_total, ffn_active = n_experts * expert + n_experts * dim, c["top_k"] * expert + n_experts * dim
    else:
        ffn_total = ffn_active = expert
    norms = 2 * dim
    embeddings = c["vocab_size"] * dim * (1 if c.get("tie_embeddings", False) else 2) + dim  # + final norm
    total = c["n_layers"] * (attention + ffn_total + norms) + embeddings
    active = c["n_layers"] * (attention + ffn_active + norms) + embeddings
    return total, active


# ------------------------------------------------------------------ Hugging Face checkpoints

def hf_key(name: str) -> str | None:
    """The course model's name for the Hugging Face tensor ``name``, or ``None`` for a tensor
    to skip (a stored RoPE ``inv_freq`` buffer, which the model recomputes).

    * drop the ``model.`` prefix (``lm_head.weight`` has none);
    * Mixtral's MoE is ``block_sparse_moe``, the course's ``mlp``;
    * Mixtral's experts name their matrices ``w1`` (gate), ``w3`` (up), ``w2`` (down).

    ``model.layers.3.block_sparse_moe.experts.7.w2.weight`` -> ``layers.3.mlp.experts.7.down_proj.weight``.
    A name of no Llama or Mixtral tensor raises ``ValueError``.
    """
    if name.endswith("rotary_emb.inv_freq"):
        return None  # a buffer, recomputed from rope_theta
    key = name.removeprefix("model.").replace(".block_sparse_moe.", ".mlp.")
    parts = key.split(".")  # layers, 3, mlp, experts, 7, w2, weight
    if len(parts) == 7 and parts[3] == "experts":
        parts[5] = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}.get(parts[5], parts[5])
        key = ".".join(parts)
    course_names = (r"(embed_tokens|norm|lm_head)\.weight"
                    r"|layers\.\d+\.(input_layernorm|post_attention_layernorm|self_attn\.[qkvo]_proj"
                    r"|mlp\.(gate|up|down)_proj|mlp\.gate|mlp\.experts\.\d+\.(gate|up|down)_proj)\.weight")
    if not re.fullmatch(course_names, key):
        raise ValueError(f"{name!r} is not a tensor of a Llama or Mixtral checkpoint")
    return key


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder: ``model.safetensors``, or the shards listed in
    ``model.safetensors.index.json`` (its ``weight_map`` maps each tensor to its file)."""
    from safetensors.torch import load_file

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path} has neither model.safetensors nor model.safetensors.index.json")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(str(path / file)))
    return tensors


def convert_hf_state_dict(hf_tensors: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """Rename (and, for fused experts, split) Hugging Face tensors into the course model's state dict.

    ``transformers`` 5 holds a Mixtral layer's experts fused, ``mlp.experts.gate_up_proj``
    ``(n_experts, 2 * hidden_dim, dim)`` (gate rows first) and ``mlp.experts.down_proj``
    ``(n_experts, dim, hidden_dim)``; both this layout and the per-expert one load.
    """
    state: dict[str, torch.Tensor] = {}
    for name, tensor in hf_tensors.items():
        fused = re.fullmatch(r"(?:model\.)?layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)", name)
        if fused:
            layer, kind = fused.groups()
            for e, w in enumerate(tensor.unbind(0)):
                prefix = f"layers.{layer}.mlp.experts.{e}."
                if kind == "down_proj":
                    state[prefix + "down_proj.weight"] = w  # (dim, hidden_dim)
                else:
                    state[prefix + "gate_proj.weight"], state[prefix + "up_proj.weight"] = w.chunk(2, dim=0)
            continue
        key = hf_key(name)
        if key is not None:
            state[key] = tensor
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as the embedding, when a file stores both
    return state


def load_hf_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32) -> Transformer:
    """A Hugging Face Llama or Mixtral checkpoint folder (``config.json`` and safetensors,
    one file or sharded with an index) as a course :class:`Transformer`, in ``eval()`` mode.

    Every tensor the model needs must be in the files with its exact shape; an error
    names the tensor, its expected and its actual shape. ``transformers`` is not needed.
    """
    path = Path(path)
    hf = json.loads((path / "config.json").read_text())
    architectures = hf.get("architectures") or [_MODEL_TYPES.get(hf.get("model_type"), f"model_type={hf.get('model_type')!r}")]
    if not any(a in SUPPORTED_ARCHITECTURES for a in architectures):
        raise ValueError(f"{path} holds a {', '.join(architectures)} "
                         f"checkpoint; supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}")
    cfg = LlamaConfig.from_hf(hf)
    model = Transformer(cfg)
    state = convert_hf_state_dict(read_safetensors(path), cfg)
    expected = {k: v for k, v in model.state_dict().items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
    for key, param in expected.items():
        if key not in state:
            raise ValueError(f"the checkpoint has no tensor for {key} (expected shape {tuple(param.shape)})")
        if state[key].shape != param.shape:
            raise ValueError(f"tensor {key} has shape {tuple(state[key].shape)} in the checkpoint, "
                             f"expected {tuple(param.shape)} from config.json")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ValueError(f"the checkpoint has tensors the model does not use: {extra[:5]}")
    model.load_state_dict(state, strict=False)  # lm_head.weight, when tied, is embed_tokens.weight
    return model.to(dtype).eval()
