r"""Instruction tuning (supervised fine-tuning, SFT): from a model that continues text to one that answers.

A pretrained model continues whatever it is given. To make it *answer*, fine-tune it on
conversations, written in a **chat template** that marks who speaks. The course uses
**ChatML** (OpenAI, 2023; Qwen's models use it too), with two special tokens:

.. code-block:: text

    <|im_start|>system
    You answer questions about stories.<|im_end|>
    <|im_start|>user
    Mia had a dog named Pip. What is the dog called?<|im_end|>
    <|im_start|>assistant
    Pip<|im_end|>

Each message is ``<|im_start|>`` + role + ``"\n"`` + content + ``<|im_end|>`` + ``"\n"``. To
ask the model for a reply, the prompt ends with the assistant's header,
``<|im_start|>assistant\n`` (the *generation prompt*), and generation stops at ``<|im_end|>``.

The loss is the pretraining cross-entropy, restricted to the tokens the model should
*produce*: the assistant's content and its closing ``<|im_end|>`` (Ouyang et al., 2022;
"prompt loss weight 0"). With a mask :math:`m_{b,t} \in \{0, 1\}` over the targets,

.. math::
    \mathcal{L} = \frac{\sum_{b,t} m_{b,t} \, \big(-\log p_\theta(y_{b,t} \mid x_{b,\le t})\big)}
                       {\sum_{b,t} m_{b,t}}

a mean over the trained tokens of the whole batch: every answer token weighs the same,
however long its conversation. Masked targets are stored as ``-100`` (PyTorch's
``ignore_index``), so they need no separate mask tensor.

This module has, in the order the chapter builds them:

* :func:`check_conversation`: the roles and their order, validated (a ``ValueError`` says what to fix);
* :func:`render_chat`: a conversation to token ids in ChatML;
* :func:`sft_example`: a conversation to ``(input_ids, labels)``, the prompt masked with -100;
* :func:`collate`: examples of different lengths to a right-padded batch;
* :func:`sft_loss`: the masked mean cross-entropy;
* :func:`sft_train`: the fine-tuning loop (chapter 06's AdamW, schedule and clipping);
* :func:`answer_accuracy`: greedy answers until ``<|im_end|>``, scored by exact match.
"""

from __future__ import annotations

import tiktoken
import torch
import torch.nn.functional as F

from solutions.generate import generate
from solutions.train import AdamW, clip_gradients, decay_groups, lr_at

IGNORE_INDEX = -100  # labels with this value are not trained (F.cross_entropy's default ignore_index)
ROLES = ("system", "user", "assistant")
IM_START = "<|im_start|>"  # opens a message; the role follows
IM_END = "<|im_end|>"  # closes a message: the model learns to write it, and generation stops there
PAD = "<|pad|>"  # fills batches; never a target


# ---------------------------------------------------------------------------- the template


def check_conversation(messages) -> None:
    """Raise ``ValueError`` naming the fix unless ``messages`` is a valid conversation.

    A conversation is a non-empty list of dicts ``{"role": str, "content": str}``: an optional
    ``system`` message first, then ``user`` and ``assistant`` alternating, starting with ``user``.
    """
    if not isinstance(messages, (list, tuple)) or len(messages) == 0:
        raise ValueError(f"the conversation is empty (got {messages!r}): give a list of messages such as "
                         "[{'role': 'user', 'content': 'Who is the story about?'}]")
    expected = "user"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise ValueError(f"message {i} is {message!r}: each message must be a dict with a 'role' and a "
                             "'content', both strings")
        role = message["role"]
        if role not in ROLES:
            raise ValueError(f"message {i} has the unknown role {role!r}: use one of {', '.join(ROLES)}")
        if role == "system" and i == 0:
            continue
        if role != expected:
            where = "a system message may only come first" if role == "system" else \
                f"turns alternate user, assistant, user, ... so message {i} should be a {expected!r} message"
            raise ValueError(f"message {i} is a {role!r} message: {where} (merge or reorder the messages)")
        expected = "assistant" if role == "user" else "user"


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    r"""The token ids of ``messages`` in ChatML; with ``add_generation_prompt``, followed by the assistant's header.

    Each message becomes ``<|im_start|>`` role ``\n`` content ``<|im_end|>`` ``\n``. The two
    special tokens are inserted as their ids (``tokenizer.encode_single_token``); role,
    newlines and content are encoded as plain text with ``tokenizer.encode_ordinary``, so that
    a user who *types* ``<|im_end|>`` gets those characters, not the end of the turn.
    ``add_generation_prompt=True`` appends ``<|im_start|>assistant\n``: the prompt after which
    the model writes its reply. ``ValueError`` (see :func:`check_conversation`) for a malformed
    conversation, or for a generation prompt after an assistant message (the user speaks next).
    """
    check_conversation(messages)
    if add_generation_prompt and messages[-1]["role"] == "assistant":
        raise ValueError("add_generation_prompt=True asks for the assistant's reply, but the last message is "
                         "already the assistant's: end the conversation with a user message")
    start, end = tokenizer.encode_single_token(IM_START), tokenizer.encode_single_token(IM_END)
    newline = tokenizer.encode_ordinary("\n")
    ids = []
    for message in messages:
        ids += [start] + tokenizer.encode_ordinary(message["role"]) + newline  # the header
        ids += tokenizer.encode_ordinary(message["content"]) + [end] + newline
    if add_generation_prompt:
        ids += [start] + tokenizer.encode_ordinary("assistant") + newline
    return ids


