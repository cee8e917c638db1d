"""Benchmark: decoding speed with and without the KV cache, side by side in one run.

Run from the repository root:
python -m tests.benchmarks.bench_generate [--new-tokens 256] [--prompt-tokens 256] [--repeats 3] [--threads 1] [--device cpu] [--no-transformers]

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

The same run also times, on the same weights and prompt, chapter 13's lean decode loop
(``solutions.speculative.LeanDecoder``: preallocated caches written in place, q/k/v and
gate/up projections fused, no mask for a single token, plain functions instead of module
calls) and ``transformers``' ``LlamaForCausalLM.generate`` (greedy, ``min_new_tokens`` set so
that it runs the full length), all three required to produce the same tokens, and prints how
much faster each course loop is than ``transformers`` (skipped with ``--no-transformers`` or
when it is not installed).

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
from solutions.speculative import LeanDecoder, greedy_decode

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


def to_transformers(model: Transformer):
    """The same weights as a ``transformers.LlamaForCausalLM`` (course names prefixed with ``model.``)."""
    import transformers

    cfg = model.cfg
    config = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings, eos_token_id=None, bos_token_id=None, pad_token_id=0)
    hf = transformers.LlamaForCausalLM(config).eval()
    state = {("" if k.startswith("lm_head") else "model.") + k: v for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or not all("lm_head" in k or "rotary" in k for k in missing):  # tied head, RoPE buffers
        raise ValueError(f"the course's weights do not map onto LlamaForCausalLM: unexpected {unexpected}, "
                         f"missing {missing}")
    return hf.to(model.embed_tokens.weight.device)


def compare_with_transformers(model, prompt, new_tokens, repeats, device) -> None:
    """Chapter 07's loop and chapter 13's lean loop against transformers' generate, same tokens."""
    hf = to_transformers(model)
    lean = LeanDecoder(model)
    ids = torch.tensor([prompt], device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run_hf(n):
        with torch.no_grad():
            return hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, len(prompt):].tolist()

    runs = {"chapter 07's generate": lambda n: list(generate(model, prompt, n)),
            "chapter 13's lean loop": lambda n: greedy_decode(lean, prompt, n),
            "transformers' generate": run_hf}
    for fn in runs.values():  # warm-up
        fn(8)
    times = {name: [] for name in runs}
    outputs = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            sync()
            start = time.perf_counter()
            outputs[name] = fn(new_tokens)
            sync()
            times[name].append(time.perf_counter() - start)
    if len({tuple(out) for out in outputs.values()}) != 1:
        raise SystemExit("the course's loops and transformers' generate produce different tokens")
    medians = {name: statistics.median(t) for name, t in times.items()}
    theirs = medians["transformers' generate"]
    print(f"against transformers' LlamaForCausalLM.generate on the same weights (greedy, {new_tokens} new tokens, "
          f"identical tokens: yes):")
    for name, seconds in medians.items():
        ratio = f"   {theirs / seconds:.2f}x faster than transformers" if seconds != theirs else ""
        print(f"{name:>24}: {new_tokens / seconds:8.1f} tokens/s  ({seconds:.2f} s){ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-transformers", action="store_true", help="skip the comparison with transformers")
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
    if not args.no_transformers:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("transformers is not installed: no comparison with its generate()")
        else:
            compare_with_transformers(model, prompt, args.new_tokens, args.repeats, args.device)


if __name__ == "__main__":
    main()
