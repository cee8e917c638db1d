"""Chapter 06 checkpoints: batching, cross-entropy, AdamW, the schedule, clipping, a training
step, and resuming a run.

The first five are plain functions of tensors and numbers, compared with ``solutions.train``
within :data:`TOL` (exactly for batches and counts). The last two take a model and an
optimiser, which cannot travel to a sandboxed learner as data: their cases carry a small
model's config and weights, and a *runner* (``autograder.runners.run_train_steps`` /
``run_resume``) builds the notebook's own ``Transformer`` from them, drives the learner's
function the way the course's loop does (two parameter groups, decay and no decay; a stale
learning rate in every group; a training step between saving a state and writing it out),
and returns plain data (losses, weights) to compare.

How the cases expose mistakes: token streams of three-digit ids and streams too short
(also by exactly one token) or not 1-D (``get_batch`` must raise ``ValueError``); logits of size 1000 and vocabularies of
hundreds of ids (``cross_entropy``, whose gradient with respect to the logits is probed, so
a loss computed on detached logits is caught); a large eps, swapped betas and steps far
from 1 (``adamw_step``); the warm-up and total-steps boundaries (``lr_at``); one tensor
above and many below the norm (``clip_grad_norm``); models of up to four layers, two steps
on one batch and a learning rate that must be set in both parameter groups
(``train_step``); resuming from step 0, and a save whose tensors the run changes before
they are written (``resume``). ``resume`` runs the uninterrupted and the resumed run in one
process and reports whether they are bit-identical, which holds on every CPU; the weights
are compared within a tolerance.

Known mistakes are named by fingerprints: the reference with one mistake in it, which must
reproduce the learner's output on every case where that mistake shows.
"""

from __future__ import annotations

import copy
import functools
import math
import random

import torch

from ..core import Case, Checkpoint, Label, Raised, register
from ..reference import reference
from .inputs import case as shown_case
from .inputs import generator, randint

train = functools.partial(reference, "solutions.train")
model = functools.partial(reference, "solutions.model")
TOL = 1e-5  # float32


def _randn(*shape: int, generator: torch.Generator) -> torch.Tensor:
    """A float32 normal tensor drawn in float64 and cast: torch's float32 normal sampler takes
    another code path on another CPU (values differ in the last bits), its float64 one does not."""
    return torch.randn(*shape, generator=generator, dtype=torch.float64).float()


# ---------------------------------------------------------------------------- 06.get_batch

def batch_cases(rng: random.Random) -> list[Case]:
    def case(label, n, batch, block, hint="default", tokens=None):
        if tokens is None:
            tokens = torch.arange(100, 100 + n) if n < 40 else randint(rng, 0, 1000, n)
        seed = rng.randrange(2**31)
        show = tokens if tokens.numel() <= 12 else Label(f"<tokens of shape {tuple(tokens.shape)}>")
        return Case(label, (seed, tokens, batch, block), hint, show=(show, batch, block, Label(f"Generator(seed={seed})")))

    cases = [
        case("tokens 100..109, one window of 3: y is x shifted by one", 10, 1, 3),
        case("the stream is exactly block_size + 1 long: only one window fits", 5, 2, 4, "randint_high"),
        case("8 windows of 4 from 20 tokens", 20, 8, 4),
        case("a stream of 5 tokens is shorter than block_size + 1 = 7: ValueError", 5, 2, 6, "validate"),
        case("a 2-D tensor (4 rows of 30 ids) is not a token stream: ValueError", 0, 2, 3, "validate",
             tokens=randint(rng, 100, 1000, 4, 30)),
        case("a stream of 300 three-digit ids, 5 windows of 17", 300, 5, 17),
    ]
    for n in range(4):
        cases.append(case(f"random stream (case {n + 1})", rng.randint(50, 300), rng.randint(2, 6), rng.randint(2, 16)))
    # the exact boundary, after the random cases so that they keep their seeds: a check written
    # len(tokens) < block_size lets this one through, and torch.randint(0, 0) fails
    cases.append(case("a stream of exactly block_size = 6 tokens, one short of a window: ValueError", 6, 2, 6,
                      "validate"))
    return cases


