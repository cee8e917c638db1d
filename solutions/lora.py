r"""LoRA (and DoRA): fine-tune a frozen model through small low-rank updates of its linear layers.

Full fine-tuning updates every weight :math:`W \in \mathbb{R}^{d_{out} \times d_{in}}` of the
model, and AdamW keeps two more numbers per weight. **LoRA** (Hu et al., 2021) freezes
:math:`W` and learns its update as a product of two thin matrices of rank :math:`r`:

.. math::
    h = W x + \frac{\alpha}{r}\, B A\, \mathrm{dropout}(x), \qquad
    A \in \mathbb{R}^{r \times d_{in}}, \quad B \in \mathbb{R}^{d_{out} \times r}

so a layer trains :math:`r (d_{in} + d_{out})` numbers instead of :math:`d_{in} d_{out}`
(LLaMA-2 7B's 4096 x 4096 projections at :math:`r = 16`: 0.8%). The paper's observation is
that the update a fine-tuning run needs has a low "intrinsic rank". Conventions, as in
Hugging Face's PEFT library, whose adapters this module loads:

* ``lora_A`` is initialised like an ``nn.Linear`` weight (Kaiming-uniform with
  :math:`a = \sqrt 5`, i.e. :math:`U(-1/\sqrt{d_{in}}, 1/\sqrt{d_{in}})`) and ``lora_B`` to
  zero, so :math:`BA = 0`: the adapted model starts *exactly* equal to the base model, and
  the first gradient step reaches :math:`B` (through :math:`Ax \ne 0`), then :math:`A`;
* the update is scaled by :math:`\alpha / r` (``lora_alpha / r``; rsLoRA, Kalajdzievski 2023,
  uses :math:`\alpha / \sqrt r`), so that changing :math:`r` does not change the size of the
  update, and the learning rate need not be tuned again;
* dropout applies to the input of the LoRA path only, never to the frozen path;
* after training the update can be **merged**, :math:`W \leftarrow W + \frac{\alpha}{r} BA`:
  the model is then a plain model again, with no extra cost at inference.

**DoRA** (Liu et al., 2024) splits each output row of the adapted weight into a direction
and a learned **magnitude** :math:`m \in \mathbb{R}^{d_{out}}`:

.. math::
    W' = m \odot \frac{W + \frac{\alpha}{r} BA}{\lVert W + \frac{\alpha}{r} BA \rVert_{\text{row}}},
    \qquad h = W' x

where the norm is taken per output feature (over the input dimension), is initialised so
that :math:`m = \lVert W \rVert_{\text{row}}` (the model starts equal to the base), and is
*detached* from the gradient graph (the paper's section 4.3, and PEFT): a constant in the
backward pass, which saves memory and changes little.

This module has, in the order the chapter builds them:

* :func:`lora_init`: ``lora_A`` Kaiming-uniform, ``lora_B`` zero, the rank validated;
* :func:`lora_linear`: the LoRA forward pass of one linear layer, as a function;
* :class:`LoRALinear`: a frozen ``nn.Linear`` and its adapter as a module, with PEFT's names
  (``base_layer``, ``lora_A``, ``lora_B``, ``lora_magnitude_vector``);
* :func:`inject_lora`: wrap the target linear layers of a model, freeze the rest, count;
* :func:`merge_lora` / :func:`unmerge_lora`: fold the update into the weight and back;
* :func:`peft_key` and :func:`load_peft_adapter`: PEFT adapter folders into the course model;
* :func:`dora_magnitude`, :func:`dora_linear`, :func:`dora_merge`: DoRA (the chapter's bonus);
* :func:`training_memory`: bytes of weights, gradients and AdamW states, full vs LoRA;
* :class:`TrainableTokens` and :func:`train_tokens`: train a few rows of the embedding (the chat
  template's new tokens), as PEFT's ``trainable_token_indices``;
* :func:`finetune` and :func:`sweep`: chapter 08's fine-tuning, full or LoRA, and the learning
  rate sweep behind the chapter's table (``python -m solutions.lora --sweep``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from solutions.model import LlamaConfig, Transformer, hf_key
from solutions.sft import IGNORE_INDEX, PAD, collate, sft_example, sft_train

# ---------------------------------------------------------------------------- one layer


def lora_init(in_features: int, out_features: int, r: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The initial adapter of a linear layer: ``(lora_A, lora_B)``, float32.

    ``lora_A`` ``(r, in_features)``: Kaiming-uniform with :math:`a = \sqrt 5`, the default
    init of an ``nn.Linear`` weight, which is :math:`U(-1/\sqrt{d_{in}}, 1/\sqrt{d_{in}})`:
    ``nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5), generator=generator)`` (PEFT's
    ``init_lora_weights=True``). ``lora_B`` ``(out_features, r)``: zeros. So :math:`BA = 0`
    and the adapted layer starts equal to the base layer; :math:`A \ne 0` lets the first
    gradient reach :math:`B` (both zero would train nothing: each one's gradient is
    proportional to the other). ``generator``: where the random numbers come from (``None``:
    torch's global generator). ``ValueError`` unless ``r`` is an int >= 1.
    """
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"r (the rank of the update) must be an int >= 1, got {r!r}: "
                         "LoRA learns B A with A of shape (r, in_features)")
    lora_A = torch.empty(r, in_features)
    nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5), generator=generator)  # U(-1/sqrt(in), 1/sqrt(in))
    lora_B = torch.zeros(out_features, r)
    return lora_A, lora_B


