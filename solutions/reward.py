r"""The reward model: a language model that reads a conversation and returns one number.

RLHF (Christiano et al., 2017; Ziegler et al., 2019; Stiennon et al., 2020; Ouyang et al.,
2022, "InstructGPT") learns what people prefer from **comparisons**: for a prompt :math:`x`,
a person saw two replies and chose :math:`y_c` over :math:`y_r`. A reward model
:math:`r_\theta(x, y) \in \mathbb{R}` is trained so that the chosen reply scores higher,
under the **Bradley-Terry** model of a choice (Bradley & Terry, 1952):

.. math::
    P(y_c \succ y_r \mid x) = \sigma\big(r_\theta(x, y_c) - r_\theta(x, y_r)\big),
    \qquad
    \mathcal{L} = -\frac{1}{N} \sum_{i=1}^{N} \log \sigma\big(r_\theta(x_i, y_{c,i}) - r_\theta(x_i, y_{r,i}) - m_i\big)

where :math:`m_i \ge 0` is an optional **margin** (LLaMA 2's, Touvron et al., 2023: pairs
labelled "much better" must be separated by more). Only differences of rewards are
learned, so a constant can be added to every reward: that is why rewards are
**normalised** afterwards (mean 0, standard deviation 1 on reference samples) before a
policy is optimised against them (Ziegler et al., 2019; "The N Implementation Details of
RLHF with PPO", Huang et al., 2023).

The architecture is the language model with its output projection replaced by a **scalar
head**, ``score = nn.Linear(dim, 1, bias=False)`` (Hugging Face's
``LlamaForSequenceClassification``, which TRL's ``RewardTrainer`` trains), read at the
**last real token** of each sequence: under the causal mask, only that position has seen
the whole reply. Sequences are padded on the right with ``<|pad|>``, a token distinct from
the ``<|im_end|>`` that closes the reply, so the last non-pad token is ``<|im_end|>``.

This module has, in the order the chapter builds them:

* :func:`hidden_states`: the language model's final hidden states, the output projection left out;
* :func:`reward_example` and :func:`collate_pairs`: a prompt and a reply to token ids ending
  with ``<|im_end|>``; pairs to one right-padded batch, chosen rows first;
* :func:`sequence_rewards`: the head's values read at the last non-pad token;
* :func:`reward_forward` and :class:`RewardModel`: the backbone, the scalar head, the reward;
* :func:`preference_loss`: the Bradley-Terry loss, pairwise accuracy and mean margin;
* :func:`normalize_rewards`: rewards shifted and scaled by reference samples' mean and std;
* :func:`reward_train`, :func:`score_pairs`, :func:`score_replies`: training and scoring;
* :func:`sft_policy` and :func:`trained_reward_model`: chapter 08's SFT model and this
  chapter's reward model, built deterministically from the shipped checkpoint (chapter 11
  starts from both).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from solutions.model import LlamaConfig, Transformer
from solutions.sft import PAD, render_chat
from solutions.train import AdamW, clip_gradients, decay_groups, lr_at

# The recipe of the chapter (and of trained_reward_model): measured to pass 90% held-out
# accuracy on the rule-labelled pairs within a minute of one CPU thread.
RM_STEPS = 60
RM_BATCH_PAIRS = 8
RM_LR = 1e-3
RM_SEED = 0


# ---------------------------------------------------------------------------- the backbone


def hidden_states(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """The final hidden states of the course's ``Transformer``: ``(batch, seq, dim)``.

    What ``model(tokens)`` computes before its output projection: the embedding, every block
    (causal), the final RMSNorm; ``lm_head`` is left out (Hugging Face's ``LlamaModel``, whose
    ``last_hidden_state`` a ``LlamaForSequenceClassification`` head reads).
    """
    seq = tokens.shape[1]
    if seq > model.cfg.max_seq_len:
        raise ValueError(f"{seq} positions do not fit max_seq_len={model.cfg.max_seq_len}: shorten the input")
    cos, sin = model.rope_cos[:seq], model.rope_sin[:seq]  # (seq, head_dim)
    x = model.embed_tokens(tokens)  # (batch, seq, dim)
    for layer in model.layers:
        x = layer(x, cos, sin)  # mask None: causal
    return model.norm(x)  # (batch, seq, dim)


# ---------------------------------------------------------------------------- pairs as tokens


def reward_example(tokenizer, prompt: list[dict], reply: str, max_len: int) -> tuple[list[int], int]:
    r"""``(input_ids, prompt_length)``: the conversation ``prompt`` + the assistant's ``reply`` in ChatML.

    ``input_ids`` is :func:`~solutions.sft.render_chat` of the whole conversation without the
    final ``"\n"``: it ends with the reply's ``<|im_end|>``, the token at which the reward is
    read (the one that says the reply is over). ``prompt_length`` is the length of the prompt
    with its generation prompt ``<|im_start|>assistant\n``: the reply's tokens are
    ``input_ids[prompt_length:]``. ``ValueError`` for an empty reply or one longer than the
    context (TRL drops such pairs; here they are a mistake to fix).
    """
    if not isinstance(reply, str) or not reply.strip():
        raise ValueError(f"the reply is {reply!r}: a reward is read after a reply, so it needs at least one token")
    prompt_length = len(render_chat(tokenizer, prompt, add_generation_prompt=True))
    ids = render_chat(tokenizer, list(prompt) + [{"role": "assistant", "content": reply}])[:-1]  # no final "\n"
    if len(ids) > max_len:
        raise ValueError(f"the conversation is {len(ids)} tokens, more than the model's context of {max_len}: "
                         "shorten it or leave the pair out")
    return ids, prompt_length


def collate_pairs(chosen: list[tuple[list[int], int]], rejected: list[tuple[list[int], int]],
                  pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs to one batch: ``(input_ids (2 n, longest), prompt_lengths (2 n,))``, int64.

    Rows ``0 .. n-1`` are the chosen replies, rows ``n .. 2n-1`` the rejected ones, in the
    same order (one forward pass scores both sides). Padding on the right
    with ``pad_id``. ``ValueError`` if the two lists differ in length, or are empty.
    """
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen replies but {len(rejected)} rejected ones: each pair has one of "
                         "each, so the two lists must have the same length")
    if not chosen:
        raise ValueError("no pairs: a batch needs at least one (chosen, rejected) pair")
    examples = list(chosen) + list(rejected)
    longest = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    for b, (ids, _) in enumerate(examples):
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    prompt_lengths = torch.tensor([n for _, n in examples], dtype=torch.long)
    return input_ids, prompt_lengths


