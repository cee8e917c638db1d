r"""Group Relative Policy Optimization (GRPO): PPO without a value model, on a reward that can be checked.

PPO (chapter 11) needs a value model to tell a good reply from a lucky one. GRPO (Shao et al.,
2024, "DeepSeekMath"; then DeepSeek-R1) drops it: for each prompt it samples a **group** of
:math:`G` replies, scores each with a reward, and uses the group itself as the baseline,

.. math::
    A_i = \frac{r_i - \operatorname{mean}(r_1, \dots, r_G)}{\operatorname{std}(r_1, \dots, r_G) + \epsilon},

the same advantage for every token of reply :math:`i` ("outcome supervision"). The rewards
here are **verifiable**: a rule checks the answer against the truth (DeepSeek-R1's accuracy
reward), so there is no reward model to hack. The loss is PPO's clipped surrogate per token,
with the KL to the reference model added to the loss (not folded into the reward, as PPO does)
through the **k3 estimator** (Schulman, 2020, "Approximating KL divergence"), unbiased and never
negative:

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
nothing but its KL term. :func:`zero_variance_fraction` measures the share of such groups: a
task the policy never solves (pass@G = 0) gives GRPO nothing to learn from.

**The task.** Chapter 08's questions about a story (``data/instructions.py``): the SFT model
answers about three in four of them exactly right, and gets a name wrong in the others (often
the hero's name in an answer whose fact is right), so groups of sampled replies disagree. The
verifiable reward (:func:`verifiable_reward`) reads the reply's first sentence and compares it,
word for word, with the answer sentence the story's facts make.

As TRL: the std is the unbiased one (``torch.std``), ``eps`` = 1e-4 is added to it, the k3 term is
added to the loss per token, and the stop token is part of the reply. Where the course differs:
advantages are normalised per group only (TRL's ``scale_rewards="batch"`` is not here); the clip is
symmetric (no DAPO "clip-higher" ``epsilon_high``); :func:`grpo_train` samples each group in one
batch, and scores its tokens the same way (the prompt run once, its keys and values shared by the
group's rows), and takes one gradient
step per batch of rollouts by default (TRL's ``num_iterations=1``), so :math:`\rho = 1` and the clip
only acts with ``updates_per_batch > 1``.

This module has, in the order the chapter builds them:

* :func:`qa_problems`, :func:`rl_problems` and :func:`verifiable_reward`: the task (chapter 08's
  questions; new questions for training) and its rule-checked reward;
* :func:`group_advantages` and :func:`zero_variance_fraction`: group-relative advantages, and
  the share of groups that carry no gradient;
* :func:`k3_kl` and :func:`grpo_loss`: the per-token KL estimate, and the clipped surrogate
  plus KL, with three aggregations;
* :func:`sample_group`, :func:`group_token_logprobs`, :func:`grpo_train`, :func:`accuracy` and
  :func:`pass_at_k`: sampling a group of replies and scoring its tokens (the prompt run once per
  group), the loop, and the measures before and after.
"""

from __future__ import annotations

import torch
from torch import nn

from solutions.generate import generate, sample_next
from solutions.sft import IM_END, PAD, render_chat
from solutions.train import AdamW, clip_gradients, decay_groups, lr_at

SCALES = ("std", "none")
AGGREGATIONS = ("sequence", "token", "dr_grpo")

# ---------------------------------------------------------------------------- a verifiable task


def qa_problems(split: str, count: int | None = None) -> list[dict]:
    """Chapter 08's conversations (``data.instructions``) as problems: dicts with ``prompt``
    (every message but the last: the story, the question and any earlier turn), ``answer`` (the
    answer sentence, what :func:`verifiable_reward` compares with), ``fact`` (the word asked for)
    and ``task`` (what is asked)."""
    from data.instructions import load_instructions

    return [{"prompt": c["messages"][:-1], "answer": c["answer"], "fact": c["fact"], "task": c["task"]}
            for c in load_instructions(split, count)]


