"""The process that runs a learner's code for the grader. Standard library only.

Started by :mod:`autograder.sandbox` inside a bubblewrap sandbox (its own user, PID,
network, IPC, UTS and mount namespaces; a read-only view of the Python installation and of
this file and ``runners.py`` only; a private ``/tmp``; a seccomp filter), as
``python -I -B sandbox_worker.py ROOT``. The sandbox is the security boundary. This process
adds a second, weaker layer that only adds flags to the report: an audit hook, installed
before any learner code runs, that refuses and records

* importing ``solutions``, ``autograder`` or ``tests`` (the reference and the grader);
* opening or changing files of the course (``ROOT``), or writing outside its temp folder;
* starting processes (``fork``, ``exec``, ``subprocess``, ``os.system``), sending signals,
  opening network connections, loading native libraries from outside the Python
  installation (``ctypes.CDLL("libc.so.6")``).

The learner's code runs in this interpreter and can reach the hook's state, so nothing
relies on it: it tells the instructor what was tried. (Started with ``--unsafe-no-sandbox``
it is the only barrier, and a weak one.)

Protocol, over the pipe the parent passes as file descriptors (stdin/stdout are not
used, so the learner's prints cannot corrupt it): length-prefixed messages. The grader's
messages are pickles (the grader is trusted); the replies use the restricted wire format
that :func:`autograder.sandbox.decode` reads (plain data and tensors, no references), and
the grader decodes them as hostile input.

    parent -> ("setup", cells, {name: n_params})     worker -> ("ready", report)
    parent -> ("call", name, args, kind)   worker -> ("return", value, args_after, violations, dropped)
                                   (args_after: each argument, or ``K`` where the call left it unchanged)
                                                  or ("raise", exception_info, violations, dropped)
"""

import array
import io
import linecache
import os
import pickle
import struct
import sys
import traceback

ROOT = os.path.realpath(sys.argv[1]) if len(sys.argv) > 1 else None
WORK_DIR = os.path.realpath(os.getcwd())
THIS_FILE = os.path.realpath(__file__)
# The runners (how a module class, a training step, a gradient probe is driven) are the
# course's own code in autograder/runners.py, loaded by path before any learner code runs.
RUNNERS_FILE = os.path.join(os.path.dirname(THIS_FILE), "runners.py")
FORBIDDEN_MODULES = ("solutions", "autograder", "tests", "_posixsubprocess")
FORBIDDEN_EVENTS = {
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "socket.connect",
    "socket.bind", "socket.sendto", "sys.setprofile",
}
# Native libraries may be loaded only from the Python installation (torch loads its own);
# loading libc through ctypes would reach system() around every other rule.
TRUSTED_LIBRARY_DIRS = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
CHANGING_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                   "os.symlink", "os.link", "os.truncate", "shutil.rmtree", "shutil.move", "os.utime"}
VIOLATIONS = []
_IN_HOOK = False


class SandboxViolation(PermissionError):
    """Raised inside the learner's code when it tries something the grader forbids."""


def _refuse(what):
    VIOLATIONS.append(what)
    raise SandboxViolation(f"not allowed while grading: {what}")


def _inside(path, folder):
    return folder is not None and (path == folder or path.startswith(folder + os.sep))


def _real(path):
    if isinstance(path, int):
        return None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    return os.path.realpath(path)


