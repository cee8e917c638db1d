"""What a checkpoint is: its declaration, as data and plain functions.

A :class:`Checkpoint` declares everything about one graded function: its cases (inputs, each
with the mistake it is built to expose), the reference, the hints, the known mistakes as
variants, the tolerances, the points and how the answer is called (``kind``, through
:mod:`autograder.runners`). Nothing else in the course restates these: the graded notebook
cell and its nbgrader points (``autograder.notebooks``), the release fixtures
(``autograder.fixtures``) and the checks (``autograder.core``) are derived from them.

Imports go one way: ``compare``, ``runners`` <- ``declarations`` <- ``fixtures`` <- ``core``
<- ``notebooks``, ``grading``, ``release``, ``progress``.
"""

from __future__ import annotations

import re
import textwrap
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from .compare import short
from .runners import RUNNERS

HIDDEN_SEED_OFFSET = 1_000_003
# Default tolerances (see Checkpoint.fingerprint_tol and grad_tol): far above the rounding
# differences between CPU kernel families (about 1e-7 relative in float32), far below the
# differences between distinct mistakes on the cases.
FINGERPRINT_TOL = 1e-5
GRAD_TOL = 1e-4
PROBED_CASES = 2


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
    fingerprint_outputs: list[Any] | None = None  # one per known mistake, in declaration order
    # False when several answers are right (a checkpoint whose compare accepts any valid
    # tie-break): a fixture, which can only compare with the reference's answer, skips it.
    unique_answer: bool = True
    # Run the gradient probe on this case (checkpoints with ``grad_probe``); when no case of
    # a checkpoint says so, the last PROBED_CASES cases with a value to differentiate are.
    probe: bool = False
    expected_probe: Any = None  # filled in by fixtures: the reference's gradients


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
    # How close a known mistake's output must be to the learner's to name it. Never 0 for
    # float outputs: another CPU computes other low-order bits. The cases are chosen so that
    # distinct mistakes differ by far more than this (tests/test_hints.py proves it), so it
    # recognises a mistake however the learner ordered the arithmetic. None: FINGERPRINT_TOL
    # or ``tol``, whichever is larger.
    fingerprint_tol: float | None = None
    # Trained through: after every case passes, the gradient probe (runners.run_grad_*)
    # backpropagates through the learner's answer and compares the gradients that reach each
    # floating-point argument (or each parameter of a module) with the reference's, within
    # ``grad_tol`` (None: GRAD_TOL or 10 * tol, whichever is larger).
    grad_probe: bool = False
    grad_tol: float | None = None
    # "function": the learner's object is called as fn(*args). Otherwise a runner from
    # runners.RUNNERS calls it: "module" (an nn.Module class; args are (init_args,
    # state_dict, forward_args): build, load the reference's state_dict, forward),
    # "tables" (a function of x and constant tables: RoPE; probed through x only),
    # "train_steps" and "resume" (chapter 06: a training step or a save/restore pair driven
    # on the notebook's own Transformer; see the runners' docstrings).
    kind: str = "function"
    # True: a float tensor of another float dtype than the reference's is wrong, where the
    # docstring promises one (the generic comparison accepts any float dtype for a float
    # tensor). Data, so fixtures carry it; the mismatch gets the hint "dtype" if declared.
    exact_dtype: bool = False

    @property
    def match_tol(self) -> float:
        return self.fingerprint_tol if self.fingerprint_tol is not None else max(FINGERPRINT_TOL, self.tol)

    @property
    def probe_tol(self) -> float:
        return self.grad_tol if self.grad_tol is not None else max(GRAD_TOL, 10 * self.tol)

    @property
    def params(self) -> list[str]:
        inside = self.signature[self.signature.index("(") + 1 : self.signature.rindex(")")]
        return [p.strip() for p in inside.split(",") if p.strip()]

    @property
    def function_name(self) -> str:
        return self.signature[: self.signature.index("(")]


REPORT_WIDTH = 100  # characters per line of a report before it wraps


@dataclass
class Result:
    checkpoint: str
    passed: bool
    summary: str
    hint_id: str | None = None
    cases_run: int = 0
    details: list[str] = field(default_factory=list)
    # what the hint rests on: "property", "raised", "fingerprint", "diagnosis", "none"
    evidence: str | None = None

    def report(self, width: int = REPORT_WIDTH) -> str:
        """The verdict as text: a ✓ line, or a ✗ line and the details, each ``label: value``
        line wrapped at ``width`` with its continuation lines (and the rows of a multi-row
        tensor) indented under the value."""
        mark = "✓" if self.passed else "✗"
        lines = [f"{mark} {self.checkpoint}: {self.summary}"]
        for detail in self.details:
            lines.extend(_aligned(line, width) for line in _labelled_lines(detail))
        return "\n".join(lines)


