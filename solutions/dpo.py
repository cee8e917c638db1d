r"""Direct Preference Optimization (DPO): preference pairs to a policy, with no reward model and no sampling.

RLHF (chapters 10 and 11) fits a reward model :math:`r(x, y)` to comparisons, then maximises
it with PPO under a KL leash to the SFT model :math:`\pi_{\text{ref}}`:

.. math::
    \max_{\pi}\; \mathbb{E}_{x,\, y \sim \pi}\big[r(x, y)\big]
        - \beta\, \mathrm{KL}\big(\pi(\cdot \mid x) \,\|\, \pi_{\text{ref}}(\cdot \mid x)\big)

**Deriving DPO** (Rafailov et al., 2023, "Your Language Model is Secretly a Reward Model").
For each prompt the objective is :math:`\sum_y \pi(y)\,[r(y) - \beta \log \tfrac{\pi(y)}{\pi_{\text{ref}}(y)}]`
over distributions :math:`\pi`; it equals :math:`-\beta\,\mathrm{KL}(\pi \,\|\, \pi^*) + \text{const}` with

.. math::
    \pi^*(y \mid x) = \frac{1}{Z(x)}\, \pi_{\text{ref}}(y \mid x)\, e^{r(x, y) / \beta},

so :math:`\pi^*` is the optimum. Solve for the reward:
:math:`r(x, y) = \beta \log \frac{\pi^*(y \mid x)}{\pi_{\text{ref}}(y \mid x)} + \beta \log Z(x)`.
The Bradley-Terry model of chapter 10 sees only a *difference* of rewards for the same
prompt, in which the intractable :math:`\beta \log Z(x)` cancels. Writing the policy being
trained, :math:`\pi_\theta`, in place of :math:`\pi^*`, the reward model's loss becomes a loss
on the policy itself:

.. math::
    \mathcal{L}_{\text{DPO}} = -\frac{1}{N}\sum_i \log \sigma\Big(\beta \big[
        (\log \pi_\theta(y_c \mid x) - \log \pi_{\text{ref}}(y_c \mid x))
      - (\log \pi_\theta(y_r \mid x) - \log \pi_{\text{ref}}(y_r \mid x)) \big]\Big)

and :math:`\hat r_\theta(x, y) = \beta \log \frac{\pi_\theta(y \mid x)}{\pi_{\text{ref}}(y \mid x)}`
is the **implicit reward** the policy assigns (what TRL logs as ``rewards/chosen`` and
``rewards/rejected``). :math:`\log \pi(y \mid x)` is the sum of the log-probabilities of
the reply's tokens: the prompt is given, not generated, so its tokens do not count.

Write :math:`h = (\log\pi_\theta(y_c) - \log\pi_{\text{ref}}(y_c)) - (\log\pi_\theta(y_r) - \log\pi_{\text{ref}}(y_r))`,
the log-ratio margin, so that :math:`\mathcal{L}_{\text{DPO}} = -\frac1N\sum_i \log\sigma(\beta h_i)`.
Two variants, as TRL's ``DPOTrainer`` has them:

* **label smoothing** (conservative DPO, "cDPO", Mitchell 2023; TRL's ``label_smoothing`` of
  the ``sigmoid`` loss): each label is assumed flipped with probability :math:`\varepsilon`,
  :math:`\mathcal{L} = -(1 - \varepsilon)\log\sigma(\beta h) - \varepsilon \log\sigma(-\beta h)`;
  the loss then has a minimum at a finite margin instead of pushing it to infinity;
* **IPO** (Azar et al., 2023, "A General Theoretical Paradigm..."):
  :math:`\mathcal{L} = (h - \tfrac{1}{2\beta})^2`, a squared loss that also stops at a finite
  margin, :math:`h = 1/(2\beta)`. TRL's ``loss_type="ipo"`` feeds it log-probabilities
  *averaged* over each reply's tokens; here :func:`dpo_variant_loss` takes whatever log-probabilities it
  is given (sums, unless the caller divides each by its reply's length).

As TRL: ``beta`` 0.1 by default, chosen and rejected scored in one forward pass, the reply's
closing ``<|im_end|>`` counted as a reply token, accuracy a strict ``chosen_rewards > rejected_rewards``.
Where the course differs: IPO with label smoothing is an error (TRL ignores the smoothing), and the
other loss types of TRL (``hinge``, ``robust``, ``bco_pair``, ...) and its ``rpo_alpha`` are not here.

The reference model is **frozen**: its log-probabilities are computed under
``torch.no_grad()`` (they are constants of the loss). Letting gradients flow into it (or
training the policy against itself) removes the KL anchor the derivation rests on.

A known surprise (Rafailov et al. 2024; Pal et al. 2024, "Smaug"; Razin et al. 2024): the loss
only asks the *margin* :math:`h` to grow, and it often grows by the rejected reply's
log-probability falling faster than the chosen one's, which may fall too. :func:`dpo_train`
logs both.

This module has, in the order the chapter builds them:

* :func:`sequence_logprobs`: each sequence's reply log-probability, summed over the reply's
  tokens (and :func:`policy_logprobs`, the same from a model);
* :func:`dpo_loss`: the DPO loss, implicit rewards, reward accuracy and margin; and
  :func:`dpo_variant_loss`, with label smoothing (cDPO) or IPO's squared loss;
* :func:`frozen_copy` and :func:`dpo_train`: the reference model, and the training loop.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from solutions.generate import generate
from solutions.reward import collate_pairs, reward_example
from solutions.sft import IM_END, PAD, render_chat
from solutions.train import AdamW, clip_gradients, decay_groups, lr_at

LOSS_TYPES = ("sigmoid", "ipo")


# ---------------------------------------------------------------------------- log-probabilities of replies


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, prompt_lengths: torch.Tensor,
                      pad_id: int) -> torch.Tensor:
    r"""Each sequence's reply log-probability, summed over the reply's tokens only: ``(batch,)`` float32.

    .. math:: \log \pi(y_b \mid x_b) = \sum_{j = p_b}^{n_b - 1} \log \operatorname{softmax}(z_{b,\,j-1})_{x_{b,j}}

    ``logits``: ``(batch, seq, vocab)``, the model's output on ``input_ids``: position
    :math:`j - 1` predicts token :math:`j` (shift by one). ``input_ids``: ``(batch, seq)``,
    right-padded with ``pad_id``; ``prompt_lengths``: ``(batch,)``, :math:`p_b`, the reply
    starting at token :math:`p_b`; :math:`n_b`: row :math:`b`'s number of real (non-pad) tokens.
    Only reply tokens count: the prompt is given, not generated, and padding is not text. The
    reply's closing ``<|im_end|>`` is a reply token. A sum, not a mean: :math:`\log\pi(y \mid x)`
    of the DPO derivation is the log-probability of the whole reply. The log-softmax is taken in
    float32. Differentiable (the policy is trained through it).

    ``ValueError`` if ``logits`` is not ``(batch, seq, vocab)`` for ``input_ids`` ``(batch, seq)``,
    ``prompt_lengths`` is not one per row, a pad comes before a real token, a prompt is empty,
    or a row has no reply token (:math:`n_b \le p_b`).
    """
    if logits.ndim != 3 or logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and input_ids {tuple(input_ids.shape)} do not match: "
                         "logits must be (batch, seq, vocab) for input_ids (batch, seq)")
    prompt_lengths = torch.as_tensor(prompt_lengths, device=input_ids.device)
    if prompt_lengths.shape != input_ids.shape[:1]:
        raise ValueError(f"prompt_lengths has shape {tuple(prompt_lengths.shape)} for input_ids "
                         f"{tuple(input_ids.shape)}: give one prompt length per row")
    real = input_ids != pad_id  # (batch, seq)
    n_real = real.sum(dim=1)  # (batch,): right padding, so the real tokens are the first n_real
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (seq,)
    if bool((real != (positions < n_real[:, None])).any()):
        raise ValueError("a row has a pad token before a real token: pad on the right")
    if bool((prompt_lengths < 1).any()):
        raise ValueError(f"prompt_lengths {prompt_lengths.tolist()}: every prompt has at least one token")
    if bool((n_real <= prompt_lengths).any()):
        raise ValueError("a row has no reply token: its real tokens end where its prompt does")
    target = positions[1:]  # (seq - 1,): entry t scores token j = t + 1
    mask = (target >= prompt_lengths[:, None]) & (target < n_real[:, None])  # (batch, seq - 1): reply tokens
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (batch, seq - 1, vocab)
    picked = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (batch, seq - 1)
    return torch.where(mask, picked, torch.zeros_like(picked)).sum(dim=1)  # (batch,)


def policy_logprobs(model: nn.Module, input_ids: torch.Tensor, prompt_lengths: torch.Tensor,
                    pad_id: int) -> torch.Tensor:
    """:func:`sequence_logprobs` of ``model``'s logits on ``input_ids``: ``(batch,)``. Differentiable:
    call it under ``torch.no_grad()`` for the reference model."""
    return sequence_logprobs(model(input_ids), input_ids, prompt_lengths, pad_id)


# ---------------------------------------------------------------------------- the loss


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    r"""The DPO loss of a batch of pairs: ``(loss, chosen_rewards, rejected_rewards, reward_accuracy, margin)``.

    With :math:`\pi^c, \pi^r, \rho^c, \rho^r` the policy's and the reference's summed
    log-probabilities of the chosen and rejected replies, each ``(N,)``:

    .. math::
        \hat r^c = \beta(\pi^c - \rho^c), \qquad \hat r^r = \beta(\pi^r - \rho^r), \qquad
        \mathcal{L} = \frac1N \sum_i -\log\sigma(\hat r^c_i - \hat r^r_i)

    ``F.logsigmoid`` keeps it finite where ``torch.log(torch.sigmoid(x))`` gives ``-inf`` (from
    about :math:`x < -104` in float32). :math:`\beta` multiplies the margin of log-ratios once.

    The reference's log-probabilities are constants (TRL computes them under ``torch.no_grad()``):
    they are detached here, so that no gradient reaches the reference even if the caller forgot.

    ``chosen_rewards`` :math:`\hat r^c` and ``rejected_rewards`` :math:`\hat r^r`, ``(N,)`` and
    **detached** (for logging, as TRL's ``rewards/chosen``); ``reward_accuracy``: the share of
    pairs whose chosen reward is strictly higher; ``margin``: the mean of ``chosen_rewards -
    rejected_rewards``; both Python floats.

    ``ValueError`` if ``beta <= 0``, the four tensors are not the same 1-d shape, or ``N = 0``.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}: it is the strength of the KL leash (TRL's default is 0.1)")
    shapes = {tuple(t.shape) for t in (pi_chosen, pi_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1 or pi_chosen.ndim != 1:
        raise ValueError(f"the four log-probabilities must be 1-d tensors of one shape, one value per pair; got "
                         f"{[tuple(t.shape) for t in (pi_chosen, pi_rejected, ref_chosen, ref_rejected)]}")
    if pi_chosen.shape[0] == 0:
        raise ValueError("no pairs: the loss of an empty batch is 0 / 0")
    # the reference's log-probabilities are constants of the loss: no gradient flows into them
    chosen_rewards = beta * (pi_chosen.float() - ref_chosen.detach().float())  # (N,)
    rejected_rewards = beta * (pi_rejected.float() - ref_rejected.detach().float())  # (N,)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    accuracy = (chosen_rewards > rejected_rewards).float().mean().item()
    margin = (chosen_rewards - rejected_rewards).mean().item()
    return loss, chosen_rewards, rejected_rewards, accuracy, margin


def dpo_variant_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                     ref_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0,
                     loss_type: str = "sigmoid") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    r""":func:`dpo_loss` with conservative DPO's label smoothing, or IPO's squared loss: the same five outputs.

    With :math:`h_i = (\pi^c_i - \rho^c_i) - (\pi^r_i - \rho^r_i)`, the margin of log-ratios:

    .. math::
        \texttt{sigmoid}:\; \mathcal{L} = \frac1N \sum_i -(1 - \varepsilon) \log\sigma(\beta h_i)
                                         - \varepsilon \log\sigma(-\beta h_i),
        \qquad
        \texttt{ipo}:\; \mathcal{L} = \frac1N \sum_i \Big(h_i - \frac{1}{2\beta}\Big)^2

    :math:`\varepsilon` = ``label_smoothing``, the probability that a pair's label is flipped (0:
    :func:`dpo_loss` itself). Both losses have their minimum at a finite margin. The rewards,
    accuracy and margin are :func:`dpo_loss`'s (which also checks ``beta`` and the shapes).

    ``ValueError`` if ``label_smoothing`` is outside :math:`[0, 0.5)` (at 0.5 every label is a coin
    flip), label smoothing is asked of IPO, ``loss_type`` is not ``"sigmoid"`` or ``"ipo"``, or
    :func:`dpo_loss` refuses the inputs.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r}: it is the probability "
                         "that a pair's label is flipped")
    if loss_type == "ipo" and label_smoothing != 0:
        raise ValueError("label smoothing belongs to the sigmoid loss (cDPO); the IPO loss has none")
    _, chosen_rewards, rejected_rewards, accuracy, margin = dpo_loss(pi_chosen, pi_rejected, ref_chosen,
                                                                     ref_rejected, beta)
    h = (pi_chosen.float() - ref_chosen.detach().float()) - (pi_rejected.float() - ref_rejected.detach().float())
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        losses = (h - 1 / (2 * beta)) ** 2
    return losses.mean(), chosen_rewards, rejected_rewards, accuracy, margin


# ---------------------------------------------------------------------------- training


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` to serve as the reference: same weights, in eval mode, no parameter
    requiring a gradient (so that nothing can train it, even by mistake)."""
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


def dpo_batch(tokenizer, pairs: list[dict], max_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Preference pairs (``data.preferences``) to one right-padded batch ``(input_ids, prompt_lengths)``,
    rows ``0 .. n-1`` the chosen replies, ``n .. 2n-1`` the rejected ones (chapter 10's
    :func:`~solutions.reward.reward_example` and :func:`~solutions.reward.collate_pairs`: each
    sequence ends with the reply's ``<|im_end|>``, a reply token, so the policy learns to stop)."""
    chosen = [reward_example(tokenizer, p["prompt"], p["chosen"], max_len) for p in pairs]
    rejected = [reward_example(tokenizer, p["prompt"], p["rejected"], max_len) for p in pairs]
    return collate_pairs(chosen, rejected, pad_id)


def dpo_train(policy: nn.Module, reference: nn.Module, pairs: list[dict], tokenizer=None, steps: int = 40,
              batch_pairs: int = 8, beta: float = 0.1, max_lr: float = 1e-4, warmup_steps: int = 4,
              label_smoothing: float = 0.0, loss_type: str = "sigmoid", weight_decay: float = 0.0,
              grad_clip: float = 1.0, seed: int = 0, progress: bool = False) -> dict[str, list[float]]:
    """Train ``policy`` on preference ``pairs`` with :func:`dpo_loss` against the frozen ``reference``.

    Each step: ``batch_pairs`` pairs in a shuffled order (from ``seed``; a new permutation each
    time the pairs run out), one batch of chosen and rejected rows (:func:`dpo_batch`), the
    reference's :func:`sequence_logprobs` under ``torch.no_grad()``, the policy's with
    gradients, the loss, chapter 06's AdamW (betas 0.9, 0.95) with warm-up and cosine decay to
    a tenth of ``max_lr``, global-norm clipping. Returns per-step lists: ``loss``, ``accuracy``
    and ``margin`` (of the implicit rewards), ``chosen_rewards`` and ``rejected_rewards`` (their
    means), ``chosen_logps`` and ``rejected_logps`` (the policy's mean summed log-probabilities,
    before the step: the chosen one may fall while the margin grows).

    ``pairs``: dicts with ``prompt`` (messages), ``chosen`` and ``rejected``; ``tokenizer``: the
    course tokenizer if ``None``. ``ValueError`` if ``policy`` and ``reference`` are the same
    object (the reference must be a separate, frozen copy: :func:`frozen_copy`).
    """
    if policy is reference:
        raise ValueError("policy and reference are the same model: pass a frozen copy as the reference "
                         "(frozen_copy(policy)), taken before training")
    if not pairs:
        raise ValueError("no pairs to train on")
    if tokenizer is None:
        from data import course_tokenizer
        tokenizer = course_tokenizer()
    pad_id = tokenizer.encode_single_token(PAD)
    max_len = policy.cfg.max_seq_len
    device = next(policy.parameters()).device
    optimizer = AdamW(decay_groups(policy, weight_decay), lr=max_lr, betas=(0.9, 0.95))
    order_generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    keys = ("loss", "accuracy", "margin", "chosen_rewards", "rejected_rewards", "chosen_logps", "rejected_logps")
    history: dict[str, list[float]] = {key: [] for key in keys}
    reference.eval()
    policy.train()
    from tqdm.auto import tqdm
    bar = tqdm(range(steps), desc="DPO", unit="step", disable=not progress)
    for step in bar:
        if len(order) < batch_pairs:
            order += torch.randperm(len(pairs), generator=order_generator).tolist()
        n = min(batch_pairs, len(pairs))
        batch, order = [pairs[i] for i in order[:n]], order[n:]
        input_ids, prompt_lengths = dpo_batch(tokenizer, batch, max_len, pad_id)
        input_ids, prompt_lengths = input_ids.to(device), prompt_lengths.to(device)
        with torch.no_grad():  # the reference is a constant of the loss
            ref = policy_logprobs(reference, input_ids, prompt_lengths, pad_id)  # (2 n,)
        pi = policy_logprobs(policy, input_ids, prompt_lengths, pad_id)  # (2 n,)
        if label_smoothing == 0 and loss_type == "sigmoid":
            outputs = dpo_loss(pi[:n], pi[n:], ref[:n], ref[n:], beta)
        else:
            outputs = dpo_variant_loss(pi[:n], pi[n:], ref[:n], ref[n:], beta, label_smoothing, loss_type)
        loss, chosen_rewards, rejected_rewards, accuracy, margin = outputs
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, max_lr, warmup_steps, steps, max_lr / 10)
        loss.backward()
        clip_gradients(policy, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        values = (loss.item(), accuracy, margin, chosen_rewards.mean().item(), rejected_rewards.mean().item(),
                  pi[:n].mean().item(), pi[n:].mean().item())
        for key, value in zip(keys, values):
            history[key].append(value)
        bar.set_postfix(loss=f"{values[0]:.3f}", acc=f"{accuracy:.2f}", margin=f"{margin:.2f}")
    policy.eval()
    return history


# ---------------------------------------------------------------------------- measuring a policy


def pad_rows(prompts: list[list[int]], replies: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt + reply rows, right-padded with ``pad_id``: ``(input_ids (n, longest), prompt_lengths (n,))``."""
    if len(prompts) != len(replies) or not prompts:
        raise ValueError(f"{len(prompts)} prompts and {len(replies)} replies: give one reply per prompt, at least one")
    rows = [list(p) + list(r) for p, r in zip(prompts, replies)]
    longest = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    return input_ids, torch.tensor([len(p) for p in prompts], dtype=torch.long)


@torch.no_grad()
def sample_replies(model: nn.Module, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 24,
                   temperature: float = 1.0, seed: int = 0) -> list[list[int]]:
    """One reply to each conversation of ``prompts`` (ChatML with the generation prompt), from
    chapter 07's :func:`~solutions.generate.generate` with its KV cache: sampled at ``temperature``
    from one ``torch.Generator`` seeded by ``seed`` (0: greedy). A reply that stopped at
    ``<|im_end|>`` ends with it (a reply token, as in training); one cut at ``max_new_tokens`` does not."""
    end = tokenizer.encode_single_token(IM_END)
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    replies = []
    for messages in prompts:
        prompt = render_chat(tokenizer, messages, add_generation_prompt=True)
        reply = list(generate(model, prompt, max_new_tokens, temperature=temperature, stop_tokens={end},
                              generator=generator))
        replies.append(reply + [end] if len(reply) < max_new_tokens else reply)
    model.train(was_training)
    return replies


@torch.no_grad()
def policy_report(policy: nn.Module, reference: nn.Module, tokenizer, pairs: list[dict], max_new_tokens: int = 24,
                  temperature: float = 1.0, seed: int = 0, batch_size: int = 16) -> dict[str, float]:
    r"""How a policy answers the questions of preference ``pairs`` (held out), judged by the gold judge.

    One reply per question, sampled by :func:`sample_replies`; returns means over the questions:
    ``gold`` (:func:`data.preferences.gold_score`), ``kl`` (the summed log-ratio of the reply,
    :math:`\log\pi(y \mid x) - \log\pi_{\text{ref}}(y \mid x)`, whose mean over replies sampled from
    :math:`\pi` estimates :math:`\mathrm{KL}(\pi \,\|\, \pi_{\text{ref}})` per reply; exact at
    ``temperature`` 1, the distribution itself), ``length`` (reply tokens), ``chosen_logp`` (the
    policy's summed log-probability of the pairs' chosen replies, :func:`policy_logprobs`), and
    ``replies``, the texts.
    """
    from data.preferences import gold_score

    pad_id, end = tokenizer.encode_single_token(PAD), tokenizer.encode_single_token(IM_END)
    prompts = [pair["prompt"] for pair in pairs]
    replies = sample_replies(policy, tokenizer, prompts, max_new_tokens, temperature, seed)
    texts = [tokenizer.decode([t for t in reply if t != end]).strip() for reply in replies]
    golds = [gold_score(pair, text) for pair, text in zip(pairs, texts)]
    prompt_ids = [render_chat(tokenizer, messages, add_generation_prompt=True) for messages in prompts]
    log_ratios, chosen = [], []
    policy.eval()
    for start in range(0, len(pairs), batch_size):
        rows = slice(start, start + batch_size)
        input_ids, prompt_lengths = pad_rows(prompt_ids[rows], replies[rows], pad_id)
        log_ratios += (policy_logprobs(policy, input_ids, prompt_lengths, pad_id)
                       - policy_logprobs(reference, input_ids, prompt_lengths, pad_id)).tolist()
        examples = [reward_example(tokenizer, p["prompt"], p["chosen"], policy.cfg.max_seq_len) for p in pairs[rows]]
        input_ids, prompt_lengths = pad_rows([ids[:n] for ids, n in examples], [ids[n:] for ids, n in examples], pad_id)
        chosen += policy_logprobs(policy, input_ids, prompt_lengths, pad_id).tolist()
    n = len(pairs)
    return {"gold": sum(golds) / n, "kl": sum(log_ratios) / n, "length": sum(len(r) for r in replies) / n,
            "chosen_logp": sum(chosen) / n, "replies": texts}