def lora_linear(x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                alpha: float, dropout_mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""A linear layer with a LoRA adapter (no bias, as in LLaMA):

    .. math:: y = x W^\top + \frac{\alpha}{r}\, \big((x \odot M) A^\top\big) B^\top

    ``x``: ``(..., in_features)``; ``weight`` :math:`W`: ``(out_features, in_features)``;
    ``lora_A``: ``(r, in_features)``; ``lora_B``: ``(out_features, r)``, so the rank
    :math:`r` is ``lora_A.shape[0]`` and the scale is ``alpha / r`` (a float: 16 / 3 is
    5.33, not 5). ``dropout_mask`` :math:`M`: ``None`` (no dropout, as in evaluation) or a
    tensor of ``x``'s shape holding 0 or :math:`1/(1-p)`, what ``F.dropout(x, p)`` multiplies
    ``x`` by: it applies to the LoRA path's input only, never to the frozen path. The
    product is computed as two thin products, :math:`A` first: :math:`BA` (a full
    ``out x in`` matrix) is never formed. Returns ``(..., out_features)``. ``ValueError``
    if the shapes do not fit together.
    """
    out_features, in_features = weight.shape
    r = lora_A.shape[0]
    if lora_A.ndim != 2 or lora_A.shape[1] != in_features or r < 1:
        raise ValueError(f"lora_A has shape {tuple(lora_A.shape)}, but the layer's weight is {tuple(weight.shape)}: "
                         f"lora_A must be (r, in_features) = (r, {in_features}), r >= 1")
    if lora_B.shape != (out_features, r):
        raise ValueError(f"lora_B has shape {tuple(lora_B.shape)}, but lora_A is {tuple(lora_A.shape)} and the weight "
                         f"{tuple(weight.shape)}: lora_B must be (out_features, r) = ({out_features}, {r})")
    if x.shape[-1] != in_features:
        raise ValueError(f"x has {x.shape[-1]} features in its last dimension, the layer takes {in_features}")
    if dropout_mask is not None and dropout_mask.shape != x.shape:
        raise ValueError(f"dropout_mask has shape {tuple(dropout_mask.shape)}, x has {tuple(x.shape)}: "
                         "the mask multiplies x element by element")
    h = x if dropout_mask is None else x * dropout_mask  # (..., in): dropout on the LoRA path only
    update = F.linear(F.linear(h, lora_A), lora_B)  # (..., r) then (..., out)
    return F.linear(x, weight) + update * (alpha / r)  # (..., out)


# ---------------------------------------------------------------------------- the module


class LoRALinear(nn.Module):
    r"""A frozen ``nn.Linear`` (``base_layer``) with a LoRA adapter, named as in PEFT.

    ``lora_A`` (``in_features -> r``) and ``lora_B`` (``r -> out_features``) are bias-free
    ``nn.Linear`` layers, so their weights are ``lora_A.weight`` ``(r, in)`` and
    ``lora_B.weight`` ``(out, r)``, and a layer's state dict keys are PEFT's own
    (``...q_proj.lora_A.weight``, ``...q_proj.base_layer.weight``). ``init_lora_weights=True``
    initialises them with :func:`lora_init`; ``False`` keeps ``nn.Linear``'s random init for
    both (a non-zero ``B``, as PEFT's ``init_lora_weights=False``: for tests, or before
    loading trained weights). ``use_rslora``: scale by :math:`\alpha/\sqrt r` instead of
    :math:`\alpha/r`. ``use_dora``: DoRA, with the magnitude ``lora_magnitude_vector``
    ``(out_features,)`` initialised by :func:`dora_magnitude`.

    ``forward(x)``: :func:`lora_linear` (or :func:`dora_linear`), with ``lora_dropout`` in
    training mode; once merged (:meth:`merge`), the base layer alone. ``weight``: the
    effective weight :math:`W + \frac{\alpha}{r} BA` (for code that multiplies by a layer's
    ``.weight`` instead of calling it: the course's ``Attention`` does, to project q, k and v
    in one step; it gets the same result, without dropout). The base layer is not frozen
    here: :func:`inject_lora` freezes it.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, use_dora: bool = False,
                 use_rslora: bool = False, init_lora_weights: bool = True):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRA wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError(f"r (the rank of the update) must be an int >= 1, got {r!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be a number > 0 (the update is scaled by alpha / r), got {alpha!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.lora_alpha, self.use_rslora, self.use_dora = r, alpha, use_rslora, use_dora
        # the functions scale by alpha / r; rsLoRA's alpha / sqrt(r) is the same with alpha * sqrt(r)
        self.alpha = alpha * math.sqrt(r) if use_rslora else alpha
        self.scaling = self.alpha / r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=base.weight.device)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=base.weight.device)
        if init_lora_weights:
            lora_A, lora_B = lora_init(self.in_features, self.out_features, r)
            with torch.no_grad():
                self.lora_A.weight.copy_(lora_A)
                self.lora_B.weight.copy_(lora_B)
        self.merged = False
        self._weight_norm = None  # DoRA: the norm at merge time, to unmerge
        if use_dora:
            with torch.no_grad():
                magnitude = dora_magnitude(base.weight, self.lora_A.weight, self.lora_B.weight, self.alpha)
            self.lora_magnitude_vector = nn.Parameter(magnitude.float())

    def _dropout_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.training or isinstance(self.lora_dropout, nn.Identity):
            return None
        return self.lora_dropout(torch.ones_like(x))  # 0 or 1 / (1 - p), as F.dropout multiplies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        W, A = self.base_layer.weight, self.lora_A.weight
        if W.dtype != A.dtype:  # a low-precision base with float32 adapters: compute in float32
            return self._adapted(x.to(A.dtype), W.to(A.dtype)).to(x.dtype)
        return self._adapted(x, W)

    def _adapted(self, x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        A, B, mask = self.lora_A.weight, self.lora_B.weight, self._dropout_mask(x)
        if not self.use_dora:
            return lora_linear(x, W, A, B, self.alpha, mask)
        if mask is None:
            return dora_linear(x, W, A, B, self.alpha, self.lora_magnitude_vector)
        # PEFT: the frozen path sees x, the DoRA part the dropped x: W x + (m/n - 1) W x_d + (m/n) s B A x_d
        dropped = x * mask
        return F.linear(x - dropped, W) + dora_linear(dropped, W, A, B, self.alpha, self.lora_magnitude_vector)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight (out, in), differentiable with respect to the adapter."""
        W = self.base_layer.weight
        if self.merged:
            return W
        A, B = self.lora_A.weight, self.lora_B.weight
        if self.use_dora:
            norm = dora_magnitude(W, A, B, self.alpha)  # (out,), detached
            combined = W + (self.scaling * (B @ A)).to(W.dtype)
            return (self.lora_magnitude_vector / norm)[:, None].to(W.dtype) * combined
        return W + (self.scaling * (B @ A)).to(W.dtype)

    def merge(self) -> None:
        """Fold the adapter into ``base_layer.weight`` (:func:`merge_lora`, or :func:`dora_merge`)."""
        if not self.use_dora:
            merge_lora(self)
            return
        if self.merged:
            raise ValueError("this layer is already merged: merging again would add the update twice")
        W = self.base_layer.weight
        with torch.no_grad():
            self._weight_norm = dora_magnitude(W, self.lora_A.weight, self.lora_B.weight, self.alpha)
            W.copy_(dora_merge(W, self.lora_A.weight, self.lora_B.weight, self.alpha, self.lora_magnitude_vector))
        self.merged = True

    def unmerge(self) -> None:
        """Take the adapter back out of ``base_layer.weight`` (:func:`unmerge_lora`; DoRA: divide
        by the magnitude over the norm stored at merge time, subtract the update)."""
        if not self.use_dora:
            unmerge_lora(self)
            return
        if not self.merged:
            raise ValueError("this layer is not merged: there is nothing to unmerge")
        W = self.base_layer.weight
        with torch.no_grad():
            delta = self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())
            factor = (self.lora_magnitude_vector.float() / self._weight_norm.float())[:, None]  # (out, 1)
            W.copy_((W.float() / factor - delta).to(W.dtype))
        self._weight_norm = None
        self.merged = False

    def extra_repr(self) -> str:
        kind = "DoRA" if self.use_dora else "LoRA"
        return f"{kind} r={self.r}, alpha={self.lora_alpha}{', rsLoRA' if self.use_rslora else ''}, merged={self.merged}"


# ---------------------------------------------------------------------------- the model

def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters of ``model``; a tensor shared by two names (tied
    embeddings) counts once, as ``model.parameters()`` lists it once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def linear_names(model: nn.Module) -> str:
    """The short names of a model's linear layers ("q_proj, k_proj, ..."), to say what exists."""
    short = dict.fromkeys(n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear))
    return ", ".join(short)


