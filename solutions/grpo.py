r"""Group Relative Policy Optimization (GRPO): PPO without a value model, on a reward that can be checked.

PPO (chapter 11) needs a value model to tell a good reply from a lucky one. GRPO (Shao et al.,
2024, "DeepSeekMath"; then DeepSeek-R1) drops it: for each prompt it samples a **group** of
:math:`G` replies, scores each with a reward, and uses the group itself as the baseline,

.. math::
    A_i = \frac{r_i - \operatorname{mean}(r_1, \dots, r_G)}{\operatorname{std}(r_1, \dots, r_G) + \epsilon},

the same advantage for every token of reply :math:`i` ("outcome supervision"). The rewards
here are **verifiable**: a rule checks the answer (DeepSeek-R1's accuracy reward), so there is
no reward model to hack. The loss is PPO's clipped surrogate per token, with the KL to the
reference model added to the loss (not folded into the reward, as PPO does) through the
**k3 estimator** (Schulman, 2020, "Approximating KL divergence"), unbiased and never negative:

.. math::
    \mathcal{L}_{i,t} = -\min\big(\rho_{i,t} A_i,\ \operatorname{clip}(\rho_{i,t}, 1-\varepsilon, 1+\varepsilon) A_i\big)
        + \beta\, \Big(\frac{\pi_{\text{ref}}}{\pi_\theta} - \log\frac{\pi_{\text{ref}}}{\pi_\theta} - 1\Big)_{i,t},
    \qquad \rho_{i,t} = \frac{\pi_\theta(o_{i,t} \mid q, o_{i,<t})}{\pi_{\theta_{\text{old}}}(o_{i,t} \mid q, o_{i,<t})}

How the per-token losses become one number matters, and the literature differs (TRL's
``GRPOTrainer`` has all three as ``loss_type``):

* ``"sequence"``: the mean over each reply's tokens, then the mean over replies (DeepSeekMath's
  :math:`\frac1G\sum_i \frac1{|o_i|}\sum_t`; TRL's ``"grpo"``). A token of a short reply weighs more
  than one of a long reply: long wrong answers are penalised less per token;
* ``"token"``: the sum over every reply token of the batch divided by their number (DAPO, Yu et
  al., 2025; TRL's ``"bnpo"``, and ``"dapo"`` across processes);
* ``"dr_grpo"``: the sum divided by a constant, batch size :math:`\times` the longest allowed reply
  (Dr. GRPO, Liu et al., 2025, "Understanding R1-Zero-Like Training"), which also drops the
  division by the std (``scale="none"`` in :func:`group_advantages`): both biases the paper
  found, towards long wrong replies and towards too easy or too hard questions, removed.
  TRL divides by ``max_completion_length`` from its config; :func:`grpo_loss` takes it as
  ``max_length`` (default: the width of the batch's mask).

A group whose rewards are all equal (all right or all wrong) has advantages 0: it teaches
nothing but its KL term. :func:`group_advantages` reports the share of such groups.

As TRL: the std is the unbiased one (``torch.std``), ``eps`` = 1e-4 is added to it, the k3 term is
added to the loss per token, and the stop token is part of the reply. Where the course differs:
advantages are normalised per group only (TRL's ``scale_rewards="batch"`` is not here); the clip is
symmetric (no DAPO "clip-higher" ``epsilon_high``); :func:`grpo_train` samples with the course's
own :func:`~solutions.generate.generate`, one reply at a time, and takes one gradient step per batch
of rollouts by default (TRL's ``num_iterations=1``), so :math:`\rho = 1` and the clip only acts
with ``updates_per_batch > 1``.

This module has, in the order the chapter builds them:

* :func:`arithmetic_problems` and :func:`verifiable_reward`: a task with answers a rule can check
  (and :func:`problem_conversation`, its problems as SFT conversations for a cold start);
* :func:`group_advantages`: group-normalised advantages and the zero-variance share;
* :func:`k3_kl`: the per-token KL estimate;
* :func:`grpo_loss`: the clipped surrogate plus KL, with three aggregations;
* :func:`sample_group` and :func:`grpo_train`: sampling groups of replies, and the loop.
"""

