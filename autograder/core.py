"""Checkpoints: what a learner's function is compared against, and how a mismatch is explained.

A :class:`Checkpoint` owns

* ``cases(rng)``: the inputs, edge cases first, each with a label and the hint to show when
  it fails, then seeded random cases;
* ``reference``: the function from ``solutions/`` whose output is the expected one;
* ``compare(case, expected, got)``: ``None`` when ``got`` is acceptable, else what differs.
  Exact equality by default; a checkpoint may accept any valid answer (a property);
* ``diagnose(case, expected, got)``: optionally names the mistake behind a mismatch by
  recognising its fingerprint, overriding the case's hint.

:func:`run` calls the learner's function on copies of the inputs (so mutating them is
caught, not inherited by the next case) and stops at the first failing case: the learner
fixes one thing at a time. Everything the learner sees is a :class:`Result`.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import random
import re
from typing import Any, Callable

from .compare import difference, digest, dtype_difference, short
from .declarations import (  # noqa: F401  (re-exported: checks modules import them from here)
    COMMON_HINTS, FINGERPRINT_TOL, GENERIC_HINTS, GRAD_TOL, HIDDEN_SEED_OFFSET, PROBED_CASES, REGISTRY,
    Case, Checkpoint, CheckpointFailed, CheckUsageError, Label, Raised, Result, _exception_text, _learner_frame,
    _probe_cases,
    as_callable, call, probe_callable, register,
)
from .fixtures import load_registry

def registry() -> dict[str, Checkpoint]:
    """Every checkpoint by id: live (inputs generated here, expected outputs from
    ``solutions/``) in the course repository; in a release without ``solutions/``, the
    visible checkpoints stored as fixtures by ``python -m autograder fixtures``."""
    try:
        import solutions  # noqa: F401

        from . import checks  # noqa: F401  (registers every chapter's checkpoints)
    except ImportError:
        return load_registry()
    return REGISTRY


def lookup(checkpoint_id: Any) -> Checkpoint:
    checkpoints = registry()

    if not isinstance(checkpoint_id, str):
        raise CheckUsageError(
            f"the first argument of check() is a checkpoint id such as \"01.merge\", "
            f"not {short(checkpoint_id, 60)}; autograder.checkpoints() lists them all."
        )
    if checkpoint_id not in checkpoints:
        near = difflib.get_close_matches(checkpoint_id, list(checkpoints), n=3, cutoff=0.5)
        also = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise CheckUsageError(
            f"there is no checkpoint {checkpoint_id!r}.{also} "
            "autograder.checkpoints() lists them all."
        )
    return checkpoints[checkpoint_id]


def validate_callable(cp: Checkpoint, fn: Any) -> None:
    """Refuse what cannot be called the way the checkpoint calls it, naming the fix."""
    name = cp.function_name
    if not callable(fn):
        called = " (did you call it? pass the function itself, without parentheses)" if fn is None or not isinstance(fn, type) else ""
        raise CheckUsageError(
            f"check({cp.id!r}, ...) needs your function, as in check({cp.id!r}, {name}); "
            f"got {type(fn).__name__} {short(fn, 60)}{called}."
        )
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins and C functions: nothing to inspect, let the call decide
    try:
        sig.bind(*cp.params)
    except TypeError:
        raise CheckUsageError(
            f"{cp.id} calls your function as {cp.signature}, with {len(cp.params)} "
            f"argument(s), but yours is {getattr(fn, '__name__', name)}{sig}. "
            f"Keep the signature given in the notebook: def {cp.signature}."
        ) from None


def outcome_difference(cp: Checkpoint, case: Case, expected: Any, got: Any) -> str | None:
    if isinstance(expected, Raised):
        if isinstance(got, Raised) and issubclass(got.type, expected.type):
            return None
        return f"expected it to raise {expected.type.__name__}, but it " + (
            f"raised {got.type.__name__}: {got.message}" if isinstance(got, Raised) else f"returned {short(got)}"
        )
    if isinstance(got, Raised):
        return f"it raised {got.type.__name__}: {got.message}"
    try:  # got is a learner's object: comparing it may raise (a sparse or meta tensor, an int past float's range)
        if cp.compare is not None:
            return cp.compare(case, expected, got)
        problem = difference(expected, got, cp.tol)
        if problem is None and cp.exact_dtype:
            problem = dtype_difference(expected, got)
            if problem is not None and "dtype" in cp.hints:
                return problem, "dtype"
        return problem
    except Exception as exc:  # noqa: BLE001 - never a pass, never a crash of the check
        return f"its result could not be compared with the expected one ({type(exc).__name__}: {_exception_text(exc)})"


def hint_text(cp: Checkpoint, hint: str) -> str:
    return cp.hints.get(hint) or COMMON_HINTS.get(hint) or cp.hints["default"]


def _changed(before: tuple, after: tuple) -> bool:
    """Did the call modify its arguments in place (tensors compared exactly)?"""
    try:
        return difference(before, after) is not None
    except Exception:  # noqa: BLE001 - arguments we cannot compare are not reported
        return False


def _same_outcome(a: Any, b: Any, tol: float = 0.0) -> bool:
    if isinstance(a, Raised) or isinstance(b, Raised):
        return isinstance(a, Raised) and isinstance(b, Raised) and a.type is b.type
    try:
        return difference(a, b, tol) is None
    except Exception:  # noqa: BLE001 - incomparable outputs are simply different
        return False


def _variant_output(cp: Checkpoint, index: int, variant: Callable | None, case: Case) -> Any:
    """Known mistake number ``index``'s output on ``case``, digested (stored so by fixtures)."""
    if case.fingerprint_outputs is not None:
        return case.fingerprint_outputs[index]
    return digest(call(as_callable(cp, variant), copy.deepcopy(case.args)))


