"""A release (no ``solutions/``, no ``autograder/checks/``) checks learners exactly as the
course repository does on the visible cases, and gives no answer away.

* the committed fixtures are what the live checkpoints produce, byte for byte, whatever
  the hash seed;
* fixture-served checkpoints accept the reference and reject every catalogued mistake;
* ``01.train_bpe``'s custom ``compare`` (any tie-break accepted) is not shipped, so on
  fixtures it is exact equality: sound only if its visible cases have one valid answer
  (its known mistakes are named there by their variants' stored outputs);
* a release built into a temporary folder runs chapter 01's answers in a process that
  cannot import ``solutions``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import regex

from autograder import fixtures, release
from autograder.core import Raised, hint_text, run
from tests.catalogue import load_all

ROOT = Path(__file__).resolve().parent.parent
MISTAKES = load_all()

# Mistakes that get another hint on fixtures than live, because the code that names them
# (a checkpoint's `compare` or `diagnose`) is not shipped. Chapter 01 has none: what
# 01.train_bpe's replay names live, its variants (`fingerprints`, shipped as their outputs)
# name on fixtures. Rejection holds for all.
HINT_ON_FIXTURES = {
    # 06.get_batch names other window starts with `diagnose`; on fixtures the hint is the recipe,
    # which says to draw them with generator=generator.
    "06.get_batch:batch_global_rng": "default",
    "06.get_batch:batch_one_draw_per_row": "default",
    # Drawing from the global random generator is named live by a property of the outputs (equal
    # rows with the same u must give the same token), which is code, not shipped; no stored
    # variant can reproduce another generator's draws.
    "07.sample:sample_with_multinomial": "default",
    "07.generate:generate_with_the_global_rng": "default",
    # Named live by a diagnosis (code, not shipped) that reads a property of the output: more tokens
    # than max_new_tokens, tokens that start with the prompt, an id equal to the vocabulary size
    # where u is next to 1, a replay of the trainer that shows only <|endoftext|> was cut, an
    # integer 0/1 mask of another dtype than the stored int64 variant's, a sampled case that
    # differs where one sampling parameter was left out. On fixtures the report says what differed
    # and gives the recipe.
    "01.train_bpe:train_cuts_only_endoftext": "default",
    "02.causal_mask:causal_mask_of_uint8": "default",
    "07.generate:generate_until_a_stop_token": "default",
    "07.generate:generate_cropped_until_a_stop_token": "default",
    "07.generate:generate_yields_the_prompt_too": "default",
    "07.generate:generate_forgets_top_p": "default",
    "07.sample:sample_compares_with_u_unscaled": "default",
}


@pytest.fixture(scope="module")
def served():
    return fixtures.load_registry()


@pytest.fixture(scope="module")
def live():
    return fixtures.live_registry()


# ----------------------------------------------------------------------------- fixtures

def test_fixtures_are_up_to_date():
    drift = fixtures.write_fixtures(check=True)
    assert drift == [], "stale fixtures; run `python -m autograder fixtures`:\n" + "\n".join(drift)


def test_fixtures_are_deterministic_across_processes_and_hash_seeds():
    """A second writer, in another process with another hash seed, finds no drift."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345"}
    done = subprocess.run(
        [sys.executable, "-m", "autograder", "fixtures", "--check"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_fixture_files_are_small():
    sizes = {p.name: p.stat().st_size for p in fixtures.FIXTURE_DIR.glob("*.pkl")}
    # 07.generate and 13.speculative carry small models' weights
    assert sizes and max(sizes.values()) < 200_000 and sum(sizes.values()) < 4_000_000, sizes


def test_fingerprint_digests_are_small_idempotent_and_tell_weights_apart():
    import torch

    from autograder.compare import digest, difference

    weights = {"a.weight": torch.randn(40, 8), "a.bias": torch.randn(8), "b.weight": torch.randn(8, 8)}
    once = digest((1.5, weights))
    assert difference(digest(once), once) is None  # stored digests compare to live ones
    assert once[1]["keys"] == list(weights) and once[1]["digest"].numel() < 40
    nudged = {k: v.clone() for k, v in weights.items()}
    nudged["a.bias"][3] += 0.5  # one value the evenly spaced samples may miss: the moments see it
    assert difference(digest((1.5, nudged))[1], once[1], 1e-6) is not None
    ints = torch.arange(100)
    assert digest(ints) is ints  # token ids are kept whole


def test_a_missing_fixture_folder_says_how_to_regenerate(tmp_path):
    with pytest.raises(fixtures.FixturesMissing, match="python -m autograder fixtures"):
        fixtures.load_registry(tmp_path / "fixture_data")


def test_fixtures_serve_every_live_checkpoint(served, live):
    assert sorted(served) == sorted(live)
    for checkpoint_id, cp in served.items():
        assert (cp.signature, cp.points, cp.hints) == (live[checkpoint_id].signature, live[checkpoint_id].points, live[checkpoint_id].hints)
        with pytest.raises(RuntimeError, match="not part of a release"):
            cp.reference()


@pytest.mark.parametrize("checkpoint_id", sorted(fixtures.live_registry()))
def test_fixtures_accept_the_reference(checkpoint_id, served, live):
    result = run(served[checkpoint_id], live[checkpoint_id].reference)
    assert result.passed, result.report()


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.name for m in MISTAKES])
def test_fixtures_reject_every_catalogued_mistake(mistake, served):
    cp = served[mistake.checkpoint]
    result = run(cp, mistake.fn)
    assert not result.passed, f"{mistake.name} is accepted on fixtures"
    expected = HINT_ON_FIXTURES.get(mistake.name, mistake.hint)
    assert result.hint_id == expected, (
        f"{mistake.name}: hint {result.hint_id!r} on fixtures, live {mistake.hint!r}, "
        f"HINT_ON_FIXTURES says {expected!r}\n{result.report()}"
    )
    assert " ".join(hint_text(cp, expected).split()) in " ".join(result.report().split())  # reports wrap


