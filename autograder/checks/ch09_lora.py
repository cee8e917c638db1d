"""Chapter 09 checkpoints: LoRA's initial adapter, its forward pass, injection into a model,
merging and unmerging, PEFT's tensor names, and (bonus) DoRA.

A model or a layer is not plain data, so three checkpoints call the notebook's given adapters
(``inject_lora_from_config``, ``merge_from_data``, ``dora_from_data``, from ``solutions.lora``),
which build the notebook's own ``Transformer`` or ``LoRALinear`` from plain data, call the
learner's functions on it and return plain data: what was wrapped and what trains, the weight
after each merge or unmerge, DoRA's magnitude, output, gradients and merged weight.
``lora_init`` draws from a ``torch.Generator`` whose seed the case carries (``kind="seeded"``).

How the cases expose mistakes: a non-zero ``lora_B`` everywhere but the case about the initial
state (a test with B = 0 proves nothing about the update); ranks 2 to 4 with alpha / r of 2,
0.5 and 16 / 3 (a scale of alpha, r / alpha, alpha // r or 1 shows); square layers, where a
transposed product or a norm over the wrong axis runs without a shape error; a dropout mask
that must reach the LoRA path only; tied embeddings, a MoE model whose routers are named
``gate`` beside the experts' ``gate_proj``, ``lm_head`` under ``"all-linear"``, a target that
matches nothing or is not a linear layer; merging twice, unmerging an unmerged layer, merging
again after unmerging; a bfloat16 weight whose values make a float32 sum rounded once differ
from an update rounded first (every product and sum of that case is exact in float32, so every
CPU rounds alike); PEFT names of ``lm_head``, DoRA magnitudes, Mixtral layers and of tensors
that are no adapter's. Every ``ValueError`` the reference documents has a case.
``09.lora_linear`` is trained through (its gradient probe rejects an update computed under
``torch.no_grad()``); ``09.dora`` returns the gradients itself, so a weight norm that is not
detached is named by its own variant.

A hint names a mistake only on evidence: a known mistake's output (a variant: the reference
with that one mistake) matched on every case where it shows, or the exception raised. Inputs
are drawn in float64 (``checks/inputs.py``) and cast.
"""

from __future__ import annotations

import functools
import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from ..core import Case, Checkpoint, Label, register
from ..reference import reference
from .inputs import generator, randn, tensor_label

lora = functools.partial(reference, "solutions.lora")
mdl = functools.partial(reference, "solutions.model")
TOL = 1e-5  # float32 sums over a few dozen products


def _randn(g: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return randn(g, *shape, scale=scale)


def _adapter(g: torch.Generator, out_features: int, in_features: int, r: int, zero_b: bool = False):
    """A layer and a *trained* adapter: W, A and B of realistic sizes, B non-zero unless ``zero_b``."""
    weight = _randn(g, out_features, in_features, scale=1 / math.sqrt(in_features))
    lora_A = _randn(g, r, in_features, scale=1 / math.sqrt(in_features))
    lora_B = torch.zeros(out_features, r) if zero_b else _randn(g, out_features, r, scale=0.5)
    return weight, lora_A, lora_B


def _mask(g: torch.Generator, shape: tuple, p: float) -> torch.Tensor:
    keep = torch.rand(shape, generator=g, dtype=torch.float64) >= p
    return keep.float() / (1 - p)  # 0 or 1 / (1 - p), what F.dropout multiplies by


# ---------------------------------------------------------------------------- 09.lora_init


def _init_variant(kind: str):
    def wrong(in_features, out_features, r, generator):
        if kind != "validate" and (not isinstance(r, int) or isinstance(r, bool) or r < 1):
            raise ValueError("r must be an int >= 1")
        if kind == "shape":
            lora_A = torch.empty(in_features, r)
            nn.init.kaiming_uniform_(lora_A.T, a=math.sqrt(5), generator=generator)
            return lora_A, torch.zeros(r, out_features)
        lora_A = torch.empty(r, in_features)
        if kind == "swapped":
            lora_B = torch.empty(out_features, r)
            nn.init.kaiming_uniform_(lora_B, a=math.sqrt(5), generator=generator)
            return torch.zeros(r, in_features), lora_B
        if kind == "zeros":
            return torch.zeros(r, in_features), torch.zeros(out_features, r)
        if kind == "unit_uniform":
            return torch.rand(r, in_features, generator=generator), torch.zeros(out_features, r)
        if kind == "default_a":
            nn.init.kaiming_uniform_(lora_A, generator=generator)  # a = 0: bound sqrt(6 / in)
        elif lora_A.numel():  # (r = 0 without validation: nothing to draw)
            nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5), generator=generator)
        lora_B = torch.zeros(out_features, r)
        if kind == "b_random":
            nn.init.kaiming_uniform_(lora_B, a=math.sqrt(5), generator=generator)
        return lora_A, lora_B

    wrong.__name__ = f"lora_init_{kind}"
    return wrong


INIT_MISTAKES = ("b_random", "zeros", "swapped", "default_a", "unit_uniform", "shape", "validate")


def init_cases(rng: random.Random) -> list[Case]:
    def case(label, in_features, out_features, r, hint="default"):
        seed = rng.randrange(2**31)
        return Case(label, (seed, in_features, out_features, r), hint,
                    show=(in_features, out_features, r, Label(f"Generator(seed={seed})")))

    cases = [
        case("in_features 4, out_features 3, r 2: lora_A (2, 4) uniform in +-1/sqrt(4), lora_B (3, 2) of zeros",
             4, 3, 2, "shape"),
        case("r 1: lora_B is zero, so B A = 0 and the adapted layer starts equal to the base layer", 16, 8, 1, "b_random"),
        case("in_features 64: lora_A's bound is 1/sqrt(64) = 0.125 (Kaiming-uniform with a = sqrt(5))", 64, 32, 8,
             "default_a"),
        case("lora_A random and centred on 0, lora_B zero: the first gradient step reaches B", 12, 20, 4, "swapped"),
        case("r 0: ValueError (a rank-0 update learns nothing)", 8, 8, 0, "validate"),
        case("r 2.5: ValueError (the rank is a number of rows)", 8, 8, 2.5, "validate"),
        case("a LLaMA-sized projection: 192 -> 64, r 16", 192, 64, 16),
    ]
    for n in range(5):
        cases.append(case(f"random sizes (case {n + 1})", rng.randint(2, 48), rng.randint(2, 48), rng.randint(1, 8)))
    return cases


