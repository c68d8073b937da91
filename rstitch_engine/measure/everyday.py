"""Everyday prompts the default LLM alone mostly answers right: where a stitched answer's loss can show.

The generalisation suite (``generalisation``) asks what a 135M model mostly gets wrong (its LLM alone
scores about 20%), so a configuration that loses a quarter of the LLM's right answers still looks
"within 2 points" there. This suite keeps to what the LLM alone answers right most of the time:
capitals of well-known countries, one-digit sums, opposites of common adjectives, where a person lives
read from a short context (two people) or a long one (nine people, with other sentences about each),
a follow-up question in a chat that only makes sense after the turn before it, a tool call whose
argument comes from the question, and a JSON extraction. Questions come plain or with a format
instruction ("Answer in one word.", "Reply with just the number.").

Retrieval items put the context in a system message ("Answer the question using only the context."),
as a RAG chain's prompt does; every person in it lives somewhere, so the others are distractors of
the same kind. Multi-turn items ask a capital, answer it, then ask an elliptic follow-up ("And the
capital of Peru?").

The tool-call and JSON items carry OpenAI-style call options (``EverydayItem.call``: ``tools`` and
``tool_choice``, or ``response_format``) that an adapter's constrained decoding turns into a grammar;
``answer`` texts passed to ``extract`` for them include the forced opening the adapter puts in the
model's mouth. The engine's own calibration (``calibrate.builtin_prompts``) uses the plain items.

Split by form and by entity, as ``generalisation`` is: each skill has four question forms, two for
the ``tuning`` part (what ``rstitch calibrate`` measures by default) and two for the ``heldout``
part (reported only, never tuned on); entities are split by a hash of their key. A held-out item has
a held-out form and a held-out entity. No item is picked by how any model does on it. The retrieval
and multi-turn designs (``SUITE_VERSION`` 2) replaced version 1's car colours among passages and a
favourite recalled from an earlier turn, which the 135M LLM alone answered right in 9 of 24 and 1 of
12 tuning items: a skill the LLM cannot do shows no loss. Version 2's tuning forms, the names without
surnames and no "Answer in one word." after a context were chosen by the LLM alone's answers on the
tuning part only; the held-out forms were written before any of them ran and were not changed.

Checking is deterministic, as in ``generalisation.GenItem.extract``: numbers are the first number of
the reply that is not one of the question's; words are whole words, case and accents ignored.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from .generalisation import number_answer, word_answer
from .quality import _fold

Part = Literal["tuning", "heldout"]
PARTS: tuple[Part, ...] = ("tuning", "heldout")
Check = Literal["number", "word", "tool", "json"]

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Egypt": "Cairo", "Italy": "Rome", "Germany": "Berlin",
            "Spain": "Madrid", "Russia": "Moscow", "China": "Beijing", "Greece": "Athens", "Ireland": "Dublin",
            "Portugal": "Lisbon", "Austria": "Vienna", "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw",
            "Kenya": "Nairobi", "Thailand": "Bangkok", "Peru": "Lima", "Cuba": "Havana", "Argentina": "Buenos Aires",
            "England": "London", "Hungary": "Budapest", "Finland": "Helsinki", "Denmark": "Copenhagen"}
OPPOSITES = {"hot": ("cold", "cool"), "big": ("small", "little", "tiny"), "fast": ("slow",), "happy": ("sad", "unhappy"),
             "light": ("dark", "heavy"), "open": ("closed", "shut"), "full": ("empty",), "wet": ("dry",),
             "hard": ("soft", "easy"), "tall": ("short",), "early": ("late",), "rich": ("poor",),
             "strong": ("weak",), "clean": ("dirty",), "loud": ("quiet", "soft", "silent"), "high": ("low",),
             "good": ("bad", "evil"), "thick": ("thin",), "near": ("far", "distant"), "first": ("last",),
             "young": ("old",), "up": ("down",), "day": ("night",), "black": ("white",)}
FIRST_NAMES = ("Mira", "Tomas", "Lena", "Jonah", "Ines", "Pavel", "Ruth", "Oskar", "Nadia", "Felix", "Greta",
               "Hugo", "Alma", "Victor", "Selma", "Bruno", "Clara", "Emil", "Vera", "Anton")

CITIES = ("Paris", "Tokyo", "Cairo", "Rome", "Berlin", "Madrid", "Lisbon", "Vienna", "Oslo", "Dublin", "Athens",
          "Warsaw", "Prague", "Nairobi", "Lima", "Toronto", "Sydney", "Chicago", "Boston", "Seattle")
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city's name."}},
                   "required": ["city"]}}}
PERSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": {
    "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"]}}}
JOBS = ("works in a bakery", "teaches music", "drives a bus", "repairs bicycles", "grows apples", "paints houses")

NUMBER_SUFFIXES = ("", " Reply with just the number.")
WORD_SUFFIXES = ("", " Answer in one word.")

RETRIEVAL_FORMS = ("Where does {x} live?", "Where is {x}'s home?",
                   "In which city does {x} live?", "According to the context, where does {x} live?")
"""The questions of both retrieval skills (short and long contexts): two tuning forms, then two held-out forms."""

TEMPLATES: dict[str, tuple[str, ...]] = {  # two tuning forms, then two held-out forms
    "capital": ("What is the capital of {x}?", "Which city is the capital of {x}?",
                "Tell me the capital of {x}.", "Name the capital city of {x}."),
    "sum": ("What is {a} + {b}?", "How much is {a} plus {b}?", "Compute {a} + {b}.", "What do you get when you add {a} and {b}?"),
    "opposite": ("What is the opposite of {x}?", "What is the antonym of {x}?",
                 "Give the opposite of the word {x}.", "Tell me the opposite of {x}."),
    "rag_short": RETRIEVAL_FORMS,
    "rag_long": RETRIEVAL_FORMS,
    "multiturn": ("And the capital of {x}?", "What about {x}?", "And what is the capital of {x}?", "How about {x}?"),
    "tool": ("What's the weather like in {x} today?", "Is it raining in {x} right now?",
             "Tell me the current weather in {x}.", "How warm is it in {x} at the moment?"),
    "json": ("Extract the person's name and age from this sentence: {x}", "Give the name and age of the person "
             "described here: {x}", "From the text below, pull out the name and age.\n\n{x}",
             "Who is described, and how old are they? Text: {x}"),
}
SKILL_CHECK: dict[str, Check] = {"capital": "word", "sum": "number", "opposite": "word", "rag_short": "word",
                                 "rag_long": "word", "multiturn": "word", "tool": "tool", "json": "json"}
PER_SKILL = {"tuning": 12, "heldout": 14}
"""Items drawn per skill and part (fewer where the part has fewer combinations)."""
SUITE_VERSION = 2
"""Version 2: retrieval of where a person lives from a system-message context, and elliptic follow-ups
(version 1: car colours among passages, a favourite recalled from an earlier turn; see the module docstring)."""
LONG_CONTEXT_PEOPLE = 9
"""People in a long retrieval context (about 300-400 tokens, two other sentences each); a short one has 2."""
RETRIEVAL_INSTRUCTION = "Answer the question using only the context."

_FILLER = ("{n} walks to the market near the river on Saturdays.",
           "{n} has two brothers and a sister, and they meet for dinner every Sunday.",
           "On weekdays {n} starts work at eight and takes the train home in the evening.",
           "{n} likes to read old novels and keeps a small garden with tomatoes and herbs.",
           "Last summer {n} visited the coast and spent a week walking along the cliffs.")


@dataclass(frozen=True)
class EverydayItem:
    """One item: its chat turns, what counts as correct, and the form and entity it was made from."""

    id: str
    skill: str
    part: Part
    template: str
    entity: str
    turns: tuple[tuple[str, str], ...]
    """(role, content) turns; the last is the user's question."""
    accepted: tuple[str, ...]
    call: dict[str, Any] = field(default_factory=dict)
    """OpenAI-style call options (``tools``/``tool_choice`` or ``response_format``); empty for plain chat."""

    @property
    def check(self) -> Check:
        return SKILL_CHECK[self.skill]

    def messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.turns]

    def is_correct(self, answer: str) -> bool:
        return self.extract(answer) is not None

    def extract(self, answer: str) -> str | None:
        """The accepted answer the reply gives, or None (see the module docstring)."""
        if self.check == "tool":
            found = re.search(r'"city"\s*:\s*"([^"]*)"', answer)
            return found.group(1) if found and _fold(found.group(1)) == _fold(self.accepted[0]) else None
        if self.check == "json":
            try:
                value = json.loads(answer)
            except ValueError:
                return None
            right = isinstance(value, dict) and _fold(str(value.get("name", ""))) == _fold(self.accepted[0]) \
                and str(value.get("age")) == self.accepted[1]
            return "|".join(self.accepted) if right else None
        if self.check == "number":
            return number_answer(self.turns[-1][1], self.accepted, answer)
        return word_answer(self.accepted, answer)