def _is_wrong_on(cp: Checkpoint, case: Case, expected: Any, variant_out: Any) -> bool:
    """Is the known mistake's output on this case one the checkpoint rejects? A variant that
    happens to be right on a case is no evidence for its mistake there."""
    if isinstance(expected, Raised) or isinstance(variant_out, Raised):
        return not _same_outcome(expected, variant_out)
    return not _same_outcome(digest(expected), variant_out, cp.tol)


def _known_mistake(cp: Checkpoint, cases: list[Case], failing: int, outputs: list[Any],
                   expecteds: list[Any], fn: Callable, reference: Callable) -> str | None:
    """The hint of a known mistake the learner's output shows: one whose output is wrong on
    the failing case and that the learner's output matches (within ``match_tol``) on EVERY
    case where that mistake shows, the case's own mistake first. A learner with this mistake
    and another one elsewhere is still told about this one; an output that only coincides
    with a mistake on one case is not."""
    outputs = outputs + [call(fn, copy.deepcopy(c.args)) for c in cases[len(outputs):]]
    outputs = [digest(got) for got in outputs]
    expecteds = expecteds + [c.expected if c.has_expected else call(reference, copy.deepcopy(c.args))
                             for c in cases[len(expecteds):]]
    ordered = sorted(enumerate(cp.fingerprints), key=lambda item: item[1][0] != cases[failing].hint)
    partial = None
    for index, (hint, variant) in ordered:
        variant_outputs = [_variant_output(cp, index, variant, case) for case in cases]
        if not _is_wrong_on(cp, cases[failing], expecteds[failing], variant_outputs[failing]):
            continue  # right on the failing case: it does not explain this failure
        if all(_same_outcome(out, got, cp.match_tol) for out, got in zip(variant_outputs, outputs)):
            return hint  # the whole output, on every case: the strongest evidence
        shows = [(out, got) for case, want, out, got in zip(cases, expecteds, variant_outputs, outputs)
                 if _is_wrong_on(cp, case, want, out)]
        if partial is None and all(_same_outcome(out, got, cp.match_tol) for out, got in shows):
            partial = hint  # this mistake, and something else where it does not show
    return partial


