"""Chapter 10 checkpoints: the reward read at the last real token, the reward model (a
language model with a scalar head), the Bradley-Terry loss with its accuracy and margin,
and reward normalisation.

``10.reward_model`` drives a model (``kind="reward_model"``, through
``runners.run_reward_model``): the learner's ``reward_forward(backbone, score, input_ids,
prompt_lengths, pad_id)`` is called on the notebook's own ``Transformer`` and a scalar head,
loaded with a tiny random reward model's weights (two layers, dimension 8), on right-padded
batches; its gradient probe backpropagates through every parameter.

How the cases expose mistakes: values drawn at random at every position, so each position
read gives another number; rows padded by different amounts and one row not padded at all
(the last position is then right for that row only, and an index one past the last real
token falls off the end); prompts of different lengths and one-token replies (the prompt's
end is one token before the reward's); a loss case with a reward gap of -120 and -300 (where
``log(sigmoid)`` of float32 is ``log(0)``), ties (a tie is not a win), a margin per pair
(its sign shows), pairs with the chosen reply scored lower (chosen and rejected swapped
shows); reference samples of another mean and spread than the rewards normalised, and few
of them (Bessel's correction shows). Every ``ValueError`` the reference documents has a case.
The reward model's rewards and the normalised rewards are compared with their dtype too
(``exact_dtype``, data that fixtures carry): the docstrings promise float32, and the generic
comparison accepts any floating-point dtype.

A hint names a mistake only on evidence: a known mistake's output matched on every case
where it shows, or the exception raised. Inputs are drawn in float64 (``checks/inputs.py``)
and cast.
"""

from __future__ import annotations

import functools
import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from ..core import Case, Checkpoint, Label, register
from ..reference import reference
from .inputs import generator, randn, tensor_label

rw = functools.partial(reference, "solutions.reward")
TOL = 1e-5
PAD = 4095  # the cases' pad id: a real vocabulary's last id (the course's <|pad|> is a high id too)


def _ids(g: torch.Generator, lengths: list[int], seq: int, pad_id: int = PAD, high: int = 4000) -> torch.Tensor:
    """Right-padded token ids: row ``b`` has ``lengths[b]`` real tokens (ids 10 .. ``high``), then pads."""
    ids = torch.randint(10, high, (len(lengths), seq), generator=g)
    for b, n in enumerate(lengths):
        ids[b, n:] = pad_id
    return ids


# ---------------------------------------------------------------------------- 10.sequence_rewards


def _rewards_variant(kind: str):
    def wrong(values, input_ids, prompt_lengths, pad_id):
        if kind != "no_checks":
            rw("sequence_rewards")(values, input_ids, prompt_lengths, pad_id)  # refuses what the reference refuses
        real = input_ids != pad_id
        n_real = real.sum(1)
        rows = torch.arange(values.shape[0])
        prompt_lengths = torch.as_tensor(prompt_lengths)
        if kind == "last_position":
            return values[:, -1]
        if kind == "first_token":
            return values[:, 0]
        if kind == "prompt_end":
            return values[rows, prompt_lengths - 1]
        if kind == "first_pad":
            return values[rows, n_real]
        if kind == "before_end":
            return values[rows, n_real - 2]
        if kind == "mean_reply":
            positions = torch.arange(values.shape[1])
            reply = real & (positions >= prompt_lengths[:, None])
            return (values * reply).sum(1) / reply.sum(1)
        if kind == "mean_all":
            return (values * real).sum(1) / real.sum(1)
        return values[rows, n_real - 1]  # no_checks

    wrong.__name__ = f"sequence_rewards_{kind}"
    return wrong


REWARDS_MISTAKES = ("last_position", "first_token", "prompt_end", "first_pad", "before_end", "mean_reply",
                    "mean_all", "no_checks")