register(Checkpoint(
    id="09.lora_init",
    points=1,
    title="the initial adapter: lora_A Kaiming-uniform (a = sqrt 5), lora_B zero",
    signature="lora_init(in_features, out_features, r, generator)",
    cases=init_cases,
    reference=lora("lora_init"),
    kind="seeded",
    tol=1e-6,
    fingerprints=[(kind, _init_variant(kind)) for kind in INIT_MISTAKES],
    hints={
        "default": "Validate r (an int >= 1, else ValueError); lora_A = torch.empty(r, in_features) filled by "
        "nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5), generator=generator); lora_B = torch.zeros(out_features, r); "
        "return (lora_A, lora_B).",
        "shape": "lora_A is (r, in_features) and lora_B (out_features, r), the shapes of the weights of "
        "nn.Linear(in_features, r) and nn.Linear(r, out_features): B @ A is then (out_features, in_features), like W.",
        "b_random": "Initialise lora_B to zeros: then B A = 0 and the adapted model starts exactly equal to the base "
        "model. A random B adds a random update to every layer before any training.",
        "zeros": "lora_A must be random (only lora_B is zero): with both zero, each one's gradient is proportional to "
        "the other and stays zero, so nothing ever trains.",
        "swapped": "PEFT (and the LoRA paper) make lora_A random and lora_B zero, not the other way round: the "
        "checkpoint and PEFT adapters expect A Kaiming-uniform and B = 0.",
        "default_a": "Pass a=math.sqrt(5) to nn.init.kaiming_uniform_ (nn.Linear's own init, as PEFT does): the "
        "bound is then 1/sqrt(in_features). With the default a=0 it is sqrt(6/in_features), 2.4 times wider.",
        "unit_uniform": "Draw lora_A from U(-1/sqrt(in_features), 1/sqrt(in_features)), centred on 0: "
        "nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5), generator=generator). torch.rand draws from [0, 1).",
        "validate": "Raise ValueError unless r is an int >= 1 (isinstance(r, int), r >= 1): a rank of 0 or 2.5 "
        "is a mistake to report, not a tensor to build.",
    },
))


# ---------------------------------------------------------------------------- 09.lora_linear


def _linear_variant(kind: str):
    def wrong(x, weight, lora_A, lora_B, alpha, dropout_mask):
        lora("lora_linear")(x, weight, lora_A, lora_B, alpha, dropout_mask)  # refuses what the reference refuses
        r = lora_A.shape[1] if kind == "rank_dim" else lora_A.shape[0]
        scaling = {"alpha": alpha, "inverted": r / alpha, "no_scale": 1.0, "int_division": alpha // r}.get(kind, alpha / r)
        h = x if dropout_mask is None or kind == "no_dropout" else x * dropout_mask
        base_in = h if kind == "dropout_base" else x
        base = base_in @ weight if kind == "transposed" else F.linear(base_in, weight)
        update = F.linear(F.linear(h, lora_A), lora_B) * scaling
        return update if kind == "no_base" else base + update

    wrong.__name__ = f"lora_linear_{kind}"
    return wrong


LINEAR_MISTAKES = ("no_base", "alpha", "inverted", "no_scale", "int_division", "rank_dim", "dropout_base",
                   "no_dropout", "transposed")


def linear_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, shape, out_features, r, alpha, p=None, hint="default", zero_b=False, probe=False):
        weight, lora_A, lora_B = _adapter(g, out_features, shape[-1], r, zero_b)
        x = _randn(g, *shape)
        mask = None if p is None else _mask(g, shape, p)
        args = (x, weight, lora_A, lora_B, alpha, mask)
        show = (tensor_label(x, "x"), tensor_label(weight, "weight"), tensor_label(lora_A, "lora_A"),
                tensor_label(lora_B, "lora_B"), alpha, tensor_label(mask, "dropout_mask"))
        return Case(label, args, hint, show=show, probe=probe)

    cases = [
        case("a square layer, 8 -> 8: y = x W^T (nn.Linear stores W as (out, in))", (2, 3, 8), 8, 2, 4.0,
             hint="transposed"),
        case("lora_B = 0: the adapter adds nothing yet, y = x W^T", (2, 3, 6), 5, 2, 4.0, hint="no_base", zero_b=True),
        case("r 2, alpha 4: the update B A x is scaled by alpha / r = 2", (2, 3, 6), 5, 2, 4.0, hint="alpha"),
        case("r 4, alpha 2: alpha / r = 0.5, less than 1", (3, 6), 5, 4, 2.0, hint="inverted"),
        case("r 3, alpha 16: alpha / r = 5.33, not 16 // 3 = 5", (2, 4, 6), 7, 3, 16, hint="int_division"),
        case("a dropout mask (p = 0.5): it multiplies the LoRA path's input only, the frozen path sees x",
             (2, 5, 6), 4, 2, 8.0, p=0.5, hint="dropout_base"),
        case("a larger projection: x (2, 8, 48) -> 64, r 8, alpha 16, dropout p = 0.1", (2, 8, 48), 64, 8, 16.0,
             p=0.1, probe=True),
        case("r 1, alpha 1, no batch dimension: x (5, 12)", (5, 12), 3, 1, 1.0, probe=True),
    ]
    weight, lora_A, lora_B = _adapter(g, 5, 6, 2)
    x = _randn(g, 2, 6)
    cases.append(Case("lora_A of 5 columns for a layer of 6 inputs: ValueError",
                      (x, weight, lora_A[:, :5].contiguous(), lora_B, 4.0, None), "validate",
                      show=(tensor_label(x, "x"), tensor_label(weight, "weight"), Label("<lora_A of shape (2, 5)>"),
                            tensor_label(lora_B, "lora_B"), 4.0, None)))
    cases.append(Case("lora_B of rank 3 for a lora_A of rank 2: ValueError",
                      (x, weight, lora_A, _randn(g, 5, 3), 4.0, None), "validate",
                      show=(tensor_label(x, "x"), tensor_label(weight, "weight"), tensor_label(lora_A, "lora_A"),
                            Label("<lora_B of shape (5, 3)>"), 4.0, None)))
    for n in range(6):
        in_features, out_features, r = rng.randint(2, 12), rng.randint(2, 12), rng.randint(2, 4)
        shape = rng.choice([(rng.randint(1, 4), in_features), (rng.randint(1, 2), rng.randint(1, 4), in_features)])
        cases.append(case(f"random layer {in_features} -> {out_features}, r {r} (case {n + 1})", shape, out_features,
                          r, rng.choice([1.0, 2.0, 8.0, 16.0, 32.0]), p=rng.choice([None, 0.25, 0.5])))
    # (after the random cases: their draws stay as they were)
    weight, lora_A, lora_B = _adapter(g, 5, 6, 2)
    x = _randn(g, 2, 3, 5)
    shown = (tensor_label(weight, "weight"), tensor_label(lora_A, "lora_A"), tensor_label(lora_B, "lora_B"), 4.0)
    # (no case for a dropout mask that broadcasts against x: tests/test_lora.py accepts a rewrite
    # that does not check it, and a broadcastable mask arguably fits)
    cases.append(Case("x with 5 features for a layer of 6 inputs: ValueError (not torch's RuntimeError from the "
                      "product)", (x, weight, lora_A, lora_B, 4.0, None), "validate",
                      show=(tensor_label(x, "x"), *shown, None)))
    return cases


