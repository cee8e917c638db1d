"""``python -m autograder grade``: grade submitted notebooks, each checkpoint in a sandbox.

For every checkpoint of the notebook's chapter:

1. a fresh sandboxed worker (:mod:`autograder.sandbox`) runs the chapter's trusted preamble
   (taken from the source notebook, not the submission) and the learner's answer cells and
   added cells, never the submission's test or demo cells;
2. the grader generates inputs with a secret seed, sends them to the worker, and gets the
   learner's outputs back as plain data;
3. the grader compares them with ``solutions/`` itself, with the checkpoint's own hints.

So monkeypatching ``torch.allclose`` or the course's checks changes nothing (they are not
in the worker), hard-coded visible answers fail on the secret inputs, and a crash, an exit,
an infinite loop or a 30 GB allocation costs that checkpoint only.
"""

from __future__ import annotations

import builtins
import csv
import json
import os
import re
import secrets
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from . import core
from .notebooks import chapters, source_path
from .sandbox import Limits, SandboxError, Worker

HIDDEN_TESTS = re.compile(r"\n?### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS\n?", re.S)
CHECK_CALL = re.compile(r'autograder\.check\(\s*"([^"]+)"\s*,\s*([A-Za-z_][A-Za-z0-9_]*)')


@dataclass
class CheckpointGrade:
    checkpoint: str
    points: float
    max_points: float
    verdict: str  # pass, fail, missing, timeout, crashed, memory, flagged
    message: str = ""
    hint: str = ""
    seconds: float = 0.0
    output_dropped: int = 0  # printed characters beyond what the report keeps


@dataclass
class SubmissionGrade:
    notebook: str
    chapter: str | None
    seed: int
    checkpoints: list[CheckpointGrade] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    output: str = ""
    error: str = ""

    @property
    def score(self) -> float:
        return sum(c.points for c in self.checkpoints)

    @property
    def max_score(self) -> float:
        return sum(c.max_points for c in self.checkpoints)

    def to_dict(self) -> dict:
        return {**asdict(self), "score": self.score, "max_score": self.max_score}


# ------------------------------------------------------------------ the chapter's plan

@dataclass
class Plan:
    """What the trusted source notebook says about grading one chapter."""

    chapter: str
    preamble: list[str]  # code the answers may rely on (imports, given constants)
    checkpoints: list[tuple[str, str, str]]  # (checkpoint id, function name, answer cell id)
    locked: dict[str, str]  # grade_id -> source of every locked cell, to detect tampering
    demos: set[str]  # the course's other code cells (stripped source): never run by the grader


def chapter_plan(chapter: str) -> Plan:
    nb = nbformat.read(source_path(chapter), as_version=4)
    preamble, checkpoints, locked, demos, last_answer = [], [], {}, set(), None
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and not meta:
            demos.add(cell.source.strip())
        if cell.cell_type == "code" and cell.metadata.get("course", {}).get("preamble"):
            preamble.append(cell.source)
        if meta.get("solution"):
            last_answer = meta["grade_id"]
        elif meta.get("locked"):
            locked[meta["grade_id"]] = cell.source
        if meta.get("grade"):
            found = CHECK_CALL.search(cell.source)
            checkpoints.append((found.group(1), found.group(2), last_answer))
    return Plan(chapter, preamble, checkpoints, locked, demos)


def chapter_of(nb, path: Path) -> str | None:
    """The chapter a submission belongs to: its metadata, else its file name, else its checks."""
    known = chapters()
    number = str(nb.metadata.get("course", {}).get("chapter", ""))
    candidates = [number, path.stem[:2], *(m.group(1)[:2] for c in nb.cells for m in CHECK_CALL.finditer(c.get("source", "")))]
    for prefix in candidates:
        for chapter in known:
            if prefix and chapter.startswith(prefix + "_"):
                return chapter
    return None


# ---------------------------------------------------------------------------- grading