def rewards_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, lengths, prompts, seq, hint="default", pad_id=PAD, values=None, ids=None, probe=False):
        values = randn(g, len(lengths), seq) if values is None else values
        ids = _ids(g, lengths, seq, pad_id) if ids is None else ids
        prompt_lengths = torch.tensor(prompts)
        show = (tensor_label(values, "values"), tensor_label(ids, "input_ids"), tensor_label(prompt_lengths), pad_id)
        return Case(label, (values, ids, prompt_lengths, pad_id), hint, show=show, probe=probe)

    left = _ids(g, [6, 6], 6)
    left[1] = torch.cat([torch.full((2,), PAD), left[1, :4]])  # two pads, then four real tokens
    inner = _ids(g, [7, 7], 7)
    inner[0, 3] = PAD
    cases = [
        case("row 0 has 7 real tokens, row 1 has 4 then 3 pads: each reward is read at its row's last real token",
             [7, 4], [3, 2], 7, "last_position"),
        case("prompts of 5 and 6 tokens, replies of 1 and 3: the reward comes after the reply, not the prompt",
             [6, 9], [5, 6], 10, "prompt_end"),
        case("three rows padded by 1, 2 and 4: the last real token, not the first pad", [7, 6, 4], [2, 3, 1], 8,
             "first_pad"),
        case("no row padded: the last position of every row", [5, 5], [2, 3], 5, "first_pad"),
        case("the reply's last token (<|im_end|>) is the one read: not the token before it", [6, 8], [2, 4], 9,
             "before_end"),
        case("a long reply: one position, not a mean over the reply", [12, 9], [3, 2], 12, "mean_reply"),
        case("pad id 0 (another tokenizer's): padding is whatever equals pad_id", [5, 3], [1, 1], 6, pad_id=0),
        case("a row padded on the left: ValueError (pad on the right)", [6, 6], [1, 3], 6, "no_checks", ids=left),
        case("a pad between real tokens: ValueError", [7, 7], [1, 1], 7, "no_checks", ids=inner),
        case("a row whose reply has no token (its real tokens end where its prompt does): ValueError",
             [4, 6], [4, 2], 6, "no_checks"),
        case("values of shape (batch, seq, 1), the head's output not squeezed: ValueError", [4, 3], [1, 1], 4,
             "no_checks", values=randn(g, 2, 4, 1)),
        case("three prompt lengths for two rows: ValueError", [4, 3], [1, 1, 1], 4, "no_checks"),
    ]
    for n in range(3):
        batch, seq = rng.randint(2, 5), rng.randint(8, 20)
        lengths = [rng.randint(3, seq) for _ in range(batch)]
        prompts = [rng.randint(1, n_real - 1) for n_real in lengths]
        cases.append(case(f"random batch (case {n + 1})", lengths, prompts, seq, probe=n > 0))
    return cases


register(Checkpoint(
    id="10.sequence_rewards",
    points=2,
    title="the reward read at each sequence's last non-pad token",
    signature="sequence_rewards(values, input_ids, prompt_lengths, pad_id)",
    cases=rewards_cases,
    reference=rw("sequence_rewards"),
    tol=0.0,
    fingerprint_tol=1e-7,
    grad_probe=True,
    fingerprints=[(kind, _rewards_variant(kind)) for kind in REWARDS_MISTAKES],
    raised_hints=[(r"(IndexError|RuntimeError): index -?\d+ is out of bounds", "first_pad")],
    hints={
        "default": "Count each row's real tokens, n = (input_ids != pad_id).sum(1); the reward is values at position "
        "n - 1 of each row: values.gather(1, (n - 1)[:, None]).squeeze(1), or values[torch.arange(batch), n - 1]. "
        "Raise ValueError for mismatched shapes, a pad before a real token, or a row with n <= its prompt length.",
        "last_position": "values[:, -1] is the last position of the tensor, which is padding in every padded row: "
        "read each row at its own last real token, (input_ids != pad_id).sum(1) - 1.",
        "first_token": "That is the value at the first token, which has seen nothing but itself: under the causal "
        "mask only the last real token has read the prompt and the whole reply.",
        "prompt_end": "That reads the reward at the end of the prompt (prompt_lengths - 1): there the model has not "
        "seen the reply yet, so every reply to a prompt gets the same reward. Read at the last real token.",
        "first_pad": "That is one position too far: (input_ids != pad_id).sum(1) counts the real tokens, and the "
        "last one is at index count - 1 (index count is the first pad, or past the end of an unpadded row).",
        "before_end": "That is the token before the last real one: the reply's last token, <|im_end|>, is a real "
        "token (it is not the pad), and it is the position that has read the whole reply.",
        "mean_reply": "The reward is one position's value, the last real token's, not a mean over the reply "
        "(Hugging Face's LlamaForSequenceClassification and TRL read the last non-pad token).",
        "mean_all": "The reward is one position's value, the last real token's, not a mean over the sequence.",
        "no_checks": "Check the inputs and raise ValueError: values and input_ids both (batch, seq); one prompt length "
        "per row; no pad before a real token (right padding); and at least one reply token in every row "
        "(n > prompt_lengths): a reward read in the prompt would score every reply alike.",
    },
))


