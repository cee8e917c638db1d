"""One source of truth for notebooks: ``solutions/`` → source notebooks → learner notebooks.

1. **Render.** A graded cell whose metadata says ``{"course": {"checkpoint": "02.rmsnorm"}}``
   is written from the checkpoint's declaration (its function and points): a checkpoint is
   declared once, in ``autograder/checks/``. A code cell of a source notebook whose metadata has
   ``{"course": {"render": ["count_pairs", "train_bpe"]}}`` is rewritten from the
   reference module named in the notebook's metadata (``{"course": {"module": ...}}``).
   Each function keeps its signature and docstring; its body goes between
   ``### BEGIN SOLUTION`` / ``### END SOLUTION``, which nbgrader turns into a stub.
   A name written ``"=NAME"`` is copied whole, as given code with no solution markers;
   ``"=package.module:NAME"`` copies it from another reference module (earlier chapters).
2. **Release.** ``nbgrader generate_assignment`` (with the repository's own
   ``nbgrader_config.py``) writes ``chapters/NN_slug/NN_slug.ipynb``: solutions replaced by
   stubs, hidden tests removed, outputs cleared.

``python -m autograder build`` does both; ``--check`` writes nothing and fails on any drift.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

from .fixtures import report_drift, write_fixtures

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = ROOT / "solutions" / "notebooks"
RELEASE_DIR = ROOT / "chapters"


def chapters() -> list[str]:
    """Chapter ids (``01_tokenizer``, ...), from the source notebooks present."""
    return sorted(p.name for p in SOURCE_DIR.iterdir() if (p / f"{p.name}.ipynb").exists())


def source_path(chapter: str) -> Path:
    return SOURCE_DIR / chapter / f"{chapter}.ipynb"


def release_path(chapter: str, release_dir: Path = RELEASE_DIR) -> Path:
    return release_dir / chapter / f"{chapter}.ipynb"


# ------------------------------------------------------------------------------ render

def _definition_lines(module_source: str, name: str) -> tuple[list[str], int | None]:
    """Source lines of the top-level definition ``name`` (with the comment block just above
    it), and the index of its first body line after the docstring (None: not a function)."""
    tree = ast.parse(module_source)
    lines = module_source.splitlines()
    for node in tree.body:
        names = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        if getattr(node, "name", None) != name and name not in names:
            continue
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
        while start > 0 and lines[start - 1].lstrip().startswith("#"):
            start -= 1
        block = lines[start : node.end_lineno]
        if not isinstance(node, ast.FunctionDef):
            return block, None
        first = node.body[0]
        has_doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
        body_start = (first.end_lineno if has_doc else first.lineno - 1) - start
        return block, body_start
    raise KeyError(name)


# Earlier chapters' code that later chapters give whole, as bundles a cell's course.render can
# name ("@model"): the list lives here once, so a chapter cannot miss a helper the model needs.
BUNDLES = {
    "@layers": [f"=solutions.layers:{n}" for n in (
        "rms_norm", "RMSNorm", "rope_cache", "rotate_half", "apply_rope", "swiglu", "SwiGLU", "causal_mask")],
    "@attention": [f"=solutions.attention:{n}" for n in (
        "PROJECTIONS", "attention", "repeat_kv", "project_qkv", "attend", "check_config", "KVCache", "Attention")],
    "@moe": [f"=solutions.moe:{n}" for n in (
        "top_k_router", "dispatch", "combine", "moe_sorted", "load_balancing_loss", "aux_free_router", "update_bias",
        "MoEConfig", "MoE")],
    "@model": [f"=solutions.model:{n}" for n in (
        "LlamaConfig", "LLAMA3_SCALING_KEYS", "check_llama3_scaling", "llama3_inv_freq", "model_rope_cache", "Block",
        "_plain", "Transformer")],
}


def expand_bundles(names: list[str]) -> list[str]:
    return [entry for name in names for entry in BUNDLES.get(name, [name])]


def render_cell(module: str, names: list[str]) -> str:
    """The source of a solution (or given) cell, built from the reference module.

    An entry ``"=solutions.layers:SwiGLU"`` takes the definition from another module: how a
    later chapter gives an earlier chapter's code, without a copy that could drift.
    """
    pieces = []
    for entry in expand_bundles(names):
        given = entry.startswith("=")
        name = entry.lstrip("=")
        source_module, _, name = name.rpartition(":")
        module_source = Path(importlib.import_module(source_module or module).__file__).read_text(encoding="utf-8")
        try:
            block, body_start = _definition_lines(module_source, name)
        except KeyError:
            raise KeyError(f"{source_module or module} has no top-level definition {name!r} (cell metadata course.render)") from None
        if given or body_start is None:
            pieces.append("\n".join(block))
            continue
        indent = " " * (len(block[body_start]) - len(block[body_start].lstrip()))
        pieces.append("\n".join([
            *block[:body_start],
            f"{indent}### BEGIN SOLUTION",
            *block[body_start:],
            f"{indent}### END SOLUTION",
        ]))
    return "\n\n\n".join(pieces)


def checkpoint_cell_source(checkpoint_id: str) -> str:
    """The graded cell of a checkpoint, written from its declaration in autograder/checks/:
    the visible check, and the same check on the grader's seed as an nbgrader hidden test."""
    from .core import lookup

    cp = lookup(checkpoint_id)
    fn = cp.function_name
    points = f"{cp.points} point{'s' if cp.points != 1 else ''}"
    return "\n".join([
        f"# Checkpoint {cp.id} ({points})",
        f'autograder.check("{cp.id}", {fn})',
        "### BEGIN HIDDEN TESTS",
        f'autograder.check("{cp.id}", {fn}, hidden=True, quiet=True)',
        "### END HIDDEN TESTS",
    ])