def rl_problems(split: str, count: int | None = None) -> list[dict]:
    """The questions of ``data.preferences``' pairs (the prompts chapters 10-12 share) as problems, in
    :func:`qa_problems`' form: ``answer`` is the pair's chosen reply, the answer sentence.

    Their stories come from other seed streams than chapter 08's, so the SFT model never trained on
    them. That is what RL needs (InstructGPT keeps separate prompt sets for SFT, the reward model
    and PPO): on its own training questions the SFT model has memorised most answers, and its wrong
    samples there are few and idiosyncratic, so a group rarely disagrees for a reason that carries
    over to new questions."""
    from data.preferences import load_preferences

    return [{"prompt": p["prompt"], "answer": p["chosen"], "fact": p["fact"], "task": p["task"]}
            for p in load_preferences(split, count)]


def verifiable_reward(reply: str, answer: str) -> float:
    """1.0 if the reply's first sentence is the answer sentence, else 0.0: a rule, not a model.

    Both texts are read the same way: surrounding whitespace ignored; the first sentence ends at
    the first ``.``, ``!`` or ``?`` followed by whitespace (or at the end of the text); its closing
    punctuation removed; its words split on whitespace. The reward is 1.0 if the two word lists are
    equal: every name of the answer right, in the right place ("Robin's best friend is Hugo."
    needs both the hero and the friend), case and accents included. What the reply says after
    its first sentence does not count (the answer is what it says first), and neither does a
    missing final period or a doubled space. An empty reply scores 0.

    ``ValueError`` if ``reply`` or ``answer`` is not a string, or ``answer`` has no word.
    """
    if not isinstance(reply, str) or not isinstance(answer, str):
        raise ValueError(f"reply and answer must be strings, got {type(reply).__name__} and {type(answer).__name__}")

    def first_sentence(text: str) -> list[str]:
        text = text.strip()
        end = len(text)
        for i, char in enumerate(text):  # the first sentence ends at . ! or ? followed by whitespace
            if char in ".!?" and (i + 1 == len(text) or text[i + 1].isspace()):
                end = i + 1
                break
        return text[:end].rstrip(".!?").split()  # without its closing punctuation, split on whitespace

    expected = first_sentence(answer)
    if not expected:
        raise ValueError(f"answer {answer!r} has no word: give the answer sentence, such as 'Robin lives in Elmford.'")
    return 1.0 if first_sentence(reply) == expected else 0.0