# ---------------------------------------------------------------------------- the reward head


def sequence_rewards(values: torch.Tensor, input_ids: torch.Tensor, prompt_lengths: torch.Tensor,
                     pad_id: int) -> torch.Tensor:
    r"""Each sequence's reward: the head's value at its **last non-pad token**. Returns ``(batch,)``.

    ``values``: ``(batch, seq)`` float, the scalar head at every position; ``input_ids``:
    ``(batch, seq)`` int64, padded on the **right** with ``pad_id``; ``prompt_lengths``:
    ``(batch,)`` int64, where each reply starts. With :math:`n_b` the number of non-pad
    tokens of row :math:`b`, the reward is :math:`r_b = v_{b,\,n_b - 1}`: the last position
    has read the prompt and the whole reply (the causal mask lets no earlier position see the
    reply's end), and the pads after it change nothing there.

    ``ValueError``, saying what to fix, if ``values`` and ``input_ids`` differ in shape,
    ``prompt_lengths`` is not one per row, a row has a pad before a real token (left or
    inner padding), or a row has no reply token after its prompt (a reward of the prompt
    alone would score every reply to it the same).
    """
    if values.ndim != 2 or values.shape != input_ids.shape:
        raise ValueError(f"values {tuple(values.shape)} and input_ids {tuple(input_ids.shape)} must both be "
                         "(batch, seq): one value per token (squeeze the head's last dimension of size 1)")
    prompt_lengths = torch.as_tensor(prompt_lengths, device=input_ids.device)
    if prompt_lengths.shape != input_ids.shape[:1]:
        raise ValueError(f"prompt_lengths has shape {tuple(prompt_lengths.shape)}, but there are "
                         f"{input_ids.shape[0]} sequences: give one prompt length per row")
    real = input_ids != pad_id  # (batch, seq)
    n_real = real.sum(dim=1)  # (batch,)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (seq,)
    if bool((real != (positions < n_real[:, None])).any()):
        raise ValueError("a row has a pad token before a real token: pad on the right (as collate_pairs does), "
                         "so that each sequence's real tokens come first")
    if bool((n_real <= prompt_lengths).any()):
        row = int((n_real <= prompt_lengths).nonzero()[0])
        raise ValueError(f"row {row} has {int(n_real[row])} real tokens and a prompt of {int(prompt_lengths[row])}: "
                         "its reply has no token, and a reward read in the prompt scores every reply alike")
    last = n_real - 1  # (batch,) index of the last real token
    return values.gather(1, last[:, None]).squeeze(1)  # (batch,)


