"""The process that runs a learner's code for the grader. Standard library only.

Started as ``python -I sandbox_worker.py ROOT`` (isolated: no PYTHONPATH, no current
folder on the path), it never imports the course. It installs an audit hook first —
Python cannot remove one once added — that refuses, and records:

* importing ``solutions``, ``autograder`` or ``tests`` (the reference and the grader);
* opening or changing files of the course (``ROOT``), or writing outside its temp folder;
* starting processes (``fork``, ``exec``, ``subprocess``, ``os.system``), sending signals,
  opening network connections, loading native libraries from outside the Python
  installation (``ctypes.CDLL("libc.so.6")``).

Protocol, over the pipe the parent passes as file descriptors (stdin/stdout are not
used, so the learner's prints cannot corrupt it): length-prefixed pickles.

    parent -> ("setup", cells, {name: n_params})     worker -> ("ready", report)
    parent -> ("call", name, args, kind)   worker -> ("return", value, args_after)
                                                  or ("raise", exception_info)

The parent unpickles replies with an allow-list (only plain data), compares outputs with
the reference itself, and enforces the time limit by killing the process group.
"""

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
            real = _real(args[0]) if args else None
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


def send(channel, message):
    data = pickle.dumps(message, protocol=4)
    channel.write(struct.pack(">Q", len(data)) + data)
    channel.flush()


def receive(channel):
    header = channel.read(8)
    if len(header) < 8:
        raise EOFError
    (size,) = struct.unpack(">Q", header)
    return pickle.loads(channel.read(size))


def learner_frame(exc):
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<cell")]
    if not frames:
        return ""
    f = frames[-1]
    return f" (in {f.name}, line {f.lineno}: {(f.line or '').strip()})"


def exception_info(exc):
    return {
        "mro": [cls.__name__ for cls in type(exc).__mro__],
        "message": f"{exc}{learner_frame(exc)}",
    }


def tensor_data(value):
    """A tensor as plain data: ("__tensor__", dtype name, shape, raw bytes)."""
    t = value.detach().cpu().contiguous()
    name = str(t.dtype).replace("torch.", "")
    raw = t.view(torch_module().int16) if name == "bfloat16" else t
    return ("__tensor__", name, tuple(t.shape), raw.numpy().tobytes())


def torch_module():
    return sys.modules.get("torch")


def plain(value, depth=0):
    """Only plain data goes back to the grader: anything else becomes its repr."""
    if depth > 50:
        raise ValueError("output nested more than 50 levels deep")
    torch = torch_module()
    if torch is not None and isinstance(value, torch.Tensor):
        return tensor_data(value)
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return value if type(value) in (bool, int, float, complex, str, bytes, type(None)) else _base(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [plain(v, depth + 1) for v in value]
        return {list: list, tuple: tuple, set: set, frozenset: frozenset}.get(type(value), list)(items)
    if isinstance(value, dict):
        return {plain(k, depth + 1): plain(v, depth + 1) for k, v in value.items()}
    return ("__unsupported__", type(value).__name__, repr(value)[:200])


def _base(value):
    for kind in (bool, int, float, complex, str, bytes):
        if isinstance(value, kind):
            return kind(value)
    return value


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
    channel_in = os.fdopen(int(os.environ["COURSE_SANDBOX_IN"]), "rb")
    channel_out = os.fdopen(int(os.environ["COURSE_SANDBOX_OUT"]), "wb")
    for key in ("COURSE_SANDBOX_IN", "COURSE_SANDBOX_OUT"):
        os.environ.pop(key)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
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
                    report["cell_errors"].append((index, type(exc).__name__, f"{exc}{learner_frame(exc)}"))
                if len(VIOLATIONS) > before:
                    report["violations_by_cell"][index] = VIOLATIONS[before:]
            report["defined"] = {name: describe(namespace.get(name), n_params) for name, n_params in names.items()}
            report["patched"] = patched_checks()
            report["output"] = output.text()
            report["output_dropped"] = output.dropped
            send(channel_out, ("ready", report))
        elif message[0] == "call":
            _, name, args, kind = message
            before = len(VIOLATIONS)
            try:
                value = namespace[name](*args) if kind == "function" else RUNNERS[kind](namespace[name], *args)
                reply = ("return", plain(value), plain(list(args)))
            except BaseException as exc:  # noqa: BLE001 - reported to the grader as data
                reply = ("raise", exception_info(exc))
            send(channel_out, reply + (VIOLATIONS[before:], output.dropped))


if __name__ == "__main__":
    main()