# ---------------------------------------------------------------------------- advantages


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "std", eps: float = 1e-4) -> torch.Tensor:
    r"""Group-relative advantages: ``(n_prompts * group_size,)`` float32.

    ``rewards``: ``(n_prompts * group_size,)``, each prompt's replies **consecutive**
    (``rewards[g * G:(g + 1) * G]`` is group :math:`g`). Within each group,

    .. math:: A_i = \frac{r_i - \bar r_g}{s_g + \epsilon} \quad (\texttt{scale="std"}), \qquad
              A_i = r_i - \bar r_g \quad (\texttt{scale="none"}: \text{Dr. GRPO})

    with :math:`\bar r_g` the group's mean and :math:`s_g` its **unbiased** standard deviation
    (``torch.std``, dividing by :math:`G - 1`, as TRL), never the whole batch's: each prompt is
    its own baseline. :math:`\epsilon` (``eps``) keeps a group of equal rewards at 0 instead of
    0 / 0. Computed in float32 whatever the rewards' dtype.

    ``ValueError`` if ``rewards`` is not 1-d or is empty, ``group_size`` is not an int >= 2 (one
    reply has nothing to be compared with, and its std is undefined), the number of rewards is
    not a multiple of ``group_size``, ``eps < 0``, or ``scale`` is not ``"std"`` or ``"none"``.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if not isinstance(rewards, torch.Tensor) or rewards.ndim != 1:
        raise ValueError("rewards must be a 1-d tensor, one reward per reply")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2, got {group_size!r}: a reply is judged against the "
                         "others of its group, and a group of one has none")
    if rewards.numel() == 0:
        raise ValueError("no rewards: an empty batch has no group")
    if rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}: give each prompt "
                         "exactly group_size replies, consecutive")
    grouped = rewards.float().view(-1, group_size)  # (n_prompts, G): row g is group g
    advantages = grouped - grouped.mean(dim=1, keepdim=True)  # (n_prompts, G)
    if scale == "std":
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)  # unbiased std, per group
    return advantages.reshape(-1)  # (n_prompts * G,)


def zero_variance_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """The share of groups whose rewards are all equal (all right, or all wrong): a Python float.

    Their advantages are 0, so they carry no policy gradient (only the KL term acts on them).
    ``rewards`` as in :func:`group_advantages` (groups consecutive); the same ``ValueError``s."""
    if not isinstance(rewards, torch.Tensor) or rewards.ndim != 1:
        raise ValueError("rewards must be a 1-d tensor, one reward per reply")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2, got {group_size!r}: a reply is judged against the "
                         "others of its group, and a group of one has none")
    if rewards.numel() == 0:
        raise ValueError("no rewards: an empty batch has no group")
    if rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}: give each prompt "
                         "exactly group_size replies, consecutive")
    grouped = rewards.view(-1, group_size)  # (n_prompts, G)
    return (grouped.amax(dim=1) == grouped.amin(dim=1)).float().mean().item()


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
    ``advantages``: ``(batch,)``, one per reply (constants); ``mask``: ``(batch, T)`` bool, True on
    reply tokens. Per token,

    .. math:: \ell_{b,t} = -\min\big(\rho_{b,t} A_b,\
        \operatorname{clip}(\rho_{b,t}, 1 - \varepsilon, 1 + \varepsilon)\, A_b\big) + \beta\, k_3(b, t),
        \qquad \rho_{b,t} = e^{\log\pi_\theta - \log\pi_{\text{old}}}

    with :func:`k3_kl`, the advantage broadcast to the reply tokens of its row only (padding gets
    nothing, even where its log-probabilities are garbage). Aggregated, with :math:`m` the mask,
    :math:`B` the batch and :math:`L` = ``max_length`` (default ``T``):

    .. math::
        \texttt{sequence}: \frac1B \sum_b \frac{\sum_t m_{b,t}\ell_{b,t}}{\sum_t m_{b,t}}
        \qquad
        \texttt{token}: \frac{\sum_{b,t} m_{b,t}\ell_{b,t}}{\sum_{b,t} m_{b,t}}
        \qquad
        \texttt{dr\_grpo}: \frac{\sum_{b,t} m_{b,t}\ell_{b,t}}{B\,L}

    ``stats``, Python floats: ``kl``, the mean :math:`k_3` over the reply tokens (0 without a
    reference); ``clip_fraction``, the share of reply tokens where the clipped term is the one
    taken (strictly below the unclipped one).

    ``ValueError`` for shapes that differ, a row without a reply token, no reply token at all,
    ``clip_eps <= 0``, ``beta < 0``, ``beta > 0`` without reference log-probabilities, ``max_length``
    below the longest reply, or an unknown ``aggregation``.
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
    lengths = mask.sum(dim=1)  # (batch,)
    if bool((lengths == 0).any()):
        raise ValueError(f"row {int((lengths == 0).nonzero()[0])} of the mask has no reply token: every sampled "
                         "reply has at least one token (its <|im_end|>)")
    n_tokens = int(lengths.sum())
    if max_length is not None and max_length < int(lengths.max()):
        raise ValueError(f"max_length={max_length} is shorter than a reply of {int(lengths.max())} tokens")
    zeros = torch.zeros_like(logprobs)
    # Padding can hold anything (even NaN or -inf): select with where, never multiply by the mask,
    # and compute on values that are finite everywhere, so that no NaN reaches the gradient.
    logprobs = torch.where(mask, logprobs, zeros)  # (batch, T)
    ratio = torch.exp(logprobs - torch.where(mask, old_logprobs.detach(), zeros))  # (batch, T); 1 on padding
    adv = advantages.detach().float()[:, None]  # (batch, 1), broadcast along the tokens
    unclipped = ratio * adv  # (batch, T)
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv  # (batch, T)
    per_token = -torch.minimum(unclipped, clipped)  # (batch, T)
    kl = zeros
    if ref_logprobs is not None:
        kl = torch.where(mask, k3_kl(logprobs, torch.where(mask, ref_logprobs.detach(), zeros)), zeros)  # (batch, T)
        if beta > 0:
            per_token = per_token + beta * kl
    per_token = torch.where(mask, per_token, zeros)  # (batch, T): no loss on padding
    if aggregation == "sequence":
        loss = (per_token.sum(dim=1) / lengths).mean()
    elif aggregation == "token":
        loss = per_token.sum() / n_tokens
    else:
        loss = per_token.sum() / (logprobs.shape[0] * (max_length if max_length is not None else logprobs.shape[1]))
    with torch.no_grad():
        stats = {"kl": float(kl.sum()) / n_tokens, "clip_fraction": float(((clipped < unclipped) & mask).sum()) / n_tokens}
    return loss, stats


# ---------------------------------------------------------------------------- sampling and training


@torch.no_grad()
def sample_group(model: nn.Module, prompt_ids: list[int], group_size: int, max_new_tokens: int, temperature: float,
                 end_id: int, pad_id: int, generator: torch.Generator | None = None) -> list[list[int]]:
    """``group_size`` replies to one prompt, sampled in one batch; each a list of token ids.

    The prompt runs once (batch 1); its keys and values (chapter 07's KV cache) are then shared by
    the group's rows, which decode side by side, one token per step, each drawn by chapter 07's
    :func:`~solutions.generate.sample_next` with one uniform number per row from ``generator``
    (``<|pad|>`` is never drawn: it would read as padding). A reply that stopped at ``end_id``
    (``<|im_end|>``) ends with it: the policy is trained to stop, so the stop token is part of the
    reply. One cut at ``max_new_tokens`` does not end with it. Decoding stops when every row has."""
    if not prompt_ids or group_size < 1 or max_new_tokens < 1 or not temperature > 0:
        raise ValueError("give a non-empty prompt, group_size >= 1, max_new_tokens >= 1 and temperature > 0")
    was_training = model.training
    model.eval()
    device = model.embed_tokens.weight.device
    caches = model.new_caches()
    logits = model(torch.tensor([prompt_ids], dtype=torch.long, device=device), caches)[:, -1]  # (1, vocab)
    for cache in caches:  # the prompt's keys and values, one copy shared by every row of the group
        cache.k, cache.v = cache.k.expand(group_size, -1, -1, -1), cache.v.expand(group_size, -1, -1, -1)
    logits = logits.expand(group_size, -1)  # (G, vocab)
    replies: list[list[int]] = [[] for _ in range(group_size)]
    done = [False] * group_size
    for _ in range(max_new_tokens):
        logits = logits.float().clone()
        logits[:, pad_id] = float("-inf")
        u = torch.rand(group_size, generator=generator)  # (G,): one draw per row, finished rows too
        tokens = sample_next(logits, temperature, None, 1.0, u.to(device))  # (G,)
        for row, token in enumerate(tokens.tolist()):
            if not done[row]:
                replies[row].append(token)
                done[row] = token == end_id
        if all(done):
            break
        logits = model(tokens[:, None], caches)[:, -1]  # (G, vocab)
    model.train(was_training)
    return replies


def group_token_logprobs(model: nn.Module, prompt_ids: list[int], replies: torch.Tensor) -> torch.Tensor:
    r"""The log-probability of each reply token of a group: ``(G, R)`` float32, differentiable.

    ``replies``: ``(G, R)`` int64, the group's replies to ``prompt_ids``, right-padded (with any
    id: the caller masks the padding). The same numbers as the log-softmax of the full rows
    ``prompt + reply`` read at the reply's tokens, computed as sampling does:
    the prompt runs once (batch 1) and its keys and values are shared by the ``G`` rows (chapter
    07's cache; gradients flow back through them, summed over the rows), so the prompt costs one
    row instead of ``G``. The prompt's last position predicts each reply's first token."""
    group, width = replies.shape
    device = model.embed_tokens.weight.device
    caches = model.new_caches()
    prompt_logits = model(torch.tensor([prompt_ids], dtype=torch.long, device=device), caches)[:, -1:]  # (1, 1, V)
    logits = [prompt_logits.expand(group, -1, -1)]
    if width > 1:
        for cache in caches:  # one copy of the prompt's keys and values for every row
            cache.k, cache.v = cache.k.expand(group, -1, -1, -1), cache.v.expand(group, -1, -1, -1)
        logits.append(model(replies[:, :-1].to(device), caches))  # (G, R - 1, V): position j predicts token j + 1
    logp = torch.log_softmax(torch.cat(logits, dim=1).float(), dim=-1)  # (G, R, V)
    return logp.gather(-1, replies.to(device).unsqueeze(-1)).squeeze(-1)  # (G, R)


def grpo_train(policy: nn.Module, reference: nn.Module | None, problems: list[dict], tokenizer=None,
               group_size: int = 8, steps: int = 20, prompts_per_step: int = 4, beta: float = 0.04,
               clip_eps: float = 0.2, max_lr: float = 1e-5, warmup_steps: int = 0, max_new_tokens: int = 16,
               temperature: float = 1.0, aggregation: str = "sequence", scale: str = "std",
               updates_per_batch: int = 1, grad_clip: float = 1.0, seed: int = 0,
               progress: bool = False) -> dict[str, list[float]]:
    """Train ``policy`` with GRPO on ``problems`` (:func:`rl_problems`); return per-step stats.

    Each step: ``prompts_per_step`` problems (a shuffled order from ``seed``); for each,
    :func:`sample_group` of ``group_size`` replies at ``temperature`` from the current policy
    (one ``torch.Generator`` seeded from ``seed``: two runs sample the same replies), scored by
    :func:`verifiable_reward`, turned into :func:`group_advantages`. Log-probabilities of the
    replies' tokens come from :func:`group_token_logprobs` (each group's prompt run once). The
    reference's are computed under ``torch.no_grad()``; so are the sampling policy's (``old``),
    except with one update per batch, where they are the first forward pass's own, detached
    (ratio 1: the same numbers, one forward pass fewer). Then ``updates_per_batch``
    gradient steps on :func:`grpo_loss`, chapter 06's AdamW (betas 0.9, 0.95, no weight decay)
    with warm-up and cosine decay to a tenth of ``max_lr``, global-norm clipping.

    Returns per-step lists: ``reward`` (mean over the step's replies), ``zero_variance``
    (:func:`zero_variance_fraction`), ``kl`` (mean k3 per reply token, first update), ``loss``,
    ``clip_fraction``, ``reply_length`` (mean tokens). ``reference`` may be ``None`` only with
    ``beta == 0``.
    """
    if reference is policy:
        raise ValueError("policy and reference are the same model: pass a frozen copy as the reference "
                         "(frozen_copy(policy)), taken before training")
    if reference is None and beta > 0:
        raise ValueError("beta > 0 needs a reference model")
    if not problems:
        raise ValueError("no problems to train on")
    if max_new_tokens < 1 or updates_per_batch < 1 or prompts_per_step < 1:
        raise ValueError("max_new_tokens, updates_per_batch and prompts_per_step must be >= 1")
    if tokenizer is None:
        from data import course_tokenizer
        tokenizer = course_tokenizer()
    pad_id, end_id = tokenizer.encode_single_token(PAD), tokenizer.encode_single_token(IM_END)
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
        while len(order) < prompts_per_step:
            order += torch.randperm(len(problems), generator=order_generator).tolist()
        batch, order = [problems[i] for i in order[:prompts_per_step]], order[prompts_per_step:]
        # 1. rollouts: a group of replies per prompt, consecutive
        prompts, replies, rewards = [], [], []
        for problem in batch:
            prompt_ids = render_chat(tokenizer, problem["prompt"], add_generation_prompt=True)
            for reply in sample_group(policy, prompt_ids, group_size, max_new_tokens, temperature, end_id, pad_id,
                                      sample_generator):
                prompts.append(prompt_ids)
                replies.append(reply)
                rewards.append(verifiable_reward(tokenizer.decode([t for t in reply if t != end_id]), problem["answer"]))
        rewards_t = torch.tensor(rewards)  # (n * G,)
        advantages = group_advantages(rewards_t, group_size, scale).to(device)  # (n * G,)
        zero_variance = zero_variance_fraction(rewards_t, group_size)
        width = max(len(r) for r in replies)
        reply_ids = torch.full((len(replies), width), pad_id, dtype=torch.long)  # (n * G, R), right-padded
        for row, reply in enumerate(replies):
            reply_ids[row, : len(reply)] = torch.tensor(reply, dtype=torch.long)
        mask = (torch.arange(width)[None, :] < torch.tensor([len(r) for r in replies])[:, None]).to(device)  # (n * G, R)
        groups = [(prompts[g * group_size], slice(g * group_size, (g + 1) * group_size)) for g in range(len(batch))]

        def logprobs_of(model):  # (n * G, R): each group's prompt run once
            return torch.cat([group_token_logprobs(model, prompt, reply_ids[rows]) for prompt, rows in groups])

        with torch.no_grad():  # the reference and the sampling policy are constants of the loss
            ref = logprobs_of(reference) if reference is not None else None
            old = logprobs_of(policy) if updates_per_batch > 1 else None
        # 2. updates
        policy.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, max_lr, warmup_steps, steps, max_lr / 10)
        first = None
        for _ in range(updates_per_batch):
            logprobs = logprobs_of(policy)  # (n * G, R)
            loss, stats = grpo_loss(logprobs, logprobs.detach() if old is None else old, ref, advantages, mask,
                                    clip_eps, beta, aggregation, max_length=max_new_tokens)
            loss.backward()
            clip_gradients(policy, grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if first is None:
                first = (loss.item(), stats)
        policy.eval()
        values = (rewards_t.mean().item(), zero_variance, first[1]["kl"], first[0], first[1]["clip_fraction"],
                  sum(len(r) for r in replies) / len(replies))
        for key, value in zip(keys, values):
            history[key].append(value)
        bar.set_postfix(reward=f"{values[0]:.2f}", kl=f"{values[2]:.3f}")
    return history


# ---------------------------------------------------------------------------- measures


@torch.no_grad()
def accuracy(model: nn.Module, tokenizer, problems: list[dict], max_new_tokens: int = 16,
             progress: bool = False) -> tuple[float, float, list[str]]:
    """Greedy answers to ``problems``: ``(reward accuracy, fact named, replies)``.

    The reward accuracy is the mean :func:`verifiable_reward` (the answer sentence right); "fact
    named" is chapter 08's looser measure, the share of replies that name the asked fact as a
    whole word anywhere."""
    from data.corpus import mentions
    from tqdm.auto import tqdm

    end_id = tokenizer.encode_single_token(IM_END)
    was_training = model.training
    model.eval()
    replies = []
    for problem in tqdm(problems, desc="answering", unit="question", disable=not progress, leave=False):
        prompt_ids = render_chat(tokenizer, problem["prompt"], add_generation_prompt=True)
        replies.append(tokenizer.decode(list(generate(model, prompt_ids, max_new_tokens, stop_tokens={end_id}))).strip())
    model.train(was_training)
    n = max(len(problems), 1)
    right = sum(verifiable_reward(r, p["answer"]) for r, p in zip(replies, problems)) / n
    fact = sum(mentions(r, p["fact"]) for r, p in zip(replies, problems)) / n
    return right, fact, replies


@torch.no_grad()
def pass_at_k(model: nn.Module, tokenizer, problems: list[dict], k: int = 8, max_new_tokens: int = 16,
              temperature: float = 1.0, seed: int = 0, progress: bool = False) -> tuple[float, float, float]:
    """``k`` sampled replies per problem (:func:`sample_group`): ``(pass@k, mean reward, zero-variance share)``.

    pass@k is the share of problems with at least one right reply among the ``k`` (the problems
    GRPO can learn from: the others have all-zero groups), the mean reward is pass@1 estimated from
    the samples, and the zero-variance share is the share of those groups whose rewards are all equal."""
    from tqdm.auto import tqdm

    end_id, pad_id = tokenizer.encode_single_token(IM_END), tokenizer.encode_single_token(PAD)
    generator = torch.Generator().manual_seed(seed)
    rewards = []
    for problem in tqdm(problems, desc=f"pass@{k}", unit="question", disable=not progress, leave=False):
        prompt_ids = render_chat(tokenizer, problem["prompt"], add_generation_prompt=True)
        for reply in sample_group(model, prompt_ids, k, max_new_tokens, temperature, end_id, pad_id, generator):
            rewards.append(verifiable_reward(tokenizer.decode([t for t in reply if t != end_id]), problem["answer"]))
    grouped = torch.tensor(rewards).view(-1, k)  # (n, k)
    zero = (grouped.amax(dim=1) == grouped.amin(dim=1)).float().mean().item()
    return (grouped.amax(dim=1) > 0).float().mean().item(), grouped.mean().item(), zero