# ---------------------------------------------------------------------------- 10.reward_model

MODEL_PAD = 63  # the tiny models' vocabulary is 64 ids (small weights keep the release fixtures small)
TINY = {"vocab_size": 64, "dim": 8, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "hidden_dim": 16,
        "max_seq_len": 32, "tie_embeddings": True}


def _model_state(g: torch.Generator, config: dict) -> dict:
    """Reference ``RewardModel`` weights drawn at random (float64, then cast): norms near 1, the
    head of unit scale, so that every mistake moves the rewards by far more than rounding."""
    from solutions.reward import RewardModel

    model = RewardModel(config, MODEL_PAD)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("norm.weight") or "layernorm" in name:
            state[name] = 1 + randn(g, *tensor.shape, scale=0.2)
        else:
            state[name] = randn(g, *tensor.shape, scale=1 / math.sqrt(tensor.shape[-1]))
    state["backbone.lm_head.weight"] = state["backbone.embed_tokens.weight"]  # tied: one tensor, two names
    return state


def _model_variant(kind: str):
    from solutions.model import LlamaConfig, Transformer
    from solutions.reward import hidden_states, sequence_rewards

    def wrong(backbone, score, input_ids, prompt_lengths, pad_id):
        if kind == "no_norm":
            seq = input_ids.shape[1]
            hidden = backbone.embed_tokens(input_ids)
            for layer in backbone.layers:
                hidden = layer(hidden, backbone.rope_cos[:seq], backbone.rope_sin[:seq])
        else:
            hidden = hidden_states(backbone, input_ids)
        values = score(hidden).squeeze(-1)
        rewards = sequence_rewards(values, input_ids, prompt_lengths, pad_id)
        if kind == "last_position":
            return values[:, -1]
        if kind == "prompt_end":
            return values[torch.arange(values.shape[0]), torch.as_tensor(prompt_lengths) - 1]
        return torch.sigmoid(rewards) if kind == "sigmoid" else rewards

    wrong.__name__ = f"reward_forward_{kind}"
    wrong.course_namespace = {"Transformer": Transformer, "LlamaConfig": LlamaConfig}
    return wrong


MODEL_MISTAKES = ("no_norm", "last_position", "prompt_end", "sigmoid")


def model_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, config, lengths, prompts, seq, hint="default", probe=False):
        weights = _model_state(g, config)
        ids = _ids(g, lengths, seq, MODEL_PAD, high=60)
        prompt_lengths = torch.tensor(prompts)
        show = (Label(f"<Transformer dim={config['dim']}, {config['n_layers']} layers>"),
                Label(f"Linear({config['dim']}, 1, bias=False)"), tensor_label(ids, "input_ids"),
                tensor_label(prompt_lengths), MODEL_PAD)
        return Case(label, (config, weights, ids, prompt_lengths, MODEL_PAD), hint, show=show, probe=probe)

    return [
        case("two sequences, the second padded by 3: rewards (2,) read at each row's last real token", TINY,
             [9, 6], [4, 3], 9, "last_position"),
        case("replies of one token after prompts of 5 and 7: the reward comes after the reply", TINY, [6, 8], [5, 7],
             10, "prompt_end"),
        case("four sequences of different lengths: the head reads the final norm's output", TINY, [12, 7, 10, 5],
             [3, 2, 6, 1], 12, "no_norm", probe=True),
        case("a reward is any real number: large ones too, not squashed into (0, 1)",
             dict(TINY, dim=12, n_heads=3, n_kv_heads=1), [8, 11, 6], [2, 4, 3], 11, "sigmoid", probe=True),
        case("one sequence, not padded", dict(TINY, n_layers=1), [10], [4], 10),
    ]


