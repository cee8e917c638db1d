"""Hints never lie, and verdicts and hints do not depend on the CPU.

* A specific hint is shown only on evidence in the learner's output: the reference with a
  random perturbation (noise, a sign flipped at a random place, a shifted index) is rejected
  with a generic hint, never with the name of a catalogued mistake.
* Known mistakes stay apart: on every case, two known mistakes with different hints (or a
  known mistake and the reference) agree within the fingerprint tolerance or differ by at
  least SEPARATION times it; never in between, where another CPU's rounding could flip
  which one is named.
* Every checkpoint that is trained through has a gradient probe, and the probe rejects a
  detached copy of the reference.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

from autograder import checkpoints
from autograder.compare import digest
from autograder.core import GENERIC_HINTS, Raised, as_callable, call, lookup, run

SEPARATION = 10
PERTURBATIONS = ("noise", "sign", "shift")


# --------------------------------------------------------------------------- perturb

def _leaves(value, path=()):
    """Paths to every perturbable leaf: tensors, numbers, strings, lists of ints."""
    if isinstance(value, torch.Tensor):
        return [path] if value.numel() else []
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float, str)):
        return [path]
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [path]
        return [p for i, v in enumerate(value) for p in _leaves(v, path + (i,))]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, path + (k,))]
    return []


def _get(value, path):
    for key in path:
        value = value[key]
    return value


def _set(value, path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, tuple):
        items = list(value)
        items[head] = _set(items[head], rest, new)
        return type(value)(items) if type(value) is tuple else type(value)(*items)
    value = copy.copy(value)
    value[head] = _set(value[head], rest, new)
    return value


def _perturb_leaf(leaf, how: str, rng: random.Random):
    if isinstance(leaf, torch.Tensor):
        t = leaf.detach().clone()
        flat = t.reshape(-1)
        i = rng.randrange(flat.numel())
        if t.dtype == torch.bool:
            flat[i] = ~flat[i]
        elif how == "noise" and t.is_floating_point():
            g = torch.Generator().manual_seed(rng.randrange(2**31))
            noise = torch.randn(t.shape, generator=g, dtype=torch.float32)
            t = (t.float() + 0.05 * (t.float().abs() + 0.1) * noise).to(t.dtype)
        elif how == "sign" and t.is_floating_point() and t.numel() > 1:
            # (a scalar with its sign flipped is not a random perturbation: it IS the
            # "sign" mistake of a loss, and naming it is right)
            nonzero = torch.nonzero(flat != 0).flatten().tolist()
            j = rng.choice(nonzero) if nonzero else i
            flat[j] = -flat[j] if nonzero else 1
        elif how == "shift" and t.dim() and t.shape[-1] > 1 and not bool((t == t.reshape(-1)[0]).all()):
            t = t.roll(1, dims=-1)
        else:
            flat[i] = flat[i] + 1
        return t
    if isinstance(leaf, float):
        return leaf * 1.05 + 0.01
    if isinstance(leaf, int):
        return leaf + 1
    if isinstance(leaf, str):
        return leaf + " " if not leaf else leaf[:-1] + ("x" if leaf[-1] != "x" else "y")
    items = list(leaf)  # a list of ints
    if how == "shift" and len(set(items)) > 1:
        return type(leaf)(items[-1:] + items[:-1])
    i = rng.randrange(len(items))
    items[i] += 1
    return type(leaf)(items)


def perturb(value, how: str, rng: random.Random):
    leaves = _leaves(value)
    if not leaves:
        return value
    chosen = leaves if how == "noise" else [rng.choice(leaves)]
    for path in chosen:
        value = _set(value, path, _perturb_leaf(_get(value, path), how, rng))
    return value


def _perturbed_reference(cp, how: str, seed: int):
    reference = as_callable(cp, cp.reference)
    rng = random.Random(f"{cp.id}/{how}/{seed}")

    def perturbed(*args):
        return perturb(reference(*args), how, rng)

    return perturbed


@pytest.mark.parametrize("how", PERTURBATIONS)
@pytest.mark.parametrize("checkpoint_id", checkpoints())
def test_a_perturbed_reference_never_gets_a_specific_hint(checkpoint_id, how):
    cp = lookup(checkpoint_id)
    rejected = 0
    for seed in range(3):
        result = run(cp, _perturbed_reference(cp, how, seed), seed=seed, wrapped=True)
        if result.passed:
            continue  # the perturbation hit nothing the checkpoint compares (e.g. a label)
        rejected += 1
        # a property the comparison states ("ids 0..255 must be the 256 single bytes") is
        # evidence in the output itself; a named mistake is not
        assert result.hint_id in GENERIC_HINTS or result.evidence == "property", (
            f"{checkpoint_id}: the reference with a random {how} perturbation got the specific hint "
            f"{result.hint_id!r}\n{result.report()}"
        )
    assert rejected, f"{checkpoint_id}: no {how} perturbation of the reference was rejected"


# ------------------------------------------------------------------------- separation

def _separation_problem(a, b, tol: float) -> bool:
    """True in the grey zone: different within ``tol`` but the same within SEPARATION * tol."""
    from autograder.core import _same_outcome

    return not _same_outcome(a, b, tol) and _same_outcome(a, b, SEPARATION * tol)


@pytest.mark.parametrize("checkpoint_id", checkpoints())
def test_known_mistakes_stay_far_apart_on_every_case(checkpoint_id):
    cp = lookup(checkpoint_id)
    if not cp.fingerprints:
        pytest.skip("no known-mistake variants")
    tol = cp.match_tol
    for seed in (0, 7):
        for case in cp.cases(random.Random(f"{cp.id}/{seed}")):
            outputs = [("reference", digest(call(as_callable(cp, cp.reference), copy.deepcopy(case.args))))]
            outputs += [(hint, digest(call(as_callable(cp, v), copy.deepcopy(case.args)))) for hint, v in cp.fingerprints]
            for i, (hint_a, a) in enumerate(outputs):
                for hint_b, b in outputs[i + 1:]:
                    if hint_a == hint_b or isinstance(a, Raised) or isinstance(b, Raised):
                        continue
                    assert not _separation_problem(a, b, tol), (
                        f"{checkpoint_id}, case {case.label!r} (seed {seed}): {hint_a} and {hint_b} differ by less "
                        f"than {SEPARATION} x the fingerprint tolerance {tol:g}: another CPU could name either"
                    )


# ----------------------------------------------------------------------- gradient probe

def _detached(cp):
    """The reference with its output cut from autograd: right values, no gradient."""
    reference = cp.reference

    if cp.kind == "module":
        class Detached(reference):
            def forward(self, *args, **kwargs):
                with torch.no_grad():
                    return super().forward(*args, **kwargs)

        Detached.__name__ = reference.__name__
        return Detached

    def detached(*args):
        with torch.no_grad():
            return reference(*args)

    detached.__name__ = getattr(reference, "__name__", "detached")
    detached.__signature__ = __import__("inspect").signature(reference)
    return detached


PROBED = [c for c in checkpoints() if lookup(c).grad_probe]


@pytest.mark.parametrize("checkpoint_id", PROBED)
def test_the_gradient_probe_rejects_a_detached_reference(checkpoint_id):
    cp = lookup(checkpoint_id)
    result = run(cp, _detached(cp))
    assert not result.passed, f"{checkpoint_id} accepted the reference computed under torch.no_grad()"
    assert result.hint_id == "grad_detached", result.report()
