"""Tests for the course data: synthetic corpus, manifest, build script and downloader.

Everything here runs offline.  The slowest test regenerates the whole corpus
(about a second on a laptop, well under 20 s on a 2-core CI machine).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # so `import data` works however pytest is started
    sys.path.insert(0, str(REPO_ROOT))

from data import build, corpus, manifest  # noqa: E402
from data.download import DownloadError, download  # noqa: E402

DATA_DIR = REPO_ROOT / "data"
SPLIT_PATHS = {split: DATA_DIR / "corpus" / f"{split}.txt" for split in corpus.SPLITS}
MIN_BYTES = {"train": 5 * 1024 * 1024, "val": 512 * 1024}  # 5 MiB / 0.5 MiB: both "MB" readings


# --- shared helpers -----------------------------------------------------------


@pytest.fixture(scope="module")
def committed() -> dict[str, str]:
    """The corpus files as committed, decoded (fails clearly if they are missing)."""
    texts = {}
    for split, path in SPLIT_PATHS.items():
        assert path.exists(), f"{path} is missing; run `python -m data.build`"
        texts[split] = path.read_bytes().decode("utf-8")
    return texts


@pytest.fixture(scope="module")
def fresh() -> dict[str, str]:
    """A fresh in-memory generation of every split."""
    return {split: corpus.generate_text(split) for split in corpus.SPLITS}


def story_hashes(stories: list[str]) -> set[str]:
    return {hashlib.sha256(story.encode("utf-8")).hexdigest() for story in stories}


def file_url(path: Path) -> str:
    return path.resolve().as_uri()


def leftover_files(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# --- generator ----------------------------------------------------------------


def test_prefix_generation_is_deterministic():
    for split in corpus.SPLITS:
        assert corpus.generate_stories(split, 40) == corpus.generate_stories(split, 40)


def test_generation_ignores_global_random_state():
    random.seed(1)
    first = corpus.generate_stories("val", 10)
    random.seed(2)
    random.random()
    assert corpus.generate_stories("val", 10) == first


def test_committed_files_equal_a_fresh_generation(committed, fresh):
    for split in corpus.SPLITS:
        assert committed[split] == fresh[split], (
            f"data/corpus/{split}.txt differs from the generator's output; run `python -m data.build`")


def test_file_sizes(committed):
    for split, path in SPLIT_PATHS.items():
        assert path.stat().st_size >= MIN_BYTES[split], f"{split}.txt is too small"


def test_distinct_word_types_in_promised_range(committed):
    low, high = corpus.WORD_TYPE_RANGE
    count = len(corpus.word_types(committed["train"]))
    assert low <= count <= high, f"{count} word types, expected {low}..{high}"


def test_val_uses_mostly_the_train_vocabulary(committed):
    """Val should be the same kind of text, so almost all its words occur in train."""
    train_words = corpus.word_types(committed["train"])
    val_words = corpus.word_types(committed["val"])
    assert len(val_words - train_words) <= 0.02 * len(val_words)


def test_separators_are_lines_of_their_own(committed):
    for split, text in committed.items():
        assert text.endswith("\n") and not text.endswith("\n\n")
        assert "\r" not in text
        stories = corpus.split_stories(text)
        assert text.count(corpus.SEPARATOR) == len(stories) - 1
        assert text.count(f"\n{corpus.SEPARATOR}\n") == len(stories) - 1
        assert not text.startswith(corpus.SEPARATOR)
        assert not text.rstrip("\n").endswith(corpus.SEPARATOR)
        for story in stories:
            assert story.strip() == story and story, f"empty or padded story in {split}"
            assert corpus.SEPARATOR not in story
        assert corpus.join_stories(stories) == text


def test_train_and_val_stories_do_not_overlap(committed):
    train = story_hashes(corpus.split_stories(committed["train"]))
    val = story_hashes(corpus.split_stories(committed["val"]))
    assert len(val) > 300
    assert not (train & val), "some val stories also appear verbatim in train"


def test_train_stories_are_not_repeated(committed):
    stories = corpus.split_stories(committed["train"])
    assert len(story_hashes(stories)) == len(stories)


def test_each_story_keeps_its_cast(committed):
    """The hero's name recurs throughout a story: the coherence a model can learn."""
    stories = corpus.split_stories(committed["train"])
    casts = [corpus.make_cast(corpus.story_rng(corpus.SPLITS["train"], i)) for i in range(200)]
    for story, cast in zip(stories, casts):
        assert story.count(cast["hero"]) >= 3, story
    with_town = sum(1 for story, cast in zip(stories, casts) if cast["town"] in story)
    assert with_town >= 0.7 * len(casts)


def test_stories_contain_dialogue_cause_and_numbers(committed):
    stories = corpus.split_stories(committed["train"])[:500]
    share = lambda test: sum(1 for s in stories if test(s)) / len(stories)  # noqa: E731
    assert share(lambda s: '"' in s) > 0.9
    assert share(lambda s: any(w in s for w in ("Because", "because", " so ", "Since", "As a result"))) > 0.5
    assert share(lambda s: any(ch.isdigit() for ch in s)) > 0.3


def test_a_little_non_ascii_text(committed):
    text = committed["train"]
    non_ascii = sum(1 for ch in text if ord(ch) > 127)
    emoji = sum(1 for ch in text if ord(ch) > 0xFFFF)
    assert 0 < emoji < non_ascii < 0.01 * len(text)
    assert "é" in text


