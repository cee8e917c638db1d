"""Benchmark: speculative decoding against plain cached decoding of the target, in one run.

Run from the repository root:
python -m tests.benchmarks.bench_speculative [--new-tokens 200] [--prompt-tokens 256] [--prompts 3] [--gammas 1,2,3,4,5,6,8] [--repeats 5] [--threads 1,2] [--ngram-order 6] [--ngram-tokens 0] [--ngram-continuations 2048]

The target is the shipped dense model (``data/checkpoints/dense``, 8 layers, 3.9M parameters),
the draft the shipped draft model (``data/checkpoints/draft``, 2 layers, 0.9M). Both decode
through :class:`solutions.speculative.LeanDecoder` (preallocated caches, fused projections),
so that the baseline and the speculative loop pay the same per-call costs; chapter 07's
``generate`` on the plain ``Transformer`` is timed too, for reference.

For each of ``--prompts`` prompts (``--prompt-tokens`` tokens of the validation stories, one
after the other), greedy decoding of ``--new-tokens`` tokens:

* the target alone (the baseline), the draft alone: ``c`` = the draft's time per token over the
  target's;
* speculative decoding for each ``gamma``: its output must equal the target's, token for token
  (the run stops otherwise); the measured acceptance rate ``alpha`` (accepted drafted tokens over
  tested ones), tokens per step, the bound ``(1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + 1))``
  and the measured speed-up (baseline time over speculative time, medians of ``--repeats``
  runs, the methods alternating so that machine load hits all of them), and the share of the
  bound it reaches; beside it, ``fastest``: the ratio of the fastest of the runs, as ``timeit``
  reports (load on a shared machine only ever adds time).

With several ``--threads`` (default 1 and 2: this machine's cores), every table is printed for
each, and a last line puts the fastest speculative run against the fastest baseline over all
thread counts, so that a second thread cannot win by slowing the baseline down.

The bound assumes that a target pass over gamma + 1 positions costs what a pass over one
costs (true where the target is memory-bound: a GPU serving a large model). The benchmark
measures that ratio, ``v``, and prints the bound with it too, ``E / (gamma c + v)``. On a CPU at
one thread, models this small are neither: a decoding step is mostly fixed cost per operation
(dispatch through PyTorch and Python), so the draft's cost per token follows its number of
operations, about the ratio of the layer counts, not of the parameters; and the matrix
products with a few rows cost nearly in proportion to the rows (single-thread GEMM at a few
GFLOP/s), so v grows with gamma. With the shipped draft, alpha is about 0.4: the bound is about
1.1x at gamma 1 and below 1 from gamma 3.

A second draft needs no model: :class:`solutions.speculative.NGramDraft`, a table of the target's
most frequent greedy prediction after each n-gram (up to ``--ngram-order``) of the training
stories (``--ngram-tokens`` of them, default all) and of ``--ngram-continuations`` greedy
continuations the target writes itself (200 tokens each after windows of those stories:
on-policy data), distilled at the start of the run, plus the n-grams of the text being
generated. A guess is a dictionary lookup: c is a few thousandths,
so its bound is limited by alpha and v alone. The same table of columns is printed for it, twice:
through ``speculative_generate`` (one draft call per drafted token, each returning a row of logits
that the loop reduces to its argmax) and through ``lookup_generate`` (one ``propose`` call per step
returning token ids, drafting fewer where nothing matches), so that the per-call work a free draft
still costs is measured side by side.

The last column, ``alpha for 2x``, is the acceptance rate a draft **of the same cost** would need
for 2x at each gamma with the measured ``c`` and ``v`` (``-`` where even a draft that is always
right, ``(gamma + 1) / (gamma c + v)``, stays below 2x): how far better training of a draft this
size could go, against what only a cheaper draft can do.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from solutions.generate import generate
from solutions.model import LlamaConfig, Transformer
from solutions.speculative import (
    LeanDecoder, NGramDraft, acceptance_rate, expected_tokens, greedy_decode, lookup_generate, rollback,
    speculative_generate,
)
from solutions.speculative import alpha_needed, speedup_bound


def load(name: str) -> Transformer:
    from data import load_checkpoint

    config, state = load_checkpoint(name)
    model = Transformer(LlamaConfig(**config))
    model.load_state_dict(state)
    return model.eval()


def prompts(n: int, length: int) -> list[list[int]]:
    from data import course_tokenizer, load_corpus

    ids = course_tokenizer().encode(load_corpus("val", max_chars=25 * n * length), allowed_special="all")
    if len(ids) < n * length:
        raise ValueError(f"the validation stories are shorter than {n} x {length} tokens")
    return [ids[i * length:(i + 1) * length] for i in range(n)]


def pass_cost(model, prompt: list[int], positions: int, repeats: int = 40) -> float:
    """Median time of one cached pass of ``positions`` new tokens after ``prompt`` (rolled back after each)."""
    caches = model.new_caches()
    model(torch.tensor([prompt]), caches)
    new = torch.tensor([prompt[:positions]])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(new, caches)
        times.append(time.perf_counter() - start)
        rollback(caches, len(prompt))
    return statistics.median(times)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--gammas", default="1,2,3,4,5,6,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default="1,2", help="torch threads; a list (1,2) measures each, one table set each")
    parser.add_argument("--ngram-order", type=int, default=6)
    parser.add_argument("--ngram-tokens", type=int, default=0, help="training tokens the n-gram draft is distilled on (0: all)")
    parser.add_argument("--ngram-continuations", type=int, default=2048,
                        help="greedy continuations of the target (200 tokens each) the n-gram draft also counts")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    gammas = [int(g) for g in args.gammas.split(",")]

    target_model, draft_model = load("dense"), load("draft")
    target, draft = LeanDecoder(target_model), LeanDecoder(draft_model)
    batch = prompts(args.prompts, args.prompt_tokens)
    print(f"target: dense, {target.cfg.n_layers} layers, dim {target.cfg.dim}; draft: {draft.cfg.n_layers} layers, "
          f"dim {draft.cfg.dim}; greedy, {args.new_tokens} new tokens after each of {len(batch)} prompts of "
          f"{args.prompt_tokens} tokens, median of {args.repeats}")
    torch.set_num_threads(max(threads))
    ngram = distil_ngram(target_model, args.ngram_order, args.ngram_tokens, args.ngram_continuations)
    drafts = {"the draft model": (draft, speculative_generate), "the n-gram table": (ngram, speculative_generate),
              "the n-gram table, lookup_generate": (ngram, lookup_generate)}
    fastest = {}
    for count in threads:
        torch.set_num_threads(count)
        print(f"\n======== {count} thread(s)")
        fastest[count] = measure(target_model, target, draft, drafts, batch, args.new_tokens, gammas, args.repeats)
    if len(threads) > 1:  # a second thread must not be credited with slowing the baseline down
        base_threads = min(threads, key=lambda t: fastest[t]["target"])
        for name in drafts:
            t, gamma = min(((t, g) for t in threads for g in gammas), key=lambda tg: fastest[tg[0]][(name, tg[1])])
            print(f"{name}: fastest speculative run (gamma {gamma}, {t} thread(s)) against the fastest baseline "
                  f"({base_threads} thread(s)): {fastest[base_threads]['target'] / fastest[t][(name, gamma)]:.2f}x")


def measure(target_model, target, draft, drafts, batch, n, gammas, repeats) -> dict:
    """Time the target alone, the draft alone, chapter 07's generate and every (draft, gamma); print the tables.
    Returns the fastest run's time of each (``"target"``, ``(draft name, gamma)``, ...)."""
    greedy_decode(target, batch[0], 8)  # warm-up
    for d, decode in drafts.values():
        list(decode(target, d, batch[0], 8, gamma=2))
    runs = [(name, gamma) for name in drafts for gamma in gammas]
    times = {key: [] for key in ["chapter 07", "target", "draft"] + runs}
    reference, stats = None, {}
    for _ in range(repeats):
        t, reference = timed(lambda: [greedy_decode(target, p, n) for p in batch])
        times["target"].append(t)
        times["draft"].append(timed(lambda: [greedy_decode(draft, p, n) for p in batch])[0])
        times["chapter 07"].append(timed(lambda: [list(generate(target_model, p, n)) for p in batch])[0])
        for name, gamma in runs:
            steps: list = []
            d, decode = drafts[name]
            t, out = timed(lambda: [list(decode(target, d, p, n, gamma=gamma, stats=steps)) for p in batch])
            if out != reference:
                raise SystemExit(f"{name}, gamma {gamma}: speculative output differs from the target's greedy output")
            times[(name, gamma)].append(t)
            stats[(name, gamma)] = steps
    median = {key: statistics.median(v) for key, v in times.items()}
    fastest = {key: min(v) for key, v in times.items()}
    base = median["target"]
    tokens = n * len(batch)
    print(f"target alone (lean loop): {1e3 * base / tokens:.2f} ms/token; chapter 07's generate: "
          f"{1e3 * median['chapter 07'] / tokens:.2f} ms/token; draft alone: {1e3 * median['draft'] / tokens:.2f} ms/token")
    one = pass_cost(target, batch[0], 1)
    verify = {gamma: pass_cost(target, batch[0], gamma + 1) / one for gamma in gammas}
    ngram = drafts["the n-gram table"][0]
    costs = {"the draft model": median["draft"] / base,
             "the n-gram table": ngram_cost(ngram, batch[0]) / (base / tokens),
             "the n-gram table, lookup_generate": ngram_cost(ngram, batch[0], propose=6) / (base / tokens)}
    print("v = time of one target pass on gamma + 1 positions over a pass on one (the bound assumes 1)")
    for name in drafts:
        c = costs[name]
        print(f"\ndraft: {name}; c (its time per drafted token / the target's per token) = {c:.3f}")
        table(name, gammas, stats, median, base, tokens, c, verify, fastest)
    return fastest