def _batch_variant(kind: str):
    def wrong(tokens, batch_size, block_size, generator):
        if tokens.ndim != 1 or len(tokens) < block_size + 1:
            raise ValueError("need a 1-D token stream of at least block_size + 1 tokens")
        high = len(tokens) - block_size - (1 if kind == "randint_high" else 0)
        starts = torch.randint(0, high, (batch_size,), generator=generator)
        w = torch.stack([tokens[s:s + block_size + 1] for s in starts.tolist()])
        if kind == "shift":
            return w[:, :-1], w[:, :-1]
        if kind == "direction":
            return w[:, 1:], w[:, :-1]
        if kind == "window":
            return w, w[:, 1:]
        return w[:, :-1], w[:, 1:]
    wrong.__name__ = f"get_batch_{kind}"
    return wrong


def _batch_diagnose(case, expected, got):
    """'shape' when x or y has another shape than the reference's; 'starts' only when every
    row of x and y is a real window of the stream (x its first block_size tokens, y the same
    shifted by one), so the only difference is where the windows start."""
    _, tokens, _, block = case.args
    if isinstance(expected, Raised) or not (isinstance(got, tuple) and len(got) == 2
                                            and all(isinstance(t, torch.Tensor) for t in got)):
        return None
    x, y = got
    if x.shape != expected[0].shape or y.shape != expected[1].shape:
        return "shape"
    if tokens.ndim != 1 or x.dtype != tokens.dtype or y.dtype != tokens.dtype:
        return None
    rows = torch.cat([x, y[:, -1:]], dim=1)  # (batch, block + 1): each row must be a window
    windows = tokens.unfold(0, block + 1, 1)  # (n - block, block + 1): every window of the stream
    if not torch.equal(x[:, 1:], y[:, :-1]):
        return None
    if all(bool((windows == row).all(dim=1).any()) for row in rows):
        return "starts"
    return None


register(Checkpoint(
    id="06.get_batch",
    points=1,
    title="random windows of the token stream, targets shifted by one",
    signature="get_batch(tokens, batch_size, block_size, generator)",
    cases=batch_cases,
    reference=train("get_batch"),
    kind="seeded",
    fingerprints=[(k, _batch_variant(k)) for k in ("shift", "direction", "window", "randint_high")],
    diagnose=_batch_diagnose,
    # torch.randint(0, high) with high < 0: the stream was shorter than block_size (no
    # validation); another randint error: high one too small. high == 0 ("to=0") is no evidence
    # either way: a high one too small on a stream of exactly block_size + 1 tokens gives it, and
    # so does a check one too lax (len(tokens) < block_size) on a stream of block_size tokens, so
    # it names no mistake here (the case that expects ValueError then gives its own hint)
    raised_hints=[(r"from=0 >= to=-\d", "validate"),
                  (r"^(?!.*from=0 >= to=0\b).*(random_|randint).*(from|high|low|range)", "randint_high")],
    hints={
        "default": "starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator); "
        "windows = tokens[starts[:, None] + torch.arange(block_size + 1)]; return windows[:, :-1], windows[:, 1:].",
        "shift": "The targets are the inputs shifted by one: y[b, t] = x[b, t + 1], the token that comes next. "
        "With y = x the model learns to copy its input.",
        "direction": "x is each window's first block_size tokens and y its last block_size: the target is the "
        "*next* token, not the previous one.",
        "window": "Each window holds block_size + 1 tokens, but x and y are block_size long each: "
        "x = window[:, :-1], y = window[:, 1:].",
        "randint_high": "torch.randint's high is exclusive: starts go up to len(tokens) - block_size - 1, so "
        "high = len(tokens) - block_size (then the last window ends exactly at the stream's end).",
        "validate": "Check the stream first: it must be a 1-D tensor of at least block_size + 1 tokens "
        "(tokens.ndim == 1 and len(tokens) >= block_size + 1), else raise ValueError saying so.",
        "starts": "The windows and targets are right, but they start elsewhere than the reference's: draw all the "
        "starts in one call, torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator), "
        "so that the same generator state gives the same batch (a saved run then resumes on the same data).",
        "shape": "Return x and y each of shape (batch_size, block_size), int64.",
    },
))


# ---------------------------------------------------------------------------- 06.cross_entropy

