"""Wrong answers to chapter 08's checkpoints, as learners write them.

The template and example mistakes are written as the learner's own ``render_chat(tokenizer,
messages, add_generation_prompt)`` and ``sft_example(tokenizer, messages, max_len)``, each run
through the same adapter as the notebook's given ``render_chat_from_data`` and
``sft_example_from_data``. The example mistakes call the correct ``render_chat`` (as a
learner's notebook would, once that checkpoint passes), so one mistake is the only
difference from the reference.
"""

from __future__ import annotations

import tiktoken
import torch
import torch.nn.functional as F

from solutions.sft import check_conversation, render_chat

from . import mistake

IGNORE = -100


def via_adapter(fn):
    """The learner's function behind the notebook's adapter: the tokenizer arrives as plain data."""

    def adapter(tokenizer_data, messages, option):
        return fn(tiktoken.Encoding(**tokenizer_data), messages, option)

    adapter.__name__ = fn.__name__
    return adapter


# ------------------------------------------------------------------------- 08.render_chat


def _check(messages, add_generation_prompt):
    check_conversation(messages)
    if add_generation_prompt and messages[-1]["role"] == "assistant":
        raise ValueError("the assistant has already answered")


@mistake("08.render_chat", "no_newline")
@via_adapter
def render_without_newline_after_role(tokenizer, messages, add_generation_prompt=False):
    _check(messages, add_generation_prompt)
    start, end = tokenizer.encode_single_token("<|im_start|>"), tokenizer.encode_single_token("<|im_end|>")
    ids = []
    for m in messages:
        ids += [start] + tokenizer.encode_ordinary(m["role"]) + tokenizer.encode_ordinary(m["content"]) + [end]
        ids += tokenizer.encode_ordinary("\n")
    if add_generation_prompt:
        ids += [start] + tokenizer.encode_ordinary("assistant\n")
    return ids


@mistake("08.render_chat", "no_separator")
@via_adapter
def render_without_newline_between_messages(tokenizer, messages, add_generation_prompt=False):
    _check(messages, add_generation_prompt)
    start, end = tokenizer.encode_single_token("<|im_start|>"), tokenizer.encode_single_token("<|im_end|>")
    ids = []
    for m in messages:
        ids += [start] + tokenizer.encode_ordinary(f"{m['role']}\n{m['content']}") + [end]
    if add_generation_prompt:
        ids += [start] + tokenizer.encode_ordinary("assistant\n")
    return ids


@mistake("08.render_chat", "hard_coded")
@via_adapter
def render_with_hard_coded_ids(tokenizer, messages, add_generation_prompt=False):
    _check(messages, add_generation_prompt)
    ids = []
    for m in messages:
        ids += [4093] + tokenizer.encode_ordinary(f"{m['role']}\n") + tokenizer.encode_ordinary(m["content"])
        ids += [4094] + tokenizer.encode_ordinary("\n")
    if add_generation_prompt:
        ids += [4093] + tokenizer.encode_ordinary("assistant\n")
    return ids


@mistake("08.render_chat", "adjacent")
@via_adapter
def render_assumes_im_end_follows_im_start(tokenizer, messages, add_generation_prompt=False):
    _check(messages, add_generation_prompt)
    start = tokenizer.encode_single_token("<|im_start|>")
    end = start + 1  # they were added together, so they are neighbours
    ids = []
    for m in messages:
        ids += [start] + tokenizer.encode_ordinary(f"{m['role']}\n") + tokenizer.encode_ordinary(m["content"])
        ids += [end] + tokenizer.encode_ordinary("\n")
    if add_generation_prompt:
        ids += [start] + tokenizer.encode_ordinary("assistant\n")
    return ids


@mistake("08.render_chat", "validate")
@via_adapter
def render_checks_only_the_roles(tokenizer, messages, add_generation_prompt=False):
    if not messages:
        raise ValueError("empty conversation")
    expected = "user"
    for i, m in enumerate(messages):  # roles and order, but not that content is a string
        if m["role"] == "system" and i == 0:
            continue
        if m["role"] != expected:
            raise ValueError(f"message {i}: expected {expected}")
        expected = "assistant" if expected == "user" else "user"
    if add_generation_prompt and messages[-1]["role"] == "assistant":
        raise ValueError("the assistant has already answered")
    start, end = tokenizer.encode_single_token("<|im_start|>"), tokenizer.encode_single_token("<|im_end|>")
    ids = []
    for m in messages:
        ids += [start] + tokenizer.encode_ordinary(f"{m['role']}\n") + tokenizer.encode_ordinary(m.get("content") or "")
        ids += [end] + tokenizer.encode_ordinary("\n")
    if add_generation_prompt:
        ids += [start] + tokenizer.encode_ordinary("assistant\n")
    return ids


