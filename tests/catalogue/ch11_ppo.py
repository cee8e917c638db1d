"""Wrong answers to chapter 11's checkpoints, as learners write them.

The KL estimators, per-token rewards, whitening, GAE and the two losses are functions of
tensors. ``rollout(policy, reference, reward_model, prompt_ids, max_new_tokens, temperature,
stop_id, pad_id, generator)`` is run by the checkpoint's ``rollout`` runner on the course's
``PolicyWithValue``, a reference ``Transformer`` and a ``RewardModel``; it calls the notebook's
given ``sample_reply``, ``response_logprobs`` and ``PolicyWithValue.response_outputs``, here
the reference's (as a learner's notebook would).
"""

from __future__ import annotations

import torch
from solutions.model import LlamaConfig, Transformer  # noqa: F401  (the rollout runner builds these)
from solutions.ppo import (PolicyWithValue, Rollout, gae, kl_penalty, masked_mean, masked_var,  # noqa: F401
                           per_token_rewards, policy_loss, response_logprobs, sample_reply, value_loss)
from solutions.reward import RewardModel  # noqa: F401

from . import mistake

# ------------------------------------------------------------------------------ 11.kl_penalty


def _kl_checks(logprobs, ref_logprobs, kind):
    if kind not in ("k1", "k2", "k3"):
        raise ValueError(f"unknown kind {kind!r}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError("logprobs and ref_logprobs must have the same shape")


@mistake("11.kl_penalty", "sign")
def kl_with_the_log_ratio_reversed(logprobs, ref_logprobs, kind):
    _kl_checks(logprobs, ref_logprobs, kind)
    log_ratio = ref_logprobs - logprobs  # "KL to the reference": reference first
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    return (torch.exp(-log_ratio) - 1) + log_ratio


@mistake("11.kl_penalty", "abs")
def kl_made_positive_with_abs(logprobs, ref_logprobs, kind):
    _kl_checks(logprobs, ref_logprobs, kind)
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio.abs()  # "a KL is never negative"
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    return torch.exp(-log_ratio) - 1 + log_ratio


@mistake("11.kl_penalty", "k3_as_k1")
def kl_k3_written_as_k1(logprobs, ref_logprobs, kind):
    _kl_checks(logprobs, ref_logprobs, kind)
    log_ratio = logprobs - ref_logprobs
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    return log_ratio  # k1 and k3 "are both unbiased"


@mistake("11.kl_penalty", "k3_inverted")
def kl_k3_with_the_ratio_pi_over_ref(logprobs, ref_logprobs, kind):
    _kl_checks(logprobs, ref_logprobs, kind)
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    ratio = torch.exp(log_ratio)  # pi / pi_ref
    return (ratio - 1) - torch.log(ratio)


@mistake("11.kl_penalty", "k3_sign")
def kl_k3_adding_the_log(logprobs, ref_logprobs, kind):
    _kl_checks(logprobs, ref_logprobs, kind)
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    rho = torch.exp(ref_logprobs - logprobs)
    return (rho - 1) + torch.log(rho)


@mistake("11.kl_penalty", "k2_half")
def kl_k2_without_the_half(logprobs, ref_logprobs, kind):
    _kl_checks(logprobs, ref_logprobs, kind)
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return log_ratio ** 2
    return torch.expm1(-log_ratio) + log_ratio


@mistake("11.kl_penalty", "no_checks")
def kl_falling_back_to_k1(logprobs, ref_logprobs, kind):
    log_ratio = logprobs - ref_logprobs  # (2, 5) - (2, 4) raises, but "k4" silently gives k1
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    return log_ratio


@mistake("11.kl_penalty", "no_checks")
def kl_checking_the_kind_as_a_substring(logprobs, ref_logprobs, kind):
    if kind not in "k1 k2 k3":  # a substring test: "k", "1" and "" pass it too
        raise ValueError(f"unknown kind {kind!r}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError("logprobs and ref_logprobs must have the same shape")
    log_ratio = logprobs - ref_logprobs
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    return log_ratio


# ------------------------------------------------------------------------------ 11.per_token_rewards


def _reward_checks(scores, logprobs, ref_logprobs, mask, beta):
    if beta < 0:
        raise ValueError("beta must be >= 0")
    if not (logprobs.shape == ref_logprobs.shape == mask.shape) or scores.shape != (mask.shape[0],):
        raise ValueError("shapes differ")
    if bool((mask.sum(1) == 0).any()):
        raise ValueError("a reply with no token")


@mistake("11.per_token_rewards", "kl_sign")
def rewards_plus_the_kl(scores, logprobs, ref_logprobs, mask, beta, kind):
    _reward_checks(scores, logprobs, ref_logprobs, mask, beta)
    kl = kl_penalty(logprobs, ref_logprobs, kind) * mask
    rewards = beta * kl  # "the KL term of the objective"
    last = mask.sum(1).long() - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


@mistake("11.per_token_rewards", "every_token")
def rewards_with_the_score_on_every_token(scores, logprobs, ref_logprobs, mask, beta, kind):
    _reward_checks(scores, logprobs, ref_logprobs, mask, beta)
    kl = kl_penalty(logprobs, ref_logprobs, kind) * mask
    rewards = (scores[:, None] - beta * kl) * mask
    return rewards, kl


@mistake("11.per_token_rewards", "last_column")
def rewards_with_the_score_in_the_last_column(scores, logprobs, ref_logprobs, mask, beta, kind):
    _reward_checks(scores, logprobs, ref_logprobs, mask, beta)
    kl = kl_penalty(logprobs, ref_logprobs, kind) * mask
    rewards = -beta * kl
    rewards[:, -1] += scores
    return rewards, kl


@mistake("11.per_token_rewards", "first_token")
def rewards_with_the_score_on_the_first_token(scores, logprobs, ref_logprobs, mask, beta, kind):
    _reward_checks(scores, logprobs, ref_logprobs, mask, beta)
    kl = kl_penalty(logprobs, ref_logprobs, kind) * mask
    rewards = -beta * kl
    rewards[:, 0] += scores
    return rewards, kl


@mistake("11.per_token_rewards", "one_past")
def rewards_at_the_count_of_reply_tokens(scores, logprobs, ref_logprobs, mask, beta, kind):
    _reward_checks(scores, logprobs, ref_logprobs, mask, beta)
    kl = kl_penalty(logprobs, ref_logprobs, kind) * mask
    rewards = -beta * kl
    lengths = mask.sum(1).long()
    rewards[torch.arange(len(scores)), lengths] += scores  # one past the last reply token
    return rewards, kl


@mistake("11.per_token_rewards", "no_mask")
def rewards_with_the_kl_on_padding(scores, logprobs, ref_logprobs, mask, beta, kind):
    _reward_checks(scores, logprobs, ref_logprobs, mask, beta)
    kl = kl_penalty(logprobs, ref_logprobs, kind)  # "padding's log-probs are 0 anyway"
    rewards = -beta * kl
    last = mask.sum(1).long() - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


@mistake("11.per_token_rewards", "k3_as_k1")
def rewards_always_with_k1(scores, logprobs, ref_logprobs, mask, beta, kind):
    _reward_checks(scores, logprobs, ref_logprobs, mask, beta)
    kl = (logprobs - ref_logprobs) * mask  # kind ignored
    rewards = -beta * kl
    last = mask.sum(1).long() - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


@mistake("11.per_token_rewards", "no_checks")
def rewards_without_checks(scores, logprobs, ref_logprobs, mask, beta, kind):
    kl = kl_penalty(logprobs, ref_logprobs, kind) * mask
    rewards = -beta * kl
    last = mask.sum(1).long() - 1  # an empty row gives -1: the last column, silently
    rewards[torch.arange(mask.shape[0]), last] += scores[: mask.shape[0]]
    return rewards, kl


# ------------------------------------------------------------------------------ 11.masked_whiten


def _whiten_checks(x, mask):
    if x.shape != mask.shape or mask.sum() < 2:
        raise ValueError("x and mask must have one shape, and the mask select at least two elements")


@mistake("11.masked_whiten", "padding_stats")
def whiten_over_the_whole_tensor(x, mask, shift_mean=True):
    _whiten_checks(x, mask)
    mean, var = x.mean(), x.var()  # padding included
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


@mistake("11.masked_whiten", "padding_stats")
def whiten_with_torch_whiten_then_mask(x, mask, shift_mean=True):
    _whiten_checks(x, mask)
    whitened = (x - x.mean()) / (x.std() + 1e-8)
    if not shift_mean:
        whitened = whitened + x.mean()
    return whitened * mask


@mistake("11.masked_whiten", "per_row")
def whiten_each_reply(x, mask, shift_mean=True):
    _whiten_checks(x, mask)
    n = mask.sum(1, keepdim=True)
    mean = (x * mask).sum(1, keepdim=True) / n
    var = ((x - mean) ** 2 * mask).sum(1, keepdim=True) / (n - 1).clamp(min=1)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


@mistake("11.masked_whiten", "biased_var")
def whiten_with_the_biased_variance(x, mask, shift_mean=True):
    _whiten_checks(x, mask)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)  # divides by n
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


@mistake("11.masked_whiten", "divide_by_var")
def whiten_dividing_by_the_variance(x, mask, shift_mean=True):
    _whiten_checks(x, mask)
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) / (var + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


@mistake("11.masked_whiten", "scale_only")
def whiten_scaling_only_when_not_shifting(x, mask, shift_mean=True):
    _whiten_checks(x, mask)
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    if shift_mean:
        return (x - mean) * torch.rsqrt(var + 1e-8) * mask
    return x * torch.rsqrt(var + 1e-8) * mask  # "keep the mean: don't subtract it"


@mistake("11.masked_whiten", "shift_ignored")
def whiten_ignoring_shift_mean(x, mask, shift_mean=True):
    _whiten_checks(x, mask)
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


@mistake("11.masked_whiten", "padding_kept")
def whiten_leaving_padding_as_computed(x, mask, shift_mean=True):
    _whiten_checks(x, mask)
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


@mistake("11.masked_whiten", "no_checks")
def whiten_without_checks(x, mask, shift_mean=True):
    n = mask.sum()
    mean = (x * mask).sum() / n  # 0 / 0 = nan for an empty mask
    var = ((x - mean) ** 2 * mask).sum() / (n - 1)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


@mistake("11.masked_whiten", "grad_detached")
def whiten_with_python_statistics(x, mask, shift_mean=True):
    _whiten_checks(x, mask)
    values = x[mask.bool()].tolist()
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    whitened = torch.tensor(((x.detach() - mean) / (var + 1e-8) ** 0.5).tolist())
    return (whitened if shift_mean else whitened + mean) * mask


# ------------------------------------------------------------------------------ 11.gae


def _gae_checks(rewards, values, mask, gamma, lam):
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):
        raise ValueError("gamma and lam must be in [0, 1]")
    if not (rewards.shape == values.shape == mask.shape) or bool((mask.sum(1) == 0).any()):
        raise ValueError("shapes differ, or a row is empty")