def _rebuild_exception(info: dict) -> Exception:
    """The learner's exception as the nearest built-in type, with its message."""
    for name in info["mro"]:
        cls = getattr(builtins, name, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(f"{info['mro'][0]}: {info['message']}" if name != info["mro"][0] else info["message"])
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return RuntimeError(f"{info['mro'][0]} ({info['message']}): your function tried to stop the program")
    return RuntimeError(info["message"])


def _restore(value):
    """Plain data from the worker back into Python values (tensors rebuilt from bytes)."""
    if isinstance(value, tuple) and len(value) == 3 and value[0] == "__unsupported__":
        raise TypeError(f"returned a {value[1]} ({value[2][:80]}), which is not plain data: return a list, dict, str, tensor, ...")
    if isinstance(value, tuple) and len(value) == 4 and value[0] == "__tensor__":
        from .fixtures import tensor_from_bytes  # the same (dtype, shape, raw bytes) encoding

        return tensor_from_bytes(*value[1:])
    if isinstance(value, (list, tuple)):
        return type(value)(_restore(v) for v in value)
    if isinstance(value, dict):
        return {_restore(k): _restore(v) for k, v in value.items()}
    return value


def _write_back(arg, after) -> None:
    """Show the checker an in-place change the learner's code made to an argument."""
    if type(arg).__module__.startswith("torch") and hasattr(arg, "copy_"):
        if getattr(after, "shape", None) == arg.shape and not (after == arg).all():
            arg.copy_(after)
    elif isinstance(arg, list) and arg != after:
        arg[:] = after
    elif isinstance(arg, dict) and isinstance(after, dict) and arg.keys() == after.keys():
        for key in arg:
            if isinstance(arg[key], (list, dict)) or hasattr(arg[key], "copy_"):
                _write_back(arg[key], after[key])
            elif arg[key] != after[key]:
                arg[key] = after[key]
    elif isinstance(arg, tuple) and isinstance(after, tuple) and len(arg) == len(after):
        for a, b in zip(arg, after):
            _write_back(a, b)


def _proxy(worker: Worker, name: str, kind: str, violations: list[str], sandbox_errors: list[SandboxError]):
    def call(*args):
        try:
            outcome, payload, args_after, seen = worker.call(name, args, kind)
        except SandboxError as exc:
            sandbox_errors.append(exc)
            raise
        violations.extend(seen)
        if outcome == "raise":
            if not any(name == "Exception" for name in payload["mro"]):  # SystemExit, KeyboardInterrupt
                violations.append(f"{payload['mro'][0]}: tried to stop the grader")
            if payload["mro"][0] == "MemoryError":
                sandbox_errors.append(SandboxError("memory", f"ran out of memory under the cap of {worker.limits.memory_mb} MB"))
            raise _rebuild_exception(payload)
        for arg, after in zip(args, _restore(args_after)):
            try:
                _write_back(arg, after)
            except Exception:  # noqa: BLE001 - an odd argument is not worth failing over
                pass
        return _restore(payload)

    call.__name__ = name
    return call


def _learner_cells(nb, plan: Plan) -> tuple[list[str], list[str]]:
    """The submission's answer cells and the cells it added or changed, in order, with their
    names. The course's own demo cells, unchanged, are not run."""
    cells, names = [], []
    answer_ids = {answer for _, _, answer in plan.checkpoints}
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id in answer_ids:
            cells.append(cell.source)
            names.append(grade_id)
        elif grade_id is None and cell.source.strip() not in plan.demos:
            cells.append(cell.source)
            names.append(f"added cell {index}")
    return cells, names


def _tampering(nb, plan: Plan) -> list[str]:
    seen = {}
    for cell in nb.cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id:
            seen[grade_id] = cell.get("source", "")
    flags = []
    for grade_id, source in plan.locked.items():
        released = HIDDEN_TESTS.sub("", source).strip()  # learners get test cells without them
        if grade_id not in seen:
            flags.append(f"locked cell {grade_id!r} was deleted (graded from the course's copy)")
        elif seen[grade_id].strip() not in (source.strip(), released):
            flags.append(f"locked cell {grade_id!r} was edited (graded from the course's copy)")
    return flags


def grade_checkpoint(plan: Plan, checkpoint_id: str, function: str, answer_cell: str,
                     cells: list[str], cell_names: list[str], seed: int, limits: Limits) -> tuple[CheckpointGrade, dict]:
    cp = core.lookup(checkpoint_id)
    grade = CheckpointGrade(checkpoint_id, 0, cp.points, "fail")
    start = time.perf_counter()
    violations: list[str] = []
    sandbox_errors: list[SandboxError] = []
    report: dict = {}
    all_cells = plan.preamble + cells
    all_names = ["preamble"] * len(plan.preamble) + cell_names
    try:
        preload = tuple(name for name in ("torch", "numpy") if any(f"import {name}" in c for c in plan.preamble))
        with Worker(limits, preload) as worker:
            report = worker.setup(all_cells, {function: len(cp.params)})
            for index, seen in report.get("violations_by_cell", {}).items():
                if all_names[index] == answer_cell:
                    violations.extend(seen)
            state = report["defined"][function]
            if state == "missing":
                errors = [f"{all_names[i]}: {kind}: {msg}" for i, kind, msg in report["cell_errors"]]
                grade.verdict, grade.message = "missing", (
                    f"{function} is not defined: its answer cell is missing, or raised an error"
                    + (f" ({'; '.join(errors)[:300]})" if errors else "")
                )
            elif state != "ok":
                grade.message = f"{function} has the {state}; {cp.id} calls it as {cp.signature}"
            else:
                # the proxy runs the learner's object the checkpoint's way (a module class
                # through its runner) in the worker; so does the gradient probe, which
                # returns gradients as data
                proxy = _proxy(worker, function, cp.kind, violations, sandbox_errors)
                probe = _proxy(worker, function, f"grad_{cp.kind}", violations, sandbox_errors)
                result = core.run(cp, proxy, seed=seed, probe=probe, wrapped=True)
                grade.output_dropped = worker.output_dropped
                grade.verdict = "pass" if result.passed else "fail"
                grade.message = result.report()
                grade.hint = core.hint_text(cp, result.hint_id) if result.hint_id else ""
    except SandboxError as exc:
        sandbox_errors.append(exc)
        grade.message = str(exc)
    if sandbox_errors:
        grade.verdict = sandbox_errors[0].kind
        grade.message = f"{sandbox_errors[0]}. " + grade.message
    if violations:
        grade.verdict = "flagged"
        grade.message = f"tried something forbidden while graded: {', '.join(sorted(set(violations)))[:300]}"
    if grade.verdict not in ("fail",):
        grade.hint = ""  # the message says what happened; a coding hint would mislead
    grade.points = cp.points if grade.verdict == "pass" else 0
    grade.seconds = round(time.perf_counter() - start, 3)
    return grade, report


def grade_notebook(path: str | Path, *, seed: int | None = None, limits: Limits = Limits()) -> SubmissionGrade:
    """Grade one submitted notebook; never raises for anything the submission does."""
    path = Path(path)
    seed = secrets.randbelow(2**31) if seed is None else seed
    result = SubmissionGrade(str(path), None, seed)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # noqa: BLE001 - a broken file is the submission's problem
        result.error = f"could not read the notebook: {exc}"
        return result
    chapter = chapter_of(nb, path)
    if chapter is None:
        result.error = "could not tell which chapter this notebook belongs to (no course metadata, file name or checkpoint)"
        return result
    result.chapter = chapter
    plan = chapter_plan(chapter)
    cells, names = _learner_cells(nb, plan)
    result.flags.extend(_tampering(nb, plan))
    global_violations = set()
    for checkpoint_id, function, answer_cell in plan.checkpoints:
        grade, report = grade_checkpoint(plan, checkpoint_id, function, answer_cell, cells, names, seed, limits)
        result.checkpoints.append(grade)
        if grade.verdict == "flagged":
            result.flags.append(f"{checkpoint_id}: {grade.message}")
        cell_names = ["preamble"] * len(plan.preamble) + names
        for index, seen in report.get("violations_by_cell", {}).items():
            global_violations.update(f"{cell_names[index]}: {v}" for v in seen)
        if not result.output:
            result.output = report.get("output", "")
            if report.get("output_dropped"):
                result.flags.append(f"printed {report['output_dropped']:,} characters more than the "
                                    f"{len(result.output):,} kept in this report")
            if report.get("patched"):
                result.flags.append(f"replaced comparison functions: {', '.join(report['patched'])} "
                                    "(no effect: the grader compares outside the student's process)")
        if grade.output_dropped:
            result.flags.append(f"{checkpoint_id}: output truncated: printed {grade.output_dropped:,} "
                                "characters more than the report keeps")
        if grade.verdict in ("timeout", "crashed", "memory"):
            result.flags.append(f"{checkpoint_id}: {grade.verdict}: {grade.message.split('. ')[0]}")
    result.flags.extend(sorted(global_violations))
    return result


def grade_many(paths: list[Path], *, seed: int | None = None, limits: Limits = Limits(),
               jobs: int | None = None, progress: bool = True) -> list[SubmissionGrade]:
    """Grade submissions in parallel over the available cores, in the order given."""
    if len(paths) == 1:
        return [grade_notebook(paths[0], seed=seed, limits=limits)]
    jobs = jobs or os.cpu_count() or 1
    results: dict[int, SubmissionGrade] = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(grade_notebook, p, seed=seed, limits=limits): i for i, p in enumerate(paths)}
        done = as_completed(futures)
        if progress:
            from tqdm import tqdm

            done = tqdm(done, total=len(futures), desc="grading", unit="notebook", file=sys.stderr)
        for future in done:
            results[futures[future]] = future.result()
    return [results[i] for i in range(len(paths))]