@mistake("08.render_chat", "special_as_text")
@via_adapter
def render_specials_as_text(tokenizer, messages, add_generation_prompt=False):
    _check(messages, add_generation_prompt)
    ids = []
    for m in messages:
        ids += tokenizer.encode_ordinary(f"<|im_start|>{m['role']}\n")
        ids += tokenizer.encode_ordinary(m["content"]) + tokenizer.encode_ordinary("<|im_end|>\n")
    if add_generation_prompt:
        ids += tokenizer.encode_ordinary("<|im_start|>assistant\n")
    return ids


@mistake("08.render_chat", "injection")
@via_adapter
def render_text_then_encode_all_specials(tokenizer, messages, add_generation_prompt=False):
    _check(messages, add_generation_prompt)
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    if add_generation_prompt:
        text += "<|im_start|>assistant\n"
    return tokenizer.encode(text, allowed_special="all")  # HF's apply_chat_template, then encode


@mistake("08.render_chat", "generation_prompt")
@via_adapter
def render_ignoring_generation_prompt(tokenizer, messages, add_generation_prompt=False):
    _check(messages, add_generation_prompt)
    start, end = tokenizer.encode_single_token("<|im_start|>"), tokenizer.encode_single_token("<|im_end|>")
    ids = []
    for m in messages:
        ids += [start] + tokenizer.encode_ordinary(f"{m['role']}\n") + tokenizer.encode_ordinary(m["content"])
        ids += [end] + tokenizer.encode_ordinary("\n")
    return ids


@mistake("08.render_chat", "generation_newline")
@via_adapter
def render_generation_prompt_without_newline(tokenizer, messages, add_generation_prompt=False):
    _check(messages, add_generation_prompt)
    start, end = tokenizer.encode_single_token("<|im_start|>"), tokenizer.encode_single_token("<|im_end|>")
    ids = []
    for m in messages:
        ids += [start] + tokenizer.encode_ordinary(f"{m['role']}\n") + tokenizer.encode_ordinary(m["content"])
        ids += [end] + tokenizer.encode_ordinary("\n")
    if add_generation_prompt:
        ids += [start] + tokenizer.encode_ordinary("assistant")
    return ids


@mistake("08.render_chat", "generation_after_assistant")
@via_adapter
def render_generation_prompt_after_reply(tokenizer, messages, add_generation_prompt=False):
    check_conversation(messages)
    start, end = tokenizer.encode_single_token("<|im_start|>"), tokenizer.encode_single_token("<|im_end|>")
    ids = []
    for m in messages:
        ids += [start] + tokenizer.encode_ordinary(f"{m['role']}\n") + tokenizer.encode_ordinary(m["content"])
        ids += [end] + tokenizer.encode_ordinary("\n")
    if add_generation_prompt:
        ids += [start] + tokenizer.encode_ordinary("assistant\n")
    return ids


@mistake("08.render_chat", "validate")
@via_adapter
def render_without_validation(tokenizer, messages, add_generation_prompt=False):
    if add_generation_prompt and messages and messages[-1]["role"] == "assistant":
        raise ValueError("the assistant has already answered")
    start, end = tokenizer.encode_single_token("<|im_start|>"), tokenizer.encode_single_token("<|im_end|>")
    ids = []
    for m in messages:
        ids += [start] + tokenizer.encode_ordinary(f"{m['role']}\n") + tokenizer.encode_ordinary(m["content"])
        ids += [end] + tokenizer.encode_ordinary("\n")
    if add_generation_prompt:
        ids += [start] + tokenizer.encode_ordinary("assistant\n")
    return ids


# ------------------------------------------------------------------------- 08.sft_example


def _spans(tokenizer, messages):
    """Where each assistant reply (content and <|im_end|>) lies in render_chat(messages)."""
    newline = len(tokenizer.encode_ordinary("\n"))
    return [(len(render_chat(tokenizer, messages[:i], add_generation_prompt=True)),
             len(render_chat(tokenizer, messages[: i + 1])) - newline)
            for i, m in enumerate(messages) if m["role"] == "assistant"]