def inject_lora(model: nn.Module, target_modules, r: int, alpha: float, dropout: float = 0.0,
                use_dora: bool = False) -> tuple[int, int]:
    """Wrap the target linear layers of ``model`` in :class:`LoRALinear` (in place), freeze
    every other parameter, and return ``(trainable, total)`` parameter counts.

    ``target_modules``: a list of module names, each matching every module whose name is that
    name or ends with ``"." + name`` (PEFT's rule: ``"q_proj"`` matches
    ``layers.0.self_attn.q_proj``, ``"gate"`` matches a MoE router ``layers.0.mlp.gate`` but not
    ``gate_proj``); or ``"all-linear"``: every ``nn.Linear`` but the output head ``lm_head``
    (PEFT's ``target_modules="all-linear"``). Each layer is replaced by
    ``LoRALinear(layer, r, alpha, dropout, use_dora)`` with ``setattr`` on its parent. Then
    only the adapters' parameters (names containing ``lora_``) keep ``requires_grad``.
    Counts: ``model.parameters()``, which lists a tied embedding once; total includes the
    adapters. ``ValueError`` for a target that matches no module (naming the linear layers
    that exist), a target that is not an ``nn.Linear``, or a model that already has adapters.
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("this model already has LoRA layers: inject into a fresh model (or merge_and_unload first)")
    modules = dict(model.named_modules())
    if target_modules == "all-linear":
        names = [n for n, m in modules.items() if isinstance(m, nn.Linear) and n != "lm_head"]
    else:
        targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
        names = []
        for target in targets:
            found = [n for n in modules if n == target or n.endswith("." + target)]
            if not found:
                raise ValueError(f"target module {target!r} matches no module of the model; its linear layers are "
                                 f"named {linear_names(model)} (or use 'all-linear')")
            names += [n for n in found if n not in names]
        for name in names:
            if not isinstance(modules[name], nn.Linear):
                raise ValueError(f"{name} is a {type(modules[name]).__name__}: LoRA wraps nn.Linear layers, "
                                 f"such as {linear_names(model)}")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(modules[name], r, alpha, dropout, use_dora))
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    params = list(model.parameters())  # a tied embedding is one tensor, listed once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every :class:`LoRALinear` of ``model`` and put its base layer back in its place:
    a plain model again (PEFT's ``merge_and_unload``), its state dict the base model's names."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            if not module.merged:
                module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.base_layer)
    return model


# ---------------------------------------------------------------------------- merging


def merge_lora(layer: LoRALinear) -> None:
    r"""Fold a layer's adapter into its weight, in place: :math:`W \leftarrow W + \frac{\alpha}{r} BA`.

    The update ``layer.scaling * (B @ A)`` ``(out, in)`` is computed in float32 and added to
    the weight in float32, and the sum is cast **once** to the weight's dtype (a bfloat16
    weight keeps 8 significant bits: rounding the update first, then the sum, rounds twice).
    Then ``layer.merged = True``, so that ``layer(x)`` is ``layer.base_layer(x)``: the same
    output as before, without the adapter's cost. ``ValueError`` if the layer is already
    merged (merging again would add the update twice).
    """
    if layer.merged:
        raise ValueError("this layer is already merged: merging again would add the update twice")
    W = layer.base_layer.weight  # (out, in)
    delta = layer.scaling * (layer.lora_B.weight.float() @ layer.lora_A.weight.float())  # (out, in), float32
    with torch.no_grad():
        W.copy_((W.float() + delta).to(W.dtype))
    layer.merged = True


def unmerge_lora(layer: LoRALinear) -> None:
    r"""Take the adapter back out of a merged layer's weight: :math:`W \leftarrow W - \frac{\alpha}{r} BA`,
    in float32, cast once; then ``layer.merged = False``. Restores the base weight (exactly in
    float32 up to rounding). ``ValueError`` if the layer is not merged (subtracting the update
    from the base weight would corrupt it)."""
    if not layer.merged:
        raise ValueError("this layer is not merged: there is nothing to unmerge")
    W = layer.base_layer.weight
    delta = layer.scaling * (layer.lora_B.weight.float() @ layer.lora_A.weight.float())
    with torch.no_grad():
        W.copy_((W.float() - delta).to(W.dtype))
    layer.merged = False


# ---------------------------------------------------------------------------- DoRA (bonus)


def dora_magnitude(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""The norm of each output feature's row of the adapted weight, detached: ``(out_features,)`` float32.

    .. math:: n_i = \Big\lVert \big(W + \tfrac{\alpha}{r} BA\big)_{i,:} \Big\rVert_2

    ``nn.Linear`` stores :math:`W` as ``(out_features, in_features)``, so one output feature
    is one **row**, and its norm runs over the input dimension (``dim=1``). (The DoRA paper
    writes the layer as :math:`x W` with :math:`W` of shape ``(in, out)`` and takes the norm of
    each *column*: the same vectors.) It initialises DoRA's magnitude (with :math:`B = 0`,
    :math:`m = \lVert W \rVert_{\text{row}}`, so the model starts equal to the base), and it
    is the denominator of :func:`dora_linear`, where it is a constant for the gradient
    (``.detach()``, the paper's section 4.3). Computed in float32.
    """
    r = lora_A.shape[0]
    combined = weight.float() + (alpha / r) * (lora_B.float() @ lora_A.float())  # (out, in)
    return torch.linalg.vector_norm(combined, dim=1).detach()  # (out,)