def ce_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, shape, vocab, scale=1.0, ignore=0, hint="default", probe=False, ignore_index=-100):
        logits = _randn(*shape, vocab, generator=g) * scale
        targets = randint(g, 0, vocab, *shape)
        if ignore:
            targets.view(-1)[:ignore] = ignore_index
        return shown_case(label, (logits, targets, ignore_index), hint, probe=probe)

    cases = [
        case("two positions, vocabulary of 3", (2,), 3, hint="sign"),
        case("logits of size 1000 (a confident model): exp overflows float32", (2, 3), 5, scale=1000.0, hint="overflow"),
        case("(batch, seq, vocab) logits: the mean over every position", (2, 3), 7, hint="mean"),
        case("targets of -100 (ignore_index) are left out of sum and mean", (2, 4), 6, ignore=3, hint="ignore_mean",
             probe=True),
        case("a vocabulary of 300: three-digit target ids, batch of 3", (3, 5), 300, scale=3.0, probe=True),
        case("ignore_index=7: targets of 7 are left out (not only -100)", (2, 5), 9, ignore=4, ignore_index=7,
             hint="ignore_index"),
    ]
    for n in range(4):
        cases.append(case(f"random logits (case {n + 1})", (rng.randint(1, 3), rng.randint(1, 6)), rng.randint(2, 30),
                          scale=rng.choice([1.0, 5.0]), ignore=rng.choice([0, 0, 2])))
    return cases


def _ce_variant(kind: str):
    def wrong(logits, targets, ignore_index=-100):
        z = logits.reshape(-1, logits.shape[-1]).float()
        t = targets.reshape(-1)
        keep = t != (-100 if kind == "ignore_index" else ignore_index)
        safe = torch.where(keep, t, 0)
        if kind == "overflow":  # softmax written out: exp(z) / sum exp(z), then -log
            probs = torch.exp(z) / torch.exp(z).sum(-1, keepdim=True)
            losses = -torch.log(probs.gather(-1, safe[:, None]).squeeze(-1))
            return (losses * keep).sum() / keep.sum()
        if kind == "probs":
            z = torch.softmax(z, -1)
        losses = torch.logsumexp(z, -1) - z.gather(-1, safe[:, None]).squeeze(-1)
        if kind == "sign":
            losses = -losses
        if kind == "sum":
            return (losses * keep).sum()
        if kind == "ignore_mean":
            return (losses * keep).sum() / len(t)
        return (losses * keep).sum() / keep.sum()
    wrong.__name__ = f"cross_entropy_{kind}"
    return wrong


def _ce_diagnose(case, expected, got):
    """inf or nan where the loss is finite: exp overflowed (a property of the output)."""
    if isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor) and got.is_floating_point():
        if bool(torch.isfinite(expected).all()) and not bool(torch.isfinite(got).all()):
            return "overflow"
    return None


register(Checkpoint(
    id="06.cross_entropy",
    fingerprint_tol=1e-6,
    points=1,
    title="mean cross-entropy from logsumexp, with ignore_index",
    signature="cross_entropy(logits, targets, ignore_index)",
    cases=ce_cases,
    reference=train("cross_entropy"),
    tol=TOL,
    grad_probe=True,
    fingerprints=[(k, _ce_variant(k)) for k in ("overflow", "sign", "sum", "ignore_mean", "probs", "ignore_index")],
    diagnose=_ce_diagnose,
    raised_hints=[(r"out of bounds|index -100", "ignore"), (r"size|shape|dimension", "flatten")],
    hints={
        "default": "Flatten to (n, vocab) and (n,); losses = torch.logsumexp(z, -1) - z.gather(-1, t[:, None]).squeeze(-1); "
        "keep = t != -100; return (losses * keep).sum() / keep.sum().",
        "overflow": "exp(1000) is inf in float32, so exp(z) / sum(exp(z)) or log(sum(exp(z))) gives inf or nan: use "
        "torch.logsumexp, which subtracts the largest logit first (log sum exp z = m + log sum exp(z - m)).",
        "sign": "Cross-entropy is -log p(target) = logsumexp(z) - z[target]: positive, and smaller when the "
        "target's logit is larger. The sign is flipped.",
        "sum": "Return the mean over positions, not the sum: the loss must not grow with batch size or sequence length.",
        "ignore_mean": "Positions whose target is -100 are left out of the mean too: divide by the number of kept "
        "positions, (targets != -100).sum(), not by all positions.",
        "ignore": "Targets of -100 (ignore_index) are not token ids: replace them by any valid id before gather "
        "(torch.where(keep, t, 0)) and give those positions weight 0.",
        "probs": "The logits go into logsumexp directly: softmax first and the loss is computed on probabilities, "
        "as if they were logits (a double softmax).",
        "flatten": "logits may be (batch, seq, vocab): flatten to (batch * seq, vocab) and the targets to (batch * seq,).",
        "ignore_index": "Leave out the positions whose target equals the ignore_index ARGUMENT, not a hard-coded -100: "
        "keep = targets != ignore_index.",
    },
))


