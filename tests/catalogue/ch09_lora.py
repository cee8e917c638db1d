"""Wrong answers to chapter 09's checkpoints, as learners write them.

``lora_init``, ``lora_linear`` and ``peft_key`` are plain functions. The others are written as
the learner's own ``inject_lora(model, target_modules, r, alpha)``, ``merge_lora(layer)`` /
``unmerge_lora(layer)`` and ``dora_magnitude`` / ``dora_linear`` / ``dora_merge``, each run
through the same adapter as the notebook's given ``inject_lora_from_config``,
``merge_from_data`` and ``dora_from_data``, on the reference ``LoRALinear`` (which calls the
reference ``lora_init`` and ``lora_linear``, as a learner's notebook would once those pass).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from solutions.lora import LoRALinear, _probe_weights, dora_magnitude, dora_merge, lora_linear, merge_lora, unmerge_lora
from solutions.model import LlamaConfig, Transformer, hf_key

from . import mistake

# ------------------------------------------------------------------------------ adapters


def via_inject(fn):
    """The learner's inject_lora behind the notebook's inject_lora_from_config."""

    def adapter(config, target_modules, r, alpha):
        model = Transformer(LlamaConfig(**config))
        trainable, total = fn(model, target_modules, r, alpha)
        return {
            "counts (trainable, total)": [trainable, total],
            "wrapped modules": sorted(n for n, m in model.named_modules() if isinstance(m, LoRALinear)),
            "trainable tensors": sorted(n for n, p in model.named_parameters() if p.requires_grad),
        }

    adapter.__name__ = fn.__name__
    return adapter


def via_merge(merge_fn=merge_lora, unmerge_fn=unmerge_lora, name=None):
    """The learner's merge_lora / unmerge_lora behind the notebook's merge_from_data."""

    def adapter(weight, lora_A, lora_B, alpha, steps):
        out_features, in_features = weight.shape
        base = nn.Linear(in_features, out_features, bias=False, dtype=weight.dtype)
        layer = LoRALinear(base, lora_A.shape[0], alpha, init_lora_weights=False)
        with torch.no_grad():
            base.weight.copy_(weight)
            layer.lora_A.weight.copy_(lora_A)
            layer.lora_B.weight.copy_(lora_B)
        base.weight.requires_grad_(False)
        results = []
        for step in steps:
            try:
                merge_fn(layer) if step == "merge" else unmerge_fn(layer)
            except ValueError:
                results.append("ValueError")
                continue
            results.append({"weight": layer.base_layer.weight.detach().clone(), "merged": bool(layer.merged)})
        return results

    adapter.__name__ = name or (merge_fn.__name__ if merge_fn is not merge_lora else unmerge_fn.__name__)
    return adapter


def via_dora(magnitude_fn=dora_magnitude, linear_fn=None, merge_fn=dora_merge, name=None):
    """The learner's three DoRA functions behind the notebook's dora_from_data."""
    from solutions.lora import dora_linear

    linear_fn = linear_fn or dora_linear

    def adapter(x, weight, lora_A, lora_B, alpha, magnitude):
        leaves = [t.detach().clone().requires_grad_(True) for t in (lora_A, lora_B, magnitude)]
        with torch.enable_grad():
            y = linear_fn(x, weight, leaves[0], leaves[1], alpha, leaves[2])
            grads = torch.autograd.grad((y * _probe_weights(y.shape)).sum(), leaves, allow_unused=True)
        return {
            "magnitude": magnitude_fn(weight, lora_A, lora_B, alpha),
            "output": y.detach(),
            "gradients (lora_A, lora_B, magnitude)": [None if g is None else g.detach() for g in grads],
            "merged weight": merge_fn(weight, lora_A, lora_B, alpha, magnitude),
        }

    adapter.__name__ = name
    return adapter


def _check_rank(r):
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError("r must be a positive int")


# ------------------------------------------------------------------------------ 09.lora_init


@mistake("09.lora_init", "b_random")
def init_both_like_nn_linear(in_features, out_features, r, generator):
    _check_rank(r)
    lora_A, lora_B = torch.empty(r, in_features), torch.empty(out_features, r)
    nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5), generator=generator)
    nn.init.kaiming_uniform_(lora_B, a=math.sqrt(5), generator=generator)
    return lora_A, lora_B


@mistake("09.lora_init", "zeros")
def init_both_zero(in_features, out_features, r, generator):
    _check_rank(r)
    return torch.zeros(r, in_features), torch.zeros(out_features, r)


@mistake("09.lora_init", "swapped")
def init_a_zero_b_random(in_features, out_features, r, generator):
    _check_rank(r)
    lora_B = torch.empty(out_features, r)
    nn.init.kaiming_uniform_(lora_B, a=math.sqrt(5), generator=generator)
    return torch.zeros(r, in_features), lora_B


@mistake("09.lora_init", "default_a")
def init_kaiming_with_default_a(in_features, out_features, r, generator):
    _check_rank(r)
    lora_A = torch.empty(r, in_features)
    nn.init.kaiming_uniform_(lora_A, generator=generator)
    return lora_A, torch.zeros(out_features, r)


@mistake("09.lora_init", "unit_uniform")
def init_with_torch_rand(in_features, out_features, r, generator):
    _check_rank(r)
    return torch.rand(r, in_features, generator=generator), torch.zeros(out_features, r)


@mistake("09.lora_init", "validate")
def init_without_checking_r(in_features, out_features, r, generator):
    lora_A = torch.empty(r, in_features)
    nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5), generator=generator)
    return lora_A, torch.zeros(out_features, r)


@mistake("09.lora_init", "shape")
def init_with_shapes_as_in_the_paper(in_features, out_features, r, generator):
    _check_rank(r)
    lora_A = torch.empty(in_features, r)  # the paper's x A B with A (d, r): the transpose of nn.Linear's layout
    nn.init.kaiming_uniform_(lora_A.T, a=math.sqrt(5), generator=generator)
    return lora_A, torch.zeros(r, out_features)


# ------------------------------------------------------------------------------ 09.lora_linear


def _dropped(x, dropout_mask):
    return x if dropout_mask is None else x * dropout_mask


def _checked(x, weight, lora_A, lora_B, dropout_mask):
    if lora_A.shape[1] != weight.shape[1] or lora_B.shape != (weight.shape[0], lora_A.shape[0]):
        raise ValueError("shapes")
    if dropout_mask is not None and dropout_mask.shape != x.shape:
        raise ValueError("mask")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError("x")


@mistake("09.lora_linear", "alpha")
def lora_scaled_by_alpha(x, weight, lora_A, lora_B, alpha, dropout_mask):
    _checked(x, weight, lora_A, lora_B, dropout_mask)
    return x @ weight.T + alpha * (_dropped(x, dropout_mask) @ lora_A.T @ lora_B.T)


@mistake("09.lora_linear", "inverted")
def lora_scaled_by_r_over_alpha(x, weight, lora_A, lora_B, alpha, dropout_mask):
    _checked(x, weight, lora_A, lora_B, dropout_mask)
    r = lora_A.shape[0]
    return F.linear(x, weight) + (r / alpha) * F.linear(F.linear(_dropped(x, dropout_mask), lora_A), lora_B)


@mistake("09.lora_linear", "no_scale")
def lora_without_scale(x, weight, lora_A, lora_B, alpha, dropout_mask):
    _checked(x, weight, lora_A, lora_B, dropout_mask)
    return F.linear(x, weight) + F.linear(F.linear(_dropped(x, dropout_mask), lora_A), lora_B)


@mistake("09.lora_linear", "int_division")
def lora_with_integer_scale(x, weight, lora_A, lora_B, alpha, dropout_mask):
    _checked(x, weight, lora_A, lora_B, dropout_mask)
    scaling = int(alpha) // lora_A.shape[0]
    return F.linear(x, weight) + scaling * F.linear(F.linear(_dropped(x, dropout_mask), lora_A), lora_B)


@mistake("09.lora_linear", "dropout_base")
def lora_dropping_the_input_of_both_paths(x, weight, lora_A, lora_B, alpha, dropout_mask):
    _checked(x, weight, lora_A, lora_B, dropout_mask)
    if dropout_mask is not None:
        x = x * dropout_mask
    return F.linear(x, weight) + alpha / lora_A.shape[0] * F.linear(F.linear(x, lora_A), lora_B)


@mistake("09.lora_linear", "no_dropout")
def lora_ignoring_the_mask(x, weight, lora_A, lora_B, alpha, dropout_mask):
    _checked(x, weight, lora_A, lora_B, dropout_mask)
    return F.linear(x, weight) + alpha / lora_A.shape[0] * F.linear(F.linear(x, lora_A), lora_B)


@mistake("09.lora_linear", "transposed")
def lora_multiplying_by_the_weight_untransposed(x, weight, lora_A, lora_B, alpha, dropout_mask):
    _checked(x, weight, lora_A, lora_B, dropout_mask)
    h = _dropped(x, dropout_mask)
    return x @ weight + alpha / lora_A.shape[0] * (h @ lora_A.T @ lora_B.T)


@mistake("09.lora_linear", "no_base")
def lora_returning_only_the_update(x, weight, lora_A, lora_B, alpha, dropout_mask):
    _checked(x, weight, lora_A, lora_B, dropout_mask)
    return alpha / lora_A.shape[0] * F.linear(F.linear(_dropped(x, dropout_mask), lora_A), lora_B)


@mistake("09.lora_linear", "rank_dim")
def lora_with_rank_from_the_columns(x, weight, lora_A, lora_B, alpha, dropout_mask):
    _checked(x, weight, lora_A, lora_B, dropout_mask)
    r = lora_A.shape[1]
    return F.linear(x, weight) + alpha / r * F.linear(F.linear(_dropped(x, dropout_mask), lora_A), lora_B)


@mistake("09.lora_linear", "validate")
def lora_without_shape_checks(x, weight, lora_A, lora_B, alpha, dropout_mask):
    return F.linear(x, weight) + alpha / lora_A.shape[0] * F.linear(F.linear(_dropped(x, dropout_mask), lora_A), lora_B)


@mistake("09.lora_linear", "grad_detached")
def lora_update_precomputed_under_no_grad(x, weight, lora_A, lora_B, alpha, dropout_mask):
    _checked(x, weight, lora_A, lora_B, dropout_mask)
    with torch.no_grad():  # "B A only once, and without the autograd overhead"
        delta = alpha / lora_A.shape[0] * (lora_B @ lora_A)  # (out, in)
    return F.linear(x, weight) + F.linear(_dropped(x, dropout_mask), delta)


# ------------------------------------------------------------------------------ 09.inject


def _matching(model, target_modules, match):
    modules = dict(model.named_modules())
    if target_modules == "all-linear":
        return modules, [n for n, m in modules.items() if isinstance(m, nn.Linear) and n != "lm_head"]
    names = []
    for target in target_modules:
        found = [n for n in modules if match(n, target)]
        if not found:
            raise ValueError(f"{target} matches nothing")
        names += [n for n in found if n not in names]
    for name in names:
        if not isinstance(modules[name], nn.Linear):
            raise ValueError(f"{name} is not linear")
    return modules, names


def _suffix(name, target):
    return name == target or name.endswith("." + target)


def _wrap(model, modules, names, r, alpha):
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, LoRALinear(modules[name], r, alpha))


def _counts(model):
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@mistake("09.inject", "no_freeze")
@via_inject
def inject_without_freezing(model, target_modules, r, alpha):
    modules, names = _matching(model, target_modules, _suffix)
    _wrap(model, modules, names, r, alpha)
    return _counts(model)


@mistake("09.inject", "wrapped_only")
@via_inject
def inject_freezing_only_the_wrapped_layers(model, target_modules, r, alpha):
    modules, names = _matching(model, target_modules, _suffix)
    for name in names:
        modules[name].weight.requires_grad_(False)
    _wrap(model, modules, names, r, alpha)
    return _counts(model)


@mistake("09.inject", "all_frozen")
@via_inject
def inject_freezing_after_wrapping(model, target_modules, r, alpha):
    modules, names = _matching(model, target_modules, _suffix)
    _wrap(model, modules, names, r, alpha)
    for p in model.parameters():
        p.requires_grad = False
    return _counts(model)


@mistake("09.inject", "tied")
@via_inject
def inject_counting_the_state_dict(model, target_modules, r, alpha):
    modules, names = _matching(model, target_modules, _suffix)
    for p in model.parameters():
        p.requires_grad_(False)
    _wrap(model, modules, names, r, alpha)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(v.numel() for v in model.state_dict().values())


@mistake("09.inject", "lm_head")
@via_inject
def inject_all_linear_with_the_head(model, target_modules, r, alpha):
    if target_modules == "all-linear":
        modules = dict(model.named_modules())
        names = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    else:
        modules, names = _matching(model, target_modules, _suffix)
    for p in model.parameters():
        p.requires_grad_(False)
    _wrap(model, modules, names, r, alpha)
    return _counts(model)


@mistake("09.inject", "substring")
@via_inject
def inject_matching_substrings(model, target_modules, r, alpha):
    modules, names = _matching(model, target_modules, lambda name, target: target in name)
    for p in model.parameters():
        p.requires_grad_(False)
    _wrap(model, modules, names, r, alpha)
    return _counts(model)


@mistake("09.inject", "missing_target")
@via_inject
def inject_skipping_unmatched_targets(model, target_modules, r, alpha):
    modules = dict(model.named_modules())
    if target_modules == "all-linear":
        names = [n for n, m in modules.items() if isinstance(m, nn.Linear) and n != "lm_head"]
    else:
        names = [n for n in modules if any(_suffix(n, t) for t in target_modules)]
        if any(not isinstance(modules[n], nn.Linear) for n in names):
            raise ValueError("not linear")
    for p in model.parameters():
        p.requires_grad_(False)
    _wrap(model, modules, names, r, alpha)
    return _counts(model)


@mistake("09.inject", "total_before")
@via_inject
def inject_counting_the_base_model(model, target_modules, r, alpha):
    total = sum(p.numel() for p in model.parameters())
    modules, names = _matching(model, target_modules, _suffix)
    _wrap(model, modules, names, r, alpha)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


@mistake("09.inject", "not_linear")
@via_inject
def inject_without_checking_the_type(model, target_modules, r, alpha):
    modules = dict(model.named_modules())
    if target_modules == "all-linear":
        names = [n for n, m in modules.items() if isinstance(m, nn.Linear) and n != "lm_head"]
    else:
        names = []
        for target in target_modules:
            found = [n for n in modules if _suffix(n, target)]
            if not found:
                raise ValueError(f"{target} matches nothing")
            names += found
    _wrap(model, modules, names, r, alpha)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return _counts(model)


# ------------------------------------------------------------------------------ 09.merge


def _delta(layer, scaling=None):
    return (layer.scaling if scaling is None else scaling) * (layer.lora_B.weight @ layer.lora_A.weight)


def merge_without_scale(layer):
    if layer.merged:
        raise ValueError("merged")
    W = layer.base_layer.weight
    W.data = (W.float() + layer.lora_B.weight @ layer.lora_A.weight).to(W.dtype)
    layer.merged = True


def unmerge_without_scale(layer):
    if not layer.merged:
        raise ValueError("not merged")
    W = layer.base_layer.weight
    W.data = (W.float() - layer.lora_B.weight @ layer.lora_A.weight).to(W.dtype)
    layer.merged = False


mistake("09.merge", "no_scale")(via_merge(merge_without_scale, unmerge_without_scale, "merge_without_scale"))


def merge_scaled_by_alpha(layer):
    if layer.merged:
        raise ValueError("merged")
    W = layer.base_layer.weight
    W.data = (W.float() + _delta(layer, layer.lora_alpha)).to(W.dtype)
    layer.merged = True


def unmerge_scaled_by_alpha(layer):
    if not layer.merged:
        raise ValueError("not merged")
    W = layer.base_layer.weight
    W.data = (W.float() - _delta(layer, layer.lora_alpha)).to(W.dtype)
    layer.merged = False


mistake("09.merge", "alpha")(via_merge(merge_scaled_by_alpha, unmerge_scaled_by_alpha, "merge_scaled_by_alpha"))


def merge_with_the_transposed_product(layer):
    if layer.merged:
        raise ValueError("merged")
    W = layer.base_layer.weight
    with torch.no_grad():
        W += layer.scaling * (layer.lora_A.weight.T @ layer.lora_B.weight.T)
    layer.merged = True


mistake("09.merge", "transposed")(via_merge(merge_with_the_transposed_product))


def unmerge_adding_the_update(layer):
    if not layer.merged:
        raise ValueError("not merged")
    W = layer.base_layer.weight
    W.data = (W.float() + _delta(layer)).to(W.dtype)
    layer.merged = False


mistake("09.merge", "unmerge_adds")(via_merge(unmerge_fn=unmerge_adding_the_update))


def merge_without_checking(layer):
    W = layer.base_layer.weight
    W.data = (W.float() + _delta(layer)).to(W.dtype)
    layer.merged = True


mistake("09.merge", "merge_twice")(via_merge(merge_without_checking))


def unmerge_without_checking(layer):
    W = layer.base_layer.weight
    W.data = (W.float() - _delta(layer)).to(W.dtype)
    layer.merged = False


mistake("09.merge", "unmerge_unmerged")(via_merge(unmerge_fn=unmerge_without_checking))


def merge_forgetting_the_flag(layer):
    if layer.merged:
        raise ValueError("merged")
    W = layer.base_layer.weight
    W.data = (W.float() + _delta(layer)).to(W.dtype)


mistake("09.merge", "flag_not_set")(via_merge(merge_forgetting_the_flag))


def unmerge_forgetting_the_flag(layer):
    if not layer.merged:
        raise ValueError("not merged")
    W = layer.base_layer.weight
    W.data = (W.float() - _delta(layer)).to(W.dtype)


mistake("09.merge", "flag_not_reset")(via_merge(unmerge_fn=unmerge_forgetting_the_flag))


def merge_in_the_weights_dtype(layer):
    if layer.merged:
        raise ValueError("merged")
    W = layer.base_layer.weight
    delta = _delta(layer).to(W.dtype)  # "make the dtypes match" before adding
    W.data = W + delta
    layer.merged = True


def unmerge_in_the_weights_dtype(layer):
    if not layer.merged:
        raise ValueError("not merged")
    W = layer.base_layer.weight
    W.data = W - _delta(layer).to(W.dtype)
    layer.merged = False


mistake("09.merge", "low_precision")(via_merge(merge_in_the_weights_dtype, unmerge_in_the_weights_dtype,
                                                "merge_in_the_weights_dtype"))


# ------------------------------------------------------------------------------ 09.peft_key

PREFIX = "base_model.model."
TENSORS = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")


def _split(rest):
    for tensor in TENSORS:
        if rest.endswith("." + tensor):
            return rest[: -len(tensor) - 1], tensor
    raise ValueError(f"not an adapter tensor: {rest}")


@mistake("09.peft_key", "prefix")
def key_keeping_the_models_prefix(name):
    if not name.startswith(PREFIX):
        raise ValueError("no prefix")
    module, tensor = _split(name[len(PREFIX):])
    if module.endswith("base_layer") or "embed" in module:
        raise ValueError("not a linear layer's adapter")
    return f"{module}.{tensor}"


@mistake("09.peft_key", "fixed_prefix")
def key_cutting_a_fixed_prefix(name):
    if not name.startswith(PREFIX):
        raise ValueError("no prefix")
    module, tensor = _split(name[len("base_model.model.model."):])
    if module.endswith("base_layer") or "embed" in module:
        raise ValueError("not a linear layer's adapter")
    module = module.replace("block_sparse_moe", "mlp")
    parts = module.split(".")
    if "experts" in parts:
        parts[-1] = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}[parts[-1]]
    return ".".join(parts) + "." + tensor


@mistake("09.peft_key", "fixed_prefix")
def key_replacing_the_triple_prefix(name):
    if not name.startswith(PREFIX):
        raise ValueError("no prefix")
    module, tensor = _split(name.replace("base_model.model.model.", ""))
    if module.endswith("base_layer") or "embed" in module:
        raise ValueError("not a linear layer's adapter")
    module = module.replace("block_sparse_moe", "mlp")
    parts = module.split(".")
    if "experts" in parts:
        parts[-1] = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}[parts[-1]]
    return ".".join(parts) + "." + tensor


@mistake("09.peft_key", "magnitude")
def key_with_a_weight_suffix_everywhere(name):
    if not name.startswith(PREFIX):
        raise ValueError("no prefix")
    module, tensor = _split(name[len(PREFIX):])
    course = hf_key(module + ".weight")
    if course is None:
        raise ValueError("no module")
    return course.removesuffix(".weight") + "." + tensor.removesuffix(".weight") + ".weight"


@mistake("09.peft_key", "mixtral")
def key_without_renaming_the_module(name):
    if not name.startswith(PREFIX):
        raise ValueError("no prefix")
    module, tensor = _split(name[len(PREFIX):])
    if module.endswith("base_layer") or "embed" in module:
        raise ValueError("not a linear layer's adapter")
    return module.removeprefix("model.") + "." + tensor


@mistake("09.peft_key", "unknown")
def key_without_validation(name):
    return name.removeprefix("base_model.model.").removeprefix("model.").replace("block_sparse_moe", "mlp") \
        .replace(".w1.", ".gate_proj.").replace(".w3.", ".up_proj.").replace(".w2.", ".down_proj.")


# ------------------------------------------------------------------------------ 09.dora


def _norm(weight, lora_A, lora_B, alpha, dim=1, scaled=True, adapted=True):
    s = alpha / lora_A.shape[0] if scaled else 1.0
    combined = weight + s * (lora_B @ lora_A) if adapted else weight
    return torch.linalg.vector_norm(combined.float(), dim=dim)


def _dora_with(norm_fn, detach=True, whole=True):
    def magnitude(weight, lora_A, lora_B, alpha):
        return norm_fn(weight, lora_A, lora_B, alpha).detach()

    def linear(x, weight, lora_A, lora_B, alpha, m):
        n = norm_fn(weight, lora_A, lora_B, alpha)
        n = n.detach() if detach else n
        base = F.linear(x, weight)
        update = alpha / lora_A.shape[0] * F.linear(F.linear(x, lora_A), lora_B)
        return m / n * (base + update) if whole else m / n * base + update

    def merge(weight, lora_A, lora_B, alpha, m):
        combined = weight.float() + alpha / lora_A.shape[0] * (lora_B @ lora_A)
        return (m[:, None] / norm_fn(weight, lora_A, lora_B, alpha)[:, None] * combined).to(weight.dtype)

    return magnitude, linear, merge


def _dora_mistake(hint, name, **options):
    magnitude, linear, merge = _dora_with(**options)
    mistake("09.dora", hint)(via_dora(magnitude, linear, merge, name))


_dora_mistake("axis", "dora_norm_over_columns", norm_fn=lambda w, a, b, alpha: _norm(w, a, b, alpha, dim=0))
_dora_mistake("detach", "dora_norm_in_the_graph", norm_fn=_norm, detach=False)
_dora_mistake("norm_scale", "dora_norm_without_scale", norm_fn=lambda w, a, b, alpha: _norm(w, a, b, alpha, scaled=False))
_dora_mistake("base_norm", "dora_norm_of_the_base_weight", norm_fn=lambda w, a, b, alpha: _norm(w, a, b, alpha,
                                                                                                 adapted=False))
_dora_mistake("unscaled_update", "dora_scaling_only_the_base", norm_fn=_norm, whole=False)


def dora_linear_without_norm(x, weight, lora_A, lora_B, alpha, magnitude):
    return magnitude * lora_linear(x, weight, lora_A, lora_B, alpha)


def dora_merge_without_norm(weight, lora_A, lora_B, alpha, magnitude):
    combined = weight.float() + alpha / lora_A.shape[0] * (lora_B.float() @ lora_A.float())
    return (magnitude[:, None] * combined).to(weight.dtype)


mistake("09.dora", "no_norm")(via_dora(linear_fn=dora_linear_without_norm, merge_fn=dora_merge_without_norm,
                                       name="dora_without_normalising"))


def dora_merge_as_lora(weight, lora_A, lora_B, alpha, magnitude):
    return (weight.float() + alpha / lora_A.shape[0] * (lora_B.float() @ lora_A.float())).to(weight.dtype)


mistake("09.dora", "merge_plain")(via_dora(merge_fn=dora_merge_as_lora, name="dora_merge_as_lora"))


# ------------------------------------------------- shapes, dotted targets, in-memory names, dtypes


@mistake("09.lora_linear", "validate")
def lora_linear_checks_the_adapter_only(x, weight, lora_A, lora_B, alpha, dropout_mask):
    # the learner thought torch checks x itself (it raises RuntimeError, not ValueError)
    out_features, in_features = weight.shape
    r = lora_A.shape[0]
    if lora_A.shape != (r, in_features) or lora_B.shape != (out_features, r):
        raise ValueError("lora_A must be (r, in) and lora_B (out, r)")
    h = x if dropout_mask is None else x * dropout_mask
    return F.linear(x, weight) + F.linear(F.linear(h, lora_A), lora_B) * (alpha / r)


@mistake("09.inject", "dotted")
@via_inject
def inject_matches_the_last_name_component(model, target_modules, r, alpha):
    # the learner thought a target is always a short name such as "q_proj": name.split(".")[-1] == target
    modules = dict(model.named_modules())
    if target_modules == "all-linear":
        names = [n for n, m in modules.items() if isinstance(m, nn.Linear) and n != "lm_head"]
    else:
        names = []
        for target in target_modules:
            found = [n for n in modules if n.split(".")[-1] == target]
            if not found:
                raise ValueError(f"target {target!r} matches no module")
            names += [n for n in found if n not in names]
        for name in names:
            if not isinstance(modules[name], nn.Linear):
                raise ValueError(f"{name} is not a linear layer")
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, LoRALinear(modules[name], r, alpha))
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@mistake("09.peft_key", "unknown")
def peft_key_by_regex(name):
    # the learner thought any name with lora_A / lora_B in it is an adapter tensor, "default" included
    import re

    found = re.fullmatch(r"base_model\.model\.(.+?)\.(lora_A|lora_B)(?:\.default)?\.weight|"
                         r"base_model\.model\.(.+?)\.lora_magnitude_vector", name)
    if not found:
        raise ValueError(f"{name} is not a PEFT adapter tensor")
    if found.group(3):
        return hf_key(found.group(3) + ".weight")[: -len(".weight")] + ".lora_magnitude_vector"
    return hf_key(found.group(1) + ".weight")[: -len(".weight")] + f".{found.group(2)}.weight"


def _magnitude_in_float64(weight, lora_A, lora_B, alpha):
    # the learner thought a norm is safer in float64, and returned it so
    r = lora_A.shape[0]
    combined = weight.double() + (alpha / r) * (lora_B.double() @ lora_A.double())
    return torch.linalg.vector_norm(combined, dim=1).detach()


mistake("09.dora", "dtype")(via_dora(magnitude_fn=_magnitude_in_float64, name="dora_magnitude_in_float64"))


@mistake("09.inject", "all_linear_routers")
@via_inject
def inject_all_linear_as_the_projection_names(model, target_modules, r, alpha):
    # the learner thought 'all-linear' means the seven LLaMA projections, and listed them
    if target_modules == "all-linear":
        target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    modules = dict(model.named_modules())
    names = []
    for target in target_modules:
        found = [n for n in modules if n == target or n.endswith("." + target)]
        if not found:
            raise ValueError(f"target {target!r} matches no module")
        names += [n for n in found if n not in names]
    for name in names:
        if not isinstance(modules[name], nn.Linear):
            raise ValueError(f"{name} is not a linear layer")
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, LoRALinear(modules[name], r, alpha))
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _dora_linear_norm_first(x, weight, lora_A, lora_B, alpha, magnitude):
    # the learner wrote the formula left to right: the norm of W + s B A first, so a lora_A of the
    # wrong width fails in torch's broadcasting (RuntimeError) before lora_linear can refuse it
    norm = dora_magnitude(weight, lora_A, lora_B, alpha).to(x.dtype)
    return (magnitude / norm) * lora_linear(x, weight, lora_A, lora_B, alpha)


mistake("09.dora", "validate")(via_dora(linear_fn=_dora_linear_norm_first, name="dora_linear_norm_before_the_shape_check"))