def reward_forward(backbone: Transformer, score: nn.Linear, input_ids: torch.Tensor, prompt_lengths: torch.Tensor,
                   pad_id: int) -> torch.Tensor:
    r"""The reward of each sequence: ``score`` read on ``backbone``'s final hidden states at the last real token.

    .. math:: r_b = w^\top h_{b,\,n_b - 1}, \qquad h = \mathrm{RMSNorm}\big(\text{blocks}(\text{embed}(x))\big)

    ``backbone``: a course ``Transformer`` (its ``lm_head`` is not used); ``score``:
    ``nn.Linear(dim, 1, bias=False)``; ``input_ids``: ``(batch, seq)``, padded on the right
    with ``pad_id``; ``prompt_lengths``: ``(batch,)``. :func:`hidden_states` gives
    ``(batch, seq, dim)``, the head one value per position ``(batch, seq, 1)``, squeezed to
    ``(batch, seq)`` and read by :func:`sequence_rewards`. Returns ``(batch,)`` float32, a
    real number per sequence (no sigmoid: only differences of rewards mean anything).
    """
    hidden = hidden_states(backbone, input_ids)  # (batch, seq, dim)
    values = score(hidden).squeeze(-1).float()  # (batch, seq)
    return sequence_rewards(values, input_ids, prompt_lengths, pad_id)  # (batch,)


class RewardModel(nn.Module):
    """The language model with a scalar head: ``forward(input_ids, prompt_lengths)`` -> rewards ``(batch,)``.

    ``backbone``: a :class:`~solutions.model.Transformer` built from ``config`` (a dict of
    :class:`~solutions.model.LlamaConfig` fields), whose ``lm_head`` is not used; ``score``:
    ``nn.Linear(dim, 1, bias=False)``, as Hugging Face's ``LlamaForSequenceClassification``
    (no bias: the loss sees only differences of rewards, so a bias would get no gradient).
    ``forward`` is :func:`reward_forward`.
    """

    def __init__(self, config: dict, pad_id: int):
        super().__init__()
        self.pad_id = pad_id
        self.backbone = Transformer(LlamaConfig(**config))
        self.score = nn.Linear(self.backbone.cfg.dim, 1, bias=False)

    def forward(self, input_ids: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
        return reward_forward(self.backbone, self.score, input_ids, prompt_lengths, self.pad_id)


def init_score(model: RewardModel, seed: int) -> None:
    """The head drawn from N(0, 1 / (dim + 1)) with a seeded generator (OpenAI's
    lm-human-preferences; Hugging Face uses N(0, 0.02^2)): rewards start near 0."""
    g = torch.Generator().manual_seed(seed)
    dim = model.score.in_features
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(1, dim, generator=g, dtype=torch.float64) / math.sqrt(dim + 1))