def render_checkpoint_cell(cell) -> bool:
    """A cell whose metadata says ``{"course": {"checkpoint": ID}}`` is the graded cell of
    checkpoint ID: its source and nbgrader points come from the declaration. True if changed."""
    from .core import lookup

    checkpoint_id = cell.get("metadata", {}).get("course", {}).get("checkpoint")
    if not checkpoint_id:
        return False
    text, points = checkpoint_cell_source(checkpoint_id), lookup(checkpoint_id).points
    grade = cell.metadata.setdefault("nbgrader", {})
    wanted = {"grade": True, "grade_id": grade.get("grade_id") or f"check_{checkpoint_id.split('.', 1)[1]}",
              "locked": True, "points": points, "schema_version": 3, "solution": False, "task": False}
    changed = cell.source != text or any(grade.get(k) != v for k, v in wanted.items())
    cell.source = text
    grade.update(wanted)
    return changed


def render_notebook(nb) -> bool:
    """Rewrite every rendered cell of ``nb`` in place; True if anything changed."""
    module = nb.metadata.get("course", {}).get("module")
    changed = False
    for cell in nb.cells:
        if render_checkpoint_cell(cell):
            changed = True
            continue
        names = cell.get("metadata", {}).get("course", {}).get("render")
        if not names:
            continue
        if module is None:
            raise ValueError("a cell has course.render but the notebook has no course.module metadata")
        text = rendered_source(module, names)
        if earlier_chapters_code(module, names):
            # code from earlier chapters arrives collapsed, its first line saying what it holds
            if cell.metadata.get("jupyter", {}).get("source_hidden") is not True:
                cell.metadata.setdefault("jupyter", {})["source_hidden"] = True
                changed = True
        if cell.source != text:
            cell.source = text
            changed = True
    return changed


def rendered_source(module: str, names: list[str]) -> str:
    """What a rendered cell holds: :func:`render_cell`, led by a one-line summary when the
    code comes from earlier chapters."""
    text = render_cell(module, names)
    earlier = earlier_chapters_code(module, names)
    return f"# {earlier}\n{text}" if earlier else text


CHAPTER_OF_MODULE = {
    "solutions.tokenizer": "01", "solutions.layers": "02", "solutions.attention": "03", "solutions.moe": "04",
    "solutions.model": "05", "solutions.train": "06", "solutions.generate": "07", "solutions.sft": "08",
    "solutions.lora": "09", "solutions.reward": "10", "solutions.ppo": "11", "solutions.speculative": "13",
    "solutions.dpo": "12", "solutions.grpo": "12",
}


def earlier_chapters_code(module: str, names: list[str]) -> str | None:
    """A one-line summary of a cell that gives code from other chapters' modules ("Given from
    chapter 02: rms_norm, RMSNorm, ..."), or None for a cell of the chapter's own code."""
    by_chapter: dict[str, list[str]] = {}
    for entry in expand_bundles(names):
        source_module, _, name = entry.lstrip("=").rpartition(":")
        if source_module and CHAPTER_OF_MODULE.get(source_module, source_module) != CHAPTER_OF_MODULE.get(module, module):
            chapter = CHAPTER_OF_MODULE.get(source_module, source_module)
            by_chapter.setdefault(chapter, []).append(name)
    if not by_chapter:
        return None
    parts = [f"chapter {chapter}: {', '.join(items)}" for chapter, items in sorted(by_chapter.items())]
    return "Given (expand to read), from " + "; ".join(parts)


