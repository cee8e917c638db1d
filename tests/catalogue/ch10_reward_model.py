"""Wrong answers to chapter 10's checkpoints, as learners write them.

``sequence_rewards``, ``preference_loss`` and ``normalize_rewards`` are plain functions;
``reward_forward(backbone, score, input_ids, prompt_lengths, pad_id)`` is run by the
checkpoint's ``reward_model`` runner on the course's Transformer and a scalar head. It calls
the notebook's given ``hidden_states`` and the learner's own ``sequence_rewards``, here the
reference's (as a learner's notebook would once that checkpoint passes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from solutions.model import LlamaConfig, Transformer
from solutions.reward import hidden_states, sequence_rewards

from . import mistake

# ------------------------------------------------------------------------------ 10.sequence_rewards


def _checked(values, input_ids, prompt_lengths, pad_id):
    """The input checks a careful learner writes (the reference's own)."""
    sequence_rewards(values, input_ids, prompt_lengths, pad_id)


@mistake("10.sequence_rewards", "last_position")
def rewards_at_the_last_position(values, input_ids, prompt_lengths, pad_id):
    return values[:, -1]  # (batch,)


@mistake("10.sequence_rewards", "first_token")
def rewards_at_the_argmax_of_the_mask(values, input_ids, prompt_lengths, pad_id):
    _checked(values, input_ids, prompt_lengths, pad_id)
    last = (input_ids != pad_id).long().argmax(dim=1)  # argmax returns the FIRST maximum: position 0
    return values[torch.arange(values.shape[0]), last]


@mistake("10.sequence_rewards", "first_token")
def rewards_at_the_first_token(values, input_ids, prompt_lengths, pad_id):
    _checked(values, input_ids, prompt_lengths, pad_id)
    return values[:, 0]


@mistake("10.sequence_rewards", "prompt_end")
def rewards_at_the_end_of_the_prompt(values, input_ids, prompt_lengths, pad_id):
    _checked(values, input_ids, prompt_lengths, pad_id)
    return values[torch.arange(values.shape[0]), torch.as_tensor(prompt_lengths) - 1]


@mistake("10.sequence_rewards", "first_pad")
def rewards_at_the_count_of_real_tokens(values, input_ids, prompt_lengths, pad_id):
    _checked(values, input_ids, prompt_lengths, pad_id)
    n_real = (input_ids != pad_id).sum(dim=1)
    return values[torch.arange(values.shape[0]), n_real]  # one past the last real token


@mistake("10.sequence_rewards", "before_end")
def rewards_before_the_end_token(values, input_ids, prompt_lengths, pad_id):
    _checked(values, input_ids, prompt_lengths, pad_id)
    n_real = (input_ids != pad_id).sum(dim=1)
    return values[torch.arange(values.shape[0]), n_real - 2]  # "the last token is <|im_end|>, skip it"


@mistake("10.sequence_rewards", "mean_reply")
def rewards_averaged_over_the_reply(values, input_ids, prompt_lengths, pad_id):
    _checked(values, input_ids, prompt_lengths, pad_id)
    positions = torch.arange(values.shape[1])
    reply = (input_ids != pad_id) & (positions[None, :] >= torch.as_tensor(prompt_lengths)[:, None])
    return (values * reply).sum(1) / reply.sum(1)


@mistake("10.sequence_rewards", "mean_all")
def rewards_averaged_over_the_sequence(values, input_ids, prompt_lengths, pad_id):
    _checked(values, input_ids, prompt_lengths, pad_id)
    real = (input_ids != pad_id).float()
    return (values * real).sum(1) / real.sum(1)


@mistake("10.sequence_rewards", "no_checks")
def rewards_without_checking_the_inputs(values, input_ids, prompt_lengths, pad_id):
    last = (input_ids != pad_id).sum(dim=1) - 1
    return values.gather(1, last[:, None]).squeeze(1)


@mistake("10.sequence_rewards", "grad_detached")
def rewards_as_python_numbers(values, input_ids, prompt_lengths, pad_id):
    _checked(values, input_ids, prompt_lengths, pad_id)
    last = ((input_ids != pad_id).sum(dim=1) - 1).tolist()
    return torch.tensor([values[b, t].item() for b, t in enumerate(last)])


# ------------------------------------------------------------------------------ 10.reward_model


@mistake("10.reward_model", "head_shape")
def reward_from_the_logits(backbone, score, input_ids, prompt_lengths, pad_id):
    values = score(backbone(input_ids)).squeeze(-1)  # backbone(...) is the logits, (batch, seq, vocab)
    return sequence_rewards(values, input_ids, prompt_lengths, pad_id)


@mistake("10.reward_model", "squeeze")
def reward_without_squeeze(backbone, score, input_ids, prompt_lengths, pad_id):
    values = score(hidden_states(backbone, input_ids))  # (batch, seq, 1)
    return sequence_rewards(values, input_ids, prompt_lengths, pad_id)


@mistake("10.reward_model", "last_position")
def reward_at_the_last_position(backbone, score, input_ids, prompt_lengths, pad_id):
    values = score(hidden_states(backbone, input_ids)).squeeze(-1)
    return values[:, -1]


@mistake("10.reward_model", "prompt_end")
def reward_at_the_prompts_end(backbone, score, input_ids, prompt_lengths, pad_id):
    values = score(hidden_states(backbone, input_ids)).squeeze(-1)
    return values[torch.arange(len(values)), prompt_lengths - 1]


@mistake("10.reward_model", "no_norm")
def reward_without_the_final_norm(backbone, score, input_ids, prompt_lengths, pad_id):
    seq = input_ids.shape[1]
    x = backbone.embed_tokens(input_ids)
    for layer in backbone.layers:
        x = layer(x, backbone.rope_cos[:seq], backbone.rope_sin[:seq])
    values = score(x).squeeze(-1)  # the last block's output, not normalised
    return sequence_rewards(values, input_ids, prompt_lengths, pad_id)


@mistake("10.reward_model", "sigmoid")
def reward_through_a_sigmoid(backbone, score, input_ids, prompt_lengths, pad_id):
    values = score(hidden_states(backbone, input_ids)).squeeze(-1)
    return torch.sigmoid(sequence_rewards(values, input_ids, prompt_lengths, pad_id))  # "a probability"


@mistake("10.reward_model", "grad_detached")
@torch.no_grad()  # "it only scores"
def reward_under_no_grad(backbone, score, input_ids, prompt_lengths, pad_id):
    values = score(hidden_states(backbone, input_ids)).squeeze(-1)
    return sequence_rewards(values, input_ids, prompt_lengths, pad_id)


@mistake("10.reward_model", "grad_detached")
def reward_with_a_detached_backbone(backbone, score, input_ids, prompt_lengths, pad_id):
    hidden = hidden_states(backbone, input_ids).detach()  # "only the head trains"
    values = score(hidden).squeeze(-1)
    return sequence_rewards(values, input_ids, prompt_lengths, pad_id)


@mistake("10.reward_model", "dtype")
def reward_in_double_precision(backbone, score, input_ids, prompt_lengths, pad_id):
    values = score(hidden_states(backbone, input_ids)).squeeze(-1).double()  # "rewards are compared: keep digits"
    return sequence_rewards(values, input_ids, prompt_lengths, pad_id)


# ------------------------------------------------------------------------------ 10.preference_loss


def _loss_checks(chosen_rewards, rejected_rewards, margin):
    if chosen_rewards.ndim != 1 or chosen_rewards.shape != rejected_rewards.shape or len(chosen_rewards) == 0:
        raise ValueError("chosen_rewards and rejected_rewards must be (N,), N >= 1")
    if margin is not None and margin.shape != chosen_rewards.shape:
        raise ValueError("margin must be (N,)")


def _metrics(diff):
    return (diff > 0).float().mean().item(), diff.mean().item()


@mistake("10.preference_loss", "log_sigmoid")
def loss_with_log_of_sigmoid(chosen_rewards, rejected_rewards, margin=None):
    _loss_checks(chosen_rewards, rejected_rewards, margin)
    diff = chosen_rewards - rejected_rewards
    shifted = diff if margin is None else diff - margin
    return -torch.log(torch.sigmoid(shifted)).mean(), *_metrics(diff)


@mistake("10.preference_loss", "swapped")
def loss_with_chosen_and_rejected_swapped(chosen_rewards, rejected_rewards, margin=None):
    _loss_checks(chosen_rewards, rejected_rewards, margin)
    diff = rejected_rewards - chosen_rewards
    shifted = diff if margin is None else diff - margin
    return -F.logsigmoid(shifted).mean(), *_metrics(diff)


@mistake("10.preference_loss", "margin_sign")
def loss_adding_the_margin(chosen_rewards, rejected_rewards, margin=None):
    _loss_checks(chosen_rewards, rejected_rewards, margin)
    diff = chosen_rewards - rejected_rewards
    shifted = diff if margin is None else diff + margin
    return -F.logsigmoid(shifted).mean(), *_metrics(diff)


@mistake("10.preference_loss", "sum")
def loss_summed_over_pairs(chosen_rewards, rejected_rewards, margin=None):
    _loss_checks(chosen_rewards, rejected_rewards, margin)
    diff = chosen_rewards - rejected_rewards
    shifted = diff if margin is None else diff - margin
    return -F.logsigmoid(shifted).sum(), *_metrics(diff)


@mistake("10.preference_loss", "ties")
def loss_counting_ties_as_wins(chosen_rewards, rejected_rewards, margin=None):
    _loss_checks(chosen_rewards, rejected_rewards, margin)
    diff = chosen_rewards - rejected_rewards
    shifted = diff if margin is None else diff - margin
    return -F.logsigmoid(shifted).mean(), (diff >= 0).float().mean().item(), diff.mean().item()


@mistake("10.preference_loss", "accuracy_margin")
def loss_with_accuracy_against_the_margin(chosen_rewards, rejected_rewards, margin=None):
    _loss_checks(chosen_rewards, rejected_rewards, margin)
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean(), (diff > 0).float().mean().item(), (chosen_rewards - rejected_rewards).mean().item()


@mistake("10.preference_loss", "mean_margin")
def loss_reporting_the_shifted_margin(chosen_rewards, rejected_rewards, margin=None):
    _loss_checks(chosen_rewards, rejected_rewards, margin)
    diff = chosen_rewards - rejected_rewards
    shifted = diff if margin is None else diff - margin
    return -F.logsigmoid(shifted).mean(), (diff > 0).float().mean().item(), shifted.mean().item()


@mistake("10.preference_loss", "no_checks")
def loss_without_checking_the_shapes(chosen_rewards, rejected_rewards, margin=None):
    diff = chosen_rewards - rejected_rewards  # (3,) - (2,) raises, but (4, 1) - (4, 1) does not
    shifted = diff if margin is None else diff - margin
    return -F.logsigmoid(shifted).mean(), *_metrics(diff)


@mistake("10.preference_loss", "grad_detached")
def loss_rebuilt_from_a_number(chosen_rewards, rejected_rewards, margin=None):
    _loss_checks(chosen_rewards, rejected_rewards, margin)
    diff = chosen_rewards - rejected_rewards
    shifted = diff if margin is None else diff - margin
    return torch.tensor(-F.logsigmoid(shifted).mean().item()), *_metrics(diff)


# ------------------------------------------------------------------------------ 10.normalize_rewards


def _norm_checks(reference_rewards):
    if reference_rewards.ndim != 1 or len(reference_rewards) < 2 or reference_rewards.std() == 0:
        raise ValueError("reference_rewards must be 1-d, with at least two values that differ")


@mistake("10.normalize_rewards", "own_stats")
def normalize_by_the_rewards_own_statistics(rewards, reference_rewards):
    _norm_checks(reference_rewards)
    return (rewards - rewards.mean()) / rewards.std(unbiased=False)


@mistake("10.normalize_rewards", "own_std")
def normalize_by_the_rewards_own_std(rewards, reference_rewards):
    _norm_checks(reference_rewards)
    return (rewards - reference_rewards.mean()) / rewards.std(unbiased=False)


@mistake("10.normalize_rewards", "own_mean")
def normalize_around_the_rewards_own_mean(rewards, reference_rewards):
    _norm_checks(reference_rewards)
    return (rewards - rewards.mean()) / reference_rewards.std(unbiased=False)


@mistake("10.normalize_rewards", "unbiased")
def normalize_with_torch_std_default(rewards, reference_rewards):
    _norm_checks(reference_rewards)
    return (rewards - reference_rewards.mean()) / reference_rewards.std()


@mistake("10.normalize_rewards", "variance")
def normalize_by_the_variance(rewards, reference_rewards):
    _norm_checks(reference_rewards)
    return (rewards - reference_rewards.mean()) / reference_rewards.var(unbiased=False)


@mistake("10.normalize_rewards", "center_only")
def normalize_by_centering_only(rewards, reference_rewards):
    _norm_checks(reference_rewards)
    return rewards - reference_rewards.mean()


@mistake("10.normalize_rewards", "no_checks")
def normalize_without_checks(rewards, reference_rewards):
    mean, std = reference_rewards.mean(), reference_rewards.std(unbiased=False)
    return (rewards - mean) / std


@mistake("10.normalize_rewards", "dtype")
def normalize_in_double_precision(rewards, reference_rewards):
    _norm_checks(reference_rewards)
    reference = reference_rewards.double()  # "statistics in double precision", never cast back
    return (rewards.double() - reference.mean()) / reference.std(unbiased=False)
