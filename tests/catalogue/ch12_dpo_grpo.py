"""Wrong answers to chapter 12's checkpoints, as learners write them.

Every checkpoint is a plain function. Where a careful learner checks the inputs first, the
entries call the reference's checks (``_checked_*``), so that each entry shows one mistake.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from solutions.dpo import dpo_loss, dpo_variant_loss, sequence_logprobs
from solutions.grpo import group_advantages, grpo_loss, verifiable_reward, zero_variance_fraction

from . import mistake

# ------------------------------------------------------------------------------ 12.sequence_logprobs


def _reply_mask(input_ids, prompt_lengths, pad_id):
    """(batch, seq - 1): entry t scores token t + 1, a reply token."""
    n_real = (input_ids != pad_id).sum(1, keepdim=True)
    j = torch.arange(1, input_ids.shape[1])[None, :]
    return (j >= torch.as_tensor(prompt_lengths)[:, None]) & (j < n_real)


@mistake("12.sequence_logprobs", "prompt")
def logprobs_of_the_whole_sequence(logits, input_ids, prompt_lengths, pad_id):
    sequence_logprobs(logits, input_ids, prompt_lengths, pad_id)  # the checks
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    real = input_ids[:, 1:] != pad_id  # every real token, the prompt's too
    return (logp * real).sum(1)


@mistake("12.sequence_logprobs", "padding")
def logprobs_from_the_prompt_to_the_end(logits, input_ids, prompt_lengths, pad_id):
    sequence_logprobs(logits, input_ids, prompt_lengths, pad_id)
    logp = torch.log_softmax(logits, dim=-1)
    total = []
    for b in range(len(input_ids)):
        p = int(prompt_lengths[b])
        total.append(sum(logp[b, j - 1, input_ids[b, j]] for j in range(p, input_ids.shape[1])))  # padding too
    return torch.stack(total)


@mistake("12.sequence_logprobs", "no_shift")
def logprobs_without_the_shift(logits, input_ids, prompt_lengths, pad_id):
    sequence_logprobs(logits, input_ids, prompt_lengths, pad_id)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[..., None]).squeeze(-1)  # (batch, seq)
    positions = torch.arange(input_ids.shape[1])[None, :]
    reply = (positions >= prompt_lengths[:, None]) & (input_ids != pad_id)
    return (logp * reply).sum(1)


@mistake("12.sequence_logprobs", "mean")
def logprobs_averaged_over_the_reply(logits, input_ids, prompt_lengths, pad_id):
    sequence_logprobs(logits, input_ids, prompt_lengths, pad_id)
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = _reply_mask(input_ids, prompt_lengths, pad_id).float()
    return (logp * mask).sum(1) / mask.sum(1)  # "per-token log-prob, so long replies are not penalised"


@mistake("12.sequence_logprobs", "no_log_softmax")
def logprobs_read_from_the_logits(logits, input_ids, prompt_lengths, pad_id):
    sequence_logprobs(logits, input_ids, prompt_lengths, pad_id)
    picked = logits[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # raw logits
    return (picked * _reply_mask(input_ids, prompt_lengths, pad_id)).sum(1)


@mistake("12.sequence_logprobs", "prompt_end")
def logprobs_from_the_prompts_last_token(logits, input_ids, prompt_lengths, pad_id):
    sequence_logprobs(logits, input_ids, prompt_lengths, pad_id)
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    j = torch.arange(1, input_ids.shape[1])[None, :]  # the token each entry scores
    mask = (j >= prompt_lengths[:, None] - 1) & (input_ids[:, 1:] != pad_id)  # "the prompt ends at p - 1"
    return (logp * mask).sum(1)


@mistake("12.sequence_logprobs", "drops_end")
def logprobs_without_the_end_token(logits, input_ids, prompt_lengths, pad_id):
    sequence_logprobs(logits, input_ids, prompt_lengths, pad_id)
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    n_real = (input_ids != pad_id).sum(1, keepdim=True)
    j = torch.arange(1, input_ids.shape[1])[None, :]
    mask = (j >= prompt_lengths[:, None]) & (j < n_real - 1)  # "the last token is <|im_end|>, not text"
    return (logp * mask).sum(1)


@mistake("12.sequence_logprobs", "no_checks")
def logprobs_without_checks(logits, input_ids, prompt_lengths, pad_id):
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (logp * _reply_mask(input_ids, prompt_lengths, pad_id)).sum(1)


@mistake("12.sequence_logprobs", "grad_detached")
def logprobs_as_python_numbers(logits, input_ids, prompt_lengths, pad_id):
    sequence_logprobs(logits, input_ids, prompt_lengths, pad_id)
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = _reply_mask(input_ids, prompt_lengths, pad_id)
    return torch.tensor([float(logp[b][mask[b]].sum()) for b in range(len(logp))])


# ------------------------------------------------------------------------------ 12.dpo_loss


def _dpo_checks(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta):
    dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)


@mistake("12.dpo_loss", "swapped")
def dpo_with_chosen_and_rejected_swapped(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta):
    _dpo_checks(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)
    chosen = beta * (pi_rejected - ref_rejected.detach())
    rejected = beta * (pi_chosen - ref_chosen.detach())
    loss = -F.logsigmoid(chosen - rejected).mean()
    return loss, chosen.detach(), rejected.detach(), (chosen > rejected).float().mean().item(), \
        (chosen - rejected).mean().item()


@mistake("12.dpo_loss", "no_reference")
def dpo_without_the_reference(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta):
    _dpo_checks(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)
    chosen, rejected = beta * pi_chosen, beta * pi_rejected  # "the reference is frozen, it cancels out"
    loss = -F.logsigmoid(chosen - rejected).mean()
    return loss, chosen.detach(), rejected.detach(), (chosen > rejected).float().mean().item(), \
        (chosen - rejected).mean().item()


@mistake("12.dpo_loss", "beta_twice")
def dpo_with_beta_applied_twice(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta):
    _dpo_checks(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)
    chosen = beta * (pi_chosen - ref_chosen.detach())
    rejected = beta * (pi_rejected - ref_rejected.detach())
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, chosen.detach(), rejected.detach(), (chosen > rejected).float().mean().item(), \
        (chosen - rejected).mean().item()


@mistake("12.dpo_loss", "log_sigmoid")
def dpo_with_log_of_sigmoid(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta):
    _dpo_checks(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)
    chosen = beta * (pi_chosen - ref_chosen.detach())
    rejected = beta * (pi_rejected - ref_rejected.detach())
    loss = -torch.log(torch.sigmoid(chosen - rejected)).mean()
    return loss, chosen.detach(), rejected.detach(), (chosen > rejected).float().mean().item(), \
        (chosen - rejected).mean().item()


@mistake("12.dpo_loss", "sum")
def dpo_summed_over_pairs(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta):
    _dpo_checks(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)
    chosen = beta * (pi_chosen - ref_chosen.detach())
    rejected = beta * (pi_rejected - ref_rejected.detach())
    loss = -F.logsigmoid(chosen - rejected).sum()
    return loss, chosen.detach(), rejected.detach(), (chosen > rejected).float().mean().item(), \
        (chosen - rejected).mean().item()


@mistake("12.dpo_loss", "rewards_no_beta")
def dpo_reporting_log_ratios_as_rewards(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta):
    _dpo_checks(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)
    chosen_ratio = pi_chosen - ref_chosen.detach()
    rejected_ratio = pi_rejected - ref_rejected.detach()
    loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()
    return loss, chosen_ratio.detach(), rejected_ratio.detach(), (chosen_ratio > rejected_ratio).float().mean().item(), \
        (chosen_ratio - rejected_ratio).mean().item()


@mistake("12.dpo_loss", "ties")
def dpo_counting_ties_as_wins(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta):
    _dpo_checks(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)
    chosen = beta * (pi_chosen - ref_chosen.detach())
    rejected = beta * (pi_rejected - ref_rejected.detach())
    loss = -F.logsigmoid(chosen - rejected).mean()
    return loss, chosen.detach(), rejected.detach(), (chosen >= rejected).float().mean().item(), \
        (chosen - rejected).mean().item()


@mistake("12.dpo_loss", "grad_leak")
def dpo_with_the_reference_in_the_graph(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta):
    _dpo_checks(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)
    chosen = beta * (pi_chosen - ref_chosen)  # the reference's log-probs not detached
    rejected = beta * (pi_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen - rejected).mean()
    return loss, chosen.detach(), rejected.detach(), (chosen > rejected).float().mean().item(), \
        (chosen - rejected).mean().item()


@mistake("12.dpo_loss", "no_checks")
def dpo_without_checks(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta):
    chosen = beta * (pi_chosen - ref_chosen.detach())
    rejected = beta * (pi_rejected - ref_rejected.detach())
    loss = -F.logsigmoid(chosen - rejected).mean()
    diff = chosen - rejected
    return loss, chosen.detach(), rejected.detach(), (diff > 0).float().mean().item(), diff.mean().item()


@mistake("12.dpo_loss", "grad_detached")
def dpo_loss_rebuilt_from_a_number(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta):
    _dpo_checks(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)
    chosen = beta * (pi_chosen - ref_chosen.detach())
    rejected = beta * (pi_rejected - ref_rejected.detach())
    loss = torch.tensor(-F.logsigmoid(chosen - rejected).mean().item())
    return loss, chosen.detach(), rejected.detach(), (chosen > rejected).float().mean().item(), \
        (chosen - rejected).mean().item()


# ------------------------------------------------------------------------------ 12.dpo_variants


def _variant_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, losses):
    chosen = (beta * (pi_chosen - ref_chosen)).detach()
    rejected = (beta * (pi_rejected - ref_rejected)).detach()
    return losses.mean(), chosen, rejected, (chosen > rejected).float().mean().item(), (chosen - rejected).mean().item()


def _h(pi_chosen, pi_rejected, ref_chosen, ref_rejected):
    return (pi_chosen - ref_chosen.detach()) - (pi_rejected - ref_rejected.detach())


@mistake("12.dpo_variants", "smoothing_swapped")
def cdpo_with_the_weights_swapped(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.0,
                                  loss_type="sigmoid"):
    dpo_variant_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing, loss_type)
    h = _h(pi_chosen, pi_rejected, ref_chosen, ref_rejected)
    if loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = -label_smoothing * F.logsigmoid(beta * h) - (1 - label_smoothing) * F.logsigmoid(-beta * h)
    return _variant_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, losses)


@mistake("12.dpo_variants", "smoothing_sign")
def cdpo_adding_the_flipped_term(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.0,
                                 loss_type="sigmoid"):
    dpo_variant_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing, loss_type)
    h = _h(pi_chosen, pi_rejected, ref_chosen, ref_rejected)
    if loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) + label_smoothing * F.logsigmoid(-beta * h)
    return _variant_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, losses)


@mistake("12.dpo_variants", "smoothing_ignored")
def dpo_ignoring_label_smoothing(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.0,
                                 loss_type="sigmoid"):
    dpo_variant_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing, loss_type)
    h = _h(pi_chosen, pi_rejected, ref_chosen, ref_rejected)
    losses = (h - 1 / (2 * beta)) ** 2 if loss_type == "ipo" else -F.logsigmoid(beta * h)
    return _variant_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, losses)


@mistake("12.dpo_variants", "ipo_beta_inside")
def ipo_on_the_scaled_margin(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.0,
                             loss_type="sigmoid"):
    dpo_variant_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing, loss_type)
    h = _h(pi_chosen, pi_rejected, ref_chosen, ref_rejected)
    if loss_type == "ipo":
        losses = (beta * h - 0.5) ** 2  # "the implicit reward margin should be 1/2"
    else:
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return _variant_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, losses)


@mistake("12.dpo_variants", "ipo_target")
def ipo_with_target_one_over_beta(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.0,
                                  loss_type="sigmoid"):
    dpo_variant_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing, loss_type)
    h = _h(pi_chosen, pi_rejected, ref_chosen, ref_rejected)
    if loss_type == "ipo":
        losses = (h - 1 / beta) ** 2
    else:
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return _variant_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, losses)


@mistake("12.dpo_variants", "ipo_abs")
def ipo_with_an_absolute_value(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.0,
                               loss_type="sigmoid"):
    dpo_variant_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing, loss_type)
    h = _h(pi_chosen, pi_rejected, ref_chosen, ref_rejected)
    if loss_type == "ipo":
        losses = (h - 1 / (2 * beta)).abs()
    else:
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return _variant_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, losses)


@mistake("12.dpo_variants", "no_checks")
def variants_without_checks(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.0,
                            loss_type="sigmoid"):
    dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta)  # only 12.dpo_loss's checks
    h = _h(pi_chosen, pi_rejected, ref_chosen, ref_rejected)
    if loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return _variant_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, losses)


# ------------------------------------------------------------------------------ 12.verifiable_reward


def _answer_checked(answer):
    verifiable_reward("", answer)  # the checks


def _words(text):
    first = re.split(r"(?<=[.!?])\s+", text.strip())[0]
    return first.rstrip(".!?").split()


@mistake("12.verifiable_reward", "substring")
def reward_if_the_answer_is_in_the_reply(reply, answer):
    _answer_checked(answer)
    return float(answer in reply)


@mistake("12.verifiable_reward", "whole_reply")
def reward_for_the_whole_reply(reply, answer):
    _answer_checked(answer)
    return 1.0 if reply.strip().rstrip(".!?") == answer.strip().rstrip(".!?") else 0.0


@mistake("12.verifiable_reward", "fact_only")
def reward_for_the_last_word(reply, answer):
    _answer_checked(answer)
    got = _words(reply)
    return 1.0 if got and got[-1] == _words(answer)[-1] else 0.0  # "the fact is what matters"


@mistake("12.verifiable_reward", "case")
def reward_ignoring_case(reply, answer):
    _answer_checked(answer)
    return 1.0 if [w.casefold() for w in _words(reply)] == [w.casefold() for w in _words(answer)] else 0.0


@mistake("12.verifiable_reward", "punctuation")
def reward_keeping_the_period(reply, answer):
    _answer_checked(answer)
    first = re.split(r"(?<=[.!?])\s+", reply.strip())[0]
    return 1.0 if first.split() == answer.split() else 0.0


@mistake("12.verifiable_reward", "startswith")
def reward_if_the_reply_starts_with_the_answer(reply, answer):
    _answer_checked(answer)
    return 1.0 if reply.strip().startswith(answer.strip().rstrip(".")) else 0.0


@mistake("12.verifiable_reward", "no_checks")
def reward_without_checks(reply, answer):
    return 1.0 if _words(reply) == _words(answer) else 0.0


@mistake("12.verifiable_reward", "split_anywhere")
def reward_splitting_at_every_period(reply, answer):
    _answer_checked(answer)

    def first(text):
        return re.split(r"[.!?]", text.strip())[0].split()  # "a sentence ends at . ! or ?"

    return 1.0 if first(reply) == first(answer) else 0.0


@mistake("12.verifiable_reward", "question_mark")
def reward_forgetting_the_question_mark(reply, answer):
    _answer_checked(answer)

    def first(text):
        return re.split(r"(?<=[.!])\s+", text.strip())[0].rstrip(".!").split()

    return 1.0 if first(reply) == first(answer) else 0.0


@mistake("12.verifiable_reward", "strip_one")
def reward_dropping_the_last_character(reply, answer):
    _answer_checked(answer)

    def first(text):
        sentence = re.split(r"(?<=[.!?])\s+", text.strip())[0]
        if sentence.endswith((".", "!", "?")):
            sentence = sentence[:-1]  # "drop the final period"
        return sentence.split()

    return 1.0 if first(reply) == first(answer) else 0.0


@mistake("12.verifiable_reward", "not_a_string")
def reward_without_type_checks(reply, answer):
    if not _words(answer):
        raise ValueError("the answer has no word")
    return 1.0 if _words(reply) == _words(answer) else 0.0


# ------------------------------------------------------------------------------ 12.group_advantages


def _adv_checks(rewards, group_size, scale, eps):
    group_advantages(rewards, group_size, scale, eps)


@mistake("12.group_advantages", "no_eps")
def advantages_divided_by_the_bare_std(rewards, group_size, scale="std", eps=1e-4):
    _adv_checks(rewards, group_size, scale, eps)
    grouped = rewards.float().view(-1, group_size)
    adv = grouped - grouped.mean(1, keepdim=True)
    if scale == "std":
        adv = adv / grouped.std(1, keepdim=True)
    return adv.flatten()


@mistake("12.group_advantages", "dtype")
def advantages_in_the_rewards_dtype(rewards, group_size, scale="std", eps=1e-4):
    _adv_checks(rewards, group_size, scale, eps)
    grouped = rewards.view(-1, group_size)  # int64 refused by mean(); float64 kept as it is
    if not grouped.is_floating_point():
        grouped = grouped.float()
    adv = grouped - grouped.mean(1, keepdim=True)
    if scale == "std":
        adv = adv / (grouped.std(1, keepdim=True) + eps)
    return adv.flatten()


@mistake("12.group_advantages", "batch_std")
def advantages_scaled_by_the_batch_std(rewards, group_size, scale="std", eps=1e-4):
    _adv_checks(rewards, group_size, scale, eps)
    grouped = rewards.float().view(-1, group_size)
    adv = grouped - grouped.mean(1, keepdim=True)
    if scale == "std":
        adv = adv / (rewards.float().std() + eps)  # one std for the whole batch
    return adv.flatten()


@mistake("12.group_advantages", "batch_mean")
def advantages_against_the_batch_mean(rewards, group_size, scale="std", eps=1e-4):
    _adv_checks(rewards, group_size, scale, eps)
    grouped = rewards.float().view(-1, group_size)
    adv = grouped - rewards.float().mean()
    if scale == "std":
        adv = adv / (grouped.std(1, keepdim=True) + eps)
    return adv.flatten()


@mistake("12.group_advantages", "biased_std")
def advantages_with_the_population_std(rewards, group_size, scale="std", eps=1e-4):
    _adv_checks(rewards, group_size, scale, eps)
    grouped = rewards.float().view(-1, group_size)
    adv = grouped - grouped.mean(1, keepdim=True)
    if scale == "std":
        adv = adv / (grouped.std(1, unbiased=False, keepdim=True) + eps)
    return adv.flatten()


@mistake("12.group_advantages", "interleaved")
def advantages_of_interleaved_groups(rewards, group_size, scale="std", eps=1e-4):
    _adv_checks(rewards, group_size, scale, eps)
    grouped = rewards.float().view(group_size, -1)  # (G, n_prompts): "one column per prompt"
    adv = grouped - grouped.mean(0, keepdim=True)
    if scale == "std":
        adv = adv / (grouped.std(0, keepdim=True) + eps)
    return adv.flatten()


@mistake("12.group_advantages", "none_divides")
def advantages_always_divided(rewards, group_size, scale="std", eps=1e-4):
    _adv_checks(rewards, group_size, scale, eps)
    grouped = rewards.float().view(-1, group_size)
    adv = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + eps)
    return adv.flatten()  # scale ignored


@mistake("12.group_advantages", "no_checks")
def advantages_without_checks(rewards, group_size, scale="std", eps=1e-4):
    grouped = rewards.float().reshape(-1, group_size)
    adv = grouped - grouped.mean(1, keepdim=True)
    if scale == "std":
        adv = adv / (grouped.std(1, keepdim=True) + eps)
    return adv.flatten()


@mistake("12.group_advantages", "eps_fixed")
def advantages_with_a_fixed_eps(rewards, group_size, scale="std", eps=1e-4):
    _adv_checks(rewards, group_size, scale, 1e-4)  # eps never read: neither checked nor used
    grouped = rewards.float().view(-1, group_size)
    adv = grouped - grouped.mean(1, keepdim=True)
    if scale == "std":
        adv = adv / (grouped.std(1, keepdim=True) + 1e-4)
    return adv.flatten()


@mistake("12.group_advantages", "no_float")
def advantages_of_the_rewards_as_given(rewards, group_size, scale="std", eps=1e-4):
    _adv_checks(rewards, group_size, scale, eps)
    grouped = rewards.view(-1, group_size)  # int64 rewards stay int64
    adv = grouped - grouped.mean(1, keepdim=True)
    if scale == "std":
        adv = adv / (grouped.std(1, keepdim=True) + eps)
    return adv.flatten()


# ------------------------------------------------------------------------------ 12.zero_variance


def _zv_checks(rewards, group_size):
    zero_variance_fraction(rewards, group_size)


@mistake("12.zero_variance", "batch")
def zero_variance_of_the_batch(rewards, group_size):
    _zv_checks(rewards, group_size)
    return 1.0 if rewards.std().item() == 0 else 0.0


@mistake("12.zero_variance", "all_wrong")
def zero_variance_as_unsolved_groups(rewards, group_size):
    _zv_checks(rewards, group_size)
    grouped = rewards.view(-1, group_size)
    return (grouped.sum(1) == 0).float().mean().item()  # "groups where nothing was right"


@mistake("12.zero_variance", "all_right")
def zero_variance_as_solved_groups(rewards, group_size):
    _zv_checks(rewards, group_size)
    grouped = rewards.view(-1, group_size)
    return (grouped.mean(1) == 1).float().mean().item()


@mistake("12.zero_variance", "count")
def zero_variance_count(rewards, group_size):
    _zv_checks(rewards, group_size)
    grouped = rewards.view(-1, group_size)
    return float((grouped.std(1) == 0).sum())


@mistake("12.zero_variance", "interleaved")
def zero_variance_of_interleaved_groups(rewards, group_size):
    _zv_checks(rewards, group_size)
    grouped = rewards.view(group_size, -1)
    return (grouped.std(0) == 0).float().mean().item()


@mistake("12.zero_variance", "no_checks")
def zero_variance_without_checks(rewards, group_size):
    grouped = rewards.reshape(-1, max(group_size, 1))
    return (grouped.max(1).values == grouped.min(1).values).float().mean().item() if len(rewards) else 0.0


@mistake("12.zero_variance", "std_zero")
def zero_variance_where_the_std_is_zero(rewards, group_size):
    _zv_checks(rewards, group_size)
    return (rewards.float().view(-1, group_size).std(1) == 0).float().mean().item()  # "no spread"


@mistake("12.zero_variance", "std_zero")
def zero_variance_where_no_reward_leaves_the_mean(rewards, group_size):
    _zv_checks(rewards, group_size)
    grouped = rewards.float().view(-1, group_size)
    return ((grouped == grouped.mean(1, keepdim=True)).all(1)).float().mean().item()


@mistake("12.zero_variance", "tolerance")
def zero_variance_within_a_tolerance(rewards, group_size):
    _zv_checks(rewards, group_size)
    return (rewards.float().view(-1, group_size).std(1) < 1e-3).float().mean().item()  # "float-safe"


@mistake("12.zero_variance", "no_checks")
def zero_variance_accepting_a_float_group_size(rewards, group_size):
    if not isinstance(rewards, torch.Tensor) or rewards.ndim != 1 or rewards.numel() == 0:
        raise ValueError("give a non-empty 1-d tensor of rewards")
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError("group_size must be >= 2 and divide the number of rewards")
    grouped = rewards.view(-1, int(group_size))  # 2.0 goes through
    return (grouped.amax(1) == grouped.amin(1)).float().mean().item()


# ------------------------------------------------------------------------------ 12.grpo_loss


def _grpo_checks(*args):
    grpo_loss(*args)


def _aggregate(per_token, mask, aggregation, max_length):
    lengths = mask.sum(1)
    if aggregation == "sequence":
        return (per_token.sum(1) / lengths).mean()
    if aggregation == "token":
        return per_token.sum() / lengths.sum()
    return per_token.sum() / (mask.shape[0] * (max_length or mask.shape[1]))


def _grpo(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, max_length,
          kl_fn=None, clip=True, pessimistic=True, mask_loss=True, detach_old=True, kl_sign=1.0, agg=_aggregate,
          ratio_fn=None, clip_count=None):
    """A learner's GRPO loss, with one piece swappable per mistake."""
    zeros = torch.zeros_like(logprobs)
    lp = torch.where(mask, logprobs, zeros)
    old = torch.where(mask, old_logprobs.detach() if detach_old else old_logprobs, zeros)
    ratio = ratio_fn(lp, old) if ratio_fn else torch.exp(lp - old)
    a = advantages.detach()[:, None]
    surrogate = ratio * a
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * a if clip else surrogate
    per_token = -(torch.min(surrogate, clipped) if pessimistic else torch.max(surrogate, clipped))
    kl = zeros
    if ref_logprobs is not None:
        ref = torch.where(mask, ref_logprobs.detach(), zeros)
        kl = torch.where(mask, (kl_fn or (lambda p, r: torch.exp(r - p) - (r - p) - 1))(lp, ref), zeros)
        per_token = per_token + kl_sign * beta * kl
    if mask_loss:
        per_token = torch.where(mask, per_token, zeros)
        loss = agg(per_token, mask, aggregation, max_length)
    else:
        loss = agg(per_token, torch.ones_like(mask), aggregation, max_length)
    n = mask.sum()
    counted = clip_count(ratio, surrogate, clipped, mask) if clip_count else ((clipped < surrogate) & mask)
    return loss, {"kl": float(kl.sum() / n), "clip_fraction": float(counted.sum() / n)}


