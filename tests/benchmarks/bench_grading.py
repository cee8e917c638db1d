"""Benchmark: what the bubblewrap sandbox costs the grade command, measured side by side in one run.

Run from the repository root (with ``bwrap`` installed):
python -m tests.benchmarks.bench_grading [--chapter 01_tokenizer] [--parallel 50] [--repeats 3]

Grades the chapter's source notebook (every checkpoint passes) once, then ``--parallel``
copies of it at once over all cores (``--jobs`` default), each way alternately:

* **sandboxed**: each checkpoint's worker in its own namespaces under bubblewrap (the default);
* **plain processes**: ``--unsafe-no-sandbox``, the same worker as a plain child process, as
  the grader ran before the sandbox.

Prints the median wall-clock time of each and their ratio (sandboxed / plain). On a shared
machine run it when nothing else is: other processes' load shows up in both columns, but
not evenly.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from autograder.grading import grade_many
from autograder.notebooks import source_path
from autograder.sandbox import Limits, sandbox_problem, unavailable_message


def timed(paths: list[Path], limits: Limits) -> float:
    start = time.perf_counter()
    results = grade_many(paths, seed=0, limits=limits, progress=False)
    seconds = time.perf_counter() - start
    assert all(not r.error and r.score == r.max_score > 0 for r in results), [r.error for r in results]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapter", default="01_tokenizer")
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    problem = sandbox_problem()
    if problem:
        raise SystemExit(unavailable_message(problem))
    with tempfile.TemporaryDirectory() as folder:
        copies = []
        for i in range(args.parallel):
            target = Path(folder) / f"s{i:03d}" / f"{args.chapter}.ipynb"
            target.parent.mkdir()
            shutil.copy(source_path(args.chapter), target)
            copies.append(target)
        ways = {"sandboxed": Limits(), "plain processes": Limits(unsafe_no_sandbox=True)}
        print(f"{args.chapter}, source notebook (every checkpoint passes), median of {args.repeats}")
        print(f"{'':28s}{'sandboxed':>12s}{'plain':>12s}{'ratio':>8s}")
        for label, paths, repeats in (("one submission", copies[:1], args.repeats),
                                      (f"{args.parallel} in parallel", copies, max(1, args.repeats - 1))):
            times = {way: [] for way in ways}
            for _ in range(repeats):
                for way, limits in ways.items():  # alternately, so that drifting load hits both
                    times[way].append(timed(paths, limits))
            a, b = (statistics.median(times[way]) for way in ways)
            print(f"{label:28s}{a:11.2f}s{b:11.2f}s{a / b:7.2f}x")


if __name__ == "__main__":
    main()