register(Checkpoint(
    id="09.lora_linear",
    points=2,
    title="the LoRA layer: y = x W^T + (alpha / r) B A dropout(x)",
    signature="lora_linear(x, weight, lora_A, lora_B, alpha, dropout_mask)",
    cases=linear_cases,
    reference=lora("lora_linear"),
    tol=TOL,
    # trained through: the gradient must reach lora_A and lora_B (an update computed under
    # torch.no_grad() or from detached adapters has the right values and trains nothing)
    grad_probe=True,
    fingerprints=[(kind, _linear_variant(kind)) for kind in LINEAR_MISTAKES],
    hints={
        "default": "r = lora_A.shape[0]; h = x if dropout_mask is None else x * dropout_mask; return F.linear(x, weight) "
        "+ F.linear(F.linear(h, lora_A), lora_B) * (alpha / r); ValueError if lora_A is not (r, in_features) or "
        "lora_B not (out_features, r).",
        "no_base": "LoRA adds its update to the frozen layer's output: y = x W^T + (alpha / r) B A x. With B = 0 the "
        "layer must give exactly the base layer's output x W^T.",
        "alpha": "Scale the update by alpha / r, not alpha: r = lora_A.shape[0]. Dividing by r keeps the update's size "
        "the same when you change the rank.",
        "inverted": "The scale is alpha / r (lora_alpha / r in PEFT), not r / alpha.",
        "no_scale": "Multiply the update B A x by alpha / r (r = lora_A.shape[0]): without it the update has "
        "another size than PEFT's, and changing r or alpha changes nothing.",
        "int_division": "alpha / r is a float division: 16 / 3 = 5.33. alpha // r rounds down (to 0 when alpha < r).",
        "rank_dim": "The rank r is the number of rows of lora_A, lora_A.shape[0] (lora_A is (r, in_features)), "
        "not its number of columns.",
        "dropout_base": "Apply the dropout mask to the LoRA path's input only: the frozen path is x W^T, on the whole "
        "x. Dropping the base model's input would change what the pretrained layer computes.",
        "no_dropout": "Use the dropout_mask you are given (when it is not None): the LoRA path reads x * dropout_mask, "
        "the frozen path reads x.",
        "transposed": "nn.Linear stores weights as (out_features, in_features): multiply by the transpose, "
        "F.linear(x, weight) = x @ weight.T, and likewise F.linear(F.linear(h, lora_A), lora_B) = h @ lora_A.T @ lora_B.T.",
        "validate": "Raise ValueError when the shapes do not fit: weight (out, in), lora_A (r, in), lora_B (out, r), "
        "x (..., in), before multiplying.",
    },
))


# ---------------------------------------------------------------------------- 09.inject


def _tiny_config(rng: random.Random, n_layers: int = 2, tied: bool | None = None, n_experts: int = 0) -> dict:
    return {"vocab_size": 24, "dim": 8, "n_layers": n_layers, "n_heads": 2, "n_kv_heads": 1, "hidden_dim": 12,
            "max_seq_len": 16, "tie_embeddings": rng.random() < 0.5 if tied is None else tied,
            "n_experts": n_experts, "top_k": 2 if n_experts else 2}