@mistake("12.grpo_loss", "kl_upside_down")
def grpo_with_the_kl_ratio_upside_down(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2,
                                       beta=0.04, aggregation="sequence", max_length=None):
    args = (logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, max_length)
    _grpo_checks(*args)
    return _grpo(*args, kl_fn=lambda p, r: torch.exp(p - r) - (p - r) - 1)  # pi / pi_ref


@mistake("12.grpo_loss", "k1")
def grpo_with_the_log_ratio_as_kl(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2, beta=0.04,
                                  aggregation="sequence", max_length=None):
    args = (logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, max_length)
    _grpo_checks(*args)
    return _grpo(*args, kl_fn=lambda p, r: p - r)


@mistake("12.grpo_loss", "kl_sign")
def grpo_subtracting_the_kl(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2, beta=0.04,
                            aggregation="sequence", max_length=None):
    args = (logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, max_length)
    _grpo_checks(*args)
    return _grpo(*args, kl_sign=-1.0)  # "objective = surrogate - beta KL, so loss = -surrogate - beta KL"


@mistake("12.grpo_loss", "padding")
def grpo_broadcasting_the_advantage_to_padding(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2,
                                               beta=0.04, aggregation="sequence", max_length=None):
    args = (logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, max_length)
    _grpo_checks(*args)
    ratio = torch.exp(logprobs - old_logprobs.detach())
    a = advantages[:, None].expand_as(logprobs)  # every position of the row, padding too
    per_token = -torch.min(ratio * a, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * a)
    kl = torch.zeros_like(logprobs)
    if ref_logprobs is not None:
        d = ref_logprobs.detach() - logprobs
        kl = torch.exp(d) - d - 1
        per_token = per_token + beta * kl
    loss = _aggregate(per_token, torch.ones_like(mask), aggregation, max_length)
    n = mask.sum()
    clipped = (torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * a < ratio * a) & mask
    return loss, {"kl": float(kl[mask].sum() / n), "clip_fraction": float(clipped.sum() / n)}


