"""The grader's side of the sandbox: start a worker, send it code and inputs, read back data.

One worker per checkpoint, so a crash, ``sys.exit``, ``os._exit``, a segfault or a runaway
loop costs that checkpoint only.

**Isolation is the operating system's** (bubblewrap, ``bwrap``): each worker runs in new
user, PID, network, IPC, UTS and mount namespaces, as an unprivileged uid, with no
capabilities. Its file system is a read-only view of the Python installation (the
virtual environment and the base interpreter's prefix), ``/usr`` for the system libraries,
the worker's two files (``sandbox_worker.py`` and ``runners.py``) and nothing else of the
course: no ``solutions/``, ``tests/``, check modules, fixtures or data. ``/tmp`` is a
private, size-capped tmpfs that disappears with the sandbox. ``/proc`` shows the sandbox's
own processes only (the grader is in another PID namespace), and the environment holds
a handful of variables set here. A seccomp filter refuses new processes (threads are
allowed), ``exec``-free namespace tricks, ``ptrace`` and other kernel interfaces the
learner's code has no use for. ``--die-with-parent``, ``--new-session``.

**Nothing outlives its checkpoint**: the worker's processes live in their own PID
namespace; killing its init kills every one of them, and the grader waits until they are
gone. **Limits**: wall-clock time (the whole checkpoint, setup included), address space
(``RLIMIT_AS``), CPU seconds, file size, open files, no core dumps, the size of ``/tmp``.

**Everything from the worker is hostile input**: replies are decoded by :func:`decode`, a
small restricted format (no pickle, no references, no constructors) with bounded size,
nesting depth, element count, integer size and tensor shapes, and a guard against
hash-flooded dicts. Writes to the worker never block past the time limit.

Where bubblewrap cannot run, :func:`require_sandbox` refuses with :func:`unavailable_message`;
``Limits(unsafe_no_sandbox=True)`` runs the worker as a plain process (the audit hook in the
worker, which the learner's code can defeat, is then the only barrier).
"""

from __future__ import annotations

import array
import functools
import os
import pickle
import platform
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

WORKER = Path(__file__).with_name("sandbox_worker.py")
RUNNERS = Path(__file__).with_name("runners.py")
ROOT = Path(__file__).resolve().parent.parent
SANDBOX_DIR = "/course-sandbox"  # where the worker's two files appear inside the sandbox
SANDBOX_UID = 65534  # "nobody" inside the user namespace

MAX_REPLY_BYTES = 64 * 2**20  # one reply of the worker, encoded
MAX_DEPTH = 64  # nesting of lists, tuples, dicts, sets in a reply
MAX_ITEMS = 4_000_000  # values in one reply (a packed list of n ints counts n)
MAX_INT_BYTES = 4096  # about 9,800 decimal digits
MAX_TENSOR_DIMS = 32
MAX_HASH_COLLISIONS = 64  # keys of one dict (or set) sharing a hash value
TENSOR_DTYPES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "complex128": 16, "complex64": 8,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
}


@dataclass(frozen=True)
class Limits:
    seconds: float = 60.0  # per checkpoint, setup included
    memory_mb: int = 8192  # address space of the worker (torch alone reserves ~2 GB)
    tmp_mb: int = 256  # the worker's private /tmp (memory-backed)
    unsafe_no_sandbox: bool = False  # run without bubblewrap: the audit hook only (not for grades that count)


class SandboxError(Exception):
    """The worker could not answer: it timed out, died, or sent something unreadable."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind  # "timeout", "crashed", "memory"


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot run on this machine, and ``--unsafe-no-sandbox`` was not given."""


# ------------------------------------------------------------------------ the wire format
#
# One message: an 8-byte big-endian length, then one encoded value. A value is a tag byte,
# then (little-endian):
#   N T F                 None, True, False
#   i <q>                 int that fits 64 bits        I <u32 n> <n bytes>   larger int (signed)
#   f <d>                 float                        c <d d>               complex
#   s <u32 n> <utf-8>     str (surrogatepass)          b <u32 n> <bytes>     bytes
#   l t S Z <u32 n> v*n   list, tuple, set, frozenset  d <u32 n> (k v)*n     dict
#   q <u32 n> <n q>       list of ints (packed)        D <u32 n> <n d>       list of floats (packed)
#   X <u8 n> dtype <u8 ndim> <ndim Q> <Q n> <n bytes>  tensor (bfloat16 as its int16 bits)
#   U <value> <value>     an object that is not plain data: (type name, short repr), both str
#   K                     (in the arguments sent back) this argument was left unchanged
# No references: a value shared n times is sent n times, so the sender pays for it.