def _start(messages, max_len, tokens):
    check_conversation(messages)
    if messages[-1]["role"] != "assistant":
        raise ValueError("the conversation must end with the assistant")
    if len(tokens) - 1 > max_len:
        raise ValueError("longer than the context")


@mistake("08.sft_example", "no_mask")
@via_adapter
def example_trains_on_the_prompt(tokenizer, messages, max_len):
    tokens = render_chat(tokenizer, messages)
    _start(messages, max_len, tokens)
    return tokens[:-1], tokens[1:]


@mistake("08.sft_example", "im_end_masked")
@via_adapter
def example_masks_im_end(tokenizer, messages, max_len):
    tokens = render_chat(tokenizer, messages)
    _start(messages, max_len, tokens)
    trained = [False] * len(tokens)
    end = tokenizer.encode_single_token("<|im_end|>")
    for first, last in _spans(tokenizer, messages):
        for t in range(first, last):
            trained[t] = tokens[t] != end  # "special tokens are not text"
    return tokens[:-1], [t if k else IGNORE for t, k in zip(tokens[1:], trained[1:])]


@mistake("08.sft_example", "header_trained")
@via_adapter
def example_trains_the_assistant_header(tokenizer, messages, max_len):
    tokens = render_chat(tokenizer, messages)
    _start(messages, max_len, tokens)
    trained = [False] * len(tokens)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            first = len(render_chat(tokenizer, messages[:i]))  # where the assistant's message starts
            last = len(render_chat(tokenizer, messages[: i + 1])) - 1
            trained[first:last] = [True] * (last - first)
    return tokens[:-1], [t if k else IGNORE for t, k in zip(tokens[1:], trained[1:])]


@mistake("08.sft_example", "newline_trained")
@via_adapter
def example_trains_the_whole_message(tokenizer, messages, max_len):
    tokens = render_chat(tokenizer, messages)
    _start(messages, max_len, tokens)
    trained = [False] * len(tokens)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            first = len(render_chat(tokenizer, messages[:i], add_generation_prompt=True))
            last = len(render_chat(tokenizer, messages[: i + 1]))  # the whole message, its last newline too
            trained[first:last] = [True] * (last - first)
    return tokens[:-1], [t if k else IGNORE for t, k in zip(tokens[1:], trained[1:])]


@mistake("08.sft_example", "last_turn_only")
@via_adapter
def example_trains_only_the_final_reply(tokenizer, messages, max_len):
    tokens = render_chat(tokenizer, messages)
    _start(messages, max_len, tokens)
    prompt = render_chat(tokenizer, messages[:-1], add_generation_prompt=True)
    labels = [IGNORE] * (len(prompt) - 1) + tokens[len(prompt):-1] + [IGNORE]
    return tokens[:-1], labels


@mistake("08.sft_example", "no_shift")
@via_adapter
def example_labels_equal_inputs(tokenizer, messages, max_len):
    tokens = render_chat(tokenizer, messages)
    _start(messages, max_len, tokens)
    trained = [False] * len(tokens)
    for first, last in _spans(tokenizer, messages):
        trained[first:last] = [True] * (last - first)
    inputs = tokens[:-1]
    return inputs, [t if k else IGNORE for t, k in zip(inputs, trained)]  # the model shifts, surely?


@mistake("08.sft_example", "mask_not_shifted")
@via_adapter
def example_shifts_tokens_but_not_the_mask(tokenizer, messages, max_len):
    tokens = render_chat(tokenizer, messages)
    _start(messages, max_len, tokens)
    trained = [False] * len(tokens)
    for first, last in _spans(tokenizer, messages):
        trained[first:last] = [True] * (last - first)
    labels = [t if k else IGNORE for t, k in zip(tokens, trained)]
    return tokens[:-1], [t if k != IGNORE else IGNORE for t, k in zip(tokens[1:], labels[:-1])]


@mistake("08.sft_example", "zero_masked")
@via_adapter
def example_masks_with_zero(tokenizer, messages, max_len):
    tokens = render_chat(tokenizer, messages)
    _start(messages, max_len, tokens)
    trained = [0] * len(tokens)
    for first, last in _spans(tokenizer, messages):
        trained[first:last] = [1] * (last - first)
    return tokens[:-1], [t * k for t, k in zip(tokens[1:], trained[1:])]


@mistake("08.sft_example", "full_length")
@via_adapter
def example_keeps_every_token_as_input(tokenizer, messages, max_len):
    tokens = render_chat(tokenizer, messages)
    _start(messages, max_len, tokens)
    trained = [False] * len(tokens)
    for first, last in _spans(tokenizer, messages):
        trained[first:last] = [True] * (last - first)
    labels = [t if k else IGNORE for t, k in zip(tokens[1:], trained[1:])]
    return tokens, labels + [IGNORE]