def reward_model_from_data(config: dict, state: dict, pad_id: int, seed: int = 0) -> RewardModel:
    """A :class:`RewardModel` whose backbone is a language model's ``state`` and whose head is fresh."""
    model = RewardModel(config, pad_id)
    model.backbone.load_state_dict(state)
    init_score(model, seed)
    return model


# ---------------------------------------------------------------------------- the loss


def preference_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                    margin: torch.Tensor | None = None) -> tuple[torch.Tensor, float, float]:
    r"""The Bradley-Terry loss of a batch of pairs; returns ``(loss, accuracy, mean_margin)``.

    .. math::
        \mathcal{L} = \frac{1}{N}\sum_i -\log\sigma(r_{c,i} - r_{r,i} - m_i)
                    = \frac{1}{N}\sum_i \operatorname{softplus}(r_{r,i} - r_{c,i} + m_i)

    computed with ``F.logsigmoid`` (stable: ``torch.log(torch.sigmoid(d))`` rounds
    :math:`\sigma(d)` to 0 below :math:`d \approx -104` in float32 and returns infinity).
    ``loss``: a 0-d float32 tensor, to backpropagate. ``accuracy``: the share of pairs with
    :math:`r_c > r_r` (a tie is not a win); ``mean_margin``: the mean of :math:`r_c - r_r`;
    both Python floats (what TRL logs as "accuracy" and "margin"), neither depending on
    :math:`m`. ``margin``: ``None`` or ``(N,)`` of required gaps.

    ``chosen_rewards``, ``rejected_rewards``: ``(N,)``. ``ValueError`` if they are not both 1-d
    of the same length (a batch whose chosen and rejected differ in count), if ``N = 0``, or
    if ``margin`` is not ``(N,)``.
    """
    if chosen_rewards.ndim != 1 or rejected_rewards.ndim != 1:
        raise ValueError(f"chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards "
                         f"{tuple(rejected_rewards.shape)} must be 1-d, one reward per pair (squeeze a (N, 1) head)")
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(f"{chosen_rewards.shape[0]} chosen rewards but {rejected_rewards.shape[0]} rejected ones: "
                         "each pair has one of each (was a reply dropped from one side of the batch?)")
    if chosen_rewards.shape[0] == 0:
        raise ValueError("no pairs: the loss of an empty batch is 0 / 0")
    if margin is not None and tuple(margin.shape) != tuple(chosen_rewards.shape):
        raise ValueError(f"margin has shape {tuple(margin.shape)}: give one margin per pair, "
                         f"({chosen_rewards.shape[0]},), or None")
    diff = chosen_rewards.float() - rejected_rewards.float()  # (N,)
    shifted = diff if margin is None else diff - margin.float()
    loss = -F.logsigmoid(shifted).mean()
    accuracy = (diff > 0).float().mean().item()
    mean_margin = diff.mean().item()
    return loss, accuracy, mean_margin


# ---------------------------------------------------------------------------- normalisation


def normalize_rewards(rewards: torch.Tensor, reference_rewards: torch.Tensor) -> torch.Tensor:
    r"""``rewards`` shifted and scaled so that ``reference_rewards`` would have mean 0 and std 1.

    .. math:: \tilde r = \frac{r - \mu_{\text{ref}}}{\sigma_{\text{ref}}}, \qquad
        \mu_{\text{ref}} = \frac{1}{n}\sum_j r^{\text{ref}}_j, \quad
        \sigma_{\text{ref}} = \sqrt{\frac{1}{n}\sum_j (r^{\text{ref}}_j - \mu_{\text{ref}})^2}

    the population standard deviation (``unbiased=False``; OpenAI's lm-human-preferences
    computes the moments so), of the **reference** samples: the same affine map for every
    reward, as if folded into the head's weight and a bias, so that the reward model ranks
    replies exactly as before. Returns a float32 tensor of ``rewards``' shape.
    ``ValueError`` if ``reference_rewards`` is not 1-d with at least two values or has no
    spread (std 0: nothing to scale by).
    """
    if reference_rewards.ndim != 1 or reference_rewards.shape[0] < 2:
        raise ValueError(f"reference_rewards has shape {tuple(reference_rewards.shape)}: give a 1-d tensor of at "
                         "least two rewards of reference samples (a mean and a spread need two)")
    reference = reference_rewards.detach().double()
    mean = reference.mean()
    std = reference.std(unbiased=False)
    if not float(std) > 0:
        raise ValueError("the reference rewards are all equal (std 0): they cannot set a scale; score varied samples")
    return ((rewards.double() - mean) / std).float()


