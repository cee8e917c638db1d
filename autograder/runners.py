"""Runners: how a checkpoint whose answer is not a plain function is called.

The grader (``autograder.core``) calls these in-process, and the sandbox worker loads this
very file (by path, before it runs any learner code) and calls them on the learner's objects,
so both paths run identical code. Standard library at import time; torch is imported by the
runners that need it. Nothing here knows the answers: a runner only drives the learner's
object the way the course's own code would.

Two families:

* value runners (``RUNNERS[kind]``): ``module``, ``seeded``, ``train_steps``, ``resume``;
* gradient probes (``RUNNERS["grad_" + kind]``): call the answer with every floating-point
  tensor argument (or every parameter of a module) requiring grad, backpropagate a fixed,
  seeded projection of every floating-point output, and return the gradients as plain data
  (``None`` where no gradient arrives). A function that computes the right values under
  ``torch.no_grad()``, through ``.detach()``, ``.item()`` or numpy returns the right numbers
  and the wrong gradients: the probe is what sees it.
"""

import sys


def torch_module():
    torch = sys.modules.get("torch")
    if torch is None:
        import torch
    return torch


def run_module(cls, init_args, state_dict, forward_args):
    """An nn.Module class: build ``cls(*init_args)``, load the reference's ``state_dict``, run forward."""
    module = cls(*init_args)
    expected, got = sorted(state_dict), sorted(module.state_dict())
    if expected != got:
        raise ValueError(
            f"the module's parameters are named {got}, but the checkpoint loads {expected}: "
            "keep the names (and shapes) that the notebook's __init__ gives"
        )
    module.load_state_dict(state_dict)
    with torch_module().no_grad():
        return module(*forward_args)


def _namespace(fn):
    """Where a runner finds the notebook's classes: the learner's globals (the notebook), or
    the ``course_namespace`` a checks module gives a known-mistake variant."""
    return getattr(fn, "course_namespace", None) or fn.__globals__


def _course_model(namespace, model_config, state_dict):
    """The notebook's own Transformer (a given cell), built from a config and loaded."""
    model = namespace["Transformer"](namespace["LlamaConfig"](**model_config))
    model.load_state_dict(state_dict)
    return model


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_train_steps(train_step, model_config, state_dict, batches, lrs, max_norm):
    """``train_step(model, optimizer, x, y, lr, max_norm)`` called once per ``(x, y)`` batch on a
    fresh course model and a plain SGD optimiser (so that the update shows the gradient exactly).
    Returns ``(losses, weights_after)``."""
    torch = torch_module()
    model = _course_model(_namespace(train_step), model_config, state_dict)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)  # a stale rate, which the step must replace
    losses = []
    for (x, y), lr in zip(batches, lrs):
        losses.append(train_step(model, optimizer, x, y, lr, max_norm))
    return losses, _weights(model)


