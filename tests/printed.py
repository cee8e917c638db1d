"""What each source notebook prints, recorded once and compared with every run of the suite.

COURSE.md asks that two runs of a chapter print the same numbers. Rather than execute every
notebook twice, the suite executes each once and compares what it printed with the text
recorded in ``tests/printed/<chapter>.json`` by

    .venv/bin/python -m tests.printed [chapter ...]      # all chapters without arguments

- **On the machine that recorded it** (same torch, same CPU model and kernel family, same
  number of threads) the printed text must be identical, timings masked: same seed, same
  numbers.
- **On any other machine** torch computes other low-order bits, and a few hundred training
  steps carry them into the printed digits. There the words must be identical and each number
  equal within ``REL_TOL`` of the recorded one, or within ``LAST_DIGITS`` units of its last
  printed digit (counts out of a hundred, losses printed to three decimals), or both below
  ``NOISE`` (a printed rounding error, "largest difference 8.9e-08", is noise on every CPU).
  Measured: under ``ATEN_CPU_CAPABILITY=default`` against a recording made with AVX-512, the
  largest change is chapter 06's MoE validation loss, 5.7067 -> 5.7152 (0.15%), and rounding
  errors such as 8.9e-08 -> 1.3e-07.

- **Cells whose printed text is chaotic across CPUs** are marked in the source notebook with
  cell metadata ``{"course": {"printed": "machine-dependent"}}``: a reinforcement-learning run
  (chapter 11's PPO samples its own training data, so one flipped token changes every later step)
  or the replies of a briefly fine-tuned model (chapter 08's 80-step run, where several answers
  sit between two names). Measured under ``ATEN_CPU_CAPABILITY=avx2`` against an AVX-512
  recording: chapter 11's gold score after PPO +0.844 -> +0.875 and its KL 1.28 -> 0.83, chapter
  08's 80-step replies with other names. Such a cell is compared exactly on the recording
  machine and, on any other, must still print the same number of lines; every other cell keeps
  the rules above.

A notebook whose code changed is re-recorded with the command above (CI never records).
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path

RECORD_DIR = Path(__file__).with_name("printed")
# A wall-clock time ("0.8 s", "12 ms", "3.1 ms/token") or a speed ratio measured from them
# ("2.4x faster"): different on every run, never compared.
TIMING = re.compile(r"\d[\d,]*(\.\d+)?\s?(s|ms|µs|us)\b|\d+(\.\d+)?x (faster|slower)\b")
NUMBER = re.compile(r"[-+]?(\d[\d,]*\.?\d*|\.\d+)([eE][-+]?\d+)?")
REL_TOL = 0.03
LAST_DIGITS = 3
NOISE = 1e-5


def machine() -> dict:
    """What decides the low-order bits of torch's results on CPU."""
    import torch

    model = ""
    if Path("/proc/cpuinfo").exists():
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu": model or platform.processor(), "threads": os.environ.get("OMP_NUM_THREADS", "")}


def printed_text(nb) -> list[str]:
    """The printed text (stdout) of every code cell, timings masked."""
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        # stdout only: a progress bar outside a notebook front end (tqdm on stderr) shows timings
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.get("name") == "stdout")
        out.append(TIMING.sub("<time>", text))
    return out


MACHINE_DEPENDENT = "machine-dependent"


def machine_dependent_cells(nb) -> set[int]:
    """Indexes (among code cells, as in :func:`printed_text`) of the cells marked as printing
    machine-dependent text."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    return {i for i, c in enumerate(code) if c.metadata.get("course", {}).get("printed") == MACHINE_DEPENDENT}


def record_path(chapter: str) -> Path:
    return RECORD_DIR / f"{chapter}.json"


def load_record(chapter: str) -> dict | None:
    path = record_path(chapter)
    return json.loads(path.read_text()) if path.exists() else None


def _number(token: str) -> float:
    return float(token.replace(",", ""))


def _unit(token: str) -> float:
    """One unit of the last printed digit: 0.001 for "2.345", 1 for "78"."""
    mantissa = re.split(r"[eE]", token)[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(re.split(r"[eE]", token)[1]) if re.search(r"[eE]", token) else 0
    return 10.0 ** (exponent - decimals)


def differences(recorded: list[str], printed: list[str], *, exact: bool,
                machine_dependent: set[int] = frozenset()) -> list[str]:
    """Why ``printed`` is not what was recorded: an empty list when it is. ``machine_dependent``:
    code cells that, on another machine (``exact`` false), need only print as many lines."""
    if len(recorded) != len(printed):
        return [f"{len(printed)} code cells, {len(recorded)} recorded: re-record with `python -m tests.printed`"]
    found = []
    for index, (was, now) in enumerate(zip(recorded, printed)):
        if was == now:
            continue
        if exact:
            found.append(f"code cell {index}: printed\n{now!r}\nrecorded\n{was!r}")
            continue
        if index in machine_dependent:
            if now.count("\n") != was.count("\n"):
                found.append(f"code cell {index} (machine-dependent): printed {now.count(chr(10))} lines, "
                             f"{was.count(chr(10))} recorded")
            continue
        words_was, words_now = NUMBER.split(was), NUMBER.split(now)
        numbers_was, numbers_now = [m.group(0) for m in NUMBER.finditer(was)], [m.group(0) for m in NUMBER.finditer(now)]
        if words_was[::3] != words_now[::3] or len(numbers_was) != len(numbers_now):
            found.append(f"code cell {index}: the words differ\nprinted\n{now!r}\nrecorded\n{was!r}")
            continue
        for a, b in zip(numbers_was, numbers_now):
            x, y = _number(a), _number(b)
            if max(abs(x), abs(y)) < NOISE:
                continue
            if abs(x - y) > max(REL_TOL * max(abs(x), abs(y)), LAST_DIGITS * _unit(a)):
                found.append(f"code cell {index}: printed {b} where {a} was recorded")
    return found


def record(chapters: list[str]) -> None:
    from autograder.notebooks import source_path
    from tests.conftest import execute_notebook

    RECORD_DIR.mkdir(exist_ok=True)
    for chapter in chapters:
        nb, seconds = execute_notebook(source_path(chapter))
        record_path(chapter).write_text(json.dumps(
            {"machine": machine(), "printed": printed_text(nb)}, indent=1, ensure_ascii=False) + "\n")
        print(f"{chapter}: recorded in {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    # the suite's set-up: one torch thread per notebook (tests/conftest.py)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    from autograder.notebooks import chapters as all_chapters

    record(sys.argv[1:] or all_chapters())