def table(name, gammas, stats, median, base, tokens, c, verify, fastest) -> None:
    print(f"{'gamma':>5} {'alpha':>6} {'tok/step':>8} {'E[tok/step]':>11} {'bound':>6} {'v':>5} {'bound, v':>8} "
          f"{'measured':>8} {'of bound':>8} {'fastest':>7} {'alpha for 2x':>12}")
    best = easiest = None
    for gamma in gammas:
        steps = stats[(name, gamma)]
        alpha = acceptance_rate(steps)
        per_step = tokens / len(steps)
        bound = speedup_bound(alpha, gamma, c)
        with_v = expected_tokens(alpha, gamma) / (gamma * c + verify[gamma])
        measured = base / median[(name, gamma)]
        needed = alpha_needed(2.0, gamma, c, verify[gamma])
        if best is None or measured > best[1]:
            best = (gamma, measured, bound)
        if needed is not None and (easiest is None or needed < easiest[1]):
            easiest = (gamma, needed)
        print(f"{gamma:>5} {alpha:>6.3f} {per_step:>8.2f} {expected_tokens(alpha, gamma):>11.2f} {bound:>5.2f}x "
              f"{verify[gamma]:>5.2f} {with_v:>7.2f}x {measured:>7.2f}x {measured / bound:>7.0%} "
              f"{fastest['target'] / fastest[(name, gamma)]:>6.2f}x {'-' if needed is None else f'{needed:.3f}':>12}")
    gamma, measured, bound = best
    print(f"best: gamma {gamma}, {measured:.2f}x over the cached target ({measured / bound:.0%} of its bound "
          f"{bound:.2f}x); identical tokens: yes")
    if easiest is None:
        print("2x: out of reach for any draft of this cost at these gammas, even one that is always right")
    else:
        print(f"2x with a draft of this cost needs alpha >= {easiest[1]:.3f} (at gamma {easiest[0]}); "
              f"this one's is {acceptance_rate(stats[(name, easiest[0])]):.3f}")