@mistake("12.grpo_loss", "no_clip")
def grpo_without_the_clip(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2, beta=0.04,
                          aggregation="sequence", max_length=None):
    args = (logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, max_length)
    _grpo_checks(*args)
    return _grpo(*args, clip=False)


@mistake("12.grpo_loss", "max")
def grpo_with_the_optimistic_bound(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2, beta=0.04,
                                   aggregation="sequence", max_length=None):
    args = (logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, max_length)
    _grpo_checks(*args)
    return _grpo(*args, pessimistic=False)


@mistake("12.grpo_loss", "ratio_of_logprobs")
def grpo_with_a_ratio_of_logprobs(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2, beta=0.04,
                                  aggregation="sequence", max_length=None):
    args = (logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, max_length)
    _grpo_checks(*args)
    ones = torch.ones_like(logprobs)
    return _grpo(*args, ratio_fn=lambda p, o: torch.where(mask, p / torch.where(mask, o, ones), ones))


@mistake("12.grpo_loss", "token_mean")
def grpo_always_averaging_over_tokens(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2, beta=0.04,
                                      aggregation="sequence", max_length=None):
    args = (logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, max_length)
    _grpo_checks(*args)
    return _grpo(*args, agg=lambda per_token, m, agg, length: (
        _aggregate(per_token, m, agg, length) if agg == "dr_grpo" else per_token.sum() / m.sum()))


