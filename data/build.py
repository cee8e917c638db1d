"""Build the course's data files and keep ``data/MANIFEST.json`` in step with them.

Run from the repository root::

    python -m data.build            # regenerate everything, update the manifest
    python -m data.build --check    # rebuild into a temp dir; committed files must be identical
    python -m data.build --verify   # only compare files with the manifest (fast)

Why both ``--check`` and ``--verify``?  ``--verify`` proves the files on disk
are the ones the manifest describes (catches corruption, partial checkouts).
``--check`` additionally proves the generator still produces exactly those
bytes (catches a generator edited without regenerating, or a Python version
whose ``random`` module behaves differently).

Every build step must be deterministic: same code, same bytes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from data import corpus, instructions, preferences
from data.manifest import DATA_DIR, REBUILD_HINT, update_manifest, verify


@dataclass(frozen=True)
class BuildStep:
    """One reproducible step: ``run(out_dir)`` writes ``outputs`` under ``out_dir``.

    ``out_dir`` plays the role of ``data/``: the real one for a build, a
    temporary copy for ``--check``.  Steps run in order into the same
    directory, so a step may read what an earlier step wrote there.
    ``outputs`` are manifest keys (paths relative to ``data/``).
    """

    name: str
    outputs: tuple[str, ...]
    run: Callable[[Path], None]


def build_corpus(out_dir: Path) -> None:
    """The synthetic story corpus: corpus/train.txt and corpus/val.txt."""
    corpus.write_corpus(out_dir / "corpus")


def build_tokenizer(out_dir: Path) -> None:
    """The course tokenizer: chapter 01's reference BPE trained on the training stories.

    4,096 ids: 4,092 learned ranks and the four special tokens. Reads the corpus from
    ``out_dir`` so that ``--check`` rebuilds it from a freshly generated corpus.
    """
    from solutions.tokenizer import COURSE_SPECIAL_TOKENS, BPETokenizer

    text = (out_dir / "corpus" / "train.txt").read_text(encoding="utf-8")
    tokenizer = BPETokenizer.train(text, 4096, special_tokens=COURSE_SPECIAL_TOKENS)
    (out_dir / "tokenizer").mkdir(parents=True, exist_ok=True)
    tokenizer.save(out_dir / "tokenizer" / "course_bpe.tiktoken")


def build_instructions(out_dir: Path) -> None:
    """Chapter 08's instruction conversations: instructions/{train,val,test}.jsonl."""
    instructions.write_instructions(out_dir / "instructions")


def build_preferences(out_dir: Path) -> None:
    """Chapters 10–12's preference pairs with their gold judge's scores: preferences/{train,val,test}.jsonl."""
    preferences.write_preferences(out_dir / "preferences")


# Build steps, in the order they run. A step reads its inputs from the directory it is
# given (not from DATA_DIR), so that ``--check`` rebuilds everything from scratch.
BUILD_STEPS: list[BuildStep] = [
    BuildStep("synthetic story corpus", ("corpus/train.txt", "corpus/val.txt"), build_corpus),
    BuildStep(
        "course tokenizer (byte-level BPE, 4,096 ids)",
        ("tokenizer/course_bpe.tiktoken", "tokenizer/course_bpe.tiktoken.json"),
        build_tokenizer,
    ),
    BuildStep("instruction conversations (chapter 08)",
              tuple(f"instructions/{split}.jsonl" for split in instructions.SPLITS), build_instructions),
    BuildStep("preference pairs with a gold judge (chapters 10-12)",
              tuple(f"preferences/{split}.jsonl" for split in preferences.SPLITS), build_preferences),
]


def all_outputs(steps: list[BuildStep] = BUILD_STEPS) -> list[str]:
    return [output for step in steps for output in step.outputs]


def run_steps(out_dir: Path, steps: list[BuildStep] = BUILD_STEPS) -> None:
    """Run every step into ``out_dir``, printing how long each took."""
    for step in steps:
        start = time.perf_counter()
        step.run(out_dir)
        print(f"  {step.name}: {time.perf_counter() - start:.1f} s")


def build(steps: list[BuildStep] = BUILD_STEPS) -> None:
    """Regenerate all outputs in data/ and refresh their manifest entries."""
    print(f"building into {DATA_DIR}")
    run_steps(DATA_DIR, steps)
    update_manifest(DATA_DIR / key for key in all_outputs(steps))
    for key in all_outputs(steps):
        print(f"  {key}: {(DATA_DIR / key).stat().st_size:,} bytes")
    print("manifest updated: data/MANIFEST.json")


def first_difference(a: bytes, b: bytes) -> int:
    """Index of the first differing byte (or the shorter length)."""
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return min(len(a), len(b))


def compare_with_fresh_build(fresh_dir: Path, steps: list[BuildStep] = BUILD_STEPS) -> list[str]:
    """Problems where the committed outputs differ from a fresh build in ``fresh_dir``."""
    problems = []
    for key in all_outputs(steps):
        committed_path, fresh = DATA_DIR / key, (fresh_dir / key).read_bytes()
        if not committed_path.exists():
            problems.append(f"{key}: missing; {REBUILD_HINT}")
            continue
        committed = committed_path.read_bytes()
        if committed != fresh:
            at = first_difference(committed, fresh)
            problems.append(f"{key}: differs from a fresh build (committed {len(committed):,} bytes, "
                            f"fresh {len(fresh):,} bytes, first difference at byte {at:,}); {REBUILD_HINT}")
    return problems


def check(steps: list[BuildStep] = BUILD_STEPS) -> list[str]:
    """Rebuild into a temporary directory and compare; also verify the manifest."""
    with tempfile.TemporaryDirectory(prefix="data-check-") as tmp:
        print(f"rebuilding into {tmp}")
        run_steps(Path(tmp), steps)
        problems = compare_with_fresh_build(Path(tmp), steps)
    return problems + verify(all_outputs(steps))


def report(problems: list[str], success: str) -> int:
    """Print problems (or the success line) and return the exit code."""
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found.", file=sys.stderr)
        return 1
    print(success)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.build", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="rebuild into a temp dir and require committed files to be byte-identical")
    mode.add_argument("--verify", action="store_true", help="only compare files with data/MANIFEST.json")
    args = parser.parse_args(argv)
    if args.verify:
        return report(verify(), "OK: every file matches data/MANIFEST.json")
    if args.check:
        return report(check(), "OK: committed data files are identical to a fresh build and match the manifest")
    build()
    return 0


if __name__ == "__main__":
    sys.exit(main())