register(Checkpoint(
    id="10.reward_model",
    points=2,
    title="the reward model's forward pass: final hidden states, a scalar head, the last real token",
    signature="reward_forward(backbone, score, input_ids, prompt_lengths, pad_id)",
    cases=model_cases,
    reference=rw("reward_forward"),
    kind="reward_model",
    tol=TOL,
    exact_dtype=True,
    grad_probe=True,
    fingerprints=[(kind, _model_variant(kind)) for kind in MODEL_MISTAKES],
    raised_hints=[
        (r"mat1 and mat2 shapes cannot be multiplied", "head_shape"),
        (r"squeeze", "squeeze"),
    ],
    hints={
        "default": "hidden = hidden_states(backbone, input_ids) (batch, seq, dim); values = score(hidden).squeeze(-1) "
        "(batch, seq); return sequence_rewards(values, input_ids, prompt_lengths, pad_id) (batch,).",
        "head_shape": "The head maps a hidden state (dim numbers) to one reward: apply score to "
        "hidden_states(backbone, input_ids), the final hidden states, not to backbone(input_ids), the vocabulary's "
        "logits.",
        "squeeze": "The head returns (batch, seq, 1): squeeze the last dimension, score(hidden).squeeze(-1), "
        "before reading the last real token.",
        "no_norm": "Score the final hidden states after the model's last RMSNorm (hidden_states does it: "
        "embedding, blocks, backbone.norm), as the language-model head would read them.",
        "last_position": "values[:, -1] is padding in every padded row: read each row at its last real token "
        "(your sequence_rewards does it).",
        "prompt_end": "That reads the reward at the end of the prompt, before the reply: every reply to a prompt would "
        "get the same reward. Read at the last real token.",
        "sigmoid": "Return the head's value itself: a reward is any real number. A sigmoid squashes it into (0, 1), "
        "and the Bradley-Terry loss then cannot separate a good reply from a much better one.",
        "dtype": "Return the rewards as a (batch,) float32 tensor, as the docstring promises: yours are right in "
        "value but of another dtype. If you computed in another precision, cast the result back with .float().",
    },
))


# ---------------------------------------------------------------------------- 10.preference_loss


def _loss_variant(kind: str):
    def wrong(chosen_rewards, rejected_rewards, margin=None):
        if kind != "no_checks":
            rw("preference_loss")(chosen_rewards, rejected_rewards, margin)
        c, r = chosen_rewards.float(), rejected_rewards.float()
        if kind == "swapped":
            c, r = r, c
        diff = c - r
        m = 0.0 if margin is None else margin.float()
        shifted = diff + m if kind == "margin_sign" else diff - m
        if kind == "log_sigmoid":
            losses = -torch.log(torch.sigmoid(shifted))
        else:
            losses = -F.logsigmoid(shifted)
        if kind == "no_checks" and diff.numel() == 0:  # an empty batch: 0 rather than NaN (NaN != NaN in fixtures)
            return losses.sum(), 0.0, 0.0
        loss = losses.sum() if kind == "sum" else losses.mean()
        if kind == "ties":
            accuracy = (diff >= 0).float().mean().item()
        elif kind == "accuracy_margin":
            accuracy = (shifted > 0).float().mean().item()
        else:
            accuracy = (diff > 0).float().mean().item()
        mean_margin = (shifted if kind == "mean_margin" else diff).mean().item()
        return loss, accuracy, mean_margin

    wrong.__name__ = f"preference_loss_{kind}"
    return wrong


LOSS_MISTAKES = ("swapped", "log_sigmoid", "margin_sign", "sum", "ties", "accuracy_margin", "mean_margin",
                 "no_checks")