class WireError(ValueError):
    """A reply that is not a well-formed message of the wire format."""


@dataclass(frozen=True)
class EncodedTensor:
    dtype: str
    shape: tuple
    raw: bytes


@dataclass(frozen=True)
class Unsupported:
    type_name: str
    text: str


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()  # an argument the call left as it was (tag K), not sent back


class _Decoder:
    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0
        self.items = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or n > len(self.data) - self.pos:
            raise WireError("the reply ends in the middle of a value")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def count(self, size: int = 1) -> int:
        (n,) = self.unpack("<I")
        if n * size > len(self.data) - self.pos:
            raise WireError(f"the reply announces {n:,} items but holds fewer")
        self.items += n
        if self.items > MAX_ITEMS:
            raise WireError(f"the reply holds more than {MAX_ITEMS:,} values")
        return n

    def values(self, n: int, depth: int) -> list:
        """``n`` values in a row: ints, floats, strings and bytes decoded inline (the common
        case, and most of the time), anything else through :meth:`value`."""
        data, end, out = self.data, len(self.data), []
        append, unpack_from = out.append, struct.unpack_from
        for _ in range(n):
            pos = self.pos
            if pos >= end:
                raise WireError("the reply ends in the middle of a value")
            tag = data[pos]
            if tag == 0x69:  # i
                append(unpack_from("<q", data, pos + 1)[0])
                self.pos = pos + 9
            elif tag == 0x62 or tag == 0x73:  # b, s
                (size,) = unpack_from("<I", data, pos + 1)
                start = pos + 5
                if start + size > end:
                    raise WireError("the reply ends in the middle of a value")
                if tag == 0x62:
                    append(bytes(data[start : start + size]))
                else:
                    try:
                        append(str(data[start : start + size], "utf-8", "surrogatepass"))
                    except UnicodeDecodeError as exc:
                        raise WireError(f"a string that is not UTF-8 ({exc.reason})") from None
                self.pos = start + size
            elif tag == 0x66:  # f
                append(unpack_from("<d", data, pos + 1)[0])
                self.pos = pos + 9
            else:
                append(self.value(depth))
                continue
            self.items += 1
        if self.items > MAX_ITEMS:
            raise WireError(f"the reply holds more than {MAX_ITEMS:,} values")
        return out

    def value(self, depth: int = 0):
        if depth > MAX_DEPTH:
            raise WireError(f"the reply is nested more than {MAX_DEPTH} levels deep")
        self.items += 1
        if self.items > MAX_ITEMS:
            raise WireError(f"the reply holds more than {MAX_ITEMS:,} values")
        tag = bytes(self.take(1))
        if tag == b"N":
            return None
        if tag == b"T":
            return True
        if tag == b"F":
            return False
        if tag == b"i":
            return self.unpack("<q")[0]
        if tag == b"I":
            (n,) = self.unpack("<I")
            if n > MAX_INT_BYTES:
                raise WireError(f"an integer of {n:,} bytes (at most {MAX_INT_BYTES:,})")
            return int.from_bytes(self.take(n), "little", signed=True)
        if tag == b"f":
            return self.unpack("<d")[0]
        if tag == b"c":
            real, imag = self.unpack("<dd")
            return complex(real, imag)
        if tag == b"s":
            (n,) = self.unpack("<I")
            try:
                return str(self.take(n), "utf-8", "surrogatepass")
            except UnicodeDecodeError as exc:
                raise WireError(f"a string that is not UTF-8 ({exc.reason})") from None
        if tag == b"b":
            (n,) = self.unpack("<I")
            return bytes(self.take(n))
        if tag in (b"q", b"D"):
            n = self.count(8)
            packed = array.array("q" if tag == b"q" else "d")
            packed.frombytes(self.take(8 * n))
            if sys.byteorder == "big":
                packed.byteswap()
            return packed.tolist()
        if tag in (b"l", b"t", b"S", b"Z"):
            n = self.count()
            items = self.values(n, depth + 1)
            if tag == b"l":
                return items
            if tag == b"t":
                return tuple(items)
            _check_hashes(items)
            return set(items) if tag == b"S" else frozenset(items)
        if tag == b"d":
            n = self.count(2)
            flat = self.values(2 * n, depth + 1)
            keys = flat[0::2]
            _check_hashes(keys)
            return dict(zip(keys, flat[1::2]))
        if tag == b"K":
            return UNCHANGED
        if tag == b"X":
            (n,) = self.unpack("<B")
            dtype = str(self.take(n), "ascii", "replace")
            if dtype not in TENSOR_DTYPES:
                raise WireError(f"a tensor of dtype {dtype!r}, which is not accepted")
            (ndim,) = self.unpack("<B")
            if ndim > MAX_TENSOR_DIMS:
                raise WireError(f"a tensor of {ndim} dimensions")
            shape = self.unpack(f"<{ndim}Q")
            (nbytes,) = self.unpack("<Q")
            numel = 1
            for dim in shape:
                if dim > 2**40:
                    raise WireError(f"a tensor dimension of {dim:,}")
                numel *= dim
            if numel * TENSOR_DTYPES[dtype] != nbytes:
                raise WireError(f"a tensor of shape {shape} and dtype {dtype} with {nbytes:,} bytes of data")
            return EncodedTensor(dtype, tuple(shape), bytes(self.take(nbytes)))
        if tag == b"U":
            type_name, text = self.value(depth + 1), self.value(depth + 1)
            if not (isinstance(type_name, str) and isinstance(text, str)):
                raise WireError("an unsupported-object marker without its name")
            return Unsupported(type_name[:100], text[:200])
        raise WireError(f"unknown tag {tag!r} at byte {self.pos - 1:,}")


