"""Wrong answers to chapter 04's checkpoints (mixture of experts), as learners write them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import mistake


def _check_top_k(logits, top_k):
    if not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"top_k must be between 1 and {logits.shape[-1]}, got {top_k}")


# ----------------------------------------------------------------------------- 04.router


@mistake("04.router", "renormalise")
def router_without_renormalising(logits, top_k):
    _check_top_k(logits, top_k)
    probs = F.softmax(logits.float(), dim=-1)
    weights, indices = probs.topk(top_k, dim=-1)
    return weights, indices, probs  # DeepSeekMoE-v1 style: the k weights do not sum to 1


@mistake("04.router", "renormalise")
def router_top_k_of_logits_then_full_softmax(logits, top_k):
    _check_top_k(logits, top_k)
    indices = logits.topk(top_k, dim=-1).indices  # top-k before the softmax...
    probs = F.softmax(logits.float(), dim=-1)
    return probs.gather(-1, indices), indices, probs  # ...but the weights are over all experts


@mistake("04.router", "renormalise")  # the same numbers as no renormalisation: one shared hint
def router_renormalising_over_all_experts(logits, top_k):
    _check_top_k(logits, top_k)
    probs = F.softmax(logits.float(), dim=-1)
    top, indices = probs.topk(top_k, dim=-1)
    return top / probs.sum(dim=-1, keepdim=True), indices, probs


@mistake("04.router", "softmax_dim")
def router_softmax_over_tokens(logits, top_k):
    _check_top_k(logits, top_k)
    probs = F.softmax(logits.float(), dim=0)
    top, indices = probs.topk(top_k, dim=-1)
    return top / top.sum(dim=-1, keepdim=True), indices, probs


@mistake("04.router", "logits")
def router_weights_are_logits(logits, top_k):
    _check_top_k(logits, top_k)
    probs = F.softmax(logits.float(), dim=-1)
    indices = probs.topk(top_k, dim=-1).indices
    return logits.float().gather(-1, indices), indices, probs


@mistake("04.router", "largest")
def router_argsort_ascending(logits, top_k):
    _check_top_k(logits, top_k)
    probs = F.softmax(logits.float(), dim=-1)
    top, indices = probs.topk(top_k, dim=-1, largest=False)
    return top / top.sum(dim=-1, keepdim=True), indices, probs


@mistake("04.router", "order")
def router_sorts_experts_by_id(logits, top_k):
    _check_top_k(logits, top_k)
    probs = F.softmax(logits.float(), dim=-1)
    top, indices = probs.topk(top_k, dim=-1)
    weights = top / top.sum(dim=-1, keepdim=True)
    indices, perm = indices.sort(dim=-1)  # "tidier" in expert order
    return weights.gather(-1, perm), indices, probs


@mistake("04.router", "probs_full")
def router_returns_chosen_weights_as_probs(logits, top_k):
    _check_top_k(logits, top_k)
    probs = F.softmax(logits.float(), dim=-1)
    top, indices = probs.topk(top_k, dim=-1)
    weights = top / top.sum(dim=-1, keepdim=True)
    return weights, indices, torch.zeros_like(probs).scatter(-1, indices, weights)


@mistake("04.router", "float32")
def router_softmax_in_the_logits_dtype(logits, top_k):
    _check_top_k(logits, top_k)
    probs = logits.softmax(dim=-1)  # bfloat16 logits: bfloat16 probabilities
    top, indices = probs.topk(top_k, dim=-1)
    return (top / top.sum(dim=-1, keepdim=True)).float(), indices, probs.float()


@mistake("04.router", "dtype")
def router_softmax_in_float64(logits, top_k):
    _check_top_k(logits, top_k)
    probs = F.softmax(logits.double(), dim=-1)  # "float64 is more precise than float32, so better"
    top, indices = probs.topk(top_k, dim=-1)
    return top / top.sum(dim=-1, keepdim=True), indices, probs


@mistake("04.router", "grad_detached")
def router_routes_under_no_grad(logits, top_k):
    _check_top_k(logits, top_k)
    with torch.no_grad():  # "choosing experts is not differentiable anyway"
        probs = F.softmax(logits.float(), dim=-1)
        top, indices = probs.topk(top_k, dim=-1)
    return top / top.sum(dim=-1, keepdim=True), indices, probs


@mistake("04.router", "validate")
def router_without_validation(logits, top_k):
    probs = F.softmax(logits.float(), dim=-1)
    top, indices = probs.topk(top_k, dim=-1)  # RuntimeError for top_k > n_experts; top_k = 0 passes
    return top / top.sum(dim=-1, keepdim=True), indices, probs


# --------------------------------------------------------------------------- 04.dispatch


def _check_ids(indices, n_experts):
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_experts):
        raise ValueError("expert id out of range")


@mistake("04.dispatch", "token_of_slot")
def dispatch_gathers_with_order(x, indices, n_experts):
    _check_ids(indices, n_experts)
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    return x[order], order, torch.bincount(flat, minlength=n_experts)


@mistake("04.dispatch", "divide_by_k")
def dispatch_divides_by_n_experts(x, indices, n_experts):
    _check_ids(indices, n_experts)
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    return x[order // n_experts], order, torch.bincount(flat, minlength=n_experts)


@mistake("04.dispatch", "modulo")
def dispatch_token_by_modulo(x, indices, n_experts):
    _check_ids(indices, n_experts)
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    return x[order % x.shape[0]], order, torch.bincount(flat, minlength=n_experts)


@mistake("04.dispatch", "all_slots")
def dispatch_first_choice_only(x, indices, n_experts):
    _check_ids(indices, n_experts)
    flat = indices[:, 0]
    order = torch.argsort(flat, stable=True)
    return x[order // indices.shape[1]], order, torch.bincount(flat, minlength=n_experts)


@mistake("04.dispatch", "slot_major")
def dispatch_flattens_transposed(x, indices, n_experts):
    _check_ids(indices, n_experts)
    flat = indices.T.reshape(-1)  # all first choices, then all second choices
    order = torch.argsort(flat, stable=True)
    return x[order // indices.shape[1]], order, torch.bincount(flat, minlength=n_experts)


@mistake("04.dispatch", "ascending")
def dispatch_sorts_descending(x, indices, n_experts):
    _check_ids(indices, n_experts)
    flat = indices.reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)
    return x[order // indices.shape[1]], order, torch.bincount(flat, minlength=n_experts)


@mistake("04.dispatch", "stable")
def dispatch_unstable_sort(x, indices, n_experts):
    _check_ids(indices, n_experts)
    flat = indices.reshape(-1)
    order = torch.argsort(flat)  # ties in any order
    return x[order // indices.shape[1]], order, torch.bincount(flat, minlength=n_experts)


@mistake("04.dispatch", "minlength")
def dispatch_bincount_without_minlength(x, indices, n_experts):
    _check_ids(indices, n_experts)
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    return x[order // indices.shape[1]], order, torch.bincount(flat)


@mistake("04.dispatch", "range")
def dispatch_checks_only_large_ids(x, indices, n_experts):
    if int(indices.max()) >= n_experts:
        raise ValueError("expert id out of range")
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    return x[order // indices.shape[1]], order, torch.bincount(flat, minlength=n_experts)


@mistake("04.dispatch", "grad_detached")
def dispatch_gathers_from_x_data(x, indices, n_experts):
    _check_ids(indices, n_experts)
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    x_sorted = x.data[order // indices.shape[1]]  # .data: the experts' inputs are cut from autograd
    return x_sorted, order, torch.bincount(flat, minlength=n_experts)


@mistake("04.dispatch", "range")
def dispatch_without_validation(x, indices, n_experts):
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    return x[order // indices.shape[1]], order, torch.bincount(flat, minlength=n_experts)


# ---------------------------------------------------------------------------- 04.combine


@mistake("04.combine", "weights")
def combine_without_weights(y_sorted, weights, order):
    n_tokens, top_k = weights.shape
    out = y_sorted.new_zeros(n_tokens, y_sorted.shape[-1])
    return out.index_add_(0, order // top_k, y_sorted)


@mistake("04.combine", "weights_twice")
def combine_weights_twice(y_sorted, weights, order):
    n_tokens, top_k = weights.shape
    w = weights.reshape(-1)[order]
    rows = y_sorted * w[:, None]  # already weighted...
    out = y_sorted.new_zeros(n_tokens, y_sorted.shape[-1])
    return out.index_add_(0, order // top_k, rows * w[:, None])  # ...and weighted again


@mistake("04.combine", "weights_order")
def combine_weights_not_permuted(y_sorted, weights, order):
    n_tokens, top_k = weights.shape
    w = weights.reshape(-1)  # still in token order, not dispatch order
    out = y_sorted.new_zeros(n_tokens, y_sorted.shape[-1])
    return out.index_add_(0, order // top_k, y_sorted * w[:, None])


@mistake("04.combine", "unsort")
def combine_without_unsorting(y_sorted, weights, order):
    n_tokens, top_k = weights.shape
    w = weights.reshape(-1)[order]
    return (y_sorted * w[:, None]).reshape(n_tokens, top_k, -1).sum(dim=1)


@mistake("04.combine", "accumulate")
def combine_overwrites(y_sorted, weights, order):
    n_tokens, top_k = weights.shape
    w = weights.reshape(-1)[order]
    out = y_sorted.new_zeros(n_tokens, y_sorted.shape[-1])
    return out.index_copy_(0, order // top_k, y_sorted * w[:, None])


@mistake("04.combine", "sum")
def combine_averages_the_slots(y_sorted, weights, order):
    n_tokens, top_k = weights.shape
    w = weights.reshape(-1)[order]
    out = y_sorted.new_zeros(n_tokens, y_sorted.shape[-1])
    return out.index_add_(0, order // top_k, y_sorted * w[:, None] / top_k)


@mistake("04.combine", "modulo")
def combine_token_by_modulo(y_sorted, weights, order):
    n_tokens, top_k = weights.shape
    w = weights.reshape(-1)[order]
    out = y_sorted.new_zeros(n_tokens, y_sorted.shape[-1])
    return out.index_add_(0, order % n_tokens, y_sorted * w[:, None])


@mistake("04.combine", "grad_detached")
def combine_loop_with_python_weights(y_sorted, weights, order):
    n_tokens, top_k = weights.shape
    flat_weights = weights.reshape(-1)
    out = torch.zeros(n_tokens, y_sorted.shape[-1], dtype=y_sorted.dtype)
    for r in range(order.numel()):
        i = int(order[r])
        out[i // top_k] += flat_weights[i].item() * y_sorted[r]  # .item(): the router gets no gradient
    return out


@mistake("04.combine", "axis")
def combine_index_add_on_the_feature_axis(y_sorted, weights, order):
    n_tokens, top_k = weights.shape
    w = weights.reshape(-1)[order]
    out = y_sorted.new_zeros(n_tokens, y_sorted.shape[-1])
    return out.index_add_(1, order // top_k, y_sorted * w[:, None])


# --------------------------------------------------------------- 04.load_balancing_loss


def _check_batch(indices):
    if indices.shape[0] == 0:
        raise ValueError("empty batch")


@mistake("04.load_balancing_loss", "scale")
def loss_without_n_factor(probs, indices, n_experts):
    _check_batch(indices)
    n_tokens, top_k = indices.shape
    f = torch.bincount(indices.reshape(-1), minlength=n_experts).float() / (n_tokens * top_k)
    return (f * probs.float().mean(dim=0)).sum()


@mistake("04.load_balancing_loss", "scale_mean")
def loss_mean_over_experts(probs, indices, n_experts):
    _check_batch(indices)
    n_tokens, top_k = indices.shape
    f = torch.bincount(indices.reshape(-1), minlength=n_experts).float() / (n_tokens * top_k)
    return (f * probs.float().mean(dim=0)).mean()  # balanced routing gives 1 / n_experts


@mistake("04.load_balancing_loss", "f_counts")
def loss_f_from_probabilities(probs, indices, n_experts):
    _check_batch(indices)
    P = probs.float().mean(dim=0)
    f = probs.float().mean(dim=0)  # "fraction routed" as a soft count
    return n_experts * (f * P).sum()


@mistake("04.load_balancing_loss", "f_topk")
def loss_counts_first_choice_only(probs, indices, n_experts):
    _check_batch(indices)
    f = torch.bincount(indices[:, 0], minlength=n_experts).float() / indices.shape[0]
    return n_experts * (f * probs.float().mean(dim=0)).sum()


@mistake("04.load_balancing_loss", "f_norm")
def loss_f_over_tokens_not_assignments(probs, indices, n_experts):
    _check_batch(indices)
    f = torch.bincount(indices.reshape(-1), minlength=n_experts).float() / indices.shape[0]
    return n_experts * (f * probs.float().mean(dim=0)).sum()


@mistake("04.load_balancing_loss", "P_full")
def loss_p_of_chosen_experts_only(probs, indices, n_experts):
    _check_batch(indices)
    n_tokens, top_k = indices.shape
    f = torch.bincount(indices.reshape(-1), minlength=n_experts).float() / (n_tokens * top_k)
    mask = torch.zeros_like(probs).scatter(-1, indices, 1.0)
    return n_experts * (f * (probs * mask).mean(dim=0)).sum()


@mistake("04.load_balancing_loss", "shapes")
def loss_p_averaged_over_experts(probs, indices, n_experts):
    _check_batch(indices)
    n_tokens, top_k = indices.shape
    f = torch.bincount(indices.reshape(-1), minlength=n_experts).float() / (n_tokens * top_k)
    return n_experts * (f * probs.float().mean(dim=1)).sum()


@mistake("04.load_balancing_loss", "minlength")
def loss_bincount_without_minlength(probs, indices, n_experts):
    _check_batch(indices)
    f = torch.bincount(indices.reshape(-1)).float() / indices.numel()
    return n_experts * (f * probs.float().mean(dim=0)).sum()


@mistake("04.load_balancing_loss", "return_type")
def loss_returns_a_python_float(probs, indices, n_experts):
    _check_batch(indices)
    n_tokens, top_k = indices.shape
    f = torch.bincount(indices.reshape(-1), minlength=n_experts).float() / (n_tokens * top_k)
    return (n_experts * (f * probs.float().mean(dim=0)).sum()).item()  # no gradient left


@mistake("04.load_balancing_loss", "grad_detached")
def loss_under_no_grad(probs, indices, n_experts):
    _check_batch(indices)
    n_tokens, top_k = indices.shape
    with torch.no_grad():  # "counting tokens needs no gradient"
        f = torch.bincount(indices.reshape(-1), minlength=n_experts).float() / (n_tokens * top_k)
        P = probs.float().mean(dim=0)
        return n_experts * (f * P).sum()


@mistake("04.load_balancing_loss", "empty")
def loss_without_empty_check(probs, indices, n_experts):
    n_tokens, top_k = indices.shape
    f = torch.bincount(indices.reshape(-1), minlength=n_experts).float() / (n_tokens * top_k)  # 0 / 0 = nan
    return n_experts * (f * probs.float().mean(dim=0)).sum()


@mistake("04.load_balancing_loss", "dtype")
def loss_in_float64(probs, indices, n_experts):
    _check_batch(indices)
    n_tokens, top_k = indices.shape
    # "a ratio of counts deserves float64": the loss comes back float64 and promotes the training loss
    f = torch.bincount(indices.reshape(-1), minlength=n_experts).double() / (n_tokens * top_k)
    return n_experts * (f * probs.double().mean(dim=0)).sum()


# ------------------------------------------------------------------- 04.shared_experts


def _check_arguments(n_experts, top_k, hidden_dim, granularity, n_shared):
    if min(n_experts, top_k, hidden_dim, granularity) < 1 or n_shared < 0:
        raise ValueError("n_experts, top_k, hidden_dim, granularity must be >= 1, n_shared >= 0")
    if top_k > n_experts:
        raise ValueError("top_k must be at most n_experts")


def _validate_layout(n_experts, top_k, hidden_dim, granularity, n_shared):
    _check_arguments(n_experts, top_k, hidden_dim, granularity, n_shared)
    if hidden_dim % granularity:
        raise ValueError("hidden_dim must be divisible by granularity")
    if n_shared >= granularity * top_k:
        raise ValueError("too many shared experts")


@mistake("04.shared_experts", "segment")
def layout_keeps_hidden_dim(n_experts, top_k, hidden_dim, granularity, n_shared):
    _validate_layout(n_experts, top_k, hidden_dim, granularity, n_shared)
    return granularity * n_experts - n_shared, granularity * top_k - n_shared, hidden_dim


@mistake("04.shared_experts", "shared_total")
def layout_shared_on_top(n_experts, top_k, hidden_dim, granularity, n_shared):
    _validate_layout(n_experts, top_k, hidden_dim, granularity, n_shared)
    return granularity * n_experts, granularity * top_k - n_shared, hidden_dim // granularity


@mistake("04.shared_experts", "shared_active")
def layout_router_still_picks_all(n_experts, top_k, hidden_dim, granularity, n_shared):
    _validate_layout(n_experts, top_k, hidden_dim, granularity, n_shared)
    return granularity * n_experts - n_shared, granularity * top_k, hidden_dim // granularity


@mistake("04.shared_experts", "active_scale")
def layout_active_not_scaled(n_experts, top_k, hidden_dim, granularity, n_shared):
    _validate_layout(n_experts, top_k, hidden_dim, granularity, n_shared)
    return granularity * n_experts - n_shared, top_k - n_shared, hidden_dim // granularity


@mistake("04.shared_experts", "total_scale")
def layout_total_not_scaled(n_experts, top_k, hidden_dim, granularity, n_shared):
    _validate_layout(n_experts, top_k, hidden_dim, granularity, n_shared)
    return n_experts - n_shared, granularity * top_k - n_shared, hidden_dim // granularity


@mistake("04.shared_experts", "shared_units")
def layout_shared_in_coarse_units(n_experts, top_k, hidden_dim, granularity, n_shared):
    _validate_layout(n_experts, top_k, hidden_dim, granularity, n_shared)
    return granularity * (n_experts - n_shared), granularity * (top_k - n_shared), hidden_dim // granularity


@mistake("04.shared_experts", "divisible")
def layout_rounds_hidden_down(n_experts, top_k, hidden_dim, granularity, n_shared):
    _check_arguments(n_experts, top_k, hidden_dim, granularity, n_shared)
    if n_shared >= granularity * top_k:
        raise ValueError("too many shared experts")
    return granularity * n_experts - n_shared, granularity * top_k - n_shared, hidden_dim // granularity


@mistake("04.shared_experts", "shared_limit")
def layout_without_shared_limit(n_experts, top_k, hidden_dim, granularity, n_shared):
    _check_arguments(n_experts, top_k, hidden_dim, granularity, n_shared)
    if hidden_dim % granularity:
        raise ValueError("hidden_dim must be divisible by granularity")
    return granularity * n_experts - n_shared, granularity * top_k - n_shared, hidden_dim // granularity


@mistake("04.shared_experts", "top_k")
def layout_accepts_top_k_above_n_experts(n_experts, top_k, hidden_dim, granularity, n_shared):
    if min(n_experts, top_k, hidden_dim, granularity) < 1 or n_shared < 0:
        raise ValueError("arguments must be positive")
    if hidden_dim % granularity:
        raise ValueError("hidden_dim must be divisible by granularity")
    if n_shared >= granularity * top_k:
        raise ValueError("too many shared experts")
    return granularity * n_experts - n_shared, granularity * top_k - n_shared, hidden_dim // granularity


@mistake("04.shared_experts", "arguments")
def layout_accepts_negative_shared(n_experts, top_k, hidden_dim, granularity, n_shared):
    if min(n_experts, top_k, hidden_dim, granularity) < 1:  # n_shared < 0 slips through
        raise ValueError("arguments must be positive")
    if top_k > n_experts:
        raise ValueError("top_k must be at most n_experts")
    if hidden_dim % granularity:
        raise ValueError("hidden_dim must be divisible by granularity")
    if n_shared >= granularity * top_k:
        raise ValueError("too many shared experts")
    return granularity * n_experts - n_shared, granularity * top_k - n_shared, hidden_dim // granularity


@mistake("04.shared_experts", "arguments")
def layout_checks_only_what_divides(n_experts, top_k, hidden_dim, granularity, n_shared):
    # "only granularity (a divisor) and n_shared (a count to subtract) can be out of range":
    # hidden_dim 0 gives experts of hidden size 0
    if granularity < 1 or n_shared < 0:
        raise ValueError("granularity must be >= 1 and n_shared >= 0")
    if top_k > n_experts:
        raise ValueError("top_k must be at most n_experts")
    if hidden_dim % granularity:
        raise ValueError("hidden_dim must be divisible by granularity")
    if n_shared >= granularity * top_k:
        raise ValueError("too many shared experts")
    return granularity * n_experts - n_shared, granularity * top_k - n_shared, hidden_dim // granularity


# ------------------------------------------------------------------- 04.aux_free_bias


@mistake("04.aux_free_bias", "bias_in_weights")
def aux_free_weights_from_biased_scores(logits, bias, top_k):
    _check_top_k(logits, top_k)
    biased = torch.sigmoid(logits.float()) + bias
    indices = biased.topk(top_k, dim=-1).indices
    w = biased.gather(-1, indices)
    return w / w.sum(dim=-1, keepdim=True), indices


@mistake("04.aux_free_bias", "bias_select")
def aux_free_ignores_bias(logits, bias, top_k):
    _check_top_k(logits, top_k)
    scores = torch.sigmoid(logits.float())
    indices = scores.topk(top_k, dim=-1).indices
    w = scores.gather(-1, indices)
    return w / w.sum(dim=-1, keepdim=True), indices


@mistake("04.aux_free_bias", "sigmoid")
def aux_free_with_softmax(logits, bias, top_k):
    _check_top_k(logits, top_k)
    scores = F.softmax(logits.float(), dim=-1)
    indices = (scores + bias).topk(top_k, dim=-1).indices
    w = scores.gather(-1, indices)
    return w / w.sum(dim=-1, keepdim=True), indices


@mistake("04.aux_free_bias", "bias_on_logits")
def aux_free_bias_inside_sigmoid(logits, bias, top_k):
    _check_top_k(logits, top_k)
    scores = torch.sigmoid(logits.float())
    indices = torch.sigmoid(logits.float() + bias).topk(top_k, dim=-1).indices
    w = scores.gather(-1, indices)
    return w / w.sum(dim=-1, keepdim=True), indices


@mistake("04.aux_free_bias", "renormalise")
def aux_free_without_renormalising(logits, bias, top_k):
    _check_top_k(logits, top_k)
    scores = torch.sigmoid(logits.float())
    indices = (scores + bias).topk(top_k, dim=-1).indices
    return scores.gather(-1, indices), indices


@mistake("04.aux_free_bias", "bias_sign")
def aux_free_subtracts_bias(logits, bias, top_k):
    _check_top_k(logits, top_k)
    scores = torch.sigmoid(logits.float())
    indices = (scores - bias).topk(top_k, dim=-1).indices
    w = scores.gather(-1, indices)
    return w / w.sum(dim=-1, keepdim=True), indices


@mistake("04.aux_free_bias", "grad_detached")
def aux_free_scores_under_no_grad(logits, bias, top_k):
    _check_top_k(logits, top_k)
    with torch.no_grad():  # "the routing decision has no gradient"
        scores = torch.sigmoid(logits.float())
        indices = (scores + bias).topk(top_k, dim=-1).indices
        w = scores.gather(-1, indices)
    return w / w.sum(dim=-1, keepdim=True), indices


@mistake("04.aux_free_bias", "validate")
def aux_free_checks_only_large_top_k(logits, bias, top_k):
    if top_k > logits.shape[-1]:  # top_k = 0 slips through
        raise ValueError("top_k larger than the number of experts")
    scores = torch.sigmoid(logits.float())
    indices = (scores + bias).topk(top_k, dim=-1).indices
    w = scores.gather(-1, indices)
    return w / w.sum(dim=-1, keepdim=True), indices


@mistake("04.aux_free_bias", "order")
def aux_free_sorts_experts_by_id(logits, bias, top_k):
    if not 1 <= top_k <= logits.shape[-1]:
        raise ValueError("top_k must be between 1 and the number of experts")
    scores = torch.sigmoid(logits.float())
    indices = (scores + bias).topk(top_k, dim=-1).indices.sort(dim=-1).values  # "tidier" in expert order
    w = scores.gather(-1, indices)
    return w / w.sum(dim=-1, keepdim=True), indices


@mistake("04.aux_free_bias", "dtype")
def aux_free_scores_in_float64(logits, bias, top_k):
    if not 1 <= top_k <= logits.shape[-1]:
        raise ValueError("top_k must be between 1 and the number of experts")
    scores = torch.sigmoid(logits.double())  # "sigmoids saturate: float64 keeps more of them"
    indices = (scores + bias).topk(top_k, dim=-1).indices
    w = scores.gather(-1, indices)
    return w / w.sum(dim=-1, keepdim=True), indices


@mistake("04.aux_free_bias", "validate")
def aux_free_without_validation(logits, bias, top_k):
    scores = torch.sigmoid(logits.float())
    indices = (scores + bias).topk(top_k, dim=-1).indices
    w = scores.gather(-1, indices)
    return w / w.sum(dim=-1, keepdim=True), indices


# --------------------------------------------------------------------- 04.bias_update


@mistake("04.bias_update", "sign")
def bias_update_wrong_sign(bias, indices, n_experts, gamma):
    load = torch.bincount(indices.reshape(-1), minlength=n_experts).float()
    return bias + gamma * torch.sign(load - load.mean())  # overloaded experts get *more* tokens


@mistake("04.bias_update", "sign_only")
def bias_update_proportional_like_a_gradient(bias, indices, n_experts, gamma):
    load = torch.bincount(indices.reshape(-1), minlength=n_experts).float()
    return bias + gamma * (load.mean() - load)


@mistake("04.bias_update", "balanced")
def bias_update_two_way(bias, indices, n_experts, gamma):
    load = torch.bincount(indices.reshape(-1), minlength=n_experts).float()
    return bias + torch.where(load.mean() - load > 0, gamma, -gamma)


@mistake("04.bias_update", "all_slots")
def bias_update_first_choice_only(bias, indices, n_experts, gamma):
    load = torch.bincount(indices[:, 0], minlength=n_experts).float()
    return bias + gamma * torch.sign(load.mean() - load)


@mistake("04.bias_update", "minlength")
def bias_update_bincount_without_minlength(bias, indices, n_experts, gamma):
    load = torch.bincount(indices.reshape(-1)).float()
    return bias + gamma * torch.sign(load.mean() - load)


@mistake("04.bias_update", "mutated_input")
def bias_update_in_place(bias, indices, n_experts, gamma):
    load = torch.bincount(indices.reshape(-1), minlength=n_experts).float()
    bias += gamma * torch.sign(load.mean() - load)  # changes the caller's tensor
    return bias


@mistake("04.bias_update", "mean_load")
def bias_update_mean_over_tokens(bias, indices, n_experts, gamma):
    load = torch.bincount(indices.reshape(-1), minlength=n_experts).float()
    mean = indices.shape[0] / n_experts  # forgets that each token makes top_k assignments
    return bias + gamma * torch.sign(mean - load)
