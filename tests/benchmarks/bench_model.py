"""Benchmark: a training step of the course model against Hugging Face's, side by side in one run.

Run from the repository root (needs ``transformers``, a test-only dependency):
python -m tests.benchmarks.bench_model [--batch 8] [--seq 128] [--repeats 7] [--threads N] [--device cpu]

For a dense (Llama) and a MoE (Mixtral) configuration, the course :class:`Transformer` and
``transformers``' ``LlamaForCausalLM`` / ``MixtralForCausalLM`` are built from the same
config, given the same weights (loaded through :func:`load_hf_checkpoint`'s conversion, and
checked to give the same logits), and timed on the same batches: one training step is the
forward pass, cross-entropy, backward, ``AdamW.step()`` and ``zero_grad``. The MoE models
compute the same loss (next-token cross-entropy; Hugging Face's router auxiliary loss is off
and so is the course model's, which is not added). Times are the median of ``--repeats``
steps after two warm-up steps, alternating the two models so that machine load hits both.
The ratio is Hugging Face's time over the course model's (> 1: the course model is faster).

Both models are dominated by the same matrix products (about 60% of a CPU step in ``aten::mm``),
so the ratio measures the overheads around them. The course model fuses q/k/v and gate/up into
one product each and calls SDPA with ``is_causal=True``; ``transformers`` 5 runs Mixtral's
experts with ``torch._grouped_mm`` over fused ``gate_up_proj`` weights, a strong baseline for
the MoE. On a shared machine other processes' load shows up as noise: run it alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from solutions.model import LlamaConfig, Transformer, convert_hf_state_dict

CONFIGS = [
    # name, dim, layers, heads, kv heads, hidden, vocab, experts, top_k
    ("dense (Llama): dim 256, 4 layers, GQA 8/2", 256, 4, 8, 2, 688, 4096, 0, 2),
    ("MoE (Mixtral): dim 256, 4 layers, 8 experts top-2", 256, 4, 8, 2, 352, 4096, 8, 2),
]


def hf_model(cfg: LlamaConfig):
    from transformers import LlamaConfig as HFLlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim,
                  num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                  num_key_value_heads=cfg.n_kv_heads, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                  max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=cfg.tie_embeddings)
    if cfg.n_experts:
        config = MixtralConfig(num_local_experts=cfg.n_experts, num_experts_per_tok=cfg.top_k,
                               output_router_logits=False, **common)
        config._attn_implementation = "sdpa"
        return MixtralForCausalLM(config)
    config = HFLlamaConfig(**common)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


def step_fn(model, logits_of, optimizer, tokens):
    def step():
        logits = logits_of(model, tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss
    return step


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"batch {args.batch} x seq {args.seq}")
    for name, dim, layers, heads, kv, hidden, vocab, experts, top_k in CONFIGS:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=vocab, dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv,
                          hidden_dim=hidden, n_experts=experts, top_k=top_k, max_seq_len=args.seq)
        theirs = hf_model(cfg).to(args.device)
        ours = Transformer(cfg).to(args.device)
        ours.load_state_dict(convert_hf_state_dict(theirs.state_dict(), cfg), strict=False)
        tokens = torch.randint(0, vocab, (args.batch, args.seq + 1), device=args.device)
        with torch.no_grad():
            gap = (theirs(tokens[:, :-1]).logits - ours(tokens[:, :-1])).abs().max().item()
        steps = {
            "course": step_fn(ours, lambda m, t: m(t), torch.optim.AdamW(ours.parameters(), lr=1e-4), tokens),
            "transformers": step_fn(theirs, lambda m, t: m(t).logits,
                                    torch.optim.AdamW(theirs.parameters(), lr=1e-4), tokens),
        }
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(2):  # warm-up
            for step in steps.values():
                step()
        for _ in range(args.repeats):
            for key, step in steps.items():
                sync(args.device)
                start = time.perf_counter()
                step()
                sync(args.device)
                times[key].append(time.perf_counter() - start)
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        print(f"\n{name}  (logits differ by {gap:.1e} before training)")
        for key, value in ms.items():
            print(f"  {key:13s} {value:8.1f} ms / training step")
        print(f"  ratio transformers / course: {ms['transformers'] / ms['course']:.2f}x")


if __name__ == "__main__":
    main()