def dora_linear(x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                alpha: float, magnitude: torch.Tensor) -> torch.Tensor:
    r"""A linear layer with a DoRA adapter:

    .. math:: y = \frac{m}{n} \odot \Big(x W^\top + \frac{\alpha}{r} (x A^\top) B^\top\Big),
        \qquad n = \mathrm{sg}\Big(\big\lVert W + \tfrac{\alpha}{r} BA \big\rVert_{\text{row}}\Big)

    ``magnitude`` :math:`m`: ``(out_features,)``; :math:`n` = :func:`dora_magnitude` (detached:
    ``sg`` is stop-gradient), so gradients reach :math:`m`, :math:`A` and :math:`B` through the
    numerator only. Each output feature :math:`i` is the LoRA layer's output
    (:func:`lora_linear`, which checks the shapes: ``ValueError`` if they do not fit, before the
    norm is computed) scaled by :math:`m_i / n_i`. Returns ``(..., out_features)``.
    """
    out = lora_linear(x, weight, lora_A, lora_B, alpha)  # (..., out); first: it checks the shapes (ValueError)
    norm = dora_magnitude(weight, lora_A, lora_B, alpha).to(x.dtype)  # (out,), a constant
    return (magnitude / norm) * out  # (..., out)


def dora_merge(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, alpha: float,
               magnitude: torch.Tensor) -> torch.Tensor:
    r"""The merged DoRA weight :math:`W' = \frac{m}{n} \odot (W + \frac{\alpha}{r} BA)` (each row
    :math:`i` scaled by :math:`m_i / n_i`), computed in float32 and cast once to ``weight``'s
    dtype: ``F.linear(x, dora_merge(...))`` is :func:`dora_linear`'s output. Returns
    ``(out_features, in_features)``. To unmerge, keep :math:`n` (the norm *before* merging:
    it cannot be computed from :math:`W'`)."""
    r = lora_A.shape[0]
    combined = weight.float() + (alpha / r) * (lora_B.float() @ lora_A.float())  # (out, in)
    norm = torch.linalg.vector_norm(combined, dim=1, keepdim=True)  # (out, 1)
    return (magnitude.float()[:, None] / norm * combined).to(weight.dtype)