def _check_hashes(keys: list) -> None:
    """Refuse unhashable keys, and keys crafted to share one hash value (each insertion into
    a dict would then scan all the others: quadratic time)."""
    try:
        hashes = [hash(k) for k in keys]
    except TypeError as exc:
        raise WireError(f"a dict key or set item that cannot be hashed ({exc})") from None
    if len(hashes) - len(set(hashes)) > MAX_HASH_COLLISIONS:
        raise WireError("a dict or set whose keys were crafted to share hash values")


def decode(data: bytes):
    """One value of the wire format, with every limit enforced; :class:`WireError` otherwise."""
    decoder = _Decoder(data)
    try:
        value = decoder.value()
    except (struct.error, OverflowError, MemoryError, RecursionError) as exc:
        raise WireError(f"{type(exc).__name__}: {exc}") from None
    if decoder.pos != len(decoder.data):
        raise WireError(f"{len(decoder.data) - decoder.pos:,} bytes after the end of the reply")
    return value


# ------------------------------------------------------------------------ reply checking

def _text(value, limit: int) -> str:
    if not isinstance(value, str):
        raise WireError(f"expected a string, got {type(value).__name__}")
    return value[:limit]


def _texts(value, limit: int = 300, most: int = 200) -> list[str]:
    if not isinstance(value, list):
        raise WireError(f"expected a list of strings, got {type(value).__name__}")
    return [_text(v, limit) for v in value[:most]]


def _count(value) -> int:
    if type(value) is not int or value < 0:
        raise WireError(f"expected a count, got {type(value).__name__}")
    return value


