"""The sandbox worker on its own: what crosses the pipe, what the learner's code can see and
do inside bubblewrap, and how the grader reads replies it cannot trust."""

from __future__ import annotations

import importlib.util
import os
import struct
import time

import pytest
import torch

from autograder import sandbox
from autograder.grading import _proxy
from autograder.notebooks import ROOT
from autograder.sandbox import (EncodedTensor, Limits, SandboxError, SandboxUnavailable, Worker, WireError,
                                decode, sandbox_problem, seccomp_program, unavailable_message)

PROBLEM = sandbox_problem()
needs_sandbox = pytest.mark.skipif(PROBLEM is not None, reason=unavailable_message(PROBLEM or ""))
# the audit hook is a second layer: these tests switch it off to test the operating system's
OFF = "import __main__\n__main__._IN_HOOK = True\n"

CODE = [
    "import torch\nfrom torch import nn",
    "def double_in_place(x):\n    x.mul_(2)\n    return x.sum(0), x.to(torch.bfloat16)",
    "class Scale(nn.Module):\n    def __init__(self, dim):\n        super().__init__()\n"
    "        self.weight = nn.Parameter(torch.ones(dim))\n    def forward(self, x):\n        return x * self.weight",
    "class Thing:\n    pass\ndef returns_object():\n    return Thing()",
    "def read_course():\n    import autograder\n",
]