def _inject_variant(kind: str):
    """The reference's inject_lora with one mistake, behind the checkpoint's adapter."""

    def inject(model, target_modules, r, alpha):
        LoRALinear = lora("LoRALinear")
        modules = dict(model.named_modules())
        if target_modules == "all-linear":
            names = [n for n, m in modules.items() if isinstance(m, nn.Linear) and (n != "lm_head" or kind == "lm_head")
                     and not (kind == "all_linear_routers" and n.endswith(".gate"))]
        else:
            names = []
            for target in target_modules:
                if kind == "substring":
                    found = [n for n in modules if n and target in n.rsplit(".", 1)[-1]]
                elif kind == "dotted":  # the last component only: a dotted target matches nothing
                    found = [n for n in modules if n.rsplit(".", 1)[-1] == target]
                else:
                    found = [n for n in modules if n == target or n.endswith("." + target)]
                if not found and kind != "missing_target":
                    raise ValueError(f"target {target!r} matches no module")
                names += [n for n in found if n not in names]
            for name in names:
                if not isinstance(modules[name], nn.Linear):
                    raise ValueError(f"{name} is not nn.Linear")
        if kind == "total_before":
            total_before = sum(p.numel() for p in model.parameters())
        for name in names:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child,
                    LoRALinear(modules[name], r, alpha))
        for name, p in model.named_parameters():
            if kind == "no_freeze":
                continue
            if kind == "wrapped_only":
                p.requires_grad_(".base_layer." not in name)
            elif kind == "all_frozen":
                p.requires_grad_(False)
            else:
                p.requires_grad_("lora_" in name)
        if kind == "tied":
            params = [p for _, p in model.named_parameters(remove_duplicate=False)]
        else:
            params = list(model.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = total_before if kind == "total_before" else sum(p.numel() for p in params)
        return (total, trainable) if kind == "swapped" else (trainable, total)

    def wrong(config, target_modules, r, alpha):
        model = mdl("Transformer")(mdl("LlamaConfig")(**config))
        trainable, total = inject(model, target_modules, r, alpha)
        return {
            "counts (trainable, total)": [trainable, total],
            "wrapped modules": sorted(n for n, m in model.named_modules() if isinstance(m, lora("LoRALinear"))),
            "trainable tensors": sorted(n for n, p in model.named_parameters() if p.requires_grad),
        }

    wrong.__name__ = f"inject_lora_{kind}"
    return wrong


INJECT_MISTAKES = ("no_freeze", "wrapped_only", "all_frozen", "tied", "lm_head", "substring", "missing_target",
                   "total_before", "swapped", "dotted", "all_linear_routers")


def inject_cases(rng: random.Random) -> list[Case]:
    def case(label, config, targets, r, alpha=16, hint="default"):
        return Case(label, (config, targets, r, alpha), hint)

    cases = [
        case("['q_proj', 'v_proj'] in a 2-layer model, untied: 4 layers wrapped, only their lora_A and lora_B train",
             _tiny_config(rng, 2, tied=False), ["q_proj", "v_proj"], 2, hint="no_freeze"),
        case("'all-linear': every nn.Linear but the output head lm_head", _tiny_config(rng, 2, tied=False),
             "all-linear", 2, hint="lm_head"),
        case("'all-linear' in a MoE model: the routers layers.{i}.mlp.gate are nn.Linear layers too",
             _tiny_config(rng, 2, tied=False, n_experts=3), "all-linear", 2, hint="all_linear_routers"),
        case("tied embeddings: lm_head.weight is embed_tokens.weight, one tensor counted once",
             _tiny_config(rng, 2, tied=True), ["o_proj"], 4, hint="tied"),
        case("a target that matches no module ('query'): ValueError naming the model's linear layers",
             _tiny_config(rng, 1, tied=False), ["q_proj", "query"], 2, hint="missing_target"),
        case("'proj' is no module's name (names match whole, after a dot): ValueError",
             _tiny_config(rng, 1, tied=False), ["proj"], 2, hint="substring"),
        case("a MoE model, target 'gate': the routers layers.{i}.mlp.gate, not the experts' gate_proj",
             _tiny_config(rng, 2, tied=False, n_experts=3), ["gate"], 1, hint="substring"),
        case("target 'mlp' is a SwiGLU, not a linear layer: ValueError", _tiny_config(rng, 1, tied=False), ["mlp"], 2,
             hint="not_linear"),
        case("dotted targets: 'layers.1.self_attn.v_proj' is one module, 'self_attn.o_proj' every layer's (a name "
             "matches when it is the target or ends with '.' + target)", _tiny_config(rng, 2, tied=False),
             ["layers.1.self_attn.v_proj", "self_attn.o_proj"], 2, hint="dotted"),
        case("three layers, ['gate_proj', 'up_proj', 'down_proj'], r 8, tied", _tiny_config(rng, 3, tied=True),
             ["gate_proj", "up_proj", "down_proj"], 8),
    ]
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for n in range(4):
        config = _tiny_config(rng, rng.randint(1, 3), n_experts=rng.choice([0, 0, 3]))
        targets = "all-linear" if rng.random() < 0.3 else sorted(rng.sample(names, rng.randint(1, 4)), key=names.index)
        cases.append(case(f"random model and targets (case {n + 1})", config, targets, rng.randint(1, 8)))
    return cases


register(Checkpoint(
    id="09.inject",
    points=2,
    title="inject LoRA into the target linear layers, freeze the rest, count trainable and total parameters",
    signature="inject_lora_from_config(config, target_modules, r, alpha)",
    cases=inject_cases,
    reference=lora("inject_lora_from_config"),
    fingerprints=[(kind, _inject_variant(kind)) for kind in INJECT_MISTAKES],
    raised_hints=[(r"^TypeError: LoRA wraps an nn\.Linear", "not_linear"),
                  # a ValueError saying a target matches nothing, where every target matches (no case
                  # expecting a value has a target that matches nothing): the matching rule misses names
                  (r"^ValueError: .*(match|found|not in|exist|no module)", "dotted")],
    hints={
        "default": "names = the modules whose name is a target or ends with '.' + target (or every nn.Linear but "
        "lm_head for 'all-linear'), ValueError if a target matches none; setattr(parent, child, LoRALinear(module, r, "
        "alpha)) for each; then p.requires_grad_('lora_' in name) for every named parameter; return (trainable, total) "
        "over model.parameters().",
        "no_freeze": "Freeze everything but the adapters: for name, p in model.named_parameters(): "
        "p.requires_grad_('lora_' in name). Otherwise the optimiser trains (and stores moments for) every weight.",
        "wrapped_only": "Freeze the whole base model, not only the wrapped layers' weights: embeddings, norms, lm_head "
        "and the linear layers you did not target stay fixed too; only the lora_A and lora_B weights train.",
        "all_frozen": "Keep the adapters trainable: freeze every parameter whose name does not contain 'lora_' "
        "(freezing all of them after wrapping leaves nothing to train).",
        "tied": "Count each tensor once: model.parameters() lists a tied embedding once, while state_dict() or "
        "named_parameters(remove_duplicate=False) list it under both names.",
        "lm_head": "'all-linear' means every nn.Linear but the output head (PEFT leaves lm_head out): it maps to the "
        "vocabulary and is usually tied to the embedding.",
        "substring": "A target matches a module whose name is the target or ends with '.' + target (PEFT's rule): "
        "'gate' is the router layers.0.mlp.gate, not gate_proj, and 'proj' matches nothing. Do not test `target in name`.",
        "missing_target": "Raise ValueError when a target matches no module, naming the linear layers that exist "
        "(q_proj, k_proj, ...): a typo would otherwise silently train fewer layers than asked.",
        "not_linear": "Raise ValueError when a target is not an nn.Linear (here 'mlp', a SwiGLU): LoRA wraps linear "
        "layers; name them (gate_proj, up_proj, down_proj).",
        "all_linear_routers": "'all-linear' is every nn.Linear of the model but lm_head (PEFT's rule), whatever its "
        "role: a MoE model's routers, layers.{i}.mlp.gate, are linear layers and are wrapped too. Select by "
        "isinstance(module, nn.Linear), not by a list of projection names.",
        "dotted": "A target matches every module whose name is the target or ends with '.' + target (PEFT's rule): "
        "name == target or name.endswith('.' + target). A target may hold dots: 'layers.1.self_attn.v_proj' is one "
        "module, 'self_attn.o_proj' every layer's; comparing only the last component of the name finds neither.",
        "total_before": "Count the total after wrapping: it includes the adapters' parameters (PEFT's 'all params').",
        "swapped": "Return (trainable, total), in that order.",
    },
))


# ---------------------------------------------------------------------------- 09.merge


def _merge_variant(kind: str):
    def delta(layer):
        if kind == "low_precision":  # the update cast to the weight's dtype before the sum
            return (layer.scaling * (layer.lora_B.weight @ layer.lora_A.weight)).to(layer.base_layer.weight.dtype)
        scaling = {"no_scale": 1.0, "alpha": layer.lora_alpha}.get(kind, layer.scaling)
        product = layer.lora_A.weight.T @ layer.lora_B.weight.T if kind == "transposed" else \
            layer.lora_B.weight @ layer.lora_A.weight
        return scaling * product.float()

    def merge(layer):
        if layer.merged and kind != "merge_twice":
            raise ValueError("already merged")
        W = layer.base_layer.weight
        with torch.no_grad():
            if kind == "low_precision":
                W.copy_(W + delta(layer))
            else:
                W.copy_((W.float() + delta(layer)).to(W.dtype))
        if kind != "flag_not_set":
            layer.merged = True

    def unmerge(layer):
        if not layer.merged and kind != "unmerge_unmerged":
            raise ValueError("not merged")
        W = layer.base_layer.weight
        with torch.no_grad():
            if kind == "low_precision":
                W.copy_(W - delta(layer))
            else:
                sign = 1 if kind == "unmerge_adds" else -1
                W.copy_((W.float() + sign * delta(layer)).to(W.dtype))
        if kind != "flag_not_reset":
            layer.merged = False

    def wrong(weight, lora_A, lora_B, alpha, steps):
        out_features, in_features = weight.shape
        base = nn.Linear(in_features, out_features, bias=False, dtype=weight.dtype)
        layer = lora("LoRALinear")(base, lora_A.shape[0], alpha, init_lora_weights=False)
        with torch.no_grad():
            base.weight.copy_(weight)
            layer.lora_A.weight.copy_(lora_A)
            layer.lora_B.weight.copy_(lora_B)
        base.weight.requires_grad_(False)
        results = []
        for step in steps:
            try:
                merge(layer) if step == "merge" else unmerge(layer)
            except ValueError:
                results.append("ValueError")
                continue
            results.append({"weight": layer.base_layer.weight.detach().clone(), "merged": bool(layer.merged)})
        return results

    wrong.__name__ = f"merge_{kind}"
    return wrong


MERGE_MISTAKES = ("no_scale", "alpha", "transposed", "unmerge_adds", "merge_twice", "unmerge_unmerged",
                  "flag_not_set", "flag_not_reset", "low_precision")


def _exact_bf16_case(g: torch.Generator):
    """A bfloat16 weight and float32 adapters whose products and sums are exact in float32 (the weight
    in multiples of 1/16, the update in multiples of 3/8192, sums below 8: 16 significant bits at
    most): every CPU computes the same float32 sum, so rounding it once to bfloat16 gives the same
    bits everywhere, while rounding the update first (13 significant bits) differs in 3 to 8 of
    the 48 entries."""
    weight = (torch.randint(-64, 65, (6, 8), generator=g) / 16).to(torch.bfloat16)
    lora_A = torch.randint(-40, 41, (2, 8), generator=g) / 64
    lora_B = torch.randint(-40, 41, (6, 2), generator=g) / 64
    return weight, lora_A, lora_B, 3.0  # alpha / r = 1.5


def merge_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, weight, lora_A, lora_B, alpha, steps, hint="default"):
        show = (tensor_label(weight, "weight"), tensor_label(lora_A, "lora_A"), tensor_label(lora_B, "lora_B"),
                alpha, steps)
        return Case(label, (weight, lora_A, lora_B, alpha, steps), hint, show=show)

    def adapter(out_features, in_features, r):
        return _adapter(g, out_features, in_features, r)

    cases = [
        case("merge: W + (alpha / r) B A with alpha / r = 2", *adapter(4, 6, 2), 4.0, ["merge"], "no_scale"),
        case("r 4, alpha 2: the scale is alpha / r = 0.5 (layer.scaling)", *adapter(5, 3, 4), 2.0, ["merge"], "alpha"),
        case("merge, then unmerge: the base weight comes back", *adapter(4, 6, 2), 8.0, ["merge", "unmerge"],
             "unmerge_adds"),
        case("a square layer (6 x 6): the update is B @ A (out x in), not its transpose", *adapter(6, 6, 2), 4.0,
             ["merge"], "transposed"),
        case("merging twice: ValueError (the update would be added twice)", *adapter(4, 6, 2), 4.0,
             ["merge", "merge"], "merge_twice"),
        case("unmerging a layer that is not merged: ValueError (it would subtract the update from the base)",
             *adapter(4, 6, 2), 4.0, ["unmerge"], "unmerge_unmerged"),
        case("merge, unmerge, merge again", *adapter(3, 5, 1), 2.0, ["merge", "unmerge", "merge"], "flag_not_reset"),
        case("a bfloat16 weight: the sum is computed in float32 and rounded to bfloat16 once",
             *_exact_bf16_case(g), ["merge", "unmerge"], "low_precision"),
    ]
    for n in range(4):
        out_features, in_features, r = rng.randint(2, 10), rng.randint(2, 10), rng.randint(1, 4)
        steps = rng.choice([["merge"], ["merge", "unmerge"], ["merge", "unmerge", "merge"], ["unmerge", "merge"]])
        cases.append(case(f"random layer {in_features} -> {out_features}, r {r}, {' then '.join(steps)} (case {n + 1})",
                          *adapter(out_features, in_features, r), rng.choice([1.0, 4.0, 16.0]), steps))
    return cases