from __future__ import annotations

import random
import re

import torch
from torch import nn

from solutions.dpo import response_mask, token_logprobs
from solutions.generate import generate
from solutions.sft import IM_END, PAD, render_chat
from solutions.train import AdamW, clip_gradients, decay_groups, lr_at

SCALES = ("std", "none")
AGGREGATIONS = ("sequence", "token", "dr_grpo")

# ---------------------------------------------------------------------------- a verifiable task

NAMES = ("Mia", "Leo", "Ava", "Sam", "Nora", "Finn", "Lily", "Omar", "Zoe", "Ben", "Ivy", "Max")
THINGS = ("apples", "marbles", "shells", "stickers", "pencils", "cookies", "stones", "buttons")
KINDS = ("recall", "add", "subtract", "give", "double")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
                "twenty")
FIRST_NUMBER = re.compile(r"\d+|\b(?:" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE)


def counted(n: int, thing: str) -> str:
    """``"3 apples"``, ``"1 apple"``: a count and a plural noun, singular for one."""
    return f"{n} {thing[:-1] if n == 1 else thing}"


def make_problem(rng: random.Random, kinds: tuple[str, ...] = KINDS) -> dict:
    """One question about a story-like sentence, its integer answer (1 to 20), and a model reply.

    Kinds: ``recall`` (two counts in the sentence, the question asks for one: reading, no
    arithmetic), ``add``, ``subtract``, ``give`` (an addition told as a gift), ``double``.
    """
    name, friend = rng.sample(NAMES, 2)
    thing, other = rng.sample(THINGS, 2)
    kind = rng.choice(kinds)
    who = name
    if kind == "recall":
        a, b = rng.sample(range(1, 11), 2)
        story = f"{name} had {counted(a, other)} and {counted(b, thing)}."
        question, answer = f"How many {thing} does {name} have?", b
    elif kind == "add":
        a, b = rng.randint(1, 10), rng.randint(1, 10)
        story = f"{name} had {counted(a, thing)} and found {b} more."
        question, answer = f"How many {thing} does {name} have now?", a + b
    elif kind == "subtract":
        a = rng.randint(2, 12)
        b = rng.randint(1, a - 1)
        story = f"{name} had {counted(a, thing)} and lost {b} of them."
        question, answer = f"How many {thing} does {name} have left?", a - b
    elif kind == "give":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        story = f"{name} had {counted(a, thing)}. Then {friend} gave {name} {counted(b, thing)}."
        question, answer = f"How many {thing} does {name} have now?", a + b
    else:
        a = rng.randint(1, 10)
        story = f"{name} had {counted(a, thing)}, and {friend} had twice as many."
        question, answer = f"How many {thing} does {friend} have?", 2 * a
        who = friend
    text = f"{story} {question}"
    return {"prompt": [{"role": "user", "content": text}], "question": text, "answer": answer, "kind": kind,
            "reply": f"{who} has {counted(answer, thing)}."}