def _adamw_steps(model, optimizer, tokens, generator, n_steps, batch_size, block_size):
    torch = torch_module()
    for _ in range(n_steps):
        starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator)
        windows = tokens[starts[:, None] + torch.arange(block_size + 1)]
        logits = model(windows[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def run_resume(save_training_state, model_config, state_dict, tokens, seed, steps_before, steps_after):
    """Interrupt and resume a run through the learner's ``save_training_state(model, optimizer,
    generator, step)`` and ``load_training_state(state, model, optimizer, generator)``: train
    ``steps_before`` steps (AdamW, batches drawn from ``generator``), save, round-trip the state
    through ``torch.save``/``torch.load`` (as a file would), restore into a *fresh* model,
    optimiser and generator, train ``steps_after`` more. Returns ``(step, weights_after)``; an
    uninterrupted run gives the reference's ``(steps_before, weights)``."""
    import io
    torch = torch_module()
    namespace = _namespace(save_training_state)
    load_training_state = namespace["load_training_state"]

    def fresh():
        model = _course_model(namespace, model_config, state_dict)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2), torch.Generator().manual_seed(seed)

    model, optimizer, generator = fresh()
    _adamw_steps(model, optimizer, tokens, generator, steps_before, 2, 8)
    buffer = io.BytesIO()
    torch.save(save_training_state(model, optimizer, generator, steps_before), buffer)
    del model, optimizer, generator  # the "crash": only the saved state survives
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    model, optimizer, generator = fresh()
    generator.manual_seed(seed + 1)  # a fresh process would not have the old generator's position
    step = load_training_state(state, model, optimizer, generator)
    _adamw_steps(model, optimizer, tokens, generator, steps_after, 2, 8)
    return step, _weights(model)


def run_seeded(fn, seed, *args):
    """``fn(*args, generator)`` with a ``torch.Generator`` seeded by ``seed``: a generator is not
    plain data, so the case carries its seed. Returns ``fn``'s output."""
    return fn(*args, torch_module().Generator().manual_seed(seed))


# ------------------------------------------------------------------------- gradient probes

def _float_tensors(value, found):
    """Every floating-point tensor inside ``value`` (nested lists, tuples, dicts), in order."""
    torch = torch_module()
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            found.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _float_tensors(item, found)
    elif isinstance(value, dict):
        for key in sorted(value, key=repr):
            _float_tensors(value[key], found)
    return found


def projection_loss(output):
    """A scalar that depends on every float output entry with a fixed, distinct weight
    (``sin(0.7 k + 0.3)``): its gradient is the same on every machine up to rounding, and a
    wrong backward path cannot hide behind symmetric weights (``sum()`` would)."""
    torch = torch_module()
    total = None
    for tensor in _float_tensors(output, []):
        if not tensor.requires_grad:
            continue
        flat = tensor.float().reshape(-1)
        weights = torch.sin(torch.arange(flat.numel(), dtype=torch.float64) * 0.7 + 0.3).float()
        term = (flat * weights).sum()
        total = term if total is None else total + term
    return total


def _grads(loss, leaves):
    torch = torch_module()
    if loss is None:  # nothing in the output is connected to the inputs
        return [None] * len(leaves)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [None if g is None else g.detach().clone() for g in grads]


def _with_grad(value):
    torch = torch_module()
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().clone().requires_grad_(True)
    return value


def run_grad_function(fn, *args):
    """Gradient probe of a function: ``[d loss / d arg]`` for each argument, ``None`` for
    arguments that are not floating-point tensors or that no gradient reaches."""
    torch = torch_module()
    args = [_with_grad(a) for a in args]
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    with torch.enable_grad():
        grads = iter(_grads(projection_loss(fn(*args)), leaves))
    return [next(grads) if isinstance(a, torch.Tensor) and a.requires_grad else None for a in args]


def run_grad_module(cls, init_args, state_dict, forward_args):
    """Gradient probe of an nn.Module class: ``{parameter name: gradient or None}``, and
    ``{"input:<k>": gradient}`` for each floating-point forward argument ``k``."""
    torch = torch_module()
    module = cls(*init_args)
    module.load_state_dict(state_dict)
    names, params = zip(*module.named_parameters()) if list(module.parameters()) else ((), ())
    inputs = [_with_grad(a) for a in forward_args]
    input_leaves = [(k, a) for k, a in enumerate(inputs) if isinstance(a, torch.Tensor) and a.requires_grad]
    with torch.enable_grad():
        grads = _grads(projection_loss(module(*inputs)), list(params) + [a for _, a in input_leaves])
    result = dict(zip(names, grads[: len(params)]))
    result.update({f"input:{k}": g for (k, _), g in zip(input_leaves, grads[len(params):])})
    return result


RUNNERS = {
    "module": run_module,
    "seeded": run_seeded,
    "train_steps": run_train_steps,
    "resume": run_resume,
    "grad_function": run_grad_function,
    "grad_module": run_grad_module,
}
