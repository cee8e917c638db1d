r"""Pretraining: batches from a token stream, cross-entropy, AdamW, a learning-rate schedule,
gradient clipping, and a training loop whose checkpoints resume bit-identically.

Language-model pretraining minimises the average next-token cross-entropy over windows of
the corpus:

.. math::
    \mathcal{L}(\theta) = -\frac{1}{BT} \sum_{b=1}^{B} \sum_{t=1}^{T}
        \log \operatorname{softmax}\big(f_\theta(x_{b, \le t})\big)_{x_{b, t+1}}

This module has

* :func:`get_batch`: ``batch_size`` random windows of a token stream, drawn from a
  ``torch.Generator`` so that the data order is part of the (saved, restored) state;
* :func:`cross_entropy`: the loss from ``logsumexp``, as ``F.cross_entropy`` computes it;
* :func:`adamw_step` and :class:`AdamW`: Adam with decoupled weight decay (Loshchilov &
  Hutter, 2019), equal to ``torch.optim.AdamW``;
* :func:`lr_at`: linear warm-up then cosine decay to a floor;
* :func:`clip_grad_norm`: global-norm gradient clipping, as ``torch.nn.utils.clip_grad_norm_``;
* :func:`save_checkpoint` / :func:`load_checkpoint`: atomic, validated training checkpoints;
* :func:`copying_probe`: does the model copy a character's name from its context?
* :func:`train`: the loop, on one process or data-parallel under ``torchrun`` (DDP, gloo on CPU);
* the command line: ``python -m solutions.train --config solutions/configs/dense.json``
  trains (reproducibly) and exports one of the course's shipped checkpoints.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from solutions.model import LlamaConfig, Transformer

CHECKPOINT_FORMAT = 1

# ---------------------------------------------------------------------------- data


def get_batch(tokens: torch.Tensor, batch_size: int, block_size: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``batch_size`` windows of ``block_size + 1`` consecutive tokens at uniformly random
    starts; inputs are each window's first ``block_size`` tokens, targets the last
    ``block_size`` (the same window shifted by one): ``y[b, t] = x[b, t + 1]``.

    ``tokens``: ``(n,)`` int64. Returns ``(x, y)``, each ``(batch_size, block_size)``. The starts
    come from ``generator`` only, so the same generator state gives the same batch. Raises
    ``ValueError`` if ``tokens`` is not 1-D or holds fewer than ``block_size + 1`` tokens.
    """
    if tokens.ndim != 1 or len(tokens) < block_size + 1:
        raise ValueError(f"need a 1-D token stream of at least block_size + 1 = {block_size + 1} tokens, "
                         f"got shape {tuple(tokens.shape)}")
    starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator)  # (batch,)
    windows = tokens[starts[:, None] + torch.arange(block_size + 1)]  # (batch, block_size + 1)
    return windows[:, :-1], windows[:, 1:]