# ---------------------------------------------------------------------------- 06.adamw_step

def adamw_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, shape, step, lr=0.1, b1=0.9, b2=0.999, eps=1e-8, wd=0.5, hint="default", zero_state=False):
        p = _randn(*shape, generator=g)
        grad = _randn(*shape, generator=g) * 0.3
        m = torch.zeros(shape) if zero_state else _randn(*shape, generator=g) * 0.1
        v = torch.zeros(shape) if zero_state else torch.rand(*shape, generator=g) * 0.05
        return Case(label, (p, grad, m, v, step, lr, b1, b2, eps, wd), hint)

    cases = [
        case("the first step (step=1) from zero moments", (3,), 1, zero_state=True, hint="bias_correction"),
        case("a zero gradient: only weight decay moves the parameter", (3,), 5, hint="decay"),
        case("step 10 with weight decay 0.5", (2, 3), 10),
        case("eps = 0.1 (large, so where it goes matters)", (4,), 3, eps=0.1, hint="eps"),
        case("betas (0.8, 0.99)", (4,), 7, b1=0.8, b2=0.99, hint="betas"),
        case("a (3, 5) matrix at step 2, eps = 1.0 and small moments", (3, 5), 2, eps=1.0, hint="eps"),
    ]
    cases[1].args[1].zero_()
    for n in range(4):
        # steps up to 20, rates of 0.05 and more, decay 0 or 0.5: bias correction, step - 1 and the
        # order of decay and update change the result by far more than rounding
        cases.append(case(f"random state (case {n + 1})", (rng.randint(1, 3), rng.randint(1, 4)), rng.randint(1, 20),
                          lr=rng.choice([0.05, 0.1]), wd=rng.choice([0.0, 0.5])))
    return cases


def _adamw_variant(kind: str):
    def wrong(p, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01):
        if kind == "coupled":
            grad = grad + weight_decay * p
        elif kind == "decay_no_lr":
            p = p * (1 - weight_decay)
        elif kind != "decay_after":
            p = p * (1 - lr * weight_decay)
        if kind == "betas":
            beta1, beta2 = beta2, beta1
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * (grad if kind == "square" else grad * grad)
        t = step - 1 if kind == "step_from_0" else step
        if kind == "bias_correction":
            m_hat, v_hat = m, v
        else:
            m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
        update = m_hat / ((v_hat + eps).sqrt() if kind == "eps" else v_hat.sqrt() + eps)
        p = p - lr * update
        if kind == "decay_after":
            p = p * (1 - lr * weight_decay)
        return p, m, v
    wrong.__name__ = f"adamw_step_{kind}"
    return wrong


ADAMW_MISTAKES = ("coupled", "decay_no_lr", "decay_after", "bias_correction", "step_from_0", "eps", "square", "betas")

register(Checkpoint(
    id="06.adamw_step",
    fingerprint_tol=1e-6,
    points=2,
    title="one AdamW update: decoupled weight decay, bias-corrected moments",
    signature="adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay)",
    cases=adamw_cases,
    reference=train("adamw_step"),
    tol=TOL,
    fingerprints=[(k, _adamw_variant(k)) for k in ADAMW_MISTAKES],
    hints={
        "default": "param = param * (1 - lr * weight_decay); m = beta1 * m + (1 - beta1) * grad; "
        "v = beta2 * v + (1 - beta2) * grad**2; m_hat = m / (1 - beta1**step); v_hat = v / (1 - beta2**step); "
        "param = param - lr * m_hat / (v_hat.sqrt() + eps); return param, m, v.",
        "decay": "With a zero gradient AdamW still shrinks the weights: param * (1 - lr * weight_decay).",
        "coupled": "That is Adam with L2 regularisation: the decay was added to the gradient, so it is divided by "
        "sqrt(v_hat) like the gradient. AdamW decouples it: param = param * (1 - lr * weight_decay), separately.",
        "decay_no_lr": "The decay is scaled by the learning rate: param * (1 - lr * weight_decay), not (1 - weight_decay).",
        "decay_after": "Decay the parameter *before* the Adam update (as torch.optim.AdamW does): the update is "
        "computed from the old parameter, and the decay applies to it, not to the updated one.",
        "bias_correction": "The moments start at zero, so early on they are too small: divide by (1 - beta1**step) "
        "and (1 - beta2**step) (bias correction) before the update.",
        "step_from_0": "step counts from 1 (the first update has step=1): use beta**step, not beta**(step - 1), "
        "which divides by zero at the first step.",
        "eps": "eps is added to the square root, sqrt(v_hat) + eps, not inside it.",
        "square": "The second moment averages the *squared* gradient: (1 - beta2) * grad * grad.",
        "betas": "beta1 (0.9) goes with the first moment m, beta2 (0.999) with the second moment v.",
    },
))