def everyday_suite(part: Part) -> list[EverydayItem]:
    """The part's items in a fixed order (every skill, then by draw)."""
    return [item for skill in TEMPLATES for item in _skill_items(skill, part)]


def entity_part(key: str) -> Part:
    """Half the entities tune, half are held out, by a hash of the key."""
    return "tuning" if hashlib.sha256(f"everyday/{key}".encode()).digest()[0] < 128 else "heldout"


def _skill_items(skill: str, part: Part) -> list[EverydayItem]:
    rng = random.Random(f"everyday/{skill}/{part}")
    forms = TEMPLATES[skill][:2] if part == "tuning" else TEMPLATES[skill][2:]
    entities = [key for key in _entities(skill) if entity_part(f"{skill}/{key}") == part]
    suffixes = {"number": NUMBER_SUFFIXES, "word": WORD_SUFFIXES}.get(SKILL_CHECK[skill], ("",))
    if skill in ("rag_short", "rag_long"):
        suffixes = ("",)  # the context's instruction is the format instruction
    combos = [(form, entity, suffix) for form in forms for entity in entities for suffix in suffixes]
    chosen = rng.sample(combos, min(PER_SKILL[part], len(combos)))
    return [_item(skill, part, form, entity, suffix, rng) for form, entity, suffix in chosen]


