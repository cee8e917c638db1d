"""The README's set-up and test commands are the ones CI runs, and they are real commands."""

from __future__ import annotations

import subprocess

from autograder.notebooks import ROOT


def readme_command(marker: str) -> str:
    script = (ROOT / ".ci" / "run").read_text()
    helper = script[script.index("readme_command() {") : script.index("\n}\n") + 3]
    done = subprocess.run(["bash", "-c", f"{helper}\nreadme_command {marker}"], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_ci_reads_the_setup_and_test_commands_from_the_readme():
    setup, tests = readme_command("setup-command"), readme_command("test-command")
    assert setup.startswith("python3.11 -m venv .venv") and "pip install -r requirements.txt" in setup
    assert tests == ".venv/bin/python -m pytest"
    assert 'bash -c "$setup"' in (ROOT / ".ci" / "run").read_text()
    assert 'bash -c "$tests"' in (ROOT / ".ci" / "run").read_text()


def test_readme_speaks_to_all_three_users():
    text = (ROOT / "README.md").read_text()
    for heading in ("## For learners", "## For instructors", "## For workshop organisers"):
        assert heading in text


def test_the_chapter_table_gives_the_declared_points():
    import re

    from autograder.core import registry

    rows = re.findall(r"^\| (\d\d) \|.*\(([0-9]+) points\) \|$", (ROOT / "README.md").read_text(), re.M)
    assert rows
    for chapter, points in rows:
        declared = sum(cp.points for cid, cp in registry().items() if cid.startswith(chapter + "."))
        assert int(points) == declared, f"README says chapter {chapter} is worth {points} points; declared: {declared}"


def test_learners_jupyterlab_has_no_nbgrader_ui():
    """The set-up command disables nbgrader's lab extension in this environment: no Nbgrader
    menu, Validate button or Create Assignment sidebar for learners."""
    from jupyterlab_server.config import get_static_page_config

    disabled = get_static_page_config(level="all").get("disabledExtensions", {})
    assert disabled.get("@jupyter/nbgrader") is True, (
        "nbgrader's JupyterLab extension is on: run the README's set-up command "
        "(.venv/bin/jupyter labextension disable --level=sys_prefix @jupyter/nbgrader)"
    )


def test_the_checkpoint_table_states_what_each_checkpoint_measured():
    """The README's numbers for the shipped checkpoints are their config.json's, not typed in."""
    import json
    import re

    from data import FINE_TUNED_CHECKPOINTS, PRETRAINED_CHECKPOINTS, checkpoint_dir

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in PRETRAINED_CHECKPOINTS:
        row = re.search(rf"^\| `{name}` \|(.*)\|$", readme, re.M)
        assert row, f"the README's checkpoint table has no row for {name}"
        cells = [c.strip() for c in row.group(1).split("|")]
        meta = json.loads((checkpoint_dir(name) / "config.json").read_text())
        assert cells[2] == f"{meta['val_loss']:.4f}", (name, cells[2], meta["val_loss"])
        assert cells[1].startswith(f"{meta['params'] / 1e6:.2f}M /"), (name, cells[1], meta["params"])
        probe = meta.get("copying_probe")
        gain = f"{probe['repeat_logprob'] - probe['first_logprob']:+.2f}" if probe else ""
        assert cells[3] == gain, (name, cells[3], gain)
    for name in FINE_TUNED_CHECKPOINTS:  # chapter 08's held-out scores of the stored weights
        row = re.search(rf"^\| `{name}` \|(.*)\|$", readme, re.M)
        assert row, f"the README's checkpoint tables have no row for {name}"
        scores = json.loads((checkpoint_dir(name) / "config.json").read_text())["held_out"]
        stated = f"{scores['exact']:.0%} / {scores['fact']:.0%} / {scores['format']:.0%}"
        assert row.group(1).split("|")[-1].strip() == stated, (name, row.group(1), stated)
