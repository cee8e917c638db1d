"""Test inputs every chapter's checks draw: seeded tensors and how a case prints them.

One place for what chapters 02-08 used to define each for itself. A case's tensors come
from a ``torch.Generator`` seeded by the case list's ``random.Random``, so the same seed
gives the same inputs, and the visible and hidden seeds draw from the same distribution.
"""

from __future__ import annotations

import math
import random

import torch

from ..core import Case, Label
from ..reference import reference


def generator(rng: random.Random) -> torch.Generator:
    """A torch generator seeded from ``rng``: same seed, same tensors."""
    return torch.Generator().manual_seed(rng.randrange(2**31))


def randn(source: random.Random | torch.Generator, *shape: int, scale: float = 1.0,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A normal tensor times ``scale``, drawn from ``source`` (a generator, or a
    ``random.Random`` that seeds a fresh one), cast to ``dtype``."""
    g = source if isinstance(source, torch.Generator) else generator(source)
    # drawn in float64: torch's vectorised float32 sampler gives other values under another
    # CPU kernel family (ATEN_CPU_CAPABILITY), the float64 one does not
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def rand(source: random.Random | torch.Generator, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """A uniform tensor on ``[low, high)``."""
    g = source if isinstance(source, torch.Generator) else generator(source)
    return (low + (high - low) * torch.rand(*shape, generator=g, dtype=torch.float64)).float()


def randint(source: random.Random | torch.Generator, low: int, high: int, *shape: int) -> torch.Tensor:
    """Integers on ``[low, high)`` (token ids: draw them from a realistic vocabulary, so that
    ids have several digits and an off-by-one in an index shows)."""
    g = source if isinstance(source, torch.Generator) else generator(source)
    return torch.randint(low, high, shape, generator=g)


def rounded(values) -> str:
    """A nested list of numbers with four significant digits: ``[0.5, -1.25, 3.0]``."""
    if isinstance(values, list):
        return "[" + ", ".join(rounded(v) for v in values) + "]"
    if not isinstance(values, float):
        return repr(values)
    text = f"{values:.4g}"
    return text + ".0" if text.lstrip("-").isdigit() else text


def tensor_label(value, name: str | None = None, small: int = 8):
    """How a tensor argument is printed in a report: by value when it has at most ``small``
    entries, otherwise by name, shape and dtype. Anything else is returned unchanged."""
    if not isinstance(value, torch.Tensor):
        return value
    dtype = "" if value.dtype == torch.float32 else f", dtype={str(value.dtype).replace('torch.', '')}"
    if value.numel() <= small:
        return Label(f"tensor({rounded(value.tolist())}{dtype})")
    prefix = f"{name}: " if name else ""
    return Label(f"<{prefix}tensor of shape {tuple(value.shape)}{dtype}>")


def case(label: str, args: tuple, hint: str = "default", **fields) -> Case:
    """A case whose tensor arguments are shown by :func:`tensor_label`."""
    return Case(label, args, hint, show=tuple(tensor_label(a) for a in args), **fields)


def spread(g: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    """Uniform numbers of mean 0 and standard deviation ``scale``: the same bits on every CPU, which
    torch.randn's vectorised transform does not promise (so fixtures made here hold elsewhere)."""
    return rand(g, *shape, low=-math.sqrt(3) * scale, high=math.sqrt(3) * scale)


def model_config(vocab, dim, n_layers, n_heads, n_kv_heads, hidden, tied, max_seq_len) -> dict:
    """A ``LlamaConfig``'s fields as a dict, for the tiny models of the decoding checks (07, 13)."""
    return {"vocab_size": vocab, "dim": dim, "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_kv_heads,
            "hidden_dim": hidden, "tie_embeddings": tied, "max_seq_len": max_seq_len}


def random_model_weights(g: torch.Generator, config: dict) -> dict[str, torch.Tensor]:
    """Random weights of a tiny model (the notebook's ``Transformer`` names), large enough that
    greedy choices are clear-cut: norms near 1, matrices scaled by their fan-in."""
    model = reference("solutions.model", "Transformer")(reference("solutions.model", "LlamaConfig")(**config))
    weights = {}
    for name, p in model.state_dict().items():
        if name.endswith("norm.weight"):
            weights[name] = 1 + spread(g, *p.shape, scale=0.3)
        elif name == "lm_head.weight" and config["tie_embeddings"]:
            continue
        else:
            fan_in = p.shape[-1] if not name.startswith("embed") else 1
            weights[name] = spread(g, *p.shape, scale=1 / math.sqrt(fan_in))
    if config["tie_embeddings"]:
        weights["lm_head.weight"] = weights["embed_tokens.weight"]  # one tensor, as the model shares it
    return weights
