"""Deterministic generator of instruction-following conversations for chapter 08 (SFT).

Chapter 08 fine-tunes the course's pretrained story model to *answer* instead of *continue*.
For the result to be measurable, every answer must be checkable by exact string match. So
each conversation shows a short story from the world of ``data/corpus.py`` (the same cast,
towns, pets and sentence templates, made by that module's own functions) and asks about a
fact the story states: who the story is about, the town, the pet's name or kind, the best
friend. The answer is one sentence in a fixed form per question ("Robin's best friend is
Hugo."), whose fact is copied from the story.

A conversation is a list of messages ``{"role": ..., "content": ...}`` in the roles of chat
models: an optional ``system`` message, then ``user`` and ``assistant`` turns alternating.
About a third have a system message, about a third a second question about the same story
(a follow-up turn, without the story repeated). The last message is always the assistant's
answer to the last question; ``answer`` repeats it and ``task`` names the fact asked about.

Determinism: like ``data/corpus.py``, only the standard library, and every conversation has
its own ``random.Random`` seeded with a string ("instructions-train-v1:17"), so the files are
byte-identical on every platform. Splits come from different seed streams, so no story of
``test`` is in ``train`` by construction (the test checks that no story text is shared).

Usage::

    python -m data.instructions      # write data/instructions/{train,val,test}.jsonl
    python -m data.build             # same, and update data/MANIFEST.json
"""

from __future__ import annotations

import random
import re
import string
import sys
from pathlib import Path

from data import corpus, jsonl

GENERATOR_VERSION = 1
INSTRUCTIONS_DIR = Path(__file__).resolve().parent / "instructions"
# conversations per split: small files (together about 1 MB), enough for a CPU-sized SFT run
SPLITS = {"train": 1600, "val": 200, "test": 200}

# The facts a question can ask about, each with paraphrases (the model must not learn one
# wording per fact) and the story's slot that holds the answer.
QUESTIONS = {
    "hero": ("hero", [
        "Who is this story about?", "What is the name of the child in the story?",
        "Who is the main character of the story?", "What is the child called?",
    ]),
    "town": ("town", [
        "In which town does {hero} live?", "What is the name of the town?", "Where does {hero} live?",
        "Which town is the story set in?",
    ]),
    "pet_name": ("pet", [
        "What is the name of {hero}'s {pet_kind}?", "What is {hero}'s pet called?",
        "What is the {pet_kind} called?", "What is the name of the pet?",
    ]),
    "pet_kind": ("pet_kind", [
        "What kind of animal is {pet}?", "What animal is {hero}'s pet?", "What kind of pet does {hero} have?",
    ]),
    "friend": ("friend", [
        "Who is {hero}'s best friend?", "What is the name of {hero}'s friend?", "Who is {hero}'s friend?",
    ]),
}
# The reply: one sentence per task, so that exact match is fair, phrased as the stories phrase
# these facts (the pretrained model already knows how such a sentence ends).
ANSWERS = {
    "hero": "The story is about {hero}.",
    "town": "{hero} lives in {town}.",
    "pet_name": "{hero}'s {pet_kind} is called {pet}.",
    "pet_kind": "{pet} is {a_pet_kind}.",
    "friend": "{hero}'s best friend is {friend}.",
}
PROMPTS = [
    "{story}\n\n{question}",
    "Read the story and answer the question.\n\n{story}\n\nQuestion: {question}",
    "{story}\n\nQuestion: {question} Answer in one sentence.",
    "Here is a story:\n{story}\n\n{question}",
]
SYSTEM_PROMPTS = [
    "You answer questions about stories with a single word.",
    "You are a helpful assistant. Answer briefly.",
    "Answer the user's question about the story.",
]


def conversation_rng(split: str, index: int) -> random.Random:
    """The random stream of conversation ``index`` of ``split``: independent of every other."""
    return random.Random(f"instructions-{split}-v{GENERATOR_VERSION}:{index}")


def short_story(rng: random.Random) -> tuple[str, corpus.Slots]:
    """The opening of a course story (``corpus.opening_paragraph``), with the pet and the best
    friend introduced by the corpus's own sentences if the opening has not mentioned them."""
    slots = corpus.Slots(rng, corpus.make_cast(rng))
    slots["relative"] = rng.choice(["grandma", "grandpa", "mom", "dad", "aunt", "teacher"])
    opening = corpus.opening_paragraph(slots)
    extra = []
    if not corpus.mentions(opening, slots["pet"]):
        extra.append(slots.pick(corpus.PET_INTROS))
    if not corpus.mentions(opening, slots["friend"]):
        extra.append(slots.pick(corpus.FRIEND_INTROS))
    return corpus.paragraph(opening, *extra), slots


def answerable(story: str, slots: corpus.Slots) -> list[str]:
    """The tasks whose answer the story states as a whole word (a town the opening never names
    cannot be asked about)."""
    return [task for task, (slot, _) in QUESTIONS.items() if corpus.mentions(story, slots[slot])]


def make_conversation(rng: random.Random) -> dict:
    """One conversation: ``{"messages": [...], "answer": str, "task": str}``."""
    story, slots = short_story(rng)
    tasks = rng.sample(answerable(story, slots), 2 if rng.random() < 0.35 else 1)
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for turn, task in enumerate(tasks):
        slot, questions = QUESTIONS[task]
        question = slots.fill(rng.choice(questions))
        content = rng.choice(PROMPTS).format(story=story, question=question) if turn == 0 else question
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": slots.fill(ANSWERS[task])})
    return {"messages": messages, "answer": messages[-1]["content"], "fact": slots[QUESTIONS[tasks[-1]][0]],
            "task": tasks[-1]}


def follows_format(task: str, reply: str) -> bool:
    """Whether ``reply`` has the form of ``task``'s answer, whatever names fill it ("Ned's best friend
    is Mia." for "friend"): instruction following, apart from getting the fact right."""
    pattern = ""
    for literal, slot, _, _ in string.Formatter().parse(ANSWERS[task]):
        pattern += re.escape(literal)
        if slot:
            pattern += r"an? [^\s.]+" if slot.startswith("a_") else r"[^\s.]+"
    return re.fullmatch(pattern, reply) is not None


def generate_split(split: str, count: int | None = None) -> list[dict]:
    """The first ``count`` (default: all) conversations of ``split``, in order."""
    jsonl.check_split(split, SPLITS)
    return [make_conversation(conversation_rng(split, i)) for i in range(SPLITS[split] if count is None else count)]


def write_instructions(out_dir: Path = INSTRUCTIONS_DIR) -> dict[str, Path]:
    """Write ``{split}.jsonl`` (one conversation per line, UTF-8, "\\n") for every split."""
    return jsonl.write_splits(out_dir, SPLITS, generate_split)


def load_instructions(split: str, count: int | None = None) -> list[dict]:
    """The conversations of a split as written by :func:`write_instructions` (the first ``count``)."""
    return jsonl.read_split(INSTRUCTIONS_DIR, SPLITS, split, count)


def main(argv: list[str] | None = None) -> int:
    out_dir = Path(argv[0]) if argv else INSTRUCTIONS_DIR
    for split, path in write_instructions(out_dir).items():
        print(f"{path}: {path.stat().st_size:,} bytes, {SPLITS[split]:,} conversations")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