def _choose_hint(cp, n, expected, got, compare_hint, cases, outputs, expecteds, fn, reference) -> tuple[str, str]:
    """Name a mistake only on evidence in the learner's output; otherwise a generic hint.

    Returns ``(hint id, evidence)``. Evidence, from the strongest: a property of the output
    that the checkpoint's ``compare`` recognised ("property"); the exception raised
    ("raised"); the wrong return type ("property"); a known mistake that reproduces the
    output on every case, or on this case, the case's own mistake first ("fingerprint");
    ``diagnose`` ("diagnosis"); for a case that expects an exception, the fact that none or
    another was raised ("property"). Without evidence the hint is ``default`` ("none"): the
    report says what differed and gives the checkpoint's recipe.
    """
    case = cases[n]
    if compare_hint:
        return compare_hint, "property"
    if isinstance(got, Raised):
        for pattern, hint in cp.raised_hints:
            if re.search(pattern, f"{got.type.__name__}: {got.message}"):
                return hint, "raised"
        if issubclass(got.type, (NameError, ImportError, AttributeError)):
            return "code_error", "raised"
        if isinstance(expected, Raised) and case.hint != "default":
            return case.hint, "property"  # the case is about which error to raise: it raised another
        return "raised", "raised"
    if not isinstance(expected, Raised) and cp.compare is None and type(got) is not type(expected):
        if not (isinstance(expected, int) and isinstance(got, int)):
            return "return_type", "property"
    if cp.fingerprints:
        hint = _known_mistake(cp, cases, n, outputs, expecteds, fn, reference)
        if hint:
            return hint, "fingerprint"
    if cp.diagnose is not None:
        try:
            hint = cp.diagnose(case, expected, got)
        except Exception:  # noqa: BLE001 - a learner's object the diagnosis cannot read: no named mistake
            hint = None
        if hint:
            return hint, "diagnosis"
    if isinstance(expected, Raised):
        return case.hint, "property"  # it returned a value where the case's error was due
    return "default", "none"


def _zero_or_none(g: Any) -> bool:
    if g is None:
        return True
    if not hasattr(g, "abs"):
        return False
    return g.numel() == 0 or float(g.detach().double().abs().max()) == 0.0


def _gradient_pairs(name: str, expected: Any, got: Any):
    """``(name, expected, got)`` for every gradient in a probe's (nested) result."""
    if isinstance(expected, dict):
        got = got if isinstance(got, dict) else {}
        for key, e in expected.items():
            yield from _gradient_pairs(f"{name}[{key!r}]" if name else str(key), e, got.get(key))
    elif isinstance(expected, (list, tuple)):
        got = got if isinstance(got, (list, tuple)) else []
        for i, e in enumerate(expected):
            yield from _gradient_pairs(f"{name}[{i}]", e, got[i] if i < len(got) else None)
    else:
        yield name, expected, got


def gradient_difference(cp: Checkpoint, expected: Any, got: Any) -> tuple[str, str] | None:
    """``None`` if the gradients agree; else ``(problem, hint id)``. ``expected``/``got``: what
    a gradient probe returns, a list (per argument, nested for a list or dict argument) or a
    dict (per parameter) of tensors or ``None``."""
    if isinstance(got, Raised):
        return f"backpropagating through it raised {got.type.__name__}: {got.message}", "grad_raised"
    if isinstance(expected, list):
        names = [*cp.params, *(f"argument {i}" for i in range(len(cp.params), len(expected)))]
        got = got if isinstance(got, list) else []
        pairs = [pair for i, e in enumerate(expected)
                 for pair in _gradient_pairs(names[i], e, got[i] if i < len(got) else None)]
    else:
        pairs = list(_gradient_pairs("", expected, got))
    for name, e, g in pairs:
        if _zero_or_none(e) and _zero_or_none(g):
            continue
        if _zero_or_none(g):
            return f"no gradient reaches {name}", "grad_detached"
        if _zero_or_none(e):
            return f"a gradient reaches {name}, which the reference keeps out of autograd", "grad_leak"
        problem = difference(e, g, cp.probe_tol)
        if problem is not None:
            return f"the gradient with respect to {name} differs: {problem}", "grad_differs"
    return None


