"""Every checkpoint rejects every catalogued mistake with that mistake's own hint, and
accepts the reference implementation on both the visible and the hidden seed."""

from __future__ import annotations

from collections import Counter

import pytest

from autograder import _hidden_seed, checkpoints
from autograder.core import hint_text, lookup, run
from tests.catalogue import load_all

MISTAKES = load_all()


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.name for m in MISTAKES])
def test_mistake_is_rejected_with_its_hint(mistake):
    cp = lookup(mistake.checkpoint)
    result = run(cp, mistake.fn)
    assert not result.passed, f"{mistake.name} was accepted"
    assert result.hint_id == mistake.hint, f"{mistake.name}: got hint {result.hint_id!r}\n{result.report()}"
    assert " ".join(hint_text(cp, mistake.hint).split()) in " ".join(result.report().split())  # reports wrap
    # The visible check must catch what the hidden one catches: a mistake caught only by the
    # hidden seed would show the learner a ✓ and then score 0.
    hidden = run(cp, mistake.fn, seed=_hidden_seed())
    assert not hidden.passed, f"{mistake.name} passes the hidden seed"
    assert hidden.hint_id == mistake.hint, f"{mistake.name}: hidden seed gives hint {hidden.hint_id!r}\n{hidden.report()}"


@pytest.mark.parametrize("checkpoint_id", checkpoints())
def test_reference_is_accepted(checkpoint_id):
    cp = lookup(checkpoint_id)
    for seed in (0, 1, 12345):
        result = run(cp, cp.reference, seed=seed)
        assert result.passed, result.report()


@pytest.mark.parametrize("checkpoint_id", checkpoints())
def test_each_checkpoint_has_at_least_five_catalogued_mistakes(checkpoint_id):
    count = Counter(m.checkpoint for m in MISTAKES)[checkpoint_id]
    assert count >= 5, f"{checkpoint_id} has {count} catalogued wrong implementations"


def test_every_hint_a_mistake_gets_is_written_for_its_checkpoint():
    for m in MISTAKES:
        cp = lookup(m.checkpoint)
        assert hint_text(cp, m.hint) != cp.hints["default"], f"{m.name} only gets the default hint"
