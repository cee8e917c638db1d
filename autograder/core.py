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
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from .compare import difference, digest, short
from .runners import RUNNERS

HIDDEN_SEED_OFFSET = 1_000_003


class CheckpointFailed(AssertionError):
    """A learner's answer was checked and is wrong; the message says why.

    An ``AssertionError`` so that nbgrader scores the test cell 0.
    """


class CheckUsageError(ValueError):
    """``check`` itself was called wrongly (unknown id, not a function, wrong signature)."""


@dataclass(frozen=True)
class Raised:
    """Expected or observed outcome "raised an exception of this type"."""

    type: type
    message: str = ""

    def __repr__(self) -> str:
        return f"raises {self.type.__name__}" + (f" ({self.message[:80]})" if self.message else "")


class Label(str):
    """A stand-in shown in reports instead of a large argument: printed without quotes."""

    def __repr__(self) -> str:
        return str(self)


@dataclass
class Case:
    """One call of the learner's function: ``fn(*args)``."""

    label: str
    args: tuple
    hint: str = "default"
    show: tuple | None = None  # how to print args in a report when they are large
    # Filled in by fixtures (a release without solutions/): the reference's output, and
    # the output of each fingerprint, so neither has to be computed.
    expected: Any = None
    has_expected: bool = False
    fingerprint_outputs: dict[str, Any] | None = None
    # False when several answers are right (a checkpoint whose compare accepts any valid
    # tie-break): a fixture, which can only compare with the reference's answer, skips it.
    unique_answer: bool = True


@dataclass
class Checkpoint:
    id: str
    title: str
    signature: str  # "merge(ids, pair, new_id)": the call a learner must support
    cases: Callable[[random.Random], list[Case]]
    reference: Callable[..., Any]
    hints: dict[str, str]
    # None if acceptable, else the problem, or (problem, hint id) when the check can tell
    compare: Callable[[Case, Any, Any], str | tuple[str, str] | None] | None = None
    diagnose: Callable[[Case, Any, Any], str | None] | None = None
    # Known mistakes as functions: one that reproduces the learner's output on every case
    # names the mistake exactly ("you merged the leftmost pair, not the lowest rank").
    fingerprints: list[tuple[str, Callable]] = field(default_factory=list)
    # (regex searched in "ExceptionType: message", hint): data, so fixtures can carry it.
    # r"bad escape \\p" means the learner used `re` instead of `regex`.
    raised_hints: list[tuple[str, str]] = field(default_factory=list)
    points: int = 1
    tol: float = 0.0
    # How close a known mistake's output must be to the learner's to name it: 0 (bits) tells
    # apart mistakes that agree within tol; a small tolerance recognises a mistake however the
    # learner ordered the arithmetic (chapter 06's optimiser and schedule).
    fingerprint_tol: float = 0.0
    # "function": the learner's object is called as fn(*args). Otherwise a runner from
    # runners.RUNNERS calls it: "module" (an nn.Module class; args are (init_args,
    # state_dict, forward_args): build, load the reference's state_dict, forward),
    # "train_steps" and "resume" (chapter 06: a training step or a save/restore pair driven
    # on the notebook's own Transformer; see the runners' docstrings).
    kind: str = "function"

    @property
    def params(self) -> list[str]:
        inside = self.signature[self.signature.index("(") + 1 : self.signature.rindex(")")]
        return [p.strip() for p in inside.split(",") if p.strip()]

    @property
    def function_name(self) -> str:
        return self.signature[: self.signature.index("(")]


@dataclass
class Result:
    checkpoint: str
    passed: bool
    summary: str
    hint_id: str | None = None
    cases_run: int = 0
    details: list[str] = field(default_factory=list)

    def report(self) -> str:
        mark = "✓" if self.passed else "✗"
        lines = [f"{mark} {self.checkpoint}: {self.summary}", *self.details]
        return "\n".join(lines)


# Mistakes any checkpoint can catch, whatever the chapter.
COMMON_HINTS = {
    "mutated_input": "Work on a copy (or build a new list): a function that edits its arguments in "
    "place changes data the caller still needs.",
    "return_type": "Return the type the docstring promises (a list, not a tuple or a generator; "
    "str, not bytes): compare the 'expected' and 'got' lines above.",
    "not_implemented": "Replace `raise NotImplementedError()` in the answer cell with your code.",
    "code_error": "Your code uses a name that does not exist here (a missing import, a typo, or a "
    "cell above that was not run); the line above shows where.",
    "raised": "Your function raised an exception on this input; the line above shows where. "
    "Try the same call in a cell of its own and print the intermediate values.",
}

REGISTRY: dict[str, Checkpoint] = {}


def register(checkpoint: Checkpoint) -> Checkpoint:
    if checkpoint.id in REGISTRY:
        raise ValueError(f"checkpoint {checkpoint.id} is defined twice")
    if "default" not in checkpoint.hints:
        raise ValueError(f"checkpoint {checkpoint.id} needs a 'default' hint")
    REGISTRY[checkpoint.id] = checkpoint
    return checkpoint


def registry() -> dict[str, Checkpoint]:
    """Every checkpoint by id: live (inputs generated here, expected outputs from
    ``solutions/``) in the course repository; in a release without ``solutions/``, the
    visible checkpoints stored as fixtures by ``python -m autograder fixtures``."""
    try:
        import solutions  # noqa: F401

        from . import checks  # noqa: F401  (registers every chapter's checkpoints)
    except ImportError:
        from .fixtures import load_registry

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