def audit(event, args):
    global _IN_HOOK
    if _IN_HOOK:
        return
    _IN_HOOK = True
    try:
        if event == "import" and args and str(args[0]).split(".")[0] in FORBIDDEN_MODULES:
            _refuse(f"import {args[0]}")
        elif event in FORBIDDEN_EVENTS:
            _refuse(event)
        elif event == "ctypes.dlopen":
            real = _real(args[0]) if args and args[0] else None
            if real is None or not any(_inside(real, d) for d in TRUSTED_LIBRARY_DIRS):
                _refuse(f"load native library {args[0] if args else None}")
        elif event == "open":
            path, mode, flags = (list(args) + [None, None])[:3]
            real = _real(path)
            if real is None:
                return
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
            )
            if _inside(real, ROOT) and not _inside(real, os.path.join(ROOT, ".venv")) and real not in (THIS_FILE, RUNNERS_FILE):
                _refuse(f"open {real}")
            if writing and not _inside(real, WORK_DIR) and real != os.devnull:
                _refuse(f"write {real}")
        elif event in CHANGING_EVENTS:
            # both paths of a rename or link: the destination is written too
            for path in args[: 2 if event in ("os.rename", "os.link", "os.symlink", "shutil.move") else 1]:
                real = _real(path) if isinstance(path, (str, bytes, os.PathLike)) else None
                if real is not None and not _inside(real, WORK_DIR):
                    _refuse(f"{event} {real}")
    finally:
        _IN_HOOK = False


class BoundedText(io.TextIOBase):
    """stdout/stderr for the learner: keeps the first ``limit`` characters, counts the rest."""

    def __init__(self, limit=20_000):
        self.kept, self.limit, self.dropped = [], limit, 0

    def write(self, text):
        room = self.limit - sum(map(len, self.kept))
        self.kept.append(text[: max(room, 0)])
        self.dropped += max(len(text) - max(room, 0), 0)
        return len(text)

    def text(self):
        tail = f"\n… {self.dropped:,} more characters not kept" if self.dropped else ""
        return "".join(self.kept) + tail


MAX_REPLY_BYTES = int(os.environ.get("COURSE_SANDBOX_MAX_REPLY", 64 * 2**20))
MAX_DEPTH = 50
TENSOR_DTYPES = {"float64", "float32", "float16", "bfloat16", "complex128", "complex64",
                 "int64", "int32", "int16", "int8", "uint8", "bool"}


class TooLarge(Exception):
    pass


class Unchanged:
    """Stands for an argument the call left as it was: not sent back (tag ``K``)."""


UNCHANGED = Unchanged()


def snapshot(value):
    """The argument's bytes, to tell afterwards whether the call changed it in place."""
    try:
        return pickle.dumps(value, protocol=4)
    except BaseException:  # noqa: BLE001 - an argument that cannot be pickled is sent back
        return None


def send(channel, message):
    """One reply in the wire format (see ``autograder.sandbox``): the sender expands shared
    references, so a reply that would exceed the limit stops here, not in the grader."""
    out = bytearray(8)
    encode(message, out, 0)
    out[:8] = struct.pack(">Q", len(out) - 8)
    channel.write(out)
    channel.flush()


def receive(channel):
    header = channel.read(8)
    if len(header) < 8:
        raise EOFError
    (size,) = struct.unpack(">Q", header)
    return pickle.loads(channel.read(size))


def _tensor(value, out):
    torch = torch_module()
    t = value.detach()
    name = str(t.dtype).replace("torch.", "")
    if name not in TENSOR_DTYPES or t.layout != torch.strided:
        return False
    if len(out) + t.numel() * t.element_size() > MAX_REPLY_BYTES:
        raise TooLarge
    t = t.cpu().resolve_conj().resolve_neg().contiguous()
    raw = (t.view(torch.int16) if name == "bfloat16" else t).numpy().tobytes()
    encoded = name.encode()
    out += b"X" + struct.pack("<B", len(encoded)) + encoded + struct.pack(f"<B{t.dim()}Q", t.dim(), *t.shape)
    out += struct.pack("<Q", len(raw)) + raw
    return True


def _packed(items, out):
    """A list of ints (or of floats) as one array: fast for long token lists."""
    kinds = set(map(type, items))
    if len(items) < 8 or len(kinds) != 1 or not kinds <= {int, float}:
        return False
    try:
        packed = array.array("q" if kinds == {int} else "d", items)
    except OverflowError:
        return False
    if sys.byteorder == "big":
        packed.byteswap()
    out += (b"q" if kinds == {int} else b"D") + struct.pack("<I", len(items)) + packed.tobytes()
    return True