register(Checkpoint(
    id="09.merge",
    points=2,
    title="merge and unmerge: W +- (alpha / r) B A in float32, cast once, and the merged flag",
    signature="merge_from_data(weight, lora_A, lora_B, alpha, steps)",
    cases=merge_cases,
    reference=lora("merge_from_data"),
    tol=TOL,
    fingerprints=[(kind, _merge_variant(kind)) for kind in MERGE_MISTAKES],
    raised_hints=[(r"size of tensor a \(\d+\) must match the size of tensor b", "transposed")],
    hints={
        "default": "merge_lora: ValueError if layer.merged; delta = layer.scaling * (B.float() @ A.float()) with "
        "A, B = layer.lora_A.weight, layer.lora_B.weight; under torch.no_grad(), W.copy_((W.float() + delta).to(W.dtype)) "
        "with W = layer.base_layer.weight; layer.merged = True. unmerge_lora: the same with - and the checks reversed.",
        "no_scale": "Scale the update as the forward pass does: W + layer.scaling * (B @ A), layer.scaling = alpha / r. "
        "Otherwise the merged layer computes something else than the adapted one.",
        "alpha": "The scale is layer.scaling = alpha / r, not layer.lora_alpha.",
        "transposed": "The update is lora_B.weight @ lora_A.weight, (out, r) @ (r, in) = (out, in), the shape of W. "
        "A.T @ B.T is its transpose (in, out): wrong even when the layer is square.",
        "unmerge_adds": "Unmerging subtracts the update: W - layer.scaling * (B @ A), which gives back the base weight.",
        "merge_twice": "Raise ValueError when the layer is already merged (layer.merged): merging again adds the "
        "update a second time.",
        "unmerge_unmerged": "Raise ValueError when the layer is not merged: unmerging it would subtract the update from "
        "the base weight, which never contained it.",
        "flag_not_set": "Set layer.merged = True after merging: the layer's forward then uses the merged weight alone "
        "(otherwise it adds the update a second time), and a second merge can be refused.",
        "flag_not_reset": "Set layer.merged = False after unmerging, so that the layer can be merged again and its "
        "forward adds the adapter again.",
        "low_precision": "Add in float32 and cast once: (W.float() + delta).to(W.dtype). Rounding the update (or B and A) "
        "to bfloat16 first, then the sum, rounds twice: another weight than PEFT's.",
    },
))


