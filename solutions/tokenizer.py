"""Byte-level byte-pair encoding (BPE), the tokenizer of GPT-2, GPT-4 and LLaMA 3.

A BPE vocabulary is a table of *mergeable ranks*: ``dict[bytes, int]`` mapping each
token's bytes to its id. Ids 0..255 are single bytes, so any UTF-8 text can be
encoded; every later id is the concatenation of two earlier tokens, learned by
repeatedly merging the most frequent adjacent pair (Sennrich et al., 2016).

This is exactly tiktoken's format, so a vocabulary trained here *is* a
``tiktoken.Encoding`` (:meth:`BPETokenizer.to_tiktoken`), and a production tiktoken
vocabulary loads here (:meth:`BPETokenizer.from_tiktoken`) and encodes to the same ids.

Pipeline of ``encode``::

    text --split on special tokens--> pieces --regex pre-split--> chunks
         --utf-8--> bytes --merge lowest-rank pair until none--> ids
"""

from __future__ import annotations

import base64
import heapq
import os
from collections import Counter
from pathlib import Path

import regex

# GPT-4's (cl100k_base) pre-tokenisation pattern: contractions, words with one leading
# non-letter, numbers of at most three digits, punctuation runs, whitespace. Merges never
# cross a chunk boundary, so " the" and "the" are learned as separate words.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