# ----------------------------------------------------------------------------- release

def clean_notebook(nb) -> None:
    """Learner notebooks are committed without outputs, counts or per-run metadata."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.get("metadata", {}).pop("execution", None)
    nb.metadata.pop("widgets", None)


def write_notebook(nb, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = nbformat.writes(nb) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def tool_env() -> dict[str, str]:
    """The environment for nbgrader subprocesses: this interpreter's scripts (nbgrader runs
    ``alembic``) first on PATH, even when the virtual environment is not activated."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def generate_release(chapter: str, release_dir: Path, source_dir: Path = SOURCE_DIR) -> Path:
    """Run ``nbgrader generate_assignment`` for ``chapter`` into ``release_dir``."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "nbgrader", "generate_assignment", chapter, "--force",
            f"--CourseDirectory.root={ROOT}",
            f"--CourseDirectory.source_directory={source_dir}",
            f"--CourseDirectory.release_directory={release_dir}",
            f"--CourseDirectory.db_url=sqlite:///{tmp}/gradebook.db",
            "--log-level=WARN",
        ]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=tool_env())
        if done.returncode != 0:
            raise RuntimeError(f"nbgrader generate_assignment {chapter} failed:\n{done.stdout}\n{done.stderr}")
    path = release_path(chapter, release_dir)
    nb = nbformat.read(path, as_version=4)
    clean_notebook(nb)
    write_notebook(nb, path)
    return path


def build(
    check: bool = False,
    chapters_: list[str] | None = None,
    force: bool = False,
    release_dir: Path = RELEASE_DIR,
    write_sources: bool = True,
) -> list[str]:
    """Render source notebooks and regenerate learner notebooks. Returns the drift found.

    With ``check=True`` nothing is written (``write_sources=False``: only ``release_dir`` is). Without it, a learner notebook that differs from
    what was last generated (someone worked in it) is only replaced with ``force=True``,
    after a backup.
    """
    drift = []
    for chapter in chapters_ or chapters():
        src = source_path(chapter)
        nb = nbformat.read(src, as_version=4)
        if render_notebook(nb):
            drift.append(f"{src.relative_to(ROOT)}: solution cells differ from solutions/ (run `python -m autograder build`)")
            if not check and write_sources:
                write_notebook(nb, src)
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "source"
            shutil.copytree(src.parent, staged / chapter)
            write_notebook(nb, staged / chapter / f"{chapter}.ipynb")
            fresh = generate_release(chapter, Path(tmp) / "release", staged)
            target = release_path(chapter, release_dir)
            fresh_text = fresh.read_text(encoding="utf-8")
            if target.exists() and target.read_text(encoding="utf-8") == fresh_text:
                continue
            drift.append(f"{_shown(target)}: not what nbgrader generates from the source notebook")
            if check:
                continue
            if target.exists() and _learner_edited(target):
                if not force:
                    raise SystemExit(
                        f"{_shown(target)} has answers or outputs of yours in it; not replaced. "
                        "Re-run with --force to replace it (a backup is kept beside it)."
                    )
                shutil.copy2(target, target.with_name(target.stem + ".backup.ipynb"))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(fresh.parent, target.parent, dirs_exist_ok=True)
    return drift


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _learner_edited(path: Path) -> bool:
    """True if the notebook has outputs or answers, i.e. a learner has worked in it."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("outputs"):
            return True
        grade = cell.get("metadata", {}).get("nbgrader", {})
        if grade.get("solution") and "NotImplementedError" not in "".join(cell.get("source", "")):
            return True
    return False


# -------------------------------------------------------------------------- command

def add_arguments(parser) -> None:
    parser.add_argument("chapters", nargs="*", help="chapter ids such as 01_tokenizer (default: all)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if anything would change")
    parser.add_argument("--force", action="store_true", help="replace learner notebooks that have work in them (backed up)")


def main(args) -> int:
    drift = build(check=args.check, chapters_=args.chapters or None, force=args.force)
    if not args.chapters:  # the visible checks stored as data, for releases without solutions/
        drift += write_fixtures(check=args.check)
    up_to_date = "notebooks are up to date" if args.chapters else "notebooks and fixtures are up to date"
    return report_drift(drift, args.check, "python -m autograder build", up_to_date)