@mistake("08.sft_example", "context")
@via_adapter
def example_counts_tokens_not_positions(tokenizer, messages, max_len):
    tokens = render_chat(tokenizer, messages)
    _start(messages, max_len + 1, tokens)
    if len(tokens) > max_len:
        raise ValueError("too long for the context")
    trained = [False] * len(tokens)
    for first, last in _spans(tokenizer, messages):
        trained[first:last] = [True] * (last - first)
    return tokens[:-1], [t if k else IGNORE for t, k in zip(tokens[1:], trained[1:])]


@mistake("08.sft_example", "no_context_check")
@via_adapter
def example_without_context_check(tokenizer, messages, max_len):
    tokens = render_chat(tokenizer, messages)
    _start(messages, 10**9, tokens)
    trained = [False] * len(tokens)
    for first, last in _spans(tokenizer, messages):
        trained[first:last] = [True] * (last - first)
    return tokens[:-1], [t if k else IGNORE for t, k in zip(tokens[1:], trained[1:])]


@mistake("08.sft_example", "ends_with_user")
@via_adapter
def example_accepts_a_final_question(tokenizer, messages, max_len):
    check_conversation(messages)
    tokens = render_chat(tokenizer, messages)
    if len(tokens) - 1 > max_len:
        raise ValueError("longer than the context")
    trained = [False] * len(tokens)
    for first, last in _spans(tokenizer, messages):
        trained[first:last] = [True] * (last - first)
    return tokens[:-1], [t if k else IGNORE for t, k in zip(tokens[1:], trained[1:])]


@mistake("08.sft_example", "validate")
@via_adapter
def example_indexes_before_validating(tokenizer, messages, max_len):
    if messages[-1]["role"] != "assistant":  # IndexError, not ValueError, on an empty conversation
        raise ValueError("the conversation must end with the assistant")
    tokens = render_chat(tokenizer, messages)  # validates the rest
    if len(tokens) - 1 > max_len:
        raise ValueError("longer than the context")
    trained = [False] * len(tokens)
    for first, last in _spans(tokenizer, messages):
        trained[first:last] = [True] * (last - first)
    return tokens[:-1], [t if k else IGNORE for t, k in zip(tokens[1:], trained[1:])]


# ------------------------------------------------------------------------------ 08.collate


def _check_examples(examples):
    if not examples:
        raise ValueError("no examples")
    for x, y in examples:
        if len(x) != len(y):
            raise ValueError("inputs and labels differ in length")


@mistake("08.collate", "left_pad")
def collate_pads_on_the_left(examples, pad_id):
    _check_examples(examples)
    longest = max(len(x) for x, _ in examples)
    xs = [[pad_id] * (longest - len(x)) + list(x) for x, _ in examples]
    ys = [[IGNORE] * (longest - len(y)) + list(y) for _, y in examples]
    return torch.tensor(xs), torch.tensor(ys)


@mistake("08.collate", "pad_label")
def collate_pads_labels_with_pad_id(examples, pad_id):
    _check_examples(examples)
    longest = max(len(x) for x, _ in examples)
    xs = [list(x) + [pad_id] * (longest - len(x)) for x, _ in examples]
    ys = [list(y) + [pad_id] * (longest - len(y)) for _, y in examples]
    return torch.tensor(xs), torch.tensor(ys)


@mistake("08.collate", "swapped")
def collate_swaps_the_pads(examples, pad_id):
    _check_examples(examples)
    longest = max(len(x) for x, _ in examples)
    input_ids = torch.full((len(examples), longest), IGNORE)
    labels = torch.full((len(examples), longest), pad_id)
    for b, (x, y) in enumerate(examples):
        input_ids[b, :len(x)] = torch.tensor(x)
        labels[b, :len(y)] = torch.tensor(y)
    return input_ids, labels


@mistake("08.collate", "shortest")
def collate_truncates_to_the_shortest(examples, pad_id):
    _check_examples(examples)
    n = min(len(x) for x, _ in examples)
    return torch.tensor([list(x[:n]) for x, _ in examples]), torch.tensor([list(y[:n]) for _, y in examples])


