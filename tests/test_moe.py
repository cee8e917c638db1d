"""The mixture-of-experts reference, each component against an independent computation.

Tolerances: float32 results are compared within 1e-5 (absolute and relative), expert ids
and counts exactly. Independent computations are written the long way (Python loops,
one-hot matrices, the formulas of the papers), not with the functions under test.
"""

from __future__ import annotations

import math

import nbformat
import pytest
import torch
import torch.nn.functional as F

from autograder.notebooks import rendered_source, source_path
from solutions.layers import SwiGLU
from solutions.moe import (
    MoE,
    MoEConfig,
    aux_free_router,
    combine,
    dispatch,
    fine_grained_layout,
    load_balancing_loss,
    moe_dense,
    moe_loop,
    moe_sorted,
    top_k_router,
    train_toy_moe,
    update_bias,
)

TOL = dict(atol=1e-5, rtol=1e-5)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def experts(n: int, dim: int, hidden: int, seed: int = 0) -> torch.nn.ModuleList:
    torch.manual_seed(seed)
    return torch.nn.ModuleList(SwiGLU(dim, hidden) for _ in range(n))


def random_routing(n_tokens: int, n_experts: int, top_k: int, seed: int):
    logits = torch.randn(n_tokens, n_experts, generator=gen(seed))
    return top_k_router(logits, top_k)


# ------------------------------------------------------------------------------ router

@pytest.mark.parametrize("n_tokens,n_experts,top_k", [(1, 2, 1), (7, 8, 2), (16, 6, 3), (5, 4, 4)])
def test_router_equals_a_softmax_over_the_chosen_logits(n_tokens, n_experts, top_k):
    logits = torch.randn(n_tokens, n_experts, generator=gen(n_tokens)) * 2
    weights, indices, probs = top_k_router(logits, top_k)
    for t in range(n_tokens):
        ranked = sorted(range(n_experts), key=lambda e: -float(logits[t, e]))[:top_k]
        assert indices[t].tolist() == ranked
        chosen = torch.tensor([float(logits[t, e]) for e in ranked])
        torch.testing.assert_close(weights[t], torch.softmax(chosen, dim=0), **TOL)
        exps = [math.exp(float(v)) for v in logits[t]]
        torch.testing.assert_close(probs[t], torch.tensor([v / sum(exps) for v in exps]), **TOL)
    assert weights.dtype == probs.dtype == torch.float32 and indices.dtype == torch.int64


def test_router_computes_in_float32_whatever_the_input_dtype():
    logits = torch.randn(4, 8, generator=gen(1)).to(torch.bfloat16)
    weights, _, probs = top_k_router(logits, 2)
    assert weights.dtype == probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(4), **TOL)


@pytest.mark.parametrize("top_k", [0, -1, 9])
def test_router_refuses_a_bad_top_k(top_k):
    with pytest.raises(ValueError, match="top_k must be between 1 and n_experts"):
        top_k_router(torch.zeros(3, 8), top_k)


# ------------------------------------------------------------------ dispatch / combine