def worker_module():
    """``sandbox_worker.py`` imported as a module (its encoder), without running ``main``."""
    spec = importlib.util.spec_from_file_location("course_sandbox_worker", sandbox.WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def encoded(value) -> bytes:
    out = bytearray()
    worker_module().encode(value, out, 0)
    return bytes(out)


@pytest.fixture(scope="module")
def worker():
    if PROBLEM:
        pytest.skip(unavailable_message(PROBLEM))
    with Worker(Limits(seconds=60), preload=("torch",)) as w:
        report = w.setup(CODE, {"double_in_place": 1, "Scale": 1, "returns_object": 0, "missing": 0})
        assert report["defined"] == {"double_in_place": "ok", "Scale": "ok", "returns_object": "ok", "missing": "missing"}
        yield w


def run_in_sandbox(source: str, *args, limits=Limits(seconds=60), preload=()):
    """Define ``probe`` in a fresh sandbox, call it once, return what it returned (or raised)."""
    with Worker(limits, preload) as w:
        report = w.setup([source], {"probe": len(args)})
        assert report["defined"]["probe"] == "ok", report
        return w.call("probe", args)


# ------------------------------------------------------------------ what crosses the pipe

def test_tensors_cross_both_ways_and_in_place_changes_are_seen(worker):
    x = torch.arange(6.0).reshape(2, 3)
    total, half = _proxy(worker, "double_in_place", "function", [], [])(x)
    assert torch.equal(total, torch.tensor([6.0, 10.0, 14.0]))
    assert half.dtype == torch.bfloat16 and torch.equal(half.float(), torch.arange(0.0, 12.0, 2).reshape(2, 3))
    assert torch.equal(x, torch.arange(0.0, 12.0, 2).reshape(2, 3))  # the mutation came back


def test_a_module_class_is_built_loaded_and_run(worker):
    out = _proxy(worker, "Scale", "module", [], [])((3,), {"weight": torch.tensor([1.0, 2.0, 3.0])}, (torch.ones(2, 3),))
    assert torch.equal(out, torch.tensor([[1.0, 2.0, 3.0]] * 2))
    with pytest.raises(ValueError, match="parameters are named"):
        _proxy(worker, "Scale", "module", [], [])((3,), {"scale": torch.ones(3)}, (torch.ones(2, 3),))


def test_a_gradient_probe_returns_tensors_or_none(worker):
    grads = _proxy(worker, "Scale", "grad_module", [], [])((3,), {"weight": torch.tensor([1.0, 2.0, 3.0])}, (torch.ones(2, 3),))
    assert set(grads) == {"weight", "input:0"} and grads["weight"].shape == (3,)


def test_objects_do_not_cross_and_globals_are_refused(worker):
    with pytest.raises(TypeError, match="not plain data"):
        _proxy(worker, "returns_object", "function", [], [])()
    import pickle

    with pytest.raises(WireError, match="unknown tag"):
        decode(pickle.dumps(torch.ones(1)))  # a pickle is not a reply: nothing is ever unpickled


def test_forbidden_imports_are_refused_and_recorded(worker):
    seen = []
    with pytest.raises(PermissionError, match="import autograder"):
        _proxy(worker, "read_course", "function", seen, [])()
    assert seen == ["import autograder"]


@needs_sandbox
def test_a_dead_worker_is_reported_not_hung():
    with Worker(Limits(seconds=10)) as w:
        w.setup(["import os\ndef die():\n    os._exit(7)"], {"die": 0})
        with pytest.raises(SandboxError, match="status 7"):
            w.call("die", ())


# ------------------------------------------------------------------ what the sandbox shows

@needs_sandbox
def test_the_sandbox_shows_neither_the_course_nor_the_grader():
    source = OFF + """
import os, socket
def probe(grader_pid):
    seen = {}
    seen["uid"] = (os.getuid(), os.getgid())
    seen["pids"] = sorted(p for p in os.listdir("/proc") if p.isdigit())
    seen["grader"] = os.path.exists(f"/proc/{grader_pid}")
    seen["root"] = sorted(os.listdir("/"))
    seen["course"] = sorted(os.listdir(ROOT)) if os.path.isdir(ROOT) else []
    seen["solutions"] = os.path.exists(ROOT + "/solutions") or os.path.exists(ROOT + "/autograder/checks")
    seen["worker_files"] = sorted(os.listdir("/course-sandbox"))
    seen["environ"] = sorted(os.environ)
    seen["interfaces"] = [name for _, name in socket.if_nameindex()]
    seen["hostname"] = socket.gethostname()
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=2)
        seen["network"] = True
    except OSError:
        seen["network"] = False
    written = []
    for path in ("/x", "/usr/x", ROOT + "/x", "/course-sandbox/x", "/dev/x", "/tmp/x"):
        try:
            open(path, "w").write("x")
            written.append(path)
        except OSError:
            pass
    seen["written"] = written
    try:
        seen["status"] = [line for line in open("/proc/self/status") if line.startswith(("CapEff", "NoNewPrivs", "Seccomp:"))]
    except OSError:  # a sandbox that shows /proc/cpuinfo only (where a procfs cannot be mounted)
        seen["status"] = []
    return seen
""".replace("ROOT", repr(str(ROOT)))
    outcome, seen, _, _ = run_in_sandbox(source, os.getpid())
    assert outcome == "return", seen
    assert seen["uid"] == (65534, 65534)
    proc = sandbox._config().proc
    assert not seen["grader"]
    assert seen["pids"] == (["1", "2"] if proc == "proc" else [])  # its own PID namespace: bwrap's init and itself
    assert set(seen["root"]) <= {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "proc", "dev",
                                 "tmp", "course-sandbox", *(p.strip("/").split("/")[0] for p in sandbox._prefixes())}
    assert set(seen["course"]) <= {".venv"} and not seen["solutions"]
    assert seen["worker_files"] == ["runners.py", "sandbox_worker.py"]
    assert set(seen["environ"]) <= {"HOME", "LANG", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "PATH", "PWD", "TMPDIR"}
    assert seen["interfaces"] == ["lo"] and seen["hostname"] == "course-sandbox" and not seen["network"]
    assert seen["written"] == ["/tmp/x"]
    status = "".join(seen["status"])
    if proc == "proc":
        assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
        if seccomp_program() is not None:
            assert "Seccomp:\t2" in status


@needs_sandbox
def test_tmp_is_private_and_gone_with_its_worker(tmp_path):
    source = "def probe(name):\n    import os\n    seen = os.listdir('/tmp')\n    open('/tmp/' + name, 'w').write('x')\n    return seen"
    marker = f"course-sandbox-test-{os.getpid()}"
    assert run_in_sandbox(source, marker)[1] == []
    assert run_in_sandbox(source, marker)[1] == []  # the next worker starts from an empty /tmp
    assert not os.path.exists(f"/tmp/{marker}")  # and the grader's /tmp never saw it


@needs_sandbox
def test_no_process_outlives_its_worker():
    """The seccomp filter refuses new processes (threads work); and without it, the PID
    namespace still takes every process down with the worker, a setsid daemon included."""
    source = OFF + """
import os, threading, time
def probe():
    box = []
    thread = threading.Thread(target=lambda: box.append(1))
    thread.start(); thread.join()
    try:
        os.fork()
        return "forked", box
    except OSError as exc:
        return exc.errno, box
"""
    outcome, value, _, _ = run_in_sandbox(source)
    if seccomp_program() is not None:
        assert outcome == "return" and value == (1, [1])  # EPERM, and the thread ran

    daemon = OFF + """
import os, time
def probe():
    child = os.fork()
    if child == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(600)
        os._exit(0)
    os.waitpid(child, 0)
    time.sleep(0.5)
    return sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
"""
    with Worker(Limits(seconds=60), seccomp=False) as w:
        w.setup([daemon], {"probe": 0})
        outcome, pids, _, _ = w.call("probe", ())
        assert outcome == "return", pids
        if sandbox._config().proc == "proc":
            assert len(pids) == 3, pids  # init, the worker, the daemon
        members = w.processes()
        assert len(members) == 4  # the same three seen from outside, and bwrap's monitor
    time.sleep(0.2)
    assert not [pid for pid in members if os.path.exists(f"/proc/{pid}")]


@needs_sandbox
def test_a_worker_that_stops_reading_cannot_block_the_grader():
    source = """
def probe(x):
    import __main__, time
    __main__.receive = lambda channel: time.sleep(600)  # never reads the next message
    return len(x)
"""
    start = time.monotonic()
    with Worker(Limits(seconds=4)) as w:
        w.setup([source], {"probe": 1})
        assert w.call("probe", (b"x",))[1] == 1
        with pytest.raises(SandboxError, match="time limit"):
            w.call("probe", (b"x" * 2**22,))  # more than the pipe holds
    assert time.monotonic() - start < 15


@needs_sandbox
def test_a_reply_forged_on_the_pipe_is_refused():
    source = """
import os, stat, fcntl
def probe():
    for fd in range(3, 64):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
                os.write(fd, (5).to_bytes(8, "big") + b"t\\x00\\x00\\x00\\x00")  # an empty tuple
        except OSError:
            pass
    return "ok"
"""
    with pytest.raises(SandboxError, match="malformed") as raised:
        run_in_sandbox(source)
    assert raised.value.kind == "crashed"


def test_unsafe_mode_runs_a_plain_process():
    outcome, uid, _, _ = run_in_sandbox("def probe():\n    import os\n    return os.getuid()",
                                        limits=Limits(seconds=30, unsafe_no_sandbox=True))
    assert outcome == "return" and uid == os.getuid()


def test_without_bwrap_the_grader_refuses_and_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    sandbox._config.cache_clear()
    try:
        assert "not installed" in sandbox_problem()
        with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap") as raised:
            Worker(Limits(seconds=5))
        assert "--unsafe-no-sandbox" in str(raised.value) and "container" in str(raised.value)
    finally:
        monkeypatch.undo()
        sandbox._config.cache_clear()


# ------------------------------------------------------------------ the decoder

def test_plain_data_and_tensors_round_trip():
    value = (None, True, 1, -(2**63), 2**64, 10**400, 1.5, 2j, "é\ud800", b"\x00", [1, 2, 3] * 10, [0.5] * 9,
             {"a": {1, 2}, (1, "b"): frozenset([3])}, torch.arange(6.0).reshape(2, 3), torch.ones(2, dtype=torch.bfloat16))
    back = decode(encoded(value))
    assert back[:13] == value[:13]
    assert back[13] == EncodedTensor("float32", (2, 3), torch.arange(6.0).numpy().tobytes())
    assert back[14].dtype == "bfloat16" and back[14].shape == (2,)


@pytest.mark.parametrize("data, problem", [
    (b"l" + struct.pack("<I", 1) * 1 + b"N" + b"junk", "after the end"),
    ((b"l" + struct.pack("<I", 1)) * 100_000 + b"N", "nested more than"),
    (b"l" + struct.pack("<I", 2**32 - 1) + b"N", "holds fewer"),
    (b"q" + struct.pack("<I", 2**30) + b"\x00" * 64, "holds fewer"),
    (b"I" + struct.pack("<I", 2**20) + b"\x01" * 2**20, "integer of"),
    (b"s" + struct.pack("<I", 10) + b"abc", "ends in the middle"),
    (b"s" + struct.pack("<I", 2) + b"\xff\xfe", "not UTF-8"),
    (b"X" + b"\x07float32" + b"\x01" + struct.pack("<Q", 10) + struct.pack("<Q", 4) + b"\x00" * 4, "bytes of data"),
    (b"X" + b"\x06object" + b"\x00" + struct.pack("<Q", 0), "not accepted"),
    (b"S" + struct.pack("<I", 1) + b"l" + struct.pack("<I", 0), "cannot be hashed"),
    (b"\x80\x04\x95", "unknown tag"),
    (b"", "ends in the middle"),
])
def test_forged_replies_are_refused(data, problem):
    with pytest.raises(WireError, match=problem):
        decode(data)


def test_hash_flooded_dicts_are_refused_quickly():
    modulus = 2**61 - 1  # every key below hashes to 0
    body = b"".join(b"I" + struct.pack("<I", 16) + (k * modulus).to_bytes(16, "little", signed=True) + b"N"
                    for k in range(1, 5001))
    start = time.perf_counter()
    with pytest.raises(WireError, match="crafted"):
        decode(b"d" + struct.pack("<I", 5000) + body)
    assert time.perf_counter() - start < 2


def test_shared_references_are_paid_for_by_the_sender():
    module = worker_module()
    big = bytes(2**20)
    start = time.perf_counter()
    with pytest.raises(module.TooLarge):
        module.encode([big] * 4096, bytearray(), 0)  # 4 GB if expanded; stops at the limit
    assert time.perf_counter() - start < 10


def test_the_seccomp_filter_is_a_valid_program():
    for machine in ("x86_64", "aarch64"):
        program = seccomp_program(machine)
        assert program and len(program) % 8 == 0 and len(program) // 8 < 256
    assert seccomp_program("sparc64") is None
