"""Wrong answers to chapter 06's checkpoints, as learners write them.

The training-step and resume answers are driven by the grader's runners, which build the
notebook's ``Transformer``; here the notebook is this module, so it imports the model classes
(and each wrong save/load pair names its own ``load_training_state`` through
``course_namespace``, as two cells of one notebook would).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from solutions.model import LlamaConfig, Transformer  # noqa: F401 - the runners look them up here

from . import mistake

# ------------------------------------------------------------------------------ 06.get_batch


@mistake("06.get_batch", "shift")
def batch_targets_equal_inputs(tokens, batch_size, block_size, generator):
    starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator)
    x = torch.stack([tokens[s:s + block_size] for s in starts])
    return x, x.clone()


@mistake("06.get_batch", "direction")
def batch_shifted_backwards(tokens, batch_size, block_size, generator):
    starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator)
    x = torch.stack([tokens[s + 1:s + block_size + 1] for s in starts])
    y = torch.stack([tokens[s:s + block_size] for s in starts])
    return x, y


@mistake("06.get_batch", "randint_high")
def batch_high_off_by_one(tokens, batch_size, block_size, generator):
    starts = torch.randint(0, len(tokens) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([tokens[s:s + block_size] for s in starts])
    y = torch.stack([tokens[s + 1:s + block_size + 1] for s in starts])
    return x, y


@mistake("06.get_batch", "starts")
def batch_global_rng(tokens, batch_size, block_size, generator):
    starts = torch.randint(0, len(tokens) - block_size, (batch_size,))  # forgot generator=
    x = torch.stack([tokens[s:s + block_size] for s in starts])
    y = torch.stack([tokens[s + 1:s + block_size + 1] for s in starts])
    return x, y


@mistake("06.get_batch", "starts")
def batch_one_draw_per_row(tokens, batch_size, block_size, generator):
    rows = []
    for _ in range(batch_size):
        s = torch.randint(0, len(tokens) - block_size, (1,), generator=generator).item()
        rows.append(tokens[s:s + block_size + 1])
    w = torch.stack(rows)
    # a different draw order than the reference's one call: right windows, other starts
    w = w.flip(0) if batch_size > 1 else w
    return w[:, :-1], w[:, 1:]


@mistake("06.get_batch", "window")
def batch_returns_whole_windows(tokens, batch_size, block_size, generator):
    starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator)
    w = torch.stack([tokens[s:s + block_size + 1] for s in starts])
    return w, w[:, 1:]


@mistake("06.get_batch", "validate")
def batch_without_validation(tokens, batch_size, block_size, generator):
    starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator)
    x = torch.stack([tokens[s:s + block_size] for s in starts])
    y = torch.stack([tokens[s + 1:s + block_size + 1] for s in starts])
    return x, y


@mistake("06.get_batch", "validate")
def batch_checks_length_only(tokens, batch_size, block_size, generator):
    if len(tokens) <= block_size:
        raise ValueError("the stream is too short")
    starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator)
    windows = tokens[starts[:, None] + torch.arange(block_size + 1)]
    return windows[:, :-1], windows[:, 1:]


@mistake("06.get_batch", "validate")
def batch_length_check_one_too_lax(tokens, batch_size, block_size, generator):
    # "a window needs block_size tokens": but x and y together need block_size + 1
    if tokens.ndim != 1 or len(tokens) < block_size:
        raise ValueError("the stream is shorter than block_size")
    starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator)
    windows = tokens[starts[:, None] + torch.arange(block_size + 1)]
    return windows[:, :-1], windows[:, 1:]


# ------------------------------------------------------------------------------ 06.cross_entropy


@mistake("06.cross_entropy", "overflow")
def ce_naive_softmax(logits, targets, ignore_index=-100):
    z, t = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    keep = t != ignore_index
    probs = torch.exp(z) / torch.exp(z).sum(-1, keepdim=True)
    losses = -torch.log(probs.gather(-1, torch.where(keep, t, 0)[:, None]).squeeze(-1))
    return (losses * keep).sum() / keep.sum()


@mistake("06.cross_entropy", "sign")
def ce_sign_flipped(logits, targets, ignore_index=-100):
    z, t = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    keep = t != ignore_index
    losses = z.gather(-1, torch.where(keep, t, 0)[:, None]).squeeze(-1) - torch.logsumexp(z, -1)
    return (losses * keep).sum() / keep.sum()


@mistake("06.cross_entropy", "sum")
def ce_sum(logits, targets, ignore_index=-100):
    z, t = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    keep = t != ignore_index
    losses = torch.logsumexp(z, -1) - z.gather(-1, torch.where(keep, t, 0)[:, None]).squeeze(-1)
    return (losses * keep).sum()


@mistake("06.cross_entropy", "ignore_mean")
def ce_mean_over_all_positions(logits, targets, ignore_index=-100):
    z, t = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    keep = t != ignore_index
    losses = torch.logsumexp(z, -1) - z.gather(-1, torch.where(keep, t, 0)[:, None]).squeeze(-1)
    return (losses * keep).mean()


@mistake("06.cross_entropy", "ignore")
def ce_ignores_ignore_index(logits, targets, ignore_index=-100):
    z, t = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    return (torch.logsumexp(z, -1) - z.gather(-1, t[:, None]).squeeze(-1)).mean()


@mistake("06.cross_entropy", "probs")
def ce_double_softmax(logits, targets, ignore_index=-100):
    p = torch.softmax(logits.reshape(-1, logits.shape[-1]), -1)
    t = targets.reshape(-1)
    keep = t != ignore_index
    losses = torch.logsumexp(p, -1) - p.gather(-1, torch.where(keep, t, 0)[:, None]).squeeze(-1)
    return (losses * keep).sum() / keep.sum()


@mistake("06.cross_entropy", "overflow")
def ce_log_of_summed_exp(logits, targets, ignore_index=-100):
    z, t = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    keep = t != ignore_index
    losses = torch.log(torch.exp(z).sum(-1)) - z.gather(-1, torch.where(keep, t, 0)[:, None]).squeeze(-1)
    return (losses * keep).sum() / keep.sum()


@mistake("06.cross_entropy", "grad_detached")
def ce_on_detached_logits(logits, targets, ignore_index=-100):
    z = logits.detach().reshape(-1, logits.shape[-1]).float()  # "no need to track this"
    t = targets.reshape(-1)
    keep = t != ignore_index
    losses = torch.logsumexp(z, -1) - z.gather(-1, torch.where(keep, t, 0)[:, None]).squeeze(-1)
    return (losses * keep).sum() / keep.sum()


@mistake("06.cross_entropy", "grad_detached")
def ce_from_python_numbers(logits, targets, ignore_index=-100):
    z, t = logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)
    total, count = 0.0, 0
    for row, target in zip(z, t.tolist()):
        if target != ignore_index:
            total += (torch.logsumexp(row, -1) - row[target]).item()
            count += 1
    return torch.tensor(total / count)



@mistake("06.cross_entropy", "ignore_index")
def ce_hard_codes_minus_100(logits, targets, ignore_index=-100):
    z = logits.reshape(-1, logits.shape[-1]).float()
    t = targets.reshape(-1)
    keep = t != -100  # the default, whatever the caller asked for
    losses = torch.logsumexp(z, -1) - z.gather(-1, torch.where(keep, t, 0)[:, None]).squeeze(-1)
    return (losses * keep).sum() / keep.sum()

# ------------------------------------------------------------------------------ 06.adamw_step


def _adam(param, grad, m, v, step, lr, b1, b2, eps, wd, *, coupled=False, correct=True, eps_inside=False,
          decay="before", square=True, t_offset=0):
    if coupled:
        grad = grad + wd * param
    if decay == "before":
        param = param * (1 - lr * wd)
    elif decay == "no_lr":
        param = param - wd * param
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * (grad ** 2 if square else grad)
    t = step + t_offset
    m_hat = m / (1 - b1 ** t) if correct else m
    v_hat = v / (1 - b2 ** t) if correct else v
    denom = torch.sqrt(v_hat + eps) if eps_inside else torch.sqrt(v_hat) + eps
    param = param - lr * m_hat / denom
    if decay == "after":
        param = param - lr * wd * param
    return param, m, v


@mistake("06.adamw_step", "coupled")
def adam_l2(param, grad, m, v, step, lr, b1, b2, eps, wd):
    return _adam(param, grad, m, v, step, lr, b1, b2, eps, wd, coupled=True, decay="none")


@mistake("06.adamw_step", "bias_correction")
def adam_no_bias_correction(param, grad, m, v, step, lr, b1, b2, eps, wd):
    return _adam(param, grad, m, v, step, lr, b1, b2, eps, wd, correct=False)


@mistake("06.adamw_step", "step_from_0")
def adam_step_minus_one(param, grad, m, v, step, lr, b1, b2, eps, wd):
    return _adam(param, grad, m, v, step, lr, b1, b2, eps, wd, t_offset=-1)


@mistake("06.adamw_step", "eps")
def adam_eps_inside_sqrt(param, grad, m, v, step, lr, b1, b2, eps, wd):
    return _adam(param, grad, m, v, step, lr, b1, b2, eps, wd, eps_inside=True)


@mistake("06.adamw_step", "decay_after")
def adam_decay_after_update(param, grad, m, v, step, lr, b1, b2, eps, wd):
    return _adam(param, grad, m, v, step, lr, b1, b2, eps, wd, decay="after")


@mistake("06.adamw_step", "decay_no_lr")
def adam_decay_without_lr(param, grad, m, v, step, lr, b1, b2, eps, wd):
    return _adam(param, grad, m, v, step, lr, b1, b2, eps, wd, decay="no_lr")


@mistake("06.adamw_step", "square")
def adam_v_of_grad(param, grad, m, v, step, lr, b1, b2, eps, wd):
    return _adam(param, grad, m, v, step, lr, b1, b2, eps, wd, square=False)


@mistake("06.adamw_step", "betas")
def adam_betas_swapped(param, grad, m, v, step, lr, b1, b2, eps, wd):
    return _adam(param, grad, m, v, step, lr, b2, b1, eps, wd)


@mistake("06.adamw_step", "mutated_input")
def adam_in_place(param, grad, m, v, step, lr, b1, b2, eps, wd):
    param.mul_(1 - lr * wd)
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (v / (1 - b2 ** step)).sqrt().add_(eps)
    param.addcdiv_(m / (1 - b1 ** step), denom, value=-lr)
    return param, m, v


# ------------------------------------------------------------------------------ 06.lr_at


@mistake("06.lr_at", "warmup_zero")
def lr_warmup_from_zero(step, max_lr, warmup_steps, total_steps, min_lr):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    if step >= total_steps:
        return min_lr
    p = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * p))


@mistake("06.lr_at", "cosine_span")
def lr_cosine_over_all_steps(step, max_lr, warmup_steps, total_steps, min_lr):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * step / total_steps))


@mistake("06.lr_at", "min_lr")
def lr_decays_to_zero(step, max_lr, warmup_steps, total_steps, min_lr):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return 0.0
    p = (step - warmup_steps) / (total_steps - warmup_steps)
    return 0.5 * max_lr * (1 + math.cos(math.pi * p))


@mistake("06.lr_at", "after_total")
def lr_no_floor_after_total(step, max_lr, warmup_steps, total_steps, min_lr):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    p = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * p))


@mistake("06.lr_at", "linear")
def lr_linear_decay(step, max_lr, warmup_steps, total_steps, min_lr):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    p = (step - warmup_steps) / (total_steps - warmup_steps)
    return max_lr - (max_lr - min_lr) * p


@mistake("06.lr_at", "warmup_boundary")
def lr_warmup_inclusive(step, max_lr, warmup_steps, total_steps, min_lr):
    if step <= warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    p = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * p))


# ------------------------------------------------------------------------------ 06.clip_grad_norm


@mistake("06.clip_grad_norm", "per_tensor")
def clip_each_tensor(grads, max_norm):
    total = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    out = []
    for g in grads:
        n = g.norm()
        out.append(g * (max_norm / (n + 1e-6)) if n > max_norm else g)
    return out, total


@mistake("06.clip_grad_norm", "scale_up")
def clip_always_rescales(grads, max_norm):
    total = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    return [g * max_norm / (total + 1e-6) for g in grads], total


@mistake("06.clip_grad_norm", "norm_after")
def clip_returns_new_norm(grads, max_norm):
    total = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    scale = min(1.0, max_norm / (total.item() + 1e-6))
    clipped = [g * scale for g in grads]
    return clipped, torch.sqrt(sum(g.pow(2).sum() for g in clipped))


@mistake("06.clip_grad_norm", "l2")
def clip_sum_of_norms(grads, max_norm):
    total = sum(g.norm() for g in grads)
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g * scale for g in grads], total


@mistake("06.clip_grad_norm", "clamp_values")
def clip_by_value(grads, max_norm):
    total = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    return [g.clamp(-max_norm, max_norm) for g in grads], total


# ------------------------------------------------------------------------------ 06.train_step


def _ce(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@mistake("06.train_step", "lr")
def step_never_sets_lr(model, optimizer, x, y, lr, max_norm):
    loss = _ce(model, x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


@mistake("06.train_step", "zero_grad")
def step_without_zero_grad(model, optimizer, x, y, lr, max_norm):
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = _ce(model, x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item()


@mistake("06.train_step", "zero_grad_early")
def step_zero_grad_before_step(model, optimizer, x, y, lr, max_norm):
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = _ce(model, x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.zero_grad()
    optimizer.step()
    return loss.item()


@mistake("06.train_step", "no_clip")
def step_clips_after_step(model, optimizer, x, y, lr, max_norm):
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = _ce(model, x, y)
    loss.backward()
    optimizer.step()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.zero_grad()
    return loss.item()


@mistake("06.train_step", "per_tensor")
def step_clips_each_tensor(model, optimizer, x, y, lr, max_norm):
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = _ce(model, x, y)
    loss.backward()
    for p in model.parameters():
        if p.grad is not None:
            torch.nn.utils.clip_grad_norm_(p, max_norm)
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


@mistake("06.train_step", "no_clip")
def step_forgets_clipping(model, optimizer, x, y, lr, max_norm):
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = _ce(model, x, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


@mistake("06.train_step", "tensor")
def step_returns_tensor(model, optimizer, x, y, lr, max_norm):
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = _ce(model, x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    optimizer.zero_grad()
    return loss


@mistake("06.train_step", "lr_groups")
def step_sets_first_group_only(model, optimizer, x, y, lr, max_norm):
    optimizer.param_groups[0]["lr"] = lr
    loss = _ce(model, x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


# ------------------------------------------------------------------------------ 06.resume


def _pair(save, load):
    """A wrong answer is a pair of functions; the runner finds load_training_state beside save."""
    save.course_namespace = {"Transformer": Transformer, "LlamaConfig": LlamaConfig, "load_training_state": load}
    return save


def _load_all(state, model, optimizer, generator):
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    return state["step"]


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def save_weights_only(model, optimizer, generator, step):
    return {"model": _weights(model), "generator": generator.get_state(), "step": step}


def _load_weights_only(state, model, optimizer, generator):
    model.load_state_dict(state["model"])
    generator.set_state(state["generator"])
    return state["step"]


mistake("06.resume", "optimizer")(_pair(save_weights_only, _load_weights_only))


def save_without_generator(model, optimizer, generator, step):
    return {"model": _weights(model), "optimizer": copy.deepcopy(optimizer.state_dict()), "step": step}


def _load_without_generator(state, model, optimizer, generator):
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["step"]


mistake("06.resume", "generator")(_pair(save_without_generator, _load_without_generator))


def save_generator_seed(model, optimizer, generator, step):
    return {"model": _weights(model), "optimizer": copy.deepcopy(optimizer.state_dict()),
            "seed": generator.initial_seed(), "step": step}


def _load_generator_seed(state, model, optimizer, generator):
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.manual_seed(state["seed"])
    return state["step"]


mistake("06.resume", "reseed")(_pair(save_generator_seed, _load_generator_seed))


def save_next_step(model, optimizer, generator, step):
    return {"model": _weights(model), "optimizer": copy.deepcopy(optimizer.state_dict()),
            "generator": generator.get_state(), "step": step + 1}


mistake("06.resume", "step")(_pair(save_next_step, _load_all))


def save_all(model, optimizer, generator, step):
    return {"model": _weights(model), "optimizer": copy.deepcopy(optimizer.state_dict()),
            "generator": generator.get_state(), "step": step}


def _load_forgets_model(state, model, optimizer, generator):
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    return state["step"]


mistake("06.resume", "model")(_pair(save_all, _load_forgets_model))


def save_references(model, optimizer, generator, step):
    # state_dict() already returns new dicts, so this looks like a snapshot; its tensors are the live ones
    return {"model": model.state_dict(), "optimizer": copy.deepcopy(optimizer.state_dict()),
            "generator": generator.get_state(), "step": step}


mistake("06.resume", "copies")(_pair(save_references, _load_all))


def save_optimizer_by_reference(model, optimizer, generator, step):
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "step": step}


mistake("06.resume", "copies_optimizer")(_pair(save_optimizer_by_reference, _load_all))
