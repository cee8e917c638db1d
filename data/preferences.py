"""Deterministic preference pairs with a rule-based gold judge, for chapters 10–12.

RLHF learns a reward model from human preferences and then optimises a policy against it.
Whether the policy really got better can only be checked against the truth, and people are
not at hand in a course; so the truth here is a **gold judge**: a rule that scores any reply
to a question about a story, because the story's facts are known. Every pair's chosen reply
scores higher than its rejected one under that rule, and any text a policy writes in chapter
11 or 12 can be scored by it too (reward hacking shows as the reward model's score rising
while the gold score falls).

Each pair asks one question of chapter 08's kind (``data/instructions.py``: the same stories,
questions and answer sentences) and holds two replies:

* ``chosen``: the answer in its sentence form ("Robin lives in Elmford.");
* ``rejected``, one of ``REJECTIONS``:

  - ``wrong_fact``: the same sentence with a wrong fact: another name *from the story* (the
    friend's name where the pet's was asked, the hard case) or a plausible name it never
    mentions;
  - ``truncated``: the sentence cut before its fact ("Robin lives in");
  - ``rambling``: the right sentence followed by sentences copied from the story (longer, and
    the gold judge dislikes it: a reward model that learned "longer is better" fails here);
  - ``bare_fact``: the fact alone ("Elmford."): right, but not the form asked for.

The gold judge (:func:`gold_score`) adds up what a careful reader would check: the fact the
first sentence states (+1 right, -1 a wrong name, 0 none), the form (+0.5 for exactly the
answer sentence's form), and brevity (-0.5 for more than one sentence). The answer sentence scores 1.5; the rejections
score -0.5 (wrong fact), 0 (truncated), 0.5 (rambling) and 1 (bare fact).

Determinism: only the standard library, one ``random.Random`` per pair seeded with a string
("preferences-train-v1:17"), stories from other seed streams than chapter 08's (no test
story of either is a training story here).

Usage::

    python -m data.preferences      # write data/preferences/{train,val,test}.jsonl
    python -m data.build            # same, and update data/MANIFEST.json
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

from data import corpus, instructions, jsonl

GENERATOR_VERSION = 1
PREFERENCES_DIR = Path(__file__).resolve().parent / "preferences"
SPLITS = {"train": 2000, "val": 200, "test": 200}
REJECTIONS = ("wrong_fact", "truncated", "rambling", "bare_fact")

# The names a wrong fact can be: every name the stories give to a slot of the same kind.
PEOPLE = corpus.GIRL_NAMES + corpus.BOY_NAMES + corpus.NEUTRAL_NAMES + corpus.ACCENTED_GIRL_NAMES + \
    corpus.ACCENTED_BOY_NAMES
CANDIDATES = {
    "hero": PEOPLE, "friend": PEOPLE, "pet_name": corpus.PET_NAMES,
    "town": [first + last for first in corpus.TOWN_PARTS_FIRST for last in corpus.TOWN_PARTS_LAST],
    "pet_kind": [noun.one for noun in corpus.PET_KIND_NOUNS],
}
CANDIDATE_SETS = {task: frozenset(names) for task, names in CANDIDATES.items()}


def pair_rng(split: str, index: int) -> random.Random:
    """The random stream of pair ``index`` of ``split``: independent of every other."""
    return random.Random(f"preferences-{split}-v{GENERATOR_VERSION}:{index}")


def wrong_fact(rng: random.Random, task: str, facts: dict[str, str], story: str) -> str:
    """A wrong answer to ``task``: half the time another name from the story that could fill
    the slot (a person for a person, the pet for a person's name, and so on), else one from
    the slot's pool that the story never mentions."""
    right = facts[task]
    in_story = [facts[slot] for slot in ("friend", "pet_name") if facts[slot] != right
                and task in ("hero", "friend", "pet_name")]
    if in_story and rng.random() < 0.5:
        return rng.choice(in_story)
    while True:
        name = rng.choice(CANDIDATES[task])
        if name != right and not corpus.mentions(story, name):
            return name


def make_pair(rng: random.Random) -> dict:
    """One pair: ``{"prompt": [messages], "chosen", "rejected", "rejection", "task", "fact",
    "facts", "gold_chosen", "gold_rejected"}``."""
    story, slots = instructions.short_story(rng)
    task = rng.choice(instructions.answerable(story, slots))
    slot, questions = instructions.QUESTIONS[task]
    facts = {"hero": slots["hero"], "town": slots["town"], "pet_name": slots["pet"], "pet_kind": slots["pet_kind"],
             "friend": slots["friend"]}
    prompt = []
    if rng.random() < 0.3:
        prompt.append({"role": "system", "content": rng.choice(instructions.SYSTEM_PROMPTS)})
    question = slots.fill(rng.choice(questions))
    prompt.append({"role": "user", "content": rng.choice(instructions.PROMPTS).format(story=story, question=question)})
    template = instructions.ANSWERS[task]
    chosen = slots.fill(template)
    kind = rng.choice(REJECTIONS)
    if kind == "wrong_fact":
        wrong = wrong_fact(rng, task, facts, story)
        fill = dict(slots, **{slot: wrong})
        if task == "pet_kind":
            fill["a_pet_kind"] = corpus.with_article(wrong)
        rejected = template.format_map(fill)
    elif kind == "truncated":
        rejected = chosen[:chosen.index(facts[task])].rstrip() if facts[task] in chosen else chosen.split()[0]
        if task == "pet_kind":  # "Rusty is a hamster." -> "Rusty is"
            rejected = chosen[:chosen.rindex(" a")].rstrip() if " a" in chosen else rejected
    elif kind == "rambling":
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", story) if s.strip()]
        rejected = " ".join([chosen] + rng.sample(sentences, min(len(sentences), rng.randint(1, 3))))
    else:
        rejected = facts[task] + "."
    pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "rejection": kind, "task": task,
            "fact": facts[task], "facts": facts}
    pair["gold_chosen"], pair["gold_rejected"] = gold_score(pair, chosen), gold_score(pair, rejected)
    return pair