# ---------------------------------------------------------------------------- PEFT adapters

PEFT_PREFIX = "base_model.model."  # PEFT's PeftModel -> LoraModel -> the transformers model
ADAPTER_TENSORS = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")


def peft_key(name: str) -> str:
    """The course model's name for a tensor of a PEFT LoRA adapter file.

    PEFT saves ``base_model.model.`` + the transformers module's name + the adapter tensor:
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` ->
    ``layers.0.self_attn.q_proj.lora_A.weight``; ``base_model.model.lm_head.lora_B.weight`` ->
    ``lm_head.lora_B.weight``; a DoRA magnitude, ``...down_proj.lora_magnitude_vector``, has no
    ``.weight``. The module's name is renamed as a checkpoint's (``hf_key`` of chapter 05:
    ``model.`` dropped, Mixtral's ``block_sparse_moe`` and ``w1``/``w3``/``w2`` renamed).
    ``ValueError`` for anything else (a full weight, an embedding adapter, a name without
    the prefix).
    """
    if not name.startswith(PEFT_PREFIX):
        raise ValueError(f"{name!r} is not a PEFT adapter tensor: they start with {PEFT_PREFIX!r}")
    rest = name[len(PEFT_PREFIX):]
    for tensor in ADAPTER_TENSORS:
        if rest.endswith("." + tensor):
            module = rest[: -len(tensor) - 1]
            try:
                course = hf_key(module + ".weight")  # the module's own weight, renamed like a checkpoint's
            except ValueError:
                course = None
            if course is None:
                break
            return course[: -len(".weight")] + "." + tensor
    raise ValueError(f"{name!r} is not a LoRA tensor of a Llama or Mixtral linear layer "
                     f"(expected <module>.lora_A.weight, .lora_B.weight or .lora_magnitude_vector)")


