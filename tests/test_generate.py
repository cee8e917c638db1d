"""The generation reference (solutions/generate.py), each component against an independent computation.

Tolerances: scaled logits within 1e-6 (float32, one division); filters exactly (they only copy
logits or write -inf), checked against Hugging Face's ``TemperatureLogitsWarper``,
``TopKLogitsWarper`` and ``TopPLogitsWarper`` and against plain-Python loops; sampled token
frequencies over N evenly spaced u within 1/N + 1e-6 of the probabilities (the inverse CDF
draws each token exactly round(p N) times, up to one); decoded tokens exactly, against the
uncached loop and against ``transformers``' own greedy ``generate``.
"""

from __future__ import annotations

import math

import pytest
import torch

from solutions.generate import (
    apply_temperature,
    check_sampling,
    generate,
    generate_from_weights,
    sample_next,
    stream_text,
    top_k_filter,
    top_p_filter,
)
from solutions.model import LlamaConfig, Transformer

INF = float("-inf")


def tiny(**overrides) -> Transformer:
    base = dict(vocab_size=40, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, max_seq_len=64)
    torch.manual_seed(overrides.pop("seed", 0))
    model = Transformer(LlamaConfig(**(base | overrides))).eval()
    with torch.no_grad():  # spread logits (greedy choices far from ties), without echoing the input embedding
        model.embed_tokens.weight.mul_(0.2)
        model.norm.weight.mul_(4.0)
    return model


# ------------------------------------------------------------------ independent computations

def slow_top_k(row: list[float], k: int) -> list[float]:
    kth = sorted(row, reverse=True)[min(k, len(row)) - 1]
    return [x if x >= kth else INF for x in row]


def slow_top_p(row: list[float], p: float) -> list[float]:
    m = max(row)
    weights = [math.exp(x - m) for x in row]
    probs = [w / sum(weights) for w in weights]
    kept, mass = set(), 0.0
    for i in sorted(range(len(row)), key=lambda i: -probs[i]):
        if mass >= p:
            break
        kept.add(i)
        mass += probs[i]
    return [x if i in kept else INF for i, x in enumerate(row)]


def boundary_safe(row: torch.Tensor, p: float, margin: float = 1e-4) -> bool:
    probs = torch.softmax(row.double(), -1).sort(descending=True).values
    return bool(((probs.cumsum(-1) - p).abs() > margin).all())


# ------------------------------------------------------------------------------ temperature

def test_temperature_divides_the_logits_and_powers_the_probabilities():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 10, generator=g) * 2
    before = logits.clone()
    for t in (0.3, 1.0, 2.5):
        scaled = apply_temperature(logits, t)
        torch.testing.assert_close(scaled, logits / t, atol=1e-6, rtol=1e-6)
        p = torch.softmax(logits.double(), -1) ** (1 / t)
        torch.testing.assert_close(torch.softmax(scaled.double(), -1), p / p.sum(-1, keepdim=True), atol=1e-6, rtol=1e-6)
    assert torch.equal(logits, before)


def test_temperature_limits_are_greedy_and_uniform():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    assert torch.softmax(apply_temperature(logits, 0.01), -1)[0, 1] > 0.999
    torch.testing.assert_close(torch.softmax(apply_temperature(logits, 1e4), -1), torch.full((1, 4), 0.25), atol=1e-3, rtol=0)