# ---------------------------------------------------------------------------- reports

def table(result: SubmissionGrade) -> str:
    lines = [f"{result.notebook}: {result.score:g} / {result.max_score:g}" + (f"  ({result.chapter})" if result.chapter else "")]
    if result.error:
        lines.append(f"  error: {result.error}")
    for c in result.checkpoints:
        hint = f"  hint: {c.hint[:90]}" if c.verdict != "pass" and c.hint else ""
        lines.append(f"  {c.checkpoint:20s} {c.points:g}/{c.max_points:g}  {c.verdict:8s}{hint}")
        if c.verdict not in ("pass", "fail") and c.message:
            lines.append(f"    {c.message.splitlines()[0][:150]}")
    for flag in result.flags:
        lines.append(f"  flag: {flag[:160]}")
    return "\n".join(lines)


def gradescope(result: SubmissionGrade) -> dict:
    """Gradescope's ``results.json``: one test per checkpoint."""
    return {
        "score": result.score,
        "output": result.error or ("\n".join(result.flags) or "Graded by the course's sandboxed grader."),
        "tests": [
            {"name": c.checkpoint, "score": c.points, "max_score": c.max_points,
             "output": c.message, "status": "passed" if c.verdict == "pass" else "failed", "visibility": "visible"}
            for c in result.checkpoints
        ],
    }


