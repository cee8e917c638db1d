"""Wrong answers to chapter 01's checkpoints, as learners write them."""

from __future__ import annotations

import re
from collections import Counter

import regex

from solutions.tokenizer import GPT4_SPLIT_PATTERN

from . import mistake

# ------------------------------------------------------------------------------ 01.merge


@mistake("01.merge", "overlap")
def merge_steps_one_after_a_match(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
        else:
            out.append(ids[i])
        i += 1  # forgot to skip the second id of the pair
    return out


@mistake("01.merge", "last_id")
def merge_loop_stops_before_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out  # the final id is lost when it is not part of a pair


@mistake("01.merge", "last_pair")
def merge_range_too_short(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 2 < len(ids) and (ids[i], ids[i + 1]) == pair:  # off by one
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


@mistake("01.merge", "order")
def merge_unordered_pair(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and {ids[i], ids[i + 1]} == set(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


@mistake("01.merge", "mutated_input")
def merge_in_place(ids, pair, new_id):
    i = 0
    while i < len(ids) - 1:
        if ids[i] == pair[0] and ids[i + 1] == pair[1]:
            ids[i : i + 2] = [new_id]
        i += 1
    return ids


@mistake("01.merge", "index")
def merge_indexes_first_pair(ids, pair, new_id):
    out = [ids[0]]  # IndexError on an empty list
    i = 1
    while i < len(ids):
        if (out[-1], ids[i]) == pair and out[-1] != new_id:
            out[-1] = new_id
        else:
            out.append(ids[i])
        i += 1
    return out


@mistake("01.merge", "text")
def merge_on_strings(ids, pair, new_id):
    text = " ".join(str(i) for i in ids)
    text = text.replace(f"{pair[0]} {pair[1]}", str(new_id))  # "12 3" contains "2 3"
    return [int(t) for t in text.split()]


# -------------------------------------------------------------------------- 01.train_bpe

def _words(text, pat_str, special_tokens, split=True):
    pieces = regex.split("|".join(map(regex.escape, special_tokens)), text) if special_tokens else [text]
    chunks = Counter()
    for piece in pieces:
        chunks.update(regex.findall(pat_str, piece) if split else [piece])
    return chunks


def naive_bpe(chunks: Counter, n_merges: int, weighted: bool = True, pick=max) -> dict[bytes, int]:
    """The textbook trainer: recount every pair after every merge. Correct as called by
    default (the benchmark's baseline); the mistakes below bend one of its choices."""
    words = {chunk: list(chunk.encode("utf-8")) for chunk in chunks}
    ranks = {bytes([i]): i for i in range(256)}
    vocab = {i: bytes([i]) for i in range(256)}
    for _ in range(n_merges):
        counts = Counter()
        for chunk, ids in words.items():
            for p in zip(ids, ids[1:]):
                counts[p] += chunks[chunk] if weighted else 1
        if not counts:
            break
        best = pick(counts, key=counts.get)
        new_id = len(ranks)
        vocab[new_id] = vocab[best[0]] + vocab[best[1]]
        ranks[vocab[new_id]] = new_id
        for chunk, ids in words.items():
            out, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and (ids[i], ids[i + 1]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            words[chunk] = out
    return ranks


def _check_size(vocab_size, special_tokens):
    if vocab_size < 256 + len(special_tokens):
        raise ValueError("vocab_size too small")


@mistake("01.train_bpe", "presplit")
def train_without_presplit(text, vocab_size, pat_str, special_tokens):
    _check_size(vocab_size, special_tokens)
    return naive_bpe(_words(text, pat_str, special_tokens, split=False), vocab_size - 256 - len(special_tokens))


@mistake("01.train_bpe", "frequency")
def train_counting_distinct_chunks_once(text, vocab_size, pat_str, special_tokens):
    _check_size(vocab_size, special_tokens)
    return naive_bpe(_words(text, pat_str, special_tokens), vocab_size - 256 - len(special_tokens), weighted=False)


@mistake("01.train_bpe", "argmax")
def train_picks_least_frequent(text, vocab_size, pat_str, special_tokens):
    _check_size(vocab_size, special_tokens)
    return naive_bpe(_words(text, pat_str, special_tokens), vocab_size - 256 - len(special_tokens), pick=min)


@mistake("01.train_bpe", "size_specials")
def train_forgets_special_tokens_in_size(text, vocab_size, pat_str, special_tokens):
    _check_size(vocab_size, special_tokens)
    return naive_bpe(_words(text, pat_str, special_tokens), vocab_size - 256)


@mistake("01.train_bpe", "too_small")
def train_accepts_tiny_vocab(text, vocab_size, pat_str, special_tokens):
    return naive_bpe(_words(text, pat_str, special_tokens), max(0, vocab_size - 256 - len(special_tokens)))


@mistake("01.train_bpe", "special_in_training")
def train_on_special_tokens_too(text, vocab_size, pat_str, special_tokens):
    _check_size(vocab_size, special_tokens)
    return naive_bpe(Counter(regex.findall(pat_str, text)), vocab_size - 256 - len(special_tokens))


@mistake("01.train_bpe", "run_out")
def train_crashes_when_pairs_run_out(text, vocab_size, pat_str, special_tokens):
    _check_size(vocab_size, special_tokens)
    chunks = _words(text, pat_str, special_tokens)
    words = [list(c.encode()) for c in chunks]
    ranks = {bytes([i]): i for i in range(256)}
    vocab = dict(enumerate(bytes([i]) for i in range(256)))
    while len(ranks) < vocab_size - len(special_tokens):
        counts = Counter()
        for w, c in zip(words, chunks.values()):
            for p in zip(w, w[1:]):
                counts[p] += c
        best = max(counts, key=counts.get)  # ValueError on an empty Counter
        new_id = len(ranks)
        vocab[new_id] = vocab[best[0]] + vocab[best[1]]
        ranks[vocab[new_id]] = new_id
        words = [_merge_all(w, best, new_id) for w in words]
    return ranks


def _merge_all(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


@mistake("01.train_bpe", "recount")
def train_counts_once_only(text, vocab_size, pat_str, special_tokens):
    """Counts pairs once before the loop and never updates them."""
    _check_size(vocab_size, special_tokens)
    chunks = _words(text, pat_str, special_tokens)
    words = [list(c.encode()) for c in chunks]
    counts = Counter()
    for w, c in zip(words, chunks.values()):
        for p in zip(w, w[1:]):
            counts[p] += c
    ranks = {bytes([i]): i for i in range(256)}
    vocab = dict(enumerate(bytes([i]) for i in range(256)))
    for best, _ in counts.most_common(vocab_size - 256 - len(special_tokens)):
        new_id = len(ranks)
        vocab[new_id] = vocab[best[0]] + vocab[best[1]]
        ranks.setdefault(vocab[new_id], new_id)
    return ranks


@mistake("01.train_bpe", "too_small")
def train_minimum_forgets_the_special_tokens(text, vocab_size, pat_str, special_tokens):
    # the learner thought only the 256 bytes need room: vocab_size 257 with 2 special tokens is
    # accepted, and yields the 256 bytes (negative merges learn nothing)
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256, got {vocab_size}")
    return naive_bpe(_words(text, pat_str, special_tokens), vocab_size - 256 - len(special_tokens))


@mistake("01.train_bpe", "too_small_equal")
def train_refuses_the_smallest_valid_size(text, vocab_size, pat_str, special_tokens):
    # the learner thought a vocabulary without a single merge is too small: <= instead of <
    if vocab_size <= 256 + len(special_tokens):
        raise ValueError(f"vocab_size is too small: it must be more than {256 + len(special_tokens)}")
    return naive_bpe(_words(text, pat_str, special_tokens), vocab_size - 256 - len(special_tokens))


@mistake("01.train_bpe", "special_in_training")
def train_cuts_only_endoftext(text, vocab_size, pat_str, special_tokens):
    # the learner thought '<|endoftext|>' is the only special token that can be in a text
    _check_size(vocab_size, special_tokens)
    chunks = Counter()
    for piece in text.split("<|endoftext|>"):
        chunks.update(regex.findall(pat_str, piece))
    return naive_bpe(chunks, vocab_size - 256 - len(special_tokens))


@mistake("01.train_bpe", "escape")
def train_splits_on_unescaped_special_tokens(text, vocab_size, pat_str, special_tokens):
    # the learner thought '|'.join(special_tokens) matches the special tokens: '|' is 'or', so
    # the text is cut at every '<', '>' and at the words inside ('im_end')
    _check_size(vocab_size, special_tokens)
    chunks = Counter()
    for piece in regex.split("|".join(special_tokens), text) if special_tokens else [text]:
        chunks.update(regex.findall(pat_str, piece))
    return naive_bpe(chunks, vocab_size - 256 - len(special_tokens))


@mistake("01.train_bpe", "specials_in_ranks")
def train_adds_special_tokens_to_the_ranks(text, vocab_size, pat_str, special_tokens):
    # the learner thought vocab_size - len(special_tokens) merges leave room for the special tokens
    # IN the ranks: they belong to the tokenizer, after the ranks
    _check_size(vocab_size, special_tokens)
    ranks = naive_bpe(_words(text, pat_str, special_tokens), vocab_size - 256 - len(special_tokens))
    for s in special_tokens:
        ranks[s.encode("utf-8")] = len(ranks)
    return ranks


@mistake("01.train_bpe", "regex_module")
def train_with_the_re_module(text, vocab_size, pat_str, special_tokens):
    # the learner thought re and regex are the same module: re does not know \p{L}
    _check_size(vocab_size, special_tokens)
    pieces = re.split("|".join(map(re.escape, special_tokens)), text) if special_tokens else [text]
    chunks = Counter(chunk for piece in pieces for chunk in re.findall(pat_str, piece))
    return naive_bpe(chunks, vocab_size - 256 - len(special_tokens))


@mistake("01.train_bpe", "presplit")
def train_splits_with_gpt4_pattern_whatever_pat_str(text, vocab_size, pat_str, special_tokens):
    # the learner thought every tokenizer splits as GPT-4 does: pat_str is ignored
    _check_size(vocab_size, special_tokens)
    return naive_bpe(_words(text, GPT4_SPLIT_PATTERN, special_tokens), vocab_size - 256 - len(special_tokens))


# ---------------------------------------------------------------------------- 01.encode

def _bpe(chunk: bytes, ranks):
    parts = [chunk[i : i + 1] for i in range(len(chunk))]
    while True:
        candidates = [(ranks[parts[i] + parts[i + 1]], i) for i in range(len(parts) - 1) if parts[i] + parts[i + 1] in ranks]
        if not candidates:
            return [ranks[p] for p in parts]
        _, i = min(candidates)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


@mistake("01.encode", "presplit")
def encode_without_presplit(text, mergeable_ranks, pat_str):
    return _bpe(text.encode("utf-8"), mergeable_ranks) if text else []


@mistake("01.encode", "lowest_rank")
def encode_merges_leftmost_known_pair(text, mergeable_ranks, pat_str):
    ids = []
    for chunk in regex.findall(pat_str, text):
        parts = [bytes([b]) for b in chunk.encode("utf-8")]
        merged = True
        while merged:
            merged = False
            for i in range(len(parts) - 1):
                if parts[i] + parts[i + 1] in mergeable_ranks:
                    parts[i : i + 2] = [parts[i] + parts[i + 1]]
                    merged = True
                    break
        ids += [mergeable_ranks[p] for p in parts]
    return ids


@mistake("01.encode", "longest_match")
def encode_greedy_longest_token(text, mergeable_ranks, pat_str):
    ids = []
    for chunk in regex.findall(pat_str, text):
        data = chunk.encode("utf-8")
        i = 0
        while i < len(data):
            j = len(data)
            while data[i:j] not in mergeable_ranks:
                j -= 1
            ids.append(mergeable_ranks[data[i:j]])
            i = j
    return ids


@mistake("01.encode", "until_none")
def encode_single_pass(text, mergeable_ranks, pat_str):
    ids = []
    for chunk in regex.findall(pat_str, text):
        parts = [bytes([b]) for b in chunk.encode("utf-8")]
        out, i = [], 0
        while i < len(parts):  # merges each position once, never merges merged tokens again
            if i + 1 < len(parts) and parts[i] + parts[i + 1] in mergeable_ranks:
                out.append(parts[i] + parts[i + 1])
                i += 2
            else:
                out.append(parts[i])
                i += 1
        ids += [mergeable_ranks[p] for p in out]
    return ids


@mistake("01.encode", "utf8_bytes")
def encode_characters_not_bytes(text, mergeable_ranks, pat_str):
    ids = []
    for chunk in regex.findall(pat_str, text):
        parts = [ch.encode("utf-8") for ch in chunk]  # a character is not a byte
        while True:
            candidates = [(mergeable_ranks[parts[i] + parts[i + 1]], i) for i in range(len(parts) - 1) if parts[i] + parts[i + 1] in mergeable_ranks]
            if not candidates:
                break
            _, i = min(candidates)
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [mergeable_ranks[p] for p in parts]
    return ids


@mistake("01.encode", "ties")
def encode_rightmost_of_equal_ranks(text, mergeable_ranks, pat_str):
    ids = []
    for chunk in regex.findall(pat_str, text):
        parts = [bytes([b]) for b in chunk.encode("utf-8")]
        while len(parts) > 1:
            best_rank, best_i = None, None
            for i in range(len(parts) - 1):
                rank = mergeable_ranks.get(parts[i] + parts[i + 1])
                # the learner thought <= and < pick the same pair: of equal ranks, <= keeps the last
                if rank is not None and (best_rank is None or rank <= best_rank):
                    best_rank, best_i = rank, i
            if best_i is None:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        ids += [mergeable_ranks[p] for p in parts]
    return ids


@mistake("01.encode", "pat_str")
def encode_with_gpt4_pattern_whatever_pat_str(text, mergeable_ranks, pat_str):
    # the learner thought the split pattern is always GPT-4's
    return [i for chunk in regex.findall(GPT4_SPLIT_PATTERN, text) for i in _bpe(chunk.encode("utf-8"), mergeable_ranks)]


@mistake("01.encode", "regex_module")
def encode_with_re_module(text, mergeable_ranks, pat_str):
    return [i for chunk in re.findall(pat_str, text) for i in _bpe(chunk.encode("utf-8"), mergeable_ranks)]


# ---------------------------------------------------------------------------- 01.decode

@mistake("01.decode", "join_bytes_first")
def decode_token_by_token(ids, vocab):
    if any(i not in vocab for i in ids):
        raise ValueError("unknown id")
    return "".join(vocab[i].decode("utf-8") for i in ids)


@mistake("01.decode", "errors_replace")
def decode_strict(ids, vocab):
    if any(i not in vocab for i in ids):
        raise ValueError("unknown id")
    return b"".join(vocab[i] for i in ids).decode("utf-8")


@mistake("01.decode", "errors_replace")
def decode_ignoring_errors(ids, vocab):
    if any(i not in vocab for i in ids):
        raise ValueError("unknown id")
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="ignore")


@mistake("01.decode", "unknown_id")
def decode_keyerror(ids, vocab):
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


@mistake("01.decode", "unknown_id")
def decode_skips_unknown(ids, vocab):
    return b"".join(vocab.get(i, b"") for i in ids).decode("utf-8", errors="replace")


@mistake("01.decode", "code_points")
def decode_ids_as_code_points(ids, vocab):
    if any(i not in vocab for i in ids):
        raise ValueError("unknown id")
    return "".join(chr(i) if i < 256 else vocab[i].decode("utf-8", "replace") for i in ids)


@mistake("01.decode", "return_type")
def decode_returns_bytes(ids, vocab):
    if any(i not in vocab for i in ids):
        raise ValueError("unknown id")
    return b"".join(vocab[i] for i in ids)


@mistake("01.decode", "join_bytes_first")
def decode_each_token_with_replace(ids, vocab):
    if any(i not in vocab for i in ids):
        raise ValueError(f"unknown id in {ids}")
    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)  # 'é' becomes '��'


# -------------------------------------------------------------------- 01.special_tokens

def _ordinary(text, ranks, pat_str):
    return [i for chunk in regex.findall(pat_str, text) for i in _bpe(chunk.encode("utf-8"), ranks)]


@mistake("01.special_tokens", "not_split")
def encode_ignoring_special_tokens(text, mergeable_ranks, pat_str, special_tokens):
    return _ordinary(text, mergeable_ranks, pat_str)


@mistake("01.special_tokens", "escape")
def encode_unescaped_pattern(text, mergeable_ranks, pat_str, special_tokens):
    if not special_tokens:
        return _ordinary(text, mergeable_ranks, pat_str)
    ids, start = [], 0
    for m in regex.finditer("|".join(special_tokens), text):  # "|" is alternation: "<" matches
        ids += _ordinary(text[start : m.start()], mergeable_ranks, pat_str)
        ids.append(special_tokens[m.group()])  # KeyError: '<'
        start = m.end()
    return ids + _ordinary(text[start:], mergeable_ranks, pat_str)


@mistake("01.special_tokens", "escape")
def encode_splits_on_unescaped_pattern(text, mergeable_ranks, pat_str, special_tokens):
    if not special_tokens:
        return _ordinary(text, mergeable_ranks, pat_str)
    ids = []
    for piece in regex.split("(" + "|".join(special_tokens) + ")", text):
        if piece in special_tokens:
            ids.append(special_tokens[piece])
        elif piece:
            ids += _ordinary(piece, mergeable_ranks, pat_str)  # '<', 'endoftext', '>' as text
    return ids


@mistake("01.special_tokens", "ids")
def encode_numbers_special_tokens_itself(text, mergeable_ranks, pat_str, special_tokens):
    pattern = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
    if not special_tokens:
        return _ordinary(text, mergeable_ranks, pat_str)
    ids, start = [], 0
    for m in regex.finditer(pattern, text):
        ids += _ordinary(text[start : m.start()], mergeable_ranks, pat_str)
        ids.append(len(mergeable_ranks) + list(special_tokens).index(m.group()))  # not the dict's id
        start = m.end()
    return ids + _ordinary(text[start:], mergeable_ranks, pat_str)


@mistake("01.special_tokens", "tail")
def encode_drops_tail(text, mergeable_ranks, pat_str, special_tokens):
    if not special_tokens:
        return _ordinary(text, mergeable_ranks, pat_str)
    pattern = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
    ids, start = [], 0
    for m in regex.finditer(pattern, text):
        ids += _ordinary(text[start : m.start()], mergeable_ranks, pat_str)
        ids.append(special_tokens[m.group()])
        start = m.end()
    if start == 0:
        ids += _ordinary(text, mergeable_ranks, pat_str)
    return ids  # the text after the last special token is never encoded


@mistake("01.special_tokens", "all_specials")
def encode_only_endoftext(text, mergeable_ranks, pat_str, special_tokens):
    eot = "<|endoftext|>"
    if eot not in special_tokens:
        return _ordinary(text, mergeable_ranks, pat_str)
    ids = []
    for k, piece in enumerate(text.split(eot)):
        if k:
            ids.append(special_tokens[eot])
        ids += _ordinary(piece, mergeable_ranks, pat_str)
    return ids


@mistake("01.special_tokens", "longest_first")
def encode_in_dict_order(text, mergeable_ranks, pat_str, special_tokens):
    if not special_tokens:
        return _ordinary(text, mergeable_ranks, pat_str)
    pattern = "|".join(regex.escape(s) for s in special_tokens)  # not longest first
    ids, start = [], 0
    for m in regex.finditer(pattern, text):
        ids += _ordinary(text[start : m.start()], mergeable_ranks, pat_str)
        ids.append(special_tokens[m.group()])
        start = m.end()
    return ids + _ordinary(text[start:], mergeable_ranks, pat_str)


@mistake("01.special_tokens", "adjacent")
def encode_splits_on_whitespace_between(text, mergeable_ranks, pat_str, special_tokens):
    if not special_tokens:
        return _ordinary(text, mergeable_ranks, pat_str)
    pattern = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
    pieces = regex.split(f"({pattern})", text)
    ids = []
    for piece in filter(None, pieces):
        if piece in special_tokens and (not ids or ids[-1] not in special_tokens.values()):
            ids.append(special_tokens[piece])  # a repeated special token is dropped
        elif piece not in special_tokens:
            ids += _ordinary(piece, mergeable_ranks, pat_str)
    return ids


@mistake("01.special_tokens", "none_given")
def encode_empty_alternation(text, mergeable_ranks, pat_str, special_tokens):
    pattern = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
    ids, start = [], 0
    for m in regex.finditer(pattern, text):  # "" matches at every position
        ids += _ordinary(text[start : m.start()], mergeable_ranks, pat_str)
        ids.append(special_tokens[m.group()])
        start = m.end()
    return ids + _ordinary(text[start:], mergeable_ranks, pat_str)


@mistake("01.special_tokens", "pat_str")
def encode_specials_with_gpt4_pattern(text, mergeable_ranks, pat_str, special_tokens):
    # the learner thought the split pattern is always GPT-4's: pat_str is never used
    if not special_tokens:
        return _ordinary(text, mergeable_ranks, GPT4_SPLIT_PATTERN)
    pattern = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
    ids, start = [], 0
    for m in regex.finditer(pattern, text):
        ids += _ordinary(text[start : m.start()], mergeable_ranks, GPT4_SPLIT_PATTERN)
        ids.append(special_tokens[m.group()])
        start = m.end()
    return ids + _ordinary(text[start:], mergeable_ranks, GPT4_SPLIT_PATTERN)
