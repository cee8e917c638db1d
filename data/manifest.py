"""The sha256 manifest of the course's data files: ``data/MANIFEST.json``.

Why a manifest?  Learners, CI and the autograder must all train on exactly
the same bytes.  The manifest records, for every data file the course relies
on, its size and sha256, so a silently changed, truncated or corrupted file is
caught before anyone wastes an hour training on it.

Format (stable, so diffs stay small): a JSON object mapping paths relative to
``data/`` in POSIX style ("corpus/train.txt") to ``{"bytes": N, "sha256": H}``,
keys sorted, 2-space indent, trailing newline.  Any file can be added (a
tokenizer, a model checkpoint, ...): the manifest does not care what it is.

Command line::

    python -m data.manifest                      # verify every entry
    python -m data.manifest --update FILE ...    # add or refresh entries
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Iterable

DATA_DIR = Path(__file__).resolve().parent
MANIFEST_PATH = DATA_DIR / "MANIFEST.json"
REBUILD_HINT = "run `python -m data.build` to regenerate"

PathLike = str | os.PathLike


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks so big checkpoints fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_key(path: PathLike, data_dir: PathLike = DATA_DIR) -> str:
    """The manifest key of ``path``: its location relative to ``data_dir``, POSIX style.

    ``path`` may be absolute, relative to the current directory (for example
    "data/corpus/train.txt" from the repository root) or already a key
    relative to ``data_dir`` ("corpus/train.txt").
    """
    data_dir = Path(data_dir).resolve()
    candidate = Path(path)
    if not candidate.is_absolute():
        from_cwd = Path.cwd() / candidate
        inside_data = from_cwd.resolve().is_relative_to(data_dir)
        candidate = from_cwd if from_cwd.exists() and inside_data else data_dir / candidate
    try:
        return candidate.resolve().relative_to(data_dir).as_posix()
    except ValueError:
        raise ValueError(f"{path} is not inside {data_dir}; the manifest only tracks files under data/") from None


def load_manifest(manifest_path: PathLike = MANIFEST_PATH) -> dict:
    """The manifest as a dict ({} if the file does not exist yet)."""
    path = Path(manifest_path)
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def save_manifest(manifest: dict, manifest_path: PathLike = MANIFEST_PATH) -> None:
    """Write the manifest in its canonical format, atomically (temp file + rename)."""
    path = Path(manifest_path)
    text = json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)


def file_entry(path: PathLike) -> dict:
    """The manifest entry for one file: its size in bytes and its sha256."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}


def update_manifest(
    paths: Iterable[PathLike],
    *,
    data_dir: PathLike = DATA_DIR,
    manifest_path: PathLike | None = None,
) -> dict:
    """Add or refresh the entries of ``paths``; other entries are kept as they are.

    Returns the updated manifest (which is also written to disk).
    """
    manifest_path = Path(manifest_path) if manifest_path else Path(data_dir) / "MANIFEST.json"
    manifest = load_manifest(manifest_path)
    for path in paths:
        key = manifest_key(path, data_dir)
        manifest[key] = file_entry(Path(data_dir) / key)
    save_manifest(manifest, manifest_path)
    return manifest


def verify(
    paths: Iterable[PathLike] | None = None,
    *,
    data_dir: PathLike = DATA_DIR,
    manifest_path: PathLike | None = None,
) -> list[str]:
    """Check files against the manifest; return a list of problems ([] means all good).

    ``paths=None`` checks every entry of the manifest.  Files are looked up
    under ``data_dir`` (tests point it at a copy), while the expected values
    come from ``manifest_path`` (default: ``data_dir/MANIFEST.json``).
    """
    manifest_path = Path(manifest_path) if manifest_path else Path(data_dir) / "MANIFEST.json"
    manifest = load_manifest(manifest_path)
    if not manifest:
        return [f"manifest {manifest_path} is missing or empty; {REBUILD_HINT}"]
    keys = sorted(manifest) if paths is None else [manifest_key(p, data_dir) for p in paths]
    problems = []
    for key in keys:
        problem = check_entry(key, manifest.get(key), Path(data_dir) / key)
        if problem:
            problems.append(problem)
    return problems


def check_entry(key: str, expected: dict | None, path: Path) -> str | None:
    """One human-readable problem for one file, or None if it matches its entry."""
    if expected is None:
        return f"{key}: not listed in the manifest; add it with `python -m data.manifest --update data/{key}`"
    if not path.exists():
        return f"{key}: file is missing; {REBUILD_HINT}"
    size = path.stat().st_size
    if size != expected["bytes"]:
        return f"{key}: size is {size:,} bytes but the manifest says {expected['bytes']:,}; {REBUILD_HINT}"
    actual = sha256_file(path)
    if actual != expected["sha256"]:
        return (f"{key}: sha256 is {actual} but the manifest says {expected['sha256']} "
                f"(file changed or corrupted); {REBUILD_HINT}")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.manifest", description=__doc__.split("\n")[0])
    parser.add_argument("--update", nargs="+", metavar="FILE", help="add or refresh entries for these files")
    args = parser.parse_args(argv)
    if args.update:
        update_manifest(args.update)
        print(f"updated {MANIFEST_PATH} ({len(args.update)} file(s))")
        return 0
    problems = verify()
    for problem in problems:
        print("PROBLEM:", problem, file=sys.stderr)
    if not problems:
        print(f"all {len(load_manifest())} manifest entries verified")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