def write_csv(results: list[SubmissionGrade], path: Path) -> None:
    ids = sorted({c.checkpoint for r in results for c in r.checkpoints})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["notebook", "chapter", "score", "max_score", *ids, "flags", "error"])
        for r in results:
            points = {c.checkpoint: c.points for c in r.checkpoints}
            writer.writerow([r.notebook, r.chapter, r.score, r.max_score, *(points.get(i, "") for i in ids),
                             " | ".join(r.flags), r.error])


def expand(patterns: list[str]) -> list[Path]:
    """Files, folders (every .ipynb inside) and globs, without checkpoints or duplicates."""
    import glob

    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        matches = sorted(path.rglob("*.ipynb")) if path.is_dir() else [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
        if not matches:
            raise FileNotFoundError(f"no notebook matches {pattern!r}")
        found += [m for m in matches if ".ipynb_checkpoints" not in m.parts and m not in found]
    return found


# --------------------------------------------------------------------------- command

def add_arguments(parser) -> None:
    parser.add_argument("submissions", nargs="+", help="notebooks, folders of notebooks, or globs")
    parser.add_argument("--json", type=Path, help="write the full report as JSON")
    parser.add_argument("--csv", type=Path, help="write one row per submission")
    parser.add_argument("--gradescope", type=Path, help="write Gradescope's results.json (one submission)")
    parser.add_argument("--seed", type=int, help="input seed (default: secret and random; recorded in --json)")
    parser.add_argument("--time-limit", type=float, default=Limits.seconds, help="seconds per checkpoint (default %(default)s)")
    parser.add_argument("--memory-mb", type=int, default=Limits.memory_mb, help="memory cap per checkpoint (default %(default)s)")
    parser.add_argument("--jobs", type=int, help="submissions graded at once (default: number of cores)")


def main(args) -> int:
    try:
        paths = expand(args.submissions)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.gradescope and len(paths) != 1:
        print("error: --gradescope writes one submission's results.json; give one notebook", file=sys.stderr)
        return 2
    limits = Limits(seconds=args.time_limit, memory_mb=args.memory_mb)
    results = grade_many(paths, seed=args.seed, limits=limits, jobs=args.jobs, progress=len(paths) > 1)
    for result in results:
        print(table(result))
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False) + "\n")
    if args.csv:
        write_csv(results, args.csv)
    if args.gradescope:
        args.gradescope.write_text(json.dumps(gradescope(results[0]), indent=2, ensure_ascii=False) + "\n")
    return 0