# ---------------------------------------------------------------------------- 06.lr_at

def lr_cases(rng: random.Random) -> list[Case]:
    def case(label, step, max_lr=1e-3, warmup=10, total=100, min_lr=1e-4, hint="default"):
        return Case(label, (step, max_lr, warmup, total, min_lr), hint)

    cases = [
        case("step 0 of a 10-step warm-up: already max_lr / 10", 0, hint="warmup_zero"),
        case("the last warm-up step (9): max_lr", 9, hint="warmup_zero"),
        case("step 10, the first of the cosine: still max_lr", 10, hint="warmup_boundary"),
        case("half-way through the cosine (step 55 of 10..100)", 55, hint="cosine_span"),
        case("the end of the schedule (step 100): min_lr", 100, hint="min_lr"),
        case("past the end (step 150): stays at min_lr", 150, hint="after_total"),
        case("a quarter through the cosine (step 32.5 -> 33 of 10..100)", 33, hint="linear"),
        case("no warm-up (warmup_steps = 0), step 0: max_lr", 0, warmup=0, hint="warmup_boundary"),
    ]
    for n in range(6):
        warmup = rng.randint(0, 50)
        total = warmup + rng.randint(1, 500)
        cases.append(case(f"random step (case {n + 1})", rng.randint(0, total + 20), rng.choice([3e-4, 1e-3, 6e-4]),
                          warmup, total, rng.choice([0.0, 1e-5, 6e-5])))
    return cases


def _lr_variant(kind: str):
    def wrong(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
        if kind == "warmup_boundary" and step <= warmup_steps and warmup_steps:
            return max_lr * (step + 1) / warmup_steps
        if step < warmup_steps:
            return max_lr * (step if kind == "warmup_zero" else step + 1) / warmup_steps
        if step >= total_steps and kind != "after_total":
            return 0.0 if kind == "min_lr" else min_lr
        if kind == "cosine_span":
            progress = step / total_steps
        else:
            progress = (step - warmup_steps) / (total_steps - warmup_steps)
        low = 0.0 if kind == "min_lr" else min_lr
        if kind == "linear":
            return max_lr - (max_lr - low) * progress
        return low + 0.5 * (max_lr - low) * (1 + math.cos(math.pi * progress))
    wrong.__name__ = f"lr_at_{kind}"
    return wrong


register(Checkpoint(
    id="06.lr_at",
    # plain Python floats, the same on every CPU to the last bits or so; learning rates are
    # about 1e-3, so a fingerprint tolerance of 1e-6 would be a thousandth of them
    fingerprint_tol=1e-10,
    points=1,
    title="linear warm-up, then cosine decay to min_lr",
    signature="lr_at(step, max_lr, warmup_steps, total_steps, min_lr)",
    cases=lr_cases,
    reference=train("lr_at"),
    tol=1e-9,
    fingerprints=[(k, _lr_variant(k)) for k in ("warmup_zero", "warmup_boundary", "cosine_span", "min_lr",
                                                 "after_total", "linear")],
    raised_hints=[(r"ZeroDivisionError", "warmup_boundary")],
    hints={
        "default": "step < warmup_steps: max_lr * (step + 1) / warmup_steps; step >= total_steps: min_lr; otherwise "
        "p = (step - warmup_steps) / (total_steps - warmup_steps) and min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * p)).",
        "warmup_zero": "Warm-up reaches max_lr at its last step and starts at max_lr / warmup_steps, not 0: "
        "use (step + 1) / warmup_steps (a zero learning rate wastes step 0).",
        "warmup_boundary": "Step warmup_steps is the first step of the cosine (lr = max_lr there): warm up only "
        "while step < warmup_steps (and with warmup_steps = 0 there is no warm-up at all).",
        "cosine_span": "The cosine runs over the steps after warm-up: progress = (step - warmup_steps) / "
        "(total_steps - warmup_steps), from 0 at the end of warm-up to 1 at total_steps.",
        "min_lr": "The cosine decays to min_lr, not to 0: min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * progress)).",
        "after_total": "After total_steps the learning rate stays at min_lr; the cosine would rise again.",
        "linear": "Between warm-up and total_steps the decay follows half a cosine, not a straight line.",
    },
))


# ---------------------------------------------------------------------------- 06.clip_grad_norm

def clip_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, shapes, max_norm, scale=1.0, hint="default"):
        grads = [_randn(*s, generator=g) * scale for s in shapes]
        return Case(label, (grads, max_norm), hint)

    cases = [
        case("norm below max_norm: gradients unchanged", [(3,), (2, 2)], 100.0, hint="scale_up"),
        case("two tensors, global norm above max_norm: one factor for both", [(3,), (2, 2)], 0.5, scale=2.0,
             hint="per_tensor"),
        case("one tensor of norm 5 ([3, 4]) clipped to 1", [(2,)], 1.0, hint="norm_after"),
        case("many small tensors: the norm is sqrt of the sum of squares", [(1,)] * 5 + [(2,)], 0.1, hint="l2"),
        case("nine gradients shaped like a model's (odd matrices, gain vectors), clipped to 1",
             [(13, 5), (5,), (7, 5), (5, 7), (5,), (11, 5), (5, 11), (5,), (13, 5)], 1.0, scale=0.3),
    ]
    cases[2].args[0][0].copy_(torch.tensor([3.0, 4.0]))
    for n in range(4):
        cases.append(case(f"random gradients (case {n + 1})", [(rng.randint(1, 4), rng.randint(1, 3))
                                                               for _ in range(rng.randint(1, 4))],
                          rng.choice([0.1, 1.0, 10.0]), scale=rng.choice([0.1, 1.0, 5.0])))
    return cases


