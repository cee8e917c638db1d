"""The grader's side of the sandbox: start a worker, send it code and inputs, read back data.

One worker per checkpoint, so a crash, ``sys.exit``, ``os._exit``, a segfault or a runaway
loop costs that checkpoint only. Limits: wall-clock time (the whole checkpoint, setup
included; the process group is killed), address space (``RLIMIT_AS``), CPU seconds, file
size, no core dumps. Replies are unpickled with an allow-list: plain Python data only, so
a learner's object can never run code in the grader.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import resource
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

WORKER = Path(__file__).with_name("sandbox_worker.py")
ROOT = Path(__file__).resolve().parent.parent
MAX_REPLY_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Limits:
    seconds: float = 60.0  # per checkpoint, setup included
    memory_mb: int = 8192  # address space of the worker (torch alone reserves ~2 GB)


class SandboxError(Exception):
    """The worker could not answer: it timed out, died, or sent something unreadable."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind  # "timeout", "crashed", "protocol"


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every global: a reply may hold only lists, dicts, str, bytes, numbers..."""

    SAFE = {("builtins", name) for name in ("set", "frozenset", "complex", "bytearray", "slice")}

    def find_class(self, module, name):
        if (module, name) in self.SAFE:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"the reply names {module}.{name}; only plain data is accepted")


def _limit_resources(limits: Limits):
    def apply():
        os.setsid()
        megabytes = limits.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (megabytes, megabytes))
        cpu = int(limits.seconds) + 2
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 2**20, 16 * 2**20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


class Worker:
    """One sandboxed Python process running one learner's code."""

    def __init__(self, limits: Limits = Limits(), preload: tuple[str, ...] = ()):
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        self.output_dropped = 0
        self.tmp = tempfile.TemporaryDirectory(prefix="course-sandbox-")
        to_worker_r, self._to_worker = os.pipe()
        self._from_worker, from_worker_w = os.pipe()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": self.tmp.name,
            "TMPDIR": self.tmp.name,
            "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1",
            "COURSE_SANDBOX_IN": str(to_worker_r),
            "COURSE_SANDBOX_OUT": str(from_worker_w),
            "COURSE_SANDBOX_PRELOAD": ",".join(preload),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-I", str(WORKER), str(ROOT)],
            cwd=self.tmp.name, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, pass_fds=(to_worker_r, from_worker_w),
            preexec_fn=_limit_resources(limits),
        )
        os.close(to_worker_r)
        os.close(from_worker_w)

    # ----------------------------------------------------------------- messages

    def _send(self, message) -> None:
        data = pickle.dumps(message, protocol=4)
        try:
            os.write(self._to_worker, struct.pack(">Q", len(data)))
            view = memoryview(data)
            while view:
                view = view[os.write(self._to_worker, view[: 1 << 20]) :]
        except (BrokenPipeError, OSError):
            raise self._dead() from None

    def _read_exactly(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise SandboxError("timeout", f"ran past the time limit of {self.limits.seconds:g} s")
            ready, _, _ = select.select([self._from_worker], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._from_worker, min(n - got, 1 << 20))
            if not chunk:
                raise self._dead()
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _receive(self):
        (size,) = struct.unpack(">Q", self._read_exactly(8))
        if size > MAX_REPLY_BYTES:
            self.kill()
            raise SandboxError("protocol", f"the output is {size:,} bytes, more than the {MAX_REPLY_BYTES:,} allowed")
        try:
            return _PlainUnpickler(io.BytesIO(self._read_exactly(size))).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            self.kill()
            raise SandboxError("protocol", f"the output could not be read back: {exc}") from None

    def _dead(self) -> SandboxError:
        try:
            code = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.returncode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            why = {"SIGXCPU": "it used up its CPU time", "SIGSEGV": "it crashed (segmentation fault)",
                   "SIGKILL": "it was killed (memory or time limit)"}.get(name, f"it was stopped by {name}")
            return SandboxError("crashed", f"the process running your code ended: {why}")
        return SandboxError("crashed", f"the process running your code exited (status {code}) before answering")

    # ---------------------------------------------------------------------- API

    def setup(self, cells: list[str], names: list[str]) -> dict:
        self._send(("setup", cells, names))
        kind, report = self._receive()
        assert kind == "ready"
        return report

    def call(self, name: str, args: tuple, kind: str = "function"):
        """(outcome, payload, args_after, violations): outcome is "return" or "raise".

        ``self.output_dropped`` then holds how many printed characters were not kept."""
        self._send(("call", name, args, kind))
        reply = self._receive()
        self.output_dropped = reply[-1]
        if reply[0] == "return":
            return "return", reply[1], reply[2], reply[3]
        return "raise", reply[1], None, reply[2]

    def kill(self) -> None:
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
        self.tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