# ---------------------------------------------------------------------------- the masked example


def sft_example(tokenizer, messages: list[dict], max_len: int) -> tuple[list[int], list[int]]:
    r"""One training example: ``(input_ids, labels)``, lists of ints of the same length.

    ``tokens = render_chat(tokenizer, messages)``. As in pretraining, position :math:`t` of
    ``input_ids = tokens[:-1]`` predicts ``tokens[t + 1]``, so ``labels[t]`` is ``tokens[t + 1]``
    if that token is *trained*, else ``-100``. Trained: the content of every assistant message
    and its closing ``<|im_end|>`` (the model must learn to stop). Masked: system and user
    messages, every header (``<|im_start|>assistant\n`` is the prompt, not the reply) and the
    ``\n`` after each ``<|im_end|>`` (generation has stopped by then).

    An assistant message's trained span runs from the end of the prompt that asks for it,
    ``render_chat(messages[:i], add_generation_prompt=True)``, to its ``<|im_end|>``.
    ``ValueError`` for a malformed conversation, one that does not end with an assistant
    message (nothing to learn at the end), or one longer than the context: ``len(input_ids)``
    must be at most ``max_len``.
    """
    check_conversation(messages)
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"the conversation ends with a {messages[-1]['role']!r} message: a training example "
                         "ends with the assistant's reply, which is what the model learns to write")
    tokens = render_chat(tokenizer, messages)
    trained = [False] * len(tokens)
    newline = len(tokenizer.encode_ordinary("\n"))
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            first = len(render_chat(tokenizer, messages[:i], add_generation_prompt=True))
            last = len(render_chat(tokenizer, messages[: i + 1])) - newline  # up to and including <|im_end|>
            trained[first:last] = [True] * (last - first)
    if len(tokens) - 1 > max_len:
        raise ValueError(f"the conversation is {len(tokens)} tokens, {len(tokens) - 1} positions to train, more "
                         f"than the model's context of {max_len}: shorten it or leave it out of the data")
    input_ids = tokens[:-1]
    labels = [t if keep else IGNORE_INDEX for t, keep in zip(tokens[1:], trained[1:])]  # shifted with the targets
    return input_ids, labels


def tokenizer_data(tokenizer) -> dict:
    """A ``tiktoken.Encoding`` as plain data: ``tiktoken.Encoding(**tokenizer_data(t))`` rebuilds it."""
    return {"name": tokenizer.name, "pat_str": tokenizer._pat_str, "mergeable_ranks": tokenizer._mergeable_ranks,
            "special_tokens": tokenizer._special_tokens}