# ------------------------------------------------------------------ 01.train_bpe ties

def test_fixtures_accept_a_correct_trainer_with_another_tie_break(served, live):
    """The catalogue's textbook trainer is correct (live accepts it) but breaks ties by
    first occurrence, not by sorted bytes like the reference: fixtures must accept it too."""
    from tests.catalogue.ch01_tokenizer import _words, naive_bpe

    def train_bpe(text, vocab_size, pat_str, special_tokens):
        if vocab_size < 256 + len(special_tokens):
            raise ValueError("vocab_size too small")
        return naive_bpe(_words(text, pat_str, special_tokens), vocab_size - 256 - len(special_tokens))

    assert run(live["01.train_bpe"], train_bpe).passed
    result = run(served["01.train_bpe"], train_bpe)
    assert result.passed, result.report()


def _chunks(text: str, pat_str: str, special_tokens) -> Counter:
    pattern = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
    counts: Counter = Counter()
    for piece in regex.split(pattern, text) if special_tokens else [text]:
        counts.update(regex.findall(pat_str, piece))
    return counts


def _merge(word: list[bytes], pair: tuple[bytes, bytes]) -> list[bytes]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def _ties(text, vocab_size, pat_str, special_tokens, expected) -> list[str]:
    """Replay the stored answer; every merge step whose top count is shared by several pairs."""
    chunks = _chunks(text, pat_str, special_tokens)
    words = [[bytes([b]) for b in chunk.encode("utf-8")] for chunk in chunks]
    freqs = list(chunks.values())
    learned = sorted((rank, token) for token, rank in expected.items() if rank >= 256)
    ties = []
    for step, (_, token) in enumerate(learned, 1):
        counts: Counter = Counter()
        for word, freq in zip(words, freqs):
            for pair in zip(word, word[1:]):
                counts[pair] += freq
        best = max(counts.values())
        top = [pair for pair, count in counts.items() if count == best]
        if len(top) > 1:
            ties.append(f"step {step}: {len(top)} pairs occur {best} times: {top[:3]}")
        chosen = [pair for pair in top if pair[0] + pair[1] == token]
        assert chosen, f"step {step}: the stored answer {token!r} is not a most frequent pair"
        words = [_merge(word, chosen[0]) for word in words]
    return ties


def _train_cases():
    return fixtures.load_registry()["01.train_bpe"].cases(None)


