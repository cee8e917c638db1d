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
    from . import ch01_tokenizer  # noqa: F401

    return MISTAKES
