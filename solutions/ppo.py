r"""PPO for a language model: rollouts, per-token KL rewards, GAE, clipped policy and value losses.

After the reward model (chapter 10), RLHF optimises the SFT policy :math:`\pi_\theta` to write
replies that the reward model :math:`r_\phi` scores highly, **without drifting far** from the
SFT model :math:`\pi_{\text{ref}}` (a frozen copy), whose distribution the reward model was
trained on (Ziegler et al., 2019; Stiennon et al., 2020; Ouyang et al., 2022, "InstructGPT"):

.. math::
    \max_\theta \; \mathbb{E}_{x,\, y \sim \pi_\theta(\cdot \mid x)}\big[r_\phi(x, y)\big]
        - \beta\, \mathrm{KL}\big(\pi_\theta(\cdot \mid x) \,\|\, \pi_{\text{ref}}(\cdot \mid x)\big)

Writing a reply is a sequence of **actions** (one per token :math:`y_t`) from **states**
(the prompt and the tokens so far, :math:`s_t = (x, y_{<t})`). The KL is spread over the
tokens and the reward model's score arrives once, at the last token:

.. math::
    r_t = -\beta \, \widehat{\mathrm{KL}}_t + [t = T - 1]\; r_\phi(x, y), \qquad
    \widehat{\mathrm{KL}}_t = \log \pi_\theta(y_t \mid s_t) - \log \pi_{\text{ref}}(y_t \mid s_t)

and PPO (Schulman et al., 2017) improves the policy on these rewards with a learned value
:math:`V(s_t)`, generalized advantage estimation (GAE, Schulman et al., 2016) and clipped
surrogate losses, a few epochs over each batch of samples.

Conventions follow TRL's ``PPOTrainer`` and "The N Implementation Details of RLHF with PPO"
(Huang, Liu & von Werra, 2023, a reproduction of OpenAI's lm-human-preferences): the penalty
``-kl_coef * kl`` at every response token with the score added at the last one; GAE computed
backwards with the value after the last token 0; advantages whitened over the real tokens of
the whole batch; the value loss ``0.5 * max((v - R)^2, (clip(v, v_old ± eps_v) - R)^2)``; the
policy loss ``max(-A ratio, -A clip(ratio, 1 ± eps))``; ``approxkl = 0.5 mean((log ratio)^2)``; token-level
means over the mask; the sampling temperature also divides the logits whose log-probabilities
are scored (Huang et al.'s detail: else the ratio compares two different distributions).
Where the course differs, the function says so; in short:

* one network: the value head sits on the **policy's** final hidden states, starting at zero
  (lm-human-preferences as Huang et al. 2023 describe it; TRL's older
  ``AutoModelForCausalLMWithValueHead``), not a separate value model initialised from the
  reward model (InstructGPT; TRL's current trainer; "The N+ Implementation Details", Huang et
  al., 2024): half the CPU time (see :class:`PolicyWithValue`);
* advantages are whitened over the whole rollout batch (TRL), not per minibatch
  (lm-human-preferences);
* a fixed KL coefficient :math:`\beta` (TRL's current trainer), not the adaptive controller
  of Ziegler et al. that lm-human-preferences uses; no reward whitening (TRL's default);
* ``<|pad|>`` is never sampled, and its logit is removed from the scored distribution too;
* statistics such as clipfrac and approx-KL are masked means over the real tokens (TRL takes
  some of them over the padded tensor, where its log-ratio is 0).

"Secrets of RLHF" (Zheng et al., 2023) assembles "PPO-max" from such choices (among them
score normalisation and clipping, advantage whitening, a token-level KL penalty, gradient
clipping and a critic initialised from the reward model); the course keeps the token-level
KL penalty, advantage whitening, value clipping and gradient clipping, and leaves score
normalisation (chapter 10's :func:`~solutions.reward.normalize_rewards`) to the caller.

This module has, in the order the chapter builds them:

* :func:`kl_penalty`: per-token KL estimates k1, k2, k3;
* :func:`per_token_rewards`: ``-beta * kl`` everywhere, plus the score at the last real token;
* :func:`masked_mean`, :func:`masked_var`, :func:`masked_whiten`: statistics over real tokens;
* :func:`gae`: advantages and returns, computed backwards;
* :func:`policy_loss` and :func:`value_loss`: PPO's clipped losses;
* :func:`response_logprobs` (and :func:`logprobs_from_logits`): log-probabilities of reply tokens;
* :class:`PolicyWithValue`, :func:`sample_reply`, :func:`rollout`: the policy with its value
  head, and a batch of sampled replies with everything PPO needs recorded;
* :func:`ppo_step` and :func:`train_ppo`: PPO epochs over a rollout, and the loop.

Tensors over replies are ``(batch, resp_len)``: row ``b``'s ``j``-th reply token at column
``j``, padded on the right, with a float ``mask`` that is 1 on reply tokens and 0 after.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from solutions.generate import sample_next
from solutions.model import Transformer
from solutions.reward import hidden_states
from solutions.sft import IM_END, PAD, render_chat
from solutions.train import AdamW, clip_gradients, decay_groups

KL_KINDS = ("k1", "k2", "k3")


# ---------------------------------------------------------------------------- checks


def _check_same_shape(**tensors: torch.Tensor) -> None:
    """``ValueError`` naming the tensors if they are not all 2-d of one shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if any(len(s) != 2 for s in shapes.values()) or len(set(shapes.values())) != 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"{listed}: each must be (batch, resp_len), one number per reply token, all the same shape")