def eval_windows(tokens: torch.Tensor, block_size: int, n_windows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of a held-out stream, evenly spread over it (``None``: all of
    them), so that a validation loss is one fixed number, not a sample."""
    total = (len(tokens) - 1) // block_size
    picks = torch.arange(total) if n_windows is None or n_windows >= total else \
        torch.linspace(0, total - 1, n_windows).long()
    windows = tokens[picks[:, None] * block_size + torch.arange(block_size + 1)]  # (n, block_size + 1)
    return windows[:, :-1], windows[:, 1:]


# ---------------------------------------------------------------------------- the loss


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    r"""Mean next-token cross-entropy, computed stably with ``logsumexp``:

    .. math:: \ell = -\log \frac{e^{z_y}}{\sum_j e^{z_j}} = \operatorname{logsumexp}(z) - z_y

    ``logits`` ``(..., vocab)``, ``targets`` ``(...)`` int64. Positions whose target is
    ``ignore_index`` count neither in the sum nor in the mean (chapter 08 masks prompts so).
    Equal to ``F.cross_entropy(logits.flatten(0, -2), targets.flatten())``.
    """
    logits = logits.reshape(-1, logits.shape[-1]).float()  # (n, vocab)
    targets = targets.reshape(-1)  # (n,)
    keep = targets != ignore_index
    safe = torch.where(keep, targets, 0)
    losses = torch.logsumexp(logits, dim=-1) - logits.gather(-1, safe[:, None]).squeeze(-1)  # (n,)
    return (losses * keep).sum() / keep.sum()


# ---------------------------------------------------------------------------- AdamW


def adamw_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
               step: int, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""One AdamW update of one parameter; returns ``(param, exp_avg, exp_avg_sq)`` (new tensors).

    ``step`` counts from 1. With gradient :math:`g`:

    .. math::
        \theta &\leftarrow \theta - \eta \lambda \theta
            \quad\text{(decoupled weight decay: not part of the gradient)} \\
        m &\leftarrow \beta_1 m + (1 - \beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        \hat m &= m / (1 - \beta_1^{t}), \qquad \hat v = v / (1 - \beta_2^{t}) \\
        \theta &\leftarrow \theta - \eta\, \hat m / (\sqrt{\hat v} + \epsilon)

    Adam (plain L2) would add :math:`\lambda\theta` to :math:`g` instead, so that the decay is
    divided by :math:`\sqrt{\hat v}` like the gradient, weakest exactly for the parameters with
    large gradients; AdamW's decay shrinks every weight by the same factor :math:`1 - \eta\lambda`.
    """
    param = param * (1 - lr * weight_decay)
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    m_hat = exp_avg / (1 - beta1 ** step)
    v_hat = exp_avg_sq / (1 - beta2 ** step)
    param = param - lr * m_hat / (v_hat.sqrt() + eps)
    return param, exp_avg, exp_avg_sq


class AdamW(torch.optim.Optimizer):
    """AdamW written with :func:`adamw_step`, as a ``torch.optim.Optimizer`` (parameter groups,
    ``state_dict`` / ``load_state_dict``, ``zero_grad`` come from the base class).

    After 100 steps it matches ``torch.optim.AdamW`` with the same settings to about 1e-7
    (tests/test_train.py): the two compute the same formula in a different order.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        if not lr >= 0:
            raise ValueError(f"AdamW lr must be >= 0, got {lr!r}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"AdamW betas must each be in [0, 1), got {betas!r}")
        if not eps > 0 or not weight_decay >= 0:
            raise ValueError(f"AdamW needs eps > 0 and weight_decay >= 0, got eps={eps!r}, weight_decay={weight_decay!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                new_p, state["exp_avg"], state["exp_avg_sq"] = adamw_step(
                    p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"], group["lr"],
                    beta1, beta2, group["eps"], group["weight_decay"])
                p.copy_(new_p)
        return loss


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Parameter groups: matrices decay, vectors (norm gains) do not (GPT-2, LLaMA practice).
    A tied embedding is one parameter and is listed once."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


# ---------------------------------------------------------------------------- schedule and clipping


def lr_at(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    r"""Learning rate of optimiser step ``step`` (counting from 0): linear warm-up, cosine decay.

    .. math::
        \eta(s) = \begin{cases}
            \eta_{max} \,\frac{s + 1}{W} & s < W \\
            \eta_{min} + \tfrac12 (\eta_{max} - \eta_{min})
                \big(1 + \cos(\pi \frac{s - W}{S - W})\big) & W \le s < S \\
            \eta_{min} & s \ge S
        \end{cases}

    with :math:`W` = ``warmup_steps`` and :math:`S` = ``total_steps``. Step 0 already gets
    :math:`\eta_{max}/W` (a zero learning rate would waste a step), warm-up ends exactly at
    :math:`\eta_{max}` and the cosine reaches :math:`\eta_{min}` at :math:`S`.
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def clip_grad_norm(grads: list[torch.Tensor], max_norm: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    r"""Scale all gradients together so that their global L2 norm is at most ``max_norm``.

    .. math:: \|g\| = \sqrt{\textstyle\sum_i \|g_i\|_2^2}, \qquad
        g_i \leftarrow g_i \cdot \min\!\Big(1, \frac{c}{\|g\| + 10^{-6}}\Big)

    One factor for every tensor keeps the update's direction; clipping each tensor on its own
    would change it. Returns ``(clipped, total_norm)`` where ``total_norm`` is the norm
    *before* clipping (what to log), as ``torch.nn.utils.clip_grad_norm_`` returns it.
    """
    total_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    scale = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    return [g * scale.to(g.dtype) for g in grads], total_norm


# ---------------------------------------------------------------------------- one step, and resuming


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               lr: float, max_norm: float) -> float:
    """One optimiser step on the batch ``(x, y)``: set the learning rate, forward, loss, backward,
    clip the gradients' global norm to ``max_norm``, step, clear the gradients. Returns the
    loss as a float (``.item()``: a tensor would keep the whole graph alive)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = cross_entropy(model(x), y)
    loss.backward()
    clip_gradients(model, max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # else the next backward adds to these gradients
    return loss.item()


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """:func:`clip_grad_norm` applied to a model's gradients in place; returns the norm before."""
    params = [p for p in model.parameters() if p.grad is not None]
    clipped, total_norm = clip_grad_norm([p.grad for p in params], max_norm)
    for p, g in zip(params, clipped):
        p.grad = g
    return total_norm


def save_training_state(model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                        step: int) -> dict:
    """Everything that decides what a run computes next, as a dict ``torch.save`` can write:
    the weights, the optimiser's state (AdamW's moments and step counts, without which the
    next updates differ), the data generator's state (else the run would see other batches)
    and the step (the schedule's position). Copies, so that training on does not change it."""
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "generator": generator.get_state(),
            "step": step}