@mistake("08.collate", "int32")
def collate_int32(examples, pad_id):
    _check_examples(examples)
    longest = max(len(x) for x, _ in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.int32)
    labels = torch.full((len(examples), longest), IGNORE, dtype=torch.int32)
    for b, (x, y) in enumerate(examples):
        input_ids[b, :len(x)] = torch.tensor(x)
        labels[b, :len(y)] = torch.tensor(y)
    return input_ids, labels


@mistake("08.collate", "mutated_input")
def collate_pads_the_examples_in_place(examples, pad_id):
    _check_examples(examples)
    longest = max(len(x) for x, _ in examples)
    for x, y in examples:
        y += [IGNORE] * (longest - len(y))
        x += [pad_id] * (longest - len(x))
    return torch.tensor([x for x, _ in examples]), torch.tensor([y for _, y in examples])


@mistake("08.collate", "empty")
def collate_without_checks(examples, pad_id):
    longest = max((len(x) for x, _ in examples), default=0)
    xs = [list(x) + [pad_id] * (longest - len(x)) for x, _ in examples]
    ys = [list(y) + [IGNORE] * (longest - len(y)) for _, y in examples]
    return torch.tensor(xs, dtype=torch.long).reshape(len(examples), longest), \
        torch.tensor(ys, dtype=torch.long).reshape(len(examples), longest)


# ----------------------------------------------------------------------------- 08.sft_loss


def _check_loss(logits, labels):
    if logits.shape[:-1] != labels.shape:
        raise ValueError("logits and labels do not match")
    if not (labels != IGNORE).any():
        raise ValueError("no trained label")


@mistake("08.sft_loss", "per_sequence")
def loss_mean_of_row_means(logits, labels):
    _check_loss(logits, labels)
    losses = []
    for row_logits, row_labels in zip(logits, labels):
        losses.append(F.cross_entropy(row_logits.float(), row_labels, ignore_index=IGNORE))
    return torch.stack(losses).mean()


@mistake("08.sft_loss", "all_positions")
def loss_divided_by_every_position(logits, labels):
    _check_loss(logits, labels)
    total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return total / labels.numel()


@mistake("08.sft_loss", "no_ignore")
def loss_clamps_the_mask_away(logits, labels):
    _check_loss(logits, labels)
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.clamp(min=0).flatten())


@mistake("08.sft_loss", "shift_again")
def loss_shifts_again(logits, labels):
    _check_loss(logits, labels)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)


@mistake("08.sft_loss", "sum")
def loss_sum(logits, labels):
    _check_loss(logits, labels)
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")


@mistake("08.sft_loss", "softmax_dim")
def loss_softmax_over_positions(logits, labels):
    _check_loss(logits, labels)
    logp = torch.log_softmax(logits.float(), dim=1)
    keep = labels != IGNORE
    nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (nll * keep).sum() / keep.sum()


@mistake("08.sft_loss", "empty_nan")
def loss_without_empty_check(logits, labels):
    if logits.shape[:-1] != labels.shape:
        raise ValueError("logits and labels do not match")
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)


@mistake("08.sft_loss", "low_precision")
def loss_in_the_logits_dtype(logits, labels):
    _check_loss(logits, labels)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)  # bf16 in, bf16 out


@mistake("08.sft_loss", "grad_detached")
def loss_on_detached_logits(logits, labels):
    _check_loss(logits, labels)
    logits = logits.detach().float()  # "the loss is only a number"
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


@mistake("08.sft_loss", "grad_detached")
def loss_under_no_grad(logits, labels):
    _check_loss(logits, labels)
    with torch.no_grad():
        total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return total / (labels != IGNORE).sum()


@mistake("08.sft_loss", "grad_detached")
def loss_rebuilt_from_a_python_number(logits, labels):
    _check_loss(logits, labels)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
    return torch.tensor(loss.item())


