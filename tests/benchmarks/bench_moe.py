"""Benchmark: three ways to run an MoE layer's experts, measured side by side in one run.

Run from the repository root:
python -m tests.benchmarks.bench_moe [--tokens 2048] [--repeats 5] [--threads N] [--device cpu]

For each configuration, the same tokens, router choices and SwiGLU experts go through

* ``moe_sorted``: one stable sort groups the (token, slot) rows by expert, each expert runs
  on its contiguous slice, ``index_add_`` puts the weighted rows back (the course's layer);
* ``moe_loop``: for each expert, ``torch.where`` finds its tokens (Hugging Face's Mixtral);
* ``moe_dense``: every expert on every token, then mask: ``n_experts / top_k`` times the
  expert FLOPs.

and the three outputs are checked to agree. Times are the median of ``--repeats`` runs
after a warm-up, forward only (inference) and forward + backward (training). On a shared
machine, run it when nothing else is: other processes' load shows up as noise. Configurations: Mixtral's shape (8 experts, top-2) and
DeepSeekMoE's (64 fine-grained routed experts, top-6, plus 2 shared, which every method
computes alike), both scaled down to ``dim = 256``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from solutions.layers import SwiGLU
from solutions.moe import moe_dense, moe_loop, moe_sorted, top_k_router

CONFIGS = [
    # name, dim, expert hidden, routed experts, top_k, shared experts
    ("Mixtral-like: 8 experts, top-2", 256, 704, 8, 2, 0),
    ("DeepSeekMoE-like: 64 fine-grained experts, top-6, 2 shared", 256, 176, 64, 6, 2),
]
METHODS = {"sorted": moe_sorted, "loop": moe_loop, "dense": moe_dense}


def timed(fn, repeats: int, device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name, dim, hidden, n_experts, top_k, n_shared, n_tokens, repeats, device="cpu"):
    torch.manual_seed(0)
    experts = torch.nn.ModuleList(SwiGLU(dim, hidden) for _ in range(n_experts)).to(device)
    shared = SwiGLU(dim, hidden * n_shared).to(device) if n_shared else None
    gate = torch.nn.Linear(dim, n_experts, bias=False).to(device)
    x = torch.randn(n_tokens, dim).to(device)

    def layer(method, x):
        weights, indices, _ = top_k_router(gate(x), top_k)
        out = METHODS[method](x, weights, indices, experts)
        return out + shared(x) if shared is not None else out

    with torch.no_grad():
        outs = {m: layer(m, x) for m in METHODS}
    for m in ("loop", "dense"):
        torch.testing.assert_close(outs[m], outs["sorted"], atol=1e-4, rtol=1e-4)

    def train_step(method):
        xg = x.clone().requires_grad_()
        layer(method, xg).square().mean().backward()

    fwd, bwd = {}, {}
    for m in METHODS:
        with torch.no_grad():
            fwd[m] = timed(lambda m=m: layer(m, x), repeats, device)
        bwd[m] = timed(lambda m=m: train_step(m), repeats, device)

    print(f"\n{name}: {n_tokens} tokens, dim {dim}, expert hidden {hidden}; dense computes "
          f"{n_experts / top_k:.1f}x the routed expert FLOPs (outputs agree)")
    print(f"  {'method':10s} {'forward':>10s} {'vs sorted':>10s} {'fwd+bwd':>10s} {'vs sorted':>10s}")
    for m in METHODS:
        print(f"  {m:10s} {fwd[m] * 1e3:8.1f} ms {fwd[m] / fwd['sorted']:9.2f}x "
              f"{bwd[m] * 1e3:8.1f} ms {bwd[m] / bwd['sorted']:9.2f}x")
    return fwd, bwd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per batch (batch x sequence)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu (the course's target) or cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} CPU threads")
    for config in CONFIGS:
        bench(*config, n_tokens=args.tokens, repeats=args.repeats, device=args.device)


if __name__ == "__main__":
    main()