def _clip_variant(kind: str):
    def wrong(grads, max_norm):
        norms = torch.stack([g.norm() for g in grads])
        total = norms.sum() if kind == "l2" else norms.norm()
        if kind == "per_tensor":
            return [g * torch.clamp(max_norm / (g.norm() + 1e-6), max=1.0) for g in grads], total
        if kind == "clamp_values":
            return [g.clamp(-max_norm, max_norm) for g in grads], total
        scale = max_norm / (total + 1e-6)
        if kind != "scale_up":
            scale = torch.clamp(scale, max=1.0)
        clipped = [g * scale for g in grads]
        if kind == "norm_after":
            total = torch.stack([g.norm() for g in clipped]).norm()
        return clipped, total
    wrong.__name__ = f"clip_grad_norm_{kind}"
    return wrong


register(Checkpoint(
    id="06.clip_grad_norm",
    fingerprint_tol=1e-6,
    points=1,
    title="global-norm gradient clipping, returning the norm before clipping",
    signature="clip_grad_norm(grads, max_norm)",
    cases=clip_cases,
    reference=train("clip_grad_norm"),
    tol=TOL,
    fingerprints=[(k, _clip_variant(k)) for k in ("per_tensor", "scale_up", "norm_after", "l2", "clamp_values")],
    hints={
        "default": "total = sqrt(sum of each gradient's squared L2 norm); scale = min(1, max_norm / (total + 1e-6)); "
        "return [g * scale for g in grads], total.",
        "per_tensor": "Clip by the *global* norm of all gradients together, one factor for every tensor: clipping "
        "each tensor separately changes the update's direction.",
        "scale_up": "Only scale down: when the norm is already at most max_norm the gradients stay as they are "
        "(the factor is min(1, max_norm / norm)).",
        "norm_after": "Return the total norm *before* clipping (what you want to log: after clipping it is "
        "just max_norm).",
        "l2": "The global norm is sqrt(sum_i ||g_i||^2), not the sum of the tensors' norms.",
        "clamp_values": "Clipping by norm scales the whole gradient; clamping each value to [-max_norm, max_norm] "
        "(clip_grad_value_) is another method.",
    },
))


# ---------------------------------------------------------------------------- a tiny model for the loop checks

def _tiny_model(rng: random.Random, n_layers: int = 2, vocab: int = 24):
    """The config and weights of a small course model (dim 8, GQA, ``n_layers`` layers), as plain data.

    Small on purpose: its weights travel in every case and in the release fixtures."""
    config = {"vocab_size": vocab, "dim": 8, "n_layers": n_layers, "n_heads": 2, "n_kv_heads": 1, "hidden_dim": 12,
              "max_seq_len": 16, "tie_embeddings": rng.random() < 0.5}
    shapes = {k: v.shape for k, v in model("Transformer")(model("LlamaConfig")(**config)).state_dict().items()}
    g = generator(rng)
    weights = {}
    for name, shape in shapes.items():
        if name == "lm_head.weight" and config["tie_embeddings"]:
            weights[name] = weights["embed_tokens.weight"]  # one tensor under two names
        elif len(shape) == 1:
            weights[name] = 1 + 0.3 * _randn(*shape, generator=g)  # norm gains away from 1
        else:
            weights[name] = _randn(*shape, generator=g) / math.sqrt(shape[-1])
    return config, weights