@mistake("11.gae", "forward")
def gae_running_forward(rewards, values, mask, gamma, lam):
    _gae_checks(rewards, values, mask, gamma, lam)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    previous = torch.zeros(values.shape[0])
    for t in range(values.shape[1]):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros(values.shape[0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * previous) * mask[:, t]
        previous = advantages[:, t]
    return advantages, (advantages + values) * mask


@mistake("11.gae", "no_mask")
def gae_ignoring_the_mask(rewards, values, mask, gamma, lam):
    _gae_checks(rewards, values, mask, gamma, lam)
    advantages = torch.zeros_like(values)
    last_gae = 0.0
    width = values.shape[1]
    for t in reversed(range(width)):  # TRL's loop, but over the padded tensor
        next_value = values[:, t + 1] if t < width - 1 else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
    return advantages * mask, (advantages + values) * mask


@mistake("11.gae", "same_value")
def gae_with_the_value_of_the_same_state(rewards, values, mask, gamma, lam):
    _gae_checks(rewards, values, mask, gamma, lam)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    next_advantage = torch.zeros(values.shape[0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * values[:, t] - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_advantage = advantages[:, t]
    return advantages, (advantages + values) * mask


@mistake("11.gae", "no_gamma")
def gae_with_lambda_alone_in_the_recursion(rewards, values, mask, gamma, lam):
    _gae_checks(rewards, values, mask, gamma, lam)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    next_value, next_advantage = torch.zeros(values.shape[0]), torch.zeros(values.shape[0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


@mistake("11.gae", "returns_no_values")
def gae_returning_the_advantages_as_returns(rewards, values, mask, gamma, lam):
    _gae_checks(rewards, values, mask, gamma, lam)
    advantages, _ = gae(rewards, values, mask, gamma, lam)
    return advantages, advantages.clone()  # "the return is the advantage"


@mistake("11.gae", "mc_returns")
def gae_with_monte_carlo_returns(rewards, values, mask, gamma, lam):
    _gae_checks(rewards, values, mask, gamma, lam)
    advantages, _ = gae(rewards, values, mask, gamma, lam)
    returns = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] * mask[:, t] + gamma * running
        returns[:, t] = running * mask[:, t]
    return advantages, returns


@mistake("11.gae", "no_checks")
def gae_without_checks(rewards, values, mask, gamma, lam):
    rewards, values = rewards * mask, values * mask  # (2, 4) * (2, 3) raises, but lam = 1.5 does not
    advantages = torch.zeros_like(values)
    next_value, next_advantage = torch.zeros(values.shape[0]), torch.zeros(values.shape[0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


def _gae_loop(rewards, values, mask, gamma, lam):
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    next_value, next_advantage = torch.zeros(values.shape[0]), torch.zeros(values.shape[0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


@mistake("11.gae", "no_checks")
def gae_checking_one_end_of_each_range(rewards, values, mask, gamma, lam):
    if gamma < 0 or lam > 1:  # "a discount is never negative, a weight never above 1": gamma 1.5, lam -0.1 pass
        raise ValueError("gamma must be >= 0 and lam <= 1")
    if not (rewards.shape == values.shape == mask.shape) or bool((mask.sum(1) == 0).any()):
        raise ValueError("shapes differ, or a row is empty")
    return _gae_loop(rewards, values, mask, gamma, lam)


@mistake("11.gae", "range_ends")
def gae_refusing_a_discount_of_zero(rewards, values, mask, gamma, lam):
    if not (0 < gamma <= 1 and 0 <= lam <= 1):  # "a discount of 0 makes no sense"
        raise ValueError(f"gamma must be in (0, 1] and lam in [0, 1], got gamma={gamma}, lam={lam}")
    if not (rewards.shape == values.shape == mask.shape) or bool((mask.sum(1) == 0).any()):
        raise ValueError("shapes differ, or a row is empty")
    return _gae_loop(rewards, values, mask, gamma, lam)


# ------------------------------------------------------------------------------ 11.policy_loss


def _loss_checks(a, b, c, mask, eps):
    if eps <= 0:
        raise ValueError("the clipping range must be > 0")
    if not (a.shape == b.shape == c.shape == mask.shape) or bool((mask.sum(1) == 0).any()):
        raise ValueError("shapes differ, or a row is empty")


def _stats(log_ratio, unclipped, clipped, mask):
    clipfrac = ((clipped > unclipped).float() * mask).sum() / mask.sum()
    approx_kl = 0.5 * (log_ratio.detach() ** 2 * mask).sum() / mask.sum()
    return clipfrac.item(), approx_kl.item()


@mistake("11.policy_loss", "min")
def policy_loss_with_min(logprobs, old_logprobs, advantages, mask, clip_eps):
    _loss_checks(logprobs, old_logprobs, advantages, mask, clip_eps)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = (torch.min(unclipped, clipped) * mask).sum() / mask.sum()  # the paper says min
    return loss, *_stats(log_ratio, unclipped, clipped, mask)


@mistake("11.policy_loss", "inverted")
def policy_loss_with_the_ratio_inverted(logprobs, old_logprobs, advantages, mask, clip_eps):
    _loss_checks(logprobs, old_logprobs, advantages, mask, clip_eps)
    log_ratio = old_logprobs - logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = (torch.max(unclipped, clipped) * mask).sum() / mask.sum()
    return loss, *_stats(log_ratio, unclipped, clipped, mask)


@mistake("11.policy_loss", "no_clip")
def policy_loss_without_clipping(logprobs, old_logprobs, advantages, mask, clip_eps):
    _loss_checks(logprobs, old_logprobs, advantages, mask, clip_eps)
    log_ratio = logprobs - old_logprobs
    losses = -advantages * torch.exp(log_ratio)
    return (losses * mask).sum() / mask.sum(), 0.0, _stats(log_ratio, losses, losses, mask)[1]


@mistake("11.policy_loss", "ratio_one")
def policy_loss_with_old_logprobs_recomputed(logprobs, old_logprobs, advantages, mask, clip_eps):
    _loss_checks(logprobs, old_logprobs, advantages, mask, clip_eps)
    old_logprobs = logprobs.detach()  # "the old policy is the current one before this step"
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = (torch.max(unclipped, clipped) * mask).sum() / mask.sum()
    return loss, *_stats(log_ratio, unclipped, clipped, mask)


@mistake("11.policy_loss", "sign")
def policy_loss_maximised_as_is(logprobs, old_logprobs, advantages, mask, clip_eps):
    _loss_checks(logprobs, old_logprobs, advantages, mask, clip_eps)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    objective = torch.min(advantages * ratio, advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps))
    loss = (objective * mask).sum() / mask.sum()  # the objective itself, not its negative
    return loss, *_stats(log_ratio, -advantages * ratio,
                         -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps), mask)


@mistake("11.policy_loss", "padding_mean")
def policy_loss_averaged_over_padding(logprobs, old_logprobs, advantages, mask, clip_eps):
    _loss_checks(logprobs, old_logprobs, advantages, mask, clip_eps)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = (torch.max(unclipped, clipped) * mask).mean()
    return loss, *_stats(log_ratio, unclipped, clipped, mask)


@mistake("11.policy_loss", "clipfrac_outside")
def policy_loss_counting_every_ratio_outside_the_range(logprobs, old_logprobs, advantages, mask, clip_eps):
    _loss_checks(logprobs, old_logprobs, advantages, mask, clip_eps)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = (torch.max(unclipped, clipped) * mask).sum() / mask.sum()
    clipfrac = (((ratio - 1).abs() > clip_eps).float() * mask).sum() / mask.sum()
    return loss, clipfrac.item(), _stats(log_ratio, unclipped, clipped, mask)[1]


@mistake("11.policy_loss", "approx_kl_k1")
def policy_loss_with_the_k1_approx_kl(logprobs, old_logprobs, advantages, mask, clip_eps):
    _loss_checks(logprobs, old_logprobs, advantages, mask, clip_eps)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = (torch.max(unclipped, clipped) * mask).sum() / mask.sum()
    approx_kl = ((old_logprobs - logprobs).detach() * mask).sum() / mask.sum()
    return loss, _stats(log_ratio, unclipped, clipped, mask)[0], approx_kl.item()


@mistake("11.policy_loss", "no_checks")
def policy_loss_without_checks(logprobs, old_logprobs, advantages, mask, clip_eps):
    log_ratio = logprobs - old_logprobs  # clip_eps = 0 clips everything, silently
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = (torch.max(unclipped, clipped) * mask).sum() / mask.sum()
    return loss, *_stats(log_ratio, unclipped, clipped, mask)


@mistake("11.policy_loss", "grad_leak")
def policy_loss_with_old_logprobs_attached(logprobs, old_logprobs, advantages, mask, clip_eps):
    _loss_checks(logprobs, old_logprobs, advantages, mask, clip_eps)
    log_ratio = logprobs - old_logprobs  # no .detach(): the gradient reaches the rollout's numbers
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = (torch.max(unclipped, clipped) * mask).sum() / mask.sum()
    return loss, *_stats(log_ratio, unclipped, clipped, mask)


@mistake("11.policy_loss", "grad_detached")
def policy_loss_from_detached_logprobs(logprobs, old_logprobs, advantages, mask, clip_eps):
    return policy_loss(logprobs.detach(), old_logprobs, advantages, mask, clip_eps)  # "the loss is only logged"


@mistake("11.policy_loss", "no_checks")
def policy_loss_refusing_only_a_zero_clip(logprobs, old_logprobs, advantages, mask, clip_eps):
    if clip_eps == 0:  # "a range of 0 clips everything": but -0.1 gives clamp(ratio, 1.1, 0.9)
        raise ValueError("clip_eps must not be 0")
    if not (logprobs.shape == old_logprobs.shape == advantages.shape == mask.shape):
        raise ValueError("shapes differ")
    if bool((mask.sum(1) == 0).any()):
        raise ValueError("a row is empty")
    log_ratio = logprobs - old_logprobs.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = (torch.max(unclipped, clipped) * mask).sum() / mask.sum()
    return loss, *_stats(log_ratio, unclipped, clipped, mask)


# ------------------------------------------------------------------------------ 11.value_loss


def _vstats(error, error_clipped, mask):
    return ((error_clipped > error).float() * mask).sum() / mask.sum()


@mistake("11.value_loss", "around_returns")
def value_loss_clipped_around_the_returns(values, old_values, returns, mask, clip_eps_v):
    _loss_checks(values, old_values, returns, mask, clip_eps_v)
    clipped = returns + torch.clamp(values - returns, -clip_eps_v, clip_eps_v)
    error, error_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * (torch.max(error, error_clipped) * mask).sum() / mask.sum()
    return loss, _vstats(error, error_clipped, mask).item()


@mistake("11.value_loss", "around_returns")
def value_loss_without_clipping(values, old_values, returns, mask, clip_eps_v):
    _loss_checks(values, old_values, returns, mask, clip_eps_v)
    loss = 0.5 * ((values - returns) ** 2 * mask).sum() / mask.sum()  # "clipping is for the policy"
    return loss, 0.0


@mistake("11.value_loss", "min")
def value_loss_with_min(values, old_values, returns, mask, clip_eps_v):
    _loss_checks(values, old_values, returns, mask, clip_eps_v)
    clipped = old_values + torch.clamp(values - old_values, -clip_eps_v, clip_eps_v)
    error, error_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * (torch.min(error, error_clipped) * mask).sum() / mask.sum()
    return loss, _vstats(error, error_clipped, mask).item()


@mistake("11.value_loss", "no_half")
def value_loss_without_the_half(values, old_values, returns, mask, clip_eps_v):
    _loss_checks(values, old_values, returns, mask, clip_eps_v)
    clipped = torch.clamp(values, old_values - clip_eps_v, old_values + clip_eps_v)
    error, error_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = (torch.max(error, error_clipped) * mask).sum() / mask.sum()  # plain MSE
    return loss, _vstats(error, error_clipped, mask).item()


@mistake("11.value_loss", "padding_mean")
def value_loss_averaged_over_padding(values, old_values, returns, mask, clip_eps_v):
    _loss_checks(values, old_values, returns, mask, clip_eps_v)
    clipped = old_values + torch.clamp(values - old_values, -clip_eps_v, clip_eps_v)
    error, error_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * (torch.max(error, error_clipped) * mask).mean()
    return loss, _vstats(error, error_clipped, mask).item()


@mistake("11.value_loss", "no_checks")
def value_loss_without_checks(values, old_values, returns, mask, clip_eps_v):
    clipped = old_values + torch.clamp(values - old_values, -clip_eps_v, clip_eps_v)  # eps < 0: clamp(min > max)
    error, error_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * (torch.max(error, error_clipped) * mask).sum() / mask.sum()
    return loss, _vstats(error, error_clipped, mask).item()


@mistake("11.value_loss", "grad_leak")
def value_loss_with_the_returns_attached(values, old_values, returns, mask, clip_eps_v):
    _loss_checks(values, old_values, returns, mask, clip_eps_v)
    clipped = old_values.detach() + torch.clamp(values - old_values.detach(), -clip_eps_v, clip_eps_v)
    error, error_clipped = (values - returns) ** 2, (clipped - returns) ** 2  # returns not detached
    loss = 0.5 * (torch.max(error, error_clipped) * mask).sum() / mask.sum()
    return loss, _vstats(error, error_clipped, mask).item()


@mistake("11.value_loss", "no_checks")
def value_loss_allowing_a_zero_range(values, old_values, returns, mask, clip_eps_v):
    if clip_eps_v < 0:  # "0 just means no clipping": it pins every value to its old one
        raise ValueError("clip_eps_v must not be negative")
    if not (values.shape == old_values.shape == returns.shape == mask.shape) or bool((mask.sum(1) == 0).any()):
        raise ValueError("shapes differ, or a row is empty")
    clipped = old_values + torch.clamp(values - old_values, -clip_eps_v, clip_eps_v)
    error, error_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * (torch.max(error, error_clipped) * mask).sum() / mask.sum()
    return loss, _vstats(error, error_clipped, mask).item()


# ------------------------------------------------------------------------------ 11.rollout


def _rollout_checks(policy, prompt_ids, max_new_tokens, temperature):
    if temperature <= 0 or max_new_tokens < 1 or not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("temperature > 0, max_new_tokens >= 1 and at least one prompt, none empty")
    if max(len(p) for p in prompt_ids) + max_new_tokens > policy.model.cfg.max_seq_len:
        raise ValueError("a prompt does not fit")


def _pad(sequences, pad_id, left=False):
    longest = max(len(s) for s in sequences)
    rows = [[pad_id] * (longest - len(s)) + s if left else s + [pad_id] * (longest - len(s)) for s in sequences]
    return torch.tensor(rows, dtype=torch.long)


def _finish(policy, reference, reward_model, sequences, finished, prompt_ids, pad_id, t_policy, t_reference,
            ref_model=None, left=False):
    input_ids = _pad(sequences, pad_id, left)
    prompt_lengths = torch.tensor([len(p) for p in prompt_ids])
    logprobs, values, mask = policy.response_outputs(input_ids, prompt_lengths, pad_id, t_policy)
    ref_logprobs, _ = response_logprobs(ref_model or reference, input_ids, prompt_lengths, pad_id, t_reference)
    scores = reward_model(input_ids, prompt_lengths)
    return Rollout(input_ids, prompt_lengths, mask, logprobs, ref_logprobs, values, scores, torch.tensor(finished))


def _sample_all(policy, prompt_ids, max_new_tokens, temperature, stop_id, banned, generator):
    sequences, finished = [], []
    for prompt in prompt_ids:
        reply, done = sample_reply(policy.model, prompt, max_new_tokens, temperature, stop_id, banned, generator)
        sequences.append(prompt + reply)
        finished.append(done)
    return sequences, finished


@mistake("11.rollout", "ref_from_policy")
@torch.no_grad()
def rollout_scoring_the_reference_with_the_policy(policy, reference, reward_model, prompt_ids, max_new_tokens,
                                                  temperature, stop_id, pad_id, generator):
    _rollout_checks(policy, prompt_ids, max_new_tokens, temperature)
    sequences, finished = _sample_all(policy, prompt_ids, max_new_tokens, temperature, stop_id, (pad_id,), generator)
    return _finish(policy, reference, reward_model, sequences, finished, prompt_ids, pad_id, temperature, temperature,
                   ref_model=policy.model)


@mistake("11.rollout", "temperature")
@torch.no_grad()
def rollout_scoring_at_temperature_one(policy, reference, reward_model, prompt_ids, max_new_tokens, temperature,
                                       stop_id, pad_id, generator):
    _rollout_checks(policy, prompt_ids, max_new_tokens, temperature)
    sequences, finished = _sample_all(policy, prompt_ids, max_new_tokens, temperature, stop_id, (pad_id,), generator)
    return _finish(policy, reference, reward_model, sequences, finished, prompt_ids, pad_id, 1.0, 1.0)


@mistake("11.rollout", "ref_temperature")
@torch.no_grad()
def rollout_scoring_the_reference_at_temperature_one(policy, reference, reward_model, prompt_ids, max_new_tokens,
                                                     temperature, stop_id, pad_id, generator):
    _rollout_checks(policy, prompt_ids, max_new_tokens, temperature)
    sequences, finished = _sample_all(policy, prompt_ids, max_new_tokens, temperature, stop_id, (pad_id,), generator)
    return _finish(policy, reference, reward_model, sequences, finished, prompt_ids, pad_id, temperature, 1.0)


@mistake("11.rollout", "no_stop")
@torch.no_grad()
def rollout_dropping_the_stop_token(policy, reference, reward_model, prompt_ids, max_new_tokens, temperature, stop_id,
                                    pad_id, generator):
    _rollout_checks(policy, prompt_ids, max_new_tokens, temperature)
    sequences, finished = [], []
    for prompt in prompt_ids:
        reply, done = sample_reply(policy.model, prompt, max_new_tokens, temperature, stop_id, (pad_id,), generator)
        if done and len(reply) > 1:
            reply = reply[:-1]  # "<|im_end|> is not part of the answer"
        sequences.append(prompt + reply)
        finished.append(done)
    return _finish(policy, reference, reward_model, sequences, finished, prompt_ids, pad_id, temperature, temperature)


@mistake("11.rollout", "banned_pad")
@torch.no_grad()
def rollout_that_may_sample_the_pad(policy, reference, reward_model, prompt_ids, max_new_tokens, temperature, stop_id,
                                    pad_id, generator):
    _rollout_checks(policy, prompt_ids, max_new_tokens, temperature)
    sequences, finished = _sample_all(policy, prompt_ids, max_new_tokens, temperature, stop_id, (), generator)
    return _finish(policy, reference, reward_model, sequences, finished, prompt_ids, pad_id, temperature, temperature)


@mistake("11.rollout", "left_padding")
@torch.no_grad()
def rollout_padded_on_the_left(policy, reference, reward_model, prompt_ids, max_new_tokens, temperature, stop_id,
                               pad_id, generator):
    _rollout_checks(policy, prompt_ids, max_new_tokens, temperature)
    sequences, finished = _sample_all(policy, prompt_ids, max_new_tokens, temperature, stop_id, (pad_id,), generator)
    return _finish(policy, reference, reward_model, sequences, finished, prompt_ids, pad_id, temperature, temperature,
                   left=True)


@mistake("11.rollout", "no_checks")
@torch.no_grad()
def rollout_accepting_an_empty_prompt(policy, reference, reward_model, prompt_ids, max_new_tokens, temperature,
                                      stop_id, pad_id, generator):
    if temperature <= 0 or max_new_tokens < 1 or not prompt_ids:  # but a prompt may be []
        raise ValueError("temperature > 0, max_new_tokens >= 1 and at least one prompt")
    if max(len(p) for p in prompt_ids) + max_new_tokens > policy.model.cfg.max_seq_len:
        raise ValueError("a prompt does not fit")
    sequences, finished = _sample_all(policy, prompt_ids, max_new_tokens, temperature, stop_id, (pad_id,), generator)
    return _finish(policy, reference, reward_model, sequences, finished, prompt_ids, pad_id, temperature, temperature)


@mistake("11.rollout", "raised")
@torch.no_grad()
def rollout_refusing_a_prompt_that_fills_the_context(policy, reference, reward_model, prompt_ids, max_new_tokens,
                                                     temperature, stop_id, pad_id, generator):
    if temperature <= 0 or max_new_tokens < 1 or not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("temperature > 0, max_new_tokens >= 1 and at least one prompt, none empty")
    if max(len(p) for p in prompt_ids) + max_new_tokens >= policy.model.cfg.max_seq_len:  # 28 + 4 = 32 fits
        raise ValueError("a prompt does not fit")
    sequences, finished = _sample_all(policy, prompt_ids, max_new_tokens, temperature, stop_id, (pad_id,), generator)
    return _finish(policy, reference, reward_model, sequences, finished, prompt_ids, pad_id, temperature, temperature)


@mistake("11.rollout", "finished_by_length")
@torch.no_grad()
def rollout_finished_when_shorter_than_the_limit(policy, reference, reward_model, prompt_ids, max_new_tokens,
                                                 temperature, stop_id, pad_id, generator):
    _rollout_checks(policy, prompt_ids, max_new_tokens, temperature)
    sequences, finished = [], []
    for prompt in prompt_ids:
        reply, _ = sample_reply(policy.model, prompt, max_new_tokens, temperature, stop_id, (pad_id,), generator)
        sequences.append(prompt + reply)
        finished.append(len(reply) < max_new_tokens)  # "a reply cut off is one that used every token"
    return _finish(policy, reference, reward_model, sequences, finished, prompt_ids, pad_id, temperature, temperature)


@mistake("11.rollout", "fixed_width")
@torch.no_grad()
def rollout_padded_to_the_longest_possible_reply(policy, reference, reward_model, prompt_ids, max_new_tokens,
                                                 temperature, stop_id, pad_id, generator):
    _rollout_checks(policy, prompt_ids, max_new_tokens, temperature)
    sequences, finished = _sample_all(policy, prompt_ids, max_new_tokens, temperature, stop_id, (pad_id,), generator)
    width = max(len(p) for p in prompt_ids) + max_new_tokens  # "room for every reply", allocated up front
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for b, seq in enumerate(sequences):
        input_ids[b, : len(seq)] = torch.tensor(seq)
    prompt_lengths = torch.tensor([len(p) for p in prompt_ids])
    logprobs, values, mask = policy.response_outputs(input_ids, prompt_lengths, pad_id, temperature)
    ref_logprobs, _ = response_logprobs(reference, input_ids, prompt_lengths, pad_id, temperature)
    scores = reward_model(input_ids, prompt_lengths)
    return Rollout(input_ids, prompt_lengths, mask, logprobs, ref_logprobs, values, scores, torch.tensor(finished))
