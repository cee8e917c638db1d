"""Verdicts and hints do not depend on the CPU.

torch picks a kernel family at start-up (AVX-512, AVX2 or the portable default) and each
computes other low-order bits. The rest of the suite runs under this machine's own family;
these tests run the CPU-dependent checks again, in a fresh process, under another one
(``ATEN_CPU_CAPABILITY``): the committed fixtures must be up to date there (compared within
the checkpoints' tolerances, never as bytes), and the release fixtures must accept the
reference and reject every catalogued mistake with the same hint. So CI catches a
non-portable fixture or fingerprint on whatever machine it runs.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from autograder.notebooks import ROOT

NATIVE = torch.backends.cpu.get_cpu_capability().lower()
# the portable default always differs from a vector family; on a machine without AVX2 the
# only other family torch has is unavailable, so there is nothing to compare
OTHER = "default" if NATIVE != "default" else None
needs_another_family = pytest.mark.skipif(OTHER is None, reason="this CPU has no vector kernel family besides torch's default")


def run_under(family: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": family, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@needs_another_family
def test_the_kernel_family_switch_takes_effect():
    done = run_under(OTHER, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())")
    assert done.stdout.strip().lower() == OTHER, done.stdout + done.stderr


@needs_another_family
def test_fixtures_are_up_to_date_under_another_kernel_family():
    done = run_under(OTHER, "-m", "autograder", "fixtures", "--check")
    assert done.returncode == 0, f"under ATEN_CPU_CAPABILITY={OTHER}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


@needs_another_family
def test_release_fixtures_give_the_same_verdicts_and_hints_under_another_kernel_family():
    done = run_under(OTHER, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "tests/test_release.py",
                     "-k", "fixtures_accept or fixtures_reject")
    assert done.returncode == 0, f"under ATEN_CPU_CAPABILITY={OTHER}:\n{done.stdout[-6000:]}"
