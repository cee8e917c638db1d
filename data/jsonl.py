"""Generated data sets stored as JSON Lines, one file per split (chapter 08's conversations,
chapters 10–12's preference pairs): the same file layout, the same loading and the same errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def check_split(split: str, splits: dict[str, int]) -> None:
    if split not in splits:
        raise ValueError(f"split must be one of {sorted(splits)}, not {split!r}")


def write_splits(out_dir: Path, splits: dict[str, int], generate: Callable[[str], list[dict]]) -> dict[str, Path]:
    """Write ``{split}.jsonl`` for every split: one record per line, keys sorted, UTF-8, "\\n"
    (the same bytes on every platform). Returns ``{split: path}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in splits:
        path = out_dir / f"{split}.jsonl"
        lines = [json.dumps(record, ensure_ascii=False, sort_keys=True) for record in generate(split)]
        path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
        paths[split] = path
    return paths


def read_split(directory: Path, splits: dict[str, int], split: str, count: int | None = None) -> list[dict]:
    """The records of ``split`` as :func:`write_splits` wrote them (the first ``count``)."""
    check_split(split, splits)
    path = directory / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; regenerate the course data with `python -m data.build`.")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    return [json.loads(line) for line in lines[:count]]