@mistake("12.grpo_loss", "sequence_sum")
def grpo_summing_each_reply(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2, beta=0.04,
                            aggregation="sequence", max_length=None):
    args = (logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, max_length)
    _grpo_checks(*args)
    return _grpo(*args, agg=lambda per_token, m, agg, length: (
        per_token.sum(1).mean() if agg == "sequence" else _aggregate(per_token, m, agg, length)))


@mistake("12.grpo_loss", "dr_grpo_tokens")
def dr_grpo_divided_by_the_token_count(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2,
                                       beta=0.04, aggregation="sequence", max_length=None):
    args = (logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, max_length)
    _grpo_checks(*args)
    return _grpo(*args, agg=lambda per_token, m, agg, length: (
        per_token.sum() / m.sum() if agg == "dr_grpo" else _aggregate(per_token, m, agg, length)))


@mistake("12.grpo_loss", "clip_any")
def grpo_counting_every_ratio_outside_the_range(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2,
                                                beta=0.04, aggregation="sequence", max_length=None):
    args = (logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, max_length)
    _grpo_checks(*args)
    return _grpo(*args, clip_count=lambda ratio, s, c, m: ((ratio - 1).abs() > clip_eps) & m)


@mistake("12.grpo_loss", "grad_leak")
def grpo_with_old_logprobs_in_the_graph(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2,
                                        beta=0.04, aggregation="sequence", max_length=None):
    args = (logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, max_length)
    _grpo_checks(*args)
    return _grpo(*args, detach_old=False)