def load_training_state(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
                        generator: torch.Generator) -> int:
    """Put a :func:`save_training_state` dict back into a fresh model, optimiser and generator;
    return the step to continue from."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    return state["step"]


# ---------------------------------------------------------------------------- model set-up


def init_weights(model: Transformer, std: float = 0.02) -> None:
    r"""GPT-2's initialisation: every matrix :math:`\mathcal{N}(0, 0.02^2)`, and the projections
    that write into the residual stream (``o_proj``, ``down_proj``) scaled by
    :math:`1/\sqrt{2L}`, so that the stream's variance does not grow with depth. Norm gains 1.
    (PyTorch's default would give a tied embedding unit variance, hence logits of size
    :math:`\sqrt{d}` at step 0.)"""
    residual_std = std / math.sqrt(2 * model.cfg.n_layers)
    for name, p in model.named_parameters():
        if p.ndim < 2:
            nn.init.ones_(p)
        else:
            nn.init.normal_(p, 0.0, residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std)


def build_model(model_config: dict, seed: int) -> Transformer:
    """The course model for ``model_config`` (``LlamaConfig`` fields), initialised from ``seed``."""
    torch.manual_seed(seed)
    model = Transformer(LlamaConfig(**model_config))
    init_weights(model)
    return model


def pick_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@torch.no_grad()
def evaluate(model: nn.Module, tokens: torch.Tensor, block_size: int, n_windows: int | None = None,
             batch_size: int = 32) -> float:
    """Mean cross-entropy (nats per token) on fixed windows of ``tokens`` (see :func:`eval_windows`)."""
    was_training = model.training
    model.eval()
    x, y = eval_windows(tokens, block_size, n_windows)
    device = next(model.parameters()).device
    total = 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size].to(device))
        total += cross_entropy(logits, y[i:i + batch_size].to(device)).item() * len(x[i:i + batch_size])
    model.train(was_training)
    return total / len(x)


# ---------------------------------------------------------------------------- the copying probe


def name_mentions(tokenizer, story: str, names: set[str], max_tokens: int) -> tuple[list[int], list[int], list[int]]:
    """A story's token ids (at most ``max_tokens``) and where a character's name starts: the
    positions of first mentions and of repeated ones.

    A name counts where a token starts with it (``" Mia"`` as one token, or its first piece);
    a name that shares its first token with the word before it (no token boundary) is skipped.
    """
    import re

    ids = tokenizer.encode(story, disallowed_special=())[:max_tokens]
    starts, offset = {}, 0
    for i, t in enumerate(ids):
        starts[offset] = i  # the byte at which token i starts
        offset += len(tokenizer.decode_single_token_bytes(t))
    first, repeat, seen = [], [], set()
    for m in re.finditer(r"\b\w+", story):
        if m.group(0) not in names:
            continue
        byte = len(story[:m.start()].encode("utf-8"))
        position = starts.get(byte - 1) if story[m.start() - 1:m.start()] == " " else starts.get(byte)
        if position is not None and position >= 1:  # position 0 has no context to predict it from
            (repeat if m.group(0) in seen else first).append(position)
        seen.add(m.group(0))
    return ids, first, repeat


@torch.no_grad()
def copying_probe(model: nn.Module, tokenizer, stories: list[str], names: set[str], k: int = 5) -> dict:
    """Does the model read its context? At each mention of a character's name, the probability
    it gives the name's first token, and whether that token is in its top ``k``: at first
    mentions (the name is new: only a guess among names is possible) against repeated
    mentions (the name is in the context: a model that copies gives it far more).

    Returns ``{"first_logprob", "repeat_logprob", "first_top5", "repeat_top5", "first_mentions",
    "repeat_mentions", "stories"}``: mean log-probabilities (nats) and hit rates.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    context = getattr(getattr(model, "cfg", None), "max_seq_len", 512)
    found = {"first": ([], []), "repeat": ([], [])}
    for story in stories:
        ids, first, repeat = name_mentions(tokenizer, story, names, context)
        if not first and not repeat:
            continue
        tokens = torch.tensor([ids], device=device)
        logprobs = F.log_softmax(model(tokens)[0].float(), dim=-1)  # (seq, vocab)
        for kind, positions in (("first", first), ("repeat", repeat)):
            for t in positions:
                row = logprobs[t - 1]  # the prediction of token t
                found[kind][0].append(row[ids[t]].item())
                found[kind][1].append(float(ids[t] in row.topk(k).indices.tolist()))
    model.train(was_training)
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else float("nan")  # noqa: E731
    return {"first_logprob": mean(found["first"][0]), "repeat_logprob": mean(found["repeat"][0]),
            f"first_top{k}": mean(found["first"][1]), f"repeat_top{k}": mean(found["repeat"][1]),
            "first_mentions": len(found["first"][0]), "repeat_mentions": len(found["repeat"][0]),
            "stories": len(stories)}