def _namespace(**extra):
    return {"Transformer": model("Transformer"), "LlamaConfig": model("LlamaConfig"), **extra}


# ---------------------------------------------------------------------------- 06.train_step

def step_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, n_steps, max_norm, hint="default", same_batch=False, lr=0.5, n_layers=2):
        config, weights = _tiny_model(rng, n_layers)
        batches = []
        for _ in range(n_steps):
            if same_batch and batches:
                batches.append(batches[0])
                continue
            w = torch.randint(0, config["vocab_size"], (2, 7), generator=g)
            batches.append((w[:, :-1], w[:, 1:]))
        lrs = [lr * (i + 1) / n_steps for i in range(n_steps)]
        show = (Label(f"<{n_layers}-layer model>"), Label(f"<{n_steps} batches of 2 x 6 tokens>"), lrs, max_norm)
        return Case(label, (config, weights, batches, lrs, max_norm), hint, show=show)

    return [
        case("one step, no clipping (max_norm 1e6)", 1, 1e6, hint="lr"),
        case("two steps on the same batch: the second must not see the first's gradients", 2, 1e6, hint="zero_grad",
             same_batch=True),
        case("one step with clipping to max_norm 0.1", 1, 0.1, hint="no_clip"),
        # a rate of 0.1, not 0.5: three unclipped steps at 0.5 (the no_clip mistake) carry one kernel family's
        # rounding into its weights' fingerprint as 1.6e-5 (ATEN_CPU_CAPABILITY=default against AVX-512)
        case("a 4-layer model, three steps with clipping to 0.5", 3, 0.5, n_layers=4, lr=0.1),
    ]


def _step_variant(kind: str):
    def wrong(model_, optimizer, x, y, lr, max_norm):
        if kind == "lr_groups":
            optimizer.param_groups[0]["lr"] = lr
        elif kind != "lr":
            for group in optimizer.param_groups:
                group["lr"] = lr
        loss = train("cross_entropy")(model_(x), y)
        loss.backward()
        params = [p for p in model_.parameters() if p.grad is not None]
        if kind == "zero_grad_early":
            optimizer.zero_grad(set_to_none=True)
        if kind == "per_tensor":
            for p in params:
                torch.nn.utils.clip_grad_norm_([p], max_norm)
        elif kind != "no_clip":
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        if kind != "zero_grad":
            optimizer.zero_grad(set_to_none=True)
        return loss if kind == "tensor" else loss.item()
    wrong.__name__ = f"train_step_{kind}"
    wrong.course_namespace = _namespace()
    return wrong


register(Checkpoint(
    id="06.train_step",
    points=2,
    title="one training step: lr, forward, loss, backward, clip, step, zero_grad",
    signature="train_step(model, optimizer, x, y, lr, max_norm)",
    cases=step_cases,
    reference=train("train_step"),
    kind="train_steps",
    tol=1e-5,
    fingerprints=[(k, _step_variant(k)) for k in ("lr", "lr_groups", "zero_grad", "zero_grad_early", "no_clip",
                                                 "per_tensor", "tensor")],
    hints={
        "default": "Set every param_group's 'lr'; loss = cross_entropy(model(x), y); loss.backward(); "
        "clip_grad_norm over all gradients (assign the clipped ones back to p.grad); optimizer.step(); "
        "optimizer.zero_grad(); return loss.item().",
        "lr": "Set the learning rate of this step in every parameter group before stepping: "
        "for group in optimizer.param_groups: group['lr'] = lr.",
        "lr_groups": "The optimiser has two parameter groups (matrices with weight decay, norm gains without): "
        "set the learning rate in every one, for group in optimizer.param_groups: group['lr'] = lr, not only "
        "in optimizer.param_groups[0].",
        "zero_grad": "Clear the gradients after the step (optimizer.zero_grad()): backward *adds* to .grad, so the "
        "next step would use the sum of both batches' gradients.",
        "zero_grad_early": "zero_grad() between backward() and step() throws this step's gradients away before "
        "they are used: clear them after optimizer.step().",
        "no_clip": "The gradients that reached optimizer.step() were not clipped: clip between backward() and "
        "step() so that their global norm is at most max_norm (clipping after the step changes nothing).",
        "per_tensor": "Clip by the global norm of all gradients together (one factor), not each tensor on its own.",
        "tensor": "Return the loss as a Python float (loss.item()): a tensor keeps the whole graph alive.",
    },
))