def gold_score(pair: dict, reply: str) -> float:
    """The gold judge's score of ``reply`` to ``pair``'s question (any text, not only the pair's
    two replies): fact + form + brevity.

    * fact: +1 if the right fact is in the reply as a whole word and no wrong candidate is
      (another name of the kind asked for), -1 if a wrong one is, 0 if neither;
    * form: +0.5 if the reply is exactly one answer sentence of the task's form
      (``instructions.follows_format``), whatever it says;
    * brevity: -0.5 if the reply has more than one sentence.
    """
    task, right, facts = pair["task"], pair["fact"], pair["facts"]
    reply = reply.strip()
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", reply) if s]
    first = sentences[0] if sentences else ""
    stated = answer_slot(task, first)
    if stated is not None:  # an answer sentence: its slot is the fact it states
        fact = 1.0 if stated == right else -1.0
    else:  # any other text: the names of the asked kind in its first sentence
        named = set(re.findall(r"\w+(?:-\w+)*", first)) & CANDIDATE_SETS[task]
        if task != "hero":  # the hero's name starts most answers; it is not what was asked
            named.discard(facts["hero"])
        fact = -1.0 if named - {right} else (1.0 if right in named else 0.0)
    form = 0.5 if instructions.follows_format(task, reply) else 0.0
    return fact + form - (0.5 if len(sentences) > 1 else 0.0)


def answer_slot(task: str, sentence: str) -> str | None:
    """What ``sentence`` says the asked fact is, if it has the task's answer form ("Robin lives
    in Elmford." -> "Elmford"), else ``None``."""
    import string

    asked = instructions.QUESTIONS[task][0]
    pattern = ""
    for literal, slot, _, _ in string.Formatter().parse(instructions.ANSWERS[task]):
        pattern += re.escape(literal)
        if slot:
            value = r"an? ([^\s.]+)" if slot.startswith("a_") else r"([^\s.]+)"
            pattern += value if slot.removeprefix("a_") == asked else value.replace("(", "(?:")
    match = re.fullmatch(pattern, sentence)
    return match.group(1) if match else None


def generate_split(split: str, count: int | None = None) -> list[dict]:
    """The first ``count`` (default: all) pairs of ``split``, in order."""
    jsonl.check_split(split, SPLITS)
    return [make_pair(pair_rng(split, i)) for i in range(SPLITS[split] if count is None else count)]


def write_preferences(out_dir: Path = PREFERENCES_DIR) -> dict[str, Path]:
    """Write ``{split}.jsonl`` (one pair per line, UTF-8, "\\n") for every split."""
    return jsonl.write_splits(out_dir, SPLITS, generate_split)


def load_preferences(split: str, count: int | None = None) -> list[dict]:
    """The pairs of a split as written by :func:`write_preferences` (the first ``count``)."""
    return jsonl.read_split(PREFERENCES_DIR, SPLITS, split, count)


def main(argv: list[str] | None = None) -> int:
    out_dir = Path(argv[0]) if argv else PREFERENCES_DIR
    for split, path in write_preferences(out_dir).items():
        print(f"{path}: {path.stat().st_size:,} bytes, {SPLITS[split]:,} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