def load_peft_adapter(model: Transformer, path: str | Path, trainable: bool = False) -> Transformer:
    """Load a PEFT LoRA (or DoRA) adapter folder into a course model (in place); returns it.

    The folder holds ``adapter_config.json`` (``r``, ``lora_alpha``, ``use_rslora``,
    ``use_dora``, ...) and ``adapter_model.safetensors``, as ``PeftModel.save_pretrained``
    writes them. Every module the file has tensors for is wrapped in :class:`LoRALinear` and
    gets them (:func:`peft_key` renames them); everything is frozen unless ``trainable``
    (then only the adapters train, as after :func:`inject_lora`). ``ValueError``, naming what
    does not match, for an adapter of another kind (not LoRA, biases, embeddings, per-module
    ranks), of another base model (a module this model does not have, or other shapes), or
    with a tensor missing; the model is left unchanged then.
    """
    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads((path / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path} holds a {config.get('peft_type')} adapter; this loader reads LoRA (and DoRA) adapters")
    base_class = (config.get("auto_mapping") or {}).get("base_model_class")
    if base_class not in (None, "LlamaForCausalLM", "MixtralForCausalLM"):
        raise ValueError(f"{path} is an adapter for a {base_class}; the course model is a Llama (or Mixtral)")
    for option, default in (("bias", "none"), ("lora_bias", False), ("fan_in_fan_out", False),
                            ("modules_to_save", None), ("rank_pattern", {}), ("alpha_pattern", {}),
                            ("layer_replication", None), ("use_qalora", False), ("trainable_token_indices", None)):
        value = config.get(option, default)
        if value and value != default:
            raise ValueError(f"{path}: adapter_config.json sets {option}={config[option]!r}, which this loader "
                             f"does not support (only {option}={default!r})")
    r, alpha = config["r"], config["lora_alpha"]
    use_dora, use_rslora = bool(config.get("use_dora")), bool(config.get("use_rslora"))
    tensors = {peft_key(k): v for k, v in load_file(str(path / "adapter_model.safetensors")).items()}
    modules = dict(model.named_modules())
    if any(isinstance(m, LoRALinear) for m in modules.values()):
        raise ValueError("this model already has LoRA layers: load the adapter into a fresh model")
    targets = sorted({k.rsplit(".lora_", 1)[0] for k in tensors}, key=lambda n: [int(p) if p.isdigit() else p
                                                                               for p in n.split(".")])
    for name in targets:
        layer = modules.get(name)
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"the adapter has weights for {name}, which this model does not have"
                             f"{'' if layer is None else ' as a linear layer'}: it was trained on another base model")
        wanted = {"lora_A.weight": (r, layer.in_features), "lora_B.weight": (layer.out_features, r)}
        if use_dora:
            wanted["lora_magnitude_vector"] = (layer.out_features,)
        for tensor, shape in wanted.items():
            key = f"{name}.{tensor}"
            if key not in tensors:
                raise ValueError(f"the adapter has no tensor for {key} (expected shape {shape})")
            if tuple(tensors[key].shape) != shape:
                raise ValueError(f"{key} has shape {tuple(tensors[key].shape)} in the adapter, expected {shape} for "
                                 f"r={r} and this model's {name} ({layer.in_features} -> {layer.out_features}): "
                                 "the adapter was trained on another base model")
    extra = sorted(k for k in tensors if not use_dora and k.endswith("lora_magnitude_vector"))
    if extra:
        raise ValueError(f"the adapter has DoRA magnitudes ({extra[0]}, ...) but adapter_config.json says use_dora=false")
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        wrapped = LoRALinear(modules[name], r, alpha, use_dora=use_dora, use_rslora=use_rslora, init_lora_weights=False)
        with torch.no_grad():
            wrapped.lora_A.weight.copy_(tensors[f"{name}.lora_A.weight"])
            wrapped.lora_B.weight.copy_(tensors[f"{name}.lora_B.weight"])
            if use_dora:
                wrapped.lora_magnitude_vector.copy_(tensors[f"{name}.lora_magnitude_vector"])
        setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapped)
    for name, p in model.named_parameters():
        p.requires_grad_(trainable and "lora_" in name)
    return model


# ---------------------------------------------------------------------------- the checkpoints' adapters


def inject_lora_from_config(config: dict, target_modules, r: int, alpha: float) -> dict:
    """:func:`inject_lora` on a fresh ``Transformer(LlamaConfig(**config))`` (what the chapter's
    checkpoint calls): what it wrapped, what trains, and the counts it returned, as plain data."""
    model = Transformer(LlamaConfig(**config))
    trainable, total = inject_lora(model, target_modules, r, alpha)
    return {
        "counts (trainable, total)": [trainable, total],
        "wrapped modules": sorted(n for n, m in model.named_modules() if isinstance(m, LoRALinear)),
        "trainable tensors": sorted(n for n, p in model.named_parameters() if p.requires_grad),
    }


def merge_from_data(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, alpha: float,
                    steps: list[str]) -> list:
    """:func:`merge_lora` and :func:`unmerge_lora` on a layer given as plain data (what the
    chapter's checkpoint calls): a frozen ``LoRALinear`` with these weights, then each step
    (``"merge"`` or ``"unmerge"``) in turn. For each step: ``{"weight": base weight after it,
    "merged": layer.merged}``, or ``"ValueError"`` if it raised one."""
    out_features, in_features = weight.shape
    base = nn.Linear(in_features, out_features, bias=False, dtype=weight.dtype)
    layer = LoRALinear(base, lora_A.shape[0], alpha, init_lora_weights=False)
    with torch.no_grad():
        base.weight.copy_(weight)
        layer.lora_A.weight.copy_(lora_A)
        layer.lora_B.weight.copy_(lora_B)
    base.weight.requires_grad_(False)  # frozen, as after inject_lora
    results = []
    for step in steps:
        try:
            merge_lora(layer) if step == "merge" else unmerge_lora(layer)
        except ValueError:
            results.append("ValueError")
            continue
        results.append({"weight": layer.base_layer.weight.detach().clone(), "merged": bool(layer.merged)})
    return results