def _check_mask(mask: torch.Tensor) -> None:
    """``ValueError`` unless ``mask`` is 0/1, right-padded (ones, then zeros) and no row is empty."""
    if mask.ndim != 2:
        raise ValueError(f"mask has shape {tuple(mask.shape)}: it must be (batch, resp_len)")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold only 0 and 1 (1 on reply tokens, 0 on padding)")
    lengths = mask.sum(dim=1)  # (batch,)
    if bool((lengths == 0).any()):
        row = int((lengths == 0).nonzero()[0])
        raise ValueError(f"row {row} of the mask has no reply token: a reply needs at least one token (its score "
                         "goes on the last one); leave that row out of the batch")
    columns = torch.arange(mask.shape[1], device=mask.device)  # (resp_len,)
    if bool((mask.bool() != (columns < lengths[:, None])).any()):
        raise ValueError("a row of the mask has a 0 before a 1: reply tokens come first and padding after "
                         "(pad on the right)")


def _check_unit_interval(**values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise ValueError(f"{name}={value!r}: it must be a number in [0, 1] (a discount or a GAE weight)")


# ---------------------------------------------------------------------------- KL and rewards


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    r"""Per-token estimates of :math:`\mathrm{KL}(\pi_\theta \| \pi_{\text{ref}})` from sampled tokens.

    With :math:`y \sim \pi_\theta`, :math:`\log\pi = ` ``logprobs`` and
    :math:`\log\pi_{\text{ref}} = ` ``ref_logprobs`` of the sampled tokens, and
    :math:`\rho = \pi_{\text{ref}}(y) / \pi_\theta(y)` (Schulman, "Approximating KL
    divergence", 2020):

    .. math::
        k_1 = \log\pi(y) - \log\pi_{\text{ref}}(y) = -\log\rho, \qquad
        k_2 = \tfrac12 \big(\log\pi(y) - \log\pi_{\text{ref}}(y)\big)^2, \qquad
        k_3 = (\rho - 1) - \log\rho

    :math:`k_1` is unbiased but can be negative on a single token; :math:`k_3` is unbiased
    too (:math:`\mathbb{E}_\pi[\rho] = 1`) and never negative (:math:`\log\rho \le \rho - 1`),
    with less variance; :math:`k_2` is biased (its mean is close to the KL when the two are
    close). TRL's ``kl_estimator`` offers ``"k1"`` (its default) and ``"k3"``.

    ``logprobs``, ``ref_logprobs``: the same shape, any; returns that shape (padding is not
    masked here). ``ValueError`` for another ``kind`` or different shapes.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kind={kind!r}: choose one of {KL_KINDS}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} must have "
                         "the same shape: one log-probability per sampled token under each model")
    log_ratio = logprobs - ref_logprobs  # log pi - log pi_ref
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    log_rho = -log_ratio  # log(pi_ref / pi)
    return torch.expm1(log_rho) - log_rho  # (rho - 1) - log rho, expm1 exact near rho = 1


def per_token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, beta: float, kind: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    r"""The reward of each reply token: ``(rewards, kl)``, both ``(batch, resp_len)``, 0 on padding.

    .. math::
        r_{b,t} = -\beta\, \widehat{\mathrm{KL}}_{b,t} + [t = T_b - 1]\; s_b

    where :math:`T_b` is row :math:`b`'s number of reply tokens, :math:`s_b` the reward
    model's score of the whole reply (``scores``, ``(batch,)``) and
    :math:`\widehat{\mathrm{KL}}` the :func:`kl_penalty` of ``kind``. The score is a verdict on
    the finished reply, so it is earned **once**, by the last action (the one that ended the
    reply, ``<|im_end|>``), as in TRL's ``PPOTrainer`` and OpenAI's lm-human-preferences; the
    penalty is paid by every token. Returned ``kl`` is the per-token estimate (masked), to log.

    ``mask``: ``(batch, resp_len)``, 1 on reply tokens, right-padded. ``ValueError`` for
    ``beta < 0`` (a negative coefficient would *reward* drifting from the reference), shapes
    that do not match, or a mask row with no reply token.
    """
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta={beta!r}: the KL coefficient must be a finite number >= 0 (0 turns the penalty off)")
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    if scores.shape != (mask.shape[0],):
        raise ValueError(f"scores has shape {tuple(scores.shape)}: give one score per reply, ({mask.shape[0]},)")
    _check_mask(mask)
    mask = mask.to(logprobs.dtype)
    kl = kl_penalty(logprobs, ref_logprobs, kind) * mask  # (batch, resp_len)
    rewards = -beta * kl  # (batch, resp_len)
    last = mask.sum(dim=1).long() - 1  # (batch,) index of each row's last reply token
    rows = torch.arange(mask.shape[0], device=mask.device)  # (batch,)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards, kl


# ---------------------------------------------------------------------------- masked statistics


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    r""":math:`\sum_i m_i x_i / \sum_i m_i`: the mean of ``x`` over the positions where ``mask`` is 1.

    Over every element (``dim=None``, 0-d result) or along ``dim``. ``ValueError`` if the
    shapes differ or the mask selects nothing (a mean of no tokens is 0 / 0).
    """
    if x.shape != mask.shape:
        raise ValueError(f"x {tuple(x.shape)} and mask {tuple(mask.shape)} must have the same shape")
    mask = mask.to(x.dtype)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    if bool((count == 0).any()):
        raise ValueError("the mask selects no element: a mean over no tokens is 0 / 0")
    return (x * mask).sum() / count if dim is None else (x * mask).sum(dim=dim) / count


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    r"""The variance of ``x`` over the positions where ``mask`` is 1 (0-d).

    .. math:: \sigma^2 = \frac{n}{n - 1} \cdot \frac{\sum_i m_i (x_i - \mu)^2}{n}, \qquad n = \sum_i m_i

    **unbiased** (Bessel's :math:`n / (n - 1)`) by default, as TRL's ``masked_var``;
    ``unbiased=False`` divides by :math:`n`. ``ValueError`` if the mask selects nothing, or
    one element when unbiased (a spread needs two).
    """
    mean = masked_mean(x, mask)
    variance = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        if float(n) < 2:
            raise ValueError("the mask selects one element: an unbiased variance needs at least two")
        variance = variance * n / (n - 1)
    return variance


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    r"""``x`` scaled to unit variance (and shifted to mean 0) with statistics of the real tokens only.

    .. math:: \tilde x_i = \frac{x_i - \mu}{\sqrt{\sigma^2 + \epsilon}}
        \quad\text{(or } \frac{x_i - \mu}{\sqrt{\sigma^2 + \epsilon}} + \mu \text{ without the shift)}

    with :math:`\mu` = :func:`masked_mean`, :math:`\sigma^2` = :func:`masked_var` (unbiased),
    as TRL's ``masked_whiten``. Padding must not enter :math:`\mu` or :math:`\sigma`: a batch of
    short replies has many padded zeros, which would pull the mean towards 0 and shrink the
    spread. Unlike TRL, the result is 0 on padding (TRL fills it afterwards), so that nothing
    computed on padding can leak into a loss. Returns ``x``'s shape.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


# ---------------------------------------------------------------------------- advantages


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Generalized advantage estimation: ``(advantages, returns)``, both ``(batch, resp_len)``, 0 on padding.

    .. math::
        \delta_t = r_t + \gamma V_{t+1} - V_t, \qquad
        A_t = \delta_t + \gamma\lambda A_{t+1} = \sum_{l \ge 0} (\gamma\lambda)^l \delta_{t+l}, \qquad
        R_t = A_t + V_t

    computed **backwards**, from each row's last reply token to its first: :math:`A_t` needs
    :math:`A_{t+1}`. After the last token the reply is finished (a terminal state), so
    :math:`V_{T} = 0` and :math:`A_{T} = 0`: the values and rewards the model has on padding
    are never read. :math:`\lambda = 1` gives the Monte-Carlo advantage (return minus value),
    :math:`\lambda = 0` the one-step TD error. ``returns`` are the value head's targets
    (TRL's ``returns = advantages + values``, before the advantages are whitened).

    ``rewards`` (from :func:`per_token_rewards`), ``values`` (the value head at each reply
    token's state, recorded at rollout): ``(batch, resp_len)``; ``mask``: 1 on reply tokens,
    right-padded. ``ValueError`` if ``gamma`` or ``lam`` is outside [0, 1], the shapes differ,
    or a mask row is empty.
    """
    _check_unit_interval(gamma=gamma, lam=lam)
    _check_same_shape(rewards=rewards, values=values, mask=mask)
    _check_mask(mask)
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask  # (batch, resp_len): padding read as 0
    advantages = torch.zeros_like(values)  # (batch, resp_len)
    next_value = torch.zeros_like(values[:, 0])  # (batch,) V_{t+1}: 0 after the last token
    next_advantage = torch.zeros_like(values[:, 0])  # (batch,) A_{t+1}
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (batch,)
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]  # 0 on padding
        next_value, next_advantage = values[:, t], advantages[:, t]
    returns = (advantages + values) * mask  # (batch, resp_len)
    return advantages, returns


# ---------------------------------------------------------------------------- the losses


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_eps: float = 0.2) -> tuple[torch.Tensor, float, float]:
    r"""PPO's clipped surrogate loss: ``(loss, clipfrac, approx_kl)``.

    .. math::
        \rho_t = \exp\big(\log\pi_\theta(y_t) - \log\pi_{\text{old}}(y_t)\big), \qquad
        \mathcal{L} = \frac{1}{\sum m} \sum_t m_t \max\big(-A_t \rho_t,\;
            -A_t \operatorname{clip}(\rho_t, 1 - \epsilon, 1 + \epsilon)\big)

    the negative of PPO's objective :math:`\min(\rho A, \operatorname{clip}(\rho) A)`: once
    the ratio has moved past :math:`1 \pm \epsilon` in the direction the advantage favours, the
    clipped term is constant and the token gives no more gradient. A **token-level** mean over
    the mask (TRL's ``masked_mean``): long replies weigh more than short ones.

    ``loss``: 0-d, to backpropagate (through ``logprobs`` only). ``clipfrac``: the share of
    real tokens where the clipped term is the larger (TRL's ``pg_clipfrac``).
    ``approx_kl``: :math:`\tfrac12 \operatorname{mean}((\log\rho)^2)` over real tokens (TRL's
    ``approxkl``, the k2 estimate of the old policy's distance from the new). Both Python floats.
    ``old_logprobs`` and ``advantages`` come from the rollout (no gradient).
    ``ValueError`` for ``clip_eps <= 0``, shapes that differ, or an empty mask row.
    """
    if not (isinstance(clip_eps, (int, float)) and clip_eps > 0):
        raise ValueError(f"clip_eps={clip_eps!r}: the clipping range must be a number > 0 (PPO uses 0.1 to 0.3)")
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    _check_mask(mask)
    log_ratio = logprobs - old_logprobs.detach()  # (batch, resp_len)
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    unclipped = -advantages * ratio  # (batch, resp_len)
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask).item()
    approx_kl = (0.5 * masked_mean(log_ratio.detach() ** 2, mask)).item()
    return loss, clipfrac, approx_kl


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_eps_v: float = 0.2) -> tuple[torch.Tensor, float]:
    r"""The clipped value loss: ``(loss, clipfrac)``.

    .. math::
        V^{\text{clip}}_t = V^{\text{old}}_t + \operatorname{clip}(V_t - V^{\text{old}}_t, -\epsilon_v, \epsilon_v),
        \qquad
        \mathcal{L}_V = \frac12 \cdot \frac{1}{\sum m} \sum_t m_t
            \max\big((V_t - R_t)^2,\; (V^{\text{clip}}_t - R_t)^2\big)

    The new value may move at most :math:`\epsilon_v` from the **old** value (the one recorded
    at rollout), as the policy's ratio may move at most :math:`\epsilon` from 1; the max makes
    it pessimistic. Clipping around the *returns* instead would bound the error, not the step.
    The factor :math:`\tfrac12` and the token-level mean are TRL's (``vf_loss``).

    ``loss``: 0-d, to backpropagate through ``values``. ``clipfrac``: the share of real tokens
    where the clipped error is the larger (TRL's ``vf_clipfrac``), a float. ``ValueError`` for
    ``clip_eps_v <= 0``, shapes that differ, or an empty mask row.
    """
    if not (isinstance(clip_eps_v, (int, float)) and clip_eps_v > 0):
        raise ValueError(f"clip_eps_v={clip_eps_v!r}: the value clipping range must be a number > 0 (TRL: 0.2)")
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    _check_mask(mask)
    old_values, returns = old_values.detach(), returns.detach()
    clipped_values = old_values + torch.clamp(values - old_values, -clip_eps_v, clip_eps_v)  # (batch, resp_len)
    error = (values - returns) ** 2
    error_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(error, error_clipped), mask)
    clipfrac = masked_mean((error_clipped > error).to(values.dtype), mask).item()
    return loss, clipfrac


# ---------------------------------------------------------------------------- log-probabilities


def response_index(input_ids: torch.Tensor, prompt_lengths: torch.Tensor, pad_id: int,
                   width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Where each reply token is scored: ``(index, mask)``, both ``(batch, resp_len)``.

    Row ``b``'s ``j``-th reply token sits at position :math:`P_b + j` (``P`` = ``prompt_lengths``)
    and is predicted by the logits at position :math:`P_b + j - 1`: ``index`` holds those
    positions (clamped into range on padding), ``mask`` is 1.0 on reply tokens. The value of
    the state before that token is read at the same position. ``resp_len`` is the longest
    reply, or ``width`` if given (a minibatch keeps its batch's width).
    ``ValueError`` for left or inner padding, a prompt of no token, or a row with no reply token.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}: it must be (batch, seq)")
    prompt_lengths = torch.as_tensor(prompt_lengths, device=input_ids.device)
    if prompt_lengths.shape != input_ids.shape[:1]:
        raise ValueError(f"prompt_lengths has shape {tuple(prompt_lengths.shape)}, but there are "
                         f"{input_ids.shape[0]} sequences: give one prompt length per row")
    real = input_ids != pad_id  # (batch, seq)
    n_real = real.sum(dim=1)  # (batch,)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (seq,)
    if bool((real != (positions < n_real[:, None])).any()):
        raise ValueError("a row has a pad token before a real token: pad on the right, so that each sequence's "
                         "real tokens come first")
    if bool((prompt_lengths < 1).any()):
        raise ValueError("a prompt has no token: the first reply token must be predicted from something")
    reply_lengths = n_real - prompt_lengths  # (batch,)
    if bool((reply_lengths < 1).any()):
        row = int((reply_lengths < 1).nonzero()[0])
        raise ValueError(f"row {row} has no reply token after its prompt of {int(prompt_lengths[row])}: "
                         "leave it out (there is no action to score)")
    width = int(reply_lengths.max()) if width is None else width
    if width < int(reply_lengths.max()):
        raise ValueError(f"width={width} is shorter than the longest reply ({int(reply_lengths.max())} tokens)")
    columns = torch.arange(width, device=input_ids.device)  # (resp_len,)
    mask = (columns[None, :] < reply_lengths[:, None]).float()  # (batch, resp_len)
    index = (prompt_lengths[:, None] - 1 + columns[None, :]).clamp(max=input_ids.shape[1] - 2)  # (batch, resp_len)
    return index, mask


def logprobs_from_logits(logits: torch.Tensor, input_ids: torch.Tensor, prompt_lengths: torch.Tensor, pad_id: int,
                         temperature: float = 1.0, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Log-probabilities of the reply tokens given the logits of every position: ``(logprobs, mask)``.

    .. math:: \log\pi(y_t \mid s_t) = \log\operatorname{softmax}(z_{P + t - 1} / \tau)_{y_t}

    ``logits``: ``(batch, seq, vocab)`` for ``input_ids`` ``(batch, seq)`` (right-padded with
    ``pad_id``); the logits at position :math:`p` score the token at :math:`p + 1`. Divided by
    the sampling temperature :math:`\tau` (the distribution the tokens were drawn from), with
    ``<|pad|>``'s logit removed (:func:`sample_reply` never draws it). Computed in float32.
    Returns ``(batch, resp_len)`` log-probabilities, 0 on padding, and the mask (see
    :func:`response_index`).
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r}: PPO scores a stochastic policy, so it must be > 0")
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be (batch, seq, vocab) for input_ids "
                         f"{tuple(input_ids.shape)}")
    index, mask = response_index(input_ids, prompt_lengths, pad_id, width)  # (batch, resp_len) each
    z = logits[:, :-1].float() / temperature  # (batch, seq - 1, vocab): position p scores token p + 1
    z = z.index_fill(-1, torch.tensor([pad_id], device=z.device), float("-inf"))
    # Padding's targets are pad (log-probability -inf once removed, and -inf * 0 is NaN): read
    # token 0 there instead; those positions are masked out below anyway.
    targets = input_ids[:, 1:].masked_fill(input_ids[:, 1:] == pad_id, 0)  # (batch, seq - 1)
    token_logprobs = torch.log_softmax(z, dim=-1).gather(-1, targets[..., None]).squeeze(-1)  # (batch, seq - 1)
    logprobs = token_logprobs.gather(1, index)  # (batch, resp_len)
    return torch.where(mask.bool(), logprobs, torch.zeros_like(logprobs)), mask


def response_logprobs(model: nn.Module, input_ids: torch.Tensor, prompt_lengths: torch.Tensor, pad_id: int,
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logprobs, mask)`` of each reply token under ``model`` (a course ``Transformer``):
    :func:`logprobs_from_logits` of ``model(input_ids)``. Both ``(batch, resp_len)``, 0 on padding."""
    return logprobs_from_logits(model(input_ids), input_ids, prompt_lengths, pad_id, temperature)


# ---------------------------------------------------------------------------- the policy and its value head


class PolicyWithValue(nn.Module):
    r"""The policy (a course ``Transformer``) and a scalar **value head** on its final hidden states.

    ``forward(input_ids)`` -> ``(logits (batch, seq, vocab), values (batch, seq))``, from one
    pass through the backbone: the LM head and ``value_head = nn.Linear(dim, 1)`` read the
    same hidden states (TRL's ``AutoModelForCausalLMWithValueHead``). The value at position
    :math:`p` is :math:`V` of the state "everything up to :math:`p`", the state from which the
    token at :math:`p + 1` is chosen.

    The head starts at **zero** (weight and bias), as lm-human-preferences' value head does
    (Huang et al., 2023): every value is 0 at first, so the first advantages are the plain
    rewards-to-go, and the value loss does not push random gradients into the policy's
    backbone before the head has learned anything. The reward model's head is no better a
    start on this backbone: it was trained on another one (the base model, not the SFT
    model), and it scores whole replies, not partial ones. InstructGPT, TRL's current
    ``PPOTrainer`` and Huang et al. (2024) instead train a separate value network initialised
    from the whole reward model: values that start informative, twice the compute. Sharing
    the backbone also means the value loss moves the policy's weights (``vf_coef`` keeps
    that small).
    """

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model
        self.value_head = nn.Linear(model.cfg.dim, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = hidden_states(self.model, input_ids)  # (batch, seq, dim)
        logits = self.model.lm_head(hidden)  # (batch, seq, vocab)
        values = self.value_head(hidden).squeeze(-1).float()  # (batch, seq)
        return logits, values

    def response_outputs(self, input_ids: torch.Tensor, prompt_lengths: torch.Tensor, pad_id: int,
                         temperature: float = 1.0, width: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logprobs, values, mask)`` of the reply tokens, each ``(batch, resp_len)``, 0 on padding."""
        logits, values = self(input_ids)  # (batch, seq, vocab), (batch, seq)
        logprobs, mask = logprobs_from_logits(logits, input_ids, prompt_lengths, pad_id, temperature, width)
        index, _ = response_index(input_ids, prompt_lengths, pad_id, width)  # (batch, resp_len)
        return logprobs, values.gather(1, index) * mask, mask


def ppo_models(sft_model: Transformer) -> tuple[PolicyWithValue, Transformer]:
    """``(policy, reference)``: two copies of ``sft_model``, the first with a zero value head
    (to train), the second frozen (``requires_grad`` off, eval mode) for the KL penalty."""
    policy = PolicyWithValue(copy.deepcopy(sft_model))
    reference = copy.deepcopy(sft_model).eval()
    reference.requires_grad_(False)
    return policy, reference


# ---------------------------------------------------------------------------- rollouts


@torch.no_grad()
def sample_reply(model: Transformer, prompt_ids: list[int], max_new_tokens: int, temperature: float, stop_id: int,
                 banned_ids: tuple[int, ...] = (), generator: torch.Generator | None = None) -> tuple[list[int], bool]:
    """One reply to ``prompt_ids``, sampled with chapter 07's KV cache and :func:`~solutions.generate.sample_next`:
    ``(tokens, finished)``.

    Each step removes ``banned_ids`` (``<|pad|>``: it would read as padding), divides by
    ``temperature`` and draws with one ``torch.rand(1, generator=generator)``. It stops after
    ``stop_id`` (``<|im_end|>``), which **is** part of the reply (the action that ends it,
    where the reward model reads its score), with ``finished`` True; or after
    ``max_new_tokens`` tokens with ``finished`` False (a truncated reply).
    """
    caches = model.new_caches()
    new = torch.tensor([prompt_ids], dtype=torch.long, device=model.embed_tokens.weight.device)  # (1, prompt_len)
    reply: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(new, caches)[:, -1].float()  # (1, vocab)
        if banned_ids:
            logits[:, list(banned_ids)] = float("-inf")
        token = sample_next(logits, temperature, None, 1.0, torch.rand(1, generator=generator))  # (1,)
        reply.append(int(token))
        if int(token) == stop_id:
            return reply, True
        new = token.view(1, 1)  # (1, 1)
    return reply, False


@dataclass
class Rollout:
    """A batch of sampled replies and what PPO needs of them (all recorded without gradients).

    ``input_ids`` ``(batch, seq)``: prompt + reply, right-padded with ``<|pad|>``;
    ``prompt_lengths`` ``(batch,)``; ``mask``, ``logprobs`` (the policy's at sampling time,
    "old"), ``ref_logprobs``, ``values`` ``(batch, resp_len)``; ``scores`` ``(batch,)``, the
    reward model's; ``finished`` ``(batch,)`` bool, whether the reply ended with the stop token.
    """

    input_ids: torch.Tensor
    prompt_lengths: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    finished: torch.Tensor


@torch.no_grad()
def rollout(policy: PolicyWithValue, reference: Transformer, reward_model: nn.Module, prompt_ids: list[list[int]],
            max_new_tokens: int, temperature: float, stop_id: int, pad_id: int,
            generator: torch.Generator | None = None) -> Rollout:
    """Sample one reply to each prompt in ``prompt_ids`` and record a :class:`Rollout`.

    In order, one prompt at a time, :func:`sample_reply` from ``policy.model`` (``<|pad|>``
    banned, stop after ``stop_id``, which stays in the reply, all draws from ``generator``);
    the sequences ``prompt + reply`` right-padded with ``pad_id`` into ``input_ids``
    ``(batch, seq)``. Then one forward pass each, on the whole batch: the policy's
    log-probabilities and values (:meth:`PolicyWithValue.response_outputs`, recomputed rather
    than kept from sampling, so that the first PPO minibatch sees a ratio of exactly 1), the
    reference model's log-probabilities (:func:`response_logprobs`), both at the sampling
    ``temperature`` (the distribution the tokens were drawn from), and the reward model's
    score of each whole sequence, ``reward_model(input_ids, prompt_lengths)`` (chapter 10's
    :class:`~solutions.reward.RewardModel`, read at the last real token; any callable that
    maps those to ``(batch,)`` scores will do, such as one that normalises them).

    ``ValueError`` if ``temperature <= 0``, ``max_new_tokens < 1``, ``prompt_ids`` is empty
    or holds an empty prompt, or a prompt plus ``max_new_tokens`` does not fit the context.
    """
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature={temperature!r}: PPO samples from the policy, so it must be > 0")
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: a reply needs room for at least one token")
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("no prompts, or an empty one: a rollout answers at least one prompt of at least one token")
    model = policy.model
    was_training = policy.training
    policy.eval()
    sequences, finished = [], []
    for prompt in prompt_ids:
        if len(prompt) + max_new_tokens > model.cfg.max_seq_len:
            raise ValueError(f"a prompt of {len(prompt)} tokens plus max_new_tokens={max_new_tokens} does not fit "
                             f"the context of {model.cfg.max_seq_len}: shorten the prompt or ask for fewer tokens")
        reply, done = sample_reply(model, list(prompt), max_new_tokens, temperature, stop_id, (pad_id,), generator)
        sequences.append(list(prompt) + reply)
        finished.append(done)
    longest = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)  # (batch, seq)
    for b, seq in enumerate(sequences):
        input_ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    prompt_lengths = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)  # (batch,)
    logprobs, values, mask = policy.response_outputs(input_ids, prompt_lengths, pad_id, temperature)
    ref_logprobs, _ = response_logprobs(reference, input_ids, prompt_lengths, pad_id, temperature)
    scores = reward_model(input_ids, prompt_lengths).float()  # (batch,)
    policy.train(was_training)
    return Rollout(input_ids, prompt_lengths, mask, logprobs, ref_logprobs, values, scores, torch.tensor(finished))


def reply_ids(batch: Rollout) -> list[list[int]]:
    """Each row's reply tokens (the stop token included when the reply finished)."""
    lengths = batch.mask.sum(dim=1).long().tolist()
    return [batch.input_ids[b, p: p + n].tolist() for b, (p, n) in enumerate(zip(batch.prompt_lengths.tolist(),
                                                                                   lengths))]


def reply_texts(tokenizer, batch: Rollout) -> list[str]:
    """Each row's reply as text, without its ``<|im_end|>``."""
    stop_id = tokenizer.encode_single_token(IM_END)
    return [tokenizer.decode([t for t in ids if t != stop_id]) for ids in reply_ids(batch)]


def prompt_tokens(tokenizer, prompts: list[list[dict]]) -> list[list[int]]:
    """Each conversation rendered in ChatML with the generation prompt
    (:func:`~solutions.sft.render_chat`): what :func:`rollout` answers."""
    return [render_chat(tokenizer, messages, add_generation_prompt=True) for messages in prompts]


# ---------------------------------------------------------------------------- the update and the loop


def ppo_step(policy: PolicyWithValue, optimizer: torch.optim.Optimizer, batch: Rollout, advantages: torch.Tensor,
             returns: torch.Tensor, pad_id: int, ppo_epochs: int = 4, minibatch_size: int = 4,
             clip_eps: float = 0.2, clip_eps_v: float = 0.2, vf_coef: float = 0.1, grad_clip: float = 1.0,
             temperature: float = 1.0, generator: torch.Generator | None = None) -> dict[str, float]:
    r"""PPO's update on one rollout: ``ppo_epochs`` passes over the batch in shuffled minibatches.

    Each minibatch: a forward pass of the current policy (log-probabilities and values of the
    same tokens), :math:`\mathcal{L} = \mathcal{L}_{\text{policy}} + c_v \mathcal{L}_V`
    (:func:`policy_loss`, :func:`value_loss`; ``vf_coef`` = :math:`c_v`), backward, gradient
    clipping to ``grad_clip`` (chapter 06's :func:`~solutions.train.clip_gradients`), one
    optimiser step. The old log-probabilities, old values, advantages and returns stay those
    of the rollout for every epoch: that is what the clipping is measured against.
    Returns the means over minibatches of ``policy_loss``, ``value_loss``, ``clipfrac``,
    ``value_clipfrac``, ``approx_kl``.
    """
    if not (isinstance(ppo_epochs, int) and ppo_epochs >= 1 and isinstance(minibatch_size, int)
            and minibatch_size >= 1):
        raise ValueError(f"ppo_epochs={ppo_epochs!r}, minibatch_size={minibatch_size!r}: both must be ints >= 1")
    n, width = batch.input_ids.shape[0], batch.mask.shape[1]
    policy.train()
    sums = {"policy_loss": 0.0, "value_loss": 0.0, "clipfrac": 0.0, "value_clipfrac": 0.0, "approx_kl": 0.0}
    count = 0
    for _ in range(ppo_epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, minibatch_size):
            rows = order[start:start + minibatch_size]
            input_ids = batch.input_ids[rows]  # (mb, seq)
            logprobs, values, mask = policy.response_outputs(input_ids, batch.prompt_lengths[rows], pad_id,
                                                             temperature, width)  # (mb, resp_len) each
            pg_loss, clipfrac, approx_kl = policy_loss(logprobs, batch.logprobs[rows], advantages[rows], mask,
                                                       clip_eps)
            vf_loss, vf_clipfrac = value_loss(values, batch.values[rows], returns[rows], mask, clip_eps_v)
            loss = pg_loss + vf_coef * vf_loss
            loss.backward()
            clip_gradients(policy, grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for key, value in (("policy_loss", pg_loss.item()), ("value_loss", vf_loss.item()),
                               ("clipfrac", clipfrac), ("value_clipfrac", vf_clipfrac), ("approx_kl", approx_kl)):
                sums[key] += value
            count += 1
    return {key: value / count for key, value in sums.items()}


def train_ppo(policy: PolicyWithValue, reference: Transformer, reward_model: nn.Module, tokenizer, items: list[dict],
              steps: int = 20, batch_size: int = 8, minibatch_size: int = 4, ppo_epochs: int = 4,
              max_new_tokens: int = 24, temperature: float = 1.0, beta: float = 0.05, kl_kind: str = "k1",
              gamma: float = 1.0, lam: float = 0.95, clip_eps: float = 0.2, clip_eps_v: float = 0.2,
              vf_coef: float = 0.1, lr: float = 1e-5, grad_clip: float = 1.0, missing_eos_penalty: float | None = None,
              judge=None, seed: int = 0, progress: bool = True) -> dict[str, list[float]]:
    r"""RLHF with PPO: ``steps`` rounds of rollout, rewards, advantages, update. Returns per-step stats.

    Each step takes the next ``batch_size`` of ``items`` (dicts with a ``"prompt"``, as
    ``data.preferences``' pairs; shuffled from ``seed``, reshuffled when they run out) and:

    1. :func:`rollout`: sample replies, record old log-probs, reference log-probs, values, scores;
       a reply that did not end with ``<|im_end|>`` loses ``missing_eos_penalty`` from its score
       if given (TRL's ``missing_eos_penalty``; Huang et al.'s "EOS trick");
    2. :func:`per_token_rewards` with ``beta`` and ``kl_kind``;
    3. :func:`gae` with ``gamma``, ``lam``; the advantages :func:`masked_whiten` ed over the batch;
    4. :func:`ppo_step`: ``ppo_epochs`` epochs of minibatches of ``minibatch_size``, chapter 06's
       AdamW (``lr``, no weight decay, betas (0.9, 0.95)), clipping at ``grad_clip``.

    The stats, one value per step: ``score`` (mean reward-model score, before any EOS
    penalty), ``gold`` (mean of ``judge(item, reply)`` if a judge is given, such as
    ``data.preferences.gold_score``), ``kl`` (mean over replies of the summed per-token k1,
    TRL's ``objective/kl``), ``non_score_reward`` (mean summed :math:`-\beta\,\widehat{\mathrm{KL}}` of ``kl_kind``),
    ``response_length`` (mean tokens), ``finished`` (share ending with ``<|im_end|>``), and
    :func:`ppo_step`'s ``policy_loss``, ``value_loss``, ``clipfrac``, ``value_clipfrac``,
    ``approx_kl``. Seeded: the same arguments give the same numbers.

    The defaults of ``beta``, ``gamma``, ``lam``, ``clip_eps``, ``clip_eps_v``, ``vf_coef`` and
    ``ppo_epochs`` are TRL's ``PPOConfig`` ones (``kl_coef``, ``gamma``, ``lam``, ``cliprange``,
    ``cliprange_value``, ``vf_coef``, ``num_ppo_epochs``); ``lr``, ``batch_size`` and
    ``max_new_tokens`` are placeholders for the course's tiny models, not tuned yet.
    """
    from tqdm.auto import tqdm

    if not items:
        raise ValueError("no items: give at least one prompt to train on")
    if not (isinstance(batch_size, int) and batch_size >= 1 and isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps={steps!r}, batch_size={batch_size!r}: steps must be an int >= 0, batch_size >= 1")
    _check_unit_interval(gamma=gamma, lam=lam)
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta={beta!r}: the KL coefficient must be a finite number >= 0 (0 turns the penalty off)")
    torch.manual_seed(seed)
    sampling = torch.Generator().manual_seed(seed)
    shuffling = torch.Generator().manual_seed(seed + 1)
    pad_id, stop_id = tokenizer.encode_single_token(PAD), tokenizer.encode_single_token(IM_END)
    optimizer = AdamW(decay_groups(policy, 0.0), lr=lr, betas=(0.9, 0.95))
    keys = ("score", "gold", "kl", "non_score_reward", "response_length", "finished", "policy_loss", "value_loss",
            "clipfrac", "value_clipfrac", "approx_kl")
    history: dict[str, list[float]] = {key: [] for key in keys if key != "gold" or judge is not None}
    order: list[int] = []
    bar = tqdm(range(steps), desc="PPO", unit="step", disable=not progress)
    for step in bar:
        while len(order) < batch_size:
            order += torch.randperm(len(items), generator=shuffling).tolist()
        chosen, order = [items[i] for i in order[:batch_size]], order[batch_size:]
        batch = rollout(policy, reference, reward_model, prompt_tokens(tokenizer, [item["prompt"] for item in chosen]),
                        max_new_tokens, temperature, stop_id, pad_id, sampling)
        with torch.no_grad():
            scores = batch.scores.clone()  # (batch,)
            if missing_eos_penalty is not None:
                scores[~batch.finished] -= missing_eos_penalty
            rewards, penalised = per_token_rewards(scores, batch.logprobs, batch.ref_logprobs, batch.mask, beta,
                                                   kl_kind)  # (batch, resp_len) each
            kl = kl_penalty(batch.logprobs, batch.ref_logprobs, "k1") * batch.mask  # (batch, resp_len)
            advantages, returns = gae(rewards, batch.values, batch.mask, gamma, lam)
            advantages = masked_whiten(advantages, batch.mask)
        stats = ppo_step(policy, optimizer, batch, advantages, returns, pad_id, ppo_epochs, minibatch_size,
                         clip_eps, clip_eps_v, vf_coef, grad_clip, temperature, shuffling)
        record = {"score": batch.scores.mean().item(), "kl": kl.sum(dim=1).mean().item(),
                  "non_score_reward": (-beta * penalised.sum(dim=1)).mean().item(),
                  "response_length": batch.mask.sum(dim=1).mean().item(),
                  "finished": batch.finished.float().mean().item(), **stats}
        if judge is not None:
            replies = reply_texts(tokenizer, batch)
            record["gold"] = sum(judge(item, reply) for item, reply in zip(chosen, replies)) / len(chosen)
        for key in history:
            history[key].append(float(record[key]))
        bar.set_postfix(score=f"{record['score']:.2f}", kl=f"{record['kl']:.2f}")
    policy.eval()
    return history