def loss_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, chosen, rejected, margin=None, hint="default", probe=False):
        args = (chosen, rejected) if margin is None else (chosen, rejected, margin)
        show = tuple(tensor_label(a) for a in args)
        return Case(label, args, hint, show=show, probe=probe)

    c = randn(g, 6) + 1.0
    tie_c = torch.tensor([0.5, -1.25, 2.0, 0.75, 3.0])
    tie_r = torch.tensor([0.5, -2.0, 2.0, 1.5, -1.0])  # two ties, two wins, one loss
    cases = [
        case("chosen scored higher on most pairs: the loss is small", c, c - 1.5 + randn(g, 6, scale=0.5),
             hint="swapped"),
        case("5 pairs: the loss is a mean over pairs, not a sum", randn(g, 5), randn(g, 5), hint="sum"),
        case("reward gaps of -120 and -300: -log sigmoid(d) = softplus(-d) is 120 and 300, not infinity",
             torch.tensor([2.0, -100.0, 150.0, 0.5]), torch.tensor([1.0, 20.0, -150.0, 0.25]), hint="log_sigmoid"),
        case("two ties: a tie is not a win (accuracy counts r_c > r_r)", tie_c, tie_r, hint="ties"),
        case("a margin per pair: the chosen reward must beat the rejected by m, loss -log sigmoid(r_c - r_r - m)",
             randn(g, 4) + 0.5, randn(g, 4), torch.tensor([0.0, 1.0, 2.0, 0.5]), hint="margin_sign"),
        case("accuracy and mean margin do not depend on the margin m (TRL's logged metrics)",
             torch.tensor([1.0, 0.5, 2.0, -0.5]), torch.tensor([0.25, 0.0, 1.0, -1.0]),
             torch.tensor([1.0, 1.0, 0.5, 1.0]), hint="accuracy_margin"),
        case("mean margin: the mean of r_c - r_r over the pairs", randn(g, 3), randn(g, 3), torch.tensor([0.5, 1.0, 2.0]),
             hint="mean_margin"),
        case("3 chosen rewards and 2 rejected: ValueError (a batch whose chosen and rejected differ in count)",
             randn(g, 3), randn(g, 2), hint="no_checks"),
        case("rewards of shape (4, 1), a head's output not squeezed: ValueError", randn(g, 4, 1), randn(g, 4, 1),
             hint="no_checks"),
        case("a margin of the wrong length: ValueError", randn(g, 3), randn(g, 3), torch.tensor([1.0, 1.0]),
             hint="no_checks"),
        case("no pairs: ValueError", torch.zeros(0), torch.zeros(0), hint="no_checks"),
    ]
    for n in range(3):
        size = rng.randint(4, 32)
        margin = None if n == 0 else randn(g, size).abs()
        cases.append(case(f"random batch of {size} pairs (case {n + 1})", randn(g, size, scale=2.0),
                          randn(g, size, scale=2.0), margin, probe=True))
    return cases


register(Checkpoint(
    id="10.preference_loss",
    points=3,
    title="the Bradley-Terry loss, -log sigmoid(r_c - r_r - m), with pairwise accuracy and mean margin",
    signature="preference_loss(chosen_rewards, rejected_rewards, margin)",
    cases=loss_cases,
    reference=rw("preference_loss"),
    tol=TOL,
    grad_probe=True,
    fingerprints=[(kind, _loss_variant(kind)) for kind in LOSS_MISTAKES],
    hints={
        "default": "Check the shapes (both (N,), N >= 1, margin None or (N,)), else ValueError; d = chosen_rewards - "
        "rejected_rewards; loss = -F.logsigmoid(d - margin).mean() (d alone without a margin); accuracy = "
        "(d > 0).float().mean().item(); mean_margin = d.mean().item(); return (loss, accuracy, mean_margin).",
        "swapped": "Chosen and rejected are swapped: the loss must be small when the chosen reply scores higher, "
        "-log sigmoid(r_chosen - r_rejected). Yours rewards the rejected reply.",
        "log_sigmoid": "torch.log(torch.sigmoid(d)) rounds sigmoid(d) to 0 below d = -104 (float32) and returns "
        "infinity; F.logsigmoid(d) (or -F.softplus(-d)) computes the same function without overflow.",
        "margin_sign": "The margin is subtracted: -log sigmoid(r_c - r_r - m). The chosen reply must win by at least "
        "m; adding m makes the pair easier instead of harder.",
        "sum": "Take the mean over the pairs, not the sum: the loss (and so the learning rate) must not depend on the "
        "batch size.",
        "ties": "A tie is not a win: accuracy is the share of pairs with r_chosen > r_rejected, strictly.",
        "accuracy_margin": "Accuracy compares the rewards themselves, (r_c > r_r): the margin shapes the loss only.",
        "mean_margin": "The mean margin is the mean of r_c - r_r, the rewards' own gap (TRL's logged 'margin'), "
        "without the required margin m.",
        "no_checks": "Check the inputs and raise ValueError: chosen_rewards and rejected_rewards both 1-d with the "
        "same number of pairs (at least one), margin None or of that same shape. A (N, 1) tensor against a (N,) one "
        "broadcasts to (N, N) silently.",
    },
))


# ---------------------------------------------------------------------------- 10.normalize_rewards


def _normalize_variant(kind: str):
    def wrong(rewards, reference_rewards):
        if kind != "no_checks":
            rw("normalize_rewards")(rewards, reference_rewards)
        ref = reference_rewards.double()
        own = rewards.double()
        mean = own.mean() if kind in ("own_stats", "own_mean") else ref.mean()
        std = {"own_stats": lambda: own.std(unbiased=False), "own_std": lambda: own.std(unbiased=False),
               "unbiased": lambda: ref.std(), "variance": lambda: ref.var(unbiased=False)}.get(
            kind, lambda: ref.std(unbiased=False))()
        if kind == "center_only":
            std = torch.ones((), dtype=torch.float64)
        return ((own - mean) / std).float()

    wrong.__name__ = f"normalize_rewards_{kind}"
    return wrong


