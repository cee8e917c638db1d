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

Everything from a submission is hostile input: the notebook file (a symbolic link, a hard
link to the course's notebook, a file outside the submission folder, bad JSON, wrong
metadata types, huge cells are an error for that submission only) and every reply of the
worker (an exception while decoding or comparing scores that checkpoint 0, "crashed", with
a flag). One submission can never cost another its grade.
"""

from __future__ import annotations

import builtins
import csv
import glob
import json
import os
import re
import secrets
import stat
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from . import core
from .notebooks import ROOT, chapters, source_path
from .sandbox import (UNCHANGED, EncodedTensor, Limits, SandboxError, SandboxUnavailable, Unsupported, Worker,
                      require_sandbox)

HIDDEN_TESTS = re.compile(r"\n?### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS\n?", re.S)
CHECK_CALL = re.compile(r'autograder\.check\(\s*"([^"]+)"\s*,\s*([A-Za-z_][A-Za-z0-9_]*)')
MAX_NOTEBOOK_BYTES = 64 * 2**20
MAX_CELLS = 5_000
MAX_CELL_CHARS = 1_000_000  # one code cell's source
MAX_CODE_CHARS = 4_000_000  # all code cells together
UNSAFE = "UNSAFE: graded without the sandbox (--unsafe-no-sandbox)"


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
    sandbox: str = "bubblewrap"  # or "none (--unsafe-no-sandbox)"

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


# ---------------------------------------------------------------------------- reading

class SubmissionError(Exception):
    """The submission cannot be graded (not a regular file, not a notebook, malformed)."""


def _course_notebooks() -> dict[tuple[int, int], Path]:
    """(device, inode) of each of the course's own notebooks: a hard link to one is not a submission."""
    found = {}
    for path in [*ROOT.glob("solutions/notebooks/*/*.ipynb"), *ROOT.glob("chapters/*/*.ipynb")]:
        try:
            st = path.stat()
        except OSError:
            continue
        found[(st.st_dev, st.st_ino)] = path
    return found


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def read_submission(path: Path, root: Path | None = None):
    """The notebook at ``path``, read as hostile input: a regular file (not a symbolic link,
    not a hard link to the course's own notebooks, inside ``root`` once links are resolved),
    at most 64 MB, valid JSON, with the metadata and cells the grader reads of the right types."""
    given = os.path.abspath(path)
    try:
        st = os.lstat(given)
    except OSError as exc:
        raise SubmissionError(f"cannot read it: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise SubmissionError("it is a symbolic link; only regular files are graded (copy the notebook itself)")
    if not stat.S_ISREG(st.st_mode):
        raise SubmissionError("it is not a regular file")
    real = os.path.realpath(given)
    if root is not None and not _inside(real, os.path.realpath(root)):
        raise SubmissionError(f"it resolves (through a symbolic link) to a file outside the submission folder {str(root)!r}")
    solutions = str(ROOT / "solutions")
    if _inside(real, solutions) and not _inside(given, solutions):
        raise SubmissionError("it resolves (through a symbolic link) to the course's own solution notebooks")
    twin = _course_notebooks().get((st.st_dev, st.st_ino))
    if twin is not None and os.path.abspath(twin) != given:
        raise SubmissionError("it is a hard link to the course's own notebook, not a submission")
    if st.st_size > MAX_NOTEBOOK_BYTES:
        raise SubmissionError(f"it is {st.st_size:,} bytes, more than the {MAX_NOTEBOOK_BYTES:,} a notebook may be")
    try:
        fd = os.open(given, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise SubmissionError(f"cannot open it: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SubmissionError("it is not a regular file")
        data = file.read(MAX_NOTEBOOK_BYTES + 1)
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise SubmissionError(f"it is more than the {MAX_NOTEBOOK_BYTES:,} bytes a notebook may be")
    try:
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
    except RecursionError:
        raise SubmissionError("could not read the notebook: its JSON is nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any parser error is the file's problem
        raise SubmissionError(f"could not read the notebook: {type(exc).__name__}: {str(exc)[:200]}") from None
    problem = _malformed(nb)
    if problem:
        raise SubmissionError(f"malformed notebook: {problem}")
    return nb


def _malformed(nb) -> str | None:
    """What is wrong with the parts of the notebook the grader reads, or ``None``."""
    if not isinstance(nb, dict) or not isinstance(nb.get("metadata", {}), dict):
        return "its metadata is not an object"
    course = nb.get("metadata", {}).get("course", {})
    if not isinstance(course, dict) or not isinstance(course.get("chapter", ""), (str, int)):
        return "metadata.course is not an object with a chapter number"
    cells = nb.get("cells")
    if not isinstance(cells, list):
        return "it has no list of cells"
    if len(cells) > MAX_CELLS:
        return f"{len(cells):,} cells, more than {MAX_CELLS:,}"
    code = 0
    for index, cell in enumerate(cells):
        if not isinstance(cell, dict) or not isinstance(cell.get("cell_type"), str):
            return f"cell {index} is not a cell"
        if not isinstance(cell.get("source", ""), str):
            return f"cell {index}'s source is a {type(cell.get('source')).__name__}, not text"
        metadata = cell.get("metadata", {})
        if not isinstance(metadata, dict):
            return f"cell {index}'s metadata is not an object"
        for key in ("nbgrader", "course"):
            if not isinstance(metadata.get(key, {}), dict):
                return f"cell {index}'s metadata.{key} is a {type(metadata[key]).__name__}, not an object"
        if not isinstance(metadata.get("nbgrader", {}).get("grade_id", ""), str):
            return f"cell {index}'s metadata.nbgrader.grade_id is not text"
        if cell["cell_type"] == "code":
            size = len(cell.get("source", ""))
            if size > MAX_CELL_CHARS:
                return f"cell {index} holds {size:,} characters of code, more than {MAX_CELL_CHARS:,}"
            code += size
    if code > MAX_CODE_CHARS:
        return f"{code:,} characters of code, more than {MAX_CODE_CHARS:,}"
    return None


# ---------------------------------------------------------------------------- grading

def _exception(cls: type, message: str) -> Exception:
    """``cls(message)``; for a type whose constructor wants more (``UnicodeDecodeError``), a
    subclass of the same name that takes just the message."""
    try:
        return cls(message)
    except Exception:  # noqa: BLE001
        pass
    try:
        same = type(cls.__name__, (cls,), {"__init__": lambda self, m: Exception.__init__(self, m),
                                           "__str__": lambda self: str(self.args[0])})
        return same(message)
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{cls.__name__}: {message}")


def _rebuild_exception(info: dict) -> Exception:
    """The learner's exception as the nearest built-in type, with its message."""
    for name in info["mro"]:
        cls = getattr(builtins, name, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return _exception(cls, f"{info['mro'][0]}: {info['message']}" if name != info["mro"][0] else info["message"])
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return RuntimeError(f"{info['mro'][0]} ({info['message']}): your function tried to stop the program")
    return RuntimeError(info["message"])


def _restore(value):
    """Decoded data from the worker back into Python values (tensors rebuilt from bytes)."""
    if value is UNCHANGED:
        value = Unsupported("marker", "UNCHANGED")
    if isinstance(value, Unsupported):
        raise TypeError(f"returned a {value.type_name} ({value.text[:80]}), which is not plain data: "
                        "return a list, dict, str, tensor, ...")
    if isinstance(value, EncodedTensor):
        from .fixtures import tensor_from_bytes  # the same (dtype, shape, raw bytes) encoding

        return tensor_from_bytes(value.dtype, value.shape, value.raw)
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


def _describe(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    except Exception:  # noqa: BLE001 - str() of an exception about a huge value may fail too
        return type(exc).__name__


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
        try:
            for arg, after in zip(args, args_after):
                if after is UNCHANGED:
                    continue
                try:
                    _write_back(arg, _restore(after))
                except Exception:  # noqa: BLE001 - an odd argument is not worth failing over
                    pass
            return _restore(payload)
        except TypeError as exc:
            if "not plain data" in str(exc):
                raise  # the learner's mistake, reported as such
            error = SandboxError("crashed", f"the grader could not rebuild the output: {_describe(exc)}")
        except Exception as exc:  # noqa: BLE001 - anything else the data does to the grader
            error = SandboxError("crashed", f"the grader could not rebuild the output: {_describe(exc)}")
        sandbox_errors.append(error)
        raise error

    call.__name__ = name
    return call


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _learner_cells(nb, plan: Plan) -> tuple[list[str], list[str]]:
    """The submission's answer cells and the cells it added or changed, in order, with their
    names. The course's own demo cells, unchanged, are not run."""
    cells, names = [], []
    answer_ids = {answer for _, _, answer in plan.checkpoints}
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        grade_id = _nbgrader(cell).get("grade_id")
        source = cell.get("source", "")
        if grade_id in answer_ids:
            cells.append(source)
            names.append(grade_id)
        elif grade_id is None and source.strip() not in plan.demos:
            cells.append(source)
            names.append(f"added cell {index}")
    return cells, names


def _tampering(nb, plan: Plan) -> list[str]:
    seen = {}
    for cell in nb.cells:
        grade_id = _nbgrader(cell).get("grade_id")
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
        if exc not in sandbox_errors:
            sandbox_errors.append(exc)
        grade.message = ""
    except SandboxUnavailable:
        raise  # the machine's problem, not the submission's: grading stops
    except Exception as exc:  # noqa: BLE001 - whatever the learner's output does to the comparison
        sandbox_errors.append(SandboxError("crashed", f"the grader could not compare this output ({_describe(exc)})"))
        grade.message = ""
    if sandbox_errors:
        grade.verdict = sandbox_errors[0].kind
        grade.message = f"{sandbox_errors[0]}." + (f" {grade.message}" if grade.message else "")
    if violations:
        grade.verdict = "flagged"
        grade.message = f"tried something forbidden while graded: {', '.join(sorted(set(violations)))[:300]}"
    if grade.verdict not in ("fail",):
        grade.hint = ""  # the message says what happened; a coding hint would mislead
    grade.points = cp.points if grade.verdict == "pass" else 0
    grade.seconds = round(time.perf_counter() - start, 3)
    return grade, report


def grade_notebook(path: str | Path, *, seed: int | None = None, limits: Limits = Limits(),
                   root: Path | None = None) -> SubmissionGrade:
    """Grade one submitted notebook; never raises for anything the submission does.

    ``root``: the folder it was found in (its real path must stay inside). Raises
    :class:`SandboxUnavailable` where bubblewrap cannot run, unless the limits waive it."""
    path = Path(path)
    seed = secrets.randbelow(2**31) if seed is None else seed
    result = SubmissionGrade(str(path), None, seed)
    require_sandbox(limits)
    if limits.unsafe_no_sandbox:
        result.sandbox = "none (--unsafe-no-sandbox)"
        result.flags.append(UNSAFE)
    try:
        nb = read_submission(path, root)
    except SubmissionError as exc:
        result.error = f"not graded: {exc}"
        return result
    try:
        _grade_into(result, nb, path, seed, limits)
    except SandboxUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - never lose a batch to one submission
        result.error = f"the grader failed on this submission ({_describe(exc)}); the checkpoints above were graded"
    return result


def _grade_into(result: SubmissionGrade, nb, path: Path, seed: int, limits: Limits) -> None:
    chapter = chapter_of(nb, path)
    if chapter is None:
        result.error = "could not tell which chapter this notebook belongs to (no course metadata, file name or checkpoint)"
        return
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


def _failed(path: Path, seed: int | None, limits: Limits, why: str) -> SubmissionGrade:
    result = SubmissionGrade(str(path), None, -1 if seed is None else seed, error=why)
    if limits.unsafe_no_sandbox:
        result.sandbox, result.flags = "none (--unsafe-no-sandbox)", [UNSAFE]
    return result


def grade_many(paths: list[Path], *, seed: int | None = None, limits: Limits = Limits(),
               jobs: int | None = None, progress: bool = True,
               roots: list[Path | None] | None = None) -> list[SubmissionGrade]:
    """Grade submissions in parallel over the available cores, in the order given.

    A grading process that dies (which no submission should be able to cause) costs only
    the submissions it was grading: the others are graded again, each in a process of its own."""
    require_sandbox(limits)
    roots = roots or [None] * len(paths)
    if len(paths) == 1:
        return [grade_notebook(paths[0], seed=seed, limits=limits, root=roots[0])]
    jobs = jobs or os.cpu_count() or 1
    results: dict[int, SubmissionGrade] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc="grading", unit="notebook", file=sys.stderr)
    retry: list[int] = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(grade_notebook, p, seed=seed, limits=limits, root=r): i
                   for i, (p, r) in enumerate(zip(paths, roots))}
        for future in as_completed(futures):
            index = futures[future]
            try:
                results[index] = future.result()
            except BrokenProcessPool:
                retry.append(index)
                continue
            except SandboxUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001
                results[index] = _failed(paths[index], seed, limits, f"the grader failed on this submission ({_describe(exc)})")
            if bar is not None:
                bar.update()
    for index in sorted(retry):  # alone, so that a process that dies again takes nothing else with it
        with ProcessPoolExecutor(max_workers=1) as pool:
            try:
                results[index] = pool.submit(grade_notebook, paths[index], seed=seed, limits=limits,
                                             root=roots[index]).result()
            except SandboxUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001
                results[index] = _failed(paths[index], seed, limits,
                                         f"the grading process died on this submission ({_describe(exc)})")
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
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
        if flag != UNSAFE:
            lines.append(f"  flag: {flag[:160]}")
    if result.sandbox != "bubblewrap":
        lines = [f"[{UNSAFE}] {line}" for line in lines]
    return "\n".join(lines)


def gradescope(result: SubmissionGrade) -> dict:
    """Gradescope's ``results.json``: one test per checkpoint."""
    unsafe = f"{UNSAFE}. " if result.sandbox != "bubblewrap" else ""
    return {
        "score": result.score,
        "output": result.error or ("\n".join(result.flags) or "Graded by the course's sandboxed grader."),
        "tests": [
            {"name": c.checkpoint, "score": c.points, "max_score": c.max_points,
             "output": unsafe + c.message, "status": "passed" if c.verdict == "pass" else "failed",
             "visibility": "visible"}
            for c in result.checkpoints
        ],
    }


def write_csv(results: list[SubmissionGrade], path: Path) -> None:
    ids = sorted({c.checkpoint for r in results for c in r.checkpoints})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["notebook", "chapter", "score", "max_score", *ids, "flags", "error", "sandbox"])
        for r in results:
            points = {c.checkpoint: c.points for c in r.checkpoints}
            writer.writerow([r.notebook, r.chapter, r.score, r.max_score, *(points.get(i, "") for i in ids),
                             " | ".join(r.flags), r.error, r.sandbox])


def _glob_root(pattern: str) -> Path:
    """The folder a glob searches: its leading parts without wildcards."""
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]]
    return Path(*fixed) if fixed else Path(".")


def expand_with_roots(patterns: list[str]) -> list[tuple[Path, Path | None]]:
    """Files, folders (every .ipynb inside) and globs, without checkpoints or duplicates, each
    with the folder it was found in (``None`` for a file named itself)."""
    found: list[tuple[Path, Path | None]] = []
    seen: set[Path] = set()
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches, root = sorted(path.rglob("*.ipynb")), path
        else:
            matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
            root = _glob_root(pattern) if glob.has_magic(pattern) else None
        if not matches:
            raise FileNotFoundError(f"no notebook matches {pattern!r}")
        for match in matches:
            if ".ipynb_checkpoints" not in match.parts and match not in seen:
                seen.add(match)
                found.append((match, root))
    return found


def expand(patterns: list[str]) -> list[Path]:
    """Files, folders (every .ipynb inside) and globs, without checkpoints or duplicates."""
    return [path for path, _ in expand_with_roots(patterns)]


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
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="grade without the bubblewrap sandbox where it cannot run: student code then runs "
                             "as a plain process of yours (never for grades that count; every report line says so)")


def main(args) -> int:
    try:
        found = expand_with_roots(args.submissions)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.gradescope and len(found) != 1:
        print("error: --gradescope writes one submission's results.json; give one notebook", file=sys.stderr)
        return 2
    limits = Limits(seconds=args.time_limit, memory_mb=args.memory_mb, unsafe_no_sandbox=args.unsafe_no_sandbox)
    if args.unsafe_no_sandbox:
        print(f"warning: {UNSAFE}: the students' code runs as a plain process of yours and can read, "
              "write and change what you can", file=sys.stderr)
    try:
        require_sandbox(limits)
        results = grade_many([p for p, _ in found], seed=args.seed, limits=limits, jobs=args.jobs,
                             progress=len(found) > 1, roots=[r for _, r in found])
    except SandboxUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for result in results:
        print(table(result))
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False) + "\n")
    if args.csv:
        write_csv(results, args.csv)
    if args.gradescope:
        args.gradescope.write_text(json.dumps(gradescope(results[0]), indent=2, ensure_ascii=False) + "\n")
    return 0