def test_temperature_matches_hugging_face():
    warpers = pytest.importorskip("transformers.generation.logits_process")
    logits = torch.randn(3, 12, generator=torch.Generator().manual_seed(1))
    for t in (0.5, 1.7):
        torch.testing.assert_close(apply_temperature(logits, t), warpers.TemperatureLogitsWarper(t)(None, logits.clone()),
                                   atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------------- top-k

def test_top_k_against_a_loop_ties_included():
    g = torch.Generator().manual_seed(2)
    for _ in range(200):
        vocab = int(torch.randint(2, 12, (1,), generator=g))
        logits = torch.randint(-3, 4, (3, vocab), generator=g).float()  # many ties
        k = int(torch.randint(1, vocab + 3, (1,), generator=g))
        expected = torch.tensor([slow_top_k(row, k) for row in logits.tolist()])
        assert torch.equal(top_k_filter(logits, k), expected)


def test_top_k_matches_hugging_face():
    warpers = pytest.importorskip("transformers.generation.logits_process")
    g = torch.Generator().manual_seed(3)
    for k in (1, 2, 5, 50):
        logits = torch.randn(4, 20, generator=g)
        assert torch.equal(top_k_filter(logits, k), warpers.TopKLogitsWarper(k)(None, logits.clone()))


def test_top_k_edges():
    row = torch.tensor([1.0, 3.0, 3.0, 0.0])
    assert torch.equal(top_k_filter(row, 1), torch.tensor([INF, 3.0, 3.0, INF]))  # both tied maxima kept
    assert torch.equal(top_k_filter(row, 10), row)
    assert torch.equal(top_k_filter(torch.tensor([[1.0, INF, 2.0]]), 3), torch.tensor([[1.0, INF, 2.0]]))


# ----------------------------------------------------------------------------------- top-p

def test_top_p_against_a_loop():
    g = torch.Generator().manual_seed(4)
    checked = 0
    for _ in range(300):
        vocab = int(torch.randint(2, 15, (1,), generator=g))
        row = torch.randn(vocab, generator=g) * 2
        p = float(torch.rand(1, generator=g)) * 0.99 + 0.005
        if not boundary_safe(row, p):
            continue
        assert torch.equal(top_p_filter(row, p), torch.tensor(slow_top_p(row.tolist(), p)))
        checked += 1
    assert checked > 250


def test_top_p_matches_hugging_face():
    warpers = pytest.importorskip("transformers.generation.logits_process")
    g = torch.Generator().manual_seed(5)
    for _ in range(100):
        logits = torch.randn(4, 30, generator=g) * 2
        p = float(torch.rand(1, generator=g)) * 0.98 + 0.01
        assert torch.equal(top_p_filter(logits, p), warpers.TopPLogitsWarper(p)(None, logits.clone()))


def test_top_p_edges():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert top_p_filter(logits, 0.6).isinf().tolist() == [[False, False, True, True]]  # 0.3 crosses 0.6: kept
    assert top_p_filter(logits, 0.2).isinf().tolist() == [[False, True, True, True]]  # the top token always stays
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    already = torch.tensor([1.0, INF, 0.5])
    assert top_p_filter(already, 0.99)[1] == INF


# ---------------------------------------------------------------------------------- sample

def test_inverse_cdf_draws_every_token_in_proportion():
    n = 20_000
    u = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    logits = torch.randn(7, generator=torch.Generator().manual_seed(6)) * 1.5
    for temperature, top_k, top_p in [(1.0, None, 1.0), (0.7, None, 1.0), (1.3, 4, 1.0), (1.0, None, 0.8), (0.8, 5, 0.7)]:
        drawn = sample_next(logits.expand(n, 7), temperature, top_k, top_p, u)
        freq = torch.bincount(drawn, minlength=7).double() / n
        # the distribution written out independently: power, keep, renormalise
        z = (logits.double() / temperature).tolist()
        if top_k is not None:
            z = slow_top_k(z, top_k)
        if top_p < 1:
            z = slow_top_p(z, top_p)
        w = torch.tensor([math.exp(x) if x != INF else 0.0 for x in z], dtype=torch.float64)
        torch.testing.assert_close(freq, w / w.sum(), atol=1 / n + 1e-6, rtol=0)


def test_sampling_with_random_u_agrees_with_multinomial_in_distribution():
    g = torch.Generator().manual_seed(7)
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    n = 40_000
    ours = torch.bincount(sample_next(logits.expand(n, 5), 0.9, None, 1.0, torch.rand(n, generator=g)), minlength=5)
    theirs = torch.bincount(torch.multinomial(torch.softmax(logits / 0.9, -1), n, replacement=True, generator=g), minlength=5)
    # two samples of the same distribution: within 5 standard errors of each other
    p = torch.softmax(logits / 0.9, -1).double()
    assert ((ours - theirs).abs().double() / n < 5 * (2 * p * (1 - p) / n).sqrt() + 1e-9).all()


def test_greedy_is_the_argmax_whatever_u():
    logits = torch.randn(5, 9, generator=torch.Generator().manual_seed(8))
    for u in (torch.zeros(5), torch.full((5,), 0.999)):
        assert torch.equal(sample_next(logits, 0.0, 3, 0.5, u), logits.argmax(-1))
    assert sample_next(torch.tensor([1.0, 2.0, 2.0]), 0.0, None, 1.0, None).item() == 1  # first on ties


def test_a_draw_never_lands_on_a_removed_token():
    logits = torch.tensor([[3.0, 2.0, INF, 1.0, INF]]).expand(1000, 5)
    u = torch.linspace(0, 1 - 1e-7, 1000)
    drawn = sample_next(logits, 1.0, 2, 1.0, u)
    assert set(drawn.tolist()) == {0, 1}


# ------------------------------------------------------------------------------- the loop

@pytest.mark.parametrize("overrides", [{}, {"n_kv_heads": 1, "tie_embeddings": True}, {"n_experts": 4, "top_k": 2}])
def test_cached_decoding_is_identical_to_uncached(overrides):
    model = tiny(**overrides)
    prompt = [1, 5, 9, 2, 7]
    cached = list(generate(model, prompt, 40))
    assert cached == list(generate(model, prompt, 40, use_cache=False))
    options = dict(temperature=1.1, top_k=20, top_p=0.95)
    sampled = list(generate(model, prompt, 40, generator=torch.Generator().manual_seed(3), **options))
    assert sampled == list(generate(model, prompt, 40, use_cache=False, generator=torch.Generator().manual_seed(3),
                                    **options))
    assert sampled != cached  # sampling does not collapse to greedy


def test_greedy_tokens_match_transformers_generate(tmp_path):
    transformers = pytest.importorskip("transformers")
    from solutions.model import load_hf_checkpoint

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      rms_norm_eps=1e-5, tie_word_embeddings=False, eos_token_id=None,
                                      bos_token_id=None, pad_token_id=0)
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        hf.lm_head.weight.mul_(20.0)  # clear-cut choices
    hf.save_pretrained(tmp_path)
    ours = load_hf_checkpoint(tmp_path)
    prompt = [3, 14, 15, 9, 26]
    with torch.no_grad():
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False)[0, len(prompt):].tolist()
    assert list(generate(ours, prompt, 30)) == expected