def _check_ready(message, n_cells: int, names) -> dict:
    if not (isinstance(message, tuple) and len(message) == 2 and message[0] == "ready" and isinstance(message[1], dict)):
        raise WireError("expected the worker's ('ready', report)")
    report = message[1]
    cell_errors = report.get("cell_errors")
    if not isinstance(cell_errors, list):
        raise WireError("malformed cell errors")
    errors = []
    for entry in cell_errors[:1000]:
        if not (isinstance(entry, tuple) and len(entry) == 3 and type(entry[0]) is int and 0 <= entry[0] < n_cells):
            raise WireError("a malformed cell error")
        errors.append((entry[0], _text(entry[1], 100), _text(entry[2], 2000)))
    by_cell = report.get("violations_by_cell")
    if not isinstance(by_cell, dict) or not all(type(k) is int and 0 <= k < n_cells for k in by_cell):
        raise WireError("malformed violations")
    defined = report.get("defined")
    if not isinstance(defined, dict) or set(defined) != set(names) or not all(isinstance(v, str) for v in defined.values()):
        raise WireError("the report does not describe the requested names")
    return {
        "cell_errors": errors,
        "violations_by_cell": {k: _texts(v) for k, v in by_cell.items()},
        "defined": {k: v[:300] for k, v in defined.items()},
        "patched": _texts(report.get("patched")),
        "output": _text(report.get("output"), 25_000),
        "output_dropped": _count(report.get("output_dropped")),
    }


def _check_reply(reply):
    if not isinstance(reply, tuple) or not reply:
        raise WireError("expected a reply tuple")
    if reply[0] == "return" and len(reply) == 5:
        _, value, args_after, seen, dropped = reply
        if not isinstance(args_after, list):
            raise WireError("the arguments after the call are not a list")
        return "return", value, args_after, _texts(seen), _count(dropped)
    if reply[0] == "raise" and len(reply) == 4:
        _, info, seen, dropped = reply
        if not (isinstance(info, dict) and isinstance(info.get("mro"), list) and info["mro"]):
            raise WireError("a malformed exception")
        clean = {"mro": _texts(info["mro"], 100, 64), "message": _text(info.get("message"), 10_000)}
        return "raise", clean, None, _texts(seen), _count(dropped)
    raise WireError(f"unexpected reply {str(reply[0])[:40]!r}")


# ------------------------------------------------------------------------- bubblewrap

INSTALL_HELP = (
    "Install bubblewrap: `sudo apt-get install bubblewrap` (Debian, Ubuntu; `dnf install bubblewrap` on "
    "Fedora). It needs Linux with user namespaces: in a Docker or Podman container, start the container "
    "with `--security-opt seccomp=unconfined --security-opt apparmor=unconfined` (the default profiles "
    "refuse new namespaces), or grade on a Linux host or VM; on macOS or Windows, grade inside such a "
    "Linux container or VM. To grade without isolation anyway (never for grades that count): "
    "--unsafe-no-sandbox."
)


def unavailable_message(problem: str) -> str:
    return (f"The grader runs every student's code in a bubblewrap sandbox, and it cannot run here: {problem}. "
            + INSTALL_HELP)


@dataclass(frozen=True)
class _Config:
    bwrap: str
    proc: str  # "proc": a procfs of the sandbox's PID namespace; "cpuinfo": only /proc/cpuinfo
    disable_userns: bool


def _prefixes() -> list[str]:
    found = []
    for path in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
                 os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))):
        for p in (os.path.abspath(path), os.path.realpath(path)):
            if p not in found and not any(p == f or p.startswith(f + os.sep) for f in found):
                found = [f for f in found if not f.startswith(p + os.sep)] + [p]
    return found


def _masked(prefixes: list[str]) -> list[str]:
    """Copies of the course's own packages inside the Python installation (a non-editable
    ``pip install .``): hidden in the sandbox."""
    hidden = []
    for entry in sys.path:
        if entry and any(entry.startswith(p + os.sep) for p in prefixes):
            for name in ("solutions", "autograder", "tests", "solutions.py"):
                if os.path.exists(os.path.join(entry, name)):
                    hidden.append(os.path.join(entry, name))
    return hidden