def test_inflection_helpers():
    assert corpus.parse_verb("stop*") == corpus.Verb("stop", "stops", "stopped", "stopped", "stopping")
    fly = corpus.parse_verb("fly:flew:flown kites")
    assert (fly.third, fly.past, fly.participle, fly.ing) == (
        "flies kites", "flew kites", "flown kites", "flying kites")
    assert corpus.parse_verb("tie").ing == "tying"
    assert corpus.parse_verb("make:made:made").ing == "making"
    assert corpus.parse_noun("box").many == "boxes"
    assert corpus.parse_noun("knife:knives").many == "knives"
    assert corpus.parse_noun("watering can").many == "watering cans"
    assert corpus.with_article("owl") == "an owl"
    assert corpus.with_article("ukulele") == "a ukulele"
    assert corpus.number_in_words(42) == "forty-two"


# --- manifest -----------------------------------------------------------------


def test_manifest_verifies():
    assert manifest.verify() == []


def test_manifest_is_canonical_json():
    text = manifest.MANIFEST_PATH.read_text(encoding="utf-8")
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    for key in SPLIT_PATHS:
        entry = data[f"corpus/{key}.txt"]
        assert entry["bytes"] == SPLIT_PATHS[key].stat().st_size
        assert entry["sha256"] == manifest.sha256_file(SPLIT_PATHS[key])


def copy_corpus(tmp_path: Path) -> Path:
    """A copy of data/corpus under tmp_path, to corrupt without touching the real files."""
    shutil.copytree(DATA_DIR / "corpus", tmp_path / "corpus")
    return tmp_path


def test_manifest_detects_a_corrupted_copy(tmp_path):
    data_dir = copy_corpus(tmp_path)
    check = lambda: manifest.verify(  # noqa: E731
        ["corpus/val.txt"], data_dir=data_dir, manifest_path=manifest.MANIFEST_PATH)
    assert check() == []

    val = data_dir / "corpus" / "val.txt"
    raw = bytearray(val.read_bytes())
    raw[1000] ^= 0x01  # same size, different content
    val.write_bytes(bytes(raw))
    problems = check()
    assert len(problems) == 1 and "sha256" in problems[0] and "python -m data.build" in problems[0]

    val.write_bytes(bytes(raw[:-10]))
    assert "size" in check()[0]

    val.unlink()
    assert "missing" in check()[0]


def test_manifest_reports_unlisted_files(tmp_path):
    (tmp_path / "extra.bin").write_bytes(b"x")
    manifest.save_manifest({"other.bin": {"bytes": 1, "sha256": "0" * 64}}, tmp_path / "MANIFEST.json")
    problems = manifest.verify(["extra.bin"], data_dir=tmp_path)
    assert "not listed" in problems[0]


def test_update_manifest_keeps_other_entries(tmp_path):
    other = {"checkpoints/model.pt": {"bytes": 3, "sha256": "a" * 64}}
    manifest.save_manifest(other, tmp_path / "MANIFEST.json")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}\n", encoding="utf-8")

    updated = manifest.update_manifest([tmp_path / "tok" / "tokenizer.json"], data_dir=tmp_path)
    assert updated["checkpoints/model.pt"] == other["checkpoints/model.pt"]
    assert updated["tok/tokenizer.json"] == {"bytes": 3, "sha256": hashlib.sha256(b"{}\n").hexdigest()}
    assert manifest.load_manifest(tmp_path / "MANIFEST.json") == updated
    assert manifest.verify(data_dir=tmp_path) == ["checkpoints/model.pt: file is missing; "
                                                  + manifest.REBUILD_HINT]


def test_manifest_rejects_paths_outside_data(tmp_path):
    with pytest.raises(ValueError):
        manifest.manifest_key(tmp_path / "elsewhere.txt")


# --- build script -------------------------------------------------------------


def test_build_verify_passes(capsys):
    assert build.main(["--verify"]) == 0
    assert "OK" in capsys.readouterr().out


def test_build_check_passes(capsys):
    assert build.main(["--check"]) == 0
    assert "identical" in capsys.readouterr().out


def test_build_steps_cover_the_corpus():
    assert {"corpus/train.txt", "corpus/val.txt"} <= set(build.all_outputs())


# --- download -----------------------------------------------------------------


@pytest.fixture()
def source_file(tmp_path) -> Path:
    source = tmp_path / "source" / "input.txt"
    source.parent.mkdir()
    source.write_bytes("To be, or not to be. Zoë 🎉\n".encode("utf-8") * 1000)
    return source


def test_download_with_correct_checksum(tmp_path, source_file):
    dest = tmp_path / "out" / "copy.txt"
    expected = manifest.sha256_file(source_file)
    assert download(file_url(source_file), dest, expected) == dest
    assert dest.read_bytes() == source_file.read_bytes()
    assert leftover_files(dest.parent, keep={"copy.txt"}) == []


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, source_file):
    dest = tmp_path / "out" / "copy.txt"
    with pytest.raises(ValueError, match="expected sha256"):
        download(file_url(source_file), dest, "0" * 64)
    assert not dest.exists()
    assert leftover_files(dest.parent, keep=set()) == []


def test_download_without_checksum_prints_the_hash(tmp_path, source_file, capsys):
    dest = download(file_url(source_file), tmp_path / "copy.txt")
    assert manifest.sha256_file(source_file) in capsys.readouterr().out
    assert dest.exists()


@pytest.mark.parametrize("url", [
    "file:///definitely/not/here/input.txt",
    "http://127.0.0.1:9/input.txt",  # the discard port: connection refused, no network needed
])
def test_unreachable_url_gives_a_clear_error(tmp_path, url):
    dest = tmp_path / "copy.txt"
    with pytest.raises(DownloadError, match="this download is optional"):
        download(url, dest, timeout=5)
    assert leftover_files(tmp_path, keep=set()) == []
