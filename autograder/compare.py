"""Describe how a learner's output differs from the expected one, in one or two lines.

Every function returns ``None`` when the values agree (within ``tol`` for floats and
tensors) and otherwise a short human sentence that points at the *first* difference:
learners fix the first thing that is wrong, so the first thing is what we show.
"""

from __future__ import annotations

import math
from typing import Any

MAX_REPR = 120


def short(value: Any, limit: int = MAX_REPR) -> str:
    """``repr`` cut to ``limit`` characters, so a 10,000-token list fits on one line."""
    try:  # a learner's object: its __repr__ may raise, or return something that is not a str
        text = repr(value)
        text = text if type(text) is str else str.__str__(text)
    except Exception:  # noqa: BLE001
        return f"<a {type(value).__name__} whose repr could not be shown>"
    if len(text) <= limit:
        return text
    if isinstance(value, (list, tuple)):
        return f"{text[: limit - 20]}… ({len(value)} items)"
    return text[: limit - 1] + "…"


def _type_name(value: Any) -> str:
    return type(value).__name__


def difference(expected: Any, got: Any, tol: float = 0.0) -> str | None:
    """``None`` if ``got`` equals ``expected``; else where and how they first differ.

    ``got`` comes from a learner: a subclass of ``int``, ``float`` or ``str`` is compared by its
    built-in value (its own ``__eq__`` may say anything), and an object of another type is never
    asked whether it equals a plain value."""
    if _is_tensor(expected):
        return _tensor_difference(expected, got, tol)
    # both sides by their built-in value: a reference's Label (a str shown without quotes) is text
    expected, got = _builtin_value(expected), _builtin_value(got)
    if isinstance(expected, bool) or expected is None:
        same = got is expected or (type(got) in (bool, int, float) and got == expected)
        return None if same else f"expected {expected!r}, got {short(got)}"
    if isinstance(expected, float):
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            return f"expected a number, got {_type_name(got)} {short(got)}"
        return None if math.isclose(got, expected, rel_tol=tol, abs_tol=tol) else f"expected {expected!r}, got {got!r}"
    if type(got) is not type(expected) and not (isinstance(expected, int) and _is_int(got)):
        return f"expected a {_type_name(expected)}, got a {_type_name(got)}: {short(got)}"
    if isinstance(expected, (list, tuple)):
        return _sequence_difference(expected, got, tol)
    if isinstance(expected, dict):
        return _dict_difference(expected, got, tol)
    if isinstance(expected, (str, bytes)):
        return _text_difference(expected, got)
    same = type(expected).__eq__(expected, got)  # the expected value's own equality, never the learner's
    return None if same is True else f"expected {short(expected)}, got {short(got)}"


def dtype_difference(expected: Any, got: Any) -> str | None:
    """``None`` if every tensor in ``expected`` (alone, or in a tuple, list or dict) has the
    same dtype in ``got``; else which one differs. Call it once ``difference`` found the values
    equal, so the structures match."""
    if _is_tensor(expected):
        dtype = getattr(got, "dtype", None)
        return None if dtype == expected.dtype else f"the values are right, but expected a {expected.dtype} tensor, got {dtype}"
    if isinstance(expected, (tuple, list)) and isinstance(got, (tuple, list)):
        for i, (e, g) in enumerate(zip(expected, got)):
            problem = dtype_difference(e, g)
            if problem is not None:
                return f"item {i}: {problem}"
    if isinstance(expected, dict) and isinstance(got, dict):
        for key, e in expected.items():
            problem = dtype_difference(e, got.get(key))
            if problem is not None:
                return f"{key!r}: {problem}"
    return None


def _builtin_value(value: Any) -> Any:
    """``value`` as its built-in type if it subclasses ``int``, ``float`` or ``str``: the number or
    text it holds, whatever its class's ``__eq__``, ``__index__`` or ``__str__`` say."""
    if type(value) in (int, float, str, bool) or value is None:
        return value
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    return value


DIGEST_SAMPLES = 32


