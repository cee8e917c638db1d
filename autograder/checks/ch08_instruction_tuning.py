"""Chapter 08 checkpoints: the ChatML template, the prompt-masked example, the padded batch, the SFT loss.

A tokenizer is not plain data, so the two template checkpoints call the notebook's given
adapters ``render_chat_from_data`` and ``sft_example_from_data``, which rebuild a
``tiktoken.Encoding`` from its ranks and special tokens and call the learner's function.
Most cases use a byte-level tokenizer whose ids are the bytes themselves (``117`` is ``u``)
and whose special tokens sit at 256-259, not at the course tokenizer's 4092-4095: ids
hard-coded from the course tokenizer fail there. Another has five special tokens in another
order and with gaps (``<|im_end|>`` 300 before ``<|im_start|>`` 1024), so no id can be derived
from another. The first template case uses the course tokenizer itself, as the notebook does.

How the cases expose mistakes: a user who types ``<|im_end|>``, a generation prompt, a second
assistant turn, a conversation exactly as long as the context, sequences of different lengths
and different numbers of trained tokens, ids of four digits, a realistic batch of logits and
bfloat16 logits (the loss is computed in float32); and every ``ValueError`` the reference
documents has a case (an empty conversation, an unknown role, turns out of order, a message
without a string content, a generation prompt after the assistant, a conversation ending with
the user or longer than the context, no examples, inputs and labels of different lengths, no
trained label, mismatched shapes). ``08.sft_loss`` is trained through: its gradient probe
rejects a loss computed under ``torch.no_grad()``, on detached logits or from ``.item()``.

A hint names a mistake only on evidence: a known mistake's output (a variant: the reference with
that one mistake) matched on every case where it shows, or the exception raised (a ValueError
about the context where the conversation fits exactly). Loss inputs are drawn from uniform
numbers and integers, whose bits are the same on every CPU.
"""

from __future__ import annotations

import functools
import random

import tiktoken
import torch
import torch.nn.functional as F

from ..core import Case, Checkpoint, Label, register
from ..reference import reference
from .inputs import rand

sft = functools.partial(reference, "solutions.sft")
IGNORE = -100
TOL = 1e-5  # float32 sums over a few dozen tokens


@functools.lru_cache(maxsize=None)
def _course_data() -> dict:
    import data

    return sft("tokenizer_data")(data.course_tokenizer())


@functools.lru_cache(maxsize=None)
def _byte_data() -> dict:
    """A byte-level tokenizer (no merges) with the course's special tokens at 256-259."""
    return {"name": "bytes_chat", "pat_str": _course_data()["pat_str"],
            "mergeable_ranks": {bytes([i]): i for i in range(256)},
            "special_tokens": {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258, "<|pad|>": 259}}


@functools.lru_cache(maxsize=None)
def _other_data() -> dict:
    """Bytes again, with five special tokens in another order and with gaps: <|im_end|> (300) comes
    before <|im_start|> (1024), so neither id can be derived from the other or from the vocabulary size."""
    return {"name": "bytes_chat_tools", "pat_str": _course_data()["pat_str"],
            "mergeable_ranks": {bytes([i]): i for i in range(256)},
            "special_tokens": {"<|endoftext|>": 256, "<|im_end|>": 300, "<|tool|>": 301, "<|im_start|>": 1024,
                               "<|pad|>": 1025}}