# ---------------------------------------------------------------------------- 06.resume

def resume_cases(rng: random.Random) -> list[Case]:
    def case(label, before, after, hint="default", n_layers=2):
        config, weights = _tiny_model(rng, n_layers)
        tokens = randint(rng, 0, config["vocab_size"], 200)
        seed = rng.randrange(2**31)
        show = (Label(f"<{n_layers}-layer model>"), Label(f"{before} steps, save, {after} more, write the state; "
                                                         f"restore, {after} steps"))
        return Case(label, (config, weights, tokens, seed, before, after), hint, show=show)

    return [
        case("save after 2 AdamW steps, restore, 2 more: the same weights as 4 steps in one go", 2, 2),
        case("a 4-layer model: save after 3 steps, 1 more", 3, 1, n_layers=4),
        case("save before any step (step 0), 2 steps", 0, 2, hint="step"),
    ]


def _resume_variant(kind: str):
    def save(model_, optimizer, generator, step):
        weights = model_.state_dict()
        state = {"model": weights if kind == "copies" else {k: v.clone() for k, v in weights.items()},
                 "step": step + (kind == "step")}
        if kind != "optimizer":
            optim = optimizer.state_dict()
            state["optimizer"] = optim if kind == "copies_optimizer" else copy.deepcopy(optim)
        state["generator"] = generator.initial_seed() if kind == "reseed" else generator.get_state()
        return state

    def load(state, model_, optimizer, generator):
        if kind != "model":
            model_.load_state_dict(state["model"])
        if kind != "optimizer":
            optimizer.load_state_dict(state["optimizer"])
        if kind == "reseed":
            generator.manual_seed(state["generator"])
        elif kind != "generator":
            generator.set_state(state["generator"])
        return state["step"]

    save.__name__ = f"save_training_state_{kind}"
    save.course_namespace = _namespace(load_training_state=load)
    return save


RESUME_MISTAKES = ("optimizer", "generator", "reseed", "step", "model", "copies", "copies_optimizer")

register(Checkpoint(
    id="06.resume",
    points=2,
    title="save_training_state / load_training_state: a resumed run is bit-identical",
    signature="save_training_state(model, optimizer, generator, step)",
    cases=resume_cases,
    reference=train("save_training_state"),
    kind="resume",
    # the output is (step, identical, weights): the step and whether the resumed run ends bit
    # for bit where the uninterrupted one does (both run in one process) are compared exactly,
    # the weights within a tolerance above another CPU's rounding after a few AdamW steps
    tol=1e-4,
    fingerprints=[(k, _resume_variant(k)) for k in RESUME_MISTAKES],
    raised_hints=[(r"load_training_state", "load_missing"), (r"KeyError", "keys")],
    hints={
        "default": "Save {'model': a copy of model.state_dict(), 'optimizer': a deep copy of optimizer.state_dict(), "
        "'generator': generator.get_state(), 'step': step}; load each back with load_state_dict / set_state "
        "and return state['step'].",
        "optimizer": "Save and restore the optimiser's state (optimizer.state_dict()): AdamW's moments and step "
        "counts. A fresh optimiser restarts them at zero, so the next updates differ.",
        "generator": "Restore the data generator's state (generator.set_state(state['generator'])): else the "
        "resumed run draws other batches than the uninterrupted one.",
        "reseed": "Re-seeding the generator with its initial seed replays the batches from the start; save its "
        "current position with generator.get_state() and restore it with set_state.",
        "step": "Return the step that was saved, unchanged: the next step to run is the number of steps done "
        "(the learning rate schedule resumes from it).",
        "model": "load_training_state must load the saved weights into the fresh model (model.load_state_dict).",
        "copies": "model.state_dict() holds references to the live weights, which the steps after saving change "
        "before the state is written: save copies, {k: v.detach().clone() for k, v in model.state_dict().items()}.",
        "copies_optimizer": "optimizer.state_dict() holds references to AdamW's live moments, which the steps after "
        "saving change before the state is written: save copy.deepcopy(optimizer.state_dict()).",
        "load_missing": "Define load_training_state(state, model, optimizer, generator) in the same cell.",
        "keys": "load_training_state reads back exactly the keys save_training_state wrote.",
    },
))
