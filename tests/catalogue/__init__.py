"""Catalogues of wrong implementations: the mistakes learners really make.

Each entry is a function written the way a learner would write it, registered with the
checkpoint it answers and the hint id the checkpoint must give it. ``tests/test_catalogue.py``
proves every entry is rejected with exactly that hint. The catalogues live in ``tests/`` and
not in ``autograder/``: near-correct code is not something to hand to learners.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Mistake:
    checkpoint: str
    hint: str
    fn: Callable

    @property
    def name(self) -> str:
        return f"{self.checkpoint}:{self.fn.__name__}"


MISTAKES: list[Mistake] = []


def mistake(checkpoint: str, hint: str):
    """Register the decorated function as a wrong answer to ``checkpoint`` expecting ``hint``."""

    def register(fn: Callable) -> Callable:
        MISTAKES.append(Mistake(checkpoint, hint, fn))
        return fn

    return register


def load_all() -> list[Mistake]:
    """Every chapter's catalogue (``chNN_slug.py`` beside this file)."""
    import importlib
    import pkgutil

    for module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("ch")):
        importlib.import_module(f"{__name__}.{module}")
    return MISTAKES