@mistake("08.collate", "zero_label")
def collate_pads_labels_with_zero(examples, pad_id):
    _check_examples(examples)
    longest = max(len(x) for x, _ in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.zeros((len(examples), longest), dtype=torch.long)  # zeros, like the attention mask
    for b, (x, y) in enumerate(examples):
        input_ids[b, :len(x)] = torch.tensor(x)
        labels[b, :len(y)] = torch.tensor(y)
    return input_ids, labels


# ------------------------------------------------------------- turn order, lengths, shapes, dtype


def _roles_checked_pairwise(messages):
    """What the learner thought alternation means: known roles, system only first, no role twice in a
    row, not starting with the assistant. A system message followed by the assistant slips through."""
    if not messages:
        raise ValueError("empty conversation")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError("each message needs a role and a content")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role {m['role']!r}")
        if m["role"] == "system" and i > 0:
            raise ValueError("the system message comes first")
        if i and messages[i - 1]["role"] == m["role"]:
            raise ValueError("roles must alternate")
    if messages[0]["role"] == "assistant":
        raise ValueError("the user speaks first")


@mistake("08.render_chat", "validate")
@via_adapter
def render_checks_roles_pairwise(tokenizer, messages, add_generation_prompt=False):
    # the learner thought "no two equal roles in a row" is alternation: [system, assistant] passes
    _roles_checked_pairwise(messages)
    if add_generation_prompt and messages[-1]["role"] == "assistant":
        raise ValueError("the assistant has already answered")
    start, end = tokenizer.encode_single_token("<|im_start|>"), tokenizer.encode_single_token("<|im_end|>")
    newline = tokenizer.encode_ordinary("\n")
    ids = []
    for m in messages:
        ids += [start] + tokenizer.encode_ordinary(m["role"]) + newline + tokenizer.encode_ordinary(m["content"])
        ids += [end] + newline
    if add_generation_prompt:
        ids += [start] + tokenizer.encode_ordinary("assistant") + newline
    return ids


@mistake("08.sft_example", "validate")
@via_adapter
def example_checks_roles_pairwise(tokenizer, messages, max_len):
    # the same learner, with their own render_chat: [system, assistant] becomes an example
    _roles_checked_pairwise(messages)
    if messages[-1]["role"] != "assistant":
        raise ValueError("the conversation must end with the assistant")
    tokens = render_checks_roles_pairwise(tiktoken_data(tokenizer), messages, False)
    if len(tokens) - 1 > max_len:
        raise ValueError("longer than the context")
    trained = [False] * len(tokens)
    newline = len(tokenizer.encode_ordinary("\n"))
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            first = len(render_checks_roles_pairwise(tiktoken_data(tokenizer), messages[:i], True))
            last = len(render_checks_roles_pairwise(tiktoken_data(tokenizer), messages[:i + 1], False)) - newline
            trained[first:last] = [True] * (last - first)
    return tokens[:-1], [t if k else IGNORE for t, k in zip(tokens[1:], trained[1:])]


def tiktoken_data(tokenizer):
    return {"name": tokenizer.name, "pat_str": tokenizer._pat_str, "mergeable_ranks": tokenizer._mergeable_ranks,
            "special_tokens": tokenizer._special_tokens}


@mistake("08.collate", "lengths")
def collate_checks_the_first_example_only(examples, pad_id):
    # the learner thought every example is built alike, so checking one is enough
    if not examples:
        raise ValueError("no examples")
    if len(examples[0][0]) != len(examples[0][1]):
        raise ValueError("inputs and labels differ in length")
    longest = max(len(x) for x, _ in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE, dtype=torch.long)
    for b, (x, y) in enumerate(examples):
        input_ids[b, :len(x)] = torch.tensor(x)
        labels[b, :len(y)] = torch.tensor(y[:longest])
    return input_ids, labels


@mistake("08.sft_loss", "shape")
def loss_flattens_and_lets_cross_entropy_check(logits, labels):
    # the learner thought cross_entropy's own "batch size" error checks the shapes
    if not (labels != IGNORE).any():
        raise ValueError("no trained label")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE)


@mistake("08.sft_loss", "dtype")
def loss_in_float64_for_precision(logits, labels):
    # the learner thought float64 is the safe choice for a sum of log-probabilities
    if logits.shape[:-1] != labels.shape:
        raise ValueError("shapes")
    if not (labels != IGNORE).any():
        raise ValueError("no trained label")
    return F.cross_entropy(logits.flatten(0, 1).double(), labels.flatten(), ignore_index=IGNORE)


@mistake("08.render_chat", "encode_special")
@via_adapter
def render_with_plain_encode(tokenizer, messages, add_generation_prompt=False):
    # the learner thought tokenizer.encode is the way to encode text (it refuses "<|im_end|>" typed by a user)
    _check(messages, add_generation_prompt)
    start, end = tokenizer.encode_single_token("<|im_start|>"), tokenizer.encode_single_token("<|im_end|>")
    newline = tokenizer.encode("\n")
    ids = []
    for m in messages:
        ids += [start] + tokenizer.encode(m["role"]) + newline + tokenizer.encode(m["content"]) + [end] + newline
    if add_generation_prompt:
        ids += [start] + tokenizer.encode("assistant") + newline
    return ids