def test_dispatch_groups_rows_by_expert_in_token_order():
    x = torch.randn(9, 4, generator=gen(2))
    _, indices, _ = random_routing(9, 5, 2, seed=3)
    x_sorted, order, counts = dispatch(x, indices, 5)
    expected_rows, expected_counts = [], []
    for e in range(5):  # the long way: scan the (token, slot) pairs in row-major order
        mine = [t for t in range(9) for s in range(2) if int(indices[t, s]) == e]
        expected_rows += mine
        expected_counts.append(len(mine))
    assert counts.tolist() == expected_counts
    assert (order // 2).tolist() == expected_rows
    assert torch.equal(x_sorted, x[expected_rows])


def test_dispatch_counts_empty_experts_and_refuses_bad_ids():
    _, _, counts = dispatch(torch.zeros(3, 2), torch.tensor([[0], [0], [1]]), 4)
    assert counts.tolist() == [2, 1, 0, 0]
    with pytest.raises(ValueError, match="expert ids must be in 0..3"):
        dispatch(torch.zeros(2, 2), torch.tensor([[0], [4]]), 4)


def test_combine_is_the_weighted_sum_over_each_tokens_experts():
    n, k, d = 6, 3, 4
    _, indices, _ = random_routing(n, 5, k, seed=4)
    weights = torch.rand(n, k, generator=gen(5))
    _, order, _ = dispatch(torch.zeros(n, d), indices, 5)
    y_sorted = torch.randn(n * k, d, generator=gen(6))
    expected = torch.zeros(n, d)
    for r, flat in enumerate(order.tolist()):
        token, slot = divmod(flat, k)
        expected[token] += weights[token, slot] * y_sorted[r]
    torch.testing.assert_close(combine(y_sorted, weights, order), expected, **TOL)


@pytest.mark.parametrize("n_tokens,n_experts,top_k", [(1, 4, 1), (10, 8, 2), (33, 16, 4), (20, 4, 4)])
def test_sorted_loop_and_dense_moe_agree(n_tokens, n_experts, top_k):
    bank = experts(n_experts, 8, 16, seed=n_tokens)
    x = torch.randn(n_tokens, 8, generator=gen(7))
    weights, indices, _ = random_routing(n_tokens, n_experts, top_k, seed=8)
    loop = moe_loop(x, weights, indices, bank)
    torch.testing.assert_close(moe_sorted(x, weights, indices, bank), loop, **TOL)
    torch.testing.assert_close(moe_dense(x, weights, indices, bank), loop, **TOL)
    # the definition, token by token
    for t in range(n_tokens):
        y = sum(weights[t, j] * bank[int(indices[t, j])](x[t]) for j in range(top_k))
        torch.testing.assert_close(loop[t], y, **TOL)


def test_sorted_and_loop_moe_have_the_same_gradients():
    bank = experts(6, 8, 16, seed=1)
    x = torch.randn(12, 8, generator=gen(9))
    logits = torch.randn(12, 6, generator=gen(10), requires_grad=True)
    grads = []
    for fn in (moe_loop, moe_sorted):
        bank.zero_grad()
        logits.grad = None
        weights, indices, _ = top_k_router(logits, 2)
        fn(x, weights, indices, bank).square().sum().backward()
        grads.append([logits.grad.clone()] + [p.grad.clone() for p in bank.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL)


# ---------------------------------------------------------------------- load balancing

def test_load_balancing_loss_matches_the_switch_formula_with_top_k_counted():
    n, E, k = 10, 6, 2
    logits = torch.randn(n, E, generator=gen(11))
    _, indices, probs = top_k_router(logits, k)
    one_hot = F.one_hot(indices, E).float()  # (n, k, E)
    f = one_hot.sum(dim=(0, 1)) / (n * k)
    P = probs.mean(dim=0)
    torch.testing.assert_close(load_balancing_loss(probs, indices, E), E * (f * P).sum(), **TOL)
    # Hugging Face's Mixtral loss (tokens_per_expert over the k slots, times N) is k times ours
    hf = E * (one_hot.mean(dim=0) * P[None]).sum()
    torch.testing.assert_close(hf, k * load_balancing_loss(probs, indices, E), **TOL)


def test_load_balancing_loss_is_one_at_balance_and_n_at_collapse():
    E = 4
    balanced = load_balancing_loss(torch.full((8, E), 1 / E), torch.arange(8).remainder(E)[:, None], E)
    torch.testing.assert_close(balanced, torch.tensor(1.0), **TOL)
    collapsed = load_balancing_loss(F.one_hot(torch.zeros(5, dtype=torch.long), E).float(), torch.zeros(5, 1, dtype=torch.long), E)
    torch.testing.assert_close(collapsed, torch.tensor(float(E)), **TOL)


def test_load_balancing_gradient_flows_through_p_only():
    probs = torch.softmax(torch.randn(6, 4, generator=gen(12)), -1).requires_grad_()
    indices = probs.detach().topk(2, dim=-1).indices
    load_balancing_loss(probs, indices, 4).backward()
    f = torch.bincount(indices.reshape(-1), minlength=4).float() / 12
    torch.testing.assert_close(probs.grad, (4 * f / 6).expand(6, 4), **TOL)


def test_load_balancing_loss_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="at least one token"):
        load_balancing_loss(torch.zeros(0, 4), torch.zeros(0, 2, dtype=torch.long), 4)


# ------------------------------------------------------------- fine-grained + shared

@pytest.mark.parametrize("n_experts,top_k,hidden,m,shared", [(16, 2, 1024, 4, 1), (8, 2, 64, 1, 0), (8, 1, 96, 8, 3), (4, 4, 12, 3, 11)])
def test_fine_grained_layout_keeps_parameters_and_compute(n_experts, top_k, hidden, m, shared):
    n_routed, routed_k, h = fine_grained_layout(n_experts, top_k, hidden, m, shared)
    assert (n_routed + shared) * h == n_experts * hidden  # total expert parameters (per dim)
    assert (routed_k + shared) * h == top_k * hidden  # active per token
    assert routed_k >= 1


def test_deepseekmoe_2b_layout():
    # DeepSeekMoE 2B (Dai et al., 2024, Table 1): 1 shared + 63 routed experts, 7 routed active,
    # each a quarter of a standard FFN, from 16 experts with top-2.
    assert fine_grained_layout(16, 2, 1024, 4, 1) == (63, 7, 256)


@pytest.mark.parametrize("args,message", [
    ((8, 2, 100, 3, 0), "divisible by granularity"),
    ((8, 2, 64, 2, 4), "must be less than granularity \\* top_k"),
    ((8, 9, 64, 1, 0), "at most n_experts"),
    ((8, 2, 64, 0, 0), "granularity >= 1"),
])
def test_fine_grained_layout_refuses_bad_settings(args, message):
    with pytest.raises(ValueError, match=message):
        fine_grained_layout(*args)


def test_a_swiglu_is_the_sum_of_its_fine_grained_segments():
    """Why fine-grained experts and one wide shared expert work: SwiGLU's hidden units are
    independent, so splitting the hidden dimension splits the output into a sum."""
    torch.manual_seed(3)
    big = SwiGLU(8, 12)
    parts = [SwiGLU(8, 3) for _ in range(4)]
    for i, part in enumerate(parts):
        rows = slice(3 * i, 3 * i + 3)
        part.gate_proj.weight.data = big.gate_proj.weight.data[rows]
        part.up_proj.weight.data = big.up_proj.weight.data[rows]
        part.down_proj.weight.data = big.down_proj.weight.data[:, rows]
    x = torch.randn(5, 8, generator=gen(13))
    torch.testing.assert_close(sum(p(x) for p in parts), big(x), **TOL)


# ------------------------------------------------------------- auxiliary-loss-free

def test_aux_free_router_selects_with_the_bias_and_weighs_without_it():
    logits = torch.randn(9, 6, generator=gen(14))
    bias = torch.randn(6, generator=gen(15)) * 0.3
    weights, indices = aux_free_router(logits, bias, 3)
    scores = [[1 / (1 + math.exp(-float(v))) for v in row] for row in logits]
    for t in range(9):
        ranked = sorted(range(6), key=lambda e: -(scores[t][e] + float(bias[e])))[:3]
        assert indices[t].tolist() == ranked
        chosen = torch.tensor([scores[t][e] for e in ranked])
        torch.testing.assert_close(weights[t], chosen / chosen.sum(), **TOL)


def test_aux_free_router_with_zero_bias_is_plain_sigmoid_top_k():
    logits = torch.randn(7, 5, generator=gen(16))
    _, indices = aux_free_router(logits, torch.zeros(5), 2)
    assert torch.equal(indices, logits.topk(2, dim=-1).indices)  # sigmoid is monotone


def test_update_bias_moves_each_expert_by_gamma_towards_balance():
    bias = torch.tensor([0.1, 0.0, -0.2, 0.3])
    indices = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0]])  # loads 4, 3, 1, 0; mean 2
    before = bias.clone()
    new = update_bias(bias, indices, 4, 0.05)
    torch.testing.assert_close(new, before + torch.tensor([-0.05, -0.05, 0.05, 0.05]), **TOL)
    assert torch.equal(bias, before), "update_bias must not modify its input"
    balanced = update_bias(bias, torch.tensor([[0], [1], [2], [3]]), 4, 0.05)
    assert torch.equal(balanced, bias)