def test_stop_tokens_end_generation_and_are_not_yielded():
    model = tiny()
    prompt = [1, 5, 9]

    def run(prompt, **kwargs):
        return list(generate(model, prompt, 30, temperature=1.0, generator=torch.Generator().manual_seed(0), **kwargs))

    free = run(prompt)
    i = next(i for i in range(2, 30) if free[i] not in free[:i] and free[i] not in prompt)
    assert run(prompt, stop_tokens={free[i]}) == free[:i]
    assert run(prompt, stop_tokens=[free[i], 1000]) == free[:i]  # any iterable of ids
    # a stop token inside the prompt stops nothing: only generated tokens do
    without = run([7, *prompt])
    expected = without[: without.index(7)] if 7 in without else without
    assert len(expected) > 3 and run([7, *prompt], stop_tokens={7}) == expected


def test_generate_streams_lazily_and_leaves_grad_mode_alone():
    model = tiny()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    stream = generate(model, [1, 2, 3], 5)
    assert calls == []  # nothing runs before the first token is asked for
    first = next(stream)
    assert isinstance(first, int) and len(calls) == 1
    assert torch.is_grad_enabled()  # the caller's grad mode, between two tokens
    rest = list(stream)
    assert len(rest) == 4 and len(calls) == 5  # the last token is never fed back


def test_two_runs_with_the_same_seed_print_the_same_tokens():
    model = tiny()
    run = lambda seed: list(generate(model, [4, 4], 30, temperature=1.0, generator=torch.Generator().manual_seed(seed)))  # noqa: E731
    assert run(1) == run(1)
    assert run(1) != run(2)