# Special tokens of the course tokenizer; chapter 08's chat template uses the ChatML pair.
COURSE_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, left to right.

    Occurrences may overlap (``[7, 7, 7]`` holds the pair ``(7, 7)`` twice); scanning left
    to right and jumping past each match merges the first one only: ``[new_id, 7]``.
    ``ids`` is not modified.
    """
    merged = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def special_token_pattern(special_tokens) -> str:
    """A regex that matches any of ``special_tokens``.

    Each token is escaped, because "|" in "<|endoftext|>" would otherwise mean "or"; and the
    longest come first, because regex alternation takes the first alternative that matches,
    so "<|im_start|>" must not be cut short by a special token it starts with.
    """
    return "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))


def count_pairs(ids: list[int]) -> Counter:
    """How often each adjacent pair occurs in ``ids``: ``[1, 2, 1, 2]`` has (1, 2) twice."""
    return Counter(zip(ids, ids[1:]))


def train_bpe(
    text: str,
    vocab_size: int,
    pat_str: str = GPT4_SPLIT_PATTERN,
    special_tokens: tuple[str, ...] | list[str] = (),
) -> dict[bytes, int]:
    """Learn mergeable ranks from ``text``: ``vocab_size - len(special_tokens)`` tokens.

    ``vocab_size`` counts every id a model will embed: 256 bytes, the learned merges and
    the special tokens (which get the ids after the ranks); a ``vocab_size`` below
    ``256 + len(special_tokens)`` cannot hold them and raises ``ValueError``, saying the
    smallest valid size. Special tokens are cut out of the training text, so no merge ever
    spans ``<|endoftext|>``.

    Each step merges the most frequent adjacent pair, counted over the regex chunks of
    the text, each unique chunk weighted by how often it occurs. Ties may be broken any way
    (the checkpoint accepts any most frequent pair); this one takes the pair whose bytes
    sort first, so its ranks never depend on dict order. Training stops early when no pair
    is left to merge.

    Counting here is incremental (a recount after every merge gives the same result, only
    slower): a merge only changes the pair counts of the words that contain the merged
    pair, so we keep ``pair -> words containing it`` and a max-heap of counts with lazy
    deletion.
    """
    n_special = len(special_tokens)
    if vocab_size < 256 + n_special:
        specials = f" plus {n_special} for the special tokens" if n_special else ""
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level vocabulary needs 256 ids for "
            f"the single bytes{specials}. Use vocab_size >= {256 + n_special}."
        )
    n_merges = vocab_size - 256 - n_special

    chunk_counts: Counter[str] = Counter()
    pieces = regex.split(special_token_pattern(special_tokens), text) if special_tokens else [text]
    for piece in pieces:
        chunk_counts.update(regex.findall(pat_str, piece))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())

    vocab = {i: bytes([i]) for i in range(256)}
    ranks = {bytes([i]): i for i in range(256)}
    pair_count: Counter[tuple[int, int]] = Counter()
    words_with_pair: dict[tuple[int, int], set[int]] = {}
    for w, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_count[pair] += freq
            words_with_pair.setdefault(pair, set()).add(w)

    def heap_entry(pair):
        return (-pair_count[pair], vocab[pair[0]], vocab[pair[1]], pair)

    heap = [heap_entry(pair) for pair in pair_count]
    heapq.heapify(heap)

    while len(ranks) < 256 + n_merges and heap:
        neg_count, _, _, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg_count or neg_count == 0:
            continue  # stale entry: this pair's count changed after it was pushed
        token = vocab[pair[0]] + vocab[pair[1]]
        # Two different pairs can spell the same bytes ("a"+"bc", "ab"+"c"): reuse the id.
        new_id = ranks.setdefault(token, len(ranks))
        vocab[new_id] = token

        changed = set()
        for w in words_with_pair.pop(pair, ()):
            old, freq = words[w], freqs[w]
            new = merge(old, pair, new_id)
            old_pairs, new_pairs = count_pairs(old), count_pairs(new)
            for p, c in old_pairs.items():
                pair_count[p] -= c * freq
                if p not in new_pairs and p != pair:
                    words_with_pair[p].discard(w)
            for p, c in new_pairs.items():
                pair_count[p] += c * freq
                words_with_pair.setdefault(p, set()).add(w)
            words[w] = new
            changed.update(old_pairs, new_pairs)
        changed.discard(pair)
        pair_count.pop(pair, None)
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, heap_entry(p))
            else:
                pair_count.pop(p, None)
    return ranks


def bpe_encode_chunk(chunk: bytes, mergeable_ranks: dict[bytes, int]) -> list[int]:
    """Encode one regex chunk: merge the adjacent pair with the lowest rank until none is left.

    Lowest rank = learned earliest, so merges replay in training order. On equal ranks
    the leftmost pair merges first, as in tiktoken's ``byte_pair_merge``.
    """
    if chunk in mergeable_ranks:  # whole words are common: skip the merge loop
        return [mergeable_ranks[chunk]]
    parts = [chunk[i : i + 1] for i in range(len(chunk))]
    while len(parts) > 1:
        best_rank, best_i = None, None
        for i in range(len(parts) - 1):
            rank = mergeable_ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_i is None:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [mergeable_ranks[part] for part in parts]


def encode_ordinary(text: str, mergeable_ranks: dict[bytes, int], pat_str: str) -> list[int]:
    """Encode ``text`` with no special-token handling: regex pre-split, then BPE per chunk."""
    ids = []
    for chunk in regex.findall(pat_str, text):
        ids.extend(bpe_encode_chunk(chunk.encode("utf-8"), mergeable_ranks))
    return ids


def encode(
    text: str,
    mergeable_ranks: dict[bytes, int],
    pat_str: str,
    special_tokens: dict[str, int],
) -> list[int]:
    """Encode ``text``, turning every occurrence of a special token into its single id.

    The text between special tokens is encoded with :func:`encode_ordinary`, so merges
    never reach into a special token.
    """
    if not special_tokens:
        return encode_ordinary(text, mergeable_ranks, pat_str)
    ids = []
    start = 0
    for match in regex.finditer(special_token_pattern(special_tokens), text):
        ids.extend(encode_ordinary(text[start : match.start()], mergeable_ranks, pat_str))
        ids.append(special_tokens[match.group()])
        start = match.end()
    ids.extend(encode_ordinary(text[start:], mergeable_ranks, pat_str))
    return ids


def decode(ids: list[int], vocab: dict[int, bytes]) -> str:
    """Turn ids back into text: join the tokens' bytes, then decode UTF-8 once.

    A single token may hold part of a multi-byte character, so tokens are never decoded
    one by one. Bytes that are not valid UTF-8 (possible when decoding an arbitrary id
    sequence) become U+FFFD, as in tiktoken. Unknown ids raise ``ValueError``.
    """
    for i in ids:
        if not isinstance(i, int) or i not in vocab:
            raise ValueError(
                f"token id {i!r} is not in the vocabulary (valid ids: 0..{max(vocab)}); "
                "decode only ids this tokenizer produced, as Python ints (.tolist() a tensor)."
            )
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


class BPETokenizer:
    """A byte-level BPE tokenizer in tiktoken's format: mergeable ranks, split pattern,
    special tokens.

    >>> tok = BPETokenizer.train(text, vocab_size=512)       # doctest: +SKIP
    >>> tok.decode(tok.encode("Hello, world")) == "Hello, world"   # doctest: +SKIP
    True
    """

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        pat_str: str = GPT4_SPLIT_PATTERN,
        special_tokens: dict[str, int] | None = None,
    ):
        self.mergeable_ranks = dict(mergeable_ranks)
        self.pat_str = pat_str
        self.special_tokens = dict(special_tokens or {})
        self.vocab = {rank: token for token, rank in self.mergeable_ranks.items()}
        clash = set(self.vocab) & set(self.special_tokens.values())
        if len(self.vocab) != len(self.mergeable_ranks) or clash:
            raise ValueError(
                "every token needs its own id: mergeable_ranks repeat a rank or a special "
                f"token reuses one ({sorted(clash)[:5]}); give special tokens ids after "
                f"the last rank ({max(self.vocab) + 1} and up)."
            )
        self.vocab.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        pat_str: str = GPT4_SPLIT_PATTERN,
        special_tokens: tuple[str, ...] | list[str] = (),
    ) -> "BPETokenizer":
        """Train on ``text``; special tokens get the ids right after the learned ranks."""
        ranks = train_bpe(text, vocab_size, pat_str, special_tokens)
        return cls(ranks, pat_str, {s: len(ranks) + i for i, s in enumerate(special_tokens)})

    @property
    def n_vocab(self) -> int:
        """Number of ids a model must embed (the largest id plus one, as in tiktoken)."""
        return max(self.vocab) + 1

    def encode_ordinary(self, text: str) -> list[int]:
        return encode_ordinary(text, self.mergeable_ranks, self.pat_str)

    def encode(self, text: str, allowed_special="none", disallowed_special="all") -> list[int]:
        """Encode ``text``; special tokens are refused unless allowed, as in tiktoken.

        ``allowed_special``: ``"all"`` or a set of special tokens encoded as single ids.
        ``disallowed_special``: ``"all"`` or a set of special tokens whose presence in the
        text is an error (the default protects against text that smuggles in a
        ``<|endoftext|>``); pass ``()`` to encode them as plain text instead.
        """
        allowed = self._special_set(allowed_special, "allowed_special")
        disallowed = self._special_set(disallowed_special, "disallowed_special") - allowed
        if disallowed:
            found = regex.search(special_token_pattern(disallowed), text)
            if found:
                raise ValueError(
                    f"the text contains the special token {found.group()!r} at character "
                    f"{found.start()}. Pass allowed_special={{{found.group()!r}}} (or "
                    '"all") to encode it as its special id, or disallowed_special=() to '
                    "encode it as ordinary text."
                )
        return encode(
            text,
            self.mergeable_ranks,
            self.pat_str,
            {s: i for s, i in self.special_tokens.items() if s in allowed},
        )

    def _special_set(self, value, name: str) -> set[str]:
        if value == "all":
            return set(self.special_tokens)
        if value == "none" or value is None:
            return set()
        if isinstance(value, str):
            raise TypeError(f'{name} must be "all" or a set of special tokens, not the string {value!r}')
        unknown = set(value) - set(self.special_tokens)
        if unknown:
            raise ValueError(
                f"{name} names unknown special token(s) {sorted(unknown)}; this tokenizer "
                f"knows {sorted(self.special_tokens) or 'no special tokens'}."
            )
        return set(value)

    def decode(self, ids: list[int]) -> str:
        return decode(ids, self.vocab)

    # --- tiktoken interop -------------------------------------------------------------

    def to_tiktoken(self, name: str = "course_bpe"):
        """This vocabulary as a ``tiktoken.Encoding`` (the fast Rust encoder)."""
        import tiktoken

        return tiktoken.Encoding(
            name=name,
            pat_str=self.pat_str,
            mergeable_ranks=self.mergeable_ranks,
            special_tokens=self.special_tokens,
        )

    @classmethod
    def from_tiktoken(cls, enc) -> "BPETokenizer":
        """Load the ranks, split pattern and special tokens of a ``tiktoken.Encoding``."""
        return cls(enc._mergeable_ranks, enc._pat_str, enc._special_tokens)

    # --- files --------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write ``<path>`` in tiktoken's ``.tiktoken`` format (one ``base64(token) rank``
        per line) and ``<path>.json`` beside it with the split pattern and special tokens."""
        import json

        path = Path(path)
        lines = [
            f"{base64.b64encode(token).decode('ascii')} {rank}\n"
            for token, rank in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1])
        ]
        _atomic_write(path, "".join(lines))
        meta = {"pat_str": self.pat_str, "special_tokens": self.special_tokens}
        _atomic_write(path.with_name(path.name + ".json"), json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPETokenizer":
        """Read a tokenizer written by :meth:`save`."""
        import json

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"no tokenizer file at {path}; the course tokenizer is data/tokenizer/"
                "course_bpe.tiktoken (regenerate it with `python -m data.build`)."
            )
        ranks = {}
        for n, line in enumerate(path.read_text(encoding="ascii").splitlines(), 1):
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise ValueError(f"{path}:{n} is not a 'base64-token rank' line: {line[:60]!r}") from None
        meta_path = path.with_name(path.name + ".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        return cls(ranks, meta.get("pat_str", GPT4_SPLIT_PATTERN), meta.get("special_tokens"))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