def test_bias_updates_alone_balance_a_skewed_router():
    logits = torch.randn(512, 8, generator=gen(17)) + torch.linspace(0, 2, 8)  # expert 7 favoured
    bias = torch.zeros(8)
    for _ in range(300):
        _, indices = aux_free_router(logits, bias, 2)
        bias = update_bias(bias, indices, 8, 1e-3)
    load = torch.bincount(indices.reshape(-1), minlength=8).float() / indices.numel()
    assert load.max() < 0.16 and load.min() > 0.09, load


# ---------------------------------------------------------------------------- the layer

@pytest.mark.parametrize("kwargs,message", [
    (dict(top_k=5), "top_k \\(5\\) must be at most n_experts \\(4\\)"),
    (dict(top_k=0), "top_k must be a positive int"),
    (dict(dim=0), "dim must be a positive int"),
    (dict(n_shared_experts=-1), "n_shared_experts must be an int >= 0"),
    (dict(router="relu"), "router must be 'softmax'"),
    (dict(bias_update_rate=-0.1), "bias_update_rate must be >= 0"),
])
def test_config_validation_says_what_to_change(kwargs, message):
    settings = dict(dim=8, hidden_dim=16, n_experts=4, top_k=2) | kwargs
    with pytest.raises(ValueError, match=message):
        MoEConfig(**settings)