def test_generate_from_weights_is_generate_on_the_built_model():
    model = tiny(n_kv_heads=1, tie_embeddings=True)
    config = {k: getattr(model.cfg, k) for k in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads",
                                                  "hidden_dim", "max_seq_len", "tie_embeddings")}
    got = generate_from_weights(config, model.state_dict(), [3, 1], {"max_new_tokens": 12, "temperature": 0.9, "seed": 5})
    assert got["tokens"] == list(generate(model, [3, 1], 12, temperature=0.9, generator=torch.Generator().manual_seed(5)))
    assert got["each position run once"]
    uncached = generate_from_weights(config, model.state_dict(), [3, 1], {"max_new_tokens": 12, "use_cache": False})
    assert uncached["tokens"] == list(generate(model, [3, 1], 12)) and not uncached["each position run once"]


def test_the_checkpoint_accepts_a_loop_that_feeds_each_token_right_after_yielding_it():
    """Prefill before the loop, then sample, yield, feed: one more model call than the reference
    (after the last token), still each position once. A correct answer: the check accepts it."""
    from autograder.core import lookup, run
    from tests.catalogue.ch07_generation import _adapter

    def generate_feed_after_yield(model, prompt_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=1.0,
                                  stop_tokens=(), use_cache=True, generator=None):
        check_sampling(temperature, top_k, top_p)
        tokens = torch.tensor([list(prompt_ids)], dtype=torch.long)
        if max_new_tokens < 0 or tokens.shape[1] == 0 or tokens.shape[1] + max_new_tokens > model.cfg.max_seq_len:
            raise ValueError("bad prompt or max_new_tokens")
        caches = model.new_caches() if use_cache else None
        with torch.no_grad():
            logits = model(tokens, caches)
        for _ in range(max_new_tokens):
            u = torch.rand(1, generator=generator) if temperature > 0 else None
            token = int(sample_next(logits[:, -1], temperature, top_k, top_p, u))
            if token in stop_tokens:
                return
            yield token
            tokens = torch.cat([tokens, torch.tensor([[token]])], dim=1)
            with torch.no_grad():
                logits = model(torch.tensor([[token]]), caches) if use_cache else model(tokens)

    result = run(lookup("07.generate"), _adapter(generate_feed_after_yield))
    assert result.passed, result.report()


# ------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), "temperature must be"),
    (dict(top_k=0), "top_k must be None .* or an int >= 1"),
    (dict(top_k=2.5), "top_k must be"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
])
def test_sampling_parameters_out_of_range_say_what_to_change(kwargs, message):
    params = dict(temperature=1.0, top_k=None, top_p=1.0) | kwargs
    with pytest.raises(ValueError, match=message):
        check_sampling(**params)
    with pytest.raises(ValueError, match=message):
        sample_next(torch.zeros(1, 4), params["temperature"], params["top_k"], params["top_p"], torch.zeros(1))
    with pytest.raises(ValueError, match=message):
        next(generate(tiny(), [1, 2], 3, **params))


def test_filters_refuse_their_own_bad_parameters():
    logits = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="0 is greedy decoding"):
        apply_temperature(logits, 0.0)
    with pytest.raises(ValueError, match="temperature > 0"):
        apply_temperature(logits, -1.0)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        top_k_filter(logits, 0)
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\]"):
        top_p_filter(logits, 0.0)


def test_a_prompt_longer_than_the_context_says_how_much_fits():
    model = tiny(max_seq_len=16)
    with pytest.raises(ValueError, match="ask for at most 6 new tokens, or keep only the last 6 tokens"):
        next(generate(model, list(range(10)), 10))
    with pytest.raises(ValueError, match="does not fit the model's context of 16"):
        next(generate(model, list(range(20)), 1))
    assert len(list(generate(model, list(range(10)), 6))) == 6  # exactly full is fine
    with pytest.raises(ValueError, match="the prompt is empty"):
        next(generate(model, [], 3))
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0"):
        next(generate(model, [1], -1))


# ------------------------------------------------------------------------------ streaming

def test_stream_text_never_cuts_a_character():
    from data import course_tokenizer

    enc = course_tokenizer()
    text = "Zoë smiled 🙂 at the café. 日本"
    ids = enc.encode(text)
    pieces = list(stream_text(enc, ids))
    assert "".join(pieces) == text and "�" not in "".join(pieces)
    assert len(pieces) > 1  # streamed, not decoded at the end
    byte_ids = [enc.encode_single_token(bytes([b])) for b in "🙂".encode()]  # one byte per token
    assert list(stream_text(enc, byte_ids)) == ["🙂"]
