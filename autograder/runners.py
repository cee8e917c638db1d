"""Runners: how a checkpoint whose answer is not a plain function is called.

The grader (``autograder.core``) calls these in-process, and the sandbox worker loads this
very file (by path, before it runs any learner code) and calls them on the learner's objects,
so both paths run identical code. Standard library at import time; torch is imported by the
runners that need it. Nothing here knows the answers: a runner only drives the learner's
object the way the course's own code would.

Two families:

* value runners (``RUNNERS[kind]``): ``module``, ``seeded``, ``train_steps``, ``resume``,
  ``tables``, ``reward_model``, ``masked``, ``rollout``;
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
    while not getattr(fn, "course_namespace", None) and hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__  # a decorated function (@torch.no_grad()): the notebook's own globals
    namespace = getattr(fn, "course_namespace", None) or fn.__globals__
    if "Transformer" not in namespace and "solutions.model" in sys.modules:
        # a wrapper written outside any notebook (the course's own tests): the reference model.
        # Never in the sandbox, where solutions/ cannot be imported.
        namespace = vars(sys.modules["solutions.model"])
    return namespace


def _course_model(namespace, model_config, state_dict):
    """The notebook's own Transformer (a given cell), built from a config and loaded."""
    model = namespace["Transformer"](namespace["LlamaConfig"](**model_config))
    model.load_state_dict(state_dict)
    return model


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _decay_groups(model, weight_decay):
    """The course's two parameter groups (solutions.train.decay_groups): matrices decay,
    vectors (norm gains) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


STALE_LR = 0.03  # the rate an optimiser is built with: each training step must replace it


def run_train_steps(train_step, model_config, state_dict, batches, lrs, max_norm):
    """``train_step(model, optimizer, x, y, lr, max_norm)`` called once per ``(x, y)`` batch on a
    fresh course model, with the course's two parameter groups (decay / no decay, as
    ``decay_groups``) in a plain SGD optimiser, so that the update shows the (clipped)
    gradient exactly, where Adam would normalise its scale away. The optimiser is built with a
    stale rate in every group, which each step must replace by its ``lr``. Returns
    ``(losses, weights_after)``."""
    torch = torch_module()
    model = _course_model(_namespace(train_step), model_config, state_dict)
    optimizer = torch.optim.SGD(_decay_groups(model, 0.1), lr=STALE_LR)
    losses = []
    for (x, y), lr in zip(batches, lrs):
        losses.append(train_step(model, optimizer, x, y, lr, max_norm))
    return losses, _weights(model)


def _resume_lr(step):
    return 1e-2 * 0.7 ** step  # the schedule: where a run resumes decides its learning rates


def _adamw_steps(model, optimizer, tokens, generator, first_step, n_steps, batch_size, block_size):
    torch = torch_module()
    for step in range(first_step, first_step + n_steps):
        for group in optimizer.param_groups:
            group["lr"] = _resume_lr(step)
        starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator)
        windows = tokens[starts[:, None] + torch.arange(block_size + 1)]
        logits = model(windows[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def run_resume(save_training_state, model_config, state_dict, tokens, seed, steps_before, steps_after):
    """Interrupt and resume a run through the learner's ``save_training_state(model, optimizer,
    generator, step)`` and ``load_training_state(state, model, optimizer, generator)``.

    Run A trains ``steps_before`` steps (AdamW with the course's two parameter groups, the
    learning rate set from the step, batches drawn from ``generator``), saves, and trains on
    ``steps_after`` more steps *before* the saved state is serialised (``torch.save`` /
    ``torch.load``, as a file would be): a save that keeps references to the live tensors
    instead of copies is then caught. Run B restores that state into a *fresh* model,
    optimiser and generator and trains ``steps_after`` steps from the step it returns.

    Returns ``(step, identical, weights_B)``: ``identical`` is whether B ends bit for bit
    where A does (both runs happen here, in one process, so this holds on every CPU).
    ``steps_after`` must be at least 1."""
    import io
    torch = torch_module()
    namespace = _namespace(save_training_state)
    load_training_state = namespace["load_training_state"]

    def fresh():
        model = _course_model(namespace, model_config, state_dict)
        optimizer = torch.optim.AdamW(_decay_groups(model, 0.1), lr=1e-2)
        return model, optimizer, torch.Generator().manual_seed(seed)

    model, optimizer, generator = fresh()
    _adamw_steps(model, optimizer, tokens, generator, 0, steps_before, 2, 8)
    state = save_training_state(model, optimizer, generator, steps_before)
    _adamw_steps(model, optimizer, tokens, generator, steps_before, steps_after, 2, 8)  # run A goes on
    buffer = io.BytesIO()
    torch.save(state, buffer)  # only now written out: copies are unchanged, references are not
    uninterrupted = _weights(model)
    del model, optimizer, generator, state  # the "crash": only the saved state survives
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    model, optimizer, generator = fresh()
    generator.manual_seed(seed + 1)  # a fresh process would not have the old generator's position
    step = load_training_state(state, model, optimizer, generator)
    _adamw_steps(model, optimizer, tokens, generator, int(step), steps_after, 2, 8)
    resumed = _weights(model)
    identical = sorted(resumed) == sorted(uninterrupted) and all(
        torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    return step, identical, resumed


def run_seeded(fn, seed, *args):
    """``fn(*args, generator)`` with a ``torch.Generator`` seeded by ``seed``: a generator is not
    plain data, so the case carries its seed. Returns ``fn``'s output."""
    return fn(*args, torch_module().Generator().manual_seed(seed))