def _learner_frame(exc: BaseException) -> str:
    """Where in the learner's own code the exception came from (not deep inside a library)."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if "autograder" not in f.filename and "site-packages" not in f.filename]
    if not mine:
        return ""
    f = mine[-1]
    where = "your cell" if f.filename.startswith("<") or "ipykernel" in f.filename else f.filename
    code = f": {f.line.strip()}" if f.line else ""
    return f" (in {f.name}, {where}, line {f.lineno}{code})"


def as_callable(cp: "Checkpoint", fn: Callable) -> Callable:
    """The learner's object as a function of a case's args: itself, or wrapped in its runner."""
    if cp.kind == "function":
        return fn
    runner = RUNNERS[cp.kind]

    def run(*args):
        return runner(fn, *args)

    run.__name__ = getattr(fn, "__name__", cp.kind)
    return run


def call(fn: Callable, args: tuple) -> Any:
    """Call ``fn``; an exception becomes a :class:`Raised` value instead of propagating."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the learner's error is data to compare
        return Raised(type(exc), f"{exc}{_learner_frame(exc)}")


def outcome_difference(cp: Checkpoint, case: Case, expected: Any, got: Any) -> str | None:
    if isinstance(expected, Raised):
        if isinstance(got, Raised) and issubclass(got.type, expected.type):
            return None
        return f"expected it to raise {expected.type.__name__}, but it " + (
            f"raised {got.type.__name__}: {got.message}" if isinstance(got, Raised) else f"returned {short(got)}"
        )
    if isinstance(got, Raised):
        return f"it raised {got.type.__name__}: {got.message}"
    if cp.compare is not None:
        return cp.compare(case, expected, got)
    return difference(expected, got, cp.tol)


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


def _fingerprint(cp: Checkpoint, cases: list[Case], outputs: list[Any], fn: Callable) -> str | None:
    """The hint of the known mistake that reproduces the learner's output on every case."""
    outputs = outputs + [call(fn, copy.deepcopy(c.args)) for c in cases[len(outputs):]]
    outputs = [digest(got) for got in outputs]

    def variant_output(hint, variant, case):
        if case.fingerprint_outputs is not None:  # stored digested (fixtures.materialise)
            return case.fingerprint_outputs[hint]
        return digest(call(as_callable(cp, variant), copy.deepcopy(case.args)))

    for hint, variant in cp.fingerprints:
        # exact match: two mistakes that agree within tolerance are told apart by their bits
        if all(_same_outcome(variant_output(hint, variant, c), got, cp.fingerprint_tol) for c, got in zip(cases, outputs)):
            return hint
    return None


def _choose_hint(cp, case, expected, got, compare_hint, cases, outputs, fn) -> str:
    """Name the most likely mistake, from the most specific evidence to the least."""
    if compare_hint:
        return compare_hint
    if isinstance(got, Raised):
        for pattern, hint in cp.raised_hints:
            if re.search(pattern, f"{got.type.__name__}: {got.message}"):
                return hint
        if issubclass(got.type, (NameError, ImportError, AttributeError)):
            return "code_error"
        return case.hint if case.hint != "default" else "raised"
    if not isinstance(expected, Raised) and cp.compare is None and type(got) is not type(expected):
        if not (isinstance(expected, int) and isinstance(got, int)):
            return "return_type"
    if cp.fingerprints:
        hint = _fingerprint(cp, cases, outputs, fn)
        if hint:
            return hint
    if cp.diagnose is not None:
        hint = cp.diagnose(case, expected, got)
        if hint:
            return hint
    return case.hint


def run(cp: Checkpoint, fn: Callable, *, seed: int = 0, reference: Callable | None = None,
        probe: Callable | None = None) -> Result:
    """Check ``fn`` against the checkpoint's reference on every case; stop at the first failure."""
    validate_callable(cp, fn)
    fn = as_callable(cp, fn)
    reference = as_callable(cp, reference or cp.reference)
    cases = cp.cases(random.Random(f"{cp.id}/{seed}"))
    outputs: list[Any] = []
    for n, case in enumerate(cases, 1):
        expected = case.expected if case.has_expected else call(reference, copy.deepcopy(case.args))
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
        hint = _choose_hint(cp, case, expected, got, compare_hint, cases, outputs, fn)
        shown_args = case.show if case.show is not None else case.args
        details = [
            f"  called:   {cp.function_name}({', '.join(short(a, 70) for a in shown_args)})",
            f"  problem:  {problem}",
        ]
        if not isinstance(expected, Raised) and not isinstance(got, Raised) and cp.compare is None:
            details.insert(1, f"  expected: {short(expected)}\n  got:      {short(got)}")
        details.append(f"  hint:     {hint_text(cp, hint)}")
        return Result(cp.id, False, f"{case.label}.", hint, n, details)
    return Result(cp.id, True, f"{cp.title} ({len(cases)} cases)", None, len(cases))


# -------------------------------------------------------------------------- command

def add_arguments(parser) -> None:
    """``python -m autograder checkpoints`` takes no arguments."""


def main(args) -> int:
    for checkpoint_id, cp in sorted(registry().items()):
        print(f"{checkpoint_id:24s} {cp.points} pt  {cp.signature}")
    return 0