def encode(value, out, depth):
    """Append ``value`` to ``out``: plain data and tensors; anything else as its type name and
    a short repr, which the grader reports ("returned a Thing, which is not plain data")."""
    if len(out) > MAX_REPLY_BYTES:
        raise TooLarge
    if depth > MAX_DEPTH:
        raise ValueError(f"output nested more than {MAX_DEPTH} levels deep")
    torch = torch_module()
    if value is None:
        out += b"N"
    elif value is UNCHANGED:
        out += b"K"
    elif isinstance(value, bool):
        out += b"T" if value else b"F"
    elif isinstance(value, int):
        number = int.__index__(value)
        if -(2**63) <= number < 2**63:
            out += b"i" + struct.pack("<q", number)
        else:
            n = (number.bit_length() + 8) // 8
            if n > 4096:
                return encode_unsupported("int", f"an integer of {number.bit_length():,} bits", out)
            out += b"I" + struct.pack("<I", n) + number.to_bytes(n, "little", signed=True)
    elif isinstance(value, float):
        out += b"f" + struct.pack("<d", float.__float__(value))
    elif isinstance(value, complex):
        out += b"c" + struct.pack("<dd", complex.__complex__(value).real, complex.__complex__(value).imag)
    elif isinstance(value, str):
        data = str.__str__(value).encode("utf-8", "surrogatepass")
        out += b"s" + struct.pack("<I", len(data)) + data
    elif isinstance(value, bytes):
        data = bytes(value)
        out += b"b" + struct.pack("<I", len(data)) + data
    elif torch is not None and isinstance(value, torch.Tensor):
        if not _tensor(value, out):
            encode_unsupported(type(value).__name__, f"a tensor of dtype {value.dtype} ({value.layout})", out)
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        if isinstance(value, list) and _packed(items, out):
            return
        tag = b"l" if isinstance(value, list) else b"t" if isinstance(value, tuple) else b"Z" if isinstance(value, frozenset) else b"S"
        out += tag + struct.pack("<I", len(items))
        for item in items:
            encode(item, out, depth + 1)
    elif isinstance(value, dict):
        pairs = list(value.items())
        out += b"d" + struct.pack("<I", len(pairs))
        for key, item in pairs:
            encode(key, out, depth + 1)
            encode(item, out, depth + 1)
    else:
        try:
            text = repr(value)[:200]
        except BaseException:  # noqa: BLE001 - a learner's __repr__ may fail
            text = "<unprintable>"
        encode_unsupported(type(value).__name__, text, out)


def encode_unsupported(type_name, text, out):
    out += b"U"
    encode(str(type_name)[:100], out, 0)
    encode(str(text)[:200], out, 0)


def learner_frame(exc):
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<cell")]
    if not frames:
        return ""
    f = frames[-1]
    return f" (in {f.name}, line {f.lineno}: {(f.line or '').strip()})"


def safe_text(make, limit):
    """``str(make())`` cut to ``limit`` characters; a learner's ``__str__`` may fail or lie."""
    try:
        text = make()
        return (text if type(text) is str else str.__str__(str(text)))[:limit]
    except BaseException:  # noqa: BLE001
        return "<unprintable>"


def exception_info(exc):
    return {
        "mro": [str.__str__(cls.__name__)[:100] for cls in type(exc).__mro__][:64],
        "message": safe_text(lambda: f"{exc}{learner_frame(exc)}", 10_000),
    }


TOO_LARGE = {
    "mro": ["ValueError", "Exception", "BaseException", "object"],
    "message": "the output is larger than the grader accepts once encoded "
               f"({MAX_REPLY_BYTES // 2**20} MB; a value shared n times is sent n times): return less data",
}