def _entities(skill: str) -> list[str]:
    if skill == "capital":
        return list(CAPITALS)
    if skill == "opposite":
        return list(OPPOSITES)
    if skill == "sum":
        return [f"{a},{b}" for a in range(1, 10) for b in range(1, 10) if a + b < 10]
    if skill == "multiturn":
        return [country for country in CAPITALS if " " not in CAPITALS[country]]
    if skill == "tool":
        return list(CITIES)
    if skill == "json":
        return [f"{first} Dalby,{age}" for first in FIRST_NAMES for age in (23, 35, 41, 58)]
    return list(FIRST_NAMES)  # retrieval: the person asked about


def _item(skill: str, part: Part, form: str, entity: str, suffix: str, rng: random.Random) -> EverydayItem:
    item_id = hashlib.sha256(f"{skill}/{form}/{entity}/{suffix}".encode()).hexdigest()[:12]
    if skill == "capital":
        turns, accepted = (("user", form.format(x=entity) + suffix),), (CAPITALS[entity],)
    elif skill == "opposite":
        turns, accepted = (("user", form.format(x=entity) + suffix),), OPPOSITES[entity]
    elif skill == "sum":
        a, b = entity.split(",")
        turns, accepted = (("user", form.format(a=a, b=b) + suffix),), (str(int(a) + int(b)),)
    elif skill == "multiturn":
        first = rng.choice([country for country in CAPITALS if country != entity])
        turns = (("user", f"What is the capital of {first}?"),
                 ("assistant", f"The capital of {first} is {CAPITALS[first]}."),
                 ("user", form.format(x=entity) + suffix))
        accepted = (CAPITALS[entity],)
    elif skill == "tool":
        call = {"tools": [WEATHER_TOOL], "tool_choice": "required"}
        return EverydayItem(item_id, skill, part, form, entity, (("user", form.format(x=entity)),), (entity,), call)
    elif skill == "json":
        name, age = entity.split(",")
        sentence = f"{name} is {age} years old and {rng.choice(JOBS)}."
        return EverydayItem(item_id, skill, part, form, entity, (("user", form.format(x=sentence)),), (name, age),
                            {"response_format": PERSON_FORMAT})
    else:
        turns, accepted = _retrieval(form, entity, suffix, rng, long=skill == "rag_long")
    return EverydayItem(item_id, skill, part, form, entity, turns, accepted)


def _retrieval(form: str, person: str, suffix: str, rng: random.Random, long: bool
               ) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """A system-message context of where people live (the person asked about and distractors of the same
    kind), then the question."""
    others = rng.sample([name for name in FIRST_NAMES if name != person], LONG_CONTEXT_PEOPLE - 1 if long else 1)
    cities = rng.sample(CITIES, len(others) + 1)  # cities[0] is the answer; everyone lives somewhere else
    lines = [_fact(name, city, rng, long) for name, city in zip([person, *others], cities)]
    rng.shuffle(lines)
    context = f"{RETRIEVAL_INSTRUCTION}\n\nContext:\n" + "\n".join(lines)
    return (("system", context), ("user", form.format(x=person) + suffix)), (cities[0],)


def _fact(person: str, city: str, rng: random.Random, long: bool) -> str:
    """Where ``person`` lives; in a long context, two other sentences about them."""
    if not long:
        return f"{person} lives in {city}."
    return f"{person} lives in {city}. " + " ".join(line.format(n=person) for line in rng.sample(_FILLER, 2))


def accuracy_by_skill(items: Sequence[EverydayItem], answers: Sequence[str]) -> dict[str, float]:
    """Share of right answers per skill (answers in the order of ``items``)."""
    skills: dict[str, list[bool]] = {}
    for item, answer in zip(items, answers):
        skills.setdefault(item.skill, []).append(item.is_correct(answer))
    return {skill: sum(right) / len(right) for skill, right in skills.items()}