_LABEL = re.compile(r"\s*[a-z][a-z ]*:\s+")


def _labelled_lines(detail: str) -> list[str]:
    """Split a detail into its ``label: value`` lines, each with its continuation rows."""
    items: list[str] = []
    for row in detail.split("\n"):
        if not items or _LABEL.match(row):
            items.append(row)
        else:
            items[-1] += "\n" + row
    return items


def _aligned(detail: str, width: int) -> str:
    """One ``"  label:   value"`` line wrapped at ``width``: its continuation lines, and the
    further rows of a multi-row value (a tensor's repr, whose rows are indented relative to
    the value), start under the value."""
    found = _LABEL.match(detail)
    indent = " " * (len(found.group(0)) if found else 4)
    out = []
    for k, row in enumerate(detail.split("\n")):
        if k:
            row = indent + row
        if len(row) <= width:
            out.append(row)
        else:
            out.extend(textwrap.wrap(row, width=width, subsequent_indent=indent, break_long_words=False,
                                     break_on_hyphens=False))
    return "\n".join(out)


# Mistakes any checkpoint can catch, whatever the chapter.
COMMON_HINTS = {
    "mutated_input": "Work on a copy (or build a new list): a function that edits its arguments in "
    "place changes data the caller still needs.",
    "return_type": "Return the type the docstring promises: the lines above name the type expected and "
    "the type your function returned (a list and a tuple differ, and so do str and bytes).",
    "not_implemented": "Replace `raise NotImplementedError()` in the answer cell with your code.",
    "code_error": "Your code uses a name that does not exist here (a missing import, a typo, or a "
    "cell above that was not run); the line above shows where.",
    "raised": "Your function raised an exception on this input; the line above shows where. "
    "Try the same call in a cell of its own and print the intermediate values.",
    "grad_detached": "The values are right, but no gradient flows back to this input: part of the "
    "computation is cut from autograd (.detach(), .data, torch.no_grad(), .item(), .tolist(), numpy, "
    "or a new tensor built from Python numbers). Training would never update what sits behind it.",
    "grad_leak": "The values are right, but a gradient reaches an input that the reference keeps out of "
    "autograd (it is used under torch.no_grad() or detached there): training would change what must "
    "stay fixed.",
    "grad_differs": "The values are right, but the gradient with respect to this input differs from "
    "the reference's: a part of the computation is detached or replaced by a constant, so training "
    "would follow another direction. Build every step from torch operations on the inputs.",
    "grad_raised": "The values are right, but backpropagating through your function failed (the line "
    "above says why): typically an in-place operation (x += ..., x[...] = ..., .add_()) on a tensor "
    "autograd still needs. Write y = x + ... instead.",
}
# Hints that describe what the output shows, whatever the mistake behind it: never a wrong name.
GENERIC_HINTS = frozenset({"default", *COMMON_HINTS})

REGISTRY: dict[str, Checkpoint] = {}


def register(checkpoint: Checkpoint) -> Checkpoint:
    if checkpoint.id in REGISTRY:
        raise ValueError(f"checkpoint {checkpoint.id} is defined twice")
    if "default" not in checkpoint.hints:
        raise ValueError(f"checkpoint {checkpoint.id} needs a 'default' hint")
    REGISTRY[checkpoint.id] = checkpoint
    return checkpoint


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
    except KeyboardInterrupt:  # the learner stopping the kernel, not an answer
        raise
    except BaseException as exc:  # noqa: BLE001 - the learner's error (SystemExit too) is data to compare
        return Raised(type(exc), _exception_text(exc))


def _exception_text(exc: BaseException) -> str:
    """The exception's message and the learner's line; a learner's ``__str__`` may itself raise."""
    try:
        text = f"{exc}{_learner_frame(exc)}"
        return text if type(text) is str else str.__str__(text)
    except BaseException:  # noqa: BLE001
        return f"<a {type(exc).__name__} whose message could not be shown>"


def _probe_cases(cp: Checkpoint, cases: list[Case], expected: list[Any]) -> list[tuple[Case, Any]]:
    marked = [(c, e) for c, e in zip(cases, expected) if c.probe and not isinstance(e, Raised)]
    if marked:
        return marked
    valued = [(c, e) for c, e in zip(cases, expected) if not isinstance(e, Raised)]
    return valued[-PROBED_CASES:]


def probe_callable(cp: Checkpoint, fn: Callable) -> Callable:
    """``fn`` under its checkpoint's gradient probe: the gradients as plain data."""
    runner = RUNNERS[f"grad_{cp.kind}"]

    def run_probe(*args):
        return runner(fn, *args)

    return run_probe
