"""Speculative decoding (solutions/speculative.py): exact, proven rather than assumed.

* The acceptance step's output distribution, computed by quadrature over its uniform numbers
  (each u on a grid of 4,000 midpoints: every probability within 1e-3 of its exact value), is
  the target's ``p`` whatever the draft ``q``; accepting with ``p(x)`` alone or redrawing from
  ``p`` instead of the residual is shown to be off by far more (at least 0.02).
* The whole loop with sampling: 3,000 runs of two new tokens from tiny random models (seeded),
  each of the 36 joint frequencies within 5 standard errors (plus 1e-3) of the target's exact
  probability, computed by running the target on every prefix.
* Greedy speculative output is identical to the target's greedy output: tiny random models at
  every gamma from 1 to 6, and the shipped dense model drafted by the shipped draft model, on
  the plain ``Transformer`` and on ``LeanDecoder``; and identical to ``transformers``'
  assisted generation (``generate(assistant_model=...)``) on the same weights.
* ``LeanDecoder`` logits equal the ``Transformer``'s within 1e-4 (float32, other summation
  order), through prefill, single steps, multi-token passes and rollbacks.
* The theory against independent numbers (the issue's measured example: alpha 0.82, gamma 4,
  c 0.46, bound 1.23x) and a simulation of independent acceptances.
* Bad settings raise ``ValueError`` saying what to do.
* Multi-token heads (bonus): zero-initialised heads are the target's own next-token prediction;
  the self-distillation loss by hand; ``LeanDecoder``'s hidden states equal the model's;
  ``mtp_generate`` is ``greedy_decode`` token for token on tiny random models (steps that accept
  and steps that reject) and on the shipped dense model with briefly trained heads; correct
  rewrites of the loss pass its checkpoint.
* The n-gram draft: its table holds the target's most frequent prediction after each n-gram
  (counted by hand on a tiny model); the text's own n-grams are indexed only once committed, so a
  rejected guess is not proposed again; greedy output is the target's on tiny random models and
  on the shipped model, sampled output follows the target's joint distribution (the same
  3,000-run test as the draft model's); bad arguments raise ``ValueError``. With the target's own
  greedy continuations counted (``continuations``), every token of a batched continuation is the
  model's argmax within 1e-4, the table is the same for the same seed, and a draft that has read
  the very continuation it is asked for guesses it (acceptance above 0.8 and above the plain
  table's), still exactly.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from solutions.generate import generate
from solutions.model import LlamaConfig, Transformer
from solutions.reward import hidden_states
from solutions.speculative import (
    LeanDecoder,
    MTPHeads,
    NGramDraft,
    NGramHistory,
    StaticKVCache,
    accept_draft,
    acceptance_rate,
    check_speculative,
    expected_tokens,
    greedy_decode,
    lookup_generate,
    mtp_agreement,
    mtp_generate,
    mtp_loss,
    rollback,
    speculative_from_weights,
    speculative_generate,
    speedup_bound,
    to_probs,
    train_mtp_heads,
)
from solutions.speculative import _greedy_batch
from tests.catalogue.ch13_speculative import accept_resampling_from_the_target, accept_with_the_target_probability_alone


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(seed: int, **overrides) -> Transformer:
    base = dict(vocab_size=40, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, max_seq_len=96)
    torch.manual_seed(seed)
    model = Transformer(LlamaConfig(**(base | overrides))).eval()
    with torch.no_grad():  # spread logits: greedy choices far from ties
        model.embed_tokens.weight.mul_(0.2)
        model.norm.weight.mul_(4.0)
    return model


def noisy_copy(model: Transformer, scale: float, seed: int) -> Transformer:
    """A draft that agrees with the target often but not always: its weights plus noise."""
    draft = Transformer(model.cfg).eval()
    draft.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g, dtype=torch.float64).float())
    return draft


# ------------------------------------------------------------------- the acceptance step

P6 = torch.tensor([[0.05, 0.30, 0.10, 0.25, 0.20, 0.10], [0.3, 0.1, 0.2, 0.1, 0.2, 0.1]])
Q6 = torch.tensor([[0.40, 0.05, 0.05, 0.30, 0.10, 0.10]])


def first_token_distribution(accept, p, q, grid: int = 4000) -> torch.Tensor:
    """P(first emitted token = y) for gamma = 1, by quadrature: x ~ q exactly, u0 and u1 on midpoint grids."""
    mids = [(i + 0.5) / grid for i in range(grid)]
    out = torch.zeros(p.shape[1], dtype=torch.float64)
    for x in range(p.shape[1]):
        if q[0, x] == 0:
            continue
        # the acceptance test depends on u0 only: its measure, with u1 fixed
        accepted = sum(accept(p, q, [x], torch.tensor([u, 0.5]))[0] == x and
                       len(accept(p, q, [x], torch.tensor([u, 0.5]))) == 2 for u in mids[::10]) / (grid // 10)
        out[x] += q[0, x] * accepted
        if accepted < 1:  # the rejection branch: u0 just below 1 rejects; u1 draws the replacement
            counts = torch.zeros(p.shape[1], dtype=torch.float64)
            for u in mids:
                counts[accept(p, q, [x], torch.tensor([0.99999, u]))[0]] += 1
            out += q[0, x] * (1 - accepted) * counts / grid
    return out


def test_the_first_token_is_distributed_as_the_target_whatever_the_draft():
    exact = first_token_distribution(accept_draft, P6, Q6)
    assert (exact - P6[0].double()).abs().max() < 1e-3
    # the classic mistakes are off by far more than the quadrature's error
    for wrong in (accept_with_the_target_probability_alone, accept_resampling_from_the_target):
        assert (first_token_distribution(wrong, P6, Q6) - P6[0].double()).abs().max() > 0.02


def test_acceptance_follows_min_one_p_over_q():
    p = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    q = torch.tensor([[0.5, 0.5]])
    # token 0: p/q = 0.4, accepted iff u < 0.4; token 1: p/q = 1.6, always accepted
    assert accept_draft(p, q, [0], torch.tensor([0.39, 0.1])) == [0, 0]
    assert accept_draft(p, q, [0], torch.tensor([0.41, 0.1]))[0] == 1  # the residual holds token 1 only
    assert accept_draft(p, q, [1], torch.tensor([0.999, 0.9])) == [1, 1]  # accepted, then the bonus


def test_bonus_token_after_gamma_accepted_and_greedy_as_one_hot():
    vocab = 7
    onehot = lambda ids: torch.nn.functional.one_hot(torch.tensor(ids), vocab).float()
    assert accept_draft(onehot([3, 5, 1, 6]), onehot([3, 5, 1]), [3, 5, 1], torch.zeros(4)) == [3, 5, 1, 6]
    assert accept_draft(onehot([3, 4, 1, 6]), onehot([3, 5, 1]), [3, 5, 1], torch.zeros(4)) == [3, 4]
    # to_probs at temperature 0 is one-hot on the argmax
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    assert to_probs(logits, 0.0).tolist() == [[0, 1, 0], [1, 0, 0]]


def test_sampled_speculative_decoding_draws_the_targets_joint_distribution():
    target = tiny(1, vocab_size=6, dim=16, n_heads=2, n_kv_heads=1, hidden_dim=24)
    with torch.no_grad():
        target.norm.weight.mul_(0.3)  # a spread-out distribution: every cell is visited
    draft = noisy_copy(target, 0.8, seed=2)
    prompt = [1, 4, 2]
    with torch.no_grad():
        first = torch.softmax(target(torch.tensor([prompt]))[0, -1], -1).double()
        joint = torch.stack([first[a] * torch.softmax(target(torch.tensor([prompt + [a]]))[0, -1], -1).double()
                             for a in range(6)])  # (6, 6): P(y1 = a, y2 = b)
    n, counts = 3000, torch.zeros(6, 6, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    steps = []
    for _ in range(n):
        a, b = speculative_generate(target, draft, prompt, 2, gamma=3, temperature=1.0, generator=g, stats=steps)
        counts[a, b] += 1
    freq = counts / n
    tolerance = 5 * (joint * (1 - joint) / n).sqrt() + 1e-3
    assert ((freq - joint).abs() <= tolerance).all(), (freq - joint).abs().max()
    assert 0.2 < acceptance_rate(steps) < 0.95  # the draft is neither perfect nor useless


# ------------------------------------------------------------------ greedy, exactly


@pytest.mark.parametrize("gamma", [1, 2, 3, 4, 6])
def test_greedy_speculative_output_is_the_targets_greedy_output(gamma):
    target = tiny(3)
    for draft in (noisy_copy(target, 0.3, seed=4), tiny(5, n_layers=1, dim=16, n_heads=2, n_kv_heads=1)):
        for prompt in ([1], [5, 9, 2, 7], list(range(10, 30))):
            steps = []
            got = list(speculative_generate(target, draft, prompt, 40, gamma=gamma, stats=steps))
            assert got == list(generate(target, prompt, 40)), (gamma, prompt)
            assert sum(n + 1 for _, n in steps) >= 40 and all(0 <= n <= g for g, n in steps)


def test_the_noisy_draft_gets_some_tokens_accepted_and_some_rejected():
    target = tiny(3)
    steps = []
    list(speculative_generate(target, noisy_copy(target, 0.3, seed=4), [5, 9, 2, 7], 60, gamma=4, stats=steps))
    alpha = acceptance_rate(steps)
    assert 0.3 < alpha < 0.98, alpha


def test_stop_tokens_and_max_new_tokens():
    target = tiny(3)
    draft = noisy_copy(target, 0.3, seed=4)
    free = list(speculative_generate(target, draft, [5, 9, 2], 30, gamma=4))
    i = next(i for i in range(3, 30) if free[i] not in free[:i] and free[i] not in (5, 9, 2))
    assert list(speculative_generate(target, draft, [5, 9, 2], 30, gamma=4, stop_tokens={free[i]})) == free[:i]
    for n in (0, 1, 2, 7):
        assert list(speculative_generate(target, draft, [5, 9, 2], n, gamma=5)) == free[:n]


def test_the_caches_end_holding_exactly_the_committed_text():
    target = tiny(3)
    draft = noisy_copy(target, 0.3, seed=4)
    out = speculative_from_weights(dict(vars(target.cfg)), target.state_dict(), dict(vars(draft.cfg)),
                                   draft.state_dict(), [5, 9, 2, 7], {"max_new_tokens": 25, "gamma": 3})
    assert out["tokens"] == list(generate(target, [5, 9, 2, 7], 25))
    # each target call starts from the committed text but its last token: prompt - 1, then + tokens of each step
    committed = 3
    for (drafted, accepted), length in zip(out["steps"], out["target cache"][1:]):
        assert length == committed
        committed += accepted + 1


@pytest.fixture(scope="module")
def shipped():
    data = pytest.importorskip("data")
    try:
        models = []
        for name in ("dense", "draft"):
            config, state = data.load_checkpoint(name)
            model = Transformer(LlamaConfig(**config))
            model.load_state_dict(state)
            models.append(model.eval())
    except FileNotFoundError:
        pytest.skip("the shipped checkpoints are not there")
    ids = data.course_tokenizer().encode(data.load_corpus("val", max_chars=20_000), allowed_special="all")
    return models[0], models[1], [ids[i * 500:i * 500 + 100] for i in range(3)]


def test_shipped_models_greedy_identical_plain_and_lean(shipped):
    target, draft, prompts = shipped
    lean_target, lean_draft = LeanDecoder(target), LeanDecoder(draft)
    for prompt in prompts:
        expected = list(generate(target, prompt, 40))
        assert greedy_decode(lean_target, prompt, 40) == expected
        for gamma in (2, 5):
            assert list(speculative_generate(target, draft, prompt, 40, gamma=gamma)) == expected
            assert list(speculative_generate(lean_target, lean_draft, prompt, 40, gamma=gamma)) == expected


def test_same_output_as_transformers_assisted_generation(shipped):
    pytest.importorskip("transformers")
    from tests.benchmarks.bench_generate import to_transformers as to_hf

    target, draft, prompts = shipped
    hf_target, hf_draft = to_hf(target), to_hf(draft)
    prompt = prompts[0]
    with torch.no_grad():
        theirs = hf_target.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False,
                                    assistant_model=hf_draft)[0, len(prompt):].tolist()
    assert list(speculative_generate(target, draft, prompt, 30, gamma=4)) == theirs


# -------------------------------------------------------------------- the lean loop


def test_lean_decoder_logits_equal_the_models_through_steps_and_rollbacks():
    model = tiny(7, n_layers=3)
    lean = LeanDecoder(model)
    tokens = torch.tensor([[3, 8, 1, 30, 22, 5, 17, 9, 2, 11]])
    with torch.no_grad():
        full = model(tokens)[0]  # (10, vocab)
    caches = lean.new_caches()
    assert all(isinstance(c, StaticKVCache) for c in caches)
    got = [lean(tokens[:, :4], caches)[0]]
    got.append(lean(tokens[:, 4:5], caches)[0])
    lean(torch.tensor([[0, 0, 0]]), caches)  # three wrong tokens, then rolled back
    rollback(caches, 5)
    assert len(caches[0]) == 5
    got.append(lean(tokens[:, 5:10], caches)[0])
    assert (torch.cat(got) - full).abs().max() < 1e-4


def test_rollback_on_chapter_03_caches():
    model = tiny(7)
    caches = model.new_caches()
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3, 4, 5]]), caches)
    rollback(caches, 2)
    assert all(c.k.shape[2] == 2 and c.v.shape[2] == 2 for c in caches)


# -------------------------------------------------------------------------- the theory


def test_expected_tokens_and_the_bound_against_known_numbers():
    assert expected_tokens(0.8, 4) == pytest.approx(3.3616)
    assert expected_tokens(1.0, 5) == 6.0 and expected_tokens(0.0, 3) == 1.0
    assert expected_tokens(0.999999, 4) == pytest.approx(5.0, abs=1e-4)  # continuous at alpha = 1
    # the measured example: alpha 0.82, c 0.46, gamma 4 -> bound 1.23x
    assert speedup_bound(0.82, 4, 0.46) == pytest.approx(1.23, abs=0.005)
    assert speedup_bound(0.8, 4, 0.0) == expected_tokens(0.8, 4)


def test_expected_tokens_match_a_simulation_of_independent_acceptances():
    rng = random.Random(0)
    for alpha, gamma in [(0.5, 3), (0.8, 4), (0.9, 8)]:
        n = 20_000
        total = 0
        for _ in range(n):
            accepted = 0
            while accepted < gamma and rng.random() < alpha:
                accepted += 1
            total += accepted + 1
        assert total / n == pytest.approx(expected_tokens(alpha, gamma), rel=0.02)


def test_acceptance_rate_counts_tested_tokens():
    # (4 drafted, 2 accepted): 3 tested; (4, 4): 4 tested -> 6 of 7
    assert acceptance_rate([(4, 2), (4, 4)]) == pytest.approx(6 / 7)
    assert math.isnan(acceptance_rate([]))


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kwargs, message", [
    (dict(gamma=0), "gamma .* must be an int >= 1"),
    (dict(gamma=2.5), "gamma .* must be an int >= 1"),
    (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
    (dict(top_p=0.0), "top_p must be in"),
])
def test_bad_settings_raise_a_clear_error(kwargs, message):
    target = tiny(3)
    with pytest.raises(ValueError, match=message):
        list(speculative_generate(target, target, [1, 2], 5, **({"gamma": 2} | kwargs)))


def test_mismatched_vocabularies_empty_prompt_and_context():
    target, other = tiny(3), tiny(4, vocab_size=50)
    with pytest.raises(ValueError, match="same tokenizer"):
        list(speculative_generate(target, other, [1, 2], 5))
    with pytest.raises(ValueError, match="the prompt is empty"):
        list(speculative_generate(target, target, [], 5))
    with pytest.raises(ValueError, match="ask for at most 6 new tokens"):
        list(speculative_generate(target, target, list(range(90)), 10))
    with pytest.raises(ValueError, match="alpha is an acceptance probability"):
        expected_tokens(1.5, 3)
    with pytest.raises(ValueError, match="c .* must be a number >= 0"):
        speedup_bound(0.5, 3, -1.0)
    with pytest.raises(ValueError, match="same tokenizer"):
        check_speculative(4, 0.0, 4096, 32000)


def test_alpha_needed_solves_the_speedup_for_alpha():
    from solutions.speculative import alpha_needed

    # gamma 2, a free draft, v = 1: 1 + alpha + alpha^2 = 2 at the golden ratio's conjugate
    assert alpha_needed(2.0, 2, 0.0) == pytest.approx((5 ** 0.5 - 1) / 2, abs=1e-9)
    for gamma, c, v in ((4, 0.2, 1.5), (8, 0.1, 1.8), (3, 0.0, 1.0)):
        alpha = alpha_needed(2.0, gamma, c, v)
        assert alpha is not None and 0 < alpha <= 1
        assert expected_tokens(alpha, gamma) / (gamma * c + v) == pytest.approx(2.0, abs=1e-6)
    # a draft that is always right gains (gamma + 1) / (gamma c + v): below the goal, no alpha will do
    assert alpha_needed(2.0, 1, 0.26, 1.11) is None and alpha_needed(2.0, 4, 0.26, 1.5) is None


# ------------------------------------------------------- multi-token heads (bonus)


def random_heads(dim: int, k: int, scale: float, seed: int) -> MTPHeads:
    heads = MTPHeads(dim, k).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in heads.blocks:
            block.weight.copy_(scale * torch.randn(dim, dim, generator=g, dtype=torch.float64).float() / dim ** 0.5)
    return heads


def test_zero_heads_start_as_the_targets_own_next_token_prediction():
    model = tiny(3)
    heads = MTPHeads(model.cfg.dim, 3)
    tokens = torch.tensor([[3, 8, 1, 30, 22, 5]])
    with torch.no_grad():
        h = hidden_states(model, tokens)
        logits = heads(h, model.lm_head.weight)  # (3, 1, 6, vocab)
        assert (logits - model(tokens)).abs().max() < 1e-5
    assert [name for name, _ in heads.named_parameters()] == [f"blocks.{k}.weight" for k in range(3)]


def test_lean_decoder_returns_the_final_hidden_states():
    model = tiny(7, n_layers=3)
    lean = LeanDecoder(model)
    tokens = torch.tensor([[3, 8, 1, 30, 22, 5, 17]])
    caches = lean.new_caches()
    logits, h = lean(tokens[:, :4], caches, return_hidden=True)
    more, h2 = lean(tokens[:, 4:], caches, return_hidden=True)
    with torch.no_grad():
        want = hidden_states(model, tokens)[0]
    assert (torch.cat([h[0], h2[0]]) - want).abs().max() < 1e-4
    with torch.no_grad():
        assert (F.linear(h2, model.lm_head.weight) - more).abs().max() < 1e-5
    last, h_last = lean(tokens[:, :3], lean.new_caches(), last_only=True, return_hidden=True)
    assert h_last.shape == (1, 1, model.cfg.dim) and (h_last[0, 0] - want[2]).abs().max() < 1e-4


def test_mtp_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    heads = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64).float().requires_grad_()
    teacher = torch.randn(2, 5, 6, generator=g, dtype=torch.float64).float().requires_grad_()
    loss, per_head = mtp_loss(heads, teacher)
    for k in (1, 2):  # KL(softmax(teacher[:, t + k]) || softmax(head_k[:, t])) over t < 5 - k
        values = [float((teacher[b, t + k].softmax(-1) * (teacher[b, t + k].log_softmax(-1)
                                                           - heads[k - 1, b, t].log_softmax(-1))).sum())
                  for b in range(2) for t in range(5 - k)]
        assert abs(per_head[k - 1] - sum(values) / len(values)) < 1e-5
    assert abs(float(loss) - sum(per_head) / 2) < 1e-6 and all(isinstance(v, float) for v in per_head)
    loss.backward()
    assert teacher.grad is None and heads.grad[:, :, 0].abs().min() > 0  # no gradient reaches the target
    assert heads.grad[0, :, -1:].abs().sum() == 0 and heads.grad[1, :, -2:].abs().sum() == 0  # no teacher there
    copy = torch.stack([torch.cat([teacher[:, k:], teacher[:, :k]], dim=1) for k in (1, 2)]).detach()
    assert mtp_loss(copy, teacher)[0] < 1e-6  # heads that copy the teacher k positions later: nothing to learn
    for bad in ((heads[:, :, :2], teacher[:, :2]), (heads[:0], teacher), (heads, teacher[0]), (heads, teacher[..., :5])):
        with pytest.raises(ValueError):
            mtp_loss(*bad)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mtp_generate_is_the_targets_greedy_output_on_tiny_models(seed):
    model = tiny(seed)
    lean = LeanDecoder(model)
    counts = {"accepted": 0, "rejected": 0}
    for k, scale in ((1, 0.0), (3, 0.5), (4, 2.0)):
        heads = random_heads(model.cfg.dim, k, scale, seed)
        for prompt, n in (([5], 30), ([3, 7, 1, 12, 9], 41), ([2, 2], 1), ([4, 6], 0)):
            stats = []
            assert list(mtp_generate(lean, heads, prompt, n, stats=stats)) == greedy_decode(lean, prompt, n)
            assert sum(a + 1 for _, a in stats) == max(n - 1, 0)  # the prompt's pass gives the first token
            assert all(d <= k for d, _ in stats)
            counts["accepted"] += sum(a for _, a in stats)
            counts["rejected"] += sum(d > a for d, a in stats)
    assert counts["accepted"] > 0 and counts["rejected"] > 0
    with pytest.raises(ValueError):
        list(mtp_generate(lean, heads, [], 3))
    with pytest.raises(ValueError):
        list(mtp_generate(lean, heads, [1] * 90, 10))


def test_mtp_heads_train_and_decode_the_shipped_model_exactly(shipped):
    target, _, prompts = shipped
    heads = MTPHeads(target.cfg.dim, 2)
    history = train_mtp_heads(target, heads, 3, ids=sum(prompts, []), batch_size=2, seq_len=64, progress=False)
    assert len(history["loss"]) == 3 and len(history["per_head"][0]) == 2
    assert history["loss"][-1] < history["loss"][0]
    assert all(p.grad is None for p in target.parameters())  # the target stays frozen
    agreement = mtp_agreement(target, heads, sum(prompts, []), windows=2, seq_len=64)
    assert len(agreement) == 2 and all(0 <= a <= 1 for a in agreement)
    lean = LeanDecoder(target)
    for prompt in prompts:
        assert list(mtp_generate(lean, heads, prompt, 40)) == greedy_decode(lean, prompt, 40)


def test_mtp_loss_correct_rewrites_are_accepted():
    from autograder.core import lookup, run

    def by_kl_div(head_logits, teacher_logits):
        if head_logits.dim() != 4 or teacher_logits.dim() != 3 or head_logits.shape[1:] != teacher_logits.shape:
            raise ValueError("shapes")
        K, B, T, V = head_logits.shape
        if not 1 <= K < T:
            raise ValueError("K")
        per_head = [F.kl_div(F.log_softmax(head_logits[k - 1, :, :T - k].double(), -1),
                             F.log_softmax(teacher_logits[:, k:].detach().double(), -1), log_target=True,
                             reduction="sum") / (B * (T - k)) for k in range(1, K + 1)]
        return (sum(per_head) / K).float(), [x.item() for x in per_head]

    def by_masks(head_logits, teacher_logits):  # all positions at once, the missing teachers masked out
        if head_logits.dim() != 4 or teacher_logits.dim() != 3 or head_logits.shape[1:] != teacher_logits.shape:
            raise ValueError("shapes")
        K, B, T, V = head_logits.shape
        if K < 1 or T <= K:
            raise ValueError("K")
        log_p = teacher_logits.detach().log_softmax(-1)
        per_head = []
        for k in range(1, K + 1):
            shifted = torch.roll(log_p, -k, dims=1)
            kl = (shifted.exp() * (shifted - head_logits[k - 1].log_softmax(-1))).sum(-1)  # (B, T)
            mask = (torch.arange(T) < T - k).float()
            per_head.append((kl * mask).sum() / (mask.sum() * B))
        stacked = torch.stack(per_head)
        return stacked.mean(), stacked.tolist()

    cp = lookup("13.mtp_loss")
    for answer in (by_kl_div, by_masks):
        for seed in (0, 1):
            assert run(cp, answer, seed=seed).passed, run(cp, answer, seed=seed).report()


# ------------------------------------------------------------------ the n-gram draft


def test_the_ngram_table_holds_the_targets_most_frequent_prediction():
    target = tiny(3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 8, (96,), generator=g).tolist()  # a small alphabet: n-grams repeat
    draft = NGramDraft.distil(target, ids, order=2, window=32, batch_size=2)
    with torch.no_grad():
        predicted = target(torch.tensor(ids).view(3, 32)).argmax(-1).tolist()
    counts = {}
    for w in range(3):
        text = ids[w * 32:(w + 1) * 32]
        for i in range(32):
            for n in (1, 2):
                if i + 1 >= n:
                    gram = tuple(text[i + 1 - n:i + 1])
                    counts.setdefault(gram, []).append(predicted[w][i])
    for gram, seen in counts.items():
        best = max(seen.count(t) for t in seen)
        assert seen.count(draft.table[len(gram)][gram]) == best, gram
    assert set(draft.table[1]) | set(draft.table[2]) == set(counts)
    assert draft.cfg is target.cfg and draft.order == 2


def test_the_history_indexes_only_committed_text():
    draft = NGramDraft([{}, {}, {}], tiny(3).cfg)  # an empty table: guesses come from the text alone
    caches = draft.new_caches()
    logits = draft(torch.tensor([[1, 2, 3, 4, 1, 2]]), caches)  # the prompt: committed
    assert logits.shape == (1, 1, 40)
    assert int(logits[0, -1].argmax()) == 3 and logits[0, -1].isinf().sum() == 39  # "1 2" was followed by 3
    draft(torch.tensor([[7]]), caches)  # a drafted token: not in the index yet
    assert (2, 7) not in caches[0].seen[2] and caches[0].seen[2][(1, 2)] == 3
    rollback(caches, 6)  # rejected: forgotten, and the text before it committed
    assert caches[0].tokens == [1, 2, 3, 4, 1, 2] and (2, 7) not in caches[0].seen[2]
    draft(torch.tensor([[5]]), caches)
    rollback(caches, 7)  # 5 accepted
    assert caches[0].seen[2][(1, 2)] == 5  # the latest continuation of "1 2" wins
    nothing = draft(torch.tensor([[9]]), caches)  # "5 9" and "9" never seen: q uniform
    assert torch.equal(nothing, torch.zeros(1, 1, 40))


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_greedy_with_the_ngram_draft_is_the_targets_greedy_output(gamma):
    target = tiny(3)
    text = [1] + list(generate(target, [1], 80)) + [5, 9] + list(generate(target, [5, 9], 60))
    draft = NGramDraft.distil(target, text, order=3, window=16)
    for prompt in ([1], [5, 9, 2, 7], list(range(10, 30))):
        steps = []
        got = list(speculative_generate(target, draft, prompt, 40, gamma=gamma, stats=steps))
        assert got == list(generate(target, prompt, 40)), (gamma, prompt)
        accepted = sum(n for _, n in steps)
        assert 0 < accepted < sum(g for g, _ in steps)  # some guesses right, some wrong


def test_sampled_with_the_ngram_draft_draws_the_targets_joint_distribution():
    target = tiny(1, vocab_size=6, dim=16, n_heads=2, n_kv_heads=1, hidden_dim=24)
    with torch.no_grad():
        target.norm.weight.mul_(0.3)
    draft = NGramDraft.distil(target, [1, 4, 2, 0, 3, 1, 4, 2, 5, 5, 0, 1], order=2, window=12)
    prompt = [1, 4, 2]
    with torch.no_grad():
        first = torch.softmax(target(torch.tensor([prompt]))[0, -1], -1).double()
        joint = torch.stack([first[a] * torch.softmax(target(torch.tensor([prompt + [a]]))[0, -1], -1).double()
                             for a in range(6)])
    n, counts = 3000, torch.zeros(6, 6, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    steps = []
    for _ in range(n):
        a, b = speculative_generate(target, draft, prompt, 2, gamma=2, temperature=1.0, generator=g, stats=steps)
        counts[a, b] += 1
    tolerance = 5 * (joint * (1 - joint) / n).sqrt() + 1e-3
    assert ((counts / n - joint).abs() <= tolerance).all(), (counts / n - joint).abs().max()
    assert 0.05 < acceptance_rate(steps) < 0.95


def test_ngram_draft_on_the_shipped_model(shipped):
    data = pytest.importorskip("data")
    target, _, prompts = shipped
    ids = data.course_tokenizer().encode(data.load_corpus("train", max_chars=120_000), allowed_special="all")
    draft = NGramDraft.distil(target, ids, order=4)
    lean = LeanDecoder(target)
    steps = []
    for prompt in prompts:
        assert list(speculative_generate(lean, draft, prompt, 40, gamma=3, stats=steps)) == \
            greedy_decode(lean, prompt, 40)
    assert acceptance_rate(steps) > 0.3  # the table agrees with the target often


def test_propose_drafts_what_calls_would_and_leaves_the_same_history():
    target = tiny(3)
    text = [1] + list(generate(target, [1], 80)) + [5, 9] + list(generate(target, [5, 9], 60))
    draft = NGramDraft.distil(target, text, order=3, window=16)
    lengths = []
    for prompt in ([1], [5, 9, 2, 7], text[:30], text[40:50]):
        called, one_by_one, fed = draft.new_caches(), [], list(prompt)
        for _ in range(5):
            logits = draft(torch.tensor([fed]), called)
            if not logits.isinf().any():  # nothing matched (q uniform): propose stops here
                break
            one_by_one.append(int(logits[0, -1].argmax()))
            fed = one_by_one[-1:]
        proposed = draft.new_caches()
        assert draft.propose(prompt, proposed, 5) == one_by_one, prompt
        assert proposed[0].tokens == list(prompt) + one_by_one[:-1]
        if len(one_by_one) == 5:
            assert called[0].tokens == proposed[0].tokens
        lengths.append(len(one_by_one))
    assert 5 in lengths and min(lengths) < 5  # both cases were met


def test_propose_stops_where_nothing_matches():
    draft = NGramDraft([{}, {}, {}], tiny(3).cfg)  # an empty table: guesses come from the text alone
    caches = draft.new_caches()
    assert draft.propose([1, 2, 3, 4, 1, 2], caches, 6) == [3, 4, 1, 2, 3, 4]  # the text repeats itself
    caches = draft.new_caches()
    assert draft.propose([1, 2, 3, 8], caches, 6) == []  # "3 8" and "8" were never followed by anything
    assert caches[0].tokens == [1, 2, 3, 8]  # the tokens were read all the same
    caches = draft.new_caches()
    assert draft.propose([1, 2, 3, 1, 2], caches, 6) == [3, 1, 2, 3, 1, 2]


@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_lookup_generate_is_the_targets_greedy_output(gamma):
    target = tiny(3)
    text = [1] + list(generate(target, [1], 80)) + [5, 9] + list(generate(target, [5, 9], 60))
    for draft in (NGramDraft.distil(target, text, order=3, window=16), NGramDraft([{}, {}, {}], target.cfg)):
        for prompt in ([1], [5, 9, 2, 7], list(range(10, 30))):
            steps = []
            got = list(lookup_generate(target, draft, prompt, 40, gamma=gamma, stats=steps))
            assert got == list(generate(target, prompt, 40)), (gamma, prompt)
            assert sum(n + 1 for _, n in steps) >= 40 and all(0 <= n <= g <= gamma for g, n in steps)
    full = NGramDraft.distil(target, text, order=3, window=16)
    steps = []
    list(lookup_generate(LeanDecoder(target), full, [1], 40, gamma=gamma, stats=steps))
    accepted = sum(n for _, n in steps)
    assert 0 < accepted < sum(g for g, _ in steps)  # some guesses right, some wrong
    reference = list(generate(target, [1, 2], 40))
    stop = reference[4]
    assert list(lookup_generate(target, full, [1, 2], 40, stop_tokens=[stop])) == \
        reference[:reference.index(stop)]  # stops at a stop token, without yielding it
    assert list(lookup_generate(target, full, [1, 2], 0)) == []


def test_lookup_generate_bad_arguments():
    target = tiny(3)
    draft = NGramDraft([{}, {}], target.cfg)
    with pytest.raises(ValueError, match="gamma"):
        list(lookup_generate(target, draft, [1], 5, gamma=0))
    with pytest.raises(ValueError, match="max_new_tokens"):
        list(lookup_generate(target, draft, [1], -1))
    with pytest.raises(ValueError, match="empty"):
        list(lookup_generate(target, draft, [], 5))
    with pytest.raises(ValueError, match="context"):
        list(lookup_generate(target, draft, [1] * 90, 10))
    with pytest.raises(ValueError, match="vocab"):
        list(lookup_generate(target, NGramDraft([{}, {}], tiny(3, vocab_size=41).cfg), [1], 5))
    with pytest.raises(TypeError, match="proposes token ids.*speculative_generate"):
        list(lookup_generate(target, tiny(4), [1], 5))  # a draft model


def test_greedy_batch_continues_every_prompt_with_its_top_token():
    model = tiny(5)
    prompts = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 7, 8, 9, 1, 2], [3, 1, 4, 1, 5, 9]])
    out = _greedy_batch(model, prompts, 10)  # (3, 10)
    assert out.shape == (3, 10)
    with torch.no_grad():
        logits = model(torch.cat([prompts, out], dim=1))[:, prompts.shape[1] - 1:-1]  # (3, 10, vocab)
    chosen = logits.gather(-1, out[..., None])[..., 0]
    assert (chosen >= logits.max(dim=-1).values - 1e-4).all()  # each token the argmax, within rounding


def test_distil_counts_the_targets_own_continuations():
    target = tiny(3)
    rng = random.Random(1)
    text = [rng.randrange(40) for _ in range(33)]  # one window of 32 and one more token:
    # every continuation starts at text[0:32], so all are the target's greedy text after it
    plain = NGramDraft.distil(target, text, order=4, window=32)
    own = NGramDraft.distil(target, text, order=4, window=32, continuations=3, new_tokens=24)
    assert own.table != plain.table
    assert NGramDraft.distil(target, text, order=4, window=32, continuations=3, new_tokens=24).table == own.table
    lean = LeanDecoder(target)
    rates = []
    for draft in (plain, own):
        steps = []
        assert list(speculative_generate(lean, draft, text[:32], 24, gamma=4, stats=steps)) == \
            greedy_decode(lean, text[:32], 24)
        rates.append(acceptance_rate(steps))
    assert rates[1] > max(rates[0], 0.8), rates  # the draft has read this very continuation


def test_ngram_draft_bad_arguments():
    target = tiny(3)
    with pytest.raises(ValueError, match="order"):
        NGramDraft.distil(target, list(range(64)), order=0)
    with pytest.raises(ValueError, match="fewer than one window"):
        NGramDraft.distil(target, [1, 2, 3], window=16)
    with pytest.raises(ValueError, match="continuations must be an int >= 0"):
        NGramDraft.distil(target, list(range(40)), window=16, continuations=-1)
    with pytest.raises(ValueError, match="new_tokens=96 leaves no room"):
        NGramDraft.distil(target, list(range(40)), window=16, continuations=1, new_tokens=96)
    with pytest.raises(ValueError, match="list of dicts"):
        NGramDraft([{}], target.cfg)
    draft = NGramDraft([{}, {}], target.cfg)
    with pytest.raises(ValueError, match="max_seq_len"):
        draft(torch.zeros(1, 97, dtype=torch.long), draft.new_caches())
    assert len(NGramHistory(2)) == 0