PROBE_STORIES = 200  # the first held-out stories, for the copying probe of a shipped checkpoint


def probe_shipped_model(model: nn.Module) -> dict:
    """The copying probe on the first ``PROBE_STORIES`` validation stories, as recorded in a
    shipped checkpoint's ``config.json``."""
    from data import course_tokenizer, load_corpus
    from data.corpus import split_stories

    return copying_probe(model, course_tokenizer(), split_stories(load_corpus("val"))[:PROBE_STORIES], character_names())


def character_names() -> set[str]:
    """The given names and pet names the course's story generator uses (``data/corpus.py``)."""
    from data import corpus

    return set(corpus.GIRL_NAMES + corpus.BOY_NAMES + corpus.NEUTRAL_NAMES + corpus.ACCENTED_GIRL_NAMES
               + corpus.ACCENTED_BOY_NAMES + corpus.PET_NAMES)


# ---------------------------------------------------------------------------- training config

TRAIN_DEFAULTS = dict(
    seed=1337, batch_size=8, block_size=256, grad_accum=1, max_lr=3e-3, min_lr=3e-4,
    warmup_steps=50, total_steps=600, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8,
    grad_clip=1.0, aux_loss_coef=0.01, eval_every=100, eval_windows=64, checkpoint_every=100,
    renamed_copies=0, repeat_drill_tokens=0,
)
# Fields that may change between an interrupted run and its resumption: they do not change
# the numbers the run computes (how often it reports or saves).
RESUMABLE_CHANGES = {"eval_every", "eval_windows", "checkpoint_every"}