def arithmetic_problems(n: int, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> list[dict]:
    """``n`` counting questions, deterministic from ``seed``: dicts with ``prompt`` (one user
    message, for :func:`~solutions.sft.render_chat`), ``question`` (its text), ``answer`` (an int,
    1 to 20), ``kind`` and ``reply`` (a right answer in the course's answer style, "Nora has 6
    marbles.", for a short SFT warm-up: :func:`problem_conversation`). Drawn by ``random.Random(f"grpo-arithmetic-{seed}")``: a string seed
    gives the same sequence on every Python version and machine. ``kinds``: the kinds of
    :func:`make_problem` to draw from, uniformly (``recall`` is within a small model's reach, the
    arithmetic kinds much less so)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty selection of {KINDS}, got {kinds!r}")
    rng = random.Random(f"grpo-arithmetic-{seed}")
    return [make_problem(rng, tuple(kinds)) for _ in range(n)]


def problem_conversation(problem: dict) -> dict:
    """A problem as an SFT conversation, ``{"messages": prompt + [the assistant's right reply]}``
    (``sft_example`` takes its ``"messages"``): a cold start teaching the answer's form before
    GRPO, as DeepSeek-R1 does, since a policy that never writes a number gets reward 0 on every
    sample and zero-variance groups only."""
    return {"messages": list(problem["prompt"]) + [{"role": "assistant", "content": problem["reply"]}]}


def parse_answer(reply: str) -> int | None:
    """The first integer in ``reply``: digits (``"12"``), or a number word from zero to twenty
    (``"Five"``), whichever comes first; ``None`` if there is none. (``"twenty-one"`` reads as 20:
    only single words are numbers here.)"""
    match = FIRST_NUMBER.search(reply)
    if match is None:
        return None
    word = match.group(0)
    return int(word) if word.isdigit() else NUMBER_WORDS.index(word.lower())


def verifiable_reward(reply: str, answer: int) -> float:
    """1.0 if the first integer in ``reply`` (:func:`parse_answer`) equals ``answer``, else 0.0
    (no number: 0.0). Only the first number counts, so a reply listing every number cannot win."""
    return 1.0 if parse_answer(reply) == answer else 0.0


# ---------------------------------------------------------------------------- advantages


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "std",
                     eps: float = 1e-4) -> tuple[torch.Tensor, float]:
    r"""Group-relative advantages ``(n_prompts * group_size,)`` and the share of groups with zero variance.

    ``rewards``: ``(n_prompts * group_size,)``, each prompt's replies **consecutive**
    (``rewards[g * G:(g + 1) * G]`` is group :math:`g`). Within each group,

    .. math:: A_i = \frac{r_i - \bar r_g}{s_g + \epsilon} \quad (\texttt{scale="std"}), \qquad
              A_i = r_i - \bar r_g \quad (\texttt{scale="none"}: \text{Dr. GRPO})

    with :math:`\bar r_g` the group's mean and :math:`s_g` its **unbiased** standard deviation
    (``torch.std``, as TRL), never the batch's: each prompt is its own baseline. The second value
    is the fraction of groups whose rewards are all equal: their advantages are 0 and they
    carry no policy gradient. Returns ``(advantages float32, zero_variance_fraction float)``.

    ``ValueError`` if ``rewards`` is not 1-d or empty, ``group_size < 2`` (one reply has nothing to
    be compared with, and its std is undefined), its length is not a multiple of
    ``group_size``, ``eps < 0``, or ``scale`` is unknown.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if rewards.ndim != 1 or rewards.numel() == 0:
        raise ValueError(f"rewards has shape {tuple(rewards.shape)}: give a non-empty 1-d tensor, one reward per reply")
    if not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2, got {group_size!r}: a reply is judged against the "
                         "others of its group, and a group of one has none")
    if rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}: give each prompt "
                         "exactly group_size replies, consecutive")
    grouped = rewards.float().view(-1, group_size)  # (n_prompts, G)
    mean = grouped.mean(dim=1, keepdim=True)  # (n_prompts, 1)
    advantages = grouped - mean  # (n_prompts, G)
    if scale == "std":
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)  # unbiased std, per group
    zero_variance = (grouped.amax(dim=1) == grouped.amin(dim=1)).float().mean().item()
    return advantages.reshape(-1), zero_variance  # (n_prompts * G,)