def _bwrap_args(config: _Config, limits: Limits, extra: list[str]) -> list[str]:
    args = [config.bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--hostname", "course-sandbox", "--new-session", "--die-with-parent"]
    if config.disable_userns:
        args.append("--disable-userns")
    args += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = f"/{name}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime"):
        args += ["--ro-bind-try", path, path]
    # the private /tmp first: a Python environment (or the course's clone) that lives under
    # /tmp is bound on top of it below, instead of being hidden by it
    args += ["--perms", "1777", "--size", str(limits.tmp_mb * 2**20), "--tmpfs", "/tmp"]
    prefixes = [p for p in _prefixes() if not (p == "/usr" or p.startswith("/usr/"))]
    for prefix in prefixes:
        args += ["--ro-bind", os.path.realpath(prefix), prefix]
    for hidden in _masked(prefixes):
        args += (["--tmpfs", hidden, "--remount-ro", hidden] if os.path.isdir(hidden)
                 else ["--ro-bind", "/dev/null", hidden])
    args += ["--ro-bind", str(WORKER), f"{SANDBOX_DIR}/sandbox_worker.py",
             "--ro-bind", str(RUNNERS), f"{SANDBOX_DIR}/runners.py"]
    if config.proc == "proc":
        args += ["--proc", "/proc"]
    else:
        args += ["--dir", "/proc", "--ro-bind", "/proc/cpuinfo", "/proc/cpuinfo"]
    args += ["--dev", "/dev",
             "--perms", "1777", "--size", str(4 * 2**20), "--tmpfs", "/dev/shm",
             "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp"]
    return args + extra + ["--", sys.executable, "-I", "-B", f"{SANDBOX_DIR}/sandbox_worker.py", str(ROOT)]


def _sandbox_fds(seccomp: bool = True) -> tuple[list[str], list[int], int]:
    """bwrap's ``--info-fd`` and ``--seccomp`` arguments: (arguments, the child's ends of the
    pipes, to pass and then close here, the read end of the info pipe)."""
    info_r, info_w = os.pipe()
    args, child = ["--info-fd", str(info_w)], [info_w]
    program = seccomp_program() if seccomp else None
    if program is not None:
        seccomp_r, seccomp_w = os.pipe()
        os.write(seccomp_w, program)  # a few hundred bytes: fits the pipe's buffer
        os.close(seccomp_w)
        args += ["--seccomp", str(seccomp_r)]
        child.append(seccomp_r)
    return args, child, info_r


@functools.lru_cache(maxsize=None)
def _config() -> _Config | str:
    """How bubblewrap runs here, or why it cannot (probed once per process)."""
    if not sys.platform.startswith("linux"):
        return f"bubblewrap needs Linux, and this is {sys.platform}"
    for prefix in _prefixes():
        if prefix == os.sep or str(ROOT) == prefix or str(ROOT).startswith(prefix + os.sep):
            return f"the Python installation ({prefix}) contains the course itself, so the sandbox would show it"
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bwrap (bubblewrap) is not installed, or not on PATH"
    try:
        usage = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap does not start ({exc})"
    problems = []
    for proc in ("proc", "cpuinfo"):
        config = _Config(bwrap, proc, "--disable-userns" in usage)
        extra, child_fds, info_r = _sandbox_fds()
        argv = _bwrap_args(config, Limits(), extra)
        argv = argv[: argv.index("--") + 2] + ["-I", "-S", "-c", "import os; print(os.getuid(), open('/proc/cpuinfo').read(1) != '')"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=_environment(),
                                  stdin=subprocess.DEVNULL, pass_fds=tuple(child_fds))
        except (OSError, subprocess.SubprocessError) as exc:
            problems.append(str(exc))
            continue
        finally:
            for fd in (*child_fds, info_r):
                os.close(fd)
        if done.returncode == 0 and done.stdout.split() == [str(SANDBOX_UID), "True"]:
            return config
        problems.append((done.stderr.strip() or f"exit status {done.returncode}").splitlines()[-1][:300])
    return f"bwrap is installed but cannot start a sandbox ({problems[0]})"


def sandbox_problem() -> str | None:
    """``None`` when bubblewrap works here, else why not."""
    config = _config()
    return config if isinstance(config, str) else None


def require_sandbox(limits: Limits) -> None:
    """Raise :class:`SandboxUnavailable` unless the sandbox works or the limits waive it."""
    if not limits.unsafe_no_sandbox:
        problem = sandbox_problem()
        if problem:
            raise SandboxUnavailable(unavailable_message(problem))


# ------------------------------------------------------------------------------ seccomp