# ---------------------------------------------------------------------------- 09.peft_key


def _key_variant(kind: str):
    def renamed(module):
        try:
            return mdl("hf_key")(module + ".weight")[: -len(".weight")]
        except ValueError:
            return module.removeprefix("model.")  # what is left of a name cut at the wrong place

    def wrong(name):
        if kind != "unknown":
            lora("peft_key")(name)  # the others refuse what the reference refuses
        if kind == "fixed_prefix":  # a fixed 23 characters cut: "lm_head" loses "base_model.model.lm"
            rest = name[len("base_model.model.model."):]
        elif kind == "replace_prefix":  # "base_model.model.model." removed where it is: not from lm_head's name
            rest = name.replace("base_model.model.model.", "")
        else:
            rest = name.removeprefix("base_model.model.")
        module, _, tensor = rest.partition(".lora_")
        tensor = "lora_" + tensor
        if kind == "magnitude" and tensor == "lora_magnitude_vector":
            tensor += ".weight"
        if kind == "prefix":
            course = module  # "model." kept, nothing renamed
        elif kind in ("mixtral", "unknown"):
            course = module.removeprefix("model.")  # not renamed as a checkpoint's name
        elif kind in ("fixed_prefix", "replace_prefix"):
            course = renamed("model." + module if kind == "fixed_prefix" else module)
        else:
            course = renamed(module)
        return course + "." + tensor

    wrong.__name__ = f"peft_key_{kind}"
    return wrong


KEY_MISTAKES = ("prefix", "fixed_prefix", "replace_prefix", "magnitude", "mixtral", "unknown")


