"""The preference pairs of chapters 10–12 and their gold judge (``data/preferences.py``)."""

from __future__ import annotations

from collections import Counter

import pytest

from data import instructions, preferences as P


@pytest.fixture(scope="module")
def pairs() -> dict[str, list[dict]]:
    return {split: P.load_preferences(split) for split in P.SPLITS}


def test_committed_files_equal_a_fresh_generation(pairs):
    for split in P.SPLITS:
        assert pairs[split][:50] == P.generate_split(split, 50)
    assert [len(pairs[s]) for s in P.SPLITS] == list(P.SPLITS.values())


def test_every_chosen_reply_beats_its_rejected_one_under_the_gold_judge(pairs):
    for split, rows in pairs.items():
        for pair in rows:
            assert pair["gold_chosen"] == P.gold_score(pair, pair["chosen"]) == 1.5
            assert pair["gold_rejected"] == P.gold_score(pair, pair["rejected"]) < 1.5, pair
            assert pair["chosen"] != pair["rejected"]


def test_the_rejections_are_balanced_and_score_as_documented(pairs):
    rows = pairs["train"]
    kinds = Counter(p["rejection"] for p in rows)
    assert set(kinds) == set(P.REJECTIONS) and min(kinds.values()) > len(rows) / 6
    scores = {(p["rejection"], p["gold_rejected"]) for p in rows}
    assert scores == {("wrong_fact", -0.5), ("truncated", 0.0), ("rambling", 0.5), ("bare_fact", 1.0)}
    assert set(Counter(p["task"] for p in rows)) == set(instructions.QUESTIONS)
    # half the wrong facts are another name from the story: the hard case
    wrong = [p for p in rows if p["rejection"] == "wrong_fact" and p["task"] in ("friend", "pet_name", "hero")]
    in_story = sum(P.answer_slot(p["task"], p["rejected"]) in p["facts"].values() for p in wrong)
    assert 0.3 < in_story / len(wrong) < 0.7
    # "longer wins" is not the rule: rambling replies are longer than the chosen ones, truncated and
    # bare ones shorter, wrong facts either
    longer = {kind: {len(p["rejected"]) > len(p["chosen"]) for p in rows if p["rejection"] == kind} for kind in kinds}
    assert longer == {"rambling": {True}, "truncated": {False}, "bare_fact": {False}, "wrong_fact": {True, False}}


def test_no_story_is_shared_between_splits_or_with_chapter_08(pairs):
    def stories(rows):
        return {m["content"] for p in rows for m in p["prompt"] if m["role"] == "user"}

    train = stories(pairs["train"])
    assert not train & stories(pairs["val"]) and not train & stories(pairs["test"])
    sft = {m["content"] for c in instructions.load_instructions("test") + instructions.load_instructions("val")
           for m in c["messages"] if m["role"] == "user"}
    assert not stories(pairs["test"]) & sft


@pytest.mark.parametrize("reply, score", [
    ("Robin lives in Elmford.", 1.5),          # the answer sentence
    ("Robin lives in Oakvale.", -0.5),         # the form, a wrong town
    ("Elmford.", 1.0),                         # right, not the form asked for
    ("It is Elmford, I think", 1.0),
    ("Robin lives in", 0.0),                   # truncated: no fact
    ("Robin lives in Elmford. Robin had a dog.", 0.5),  # rambling
    ("Robin lives in Elmford or Oakvale.", -1.0),       # hedging names a wrong town
    ("", 0.0),
    ("   Robin lives in Elmford.  ", 1.5),
])
def test_the_gold_judge_scores_any_reply(reply, score):
    pair = {"task": "town", "fact": "Elmford",
            "facts": {"hero": "Robin", "town": "Elmford", "pet_name": "Rusty", "pet_kind": "hamster", "friend": "Hugo"}}
    assert P.gold_score(pair, reply) == score


def test_the_gold_judge_knows_which_name_was_asked_for():
    facts = {"hero": "Robin", "town": "Elmford", "pet_name": "Rusty", "pet_kind": "hamster", "friend": "Hugo"}
    friend = {"task": "friend", "fact": "Hugo", "facts": facts}
    assert P.gold_score(friend, "Robin's best friend is Hugo.") == 1.5   # the hero's name is part of the form
    assert P.gold_score(friend, "Robin's best friend is Rusty.") == -0.5  # the pet is not the friend
    assert P.gold_score(friend, "Robin's best friend is Robin.") == -0.5
    assert P.gold_score(friend, "Hugo, and Robin too.") == 1.0
    kind = {"task": "pet_kind", "fact": "hamster", "facts": facts}
    assert P.gold_score(kind, "Rusty is a hamster.") == 1.5
    assert P.gold_score(kind, "Rusty is a parrot.") == -0.5
    assert P.answer_slot("pet_kind", "Rusty is an owl.") == "owl"
    assert P.answer_slot("pet_name", "Robin's hamster is called Rusty.") == "Rusty"
    assert P.answer_slot("town", "Robin is in Elmford.") is None


def test_unknown_splits_and_missing_files_get_clear_errors(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        P.generate_split("dev")
    monkeypatch.setattr(P, "PREFERENCES_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m data.build"):
        P.load_preferences("train")