def digest(value: Any) -> Any:
    """A small stand-in for ``value``, good enough to recognise a known mistake's output.

    Every floating-point tensor of more than ``2 * DIGEST_SAMPLES`` values becomes
    ``DIGEST_SAMPLES`` evenly spaced entries followed by its mean and mean square, and a
    dict of tensors (a state dict) is digested as one tensor, so a stored fingerprint of
    a model's weights after a training step costs a few hundred bytes. Outputs are still compared in full against the
    expected answer: a digest only decides *which hint* to show. Idempotent.
    """
    if _is_tensor(value):
        if not value.is_floating_point() or value.numel() <= 2 * DIGEST_SAMPLES:
            return value
        import torch

        flat = value.detach().flatten().double()  # moments in float64 whatever the dtype:
        picks = flat[torch.linspace(0, flat.numel() - 1, DIGEST_SAMPLES).round().long()]
        moments = torch.stack([flat.mean(), flat.square().mean()])  # rounding them to bfloat16 would
        return torch.cat([picks, moments])  # hide the difference between two mistakes
    if isinstance(value, dict):
        tensors = list(value.values())
        if len(tensors) > 1 and all(_is_tensor(t) and t.is_floating_point() and t.dtype == tensors[0].dtype
                                    for t in tensors):
            # a state dict: one digest of all its values, in key order, keyed by the key list
            import torch

            return {"keys": list(value), "digest": digest(torch.cat([t.detach().flatten() for t in tensors]))}
        return {key: digest(item) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(digest(item) for item in value)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sequence_difference(expected, got, tol) -> str | None:
    for i, (e, g) in enumerate(zip(expected, got)):
        inner = difference(e, g, tol)
        if inner is not None:
            return f"first difference at index {i}: {inner}" + _window(expected, got, i)
    if len(expected) != len(got):
        n = min(len(expected), len(got))
        extra = "missing" if len(got) < len(expected) else "extra"
        items = expected[n : n + 5] if extra == "missing" else got[n : n + 5]
        return (
            f"length {len(got)}, expected {len(expected)}: the first {n} items agree, "
            f"then {extra} items {short(list(items), 60)}"
        )
    return None


def _window(expected, got, i: int, width: int = 3) -> str:
    if len(expected) <= 8:
        return ""
    lo = max(0, i - width)
    return (
        f"\n    expected[{lo}:{i + width + 1}] = {short(list(expected[lo : i + width + 1]), 80)}"
        f"\n    got[{lo}:{i + width + 1}]      = {short(list(got[lo : i + width + 1]), 80)}"
    )


def _dict_difference(expected: dict, got: dict, tol) -> str | None:
    missing = [k for k in expected if k not in got]
    if missing:
        return f"{len(missing)} key(s) missing, e.g. {short(missing[0])}"
    extra = [k for k in got if k not in expected]
    if extra:
        return f"{len(extra)} unexpected key(s), e.g. {short(extra[0])}"
    for key, value in expected.items():
        inner = difference(value, got[key], tol)
        if inner is not None:
            return f"at key {short(key, 40)}: {inner}"
    return None


def _text_difference(expected, got) -> str | None:
    if expected == got:
        return None
    i = next((k for k, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    lo = max(0, i - 10)
    return (
        f"first difference at position {i}: expected …{short(expected[lo : i + 10], 50)}…, "
        f"got …{short(got[lo : i + 10], 50)}… (lengths {len(expected)} and {len(got)})"
    )


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "shape")


def _tensor_difference(expected, got, tol) -> str | None:
    import torch

    if not isinstance(got, torch.Tensor):
        return f"expected a torch.Tensor, got {_type_name(got)}"
    if type(got) is not torch.Tensor:  # a subclass's __torch_function__ could answer isclose for it
        with torch._C.DisableTorchFunctionSubclass():
            got = torch.Tensor.as_subclass(got, torch.Tensor)
    if got.shape != expected.shape:
        return f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    if got.dtype != expected.dtype and not (got.is_floating_point() and expected.is_floating_point()):
        return f"expected dtype {expected.dtype}, got {got.dtype}"
    e, g = expected.detach().double(), got.detach().double()
    bad = ~torch.isclose(g, e, rtol=tol, atol=tol, equal_nan=True)
    if not bad.any():
        return None
    err = (g - e).abs().nan_to_num(nan=math.inf)
    index = tuple(int(i) for i in torch.nonzero(bad)[0])
    return (
        f"{int(bad.sum())} of {e.numel()} values differ by more than {tol:g} "
        f"(largest difference {float(err.max()):.3g}); first at index {index}: "
        f"expected {float(e[index]):.6g}, got {float(g[index]):.6g}"
    )
