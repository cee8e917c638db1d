"""Benchmark: BPE training speed, and encoding speed of the reference against tiktoken.

Run from the repository root: python -m tests.benchmarks.bench_tokenizer [--mb 1] [--merges 2000]

Prints, measured side by side in this run:
* the reference trainer (incremental pair counts + heap) on N MB of the course corpus,
  against a naive trainer that recounts every pair after every merge, over the first
  merges only (the naive one needs minutes for all of them; its time is extrapolated
  linearly, which flatters it: later merges are no cheaper);
* the pure-Python reference encoder against tiktoken's Rust encoder on the same text and
  the same vocabulary (and a check that the ids are identical).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import regex

from data import load_corpus
from solutions.tokenizer import GPT4_SPLIT_PATTERN, BPETokenizer, train_bpe
from tests.catalogue.ch01_tokenizer import naive_bpe


def naive_train(text: str, n_merges: int) -> dict[bytes, int]:
    """The textbook loop: recount all pairs of all chunks after every merge."""
    return naive_bpe(Counter(regex.findall(GPT4_SPLIT_PATTERN, text)), n_merges)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=1.0, help="megabytes of training text")
    parser.add_argument("--merges", type=int, default=2000)
    parser.add_argument("--naive-merges", type=int, default=50, help="merges to time the naive trainer on")
    args = parser.parse_args()

    text = load_corpus("train", max_chars=int(args.mb * 1_000_000))
    n_bytes = len(text.encode("utf-8"))
    ranks, t_ref = timed(train_bpe, text, 256 + args.merges)
    _, t_naive = timed(naive_train, text, args.naive_merges)
    t_naive_all = t_naive / args.naive_merges * args.merges
    print(f"training {args.merges} merges on {n_bytes / 1e6:.2f} MB of the course corpus")
    print(f"  reference (incremental counts): {t_ref:8.2f} s")
    print(f"  naive recount, {args.naive_merges} merges:     {t_naive:8.2f} s  "
          f"-> ~{t_naive_all:.0f} s for {args.merges} (extrapolated)")
    print(f"  speed-up: {t_naive_all / t_ref:.0f}x")

    tok = BPETokenizer(ranks)
    fast = tok.to_tiktoken()
    ours, t_ours = timed(tok.encode_ordinary, text)
    theirs, t_tiktoken = timed(fast.encode_ordinary, text)
    assert ours == theirs, "the reference and tiktoken disagree"
    print(f"encoding {n_bytes / 1e6:.2f} MB with the trained vocabulary ({len(ours):,} tokens, ids identical)")
    print(f"  reference (pure Python): {n_bytes / t_ours / 1e6:6.2f} MB/s")
    print(f"  tiktoken (Rust):         {n_bytes / t_tiktoken / 1e6:6.2f} MB/s")
    print(f"  tiktoken is {t_ours / t_tiktoken:.1f}x faster")


if __name__ == "__main__":
    main()