def _reward_parts(fn, model_config, weights):
    """The notebook's own Transformer (``weights``' ``backbone.*``) and a scalar head
    ``nn.Linear(dim, 1, bias=False)`` (``weights["score.weight"]``), as chapter 10's given
    ``RewardModel`` holds them."""
    torch = torch_module()
    backbone_state = {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    backbone = _course_model(_namespace(fn), model_config, backbone_state)
    score = torch.nn.Linear(weights["score.weight"].shape[1], 1, bias=False)
    score.load_state_dict({"weight": weights["score.weight"]})
    return backbone, score


def run_reward_model(reward_forward, model_config, weights, input_ids, prompt_lengths, pad_id):
    """Chapter 10: ``reward_forward(backbone, score, input_ids, prompt_lengths, pad_id)`` on the
    notebook's Transformer built from ``model_config`` and a scalar head, both loaded from
    ``weights`` (a reward model's state dict). Returns its rewards."""
    backbone, score = _reward_parts(reward_forward, model_config, weights)
    with torch_module().no_grad():
        return reward_forward(backbone, score, input_ids, prompt_lengths, pad_id)


def _course_class(namespace, name, module):
    """A class the notebook gives (``PolicyWithValue``, ``RewardModel``): from the learner's
    namespace, or, for a wrapper written in the course's own tests, from the reference module
    (never in the sandbox, where solutions/ cannot be imported)."""
    if name in namespace:
        return namespace[name]
    if module in sys.modules:
        return getattr(sys.modules[module], name)
    raise NameError(f"name {name!r} is not defined: run the notebook's cell that gives {name} before this check")


ROLLOUT_FIELDS = ("input_ids", "prompt_lengths", "mask", "logprobs", "ref_logprobs", "values", "scores", "finished")


def run_rollout(rollout, model_config, policy_weights, reference_weights, reward_config, reward_weights, prompt_ids,
                max_new_tokens, temperature, stop_id, pad_id, seed):
    """Chapter 11: ``rollout(policy, reference, reward_model, prompt_ids, max_new_tokens,
    temperature, stop_id, pad_id, generator)`` on the notebook's ``PolicyWithValue`` (its
    ``Transformer`` built from ``model_config``, both loaded from ``policy_weights``), a
    reference ``Transformer`` (``reference_weights``) and a ``RewardModel`` (``reward_config``,
    ``reward_weights``), with a ``torch.Generator`` seeded by ``seed``. Returns the rollout's
    fields (``ROLLOUT_FIELDS``) as a dict of tensors."""
    torch = torch_module()
    namespace = dict(_namespace(rollout))
    for name in ("Transformer", "LlamaConfig"):
        namespace[name] = _course_class(namespace, name, "solutions.model")
    policy_class = _course_class(namespace, "PolicyWithValue", "solutions.ppo")
    reward_class = _course_class(namespace, "RewardModel", "solutions.reward")
    model_state = {k[len("model."):]: v for k, v in policy_weights.items() if k.startswith("model.")}
    policy = policy_class(_course_model(namespace, model_config, model_state))
    policy.load_state_dict(policy_weights)
    reference = _course_model(namespace, model_config, reference_weights).eval()
    reward_model = reward_class(reward_config, pad_id)
    reward_model.load_state_dict(reward_weights)
    reward_model.eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        batch = rollout(policy, reference, reward_model, prompt_ids, max_new_tokens, temperature, stop_id, pad_id,
                        generator)
    missing = [name for name in ROLLOUT_FIELDS if not hasattr(batch, name)]
    if missing:
        raise TypeError(f"rollout returned {type(batch).__name__}, which has no {', '.join(missing)}: return a "
                        "Rollout(input_ids, prompt_lengths, mask, logprobs, ref_logprobs, values, scores, finished)")
    return {name: getattr(batch, name) for name in ROLLOUT_FIELDS}


def run_masked(fn, *args):
    """A function of tensors and a 0/1 mask: ``fn(*args)`` (see :func:`run_grad_masked`)."""
    return fn(*args)


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


def _with_grad(value, leaves):
    """``value`` with every floating-point tensor in it (also inside lists, tuples and dicts:
    a dict of projection weights) replaced by a copy that requires grad, appended to ``leaves``."""
    torch = torch_module()
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            return value
        leaf = value.detach().clone().requires_grad_(True)
        leaves.append(leaf)
        return leaf
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_with_grad(v, leaves) for v in value)
    if isinstance(value, dict) and type(value) is dict:
        return {k: _with_grad(v, leaves) for k, v in value.items()}
    return value