def render_chat_from_data(tokenizer_data: dict, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    """:func:`render_chat` with the tokenizer given as plain data (what the chapter's checkpoint calls)."""
    return render_chat(tiktoken.Encoding(**tokenizer_data), messages, add_generation_prompt)


def sft_example_from_data(tokenizer_data: dict, messages: list[dict], max_len: int) -> tuple[list[int], list[int]]:
    """:func:`sft_example` with the tokenizer given as plain data (what the chapter's checkpoint calls)."""
    return sft_example(tiktoken.Encoding(**tokenizer_data), messages, max_len)


# ---------------------------------------------------------------------------- batches and loss


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack examples of different lengths into ``(input_ids, labels)``, both ``(batch, longest)`` int64.

    Padding goes on the **right**: each example keeps positions ``0 .. n-1``, and under the
    causal mask its real tokens never attend to the pads after them, so its logits are those
    it would get alone. Inputs are padded with ``pad_id`` (any valid id: those positions are
    not trained), labels with ``-100``, so that padding is never a target. ``ValueError`` for
    no examples, or one whose inputs and labels differ in length.
    """
    if len(examples) == 0:
        raise ValueError("collate got no examples: a batch needs at least one (input_ids, labels) pair")
    for b, (x, y) in enumerate(examples):
        if len(x) != len(y):
            raise ValueError(f"example {b} has {len(x)} input ids but {len(y)} labels: sft_example returns "
                             "one label per input position")
    longest = max(len(x) for x, _ in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    for b, (x, y) in enumerate(examples):
        input_ids[b, : len(x)] = torch.tensor(x, dtype=torch.long)
        labels[b, : len(y)] = torch.tensor(y, dtype=torch.long)
    return input_ids, labels


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Mean cross-entropy over the trained tokens of the whole batch (labels other than -100).

    .. math:: \mathcal{L} = \frac{1}{|\{(b, t): y_{b,t} \ne -100\}|}
        \sum_{y_{b,t} \ne -100} \big(\operatorname{logsumexp}(z_{b,t}) - z_{b,t,y_{b,t}}\big)

    ``logits``: ``(batch, seq, vocab)``; ``labels``: ``(batch, seq)``, already aligned with
    the positions (``labels[b, t]`` is the target of position ``t``: no further shift). Not a
    mean of per-sequence means: that would make a one-token answer weigh as much as a long
    one. Returns a 0-d float32 tensor. ``ValueError`` if the shapes do not match, or if no
    label is trained (the mean of nothing).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match: labels "
                         "must be (batch, seq) for logits (batch, seq, vocab), one target per position")
    n_trained = int((labels != IGNORE_INDEX).sum())
    if n_trained == 0:
        raise ValueError("no label is trained (all are -100): the batch has no assistant tokens to learn from")
    total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total / n_trained


# ---------------------------------------------------------------------------- training


def sft_train(model, examples: list[tuple[list[int], list[int]]], steps: int, batch_size: int, pad_id: int,
              max_lr: float = 1e-3, warmup_steps: int = 10, weight_decay: float = 0.0, grad_clip: float = 1.0,
              seed: int = 0, progress: bool = True) -> list[float]:
    """Fine-tune ``model`` (all its weights) on ``examples`` for ``steps`` optimiser steps; return the losses.

    Chapter 06's pieces: :class:`~solutions.train.AdamW` (betas 0.9, 0.95), warm-up and
    cosine decay to a tenth of ``max_lr`` (:func:`~solutions.train.lr_at`), global-norm
    clipping. Batches of ``batch_size`` examples in a shuffled order (a new permutation, from
    ``seed``, each time the examples run out), padded by :func:`collate`, scored by :func:`sft_loss`.
    A fine-tuning rate is a few times below pretraining's: the model should learn the format
    without forgetting what it knows.
    """
    device = next(model.parameters()).device
    optimizer = AdamW(decay_groups(model, weight_decay), lr=max_lr, betas=(0.9, 0.95))
    order_generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="SFT", unit="step")
    model.train()
    for step in range(steps):
        if len(order) < batch_size:  # an epoch is over: a fresh shuffle
            order += torch.randperm(len(examples), generator=order_generator).tolist()
        batch, order = [examples[i] for i in order[:batch_size]], order[batch_size:]
        x, y = collate(batch, pad_id)
        lr = lr_at(step, max_lr, warmup_steps, steps, max_lr / 10)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = sft_loss(model(x.to(device)), y.to(device))
        loss.backward()
        clip_gradients(model, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    return losses


# ---------------------------------------------------------------------------- evaluation


def answer_accuracy(model, tokenizer, conversations: list[dict], max_new_tokens: int = 12,
                    progress: bool = False) -> tuple[float, list[str]]:
    """Exact-match accuracy of the model's greedy answers; returns ``(accuracy, predictions)``.

    For each conversation (a dict with ``"messages"``, or the list of messages itself), the
    prompt is every message but the last, followed by the generation prompt; the model
    writes greedily until ``<|im_end|>`` (or ``<|endoftext|>``, which a model that never
    learned the template may emit) or ``max_new_tokens``. The reply, stripped of surrounding
    whitespace, is correct if it equals the last message's content exactly. ``progress``: a
    progress bar over the conversations (tqdm's widget in a notebook).
    """
    from tqdm.auto import tqdm

    stops = {tokenizer.encode_single_token(IM_END), tokenizer.encode_single_token("<|endoftext|>")}
    was_training = model.training
    model.eval()
    dialogues = [c["messages"] if isinstance(c, dict) else c for c in conversations]
    predictions = []
    for messages in tqdm(dialogues, desc="answering", unit="question", disable=not progress, leave=False):
        prompt = render_chat(tokenizer, messages[:-1], add_generation_prompt=True)
        reply = list(generate(model, prompt, max_new_tokens, stop_tokens=stops))
        predictions.append(tokenizer.decode(reply).strip())
    model.train(was_training)
    answers = [messages[-1]["content"] for messages in dialogues]
    correct = sum(p == a for p, a in zip(predictions, answers))
    return correct / max(len(conversations), 1), predictions


# ---------------------------------------------------------------------------- the shipped SFT model

SFT_RECIPE = {"base": "dense", "steps": 400, "batch_size": 8, "max_lr": 0.003, "warmup_steps": 8, "seed": 0}
"""Chapter 08's fine-tuning run: the shipped ``base`` fine-tuned on every training conversation
of ``data/instructions``. Its result is shipped as ``data/checkpoints/sft``, the policy the
alignment chapters (10-12) start from."""
HELD_OUT = 100  # chapter 08 scores the first 100 test conversations


def sft_from_base(progress: bool = False, **changes) -> tuple[torch.nn.Module, list[float]]:
    """Run :data:`SFT_RECIPE` (with ``changes``, e.g. ``steps=2`` for a quick test) from the
    shipped base checkpoint; returns ``(model in eval mode, losses)``. Deterministic: the same
    weights twice on one machine."""
    from data import course_tokenizer, load_checkpoint
    from data.instructions import load_instructions
    from solutions.model import LlamaConfig, Transformer

    recipe = {**SFT_RECIPE, **changes}
    torch.manual_seed(recipe["seed"])
    tokenizer = course_tokenizer()
    config, state = load_checkpoint(recipe["base"])
    model = Transformer(LlamaConfig(**config))
    model.load_state_dict(state)
    examples = [sft_example(tokenizer, c["messages"], config["max_seq_len"]) for c in load_instructions("train")]
    losses = sft_train(model, examples, steps=recipe["steps"], batch_size=recipe["batch_size"],
                       pad_id=tokenizer.encode_single_token(PAD), max_lr=recipe["max_lr"],
                       warmup_steps=recipe["warmup_steps"], seed=recipe["seed"], progress=progress)
    return model.eval(), losses


def held_out_scores(model, tokenizer) -> dict:
    """Chapter 08's measures on its :data:`HELD_OUT` test questions: exact-match accuracy, the
    share of replies in the requested form, and the share that name the expected fact."""
    from data.corpus import mentions
    from data.instructions import follows_format, load_instructions

    held_out = load_instructions("test")[:HELD_OUT]
    exact, replies = answer_accuracy(model, tokenizer, held_out)
    return {"exact": exact,
            "format": sum(follows_format(c["task"], r) for c, r in zip(held_out, replies)) / len(held_out),
            "fact": sum(mentions(r, c["fact"]) for c, r in zip(held_out, replies)) / len(held_out)}


def export_sft(export_dir=None, progress: bool = True) -> dict:
    """Fine-tune with :data:`SFT_RECIPE` and ship the result: ``model.safetensors`` (bfloat16,
    as the pretrained checkpoints), ``config.json`` (the model, the recipe, the sha256 of the
    base weights it started from, and chapter 08's held-out scores *of the stored weights*),
    ``log.json`` (the losses); registered in ``data/MANIFEST.json``. Returns the config."""
    import json
    import time
    from pathlib import Path

    from data import CHECKPOINTS_DIR, checkpoint_dir, course_tokenizer
    from data.manifest import sha256_file
    from solutions.train import register_checkpoint, save_weights

    export_dir = Path(export_dir or CHECKPOINTS_DIR / "sft")
    start = time.perf_counter()
    model, losses = sft_from_base(progress=progress)
    seconds = time.perf_counter() - start
    base_dir = checkpoint_dir(SFT_RECIPE["base"])
    model_config = json.loads((base_dir / "config.json").read_text())["model"]  # the base's, without its weights again
    stored = save_weights(model, model_config, export_dir / "model.safetensors")
    meta = {"name": "sft", "description": f"The {SFT_RECIPE['base']} model after chapter 08's instruction tuning "
                                          "(ChatML, prompt-masked loss): the policy chapters 10-12 start from.",
            "model": model_config, "sft": SFT_RECIPE,
            "base_sha256": sha256_file(base_dir / "model.safetensors"),
            "held_out": {k: round(v, 4) for k, v in held_out_scores(stored, course_tokenizer()).items()},
            "params": sum(p.numel() for p in stored.parameters()), "dtype": "bfloat16",
            "train_seconds": round(seconds, 1), "torch": torch.__version__, "threads": torch.get_num_threads()}
    (export_dir / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    (export_dir / "log.json").write_text(json.dumps({"loss": [round(x, 6) for x in losses]}) + "\n")
    register_checkpoint(export_dir)
    return meta


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m solutions.sft", description="Chapter 08's shipped SFT model.")
    parser.add_argument("--export", action="store_true", required=True,
                        help="fine-tune the shipped base with SFT_RECIPE and write data/checkpoints/sft")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    torch.set_num_threads(parser.parse_args().threads)
    print(export_sft())