CLONE_THREAD = 0x00010000
CLONE_NAMESPACES = 0x7E020080  # NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
# Refused with EPERM: new processes (threads stay allowed), namespaces and mounts, tracing
# and other processes' memory, keyrings, BPF, perf, userfaultfd, io_uring, kernel modules.
_DENIED = ("fork", "vfork", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "ptrace",
           "process_vm_readv", "process_vm_writev", "keyctl", "add_key", "request_key", "bpf",
           "perf_event_open", "userfaultfd", "kexec_load", "kexec_file_load", "init_module",
           "finit_module", "delete_module", "open_by_handle_at", "io_uring_setup", "io_uring_enter",
           "io_uring_register", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
           "mount_setattr", "pidfd_getfd", "syslog")
_SYSCALLS = {  # from the kernel's uapi headers: asm/unistd_64.h (x86_64), asm-generic/unistd.h (aarch64)
    "x86_64": (0xC000003E, dict(
        fork=57, vfork=58, clone=56, clone3=435, unshare=272, setns=308, mount=165, umount2=166,
        pivot_root=155, chroot=161, ptrace=101, process_vm_readv=310, process_vm_writev=311, keyctl=250,
        add_key=248, request_key=249, bpf=321, perf_event_open=298, userfaultfd=323, kexec_load=246,
        kexec_file_load=320, init_module=175, finit_module=313, delete_module=176, open_by_handle_at=304,
        io_uring_setup=425, io_uring_enter=426, io_uring_register=427, open_tree=428, move_mount=429,
        fsopen=430, fsconfig=431, fsmount=432, fspick=433, mount_setattr=442, pidfd_getfd=438, syslog=103)),
    "aarch64": (0xC00000B7, dict(
        clone=220, clone3=435, unshare=97, setns=268, mount=40, umount2=39, pivot_root=41, chroot=51,
        ptrace=117, process_vm_readv=270, process_vm_writev=271, keyctl=219, add_key=217, request_key=218,
        bpf=280, perf_event_open=241, userfaultfd=282, kexec_load=104, kexec_file_load=294, init_module=105,
        finit_module=273, delete_module=106, open_by_handle_at=265, io_uring_setup=425, io_uring_enter=426,
        io_uring_register=427, open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432,
        fspick=433, mount_setattr=442, pidfd_getfd=438, syslog=116)),
}


def seccomp_program(machine: str | None = None) -> bytes | None:
    """A classic-BPF seccomp filter (what ``bwrap --seccomp`` loads), or ``None`` on an
    architecture this table does not know (then only the namespaces and limits apply)."""
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine or platform.machine().lower(),
                                                         machine or platform.machine().lower())
    if machine not in _SYSCALLS:
        return None
    arch, numbers = _SYSCALLS[machine]
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, DENY, ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    code: list[tuple] = [(LD, 0, 0, 4), (JEQ, 0, "deny", arch), (LD, 0, 0, 0)]
    if machine == "x86_64":
        code.append((JGE, "deny", 0, 0x40000000))  # the x32 ABI's numbers
    code += [(JEQ, "deny", 0, numbers[name]) for name in _DENIED if name in numbers]
    code += [(JEQ, "enosys", 0, numbers["clone3"]),  # glibc falls back to clone for threads
             (JEQ, "clone", 0, numbers["clone"]),
             (RET, 0, 0, ALLOW)]
    labels = {"clone": len(code)}
    code += [(LD, 0, 0, 16), (JSET, "deny", 0, CLONE_NAMESPACES), (JSET, "allow", "deny", CLONE_THREAD)]
    labels.update(allow=len(code), deny=len(code) + 1, enosys=len(code) + 2)
    code += [(RET, 0, 0, ALLOW), (RET, 0, 0, DENY), (RET, 0, 0, ENOSYS)]
    out = bytearray()
    for index, (op, jt, jf, k) in enumerate(code):
        jt, jf = (labels[j] - index - 1 if isinstance(j, str) else j for j in (jt, jf))
        out += struct.pack("=HBBI", op, jt, jf, k)
    return bytes(out)


# ------------------------------------------------------------------------------- worker

def _environment(extra: dict | None = None) -> dict:
    return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(extra or {})}


def _limit_resources(limits: Limits):
    import resource  # POSIX only: imported here so that elsewhere the refusal can still be explained

    def apply():
        os.setsid()
        megabytes = limits.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (megabytes, megabytes))
        cpu = int(limits.seconds) + 2
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 2**20, 16 * 2**20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    return apply


def _nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