# ---------------------------------------------------------------------------- the loss


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    r"""Per-token k3 estimate of :math:`\mathrm{KL}(\pi_\theta \,\|\, \pi_{\text{ref}})`, same shape as the inputs.

    .. math:: k_3 = e^{\,d} - d - 1, \qquad d = \log\pi_{\text{ref}}(o_t) - \log\pi_\theta(o_t)

    on tokens :math:`o_t` sampled from :math:`\pi_\theta`: its expectation is the KL, and since
    :math:`e^d \ge 1 + d` it is :math:`\ge 0` for each token, 0 exactly where the two models give
    the token the same probability. The ratio is reference over policy: upside down it estimates
    a different quantity and can be negative in expectation.
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} must "
                         "have the same shape: one log-probability per sampled token under each model")
    d = ref_logprobs - logprobs  # log(pi_ref / pi)
    return torch.expm1(d) - d  # e^d - 1 - d; expm1 keeps it exact near d = 0


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float = 0.2, beta: float = 0.04,
              aggregation: str = "sequence", max_length: int | None = None) -> tuple[torch.Tensor, dict]:
    r"""The GRPO loss of a batch of sampled replies: ``(loss, stats)``.

    ``logprobs``, ``old_logprobs``, ``ref_logprobs``: ``(batch, T)``, the log-probability of each
    sampled token under the policy being trained (with gradients), the policy that sampled
    (constants) and the reference (constants; may be ``None`` when ``beta == 0``);
    ``advantages``: ``(batch,)``, one per reply; ``mask``: ``(batch, T)`` bool, True on reply
    tokens. Per token,

    .. math:: \ell_{b,t} = -\min\big(\rho_{b,t} A_b,\
        \operatorname{clip}(\rho_{b,t}, 1 - \varepsilon, 1 + \varepsilon)\, A_b\big) + \beta\, k_3(b, t),
        \qquad \rho_{b,t} = e^{\log\pi_\theta - \log\pi_{\text{old}}}

    the advantage broadcast to the reply tokens of its row only (padding gets nothing, even
    where its log-probabilities are garbage). Aggregated, with :math:`m` the mask, :math:`B` the
    batch and :math:`L` = ``max_length`` (default ``T``):

    .. math::
        \texttt{sequence}: \frac1B \sum_b \frac{\sum_t m_{b,t}\ell_{b,t}}{\max(1, \sum_t m_{b,t})}
        \qquad
        \texttt{token}: \frac{\sum_{b,t} m_{b,t}\ell_{b,t}}{\sum_{b,t} m_{b,t}}
        \qquad
        \texttt{dr\_grpo}: \frac{\sum_{b,t} m_{b,t}\ell_{b,t}}{B\,L}

    ``stats`` (Python floats): ``kl`` (mean :math:`k_3` over reply tokens; 0 without a reference),
    ``clip_fraction`` (the share of reply tokens where the clipped term is the one taken and
    differs), ``ratio_mean``.

    ``ValueError`` for shapes that differ, no reply token in the batch, ``clip_eps <= 0``,
    ``beta < 0``, ``beta > 0`` without reference log-probabilities, ``max_length`` below ``T``'s
    longest reply, or an unknown ``aggregation``.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps!r} (PPO and GRPO use 0.2)")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    if beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs the reference model's log-probabilities (or set beta=0: no KL term)")
    if logprobs.ndim != 2:
        raise ValueError(f"logprobs has shape {tuple(logprobs.shape)}: give (batch, T), one value per token")
    tensors = {"old_logprobs": old_logprobs, "mask": mask}
    if ref_logprobs is not None:
        tensors["ref_logprobs"] = ref_logprobs
    for name, t in tensors.items():
        if t.shape != logprobs.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but logprobs {tuple(logprobs.shape)}: "
                             "one value per token")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages has shape {tuple(advantages.shape)}: give one per reply, "
                         f"({logprobs.shape[0]},), broadcast to its tokens here")
    mask = mask.bool()
    n_tokens = int(mask.sum())
    if n_tokens == 0:
        raise ValueError("the mask has no reply token: nothing to train")
    lengths = mask.sum(dim=1)  # (batch,)
    if max_length is not None and max_length < int(lengths.max()):
        raise ValueError(f"max_length={max_length} is shorter than a reply of {int(lengths.max())} tokens")
    zeros = torch.zeros_like(logprobs)
    # Padding can hold anything (even NaN or -inf): select with where, never multiply by the mask,
    # and compute on values that are finite everywhere, so that no NaN reaches the gradient.
    logprobs = torch.where(mask, logprobs, zeros)  # (batch, T)
    log_ratio = logprobs - torch.where(mask, old_logprobs.detach(), zeros)  # (batch, T)
    ratio = torch.exp(log_ratio)  # (batch, T); 1 on padding
    adv = advantages.detach().float()[:, None]  # (batch, 1), broadcast along the tokens
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    per_token = -torch.minimum(unclipped, clipped)  # (batch, T)
    kl = zeros
    if ref_logprobs is not None:
        kl = torch.where(mask, k3_kl(logprobs, torch.where(mask, ref_logprobs.detach(), zeros)), zeros)  # (batch, T)
        if beta > 0:
            per_token = per_token + beta * kl
    per_token = torch.where(mask, per_token, zeros)  # (batch, T): no loss on padding
    if aggregation == "sequence":
        loss = (per_token.sum(dim=1) / lengths.clamp(min=1)).mean()
    elif aggregation == "token":
        loss = per_token.sum() / n_tokens
    else:
        loss = per_token.sum() / (logprobs.shape[0] * (max_length if max_length is not None else logprobs.shape[1]))
    with torch.no_grad():
        clip_active = (clipped < unclipped) & mask
        stats = {"kl": float(kl.sum() / n_tokens), "clip_fraction": float(clip_active.sum()) / n_tokens,
                 "ratio_mean": float(torch.where(mask, ratio, zeros).sum() / n_tokens)}
    return loss, stats