@pytest.mark.parametrize("case", _train_cases(), ids=lambda case: case.label)
def test_train_bpe_visible_cases_have_a_unique_answer(case):
    """On fixtures, 01.train_bpe is exact equality with the reference's answer. That is
    only the live check (any most-frequent pair at each step) if no step has a tie."""
    if isinstance(case.expected, Raised):
        return  # an exception has one valid outcome
    ties = _ties(*case.args, case.expected)
    n_merges = len(case.expected) - 256
    assert not ties, (
        f"{case.label}: {len(ties)} of {n_merges} merge steps are ties, so a correct trainer "
        "with another tie-break is rejected on fixtures:\n  " + "\n  ".join(ties[:5])
    )


# ------------------------------------------------------------------------------ release

@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("release") / "course"
    summary = release.build_release(out)
    assert summary.files > 0 and "fixture_data" not in " ".join(summary.warnings), summary.report()
    return out


def test_release_contains_no_answers(built):
    assert release.problems(built) == []
    assert not list(built.rglob("solutions")) and not (built / "autograder" / "checks").exists()
    for name in ("tests", "nbgrader_config.py", ".ci", "data/downloads"):
        assert not (built / name).exists(), name
    assert not list(built.rglob("__pycache__"))
    for name in ("chapters", "autograder/fixture_data", "data", "environment.yml", "requirements.txt",
                 "pyproject.toml", ".gitattributes", "README.md"):
        assert (built / name).exists(), name
    assert release.notebooks_importing_solutions(built) == []


def test_release_refuses_a_non_empty_outdir(built):
    with pytest.raises(SystemExit, match="--force"):
        release.build_release(built)


def test_verification_finds_a_leaked_solution(built, tmp_path):
    leaked = tmp_path / "leak"
    (leaked / "chapters").mkdir(parents=True)
    nb = {"cells": [{"cell_type": "code", "source": ["def f():\n", "    ### BEGIN SOLUTION\n", "    return 1\n"]}]}
    (leaked / "chapters" / "nb.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    (leaked / "solutions").mkdir()
    found = "\n".join(release.problems(leaked))
    assert "BEGIN SOLUTION" in found and "solutions/" in found and "fixture_data" in found


CHAPTER_01 = """
import io, json, os, sys
from contextlib import redirect_stdout
release, notebook = sys.argv[1], sys.argv[2]

try:
    import solutions
except ImportError:
    pass
else:
    raise AssertionError(f"solutions is importable in a release: {solutions.__file__}")

import autograder
from autograder.core import registry
assert os.path.realpath(autograder.__file__).startswith(os.path.realpath(release)), autograder.__file__
assert all(case.has_expected for cp in registry().values() for case in cp.cases(None))

namespace = {}
exec("import heapq, random, regex\\nfrom collections import Counter", namespace)
for cell in json.load(open(notebook, encoding="utf-8"))["cells"]:
    meta = cell.get("metadata", {})
    given = any(name.startswith("=") for name in meta.get("course", {}).get("render", []))
    if cell["cell_type"] == "code" and (meta.get("nbgrader", {}).get("solution") or given):
        exec("".join(cell["source"]), namespace)

for checkpoint_id, name in [("01.merge", "merge"), ("01.train_bpe", "train_bpe"),
                            ("01.encode", "encode_ordinary"), ("01.decode", "decode"),
                            ("01.special_tokens", "encode")]:
    out = io.StringIO()
    with redirect_stdout(out):
        autograder.check(checkpoint_id, namespace[name])
    assert out.getvalue().startswith("✓ " + checkpoint_id), out.getvalue()
    print(out.getvalue(), end="")

os.environ["COURSE_CHECK_MODE"] = "grade"  # as nbgrader sees it: a failure is an error
try:
    autograder.check("01.merge", lambda ids, pair, new_id: list(ids))
except AssertionError as failure:
    assert "hint:" in str(failure), failure
    print("wrong answer rejected")
else:
    raise AssertionError("a wrong merge passed in the release")
"""


def test_release_checks_chapter_01_without_solutions(built):
    notebook = ROOT / "solutions" / "notebooks" / "01_tokenizer" / "01_tokenizer.ipynb"
    env = {**os.environ, "PYTHONPATH": str(built), "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHAPTER_01), str(built.resolve()), str(notebook)],
        cwd=built, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("✓ 01.") == 5 and "wrong answer rejected" in done.stdout, done.stdout