class Worker:
    """One sandboxed Python process running one learner's code."""

    def __init__(self, limits: Limits = Limits(), preload: tuple[str, ...] = (), *, seccomp: bool = True):
        """``seccomp=False`` drops the seccomp filter (for tests of the namespaces alone)."""
        self.limits = limits
        self.init_pid: int | None = None  # host pid of the sandbox's init, once known
        self.deadline = time.monotonic() + limits.seconds
        self.output_dropped = 0
        self.sandboxed = not limits.unsafe_no_sandbox
        self._pidfd = None  # the sandbox's init (PID 1 of its namespace), once known
        self._info = None
        self._failure: SandboxError | None = None
        self._stderr_kept = b""
        self.tmp = None
        to_worker_r, self._to_worker = os.pipe()
        self._from_worker, from_worker_w = os.pipe()
        env = _environment({
            "COURSE_SANDBOX_IN": str(to_worker_r),
            "COURSE_SANDBOX_OUT": str(from_worker_w),
            "COURSE_SANDBOX_PRELOAD": ",".join(preload),
            "COURSE_SANDBOX_MAX_REPLY": str(MAX_REPLY_BYTES),
        })
        child_fds = [to_worker_r, from_worker_w]
        try:
            if self.sandboxed:
                config = _config()
                if isinstance(config, str):
                    raise SandboxUnavailable(unavailable_message(config))
                extra, fds, self._info = _sandbox_fds(seccomp)
                child_fds += fds
                argv, cwd = _bwrap_args(config, limits, extra), "/"
            else:
                self.tmp = tempfile.TemporaryDirectory(prefix="course-sandbox-")
                env.update(HOME=self.tmp.name, TMPDIR=self.tmp.name)
                argv, cwd = [sys.executable, "-I", str(WORKER), str(ROOT)], self.tmp.name
            self.process = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, pass_fds=tuple(child_fds), preexec_fn=_limit_resources(limits),
            )
        except BaseException:
            for fd in (self._to_worker, self._from_worker, *([self._info] if self._info is not None else [])):
                os.close(fd)
            if self.tmp is not None:
                self.tmp.cleanup()
            raise
        finally:
            for fd in child_fds:
                os.close(fd)
        _nonblocking(self._to_worker)
        _nonblocking(self.process.stderr.fileno())
        if self.sandboxed:
            self._find_init()

    # --------------------------------------------------------------- the sandbox's init

    def _find_init(self) -> None:
        """Read bwrap's ``{"child-pid": N}`` and hold a pidfd on that process (the PID
        namespace's init: killing it kills every process of the sandbox)."""
        import json

        data = b""
        try:
            while time.monotonic() < self.deadline:
                ready, _, _ = select.select([self._info], [], [], max(self.deadline - time.monotonic(), 0))
                if not ready:
                    break
                chunk = os.read(self._info, 4096)
                if not chunk:
                    break
                data += chunk
                if b"}" in data:
                    break
            pid = int(json.loads(data.decode()[: data.decode().index("}") + 1])["child-pid"])
        except (ValueError, KeyError, OSError, TypeError):
            return  # bwrap failed before starting the sandbox: the first read will say so
        finally:
            os.close(self._info)
            self._info = None
        try:
            pidfd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            return
        try:  # still bwrap's child (not a recycled pid)?
            with open(f"/proc/{pid}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            ppid = None
        if ppid == self.process.pid:
            self._pidfd, self.init_pid = pidfd, pid
        else:
            os.close(pidfd)

    def processes(self) -> list[int]:
        """Host pids of bwrap and of every process in the sandbox's PID namespace."""
        if self.init_pid is None:
            return [self.process.pid]
        try:
            namespace = os.readlink(f"/proc/{self.init_pid}/ns/pid")
        except OSError:
            return [self.process.pid]
        found = [self.process.pid]
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if os.readlink(f"/proc/{name}/ns/pid") == namespace:
                        found.append(int(name))
                except OSError:
                    pass
        return found

    # ----------------------------------------------------------------- messages

    def _remaining(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.kill()
            self._failure = SandboxError("timeout", f"ran past the time limit of {self.limits.seconds:g} s")
            raise self._failure
        return remaining

    def _send(self, message) -> None:
        if self._failure is not None:
            raise self._failure
        payload = pickle.dumps(message, protocol=4)  # the grader's own data: trusted direction
        data = memoryview(struct.pack(">Q", len(payload)) + payload)
        while data:
            _, writable, _ = select.select([], [self._to_worker], [], self._remaining())
            if not writable:
                continue
            try:
                written = os.write(self._to_worker, data[: 1 << 16])
            except BlockingIOError:
                continue
            except OSError:  # BrokenPipeError: the worker is gone
                raise self._dead() from None
            data = data[written:]

    def _read_exactly(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            ready, _, _ = select.select([self._from_worker], [], [], self._remaining())
            if not ready:
                continue
            chunk = os.read(self._from_worker, min(n - got, 1 << 20))
            if not chunk:
                raise self._dead()
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _receive(self):
        if self._failure is not None:
            raise self._failure
        (size,) = struct.unpack(">Q", self._read_exactly(8))
        if size > MAX_REPLY_BYTES:
            raise self._garbled(f"the output is {size:,} bytes, more than the {MAX_REPLY_BYTES:,} allowed")
        try:
            return decode(self._read_exactly(size))
        except WireError as exc:
            raise self._garbled(f"the output could not be read back: {exc}") from None

    def _garbled(self, detail: str) -> SandboxError:
        self.kill()
        self._failure = SandboxError("crashed", f"{detail} (a reply the grader cannot trust: it scores 0)")
        return self._failure

    def _stderr_tail(self) -> str:
        try:
            while len(self._stderr_kept) < 8192:
                chunk = os.read(self.process.stderr.fileno(), 4096)
                if not chunk:
                    break
                self._stderr_kept += chunk
        except (BlockingIOError, OSError, ValueError):
            pass
        lines = self._stderr_kept.decode("utf-8", "replace").strip().splitlines()
        return lines[-1][:200] if lines else ""

    def _dead(self) -> SandboxError:
        try:
            code = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.returncode
        if self.sandboxed and code is not None and code > 128:  # bwrap: 128 + the signal
            code = -(code - 128)
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            why = {"SIGXCPU": "it used up its CPU time", "SIGSEGV": "it crashed (segmentation fault)",
                   "SIGKILL": "it was killed (memory or time limit)"}.get(name, f"it was stopped by {name}")
            detail = f"the process running your code ended: {why}"
        else:
            detail = f"the process running your code exited (status {code}) before answering"
            tail = self._stderr_tail()
            if tail and code not in (0, None):
                detail += f" [{tail}]"
        self._failure = SandboxError("crashed", detail)
        return self._failure

    # ---------------------------------------------------------------------- API

    def setup(self, cells: list[str], names: dict[str, int]) -> dict:
        self._send(("setup", cells, names))
        message = self._receive()
        try:
            return _check_ready(message, len(cells), names)
        except WireError as exc:
            raise self._garbled(f"the worker's report is malformed: {exc}") from None

    def call(self, name: str, args: tuple, kind: str = "function"):
        """(outcome, payload, args_after, violations): outcome is "return" or "raise".

        ``self.output_dropped`` then holds how many printed characters were not kept."""
        self._send(("call", name, args, kind))
        reply = self._receive()
        try:
            outcome, payload, args_after, seen, dropped = _check_reply(reply)
        except WireError as exc:
            raise self._garbled(f"the worker's reply is malformed: {exc}") from None
        self.output_dropped = dropped
        return outcome, payload, args_after, seen

    def kill(self) -> None:
        """Stop the worker and every process it started, and wait until they are gone."""
        if self._pidfd is not None:  # the sandbox's init: the kernel then kills its whole PID namespace
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except OSError:
                pass
            select.select([self._pidfd], [], [], 5)  # readable once the init has exited
            os.close(self._pidfd)
            self._pidfd = None
            try:
                self.process.wait(timeout=5)  # bwrap exits once its child, the init, has
            except subprocess.TimeoutExpired:
                pass
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.process.kill()
            self.process.wait()

    def close(self) -> None:
        self.kill()
        for fd in (self._to_worker, self._from_worker):
            try:
                os.close(fd)
            except OSError:
                pass
        self.process.stderr.close()
        if self.tmp is not None:
            self.tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
