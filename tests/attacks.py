"""The attack catalogue: submissions that try to earn points without a correct answer.

Each attack starts from the fully solved chapter 01 notebook and changes it the way a
student (or a broken submission) would. ``target`` is the checkpoint it attacks: that one
must score 0 and be flagged or explained, every other checkpoint must keep its points.
``nbgrader`` says whether the attack is safe to run under plain ``nbgrader autograde`` too,
and what nbgrader gives it (``None``: the same as the grading command).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nbformat

from autograder.core import lookup
from autograder.notebooks import ROOT, source_path

CHAPTER = "01_tokenizer"
TOTAL = 9


def solved():
    return nbformat.read(source_path(CHAPTER), as_version=4)


def cell(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def replace_body(nb, grade_id, function, body):
    """Keep the answer cell's other functions; give ``function`` a new body."""
    c = cell(nb, grade_id)
    head, _, _ = c.source.partition(f"def {function}(")
    rest = c.source[len(head):]
    signature_end = rest.index('"""', rest.index('"""') + 3) + 3
    after = rest[signature_end:]
    following = after.find("\n\n\ndef ")
    tail = after[following:] if following != -1 else ""
    c.source = head + rest[:signature_end] + "\n" + body + tail


def add_cell(nb, source, before_grade_id="merge"):
    index = nb.cells.index(cell(nb, before_grade_id))
    nb.cells.insert(index, nbformat.v4.new_code_cell(source))


# Attacks target decode: no other answer calls it, so every other checkpoint must keep its
# points (an attack on merge would also sink train_bpe, which calls the learner's merge).
TARGET = "01.decode"
WRONG = "    return ''  # wrong\n"


@dataclass
class Attack:
    name: str
    target: str
    build: Callable
    flagged: bool  # must the report flag it?
    nbgrader_safe: bool = True
    nbgrader_score: float | None = None  # None: nbgrader gives the same score as the grader


def patch_then_wrong(patch: str):
    def build(nb):
        add_cell(nb, patch)
        replace_body(nb, "decode", "decode", WRONG)
    return build


def course_check_patched(nb):
    replace_body(nb, "decode", "decode", WRONG)
    cell(nb, "decode").source += (
        "\n\nimport autograder\nautograder.check = lambda *args, **kwargs: print('✓ (patched)')\n"
    )


def imports_reference(nb):
    replace_body(nb, "decode", "decode", "    from solutions.tokenizer import decode as reference\n    return reference(ids, vocab)\n")


def reads_reference(nb):
    path = ROOT / "solutions" / "tokenizer.py"
    replace_body(nb, "decode", "decode", (
        f"    namespace = {{}}\n    exec(open({str(path)!r}).read(), namespace)\n"
        "    return namespace['decode'](ids, vocab)\n"
    ))


def edits_check_cell(nb):
    replace_body(nb, "decode", "decode", WRONG)
    cell(nb, "check_decode").source = "print('✓ 01.decode')"


def deletes_check_cell(nb):
    replace_body(nb, "decode", "decode", WRONG)
    nb.cells.remove(cell(nb, "check_decode"))


def hard_codes_visible_outputs(nb):
    cases = lookup("01.merge").cases(random.Random("01.merge/0"))
    table = {repr(c.args): None for c in cases}
    from solutions.tokenizer import merge

    table = {key: merge(*eval(key)) for key in table}  # noqa: S307 - our own reprs
    replace_body(nb, "decode", "decode", f"    table = {table!r}\n    return table.get(repr((ids, pair, new_id)), list(ids))\n")


ATTACKS = [
    Attack("monkeypatch torch.allclose", TARGET, patch_then_wrong("import torch\ntorch.allclose = lambda *a, **k: True"), True),
    Attack("monkeypatch torch.testing.assert_close", TARGET,
           patch_then_wrong("import torch.testing\ntorch.testing.assert_close = lambda *a, **k: None"), True),
    Attack("monkeypatch numpy.allclose", TARGET, patch_then_wrong("import numpy\nnumpy.allclose = lambda *a, **k: True"), True),
    Attack("monkeypatch the course's check", TARGET, course_check_patched, True, nbgrader_score=TOTAL),
    Attack("import the reference package", TARGET, imports_reference, True, nbgrader_score=TOTAL),
    Attack("read the reference's files", TARGET, reads_reference, True, nbgrader_score=TOTAL),
    Attack("edit a checkpoint cell", TARGET, edits_check_cell, True),
    Attack("delete a checkpoint cell", TARGET, deletes_check_cell, True),
    Attack("hard-code the visible outputs", TARGET, hard_codes_visible_outputs, False),
    Attack("infinite loop", TARGET, lambda nb: replace_body(nb, "decode", "decode", "    while True:\n        pass\n"), True),
    Attack("allocate 30 GB", "01.decode", lambda nb: replace_body(
        nb, "decode", "decode", "    hoard = bytearray(30 * 2**30)\n    hoard[::4096] = b'x' * len(hoard[::4096])\n    return ''\n"),
        True, nbgrader_safe=False),
    Attack("sys.exit()", TARGET, lambda nb: replace_body(nb, "decode", "decode", "    import sys\n    sys.exit(0)\n"), True),
    Attack("os._exit()", TARGET, lambda nb: replace_body(nb, "decode", "decode", "    import os\n    os._exit(0)\n"),
           True, nbgrader_safe=False),
    Attack("print 100 MB", TARGET, lambda nb: replace_body(
        nb, "decode", "decode", "    print('x' * 100_000_000)\n    return ''\n"), True),
    Attack("segfault through ctypes", TARGET, lambda nb: replace_body(
        nb, "decode", "decode", "    import ctypes\n    return ctypes.string_at(0)\n"), True, nbgrader_safe=False),
    Attack("spawn processes without end", TARGET, lambda nb: replace_body(
        nb, "decode", "decode", "    import os\n    while True:\n        os.fork()\n"), True, nbgrader_safe=False),
    Attack("spawn a shell", TARGET, lambda nb: replace_body(
        nb, "decode", "decode", "    import subprocess\n    return subprocess.run(['echo'], capture_output=True, text=True).stdout\n"),
        True, nbgrader_safe=False),
]


def write_attack(attack: Attack, folder: Path) -> Path:
    nb = solved()
    attack.build(nb)
    path = folder / attack.name.replace(" ", "_").replace("'", "").replace(".", "_").replace("(", "").replace(")", "") / f"{CHAPTER}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path