def close_other_fds(keep):
    """Descriptors inherited from bubblewrap (its info pipe) are closed before learner code runs."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):
        fds = range(3, 1024)
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def torch_module():
    return sys.modules.get("torch")


def describe(fn, n_params):
    """"ok", "missing", or the signature when it cannot take ``n_params`` positional arguments."""
    if not callable(fn):
        return "missing"
    import inspect

    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return "ok"
    try:
        signature.bind(*range(n_params))
    except TypeError:
        return f"signature {signature}"
    return "ok"


CHECK_FUNCTIONS = [("torch", "allclose"), ("torch", "equal"), ("torch.testing", "assert_close"),
                   ("numpy", "allclose"), ("numpy", "array_equal"), ("numpy.testing", "assert_allclose")]


def patched_checks():
    """Comparison functions the learner's code replaced. They cannot change the grade (the
    comparison happens in the grader), but an attempt is worth reporting."""
    found = []
    for module_name, attr in CHECK_FUNCTIONS:
        module = sys.modules.get(module_name)
        fn = getattr(module, attr, None) if module else None
        if fn is not None and not str(getattr(fn, "__module__", "") or "").startswith(module_name.split(".")[0]):
            found.append(f"{module_name}.{attr}")
    return found


def main():
    fd_in, fd_out = int(os.environ.pop("COURSE_SANDBOX_IN")), int(os.environ.pop("COURSE_SANDBOX_OUT"))
    close_other_fds({fd_in, fd_out})
    channel_in = os.fdopen(fd_in, "rb")
    channel_out = os.fdopen(fd_out, "wb")
    os.environ.pop("COURSE_SANDBOX_MAX_REPLY", None)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    output = BoundedText()
    sys.stdout = sys.stderr = output
    # Trusted libraries the chapter needs are imported before the audit hook: their own
    # start-up (native libraries, config files) is not the learner's doing.
    for name in filter(None, os.environ.pop("COURSE_SANDBOX_PRELOAD", "").split(",")):
        __import__(name)
    try:
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    except (ImportError, AttributeError, ValueError):
        pass
    runners = {"__name__": "course_runners"}
    with open(RUNNERS_FILE, encoding="utf-8") as file:
        exec(compile(file.read(), RUNNERS_FILE, "exec"), runners)
    RUNNERS = runners["RUNNERS"]
    sys.addaudithook(audit)

    namespace = {"__name__": "__main__"}
    while True:
        try:
            message = receive(channel_in)
        except EOFError:
            return
        if message[0] == "setup":
            _, cells, names = message
            report = {"cell_errors": [], "violations_by_cell": {}}
            for index, source in enumerate(cells):
                # so that tracebacks can quote the learner's line
                linecache.cache[f"<cell {index}>"] = (len(source), None, source.splitlines(True), f"<cell {index}>")
                before = len(VIOLATIONS)
                try:
                    exec(compile(source, f"<cell {index}>", "exec"), namespace)
                except BaseException as exc:  # noqa: BLE001 - SystemExit too: the cell failed
                    report["cell_errors"].append((index, safe_text(lambda: type(exc).__name__, 100),
                                                  safe_text(lambda: f"{exc}{learner_frame(exc)}", 2000)))
                if len(VIOLATIONS) > before:
                    report["violations_by_cell"][index] = [safe_text(lambda: v, 300) for v in VIOLATIONS[before:][:100]]
            report["defined"] = {name: safe_text(lambda: describe(namespace.get(name), n_params), 300)
                                 for name, n_params in names.items()}
            try:
                report["patched"] = patched_checks()
            except BaseException:  # noqa: BLE001 - a learner's module __getattr__ may fail
                report["patched"] = []
            report["output"] = output.text()
            report["output_dropped"] = output.dropped
            send(channel_out, ("ready", report))
        elif message[0] == "call":
            _, name, args, kind = message
            before = len(VIOLATIONS)
            try:
                snapshots = [snapshot(arg) for arg in args]
                value = namespace[name](*args) if kind == "function" else RUNNERS[kind](namespace[name], *args)
                after = [UNCHANGED if shot is not None and snapshot(arg) == shot else arg
                         for arg, shot in zip(args, snapshots)]
                try:
                    send(channel_out, ("return", value, after, VIOLATIONS[before:][:100], output.dropped))
                    continue
                except TooLarge:
                    info = TOO_LARGE
            except BaseException as exc:  # noqa: BLE001 - reported to the grader as data
                info = exception_info(exc)
            send(channel_out, ("raise", info, VIOLATIONS[before:][:100], output.dropped))


if __name__ == "__main__":
    main()
