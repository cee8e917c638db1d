"""Benchmark: decoding speed with and without the KV cache, side by side in one run.

Run from the repository root:
python -m tests.benchmarks.bench_generate [--new-tokens 256] [--prompt-tokens 256] [--repeats 3] [--threads 1] [--device cpu]

The course's dense model (8 layers, dim 192, 6 query heads sharing 2 KV heads, 4,096 ids,
512 positions) decodes ``--new-tokens`` tokens greedily after a prompt of ``--prompt-tokens``
tokens of the validation stories, twice: with the KV cache (the prompt once, then one token
per step) and without (the whole sequence every step). Its shipped weights
(``data/checkpoints/dense``) are used when present, random ones otherwise: the time does not
depend on the weights. Both runs must produce the same tokens. Speed is new tokens per
second of wall time, prefill included, the median of ``--repeats`` runs, the two methods
alternating so that machine load hits both; the ratio is cached over uncached.

Without the cache, step ``t`` runs ``prompt + t`` positions through every layer, so the total
work grows with the square of the length; with it, each step runs one position and reads
the cached keys and values. The ratio therefore grows with the prompt: the default, 256
tokens, fills the model's 512 positions with the 256 new ones. On an idle CPU core (one
thread, the dense model): about 3.6x after a 16-token prompt, 6-7x after 128, 8.6x after 256.
On a GPU this model is far too small to keep it busy: each step is a few dozen kernel
launches either way, and the ratio is about 1 (an H100: 1.1x).

On a CPU a single decoding step of this small model is mostly per-operation overhead, which
is why ``--threads`` defaults to 1: a second thread adds synchronisation to each of the
step's small matrix products (and on a busy machine, far more than it saves).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from solutions.generate import generate
from solutions.model import LlamaConfig, Transformer

DENSE = dict(vocab_size=4096, dim=192, n_layers=8, n_heads=6, n_kv_heads=2, hidden_dim=512, tie_embeddings=True,
             max_seq_len=512)


def dense_model(device: str) -> tuple[Transformer, str]:
    """The shipped dense checkpoint if it is there, else the same architecture with random weights."""
    from data import load_checkpoint

    try:
        config, state = load_checkpoint("dense")
        model = Transformer(LlamaConfig(**config))
        model.load_state_dict(state)
        source = "shipped weights (data/checkpoints/dense)"
    except FileNotFoundError:
        torch.manual_seed(0)
        model = Transformer(LlamaConfig(**DENSE))
        source = "random weights (data/checkpoints/dense is not there yet)"
    return model.to(device).eval(), source


def prompt_ids(n: int) -> list[int]:
    from data import course_tokenizer, load_corpus

    ids = course_tokenizer().encode(load_corpus("val", max_chars=20 * n), allowed_special="all")
    if len(ids) < n:
        raise ValueError(f"the validation stories are shorter than {n} tokens")
    return ids[:n]


def timed(model, prompt, new_tokens, use_cache, device) -> tuple[float, list[int]]:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    tokens = list(generate(model, prompt, new_tokens, use_cache=use_cache))
    sync()
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, source = dense_model(args.device)
    prompt = prompt_ids(args.prompt_tokens)
    cfg = model.cfg
    print(f"dense model: {cfg.n_layers} layers, dim {cfg.dim}, heads {cfg.n_heads}/{cfg.n_kv_heads}, {source}")
    print(f"greedy decoding of {args.new_tokens} new tokens after a {len(prompt)}-token prompt on {args.device}, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}")

    timed(model, prompt, 8, True, args.device)  # warm-up
    timed(model, prompt, 8, False, args.device)
    times = {True: [], False: []}
    outputs = {}
    for _ in range(args.repeats):
        for use_cache in (True, False):
            seconds, tokens = timed(model, prompt, args.new_tokens, use_cache, args.device)
            times[use_cache].append(seconds)
            outputs[use_cache] = tokens
    if outputs[True] != outputs[False]:
        first = next(i for i, (a, b) in enumerate(zip(outputs[True], outputs[False])) if a != b)
        raise SystemExit(f"cached and uncached greedy decoding differ at new token {first}")
    cached, uncached = statistics.median(times[True]), statistics.median(times[False])
    n = args.new_tokens
    print(f"{'with the KV cache':>22}: {n / cached:8.1f} tokens/s  ({cached:.2f} s)")
    print(f"{'without':>22}: {n / uncached:8.1f} tokens/s  ({uncached:.2f} s)")
    print(f"{'speed-up':>22}: {uncached / cached:8.1f}x   (identical tokens: yes)")


if __name__ == "__main__":
    main()