def _probe_weights(shape: torch.Size) -> torch.Tensor:
    """Fixed, distinct weights (sin(0.7 k + 0.3)) to project an output to one number."""
    n = math.prod(shape)
    return torch.sin(torch.arange(n, dtype=torch.float64) * 0.7 + 0.3).float().reshape(shape)


def dora_from_data(x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                   alpha: float, magnitude: torch.Tensor) -> dict:
    """DoRA's three functions on plain data (what the chapter's bonus checkpoint calls): the
    initial magnitude :func:`dora_magnitude`, the output of :func:`dora_linear` and the gradients
    a fixed projection of it sends to ``lora_A``, ``lora_B`` and ``magnitude`` (so a norm that is
    not detached shows), and the merged weight :func:`dora_merge`."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (lora_A, lora_B, magnitude)]
    with torch.enable_grad():
        y = dora_linear(x, weight, leaves[0], leaves[1], alpha, leaves[2])
        grads = torch.autograd.grad((y * _probe_weights(y.shape)).sum(), leaves, allow_unused=True)
    return {
        "magnitude": dora_magnitude(weight, lora_A, lora_B, alpha),
        "output": y.detach(),
        "gradients (lora_A, lora_B, magnitude)": [None if g is None else g.detach() for g in grads],
        "merged weight": dora_merge(weight, lora_A, lora_B, alpha, magnitude),
    }


# ---------------------------------------------------------------------------- memory


def lora_parameter_count(config: dict, r: int, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj")) -> int:
    """Adapter parameters of LoRA of rank ``r`` on the given linear layers of every layer of a
    dense LLaMA config: ``r * (in + out)`` per layer and target (``targets`` default: every
    linear layer but the head, as ``"all-linear"``)."""
    dim, head_dim = config["dim"], config["dim"] // config["n_heads"]
    kv = (config.get("n_kv_heads") or config["n_heads"]) * head_dim
    shapes = {"q_proj": (dim, config["n_heads"] * head_dim), "k_proj": (dim, kv), "v_proj": (dim, kv),
              "o_proj": (config["n_heads"] * head_dim, dim), "gate_proj": (dim, config["hidden_dim"]),
              "up_proj": (dim, config["hidden_dim"]), "down_proj": (config["hidden_dim"], dim)}
    return config["n_layers"] * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


def training_memory(n_params: int, n_trainable: int, weight_bytes: int = 2) -> dict[str, int]:
    """Bytes of model state while training with AdamW in mixed precision (activations aside).

    Every weight is stored in ``weight_bytes`` (bf16: 2). Each *trainable* weight also has a
    bf16 gradient (2 bytes), a float32 master copy (4) and AdamW's two float32 moments (4 + 4):
    with its own 2, the "16 bytes per parameter" of mixed-precision training (Rajbhandari et
    al., 2020, ZeRO). A frozen weight costs ``weight_bytes`` only. Returns the bytes by kind.
    """
    return {"weights": n_params * weight_bytes, "gradients": n_trainable * 2, "master weights": n_trainable * 4,
            "AdamW moments": n_trainable * 8}


# ---------------------------------------------------------------------------- new tokens


class TrainableTokens(nn.Module):
    r"""An embedding (or a head tied to it) of which only some rows train: PEFT's
    ``trainable_token_indices``. The frozen ``base_layer`` keeps its weight; the rows
    ``token_ids`` get a trainable ``trainable_tokens_delta`` ``(len(token_ids), dim)``, zero at
    first: ``weight = base_layer.weight.index_add(0, token_ids, delta)``. A head tied to the
    embedding is wrapped with the *same* delta, so both stay tied. (PEFT stores the new rows
    themselves rather than their change: the same function.)"""

    def __init__(self, base: nn.Embedding | nn.Linear, token_ids, delta: nn.Parameter | None = None):
        super().__init__()
        self.base_layer = base
        self.register_buffer("token_ids", torch.as_tensor(list(token_ids), dtype=torch.long), persistent=False)
        dim = base.weight.shape[1]
        self.trainable_tokens_delta = delta if delta is not None else nn.Parameter(torch.zeros(len(self.token_ids), dim))

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight.index_add(0, self.token_ids, self.trainable_tokens_delta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.base_layer, nn.Embedding):
            return F.embedding(x, self.weight)  # (..., dim)
        return F.linear(x, self.weight)  # (..., vocab)


def train_tokens(model: Transformer, token_ids) -> int:
    """Let the embedding rows of ``token_ids`` (and the tied head's) train, nothing else of the
    embedding: wraps ``embed_tokens`` (and a tied ``lm_head``) in :class:`TrainableTokens`.
    Call it after :func:`inject_lora`. Returns the number of new trainable parameters."""
    embed = TrainableTokens(model.embed_tokens, token_ids)
    embed.base_layer.weight.requires_grad_(False)
    if model.lm_head.weight is model.embed_tokens.weight:  # tied: the head reads the same rows
        model.lm_head = TrainableTokens(model.lm_head, token_ids, embed.trainable_tokens_delta)
    model.embed_tokens = embed
    return embed.trainable_tokens_delta.numel()


# ---------------------------------------------------------------------------- the chapter's result

# The recipe of the chapter's comparison (chapter 08's fine-tuning, shorter): every run sees the
# same batches of the same conversations; LoRA on every linear layer but the head, alpha 16.
RECIPE = {"steps": 24, "batch_size": 4, "warmup_steps": 3, "alpha": 16, "seed": 0}
NEW_TOKENS = ("<|im_start|>", "<|im_end|>")  # the chat template's tokens, which pretraining never saw


def finetune(config: dict, state: dict, examples: list, pad_id: int, rank: int | None, lr: float,
             token_ids=(), steps: int = RECIPE["steps"], batch_size: int = RECIPE["batch_size"],
             warmup_steps: int = RECIPE["warmup_steps"], alpha: float = RECIPE["alpha"], seed: int = RECIPE["seed"],
             progress: bool = True) -> tuple[Transformer, list[float], int]:
    """Fine-tune a fresh copy of the base model on ``examples`` with chapter 08's ``sft_train``:
    all its weights (``rank=None``) or LoRA of rank ``rank`` on every linear layer but the head
    (``inject_lora(model, "all-linear", rank, alpha)``), and then the embedding rows of
    ``token_ids`` too (:func:`train_tokens`). Returns ``(model, losses, trainable parameters)``."""
    torch.manual_seed(seed)  # the adapters' initial A
    model = Transformer(LlamaConfig(**config))
    model.load_state_dict(state)
    if rank is None:
        trainable = count_parameters(model)[0]
    else:
        trainable, _ = inject_lora(model, "all-linear", rank, alpha)
        if token_ids:
            trainable += train_tokens(model, token_ids)
    losses = sft_train(model, examples, steps=steps, batch_size=batch_size, pad_id=pad_id, max_lr=lr,
                       warmup_steps=warmup_steps, seed=seed, progress=progress)
    return model, losses, trainable


@torch.no_grad()
def heldout_loss(model: nn.Module, examples: list, pad_id: int, batch_size: int = 16) -> float:
    """The SFT loss (mean cross-entropy over the trained tokens) of ``model`` on ``examples``."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        x, y = collate(examples[start:start + batch_size], pad_id)
        logits = model(x)
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX,
                                 reduction="sum").item()
        count += int((y != IGNORE_INDEX).sum())
    return total / count


