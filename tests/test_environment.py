"""The set-up files agree with each other and with what is installed."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def requirement_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def environment_pip_lines() -> list[str]:
    lines, inside = [], False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if re.match(r"\s+- pip:\s*$", line):
            inside = True
            continue
        if inside:
            m = re.match(r"\s+- (.+)$", line)
            if not m or not line.startswith(" " * 6):
                break
            lines.append(m.group(1).strip())
    return lines


def test_environment_yml_mirrors_requirements():
    assert environment_pip_lines() == requirement_lines((ROOT / "requirements.txt").read_text())


def test_every_requirement_is_pinned_and_torch_is_the_cpu_wheel():
    for line in requirement_lines((ROOT / "requirements.txt").read_text()):
        if line == "-e .":
            continue
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.+]*", line), f"not pinned: {line}"
    assert "torch==2.13.0" in requirement_lines((ROOT / "requirements.txt").read_text())


def test_installed_versions_match_the_pins():
    for line in requirement_lines((ROOT / "requirements.txt").read_text()):
        if line == "-e .":
            continue
        name, version = line.split("==")
        installed = metadata.version(name)
        assert installed.split("+")[0] == version, f"{name}: installed {installed}, pinned {version}"