# ---------------------------------------------------------------------------- training and scoring


def pair_examples(tokenizer, pairs: list[dict], max_len: int) -> list[tuple[tuple[list[int], int], tuple[list[int], int]]]:
    """Each preference pair (``data.preferences``) as ``(chosen example, rejected example)``."""
    return [(reward_example(tokenizer, p["prompt"], p["chosen"], max_len),
             reward_example(tokenizer, p["prompt"], p["rejected"], max_len)) for p in pairs]


def reward_train(model: RewardModel, examples: list, steps: int = 60, batch_pairs: int = 8, max_lr: float = 1e-3,
                 warmup_steps: int = 6, weight_decay: float = 0.0, grad_clip: float = 1.0, seed: int = 0,
                 center_rewards_coefficient: float | None = None, progress: bool = True) -> dict[str, list[float]]:
    r"""Train ``model`` on ``examples`` (from :func:`pair_examples`) with the Bradley-Terry loss.

    One epoch or less, as InstructGPT (a reward model overfits after one: Ouyang et al.,
    2022) and TRL's default: batches of ``batch_pairs`` pairs in a shuffled order (from
    ``seed``), chosen and rejected scored in one forward pass (:func:`collate_pairs`),
    chapter 06's AdamW, warm-up and cosine decay to a tenth of ``max_lr``, clipping. Returns
    the per-step ``{"loss", "accuracy", "margin"}`` (``loss`` is the Bradley-Terry loss alone).

    ``center_rewards_coefficient`` :math:`c` (TRL's ``RewardConfig`` field of that name;
    Eisenstein et al., 2023, suggest 0.01) adds :math:`c \cdot \overline{(r_c + r_r)^2}` to the
    loss: each pair's mean reward is pulled towards 0. The Bradley-Terry loss sees only
    :math:`r_c - r_r`, so without it a reward model is free to give every reply to one
    question a large offset of its own; a policy optimised against such a reward sees mostly
    which question it was asked, not how well it answered (chapter 11 measures this).
    ``None`` or 0: off. ``ValueError`` unless it is ``None`` or a finite number >= 0.
    """
    from tqdm.auto import tqdm

    center = 0.0 if center_rewards_coefficient is None else center_rewards_coefficient
    if not (isinstance(center, (int, float)) and not isinstance(center, bool) and math.isfinite(center) and center >= 0):
        raise ValueError(f"center_rewards_coefficient={center_rewards_coefficient!r}: give None (off) or a finite "
                         "number >= 0 (TRL and Eisenstein et al. use 0.01)")

    optimizer = AdamW(decay_groups(model, weight_decay), lr=max_lr, betas=(0.9, 0.95))
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "margin": []}
    model.train()
    bar = tqdm(range(steps), desc="reward model", unit="step", disable=not progress)
    for step in bar:
        if len(order) < batch_pairs:
            order += torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed + step)).tolist()
        batch, order = [examples[i] for i in order[:batch_pairs]], order[batch_pairs:]
        input_ids, prompt_lengths = collate_pairs([c for c, _ in batch], [r for _, r in batch], model.pad_id)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, max_lr, warmup_steps, steps, max_lr / 10)
        rewards = model(input_ids, prompt_lengths)  # (2 n,)
        loss, accuracy, margin = preference_loss(rewards[: len(batch)], rewards[len(batch):])
        total = loss + center * (rewards[: len(batch)] + rewards[len(batch):]).pow(2).mean() if center else loss
        total.backward()
        clip_gradients(model, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for key, value in (("loss", loss.item()), ("accuracy", accuracy), ("margin", margin)):
            history[key].append(value)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy:.2f}")
    model.eval()
    return history