# ---------------------------------------------------------------------------- sampling and training


def sample_group(policy: nn.Module, tokenizer, prompt_ids: list[int], group_size: int, max_new_tokens: int,
                 temperature: float, generator: torch.Generator) -> list[list[int]]:
    """``group_size`` sampled replies to ``prompt_ids``, each a list of token ids. A reply that
    stopped at ``<|im_end|>`` ends with it (the policy is trained to stop, so the stop token is
    part of the reply); one cut at ``max_new_tokens`` does not."""
    end = tokenizer.encode_single_token(IM_END)
    replies = []
    for _ in range(group_size):
        reply = list(generate(policy, prompt_ids, max_new_tokens, temperature=temperature, stop_tokens={end},
                              generator=generator))
        if len(reply) < max_new_tokens:  # generation stopped at <|im_end|>, which generate does not yield
            reply.append(end)
        replies.append(reply)
    return replies


def rollout_batch(prompts: list[list[int]], replies: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt + reply rows, right-padded: ``(input_ids (n, longest), prompt_lengths (n,))``."""
    rows = [p + r for p, r in zip(prompts, replies)]
    longest = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    return input_ids, torch.tensor([len(p) for p in prompts], dtype=torch.long)


def grpo_train(policy: nn.Module, reference: nn.Module | None, problems: list[dict], group_size: int = 8,
               steps: int = 20, prompts_per_step: int = 4, beta: float = 0.04, clip_eps: float = 0.2,
               max_lr: float = 1e-5, warmup_steps: int = 0, max_new_tokens: int = 8, temperature: float = 1.0,
               aggregation: str = "sequence", scale: str = "std", updates_per_batch: int = 1,
               grad_clip: float = 1.0, tokenizer=None, seed: int = 0,
               progress: bool = False) -> dict[str, list[float]]:
    """Train ``policy`` with GRPO on ``problems`` (from :func:`arithmetic_problems`); return per-step stats.

    Each step: ``prompts_per_step`` problems (a shuffled order from ``seed``); for each,
    ``group_size`` replies sampled at ``temperature`` from the current policy (a
    ``torch.Generator`` seeded from ``seed``: two runs sample the same replies), scored by
    :func:`verifiable_reward`, turned into :func:`group_advantages`. The sampling policy's
    log-probabilities (``old``) and the reference's are computed under ``torch.no_grad()``;
    then ``updates_per_batch`` gradient steps on :func:`grpo_loss` (the first has ratio 1),
    chapter 06's AdamW with warm-up and cosine decay, clipping.

    Returns per-step lists: ``reward`` (mean over the step's replies), ``zero_variance``
    (the share of groups with equal rewards), ``kl`` (mean k3 per reply token, first update),
    ``loss``, ``clip_fraction``, ``reply_length`` (mean tokens). ``reference`` may be ``None``
    only with ``beta == 0``.
    """
    if reference is policy:
        raise ValueError("policy and reference are the same model: pass a frozen copy as the reference "
                         "(solutions.dpo.frozen_copy(policy)), taken before training")
    if reference is None and beta > 0:
        raise ValueError("beta > 0 needs a reference model")
    if not problems:
        raise ValueError("no problems to train on")
    if max_new_tokens < 1 or updates_per_batch < 1:
        raise ValueError("max_new_tokens and updates_per_batch must be >= 1")
    if tokenizer is None:
        from data import course_tokenizer
        tokenizer = course_tokenizer()
    pad_id = tokenizer.encode_single_token(PAD)
    device = next(policy.parameters()).device
    optimizer = AdamW(decay_groups(policy, 0.0), lr=max_lr, betas=(0.9, 0.95))
    order_generator = torch.Generator().manual_seed(seed)
    sample_generator = torch.Generator().manual_seed(seed + 1)
    order: list[int] = []
    keys = ("reward", "zero_variance", "kl", "loss", "clip_fraction", "reply_length")
    history: dict[str, list[float]] = {key: [] for key in keys}
    if reference is not None:
        reference.eval()
    from tqdm.auto import tqdm
    bar = tqdm(range(steps), desc="GRPO", unit="step", disable=not progress)
    for step in bar:
        if len(order) < prompts_per_step:
            order += torch.randperm(len(problems), generator=order_generator).tolist()
        n = min(prompts_per_step, len(problems))
        batch, order = [problems[i] for i in order[:n]], order[n:]
        # 1. rollouts: a group of replies per prompt, consecutive
        policy.eval()
        prompts, replies, rewards = [], [], []
        for problem in batch:
            prompt_ids = render_chat(tokenizer, problem["prompt"], add_generation_prompt=True)
            for reply in sample_group(policy, tokenizer, prompt_ids, group_size, max_new_tokens, temperature,
                                      sample_generator):
                prompts.append(prompt_ids)
                replies.append(reply)
                text = tokenizer.decode([t for t in reply if t != tokenizer.encode_single_token(IM_END)])
                rewards.append(verifiable_reward(text, problem["answer"]))
        rewards_t = torch.tensor(rewards)  # (n * G,)
        advantages, zero_variance = group_advantages(rewards_t, group_size, scale)  # (n * G,)
        input_ids, prompt_lengths = rollout_batch(prompts, replies, pad_id)
        input_ids, prompt_lengths = input_ids.to(device), prompt_lengths.to(device)
        mask = response_mask(input_ids, prompt_lengths, pad_id)  # (n * G, seq - 1)
        with torch.no_grad():  # the sampling policy and the reference are constants of the loss
            old = token_logprobs(policy(input_ids), input_ids)  # (n * G, seq - 1)
            ref = token_logprobs(reference(input_ids), input_ids) if reference is not None else None
        # 2. updates
        policy.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, max_lr, warmup_steps, steps, max_lr / 10)
        first = None
        for _ in range(updates_per_batch):
            logprobs = token_logprobs(policy(input_ids), input_ids)  # (n * G, seq - 1)
            loss, stats = grpo_loss(logprobs, old, ref, advantages.to(device), mask, clip_eps, beta, aggregation,
                                    max_length=max_new_tokens)
            loss.backward()
            clip_gradients(policy, grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if first is None:
                first = (loss.item(), stats)
        values = (rewards_t.mean().item(), zero_variance, first[1]["kl"], first[0], first[1]["clip_fraction"],
                  sum(len(r) for r in replies) / len(replies))
        for key, value in zip(keys, values):
            history[key].append(value)
        bar.set_postfix(reward=f"{values[0]:.2f}", kl=f"{values[2]:.3f}")
    policy.eval()
    return history
