"""Progress for self-paced learners: every ``check`` records its verdict locally, and
``python -m autograder progress`` shows, chapter by chapter, what passed and what is next.

The record lives in ``.course/progress.json`` at the course root (ignored by git), or where
``COURSE_PROGRESS_FILE`` points (``COURSE_RECORD_PROGRESS=0`` turns recording off, as
nbgrader's config does). It only ever holds verdicts: no code of the learner's.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECK_CALL = re.compile(r'autograder\.check\(\s*"([^"]+)"')


def progress_file() -> Path:
    if os.environ.get("COURSE_PROGRESS_FILE"):
        return Path(os.environ["COURSE_PROGRESS_FILE"])
    if (ROOT / "chapters").is_dir():
        return ROOT / ".course" / "progress.json"
    return Path.home() / ".build-an-llm" / "progress.json"


def load() -> dict:
    try:
        return json.loads(progress_file().read_text())
    except (OSError, ValueError):
        return {}


def record(checkpoint_id: str, passed: bool, summary: str) -> None:
    """Remember the latest verdict of ``checkpoint_id``; never fails a check over a file."""
    if os.environ.get("COURSE_RECORD_PROGRESS") == "0":
        return
    path = progress_file()
    try:
        data = load()
        data[checkpoint_id] = {
            "passed": passed,
            "summary": summary,
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass


def checkpoints_by_chapter() -> dict[str, list[str]]:
    """Each chapter's checkpoint ids in the order its notebook asks for them."""
    found: dict[str, list[str]] = {}
    folder = ROOT / "chapters"
    for notebook in sorted(folder.glob("*/*.ipynb")) if folder.is_dir() else []:
        if notebook.stem != notebook.parent.name:
            continue  # backups and copies beside the chapter notebook
        cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])
        ids = [m.group(1) for c in cells for m in CHECK_CALL.finditer("".join(c.get("source", "")))]
        found[notebook.parent.name] = list(dict.fromkeys(ids))
    return found


def report() -> str:
    seen = load()
    lines = [f"{'chapter':24s} {'passed':>8s}  next"]
    done = total = 0
    for chapter, ids in checkpoints_by_chapter().items():
        passed = [i for i in ids if seen.get(i, {}).get("passed")]
        todo = [i for i in ids if i not in passed]
        done, total = done + len(passed), total + len(ids)
        if not todo:
            step = "done ✓"
        elif todo[0] in seen:
            step = f"{todo[0]} failed last time: fix it, then rerun its checkpoint cell"
        else:
            step = f"{todo[0]}: write it and run its checkpoint cell in chapters/{chapter}/{chapter}.ipynb"
        lines.append(f"{chapter:24s} {len(passed):>3d} / {len(ids):<3d}  {step}")
    lines.append(f"{'all chapters':24s} {done:>3d} / {total:<3d}")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    """``python -m autograder progress`` takes no arguments."""


def main(args) -> int:
    print(report())
    print(f"(recorded in {progress_file()})")
    return 0