def check_train_config(train_cfg: dict) -> dict:
    """The training config with defaults filled in; unknown or impossible fields get a clear error."""
    unknown = sorted(set(train_cfg) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown training setting(s) {unknown}; the settings are {sorted(TRAIN_DEFAULTS)}")
    cfg = {**TRAIN_DEFAULTS, **train_cfg}
    for name in ("batch_size", "block_size", "grad_accum", "total_steps", "eval_every", "checkpoint_every"):
        if not isinstance(cfg[name], int) or cfg[name] < 1:
            raise ValueError(f"training setting {name} must be a positive int, got {cfg[name]!r}")
    for name in ("renamed_copies", "repeat_drill_tokens"):
        if not isinstance(cfg[name], int) or cfg[name] < 0:
            raise ValueError(f"training setting {name} must be an int >= 0, got {cfg[name]!r}")
    if not 0 <= cfg["warmup_steps"] < cfg["total_steps"]:
        raise ValueError(f"warmup_steps ({cfg['warmup_steps']}) must be >= 0 and below total_steps ({cfg['total_steps']})")
    if not 0 <= cfg["min_lr"] <= cfg["max_lr"]:
        raise ValueError(f"need 0 <= min_lr <= max_lr, got min_lr={cfg['min_lr']}, max_lr={cfg['max_lr']}")
    return cfg


def read_config(path: str | Path) -> dict:
    """A run's config file: {"name", "model": LlamaConfig fields, "train": settings, "out_dir", "export"}."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no config file {path}; the course's configs are in solutions/configs/")
    config = json.loads(path.read_text())
    missing = {"name", "model", "train"} - set(config)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}: a config has 'name', 'model' and 'train' sections")
    LlamaConfig(**config["model"])  # validates, with LlamaConfig's own messages
    config["train"] = check_train_config(config["train"])
    return config


# ---------------------------------------------------------------------------- checkpoints


class CheckpointError(ValueError):
    """A training checkpoint that cannot be resumed from: corrupt, or from another run."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: to a temporary file in the same folder, flushed
    to disk, then renamed over ``path``. A rename is atomic, so a crash mid-save leaves the
    previous checkpoint whole (and at worst a stray ``.tmp`` file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, model_config: dict | None = None, train_config: dict | None = None) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`. Given the configs of the run that
    wants to resume from it, refuse (with the differences named) a checkpoint of another run."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; start without --resume to train from scratch")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, garbage bytes, wrong pickle: all "corrupt" to the user
        raise CheckpointError(f"{path} is not a readable training checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:200]}); it is corrupt or truncated. Resume from "
                              "an earlier checkpoint, or delete it and train from scratch.") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a course training checkpoint of format {CHECKPOINT_FORMAT}")
    problems = []
    for label, saved, wanted, free in (("model", state["model_config"], model_config, set()),
                                       ("train", state["train_config"], train_config, RESUMABLE_CHANGES)):
        if wanted is None:
            continue
        for key in sorted(set(saved) | set(wanted)):
            if key not in free and saved.get(key) != wanted.get(key):
                problems.append(f"{label}.{key}: checkpoint {saved.get(key)!r}, config {wanted.get(key)!r}")
    if problems:
        raise CheckpointError(f"{path} was written by a run with a different config ({'; '.join(problems)}). "
                              "Resume with the config it was trained with, or train into a new --out folder.")
    return state


# ---------------------------------------------------------------------------- distributed


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``: from ``torchrun``'s environment, else ``(0, 1)``."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def all_reduce_mean(value: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist
        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return value


# ---------------------------------------------------------------------------- the loop


def train(config: dict, out_dir: str | Path, resume: bool = False, stop_at: int | None = None,
          progress: bool = True, device: str | None = None, train_tokens: torch.Tensor | None = None,
          val_tokens: torch.Tensor | None = None) -> dict:
    """Train ``config["model"]`` with ``config["train"]``; return the log
    ``{"step": [...], "loss": [...], "lr": [...], "grad_norm": [...], "val_step": [...], "val_loss": [...]}``.

    Each optimiser step draws one *global* batch of ``batch_size * grad_accum`` windows (the
    same draw on every process), so the data a step sees does not depend on how it is split:
    under ``torchrun`` with ``W`` processes, process ``r`` takes its ``1/W`` share of the rows
    and DDP averages the gradients, which is exactly what one process computes by accumulating
    over all rows. ``grad_accum`` must be a multiple of ``W``.

    ``out_dir/last.pt`` (every ``checkpoint_every`` steps and at the end) holds the weights,
    optimizer state, step, log, and both random generators' states: ``resume=True`` continues
    from it, bit-identical to a run that was never interrupted. ``stop_at`` ends the run early
    (after saving) at that step, as an interruption would.
    """
    model_cfg, cfg = config["model"], check_train_config(config["train"])
    rank, world = dist_info()
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        if cfg["grad_accum"] % world:
            raise ValueError(f"grad_accum ({cfg['grad_accum']}) must be a multiple of the number of processes ({world})")
    device = device or ("cpu" if world > 1 else pick_device())
    if device == "cuda":  # same bits on a rerun: cuBLAS and index_add_ have non-deterministic defaults
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    out_dir = Path(out_dir)
    if train_tokens is None or val_tokens is None:
        train_tokens, val_tokens = corpus_tokens(cfg["renamed_copies"], cfg["repeat_drill_tokens"])

    model = build_model(model_cfg, cfg["seed"]).to(device)
    optimizer = AdamW(decay_groups(model, cfg["weight_decay"]), lr=cfg["max_lr"],
                      betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"])
    batches = torch.Generator().manual_seed(cfg["seed"])  # the data order
    log = {"step": [], "loss": [], "lr": [], "grad_norm": [], "val_step": [], "val_loss": [], "seconds": 0.0}
    start = 0
    if resume:
        state = load_checkpoint(out_dir / "last.pt", model_cfg, cfg)
        start = load_training_state(state, model, optimizer, batches)
        torch.set_rng_state(state["torch_rng"])
        log = state["log"]

    ddp = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        ddp = DistributedDataParallel(model, find_unused_parameters=bool(model_cfg.get("n_experts")))
    per_process = cfg["grad_accum"] // world  # micro-batches this process runs per step
    rows = cfg["batch_size"]

    def save(step):
        if rank == 0:
            save_checkpoint(out_dir / "last.pt", {
                **save_training_state(model, optimizer, batches, step), "log": log,
                "torch_rng": torch.get_rng_state(), "model_config": model_cfg, "train_config": cfg})

    end = min(cfg["total_steps"], stop_at) if stop_at is not None else cfg["total_steps"]
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg["total_steps"], initial=start, desc=config.get("name", "train"), unit="step")
    t0 = time.perf_counter()
    model.train()
    for step in range(start, end):
        lr = lr_at(step, cfg["max_lr"], cfg["warmup_steps"], cfg["total_steps"], cfg["min_lr"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(train_tokens, rows * cfg["grad_accum"], cfg["block_size"], batches)
        mine = slice(rank * per_process * rows, (rank + 1) * per_process * rows)
        x, y = x[mine].to(device), y[mine].to(device)
        step_loss = torch.zeros((), device=device)
        for micro in range(per_process):
            xb, yb = x[micro * rows:(micro + 1) * rows], y[micro * rows:(micro + 1) * rows]
            sync = world == 1 or micro == per_process - 1  # all-reduce gradients once per step
            with ddp.no_sync() if not sync else nullcontext():
                logits = ddp(xb)
                loss = cross_entropy(logits, yb)
                total = loss + cfg["aux_loss_coef"] * model.aux_loss if model_cfg.get("n_experts") else loss
                (total / per_process).backward()
            step_loss += loss.detach() / per_process
        grad_norm = clip_gradients(model, cfg["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        step_loss = all_reduce_mean(step_loss, world).item()
        log["step"].append(step)
        log["loss"].append(step_loss)
        log["lr"].append(lr)
        log["grad_norm"].append(grad_norm.item())
        done = step + 1
        if done % cfg["eval_every"] == 0 or done == cfg["total_steps"]:
            log["val_step"].append(done)
            log["val_loss"].append(evaluate(model, val_tokens, cfg["block_size"], cfg["eval_windows"]))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.1e}",
                            val=f"{log['val_loss'][-1]:.3f}" if log["val_loss"] else "-")
        if done % cfg["checkpoint_every"] == 0 or done == end:
            log["seconds"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            save(done)
    if bar is not None:
        bar.close()
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
    return {"model": model, "log": log}


def corpus_tokens(renamed_copies: int = 0, repeat_drill_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The course corpus as token streams (train, val): stories joined by ``<|endoftext|>``.

    For longer pretraining, the training stream can be followed by ``renamed_copies`` copies of
    the training stories whose characters, pets and towns carry invented names
    (:func:`data.corpus.renamed_copies`: a later mention can only be predicted by copying it from
    the context), and by about ``repeat_drill_tokens`` tokens of repeat drills
    (:func:`repeat_drills`). The validation stream is always the plain validation stories.
    """
    from data import corpus, course_tokenizer, load_corpus

    enc = course_tokenizer()
    special = {corpus.SEPARATOR}
    train, val = (enc.encode(load_corpus(split), allowed_special=special) for split in ("train", "val"))
    if renamed_copies:
        stories = corpus.split_stories(load_corpus("train"))
        train += enc.encode(corpus.join_stories([""] + corpus.renamed_copies(stories, renamed_copies)),
                            allowed_special=special)
    if repeat_drill_tokens:
        train += repeat_drills(train, repeat_drill_tokens, enc.encode_single_token(corpus.SEPARATOR))
    return torch.tensor(train, dtype=torch.long), torch.tensor(val, dtype=torch.long)


def repeat_drills(tokens: list[int], n_tokens: int, separator: int, min_len: int = 12, max_len: int = 60,
                  seed: str = "repeat-drills-v1") -> list[int]:
    """About ``n_tokens`` tokens of drills ``[separator, *chunk, *chunk]``: a random passage of
    ``min_len`` to ``max_len`` tokens of ``tokens``, said twice. Its second half is predictable
    only by finding the passage earlier in the context and copying what followed: the job of
    an *induction head* (Olsson et al., 2022), which a small model trained on stories alone is
    slow to form. Deterministic: the passages come from a ``random.Random`` seeded with ``seed``.
    """
    import random

    rng, drills = random.Random(seed), []
    while len(drills) < n_tokens:
        length = rng.randint(min_len, max_len)
        start = rng.randrange(len(tokens) - length)
        chunk = tokens[start:start + length]
        drills += [separator, *chunk, *chunk]
    return drills


# ---------------------------------------------------------------------------- export, command line


SPOT_CHECK_WINDOWS = 64  # validation windows a fresh load of a shipped checkpoint is checked on


def export(model: Transformer, config: dict, log: dict, export_dir: str | Path, val_tokens: torch.Tensor,
           dtype: torch.dtype = torch.bfloat16) -> float:
    """Write a shipped checkpoint: ``model.safetensors`` (weights rounded to ``dtype``, a tied
    embedding stored once), ``config.json``, ``log.json``; then measure the validation loss
    *of the stored weights* on every validation window and record it in ``config.json``, the
    log and ``data/MANIFEST.json``, with the stored weights' copying probe
    (:func:`probe_shipped_model`) and their loss on :data:`SPOT_CHECK_WINDOWS` windows (what a
    test reproduces from a fresh load) in ``config.json``. Returns that loss."""
    export_dir = Path(export_dir)
    stored = save_weights(model, config["model"], export_dir / "model.safetensors", dtype)
    val_loss = round(evaluate(stored, val_tokens, config["train"]["block_size"]), 6)
    # the same on 64 windows spread over the stream: a quick check that a fresh load is this model
    spot_check = {"windows": SPOT_CHECK_WINDOWS,
                  "loss": round(evaluate(stored, val_tokens, config["train"]["block_size"], SPOT_CHECK_WINDOWS), 6)}
    probe = probe_shipped_model(stored)
    tokens_seen = len(log["step"]) * config["train"]["batch_size"] * config["train"]["grad_accum"] * config["train"]["block_size"]
    meta = {"name": config["name"], "description": config.get("description", ""), "model": config["model"],
            "train": config["train"], "val_loss": val_loss, "val_tokens": int(len(val_tokens)),
            "val_spot_check": spot_check,
            "copying_probe": probe,
            "params": sum(p.numel() for p in stored.parameters()), "dtype": str(dtype).replace("torch.", ""),
            "train_tokens_seen": tokens_seen, "train_seconds": round(log["seconds"], 1),
            "tokens_per_second": round(tokens_seen / max(log["seconds"], 1e-9)),
            "device": next(model.parameters()).device.type, "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    (export_dir / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    (export_dir / "log.json").write_text(json.dumps({k: (round(v, 3) if k == "seconds" else
                                                         [round(x, 6) if isinstance(x, float) else x for x in v])
                                                     for k, v in log.items()}) + "\n")
    register_checkpoint(export_dir)
    return val_loss


def save_weights(model: nn.Module, model_config: dict, path: Path, dtype: torch.dtype = torch.bfloat16) -> Transformer:
    """Write ``model``'s weights to ``path`` (safetensors, rounded to ``dtype``, a tied embedding
    stored once); return a float32 model holding exactly the stored weights, the one a
    learner's ``load_checkpoint`` gives, to measure what is shipped."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    if model_config.get("tie_embeddings"):
        del state["lm_head.weight"]
    # one metadata key: safetensors writes a map of several in random order, and the file must be the same bits
    save_file(state, str(path), metadata={"format": "pt"})
    return stored_model(model_config, state)


def stored_model(model_config: dict, state: dict) -> Transformer:
    """A float32 model holding a stored state dict (a tied embedding stored once, shared again)."""
    model = build_model(model_config, 0)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if model_config.get("tie_embeddings"):
        model.lm_head.weight = model.embed_tokens.weight
    return model


def record_probe(export_dir: str | Path) -> dict:
    """Measure the copying probe (:func:`probe_shipped_model`) of a shipped checkpoint's stored
    weights and record it in its ``config.json`` (and the manifest), for a checkpoint exported
    before :func:`export` measured it. Returns the probe."""
    from safetensors.torch import load_file

    export_dir = Path(export_dir)
    meta = json.loads((export_dir / "config.json").read_text())
    probe = probe_shipped_model(stored_model(meta["model"], load_file(str(export_dir / "model.safetensors"))))
    keys = list(meta)
    meta = {k: v for k, v in meta.items() if k != "copying_probe"}
    at = keys.index("val_tokens") + 1 if "val_tokens" in keys else len(keys)
    items = list(meta.items())
    items.insert(at, ("copying_probe", probe))
    (export_dir / "config.json").write_text(json.dumps(dict(items), indent=2) + "\n")
    register_checkpoint(export_dir)
    return probe


def register_checkpoint(export_dir: str | Path) -> None:
    """Record a shipped checkpoint's files in ``data/MANIFEST.json`` (if it lies under ``data/``),
    with its validation loss (a pretrained checkpoint's) beside the weights' sha256: the number a
    fresh load must reproduce."""
    from data import manifest

    export_dir = Path(export_dir)
    if not export_dir.resolve().is_relative_to(manifest.DATA_DIR):
        return
    files = [export_dir / n for n in ("model.safetensors", "config.json", "log.json")]
    manifest.update_manifest(files)
    entries = manifest.load_manifest()
    meta = json.loads(files[1].read_text())
    if "val_loss" in meta:
        entries[manifest.manifest_key(files[0])]["val_loss"] = meta["val_loss"]
    manifest.save_manifest(entries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m solutions.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a run config, e.g. solutions/configs/dense.json")
    parser.add_argument("--out", help="folder for training checkpoints (default: the config's out_dir)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--stop-at", type=int, help="stop (after saving) at this step, as an interruption would")
    parser.add_argument("--steps", type=int, help="override total_steps (a shorter schedule, for a quick try)")
    parser.add_argument("--no-export", action="store_true", help="do not write the shipped checkpoint")
    parser.add_argument("--device", help="cuda, mps or cpu (default: the first one present)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (part of what makes a rerun bit-identical)")
    parser.add_argument("--probe", action="store_true",
                        help="measure the copying probe of the config's exported checkpoint, record it in its "
                             "config.json, and exit")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.probe:
        config = read_config(args.config)
        print(f"{config['export']}: {record_probe(config['export'])}")
        return 0
    config = read_config(args.config)
    if args.steps:
        warmup = min(config["train"]["warmup_steps"], args.steps // 10)  # keep the schedule's shape
        config["train"] = check_train_config({**config["train"], "total_steps": args.steps, "warmup_steps": warmup})
    out = Path(args.out or config.get("out_dir", f"runs/{config['name']}"))
    try:
        result = train(config, out, resume=args.resume, stop_at=args.stop_at, device=args.device)
    except (CheckpointError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rank, world = dist_info()
    log = result["log"]
    if rank == 0:
        print(f"{config['name']}: {len(log['step'])} steps, last loss {log['loss'][-1]:.4f}, "
              f"val {log['val_loss'][-1] if log['val_loss'] else float('nan'):.4f}, {log['seconds']:.0f} s")
        finished = log["step"] and log["step"][-1] + 1 == config["train"]["total_steps"]
        if finished and config.get("export") and not args.no_export and not args.steps:
            _, val = corpus_tokens()  # the plain validation stories, whatever the training mix
            loss = export(result["model"], config, log, config["export"], val)
            print(f"exported {config['export']}: validation loss {loss:.4f} on {len(val):,} tokens")
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