# method: (LoRA rank or None for full fine-tuning, whether the new tokens' rows train, learning rates)
SWEEP = {"full": (None, False, (5e-4, 1e-3, 2e-3)),
         **{f"LoRA r={rank}": (rank, False, (3e-3, 6e-3, 1e-2, 1.5e-2)) for rank in (1, 2, 4, 8, 16)},
         "LoRA r=8 + new tokens": (8, True, (3e-3, 6e-3, 1e-2, 1.5e-2))}


def sweep(methods: dict = SWEEP, n_val: int = 100, progress: bool = False) -> dict:
    """For each method, fine-tune with each of its learning rates (:data:`RECIPE`) and measure the
    loss on ``n_val`` conversations of the *validation* split (never the test split the chapter
    reports). Returns ``{method: {lr: loss}}``."""
    import data
    from data.instructions import load_instructions

    tokenizer = data.course_tokenizer()
    config, state = data.load_checkpoint("dense")
    pad_id = tokenizer.encode_single_token(PAD)
    new_tokens = [tokenizer.encode_single_token(t) for t in NEW_TOKENS]
    examples = [sft_example(tokenizer, c["messages"], config["max_seq_len"]) for c in load_instructions("train")]
    val = [sft_example(tokenizer, c["messages"], config["max_seq_len"]) for c in load_instructions("val")[:n_val]]
    found = {}
    for method, (rank, tokens, lrs) in methods.items():
        found[method] = {}
        for lr in lrs:
            model, _, _ = finetune(config, state, examples, pad_id, rank, lr, new_tokens if tokens else (),
                                   progress=progress)
            found[method][lr] = heldout_loss(model, val, pad_id)
            print(f"{method:>22}  lr {lr:g}: validation loss {found[method][lr]:.4f}", flush=True)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The learning-rate sweep behind chapter 09's comparison.")
    parser.add_argument("--sweep", action="store_true", help="fine-tune every method at every rate (minutes)")
    args = parser.parse_args(argv)
    if not args.sweep:
        parser.print_help()
        return 0
    found = sweep()
    print("\nbest learning rate by validation loss:")
    for method, losses in found.items():
        best = min(losses, key=losses.get)
        print(f"{method:>22}: {best:g} (loss {losses[best]:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