def test_moe_layer_is_shared_plus_routed_experts():
    torch.manual_seed(4)
    moe = MoE(MoEConfig(dim=8, hidden_dim=6, n_experts=5, top_k=2, n_shared_experts=2))
    x = torch.randn(2, 3, 8, generator=gen(18))
    out = moe(x)
    assert out.shape == x.shape
    flat = x.reshape(-1, 8)
    weights, indices, probs = top_k_router(moe.gate(flat), 2)
    routed = moe_loop(flat, weights, indices, moe.experts)
    torch.testing.assert_close(out.reshape(-1, 8), routed + moe.shared_experts(flat), **TOL)
    torch.testing.assert_close(moe.aux_loss, load_balancing_loss(probs, indices, 5), **TOL)
    assert moe.shared_experts.gate_proj.weight.shape == (12, 8)  # two experts of 6, stored as one
    assert "expert_bias" not in moe.state_dict()


def test_moe_with_every_expert_active_is_the_dense_softmax_mixture():
    torch.manual_seed(5)
    moe = MoE(MoEConfig(dim=6, hidden_dim=8, n_experts=3, top_k=3))
    x = torch.randn(4, 6, generator=gen(19))
    probs = torch.softmax(moe.gate(x), dim=-1)
    dense = sum(probs[:, e, None] * moe.experts[e](x) for e in range(3))
    torch.testing.assert_close(moe(x), dense, **TOL)


def test_sigmoid_moe_updates_its_bias_buffer_not_by_gradient():
    torch.manual_seed(6)
    moe = MoE(MoEConfig(dim=8, hidden_dim=8, n_experts=4, top_k=1, router="sigmoid", bias_update_rate=0.1))
    assert "expert_bias" in moe.state_dict() and "expert_bias" not in dict(moe.named_parameters())
    with pytest.raises(ValueError, match="call the layer on a batch first"):
        moe.update_expert_bias()
    moe(torch.randn(16, 8, generator=gen(20))).sum().backward()
    expected = update_bias(torch.zeros(4), moe.last_indices, 4, 0.1)
    moe.update_expert_bias()
    torch.testing.assert_close(moe.expert_bias, expected, **TOL)
    with pytest.raises(ValueError, match="router='sigmoid'"):
        MoE(MoEConfig(dim=8, hidden_dim=8, n_experts=4, top_k=1)).update_expert_bias()


# ------------------------------------------------------------------- routing collapse

@pytest.fixture(scope="module")
def runs():
    torch.set_num_threads(1)
    return {balance: train_toy_moe(balance, steps=200) for balance in ("none", "aux_loss", "aux_free")}


def test_without_balancing_the_routing_collapses(runs):
    final = runs["none"]["load"][-50:].mean(0)
    assert (final < 0.01).sum() >= 3, final  # several experts never chosen


@pytest.mark.parametrize("balance", ["aux_loss", "aux_free"])
def test_each_balancing_method_keeps_every_expert_busy(runs, balance):
    final = runs[balance]["load"][-50:].mean(0)
    assert final.min() > 0.07 and final.max() < 0.2, final
    last = lambda r: sum(r["loss"][-50:]) / 50  # noqa: E731
    assert last(runs[balance]) < last(runs["none"])


def test_training_is_deterministic():
    a, b = train_toy_moe("aux_free", steps=20, seed=3), train_toy_moe("aux_free", steps=20, seed=3)
    assert torch.equal(a["load"], b["load"]) and a["loss"] == b["loss"]
    with pytest.raises(ValueError, match="balance must be"):
        train_toy_moe("switch")


# ---------------------------------------------------------------------------- notebook

def test_notebook_gives_chapter_02s_swiglu_rendered_from_solutions():
    """The notebook cannot import solutions/: chapter 02's SwiGLU is rendered into a locked
    preamble cell from solutions/layers.py, so it cannot drift (build --check)."""
    nb = nbformat.read(source_path("04_moe"), as_version=4)
    given = [c for c in nb.cells if c.metadata.get("course", {}).get("render") == ["=solutions.layers:SwiGLU"]]
    assert len(given) == 1 and given[0].metadata["course"].get("preamble")
    assert given[0].source == rendered_source("solutions.moe", ["=solutions.layers:SwiGLU"])