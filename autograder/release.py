"""``python -m autograder release OUTDIR``: the course as handed to students.

A release holds the learner notebooks, the autograder served from fixtures, the course
data and the pinned environment, and nothing that gives answers away: no ``solutions/``
(the reference package and the source notebooks with solutions and hidden tests), no
``autograder/checks/`` (generators and property checks that contain answer-revealing code
such as a BPE replay trainer), no ``tests/`` (its catalogue of near-correct code), no
``nbgrader_config.py`` and no ``.ci/``.

Without ``solutions/``, ``autograder.core.registry()`` serves the visible checkpoints from
``autograder/fixture_data/``, which this command writes freshly into the release, so a
release is never stale. Students' checks therefore use the visible cases only; graded runs
(hidden inputs) happen in the course repository, with ``python -m autograder grade``.

After writing, the release is verified; any answer found in it fails the command and
leaves no release behind.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import fixtures

ROOT = Path(__file__).resolve().parent.parent

# What a release contains: folders and files of the course repository.
INCLUDED = ["chapters", "autograder", "data", "environment.yml", "requirements.txt", "pyproject.toml", ".gitattributes"]
# Inside those, left out (paths relative to the repository root, and names anywhere).
EXCLUDED_PATHS = {"autograder/checks", "autograder/fixture_data", "data/downloads"}
EXCLUDED_NAMES = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", "gradebook.db", ".DS_Store"}
EXCLUDED_SUFFIXES = (".pyc", ".backup.ipynb", ".tmp")
# What must never be in a release, wherever it appears.
FORBIDDEN_DIRS = {"solutions", "tests", ".ci"}
FORBIDDEN_PATHS = {"nbgrader_config.py", "autograder/checks"}
# Marker *lines* of nbgrader: a solution or hidden tests left in a notebook or a file.
# (A line, not any mention: autograder/notebooks.py names the markers in its docstring.)
MARKER = re.compile(r"^[ \t]*#+[ \t]*(BEGIN|END)[ \t]+(SOLUTION|HIDDEN TESTS)\b", re.MULTILINE)
IMPORTS_SOLUTIONS = re.compile(r"^[ \t]*(import|from)[ \t]+solutions\b", re.MULTILINE)

STUDENT_README = """\
# Build an LLM from scratch — student release

You build a LLaMA-class language model one idea at a time, one notebook per chapter.
Every chapter has **checkpoints**: run the cell under your code and get ✓, or ✗ with the
call that failed, what differed and a hint that names the likely mistake.

## Set up (once, about 2 minutes; Python 3.11)

In this folder:

```bash
python3.11 -m venv .venv && .venv/bin/pip install -r requirements.txt
```

Or with conda: `conda env create -f environment.yml`. After set-up nothing needs the
network: the corpus, the tokenizer and GPT-4's vocabulary are local.

## Study

```bash
.venv/bin/jupyter lab chapters/
```

1. Open `chapters/01_tokenizer/01_tokenizer.ipynb` and run the cells in order.
2. Each `# YOUR CODE HERE` cell asks for one function; its signature and docstring say
   what to return. Replace `raise NotImplementedError()` with your code and run the cell.
3. Run the checkpoint cell below it, e.g. `autograder.check("01.merge", merge)`.
   `autograder.checkpoints()` lists every checkpoint; `python -m autograder progress`
   shows the ones you have passed.

## How you are graded

The checks in this release compare your functions with stored expected outputs on the
**visible cases** (edge cases and seeded random inputs). Your instructor grades your
submitted notebook with the same checks on **hidden inputs** generated afresh, so make
your functions correct in general: hard-coding the visible examples earns nothing.
Submit the notebook itself (`chapters/NN_slug/NN_slug.ipynb`), with your code in it.
"""


@dataclass
class Summary:
    out_dir: Path
    files: int = 0
    total_bytes: int = 0
    by_top: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"release written to {self.out_dir}: {self.files} files, {_size(self.total_bytes)}"]
        lines += [f"  {top:24s} {_size(size)}" for top, size in sorted(self.by_top.items())]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


# ------------------------------------------------------------------------------- copy

def _ignore(src_root: Path):
    """A ``copytree`` ignore function for the excluded paths, names and suffixes."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        here = Path(directory).resolve().relative_to(src_root)
        left_out = set()
        for name in names:
            rel = (here / name).as_posix()
            if rel in EXCLUDED_PATHS or name in EXCLUDED_NAMES or name.endswith(EXCLUDED_SUFFIXES):
                left_out.add(name)
        return left_out

    return ignore


def copy_course(dest: Path, root: Path = ROOT) -> None:
    for name in INCLUDED:
        src = root / name
        if not src.exists():
            raise SystemExit(f"{src} is missing: a release needs {', '.join(INCLUDED)}.")
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=_ignore(root.resolve()))
        else:
            shutil.copy2(src, dest / name)