def distil_ngram(model, order: int, n_tokens: int, continuations: int = 0):
    """The n-gram draft distilled from the target on the first ``n_tokens`` of the training stories (0: all),
    and on ``continuations`` of its own greedy continuations of 200 tokens after windows of them."""
    from data import course_tokenizer, load_corpus

    ids = course_tokenizer().encode(load_corpus("train"), allowed_special="all")
    ids = ids[:n_tokens] if n_tokens else ids
    start = time.perf_counter()
    draft = NGramDraft.distil(model, ids, order=order, continuations=continuations, batch_size=32 if continuations else 16)
    own = f" and {continuations * 200:,} tokens of its own greedy text" if continuations else ""
    print(f"n-gram draft: order {order}, distilled from the target on {len(ids):,} training tokens{own} in "
          f"{time.perf_counter() - start:.0f} s ({sum(len(t) for t in draft.table):,} n-grams)")
    return draft


def ngram_cost(draft, prompt: list[int], propose: int = 0, repeats: int = 400) -> float:
    """Median time per drafted token of the n-gram draft after ``prompt`` (its history rolled back after each):
    one call as a model on the last token (``propose=0``, what ``speculative_generate`` pays per drafted token),
    or one ``draft.propose`` of up to ``propose`` tokens divided by the tokens proposed (``lookup_generate``)."""
    caches = draft.new_caches()
    draft.propose(prompt[:-1], caches, 0)  # the prompt but its last token, committed
    one = torch.tensor([prompt[-1:]])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        drafted = max(len(draft.propose(prompt[-1:], caches, propose)), 1) if propose else draft(one, caches).shape[1]
        times.append((time.perf_counter() - start) / drafted)
        rollback(caches, len(prompt) - 1)
    return statistics.median(times)


if __name__ == "__main__":
    main()
