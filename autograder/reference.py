"""Where the expected answers come from: the reference package ``solutions/``.

Checks ask for ``reference("solutions.tokenizer", "merge")`` instead of importing
``solutions`` themselves, so this one function decides where reference behaviour lives.
"""

from __future__ import annotations

import importlib
from typing import Any


def reference(module: str, name: str) -> Any:
    """The object ``name`` of the reference module ``module``, imported on first use."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise RuntimeError(
            f"the reference implementation {module}.{name} is not importable ({exc}). "
            "Run the course from the repository root, or install it with `pip install -e .`."
        ) from None
