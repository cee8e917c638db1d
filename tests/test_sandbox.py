"""The sandbox worker on its own: what crosses the pipe, and what the learner's code cannot do."""

from __future__ import annotations

import pickle

import pytest
import torch

from autograder.grading import _proxy
from autograder.sandbox import Limits, SandboxError, Worker, _PlainUnpickler

CODE = [
    "import torch\nfrom torch import nn",
    "def double_in_place(x):\n    x.mul_(2)\n    return x.sum(0), x.to(torch.bfloat16)",
    "class Scale(nn.Module):\n    def __init__(self, dim):\n        super().__init__()\n"
    "        self.weight = nn.Parameter(torch.ones(dim))\n    def forward(self, x):\n        return x * self.weight",
    "class Thing:\n    pass\ndef returns_object():\n    return Thing()",
    "def read_course():\n    import autograder\n",
]


@pytest.fixture(scope="module")
def worker():
    with Worker(Limits(seconds=60), preload=("torch",)) as w:
        report = w.setup(CODE, {"double_in_place": 1, "Scale": 1, "returns_object": 0, "missing": 0})
        assert report["defined"] == {"double_in_place": "ok", "Scale": "ok", "returns_object": "ok", "missing": "missing"}
        yield w


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


def test_objects_do_not_cross_and_globals_are_refused(worker):
    with pytest.raises(TypeError, match="not plain data"):
        _proxy(worker, "returns_object", "function", [], [])()
    with pytest.raises(pickle.UnpicklingError, match="only plain data"):
        _PlainUnpickler(__import__("io").BytesIO(pickle.dumps(torch.ones(1)))).load()


def test_forbidden_imports_are_refused_and_recorded(worker):
    seen = []
    with pytest.raises(PermissionError, match="import autograder"):
        _proxy(worker, "read_course", "function", seen, [])()
    assert seen == ["import autograder"]


def test_a_dead_worker_is_reported_not_hung():
    with Worker(Limits(seconds=10)) as w:
        w.setup(["import os\ndef die():\n    os._exit(7)"], {"die": 0})
        with pytest.raises(SandboxError, match="status 7"):
            w.call("die", ())
