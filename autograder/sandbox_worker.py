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
            if _inside(real, ROOT) and not _inside(real, os.path.join(ROOT, ".venv")) and real != THIS_FILE:
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


# ---- runners: how a checkpoint whose answer is not a plain function is called. The grader
# (autograder.core) uses these same functions in-process, so both paths run identical code.


def run_module(cls, init_args, state_dict, forward_args):
    """An nn.Module class: build ``cls(*init_args)``, load the reference's ``state_dict``, run forward."""
    module = cls(*init_args)
    expected, got = sorted(state_dict), sorted(module.state_dict())
    if expected != got:
        raise ValueError(
            f"the module's parameters are named {got}, but the checkpoint loads {expected}: "
            "keep the names (and shapes) that the notebook's __init__ gives"
        )
    module.load_state_dict(state_dict)
    with torch_module().no_grad():
        return module(*forward_args)


def _namespace(fn):
    """Where a runner finds the notebook's classes: the learner's globals (the notebook), or
    the ``course_namespace`` a checks module gives a known-mistake variant."""
    return getattr(fn, "course_namespace", None) or fn.__globals__


def _course_model(namespace, model_config, state_dict):
    """The notebook's own Transformer (a given cell), built from a config and loaded."""
    model = namespace["Transformer"](namespace["LlamaConfig"](**model_config))
    model.load_state_dict(state_dict)
    return model


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_train_steps(train_step, model_config, state_dict, batches, lrs, max_norm):
    """``train_step(model, optimizer, x, y, lr, max_norm)`` called once per ``(x, y)`` batch on a
    fresh course model and a plain SGD optimiser (so that the update shows the gradient exactly).
    Returns ``(losses, weights_after)``."""
    torch = torch_module()
    model = _course_model(_namespace(train_step), model_config, state_dict)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)  # a stale rate, which the step must replace
    losses = []
    for (x, y), lr in zip(batches, lrs):
        losses.append(train_step(model, optimizer, x, y, lr, max_norm))
    return losses, _weights(model)


def _adamw_steps(model, optimizer, tokens, generator, n_steps, batch_size, block_size):
    torch = torch_module()
    for _ in range(n_steps):
        starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator)
        windows = tokens[starts[:, None] + torch.arange(block_size + 1)]
        logits = model(windows[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def run_resume(save_training_state, model_config, state_dict, tokens, seed, steps_before, steps_after):
    """Interrupt and resume a run through the learner's ``save_training_state(model, optimizer,
    generator, step)`` and ``load_training_state(state, model, optimizer, generator)``: train
    ``steps_before`` steps (AdamW, batches drawn from ``generator``), save, round-trip the state
    through ``torch.save``/``torch.load`` (as a file would), restore into a *fresh* model,
    optimiser and generator, train ``steps_after`` more. Returns ``(step, weights_after)``; an
    uninterrupted run gives the reference's ``(steps_before, weights)``."""
    import io
    torch = torch_module()
    namespace = _namespace(save_training_state)
    load_training_state = namespace["load_training_state"]

    def fresh():
        model = _course_model(namespace, model_config, state_dict)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2), torch.Generator().manual_seed(seed)

    model, optimizer, generator = fresh()
    _adamw_steps(model, optimizer, tokens, generator, steps_before, 2, 8)
    buffer = io.BytesIO()
    torch.save(save_training_state(model, optimizer, generator, steps_before), buffer)
    del model, optimizer, generator  # the "crash": only the saved state survives
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    model, optimizer, generator = fresh()
    generator.manual_seed(seed + 1)  # a fresh process would not have the old generator's position
    step = load_training_state(state, model, optimizer, generator)
    _adamw_steps(model, optimizer, tokens, generator, steps_after, 2, 8)
    return step, _weights(model)


def run_seeded(fn, seed, *args):
    """``fn(*args, generator)`` with a ``torch.Generator`` seeded by ``seed``: a generator is not
    plain data, so the case carries its seed. Returns ``fn``'s output."""
    return fn(*args, torch_module().Generator().manual_seed(seed))


RUNNERS = {"module": run_module, "seeded": run_seeded, "train_steps": run_train_steps, "resume": run_resume}


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