def _grads_like(value, grads):
    """The gradients in the shape of ``value``: each float tensor becomes its gradient (or
    None), containers keep their structure, everything else becomes None."""
    torch = torch_module()
    if isinstance(value, torch.Tensor):
        return next(grads) if value.is_floating_point() else None
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return [_grads_like(v, grads) for v in value]
    if isinstance(value, dict) and type(value) is dict:
        return {k: _grads_like(v, grads) for k, v in value.items()}
    return None


def run_grad_function(fn, *args):
    """Gradient probe of a function: for each argument, ``d loss / d arg`` (``None`` where no
    gradient arrives or the argument holds no floating-point tensor); an argument that is a
    list or dict of tensors gets a list or dict of gradients."""
    torch = torch_module()
    leaves = []
    probed = [_with_grad(a, leaves) for a in args]
    with torch.enable_grad():
        grads = iter(_grads(projection_loss(fn(*probed)), leaves))
    return [_grads_like(a, grads) for a in args]


def run_tables(fn, x, *tables):
    """A function of a tensor and constant tables (RoPE's ``cos`` and ``sin``): ``fn(x, *tables)``."""
    return fn(x, *tables)


def run_grad_tables(fn, x, *tables):
    """Gradient probe of a :func:`run_tables` function: through ``x`` only (``None`` for each
    table). The tables are buffers that nothing trains, and a right answer may read one half
    of a table whose two halves are equal, so the gradient a table receives proves nothing."""
    torch = torch_module()
    leaves = []
    probed = _with_grad(x, leaves)
    with torch.enable_grad():
        grads = iter(_grads(projection_loss(fn(probed, *tables)), leaves))
    return [_grads_like(x, grads)] + [None] * len(tables)


def run_grad_module(cls, init_args, state_dict, forward_args):
    """Gradient probe of an nn.Module class: ``{parameter name: gradient or None}``, and
    ``{"input:<k>": gradient}`` for each floating-point forward argument ``k``."""
    torch = torch_module()
    module = cls(*init_args)
    module.load_state_dict(state_dict)
    names, params = zip(*module.named_parameters()) if list(module.parameters()) else ((), ())
    inputs = [_with_grad(a, []) if isinstance(a, torch.Tensor) else a for a in forward_args]
    input_leaves = [(k, a) for k, a in enumerate(inputs) if isinstance(a, torch.Tensor) and a.requires_grad]
    with torch.enable_grad():
        grads = _grads(projection_loss(module(*inputs)), list(params) + [a for _, a in input_leaves])
    result = dict(zip(names, grads[: len(params)]))
    result.update({f"input:{k}": g for (k, _), g in zip(input_leaves, grads[len(params):])})
    return result


def _is_mask(value):
    torch = torch_module()
    return isinstance(value, torch.Tensor) and value.is_floating_point() and bool(((value == 0) | (value == 1)).all())


def run_grad_masked(fn, *args):
    """Gradient probe of a :func:`run_masked` function: through every floating-point argument
    except the mask (a tensor of 0s and 1s), whose gradient is ``None``. A mask is data, not
    something trained: an answer that indexes with ``mask.bool()`` is as right as one that
    multiplies by it, though only the second passes a gradient to the mask."""
    torch = torch_module()
    leaves = []
    probed = [a if _is_mask(a) else _with_grad(a, leaves) for a in args]
    with torch.enable_grad():
        grads = iter(_grads(projection_loss(fn(*probed)), leaves))
    return [None if _is_mask(a) else _grads_like(a, grads) for a in args]


def run_grad_reward_model(reward_forward, model_config, weights, input_ids, prompt_lengths, pad_id):
    """Gradient probe of :func:`run_reward_model`: ``{parameter name: gradient or None}`` over
    the head (``score.weight``) and the backbone (``backbone.*``)."""
    torch = torch_module()
    backbone, score = _reward_parts(reward_forward, model_config, weights)
    named = [(f"backbone.{n}", p) for n, p in backbone.named_parameters()] + [("score.weight", score.weight)]
    with torch.enable_grad():
        grads = _grads(projection_loss(reward_forward(backbone, score, input_ids, prompt_lengths, pad_id)),
                       [p for _, p in named])
    return {name: g for (name, _), g in zip(named, grads)}


RUNNERS = {
    "module": run_module,
    "seeded": run_seeded,
    "train_steps": run_train_steps,
    "resume": run_resume,
    "tables": run_tables,
    "grad_function": run_grad_function,
    "grad_tables": run_grad_tables,
    "grad_module": run_grad_module,
    "reward_model": run_reward_model,
    "grad_reward_model": run_grad_reward_model,
    "masked": run_masked,
    "grad_masked": run_grad_masked,
    "rollout": run_rollout,
}