def key_cases(rng: random.Random) -> list[Case]:
    p = "base_model.model."
    cases = [
        Case("a query projection's lora_A", (p + "model.layers.0.self_attn.q_proj.lora_A.weight",), "prefix"),
        Case("the output head's lora_B: lm_head sits outside model.", (p + "lm_head.lora_B.weight",), "fixed_prefix"),
        Case("a DoRA magnitude: lora_magnitude_vector has no .weight",
             (p + "model.layers.3.mlp.down_proj.lora_magnitude_vector",), "magnitude"),
        Case("a Mixtral router: block_sparse_moe is the course's mlp",
             (p + "model.layers.1.block_sparse_moe.gate.lora_A.weight",), "mixtral"),
        Case("a Mixtral expert's w1: the gate projection",
             (p + "model.layers.1.block_sparse_moe.experts.3.w1.lora_B.weight",), "mixtral"),
        Case("a full weight (PEFT's modules_to_save), not an adapter: ValueError",
             (p + "model.embed_tokens.weight",), "unknown"),
        Case("a base layer's weight (an in-memory PEFT name): ValueError",
             (p + "model.layers.0.self_attn.q_proj.base_layer.weight",), "unknown"),
        Case("an embedding adapter: ValueError (the course adapts linear layers)",
             (p + "model.embed_tokens.lora_embedding_A",), "unknown"),
        Case("a name without PEFT's prefix: ValueError", ("model.layers.0.self_attn.v_proj.lora_A.weight",), "unknown"),
        Case("an in-memory name with the adapter's name ('default'), not a saved one: ValueError",
             (p + "model.layers.0.self_attn.q_proj.lora_A.default.weight",), "unknown"),
        Case("layer 12's up_proj", (p + "model.layers.12.mlp.up_proj.lora_A.weight",)),
    ]
    modules = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj"]
    tensors = ["lora_A.weight", "lora_B.weight", "lora_magnitude_vector"]
    for _ in range(6):
        cases.append(Case("random name", (f"{p}model.layers.{rng.randint(0, 40)}.{rng.choice(modules)}."
                                          f"{rng.choice(tensors)}",)))
    for _ in range(2):
        expert = rng.choice(["w1", "w2", "w3"])
        cases.append(Case("random Mixtral expert", (f"{p}model.layers.{rng.randint(0, 40)}.block_sparse_moe.experts."
                                                     f"{rng.randint(0, 7)}.{expert}.{rng.choice(tensors[:2])}",)))
    return cases


register(Checkpoint(
    id="09.peft_key",
    points=1,
    title="PEFT adapter tensor names to the course model's",
    signature="peft_key(name)",
    cases=key_cases,
    reference=lora("peft_key"),
    fingerprints=[("fixed_prefix" if kind == "replace_prefix" else kind, _key_variant(kind)) for kind in KEY_MISTAKES],
    hints={
        "default": "Check and strip the 'base_model.model.' prefix; split off the adapter tensor (lora_A.weight, "
        "lora_B.weight or lora_magnitude_vector); rename the module with hf_key(module + '.weight') without its "
        "'.weight'; join them again. ValueError for any other name.",
        "prefix": "PEFT nests the model twice: PeftModel.base_model (a LoraModel) holds .model, the transformers model, "
        "whose transformer is .model again. Strip 'base_model.model.', then rename the rest like a checkpoint name "
        "(hf_key drops its 'model.').",
        "fixed_prefix": "lm_head sits outside the transformer, so its adapter is 'base_model.model.lm_head.lora_B.weight', "
        "without a second 'model.': strip 'base_model.model.' and let hf_key handle the rest, rather than cutting a "
        "fixed 23 characters.",
        "magnitude": "A DoRA magnitude is stored as '...lora_magnitude_vector', without '.weight': the course's "
        "LoRALinear holds it as a parameter of that name.",
        "mixtral": "Rename the module as a checkpoint name: hf_key(module + '.weight') maps Mixtral's block_sparse_moe to "
        "mlp and its experts' w1, w3, w2 to gate_proj, up_proj, down_proj.",
        "unknown": "Raise ValueError for a name that is not a LoRA tensor of a linear layer (a full weight, a "
        "base_layer, an embedding adapter, a name without 'base_model.model.'): loading must not silently skip or "
        "misplace it.",
    },
))


# ---------------------------------------------------------------------------- 09.dora (bonus)


def _dora_variant(kind: str):
    def norm(weight, lora_A, lora_B, alpha, detach=True):
        r = lora_A.shape[0]
        scaling = 1.0 if kind == "norm_scale" else alpha / r
        combined = weight if kind == "base_norm" else weight + scaling * (lora_B @ lora_A)
        n = torch.linalg.vector_norm(combined, dim=0 if kind == "axis" else 1)
        return n.detach() if detach else n

    def magnitude_fn(weight, lora_A, lora_B, alpha):
        return norm(weight.float(), lora_A.float(), lora_B.float(), alpha)

    def linear(x, weight, lora_A, lora_B, alpha, magnitude):
        lora("lora_linear")(x, weight, lora_A, lora_B, alpha)  # refuses what the reference refuses
        r = lora_A.shape[0]
        n = norm(weight, lora_A, lora_B, alpha, detach=kind != "detach")
        base = F.linear(x, weight)
        update = F.linear(F.linear(x, lora_A), lora_B) * (alpha / r)
        if kind == "no_norm":
            return magnitude * (base + update)
        if kind == "unscaled_update":
            return (magnitude / n) * base + update
        return (magnitude / n) * (base + update)

    def merge(weight, lora_A, lora_B, alpha, magnitude):
        r = lora_A.shape[0]
        combined = weight.float() + (alpha / r) * (lora_B.float() @ lora_A.float())
        if kind == "merge_plain":
            return combined.to(weight.dtype)
        n = norm(weight.float(), lora_A.float(), lora_B.float(), alpha)
        if kind == "no_norm":
            return (magnitude.float()[:, None] * combined).to(weight.dtype)
        return (magnitude.float()[:, None] / n[:, None] * combined).to(weight.dtype)

    def wrong(x, weight, lora_A, lora_B, alpha, magnitude):
        leaves = [t.detach().clone().requires_grad_(True) for t in (lora_A, lora_B, magnitude)]
        with torch.enable_grad():
            y = linear(x, weight, leaves[0], leaves[1], alpha, leaves[2])
            grads = torch.autograd.grad((y * lora("_probe_weights")(y.shape)).sum(), leaves, allow_unused=True)
        return {
            "magnitude": magnitude_fn(weight, lora_A, lora_B, alpha),
            "output": y.detach(),
            "gradients (lora_A, lora_B, magnitude)": [None if g is None else g.detach() for g in grads],
            "merged weight": merge(weight, lora_A, lora_B, alpha, magnitude),
        }

    wrong.__name__ = f"dora_{kind}"
    return wrong