OTHER = Label("<a byte-level tokenizer with 5 special tokens: <|im_end|> 300, <|im_start|> 1024>")
COURSE = Label("<the course tokenizer: <|im_start|> 4093, <|im_end|> 4094>")
BYTES = Label("<a byte-level tokenizer: id = byte, <|im_start|> 257, <|im_end|> 258>")
WORDS = ("Mia", "Pip", "dog", "the", "Oakford", "Who", "is", "story", "about", "friend", "Zoë", "cat", "town")


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _random_conversation(rng: random.Random, end_with: str | None) -> list[dict]:
    messages = [_msg("system", "Answer briefly.")] if rng.random() < 0.4 else []
    n_turns = rng.randint(1, 3)
    for turn in range(n_turns):
        messages.append(_msg("user", " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) + "?"))
        if turn < n_turns - 1 or end_with == "assistant" or (end_with is None and rng.random() < 0.5):
            messages.append(_msg("assistant", rng.choice(WORDS)))
    return messages


def _tokenizer(data: dict):
    return tiktoken.Encoding(**data)


# ---------------------------------------------------------------------- the template, with one mistake


def _render_variant(kind: str):
    """The reference template with one mistake in it, behind the checkpoint's adapter."""

    def render(tok, messages, add_generation_prompt):
        if kind != "validate":
            sft("check_conversation")(messages)
        elif not messages:
            raise ValueError("empty")
        if kind != "generation_after_assistant" and add_generation_prompt and messages[-1]["role"] == "assistant":
            raise ValueError("the assistant already spoke")
        start = 4093 if kind == "hard_coded" else tok.encode_single_token("<|im_start|>")
        end = 4094 if kind == "hard_coded" else tok.encode_single_token("<|im_end|>")
        if kind == "adjacent":
            end = start + 1
        if kind == "special_as_text":
            start, end = tok.encode_ordinary("<|im_start|>"), tok.encode_ordinary("<|im_end|>")
        else:
            start, end = [start], [end]
        newline = tok.encode_ordinary("\n")
        ids = []
        for m in messages:
            ids += start + tok.encode_ordinary(m["role"]) + ([] if kind == "no_newline" else newline)
            content = tok.encode(m["content"], allowed_special="all") if kind == "injection" else \
                tok.encode_ordinary(m["content"])
            ids += content + end + ([] if kind == "no_separator" else newline)
        if add_generation_prompt and kind != "generation_prompt":
            ids += start + tok.encode_ordinary("assistant") + ([] if kind == "generation_newline" else newline)
        return ids

    def wrong(tokenizer_data, messages, add_generation_prompt):
        return render(_tokenizer(tokenizer_data), messages, add_generation_prompt)

    wrong.__name__ = f"render_chat_{kind}"
    return wrong




RENDER_MISTAKES = ("hard_coded", "adjacent", "special_as_text", "no_newline", "no_separator", "injection", "generation_prompt",
                   "generation_newline", "generation_after_assistant", "validate")


def render_cases(rng: random.Random) -> list[Case]:
    def case(label, data, shown, messages, add_generation_prompt=False, hint="default"):
        return Case(label, (data, messages, add_generation_prompt), hint, show=(shown, messages, add_generation_prompt))

    course, byte = _course_data(), _byte_data()
    qa = [_msg("user", "Who is Mia?"), _msg("assistant", "a girl")]
    cases = [
        case("a question and its answer, course tokenizer", course, COURSE, qa),
        case("the same with another tokenizer: look the special ids up, do not hard-code 4093 and 4094", byte, BYTES,
             qa, hint="hard_coded"),
        case("one user message", byte, BYTES, [_msg("user", "Hi")]),
        case("a tokenizer with 5 special tokens, <|im_end|> (300) before <|im_start|> (1024): look each id up",
             _other_data(), OTHER, [_msg("system", "Use the tools."), *qa, _msg("user", "And Pip?")], True,
             "adjacent"),
        case("a system message, a question and the generation prompt <|im_start|>assistant\\n", byte, BYTES,
             [_msg("system", "Be brief."), _msg("user", "Who is Pip?")], True, "generation_prompt"),
        case("two turns", byte, BYTES, [_msg("user", "Hi"), _msg("assistant", "Hello"), _msg("user", "Who?"),
                                        _msg("assistant", "Pip")]),
        case("a user who types <|im_end|>: it is text, not the end of the turn", byte, BYTES,
             [_msg("user", "say <|im_end|> please")], True, "injection"),
        case("newlines, accents and an empty reply", byte, BYTES,
             [_msg("user", "Zoë\nand Noé?"), _msg("assistant", "")]),
        case("an empty conversation: ValueError", byte, BYTES, [], hint="validate"),
        case("an unknown role 'bot': ValueError", byte, BYTES, [_msg("bot", "Hi")], hint="validate"),
        case("a message without a 'content': ValueError", byte, BYTES, [{"role": "user"}], hint="validate"),
        case("a content that is not a string (None): ValueError", byte, BYTES, [_msg("user", None)], hint="validate"),
        case("two user messages in a row: ValueError", byte, BYTES, [_msg("user", "Hi"), _msg("user", "Who?")],
             hint="validate"),
        case("a conversation that starts with the assistant: ValueError", byte, BYTES, [_msg("assistant", "Hi")],
             hint="validate"),
        case("a system message after the first: ValueError", byte, BYTES,
             [_msg("user", "Hi"), _msg("system", "Be brief.")], hint="validate"),
        case("a system message, then the assistant: ValueError (the first turn after the system message is the "
             "user's)", byte, BYTES, [_msg("system", "Be brief."), _msg("assistant", "Hi")], hint="validate"),
        case("a generation prompt after the assistant's message: ValueError", byte, BYTES, qa, True,
             "generation_after_assistant"),
    ]
    for n in range(6):
        messages = _random_conversation(rng, None)
        cases.append(case(f"a random conversation (case {n + 1})", byte, BYTES, messages,
                          messages[-1]["role"] == "user" and rng.random() < 0.7))
    return cases


register(Checkpoint(
    id="08.render_chat",
    points=2,
    title="ChatML: <|im_start|>role\\ncontent<|im_end|>\\n per message, the generation prompt, validation",
    signature="render_chat_from_data(tokenizer_data, messages, add_generation_prompt)",
    cases=render_cases,
    reference=sft("render_chat_from_data"),
    fingerprints=[(kind, _render_variant(kind)) for kind in RENDER_MISTAKES],
    # tiktoken's encode() refusing the <|im_end|> a user typed: the content was encoded with encode()
    raised_hints=[(r"disallowed special token", "encode_special")],
    hints={
        "default": "check_conversation(messages); then for each message: [<|im_start|> id] + "
        "encode_ordinary(role) + encode_ordinary('\\n') + encode_ordinary(content) + [<|im_end|> id] + "
        "encode_ordinary('\\n'); with add_generation_prompt, append [<|im_start|> id] + "
        "encode_ordinary('assistant') + encode_ordinary('\\n').",
        "hard_coded": "Look the special ids up in the tokenizer you are given, "
        "tokenizer.encode_single_token('<|im_start|>'), instead of writing 4093 and 4094: another tokenizer "
        "puts them elsewhere.",
        "adjacent": "Look <|im_end|> up by itself, tokenizer.encode_single_token('<|im_end|>'), instead of "
        "deriving it from <|im_start|> (+ 1): another tokenizer puts them elsewhere, in another order.",
        "special_as_text": "Insert <|im_start|> and <|im_end|> as their single special ids "
        "(tokenizer.encode_single_token): encode_ordinary('<|im_start|>') gives the characters <, |, i, ... "
        "which the model cannot tell from text.",
        "no_newline": "Put a newline after the role: the header is <|im_start|>user\\n, so the content starts on "
        "its own line.",
        "no_separator": "Put a newline after every <|im_end|> too: each message is "
        "<|im_start|>role\\ncontent<|im_end|>\\n.",
        "injection": "Encode the content with tokenizer.encode_ordinary: with encode(..., allowed_special='all') "
        "a user who types <|im_end|> ends the turn and can write the assistant's part (prompt injection).",
        "encode_special": "Encode role, content and newlines with tokenizer.encode_ordinary: tokenizer.encode refuses "
        "text that looks like a special token, and a user may well type <|im_end|> (it is text, not the end of "
        "the turn).",
        "generation_prompt": "With add_generation_prompt=True, end with the assistant's header, <|im_start|>assistant\\n: "
        "it is the prompt after which the model writes its reply.",
        "generation_newline": "The generation prompt is the whole assistant header, newline included: "
        "<|im_start|>assistant\\n. Without the newline the model's first token has to be one.",
        "generation_after_assistant": "Raise ValueError when add_generation_prompt=True but the last message is "
        "already the assistant's: the next turn is the user's.",
        "validate": "Call check_conversation(messages) first: an empty conversation, an unknown role or turns out "
        "of order (an optional system message first, then user, assistant, user, ...) raise ValueError.",
    },
))


# ---------------------------------------------------------------------- the masked example


def _example_variant(kind: str):
    """The reference example with one mistake in it, behind the checkpoint's adapter."""

    def example(tok, messages, max_len):
        sft("check_conversation")(messages)
        if kind != "ends_with_user" and messages[-1]["role"] != "assistant":
            raise ValueError("must end with the assistant")
        render = sft("render_chat")
        tokens = render(tok, messages)
        trained = [kind == "no_mask"] * len(tokens)
        newline = len(tok.encode_ordinary("\n"))
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if kind == "last_turn_only":
            turns = turns[-1:]
        for i in turns:
            first = len(render(tok, messages[:i], add_generation_prompt=True))
            last = len(render(tok, messages[: i + 1])) - newline
            if kind == "header_trained":
                first = len(render(tok, messages[:i])) if i else 0
            if kind == "im_end_masked":
                last -= 1
            if kind == "newline_trained":
                last += newline
            trained[first:last] = [True] * (last - first)
        if kind != "no_context_check" and len(tokens) - 1 > max_len:
            raise ValueError("too long")
        if kind == "no_shift":
            return tokens[:-1], [t if k else IGNORE for t, k in zip(tokens[:-1], trained[:-1])]
        if kind == "mask_not_shifted":
            return tokens[:-1], [t if k else IGNORE for t, k in zip(tokens[1:], trained[:-1])]
        if kind == "zero_masked":
            return tokens[:-1], [t if k else 0 for t, k in zip(tokens[1:], trained[1:])]
        if kind == "full_length":
            return tokens, [t if k else IGNORE for t, k in zip(tokens[1:] + [IGNORE], trained[1:] + [False])]
        return tokens[:-1], [t if k else IGNORE for t, k in zip(tokens[1:], trained[1:])]

    def wrong(tokenizer_data, messages, max_len):
        return example(_tokenizer(tokenizer_data), messages, max_len)

    wrong.__name__ = f"sft_example_{kind}"
    return wrong


EXAMPLE_MISTAKES = ("no_mask", "im_end_masked", "header_trained", "newline_trained", "last_turn_only", "no_shift",
                    "mask_not_shifted", "zero_masked", "full_length", "no_context_check",
                    "ends_with_user")


def example_cases(rng: random.Random) -> list[Case]:
    byte = _byte_data()

    def case(label, messages, max_len=256, hint="default"):
        return Case(label, (byte, messages, max_len), hint, show=(BYTES, messages, max_len))

    qa = [_msg("user", "Who?"), _msg("assistant", "Pip")]
    fits = len(sft("render_chat_from_data")(byte, qa, False)) - 1
    cases = [
        case("a question and its answer", qa),
        case("a system message, a question, an answer", [_msg("system", "Be brief."), *qa]),
        case("two turns: every assistant reply is trained", [*qa, _msg("user", "And?"), _msg("assistant", "Mia")],
             hint="last_turn_only"),
        case("an empty reply: only its <|im_end|> is trained", [_msg("user", "Hi"), _msg("assistant", "")]),
        case(f"exactly the context: {fits + 1} tokens, {fits} positions, max_len {fits}", qa, fits, "context"),
        case(f"one token too long: {fits} positions, max_len {fits - 1}: ValueError", qa, fits - 1, "context"),
        case("a conversation that ends with the user: ValueError (nothing to train at the end)",
             [*qa, _msg("user", "And?")], hint="ends_with_user"),
        case("turns out of order: ValueError", [_msg("assistant", "Hi"), _msg("user", "Who?")], hint="validate"),
        case("two user messages, then the assistant: ValueError (turns alternate)",
             [_msg("user", "Hi"), _msg("user", "Who?"), _msg("assistant", "Pip")], hint="validate"),
        case("an empty conversation: ValueError", [], hint="validate"),
        case("a system message, then the assistant: ValueError (the first turn after the system message is the "
             "user's)", [_msg("system", "Be brief."), _msg("assistant", "Pip")], hint="validate"),
        Case("a tokenizer with 5 special tokens, <|im_end|> (300) before <|im_start|> (1024), two turns",
             (_other_data(), [_msg("system", "Use the tools."), *qa, _msg("user", "And Mia?"),
                              _msg("assistant", "a girl in Oakford")], 256),
             show=(OTHER, Label("<system, user, assistant, user, assistant>"), 256)),
    ]
    for n in range(6):
        cases.append(case(f"a random conversation (case {n + 1})", _random_conversation(rng, "assistant")))
    return cases


register(Checkpoint(
    id="08.sft_example",
    points=3,
    title="inputs and next-token labels, every token but the assistant's replies and their <|im_end|> masked",
    signature="sft_example_from_data(tokenizer_data, messages, max_len)",
    cases=example_cases,
    reference=sft("sft_example_from_data"),
    fingerprints=[(kind, _example_variant(kind)) for kind in EXAMPLE_MISTAKES],
    # a ValueError about the context where the conversation fits exactly (no other case raises one)
    raised_hints=[(r"^ValueError: .*(context|too long|max_len|longer than)", "context")],
    hints={
        "default": "tokens = render_chat(tokenizer, messages); mark as trained, for each assistant message i, the "
        "tokens from len(render_chat(tokenizer, messages[:i], add_generation_prompt=True)) up to and including "
        "its <|im_end|>; return tokens[:-1] and, for t in tokens[1:], t if trained else -100.",
        "no_mask": "Mask the prompt: only the assistant's replies (and their <|im_end|>) are targets; every system, "
        "user and header token gets the label -100. Otherwise the model learns to write the questions too.",
        "im_end_masked": "Train the <|im_end|> that closes each reply: it is how the model learns to stop. "
        "Without it, generation runs on past the answer.",
        "header_trained": "Mask the assistant's header <|im_start|>assistant\\n: it is part of the prompt (the "
        "generation prompt), not something the model writes. Training starts right after it.",
        "newline_trained": "Stop training at <|im_end|>: the newline after it belongs to the template, and "
        "generation stops at <|im_end|> before it would be written.",
        "last_turn_only": "Train every assistant reply, not only the last one: earlier replies in a conversation "
        "are just as good examples.",
        "no_shift": "labels[t] is the token *after* position t, as in pretraining: inputs are tokens[:-1] and "
        "labels come from tokens[1:].",
        "mask_not_shifted": "Shift the mask with the tokens: the label of position t is tokens[t + 1], so whether "
        "it is trained is trained[t + 1], not trained[t].",
        "zero_masked": "Masked labels are -100 (cross-entropy's ignore_index), not 0: 0 is a real token id, which "
        "the model would be trained to predict.",
        "full_length": "Return len(tokens) - 1 positions: the last token is only a target (nothing comes after it "
        "to predict), so input_ids = tokens[:-1].",
        "context": "The model sees len(tokens) - 1 positions (inputs are tokens[:-1]): raise ValueError only when "
        "len(tokens) - 1 > max_len; a conversation of max_len + 1 tokens fits exactly.",
        "no_context_check": "Raise ValueError when the conversation has more positions than max_len: the model "
        "cannot attend beyond its context.",
        "ends_with_user": "Raise ValueError when the last message is not the assistant's: an example ends with the "
        "reply the model learns to write.",
        "validate": "Call check_conversation(messages) first: an empty conversation or turns out of order raise "
        "ValueError.",
    },
))


# ---------------------------------------------------------------------------- 08.collate


def _collate_variant(kind: str):
    def wrong(examples, pad_id):
        if not examples:
            raise ValueError("no examples")
        if any(len(x) != len(y) for x, y in examples):
            raise ValueError("lengths differ")
        longest = max(len(x) for x, _ in examples)
        if kind == "shortest":
            longest = min(len(x) for x, _ in examples)
        rows_x, rows_y = [], []
        for x, y in examples:
            x, y = x[:longest], y[:longest]
            pad_x = [IGNORE if kind == "swapped" else pad_id] * (longest - len(x))
            pad_y = [pad_id if kind in ("pad_label", "swapped") else 0 if kind == "zero_label" else IGNORE] * (
                longest - len(y))
            rows_x.append(pad_x + x if kind == "left_pad" else x + pad_x)
            rows_y.append(pad_y + y if kind == "left_pad" else y + pad_y)
        dtype = torch.int32 if kind == "int32" else torch.long
        return torch.tensor(rows_x, dtype=dtype), torch.tensor(rows_y, dtype=dtype)

    wrong.__name__ = f"collate_{kind}"
    return wrong


COLLATE_MISTAKES = ("left_pad", "pad_label", "zero_label", "swapped", "shortest", "int32")


def collate_cases(rng: random.Random) -> list[Case]:
    cases = [
        Case("two examples of lengths 3 and 5, pad_id 9", ([([1, 2, 3], [-100, 3, 4]), ([5, 6, 7, 8, 2], [-100, -100, 8, 2, 1])], 9)),
        Case("the same length: nothing to pad", ([([1, 2], [2, 3]), ([4, 5], [-100, 6])], 0)),
        Case("one example", ([([7, 8, 9, 10], [-100, 9, 10, 11])], 4095)),
        Case("three examples of lengths 1, 7 and 4 with ids up to 4095, pad_id 4095",
             ([([4093], [-100]), ([4093, 872, 25, 1290, 4094, 10, 4093], [-100, -100, -100, 4094, -100, -100, 300]),
               ([17, 2048, 3999, 4094], [2048, 3999, 4094, -100])], 4095)),
        Case("no examples: ValueError", ([], 0), "empty"),
        Case("inputs and labels of different lengths: ValueError", ([([1, 2, 3], [2, 3])], 0), "lengths"),
        Case("the second example has more labels than inputs: ValueError (every example is checked, both ways)",
             ([([1, 2, 3], [2, 3, 4]), ([5, 6], [6, 7, 8])], 0), "lengths"),
    ]
    for n in range(5):
        examples = []
        for _ in range(rng.randint(1, 5)):
            length = rng.randint(1, 12)
            x = [rng.randrange(4096) for _ in range(length)]
            examples.append((x, [rng.randrange(4096) if rng.random() < 0.5 else IGNORE for _ in range(length)]))
        cases.append(Case(f"random examples (case {n + 1})", (examples, rng.randrange(4096))))
    return cases


register(Checkpoint(
    id="08.collate",
    points=1,
    title="a right-padded batch: inputs padded with pad_id, labels with -100",
    signature="collate(examples, pad_id)",
    cases=collate_cases,
    reference=sft("collate"),
    fingerprints=[(kind, _collate_variant(kind)) for kind in COLLATE_MISTAKES],
    hints={
        "default": "longest = max(len(x) for x, _ in examples); input_ids = torch.full((batch, longest), pad_id), "
        "labels = torch.full((batch, longest), -100), both torch.long; copy each example into the start of its row.",
        "left_pad": "Pad on the right: each example keeps positions 0..n-1 (as in training without padding), and "
        "under the causal mask its tokens never attend to the pads after them.",
        "pad_label": "Pad the labels with -100, not pad_id: a pad label would train the model to predict "
        "<|pad|> after every reply.",
        "zero_label": "Pad the labels with -100, not 0: 0 is a real token id, which the model would be trained to "
        "predict after every reply (-100 is what cross_entropy ignores).",
        "swapped": "Inputs are padded with pad_id (a valid token id for the embedding) and labels with -100: "
        "the other way round, the embedding gets id -100.",
        "shortest": "Pad every example to the *longest* one; cutting to the shortest throws away tokens.",
        "int32": "Return torch.long (int64) tensors: embedding lookups and cross_entropy's targets expect int64.",
        "empty": "Raise ValueError when there are no examples: there is nothing to stack.",
        "lengths": "Raise ValueError when an example's inputs and labels differ in length: one label per position.",
    },
))


# ---------------------------------------------------------------------------- 08.sft_loss


def _masked(g: torch.Generator, batch: int, seq: int, vocab: int, keep: float) -> tuple[torch.Tensor, torch.Tensor]:
    logits = rand(g, batch, seq, vocab, low=-3.5, high=3.5)  # uniform: the same bits on every CPU
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    drop = torch.rand(batch, seq, generator=g) > keep
    drop[:, 0] = False  # every row trains at least one token
    return logits, labels.masked_fill(drop, IGNORE)


def _loss_variant(kind: str):
    def wrong(logits, labels):
        if logits.shape[:-1] != labels.shape:
            raise ValueError("shapes")
        keep = labels != IGNORE
        if kind != "empty_nan" and not keep.any():
            raise ValueError("nothing trained")
        if kind == "low_precision":  # no .float(): the log-softmax in the logits' own dtype
            return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        if kind == "shift_again":
            logits, labels, keep = logits[:, :-1], labels[:, 1:], keep[:, 1:]
        dim = 1 if kind == "softmax_dim" else -1
        logp = torch.log_softmax(logits.float(), dim=dim)
        nll = -logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)  # (batch, seq)
        if kind == "no_ignore":
            return nll.mean()
        nll = nll * keep
        if kind == "per_sequence":
            return (nll.sum(1) / keep.sum(1)).mean()
        if kind == "all_positions":
            return nll.sum() / labels.numel()
        if kind == "sum":
            return nll.sum()
        return nll.sum() / keep.sum()

    wrong.__name__ = f"sft_loss_{kind}"
    return wrong


LOSS_MISTAKES = ("per_sequence", "all_positions", "no_ignore", "shift_again", "sum", "softmax_dim", "empty_nan",
                 "low_precision")


def loss_cases(rng: random.Random) -> list[Case]:
    g = torch.Generator().manual_seed(rng.randrange(2**31))

    def shown(logits, labels):
        return (Label(f"<logits {'x'.join(map(str, logits.shape))}>"), labels)

    two = rand(g, 2, 4, 7, low=-1.7, high=1.7)
    cases = [
        Case("every label trained: the plain mean cross-entropy", (rand(g, 1, 3, 5, low=-1.7, high=1.7),
                                                                     torch.tensor([[0, 4, 2]]))),
        Case("two rows with 1 and 4 trained tokens: one mean over the 5 tokens, not a mean of two means",
             (two, torch.tensor([[3, IGNORE, IGNORE, IGNORE], [1, 0, 6, 2]])), "per_sequence"),
        Case("label id 0 is a real token; -100 positions do not count", (two, torch.tensor([[0, IGNORE, 0, IGNORE],
                                                                                             [IGNORE, 5, IGNORE, 0]]))),
        Case("no trained label at all: ValueError (the mean of nothing)",
             (two, torch.full((2, 4), IGNORE)), "empty"),
        Case("labels of another length than the logits: ValueError", (two, torch.zeros(2, 5, dtype=torch.long)),
             "shape"),
        Case("labels (4, 2) for logits (2, 4, 7): as many positions, another shape: ValueError (flattening both "
             "would pair each logit with another row's label)", (two, torch.tensor([[0, 1], [2, 3], [4, 5], [6, 0]])),
             "shape"),
    ]
    # the realistic cases' logits are multiples of 1/16 drawn as integers: the same bits on every CPU
    # (torch.randn's vectorised transform rounds differently), and exact in bfloat16
    logits, labels = _masked(g, 3, 8, 128, 0.5)
    logits = torch.randint(-64, 65, logits.shape, generator=g) / 16
    cases.insert(3, Case("a realistic batch: 3 rows of 8 positions, vocabulary 128, about half the labels trained",
                         (logits, labels), probe=True))
    logits, labels = _masked(g, 2, 6, 256, 0.6)
    logits = torch.randint(-96, 97, logits.shape, generator=g) / 16
    cases.insert(4, Case("bfloat16 logits (2 rows of 6, vocabulary 256): the loss is computed and returned in float32",
                         (logits.to(torch.bfloat16), labels), "low_precision"))
    cases[1].probe = True
    for n in range(5):
        batch, seq, vocab = rng.randint(1, 4), rng.randint(2, 9), rng.randint(3, 20)
        cases.append(Case(f"random logits and labels {batch}x{seq}, vocab {vocab} (case {n + 1})",
                          _masked(g, batch, seq, vocab, rng.uniform(0.2, 0.9))))
    for case in cases:
        case.show = shown(*case.args)
    return cases


register(Checkpoint(
    id="08.sft_loss",
    points=2,
    title="the mean cross-entropy over every trained token of the batch",
    signature="sft_loss(logits, labels)",
    cases=loss_cases,
    reference=sft("sft_loss"),
    tol=TOL,
    fingerprint_tol=1e-6,
    exact_dtype=True,  # "Returns a 0-d float32 tensor", whatever the logits' dtype
    fingerprints=[(kind, _loss_variant(kind)) for kind in LOSS_MISTAKES],
    # trained through: the gradient must reach the logits (a loss under torch.no_grad() or on
    # detached logits has the right value and trains nothing)
    grad_probe=True,
    hints={
        "default": "F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, "
        "reduction='sum') divided by the number of labels != -100; ValueError if that number is 0 or the shapes "
        "do not match.",
        "per_sequence": "Average over all trained tokens of the batch at once: a mean of per-row means makes the "
        "one token of a short answer weigh as much as all the tokens of a long one.",
        "all_positions": "Divide by the number of *trained* tokens (labels != -100), not by every position: "
        "padding and prompt positions would dilute the loss, more so the longer the prompt.",
        "no_ignore": "Leave out the positions whose label is -100 (ignore_index=-100): they are prompt and padding, "
        "not targets.",
        "shift_again": "The labels are already shifted (sft_example paired position t with token t + 1): compare "
        "logits[:, t] with labels[:, t], without shifting again.",
        "sum": "Return the mean over the trained tokens, not their sum: the sum grows with the batch, and with it "
        "the effective learning rate.",
        "softmax_dim": "The softmax runs over the vocabulary, the last dimension of logits (batch, seq, vocab).",
        "empty_nan": "Raise ValueError when no label is trained: 0 / 0 is nan, and a nan loss would silently ruin "
        "every weight at the next step.",
        "low_precision": "Compute the loss in float32, F.cross_entropy(logits.float(), ...): in bfloat16 the "
        "log-softmax over the vocabulary keeps 2 to 3 significant digits, and the loss is returned in bfloat16.",
        "empty": "Raise ValueError when every label is -100: there is no token to average over.",
        "shape": "Raise ValueError when labels are not (batch, seq) for logits (batch, seq, vocab): compare "
        "logits.shape[:-1] with labels.shape before flattening (cross_entropy only checks the flattened lengths).",
        "dtype": "Return the loss as a 0-d float32 tensor: compute in float32, logits.float(), not in float64 (nor in "
        "the logits' own dtype).",
    },
))
