"""How ``autograder.check`` talks to a learner: ✓ lines, ✗ reports, and clear refusals."""

from __future__ import annotations

import random

import pytest

import autograder
from autograder import CheckpointFailed, CheckUsageError
from autograder.core import lookup, run
from solutions import tokenizer


@pytest.fixture(autouse=True)
def grade_mode(monkeypatch):
    """These tests look at failures as errors, as nbgrader sees them."""
    monkeypatch.setenv("COURSE_CHECK_MODE", "grade")


def test_pass_prints_one_line_and_returns_nothing(capsys):
    assert autograder.check("01.merge", tokenizer.merge) is None
    out = capsys.readouterr().out
    assert out.startswith("✓ 01.merge") and out.count("\n") == 1


def test_in_study_mode_a_failure_is_shown_and_the_notebook_goes_on(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_CHECK_MODE", "study")

    def merge(ids, pair, new_id):
        return list(ids)

    assert autograder.check("01.merge", merge) is None  # no exception: Run All goes on
    out = capsys.readouterr().out
    assert out.startswith("✗ 01.merge") and "hint:" in out
    with pytest.raises(CheckpointFailed):  # the hidden check (graded copies only) always raises
        autograder.check("01.merge", merge, hidden=True)


def test_the_mode_is_never_guessed(monkeypatch):
    monkeypatch.setenv("COURSE_CHECK_MODE", "exam")
    with pytest.raises(CheckUsageError, match="'study'.*'grade'"):
        autograder.check("01.merge", tokenizer.merge)


def test_a_failure_shows_aligned_wrapped_lines(monkeypatch):
    def merge(ids, pair, new_id):
        return list(ids)

    with pytest.raises(CheckpointFailed) as info:
        autograder.check("01.merge", merge)
    lines = str(info.value).splitlines()
    assert all(len(line) <= 100 for line in lines)
    hint = next(i for i, line in enumerate(lines) if line.startswith("  hint:"))
    assert all(line.startswith(" " * 12) for line in lines[hint + 1:])


def test_failure_is_an_assertion_error_with_call_difference_and_hint():
    def merge(ids, pair, new_id):
        return list(ids)

    with pytest.raises(AssertionError) as info:
        autograder.check("01.merge", merge)
    message = str(info.value)
    assert isinstance(info.value, CheckpointFailed)
    assert message.startswith("✗ 01.merge")
    for field in ("called:   merge([1, 2, 3, 1, 2], (1, 2), 256)", "expected: [256, 3, 256]",
                  "got:      [1, 2, 3, 1, 2]", "first difference at index 0", "hint:"):
        assert field in message


def test_a_stub_is_reported_as_not_implemented():
    def merge(ids, pair, new_id):
        raise NotImplementedError()

    with pytest.raises(CheckpointFailed, match="not implemented yet"):
        autograder.check("01.merge", merge)


def test_a_crash_names_the_learners_line_not_a_traceback():
    def merge(ids, pair, new_id):
        return [ids[i] for i in range(len(ids) + 1)]

    with pytest.raises(CheckpointFailed) as info:
        autograder.check("01.merge", merge)
    message = str(info.value)
    assert "raised IndexError" in message and "line" in message and "Traceback" not in message


@pytest.mark.parametrize(
    "checkpoint_id, fn, fragment",
    [
        ("01.merj", tokenizer.merge, "Did you mean '01.merge'"),
        ("nonsense", tokenizer.merge, "autograder.checkpoints() lists them all"),
        (1, tokenizer.merge, "checkpoint id such as"),
        ("01.merge", [256, 3], "needs your function"),
        ("01.merge", None, "pass the function itself"),
        ("01.merge", lambda ids, pair: ids, "with 3 argument(s), but yours is"),
        ("01.train_bpe", lambda text, vocab_size: {}, "Keep the signature given in the notebook"),
    ],
)
def test_bad_use_of_check_is_refused_clearly(checkpoint_id, fn, fragment):
    with pytest.raises(CheckUsageError) as info:
        autograder.check(checkpoint_id, fn)
    assert fragment in str(info.value)


def test_a_function_with_defaults_or_star_args_is_accepted():
    def encode_ordinary(*args, **kwargs):
        return tokenizer.encode_ordinary(*args)

    autograder.check("01.encode", encode_ordinary, quiet=True)


def test_checkpoints_are_listed_in_order():
    ids = autograder.checkpoints()
    assert ids == sorted(ids)
    assert {"01.merge", "01.train_bpe", "01.encode", "01.decode", "01.special_tokens"} <= set(ids)


def test_cases_are_seeded_and_the_hidden_seed_differs():
    cp = lookup("01.merge")
    first = [c.args for c in cp.cases(random.Random("01.merge/0"))]
    again = [c.args for c in cp.cases(random.Random("01.merge/0"))]
    hidden = [c.args for c in cp.cases(random.Random(f"01.merge/{autograder._hidden_seed()}"))]
    assert first == again and first != hidden


def test_hard_coding_the_visible_cases_fails_the_hidden_check():
    visible = {repr(c.args): tokenizer.merge(*c.args) for c in lookup("01.merge").cases(random.Random("01.merge/0"))}

    def merge(ids, pair, new_id):
        return visible.get(repr((ids, pair, new_id)), [])

    assert run(lookup("01.merge"), merge).passed
    with pytest.raises(CheckpointFailed):
        autograder.check("01.merge", merge, hidden=True)


# ---------------------------------------------------------- hostile answers, in process

class _AlwaysEqualInt(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


class _UnprintableError(ValueError):
    def __str__(self):
        raise RuntimeError("this message cannot be shown")


def _tensor_that_is_always_close():
    import torch

    class AlwaysClose(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func is torch.isclose:
                return torch.ones(args[0].shape, dtype=torch.bool)
            return super().__torch_function__(func, types, args, kwargs or {})

    return AlwaysClose


def _raise(exc):
    def answer(*args, **kwargs):
        raise exc
    return answer


def _lying_ints_of_the_right_length(p, q, drafted, u):
    from solutions.speculative import accept_draft

    return [_AlwaysEqualInt(0)] * len(accept_draft(p, q, drafted, u))  # raises where the reference raises


def _always_close_zeros(logprobs, ref_logprobs, kind="k1"):
    import torch

    from solutions.ppo import kl_penalty

    kl_penalty(logprobs, ref_logprobs, kind)  # raises where the reference raises
    return torch.zeros_like(logprobs).as_subclass(_tensor_that_is_always_close())


class _Unrepresentable:
    def __repr__(self):
        raise RuntimeError("no repr")


def _sparse_zeros(logprobs, ref_logprobs, kind="k1"):
    return torch_zeros_like(logprobs).to_sparse()  # torch.isclose has no sparse kernel


def _meta_zeros(logprobs, ref_logprobs, kind="k1"):
    return torch_zeros_like(logprobs).to("meta")  # no data to compare


def torch_zeros_like(t):
    import torch

    return torch.zeros_like(t)


@pytest.mark.parametrize("checkpoint_id, answer", [
    ("13.accept", _lying_ints_of_the_right_length),
    ("13.expected_tokens", lambda alpha, gamma: 10 ** 400),  # math.isclose cannot make it a float
    ("13.expected_tokens", lambda alpha, gamma: _Unrepresentable()),
    ("11.kl_penalty", _sparse_zeros),
    ("11.kl_penalty", _meta_zeros),
    ("13.expected_tokens", _raise(_UnprintableError())),
    ("13.expected_tokens", _raise(SystemExit(3))),
    ("11.kl_penalty", _always_close_zeros),
], ids=["int_whose_eq_lies", "int_past_float", "repr_raises", "sparse_tensor", "meta_tensor", "str_raises",
        "system_exit", "tensor_whose_isclose_lies"])
def test_a_hostile_answer_neither_passes_nor_crashes_the_check(checkpoint_id, answer):
    result = run(lookup(checkpoint_id), answer)
    assert not result.passed
    assert result.report()  # the report itself can be written


def test_a_label_compares_as_the_text_it_holds():
    """A reference's Label (a str subclass shown without quotes) equals the same Label: fixtures
    built on another CPU are compared field by field, `show` included (a regression of 6a36e98,
    where a str subclass was read as plain str on one side only)."""
    from autograder.compare import difference
    from autograder.declarations import Label

    assert difference(Label("<model>"), Label("<model>")) is None
    assert difference((1.5, Label("<model>")), (1.5, Label("<model>"))) is None
    assert difference(Label("<model>"), Label("<other>")) is not None