DORA_MISTAKES = ("axis", "detach", "norm_scale", "base_norm", "no_norm", "unscaled_update", "merge_plain")


def dora_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, shape, out_features, r, alpha, hint="default", zero_b=False, trained=True):
        weight, lora_A, lora_B = _adapter(g, out_features, shape[-1], r, zero_b)
        norm = torch.linalg.vector_norm(weight + (alpha / r) * (lora_B @ lora_A), dim=1)
        # a trained magnitude: the norm, each entry moved by up to 30%
        magnitude = norm * (1 + 0.3 * (2 * torch.rand(out_features, generator=g, dtype=torch.float64).float() - 1)) \
            if trained else torch.linalg.vector_norm(weight, dim=1)
        x = _randn(g, *shape)
        args = (x, weight, lora_A, lora_B, alpha, magnitude)
        show = (tensor_label(x, "x"), tensor_label(weight, "weight"), tensor_label(lora_A, "lora_A"),
                tensor_label(lora_B, "lora_B"), alpha, tensor_label(magnitude, "magnitude"))
        return Case(label, args, hint, show=show)

    cases = [
        case("a square layer (6 x 6): each output feature's norm runs over its row, the input dimension (dim=1)",
             (2, 3, 6), 6, 2, 4.0, hint="axis"),
        case("B = 0 and m = ||W|| per row: DoRA starts equal to the base layer", (2, 3, 6), 4, 2, 4.0,
             zero_b=True, trained=False, hint="no_norm"),
        case("a trained adapter: the gradients reach A and B through the numerator only (the norm is detached)",
             (3, 6), 4, 2, 4.0, hint="detach"),
        case("alpha / r = 4: the update inside the norm is scaled too", (2, 2, 5), 3, 2, 8.0, hint="norm_scale"),
        case("m / ||W + s B A|| scales the whole LoRA output, base and update", (2, 4, 8), 5, 4, 8.0,
             hint="unscaled_update"),
        case("a realistic layer: x (2, 5, 32) -> 48, r 4", (2, 5, 32), 48, 4, 8.0),
    ]
    for n in range(4):
        in_features, out_features, r = rng.randint(2, 10), rng.randint(2, 10), rng.randint(1, 4)
        shape = (rng.randint(1, 2), rng.randint(1, 4), in_features)
        cases.append(case(f"random layer {in_features} -> {out_features}, r {r} (case {n + 1})", shape, out_features,
                          r, rng.choice([2.0, 4.0, 16.0])))
    # (after the random cases: their draws stay as they were)
    bad = case("lora_A of 5 columns for a layer of 6 inputs: ValueError from lora_linear's shape check, before the "
               "norm (whose W + s B A would raise torch's RuntimeError)", (2, 6), 4, 2, 4.0, hint="validate")
    x, weight, lora_A, lora_B, alpha, magnitude = bad.args
    bad.args = (x, weight, lora_A[:, :5].contiguous(), lora_B, alpha, magnitude)
    bad.show = (*bad.show[:2], Label("<lora_A of shape (2, 5)>"), *bad.show[3:])
    cases.append(bad)
    return cases


register(Checkpoint(
    id="09.dora",
    points=2,
    title="(bonus) DoRA: the magnitude per output feature, the detached norm, the merged weight",
    signature="dora_from_data(x, weight, lora_A, lora_B, alpha, magnitude)",
    cases=dora_cases,
    reference=lora("dora_from_data"),
    tol=TOL,
    exact_dtype=True,  # the magnitude "(out_features,) float32", the merged weight in weight's dtype
    fingerprints=[(kind, _dora_variant(kind)) for kind in DORA_MISTAKES],
    hints={
        "default": "dora_magnitude: torch.linalg.vector_norm(W + (alpha / r) * (B @ A), dim=1).detach() in float32; "
        "dora_linear: (magnitude / that norm) * (F.linear(x, W) + F.linear(F.linear(x, A), B) * (alpha / r)); "
        "dora_merge: (magnitude / norm)[:, None] * (W + (alpha / r) * B @ A) in float32, cast to W's dtype.",
        "axis": "Take the norm of each output feature's row, over the input dimension: vector_norm(..., dim=1) for an "
        "nn.Linear weight (out, in). The paper's 'column-wise' norm is for W written (in, out): the same vectors.",
        "detach": "Detach the norm, ||W + (alpha / r) B A||.detach() (the DoRA paper's section 4.3, and PEFT): it is a "
        "constant for the gradient, which then reaches A, B and the magnitude through the numerator only.",
        "norm_scale": "The norm is of the adapted weight as the layer uses it, W + (alpha / r) B A: scale B A by "
        "alpha / r inside the norm too.",
        "base_norm": "Normalise by the norm of the *adapted* weight W + (alpha / r) B A, not of W alone: the direction "
        "is that of the adapted weight.",
        "no_norm": "Divide by the norm: DoRA's weight is m * (W + s B A) / ||W + s B A||, a unit direction per row "
        "times the magnitude. With B = 0 and m = ||W|| the layer must equal the base layer.",
        "unscaled_update": "Scale the whole LoRA output by m / ||W + s B A||: (m / n) * (x W^T + s x A^T B^T), not only "
        "the base part.",
        "dtype": "Keep the dtypes the docstrings give: dora_magnitude returns float32 (computed in float32, not "
        "float64), dora_linear the dtype of x, and dora_merge the weight's dtype.",
        "validate": "dora_linear calls lora_linear (which raises ValueError when the shapes do not fit) before "
        "computing the norm: W + (alpha / r) B A with a lora_A of the wrong width raises torch's RuntimeError first.",
        "merge_plain": "A merged DoRA weight includes the magnitude: (m / n)[:, None] * (W + s B A), not W + s B A "
        "alone (that is plain LoRA's merge).",
    },
))