@mistake("12.grpo_loss", "mask_multiply")
def grpo_masking_by_multiplying(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2, beta=0.04,
                                aggregation="sequence", max_length=None):
    args = (logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation, max_length)
    _grpo_checks(*args)
    m = mask.float()
    ratio = torch.exp(logprobs - old_logprobs.detach())
    a = advantages.detach()[:, None]
    per_token = -torch.min(ratio * a, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * a)
    kl = torch.zeros_like(logprobs)
    if ref_logprobs is not None:
        d = ref_logprobs.detach() - logprobs
        kl = (torch.exp(d) - d - 1) * m
        per_token = per_token + beta * kl
    per_token = per_token * m  # "zero out the padding"
    n = m.sum()
    clipped = (torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * a < ratio * a) & mask
    return _aggregate(per_token, mask, aggregation, max_length), {"kl": float(kl.sum() / n),
                                                                  "clip_fraction": float(clipped.sum() / n)}


@mistake("12.grpo_loss", "no_checks")
def grpo_checking_only_some_shapes(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2, beta=0.04,
                                   aggregation="sequence", max_length=None):
    if aggregation not in ("sequence", "token", "dr_grpo") or clip_eps <= 0:
        raise ValueError("unknown aggregation, or clip_eps <= 0")
    if beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs")
    if old_logprobs.shape != logprobs.shape or advantages.shape != logprobs.shape[:1]:
        raise ValueError("old_logprobs must have logprobs' shape, advantages one value per row")
    lengths = mask.sum(1)
    if bool((lengths == 0).any()):
        raise ValueError("a row without a reply token")
    if max_length is not None and max_length < int(lengths.max()):
        raise ValueError("max_length is shorter than a reply")
    return _grpo(logprobs, old_logprobs, ref_logprobs, advantages, mask.bool(), clip_eps, beta, aggregation,
                 max_length)


@mistake("12.grpo_loss", "no_checks")
def grpo_without_checks(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2, beta=0.04,
                        aggregation="sequence", max_length=None):
    if ref_logprobs is None:
        ref_logprobs = logprobs.detach()
    return _grpo(logprobs, old_logprobs, ref_logprobs, advantages, mask.bool(), clip_eps, beta, aggregation,
                 max_length)
