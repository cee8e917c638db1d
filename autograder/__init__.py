"""The course's checkpoints: ``autograder.check("01.merge", merge)`` in a chapter notebook.

``check`` compares the learner's function with the reference implementation in
``solutions/`` on edge cases and seeded random inputs, prints one ✓ line, or raises
:class:`CheckpointFailed` (an ``AssertionError``, so nbgrader scores the cell 0) whose
message says what was called, what differed and what the likely mistake is. In Jupyter the
failure is shown as that message alone: no traceback from inside the grader.
"""

from __future__ import annotations

from .core import CheckpointFailed, CheckUsageError, Result, lookup, run

__all__ = ["check", "checkpoints", "CheckpointFailed", "CheckUsageError", "Result"]


def check(checkpoint_id: str, fn, *, hidden: bool = False, quiet: bool = False) -> Result:
    """Check ``fn`` against checkpoint ``checkpoint_id``; print ✓ or raise ``CheckpointFailed``.

    ``hidden=True`` runs the grader's own seed (used by the hidden tests), so passing the
    visible cases by hard-coding them earns nothing.
    """
    cp = lookup(checkpoint_id)
    result = run(cp, fn, seed=_hidden_seed() if hidden else 0)
    if not hidden:
        from .progress import record

        record(cp.id, result.passed, result.summary)
    if not result.passed:
        raise CheckpointFailed(result.report())
    if not quiet:
        print(result.report())
    return result


def checkpoints() -> list[str]:
    """Every checkpoint id, in chapter order."""
    from .core import registry

    return sorted(registry())


def _hidden_seed() -> int:
    import os

    return int(os.environ.get("COURSE_HIDDEN_SEED", "20261123")) + 1


def _install_notebook_display() -> None:
    """In IPython, show our errors as their message only, still as an error output."""
    try:
        shell = get_ipython()  # type: ignore[name-defined]  # noqa: F821
    except NameError:
        return

    def show_message_only(shell, etype, value, tb, tb_offset=None):
        stb = [str(value)]
        shell._showtraceback(etype, value, stb)  # an "error" output: nbgrader scores it 0
        return stb

    shell.set_custom_exc((CheckpointFailed, CheckUsageError), show_message_only)


_install_notebook_display()