def write_release_fixtures(dest: Path) -> list[str]:
    """Fresh fixtures straight into the release (never stale); returns a warning for each
    committed fixture file in the repository that differs from them beyond the checkpoints'
    tolerances (a file built on another CPU differs in low-order bits only, and is not stale)."""
    target = dest / "autograder" / "fixture_data"
    fixtures.write_fixtures(out_dir=target)
    stale = []
    fresh = {p.name: p.read_bytes() for p in target.glob(f"*{fixtures.SUFFIX}")}
    committed = {p.name: p.read_bytes() for p in fixtures.FIXTURE_DIR.glob(f"*{fixtures.SUFFIX}")}
    for name in sorted(set(fresh) | set(committed)):
        if fresh.get(name) == committed.get(name):
            continue
        if name in fresh and name in committed and fixtures.fixture_difference(
                fixtures.load_or_none(committed[name], name), fixtures.loads(fresh[name], name)) is None:
            continue  # the same within the checkpoint's tolerances: built on another CPU
        stale.append(f"autograder/fixture_data/{name} in the repository is stale (the release has "
                     "fresh ones); run `python -m autograder fixtures` and commit it")
    return stale


# ----------------------------------------------------------------------------- verify

def problems(release: Path) -> list[str]:
    """Everything in ``release`` that gives answers away or breaks the checks; [] if none."""
    found = []
    for path in sorted(release.rglob("*")):
        rel = path.relative_to(release)
        if path.is_dir() and path.name in FORBIDDEN_DIRS:
            found.append(f"{rel}/: must never be in a release")
        if rel.as_posix() in FORBIDDEN_PATHS:
            found.append(f"{rel}: must never be in a release")
        if path.is_file():
            for marker in _markers(path):
                found.append(f"{rel}: contains the nbgrader marker line {marker!r} (a solution or hidden tests)")
    try:
        served = fixtures.load_registry(release / "autograder" / "fixture_data")
    except Exception as exc:  # noqa: BLE001 - reported as a problem of the release
        found.append(f"autograder/fixture_data: does not load ({type(exc).__name__}: {exc})")
    else:
        missing = sorted(set(fixtures.live_registry()) - set(served))
        if missing:
            found.append(f"autograder/fixture_data: no fixture for {', '.join(missing)}")
    return found


def _markers(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []  # binary data (fixtures, tokenizer files) holds no notebook markers
    if path.suffix == ".ipynb":
        text = "\n".join(_cell_sources(text, path))
    return sorted({m.group(0).strip() for m in MARKER.finditer(text)})


def _cell_sources(text: str, path: Path) -> list[str]:
    cells = json.loads(text).get("cells", [])
    return ["".join(c.get("source", "")) if isinstance(c.get("source"), list) else c.get("source", "") for c in cells]


def notebooks_importing_solutions(release: Path) -> list[str]:
    """Learner notebooks whose code imports ``solutions``: they cannot run in a release."""
    found = []
    for path in sorted((release / "chapters").rglob("*.ipynb")):
        if any(IMPORTS_SOLUTIONS.search(s) for s in _cell_sources(path.read_text(encoding="utf-8"), path)):
            found.append(
                f"{path.relative_to(release)} imports solutions, which a release does not have: "
                "its set-up cell will fail for students"
            )
    return found


# ------------------------------------------------------------------------------ build

def _check_out_dir(out_dir: Path, force: bool) -> None:
    out = out_dir.resolve()
    root = ROOT.resolve()
    if out == root or root.is_relative_to(out):
        raise SystemExit(f"{out_dir} is the course repository or contains it: choose another OUTDIR.")
    for name in INCLUDED:
        if out.is_relative_to(root / name):
            raise SystemExit(f"{out_dir} is inside {name}/, which the release copies: choose another OUTDIR.")
    if out.exists() and not out.is_dir():
        raise SystemExit(f"{out_dir} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SystemExit(f"{out_dir} is not empty; not overwritten. Re-run with --force to replace it.")


def build_release(out_dir: Path, force: bool = False) -> Summary:
    """Write the release into ``out_dir`` (staged beside it, verified, then moved in place)."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a release is meant to be shared
    try:
        copy_course(staging)
        stale = write_release_fixtures(staging)
        (staging / "README.md").write_text(STUDENT_README, encoding="utf-8")
        found = problems(staging)
        if found:
            raise SystemExit("the release is NOT safe to hand out; nothing was written:\n  " + "\n  ".join(found))
        warnings = stale + notebooks_importing_solutions(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return _summarise(out_dir, warnings)


def _summarise(out_dir: Path, warnings: list[str]) -> Summary:
    summary = Summary(out_dir, warnings=warnings)
    for path in out_dir.rglob("*"):
        if path.is_file():
            size = path.stat().st_size
            summary.files += 1
            summary.total_bytes += size
            top = path.relative_to(out_dir).parts[0]
            summary.by_top[top] = summary.by_top.get(top, 0) + size
    return summary


# ---------------------------------------------------------------------------- command

def add_arguments(parser) -> None:
    parser.add_argument("out_dir", metavar="OUTDIR", type=Path, help="folder to write the release into")
    parser.add_argument("--force", action="store_true", help="replace OUTDIR if it is not empty")


def main(args) -> int:
    summary = build_release(args.out_dir, force=args.force)
    print(summary.report())
    if summary.warnings:
        print("The release was written, but read the warnings above before handing it out.", file=sys.stderr)
    return 0