@torch.no_grad()
def score_replies(model: RewardModel, examples: list[tuple[list[int], int]], batch_size: int = 32,
                  progress: bool = False, desc: str = "scoring") -> torch.Tensor:
    """The reward of each ``(input_ids, prompt_length)`` example: ``(n,)`` float32, in order.

    Examples are scored in batches of similar length (sorted), so little time goes to padding;
    a right-padded row's reward does not depend on its batch.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    rewards = torch.empty(len(examples))
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        chunk = order[start:start + batch_size]
        longest = max(len(examples[i][0]) for i in chunk)
        input_ids = torch.full((len(chunk), longest), model.pad_id, dtype=torch.long)
        for row, i in enumerate(chunk):
            input_ids[row, : len(examples[i][0])] = torch.tensor(examples[i][0])
        prompt_lengths = torch.tensor([examples[i][1] for i in chunk])
        rewards[chunk] = model(input_ids, prompt_lengths)
    model.train(was_training)
    return rewards


def score_pairs(model: RewardModel, examples: list, batch_size: int = 32,
                progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen_rewards, rejected_rewards)``, each ``(n,)``, of :func:`pair_examples`' pairs."""
    flat = [c for c, _ in examples] + [r for _, r in examples]
    rewards = score_replies(model, flat, batch_size, progress)
    return rewards[: len(examples)], rewards[len(examples):]


def accuracy_by_kind(pairs: list[dict], chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Pairwise accuracy (chosen scored strictly higher) overall (``"all"``) and per rejection kind."""
    wins = (chosen > rejected).tolist()
    kinds = sorted({p["rejection"] for p in pairs})
    out = {"all": sum(wins) / len(wins)}
    for kind in kinds:
        mine = [w for w, p in zip(wins, pairs) if p["rejection"] == kind]
        out[kind] = sum(mine) / len(mine)
    return out


def longer_wins(pairs: list[dict]) -> list[float]:
    """The length baseline's verdict per pair: 1 if the chosen reply is longer (in characters),
    0 if shorter, 0.5 for a tie (a coin flip, in expectation)."""
    return [1.0 if len(p["chosen"]) > len(p["rejected"]) else 0.0 if len(p["chosen"]) < len(p["rejected"]) else 0.5
            for p in pairs]


# ---------------------------------------------------------------------------- for chapter 11


def sft_policy() -> Transformer:
    """Chapter 08's SFT model: the shipped ``sft`` checkpoint (``dense`` after the chapter's run,
    :data:`solutions.sft.SFT_RECIPE`), in eval mode. The policy chapter 11 starts from."""
    from data import load_checkpoint

    config, state = load_checkpoint("sft")
    model = Transformer(LlamaConfig(**config))
    model.load_state_dict(state)
    return model.eval()


def trained_reward_model(steps: int = RM_STEPS, seed: int = RM_SEED, progress: bool = False,
                         backbone: str = "dense") -> RewardModel:
    """This chapter's reward model, rebuilt deterministically: the shipped ``backbone``
    checkpoint with a fresh head (:func:`init_score`), trained by :func:`reward_train` on
    ``data/preferences``' training pairs with the chapter's recipe."""
    from data import course_tokenizer, load_checkpoint
    from data.preferences import load_preferences

    torch.manual_seed(seed)
    tokenizer = course_tokenizer()
    config, state = load_checkpoint(backbone)
    model = reward_model_from_data(config, state, tokenizer.encode_single_token(PAD), seed)
    examples = pair_examples(tokenizer, load_preferences("train"), config["max_seq_len"])
    reward_train(model, examples, steps=steps, batch_pairs=RM_BATCH_PAIRS, max_lr=RM_LR, seed=seed, progress=progress)
    return model.eval()
