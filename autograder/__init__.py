"""The course's checkpoints: ``autograder.check("01.merge", merge)`` in a chapter notebook.

``check`` compares the learner's function with the reference implementation in
``solutions/`` on edge cases and seeded random inputs and shows the verdict: one green ✓
line, or a red ✗ block that says what was called, what differed and what the likely mistake
is (HTML in Jupyter, the same text without colour elsewhere).

Two modes, set explicitly by whoever runs the notebook, never guessed:

* ``study`` (the default, for learners): a ✗ is shown and the notebook goes on, so Run All
  reaches the end;
* ``grade`` (``COURSE_CHECK_MODE=grade``, set by the course's ``nbgrader_config.py`` for
  ``nbgrader autograde`` and ``validate``): a ✗ raises :class:`CheckpointFailed`, an
  ``AssertionError``, so nbgrader scores the cell 0. In Jupyter it is shown as its message
  alone, no traceback from inside the grader.

Hidden checks (``hidden=True``, only in the graded copies of the notebooks) always raise.
The grading command does not run these cells at all: it calls the learner's functions in a
sandbox (``autograder.grading``).
"""

from __future__ import annotations

import html
import os

from .core import CheckpointFailed, CheckUsageError, Result, lookup, run

__all__ = ["check", "checkpoints", "CheckpointFailed", "CheckUsageError", "Result"]

MODE_VARIABLE = "COURSE_CHECK_MODE"
MODES = ("study", "grade")


def mode() -> str:
    """``study`` (a ✗ is shown, the notebook goes on) or ``grade`` (a ✗ is an error)."""
    value = os.environ.get(MODE_VARIABLE, "study")
    if value not in MODES:
        raise CheckUsageError(
            f"{MODE_VARIABLE}={value!r} is not a mode: use 'study' (a failing check is shown and the "
            "notebook goes on) or 'grade' (a failing check is an error that scores 0)."
        )
    return value


def check(checkpoint_id: str, fn, *, hidden: bool = False, quiet: bool = False) -> None:
    """Check ``fn`` against checkpoint ``checkpoint_id`` and show ✓ or ✗.

    In ``grade`` mode, and always with ``hidden=True`` (the grader's own seed, so passing the
    visible cases by hard-coding them earns nothing), a ✗ raises ``CheckpointFailed``.
    ``quiet=True`` shows nothing on a pass. Returns nothing: the verdict is what is shown.
    """
    cp = lookup(checkpoint_id)
    grading = hidden or mode() == "grade"
    result = run(cp, fn, seed=_hidden_seed() if hidden else 0)
    if not hidden:
        from .progress import record

        record(cp.id, result.passed, result.summary)
    if not result.passed and grading:
        raise CheckpointFailed(result.report())
    if not (result.passed and quiet):
        show(result)


class Verdict:
    """A result as Jupyter shows it: HTML (green ✓ line, red ✗ block) with a plain-text twin."""

    def __init__(self, result: Result):
        self.result = result
        self.text = result.report()

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        first, _, rest = self.text.partition("\n")
        if self.result.passed:
            return f'<div style="color:#1a7f37;font-family:var(--jp-code-font-family,monospace)">{html.escape(first)}</div>'
        body = f"\n{html.escape(rest)}" if rest else ""
        return (
            '<div style="border-left:4px solid #cf222e;background:rgba(207,34,46,0.08);padding:4px 10px;margin:2px 0">'
            '<pre style="margin:0;white-space:pre-wrap;font-family:var(--jp-code-font-family,monospace);'
            'background:transparent">'
            f'<span style="color:#cf222e;font-weight:bold">{html.escape(first)}</span>{body}</pre></div>'
        )


def show(result: Result) -> None:
    """Display ``result``: rich in a Jupyter kernel, plain text anywhere else."""
    shell = _shell()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        from IPython.display import display

        display(Verdict(result))
    else:
        print(result.report())


def checkpoints() -> list[str]:
    """Every checkpoint id, in chapter order."""
    from .core import registry

    return sorted(registry())


def _hidden_seed() -> int:
    return int(os.environ.get("COURSE_HIDDEN_SEED", "20261123")) + 1


def _shell():
    try:
        return get_ipython()  # type: ignore[name-defined]  # noqa: F821
    except NameError:
        return None


def _install_notebook_display() -> None:
    """In IPython, show our errors as their message only, still as an error output."""
    shell = _shell()
    if shell is None:
        return

    def show_message_only(shell, etype, value, tb, tb_offset=None):
        stb = [str(value)]
        shell._showtraceback(etype, value, stb)  # an "error" output: nbgrader scores it 0
        return stb

    shell.set_custom_exc((CheckpointFailed, CheckUsageError), show_message_only)


_install_notebook_display()