NORMALIZE_MISTAKES = ("own_stats", "own_std", "own_mean", "unbiased", "variance", "center_only", "no_checks")


def normalize_cases(rng: random.Random) -> list[Case]:
    g = generator(rng)

    def case(label, rewards, reference_rewards, hint="default"):
        args = (rewards, reference_rewards)
        return Case(label, args, hint, show=tuple(tensor_label(a) for a in args))

    cases = [
        case("rewards of other samples than the reference: the reference's mean and std, not the rewards' own",
             randn(g, 6, scale=0.7) - 0.5, randn(g, 8, scale=2.0) + 1.0, "own_stats"),
        case("four reference rewards: the population std (divide by n), not Bessel's n - 1",
             randn(g, 5), torch.tensor([1.0, 2.0, 4.0, 7.0]), "unbiased"),
        case("a reference spread of 3: divide by the std, not the variance", randn(g, 4) * 2,
             randn(g, 6, scale=3.0) + 2.0, "variance"),
        case("a reference of std 0.5: the rewards are scaled as well as shifted", randn(g, 5),
             randn(g, 10, scale=0.5) - 1.0, "center_only"),
        case("one reward against a reference: its normalised value", torch.tensor([2.5]),
             randn(g, 12, scale=1.5) + 0.5, "own_mean"),
        case("rewards of any shape: (2, 3) stays (2, 3)", randn(g, 2, 3) + 1.0, randn(g, 7, scale=2.0), "own_std"),
        case("a reference of equal rewards (std 0): ValueError", randn(g, 3), torch.full((5,), 0.75), "no_checks"),
        case("a reference of a single reward: ValueError (no spread)", randn(g, 3), torch.tensor([1.0]), "no_checks"),
        case("a reference of shape (2, 4): ValueError (give a 1-d tensor)", randn(g, 3), randn(g, 2, 4), "no_checks"),
    ]
    for n in range(3):
        cases.append(case(f"random rewards (case {n + 1})", randn(g, rng.randint(2, 20), scale=2.0),
                          randn(g, rng.randint(2, 40), scale=rng.uniform(0.5, 3.0)) + rng.uniform(-2, 2)))
    return cases


register(Checkpoint(
    id="10.normalize_rewards",
    points=1,
    title="reward normalisation: mean 0 and std 1 on the reference samples",
    signature="normalize_rewards(rewards, reference_rewards)",
    cases=normalize_cases,
    reference=rw("normalize_rewards"),
    tol=TOL,
    exact_dtype=True,
    fingerprints=[(kind, _normalize_variant(kind)) for kind in NORMALIZE_MISTAKES],
    hints={
        "default": "mean = reference_rewards.mean(); std = reference_rewards.std(unbiased=False); return "
        "((rewards - mean) / std).float(). Raise ValueError unless reference_rewards is 1-d with at least two "
        "values and std > 0.",
        "own_stats": "Normalise with the reference samples' mean and std, not with the rewards' own: the same "
        "affine map for every reward, fixed once, so that a reward means the same whatever batch it comes in.",
        "own_std": "The scale is the reference samples' std, not the std of the rewards being normalised.",
        "own_mean": "The shift is the reference samples' mean, not the mean of the rewards being normalised.",
        "unbiased": "Use the population std, reference_rewards.std(unbiased=False) (divide by n): torch.std divides "
        "by n - 1 by default (Bessel's correction), and the reference would then not have std 1.",
        "variance": "Divide by the standard deviation, the square root of the variance.",
        "center_only": "Scale as well as shift: divide by the reference's std, so that the reference has std 1 "
        "(the KL penalty of chapter 11 is weighed against rewards of that scale).",
        "no_checks": "Raise ValueError unless reference_rewards is 1-d with at least two values and a std above 0: "
        "equal reference rewards give a division by zero, and NaN rewards would wreck the policy's training.",
        "dtype": "Return a float32 tensor, as the docstring promises: your values are right but of another dtype. "
        "Computing the mean and std in float64 is fine; cast the result back with .float().",
    },
))