def run(cp: Checkpoint, fn: Callable, *, seed: int = 0, reference: Callable | None = None,
        probe: Callable | None = None, wrapped: bool = False) -> Result:
    """Check ``fn`` against the checkpoint's reference on every case; stop at the first failure.

    ``wrapped=True``: ``fn`` already runs the learner's object the checkpoint's way (the
    grader's proxy to a sandboxed worker), and ``probe`` runs its gradient probe.
    """
    validate_callable(cp, fn)
    learner = fn
    fn = fn if wrapped else as_callable(cp, fn)
    reference_fn = reference or cp.reference
    reference = as_callable(cp, reference_fn)
    cases = cp.cases(random.Random(f"{cp.id}/{seed}"))
    outputs: list[Any] = []
    expecteds: list[Any] = []
    for n, case in enumerate(cases, 1):
        expected = case.expected if case.has_expected else call(reference, copy.deepcopy(case.args))
        expecteds.append(expected)
        learner_args = copy.deepcopy(case.args)
        got = call(fn, learner_args)
        outputs.append(got)
        if isinstance(got, Raised) and issubclass(got.type, NotImplementedError):
            return Result(
                cp.id, False, f"{cp.function_name} is not implemented yet.", "not_implemented", n,
                ["  Replace `raise NotImplementedError()` in its cell with your code, run that cell, then this one."],
            )
        problem, compare_hint = outcome_difference(cp, case, expected, got), None
        if isinstance(problem, tuple):
            problem, compare_hint = problem
        if problem is None and not isinstance(expected, Raised) and _changed(case.args, learner_args):
            problem, compare_hint = "it changed its input arguments in place", "mutated_input"
        if problem is None:
            continue
        hint, evidence = _choose_hint(cp, n - 1, expected, got, compare_hint, cases, outputs, expecteds, fn, reference)
        shown_args = case.show if case.show is not None else case.args
        details = [
            f"  called:   {cp.function_name}({', '.join(short(a, 70) for a in shown_args)})",
            f"  problem:  {problem}",
        ]
        if not isinstance(expected, Raised) and not isinstance(got, Raised) and cp.compare is None:
            details.insert(1, f"  expected: {short(expected)}\n  got:      {short(got)}")
        details.append(f"  hint:     {hint_text(cp, hint)}")
        return Result(cp.id, False, f"{case.label}.", hint, n, details, evidence)
    if cp.grad_probe and (probe is not None or not wrapped):
        probe = probe or probe_callable(cp, learner)
        for case, _ in _probe_cases(cp, cases, expecteds):
            want = case.expected_probe if case.has_expected else call(probe_callable(cp, reference_fn), copy.deepcopy(case.args))
            found = gradient_difference(cp, want, call(probe, copy.deepcopy(case.args)))
            if found is None:
                continue
            problem, hint = found
            shown_args = case.show if case.show is not None else case.args
            details = [
                f"  called:   {cp.function_name}({', '.join(short(a, 70) for a in shown_args)}), then backpropagated",
                f"  problem:  {problem}",
                f"  hint:     {hint_text(cp, hint)}",
            ]
            return Result(cp.id, False, f"{case.label}: right values, wrong gradients.", hint, len(cases), details, "property")
    return Result(cp.id, True, f"{cp.title} ({len(cases)} cases)", None, len(cases))


# -------------------------------------------------------------------------- command

def add_arguments(parser) -> None:
    """``python -m autograder checkpoints`` takes no arguments."""


def main(args) -> int:
    for checkpoint_id, cp in sorted(registry().items()):
        print(f"{checkpoint_id:24s} {cp.points} pt  {cp.signature}")
    return 0
