"""A quality suite split by question form and by entity, to measure generalisation, not memory of forms.

``quality`` (the first suite) splits items by a hash of their id, so its held-out items share their
one question form per skill, and often their entities, with every training prompt and tau choice.
Here every skill has six question forms (templates) and an entity list, and both are divided into
three parts with no overlap:

* ``pool``: forms and entities a draft's training prompts may use;
* ``tuning``: for choosing tau, routers and training recipes;
* ``heldout``: for reporting only. A held-out item has a held-out form *and* a held-out entity.

Forms are assigned two per part, in a fixed order. Entities are split by a hash of their key (40%
pool, 20% tuning, 40% held-out), except where the first suite's lists exist (capitals, plurals,
opposites): those lists are split between pool and tuning, and the held-out part uses new lists
(smaller countries, other nouns and adjectives). Each form is asked plain and with an instruction
("Answer in one word." / "Reply with just the number." / "Be brief.").

A draft's training pool must not name a held-out entity in any form: ``heldout_mentions`` is the
rule, and ``training.prompt_pool`` leaves out every prompt it flags. (Drafts up to round 2's first
were trained on short questions about some of the new lists' countries, nouns and adjectives.)

Skills: sums, differences and products of numbers; capitals; plurals; opposites; animal facts (legs);
word relations (animal sounds); instruction following (a word in capital letters); ``rag`` (two to
five retrieved passages of 100-250 tokens on made-up towns with made-up numbers, distractors
included: the answer must be read, not remembered); ``multiturn`` (the answer is in an earlier turn).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass
from typing import Literal, Sequence

from .quality import CAPITALS, OPPOSITES, PLURALS, _fold

GenPart = Literal["pool", "tuning", "heldout"]
PARTS: tuple[GenPart, ...] = ("pool", "tuning", "heldout")
Check = Literal["number", "word", "upper"]
PER_SKILL = {"pool": 60, "tuning": 24, "heldout": 40}
"""Items drawn per skill and part (fewer where the part has fewer combinations)."""

NUMBER_SUFFIXES = ("", " Reply with just the number.", " Be brief.")
WORD_SUFFIXES = ("", " Answer in one word.", " Be brief.")

TEMPLATES: dict[str, tuple[str, ...]] = {  # two per part, in PARTS order
    "sum": ("Compute {a} + {b}.", "How much is {a} plus {b}?", "What do you get when you add {a} to {b}?",
            "Find the total of {a} and {b}.", "If I have {a} coins and get {b} more, how many coins do I have?",
            "Tell me the sum of {a} and {b}."),
    "difference": ("Compute {a} - {b}.", "How much is {a} take away {b}?", "Subtract {b} from {a}.",
                   "What is left when you remove {b} from {a}?", "I had {a} stickers and gave away {b}. How many are left?",
                   "Tell me the difference between {a} and {b}."),
    "product": ("Compute {a} x {b}.", "How much is {a} times {b}?", "Multiply {a} by {b}.",
                "What do you get when you multiply {a} and {b}?", "There are {a} boxes with {b} pens each. How many pens?",
                "Tell me the product of {a} and {b}."),
    "capital": ("Which city is the capital of {x}?", "{x} has which city as its capital?", "Tell me the capital of {x}.",
                "Where is the seat of government of {x}?", "Name the capital city of the country {x}.",
                "The capital of {x} is which city?"),
    "plural": ("Give the plural of the noun {x}.", "One {x}, two what?", "How do you write {x} in the plural?",
               "What is the word for more than one {x}?", "Make the noun {x} plural.", "Plural form of {x}?"),
    "opposite": ("Give the antonym of {x}.", "What word means the reverse of {x}?", "Name the opposite of the word {x}.",
                 "What is an antonym for {x}?", "If something is not {x}, it is the opposite: what is that word?",
                 "Tell me the opposite of {x}."),
    "legs": ("How many legs does a {x} have?", "Count the legs of a {x}.", "A {x} walks on how many legs?",
             "How many legs has one {x} got?", "Number of legs of a {x}?", "Tell me how many legs a {x} has."),
    "sound": ("What sound does a {x} make?", "What noise does a {x} make?", "A {x} goes what?",
              "Which sound do we say a {x} makes?", "What does a {x} say?", "Name the sound a {x} makes."),
    "upper": ("Write the word {x} in capital letters.", "Spell {x} in uppercase.", "Reply with {x} in all capitals.",
              "Convert the word {x} to upper case.", "Give me {x} written in capital letters.",
              "Type the word {x} using only capital letters."),
    "rag": ("What is the population of {x}?", "How many people live in {x}?", "According to the passages, how many "
            "residents does {x} have?", "What population do the passages give for {x}?",
            "Read the passages. How many inhabitants does {x} have?", "Find the number of people living in {x}."),
    "multiturn": ("What is my favourite {x}?", "Which {x} did I say I like best?", "Remind me: what is my favourite {x}?",
                  "Tell me my favourite {x}.", "Do you remember my favourite {x}? What is it?",
                  "What did I tell you my favourite {x} was?"),
}
SKILL_CHECK: dict[str, Check] = {"sum": "number", "difference": "number", "product": "number", "capital": "word",
                                 "plural": "word", "opposite": "word", "legs": "number", "sound": "word",
                                 "upper": "upper", "rag": "number", "multiturn": "word"}

NEW_CAPITALS = {"Norway": ("Oslo",), "Sweden": ("Stockholm",), "Portugal": ("Lisbon",), "Greece": ("Athens",),
                "Cuba": ("Havana",), "Ireland": ("Dublin",), "Austria": ("Vienna",), "Hungary": ("Budapest",),
                "Finland": ("Helsinki",), "Denmark": ("Copenhagen",), "Belgium": ("Brussels",),
                "Netherlands": ("Amsterdam",), "Switzerland": ("Bern",), "Czech Republic": ("Prague",),
                "New Zealand": ("Wellington",), "Israel": ("Jerusalem",), "Jordan": ("Amman",),
                "Lebanon": ("Beirut",), "Senegal": ("Dakar",), "Bolivia": ("La Paz", "Sucre"),
                "Ecuador": ("Quito",), "Uruguay": ("Montevideo",), "Mongolia": ("Ulaanbaatar", "Ulan Bator"),
                "Iceland": ("Reykjavik",), "Jamaica": ("Kingston",), "Qatar": ("Doha",)}
NEW_PLURALS = {"louse": ("lice",), "calf": ("calves",), "loaf": ("loaves",), "shelf": ("shelves",),
               "thief": ("thieves",), "scarf": ("scarves", "scarfs"), "fly": ("flies",), "lady": ("ladies",),
               "penny": ("pennies", "pence"), "fox": ("foxes",), "glass": ("glasses",), "brush": ("brushes",),
               "echo": ("echoes",), "cherry": ("cherries",), "berry": ("berries",),
               "match": ("matches",), "watch": ("watches",), "class": ("classes",), "wish": ("wishes",),
               "horse": ("horses",), "table": ("tables",), "river": ("rivers",), "window": ("windows",)}
NEW_OPPOSITES = {"brave": ("cowardly", "scared", "afraid", "timid"), "cheap": ("expensive", "dear"),
                 "heavy": ("light",), "smooth": ("rough",), "noisy": ("quiet", "silent"), "tight": ("loose",),
                 "sharp": ("blunt", "dull"), "awake": ("asleep",), "fat": ("thin", "skinny"),
                 "ancient": ("modern", "new"), "major": ("minor",), "increase": ("decrease",),
                 "arrive": ("leave", "depart"), "accept": ("reject", "refuse"), "always": ("never",),
                 "above": ("below", "beneath", "under"), "before": ("after",), "male": ("female",),
                 "entrance": ("exit",), "victory": ("defeat", "loss"), "polite": ("rude", "impolite"),
                 "rare": ("common",), "safe": ("dangerous", "unsafe"), "wild": ("tame", "domestic")}
WORD_LISTS = {"capital": (CAPITALS, NEW_CAPITALS), "plural": (PLURALS, NEW_PLURALS),
              "opposite": (OPPOSITES, NEW_OPPOSITES)}
"""Per word skill: (the first suite's list: pool and tuning entities, the new list: held-out entities)."""
LEGS = {"ant": 6, "bee": 6, "beetle": 6, "butterfly": 6, "fly": 6, "cat": 4, "cow": 4, "dog": 4, "horse": 4,
        "elephant": 4, "lion": 4, "tiger": 4, "pig": 4, "sheep": 4, "goat": 4, "zebra": 4, "giraffe": 4,
        "rabbit": 4, "spider": 8, "scorpion": 8, "chicken": 2, "duck": 2, "eagle": 2, "owl": 2, "penguin": 2,
        "ostrich": 2, "parrot": 2, "crab": 10, "lobster": 10, "frog": 4, "bear": 4, "camel": 4}
SOUNDS = {"cow": ("moo",), "dog": ("bark", "woof"), "cat": ("meow", "miaow", "purr"), "sheep": ("baa", "bleat"),
          "duck": ("quack",), "lion": ("roar",), "pig": ("oink",), "horse": ("neigh",), "owl": ("hoot",),
          "snake": ("hiss",), "bee": ("buzz",), "frog": ("croak", "ribbit"), "mouse": ("squeak",),
          "wolf": ("howl",), "rooster": ("crow", "cock-a-doodle-doo"), "donkey": ("bray", "hee-haw"),
          "goat": ("bleat", "baa"), "crow": ("caw",), "turkey": ("gobble",), "elephant": ("trumpet",),
          "chicken": ("cluck",), "bird": ("tweet", "chirp", "sing")}
FAVOURITES = {"colour": ("red", "blue", "green", "purple", "orange", "yellow", "pink", "teal"),
              "fruit": ("mango", "banana", "cherry", "pear", "plum", "apricot", "kiwi", "grape"),
              "animal": ("otter", "zebra", "koala", "falcon", "dolphin", "badger", "panda", "lynx"),
              "city": ("Lisbon", "Kyoto", "Nairobi", "Oslo", "Lima", "Hanoi", "Quebec", "Perth"),
              "sport": ("tennis", "rugby", "cricket", "hockey", "rowing", "judo", "golf", "fencing")}
_SYLLABLES = ("bra", "vel", "kor", "mun", "tis", "dal", "or", "phe", "ska", "lin", "go", "ru", "zen", "ath", "mo")
_FILLER = ("The streets are lined with old stone houses and small shops that open early in the morning.",
           "Visitors often mention the weekly market, where farmers from the nearby hills sell cheese and bread.",
           "A narrow bridge crosses the river near the main square, and the town hall has a tall clock tower.",
           "Winters are cold and wet, while summers are mild enough for long evenings outside.",
           "The local school was rebuilt after a fire and now teaches children from three villages.",
           "Most families have lived there for generations, and many still work in the old mill.",
           "A railway line reaches the town twice a day, connecting it to the coast.",
           "Every autumn the town holds a festival with music, dancing and a long procession of lanterns.",
           "The library keeps letters and maps from the town's first settlers in a room beside the church.",
           "Fishing boats still leave the small harbour before dawn, although fewer than in the past.")


@dataclass(frozen=True)
class GenItem:
    """One item: its messages, what counts as correct, and the form and entity it was made from."""

    id: str
    skill: str
    part: GenPart
    template: str
    """The question form (with placeholders), shared by items of one form."""
    entity: str
    """The entity's key (a country, a word, a number pair, a made-up town ...)."""
    turns: tuple[tuple[str, str], ...]
    """(role, content) turns; the last is the user's question."""
    accepted: tuple[str, ...]

    @property
    def check(self) -> Check:
        return SKILL_CHECK[self.skill]

    def messages(self) -> list[dict[str, str]]:
        """The turns as chat messages (the same interface as ``quality.QualityItem``)."""
        return [{"role": role, "content": content} for role, content in self.turns]

    def is_correct(self, answer: str) -> bool:
        return self.extract(answer) is not None

    def extract(self, answer: str) -> str | None:
        """The accepted answer the reply gives, or None. Numbers: the first number of the reply that is
        not one of the question's (unless it is the answer); words: a whole word, case and accents
        ignored; capitals: the word in capitals, case-sensitive."""
        if self.check == "number":
            return number_answer(self.turns[-1][1], self.accepted, answer)
        if self.check == "upper":
            found = re.search(rf"\b{re.escape(self.accepted[0])}\b", answer)
            return self.accepted[0] if found else None
        return word_answer(self.accepted, answer)


def number_answer(question: str, accepted: Sequence[str], answer: str) -> str | None:
    """The first number of ``answer`` that is not one of the question's (unless accepted), if accepted; else None."""
    operands = {int(n) for n in re.findall(r"\d+", question.replace(",", ""))}
    for match in re.finditer(r"-?\d+", answer.replace(",", "")):
        if int(match.group()) not in operands or match.group() in accepted:
            return match.group() if match.group() in accepted else None
    return None


def word_answer(accepted: Sequence[str], answer: str) -> str | None:
    """The first accepted word that ``answer`` contains as a whole word (case and accents ignored), folded; else None."""
    folded = _fold(answer)
    return next((_fold(a) for a in accepted if re.search(rf"\b{re.escape(_fold(a))}\b", folded)), None)


def generalisation_suite(part: GenPart) -> list[GenItem]:
    """The part's items in a fixed order (every skill, then by draw)."""
    items: list[GenItem] = []
    for skill in TEMPLATES:
        items += _skill_items(skill, part)
    return items


def templates_of(skill: str, part: GenPart) -> tuple[str, ...]:
    index = PARTS.index(part)
    return TEMPLATES[skill][2 * index: 2 * index + 2]


def entity_part(key: str) -> GenPart:
    """Pool 40%, tuning 20%, held-out 40%, by a hash of the key."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "pool" if u < 0.4 else ("tuning" if u < 0.6 else "heldout")


def _skill_items(skill: str, part: GenPart, count: int | None = None, seed: str = "") -> list[GenItem]:
    """``count`` (default ``PER_SKILL[part]``) distinct form/entity/suffix draws; ``seed`` '' is the suite's own."""
    rng = random.Random(f"generalisation/{skill}/{part}{seed}")
    entities = entities_of(skill, part)
    suffixes = NUMBER_SUFFIXES if SKILL_CHECK[skill] == "number" else WORD_SUFFIXES
    combos = [(t, e, s) for t in templates_of(skill, part) for e in entities for s in suffixes]
    chosen = rng.sample(combos, min(PER_SKILL[part] if count is None else count, len(combos)))
    return [_item(skill, part, template, entity, suffix, rng) for template, entity, suffix in chosen]


def training_items(per_skill: int, seed: int) -> list[GenItem]:
    """Items in the pool part's forms and entities for a draft's training pool: ``per_skill`` draws per
    skill (at most every combination; rag passages and multi-turn fillers are drawn anew), seeded apart
    from the suite's own pool items."""
    return [item for skill in TEMPLATES for item in _skill_items(skill, "pool", per_skill, f"/training-{seed}")]


def heldout_mentions(text: str) -> list[str]:
    """The held-out entities that one message ``text`` names, as 'skill/entity' (empty: a clean training prompt).

    The rule is what "a question about that entity" looks like in any phrasing:

    * a number pair when both numbers stand in one expression (at most 15 other characters apart,
      either order): "45 + 23", "add 45 to 23", not two numbers from different sentences;
    * a capitalised name (country, made-up town) anywhere, as a whole word;
    * any other word (plural, opposite, animal, favourite) as a whole word in a short message (at most
      30 words: a question), since word problems and retrieved passages use words like "before" or
      "horse" without asking about them; a favourite needs both its kind and its value.
    """
    lowered, short = text.lower(), len(text.split()) <= 30
    words = set(re.findall(r"[a-z]+", lowered))
    found = []
    for skill, entity in _heldout_keys():
        if skill in ("sum", "difference", "product"):
            a, b = entity.split(",")
            hit = re.search(rf"(?<![\d.]){a}\D{{1,15}}(?<![\d.]){b}(?![\d.])|(?<![\d.]){b}\D{{1,15}}(?<![\d.]){a}(?![\d.])",
                            text.replace(",", "")) is not None
        elif skill == "multiturn":
            hit = short and set(entity.split(":")) <= words
        elif entity[:1].isupper() or skill == "rag":
            hit = re.search(rf"\b{re.escape(entity.lower())}\b", lowered) is not None
        else:
            hit = short and re.search(rf"\b{re.escape(entity.lower())}\b", lowered) is not None
        if hit:
            found.append(f"{skill}/{entity}")
    return found


@functools.cache
def _heldout_keys() -> tuple[tuple[str, str], ...]:
    return tuple(sorted({(item.skill, item.entity) for item in generalisation_suite("heldout")}))


def entities_of(skill: str, part: GenPart) -> list[str]:
    """The entity keys of a skill in one part (see the module docstring)."""
    if skill in WORD_LISTS:
        old, new = WORD_LISTS[skill]
        if part == "heldout":
            return sorted(new)
        return [k for k in sorted(old) if (entity_part(k) == "tuning") == (part == "tuning")]
    favourites = sorted(f"{kind}:{value}" for kind, values in FAVOURITES.items() for value in values)
    keys = {"legs": sorted(LEGS), "sound": sorted(SOUNDS), "multiturn": favourites}.get(skill)
    if keys is None:  # numbers and made-up names: generated, split by hash
        keys = _generated_keys(skill)
    return [k for k in keys if entity_part(f"{skill}/{k}") == part]


def _generated_keys(skill: str) -> list[str]:
    rng = random.Random(f"generalisation-keys/{skill}")
    if skill in ("sum", "difference"):
        pairs = {tuple(sorted(rng.sample(range(11, 100), 2), reverse=True)) for _ in range(400)}
    elif skill == "product":
        pairs = {(a, b) for a in range(2, 13) for b in range(2, 13)}
    else:  # rag towns, upper words: made-up names
        return sorted({"".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3)))) for _ in range(400)})
    return sorted(f"{a},{b}" for a, b in pairs)


def _item(skill: str, part: GenPart, template: str, entity: str, suffix: str, rng: random.Random) -> GenItem:
    if skill in ("sum", "difference", "product"):
        a, b = (int(n) for n in entity.split(","))
        answer = {"sum": a + b, "difference": a - b, "product": a * b}[skill]
        turns, accepted = (("user", template.format(a=a, b=b) + suffix),), (str(answer),)
    elif skill in ("capital", "plural", "opposite"):
        old, new = WORD_LISTS[skill]
        turns, accepted = (("user", template.format(x=entity) + suffix),), {**old, **new}[entity]
    elif skill == "legs":
        turns, accepted = (("user", template.format(x=entity) + suffix),), (str(LEGS[entity]),)
    elif skill == "sound":
        turns, accepted = (("user", template.format(x=entity) + suffix),), SOUNDS[entity]
    elif skill == "upper":
        turns, accepted = (("user", template.format(x=entity) + suffix),), (entity.upper(),)
    elif skill == "rag":
        turns, accepted = _rag(template, entity, suffix, rng)
    else:
        turns, accepted = _multiturn(template, entity, suffix, rng)
    key = f"{skill}/{part}/{TEMPLATES[skill].index(template)}/{entity}/{suffix.strip()}"
    return GenItem(key, skill, part, template, entity, turns, accepted)


def _rag(template: str, town: str, suffix: str, rng: random.Random) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """2-5 passages on made-up towns (the asked one among distractors), each with its own numbers."""
    context, population = rag_context(town.capitalize(), rng)
    question = template.format(x=town.capitalize()) + suffix
    return (("user", f"Use these passages to answer.\n\n{context}\n\nQuestion: {question}"),), (str(population),)


def rag_context(town: str, rng: random.Random) -> tuple[str, int]:
    """(numbered passages, ``town``'s population): ``town`` and 1-4 made-up distractor towns in a random
    order, each passage 4-8 filler sentences around its founding year, population and nearest neighbour."""
    towns = [town] + ["".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize() for _ in range(rng.randint(1, 4))]
    populations = rng.sample(range(1200, 98000), len(towns))
    passages = []
    for name, population in zip(towns, populations):
        founded = rng.randint(1200, 1950)
        filler = " ".join(rng.sample(_FILLER, rng.randint(4, 8)))
        passages.append(f"{name} is a small town founded in {founded}. {filler} According to the last census, "
                        f"{name} has a population of {population:,} people. Its nearest neighbour is "
                        f"{rng.randint(3, 40)} kilometres away.")
    order = rng.sample(range(len(passages)), len(passages))
    return "\n\n".join(f"Passage {i + 1}: {passages[j]}" for i, j in enumerate(order)), populations[0]


def _multiturn(template: str, favourite: str, suffix: str, rng: random.Random
               ) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """Turn 1 states a favourite ('kind:value'), an unrelated exchange follows, the last turn asks for it."""
    kind, value = favourite.split(":")
    other = rng.choice(["What is a good name for a goldfish?", "Give me a tip for sleeping better.",
                        "Say something nice about Mondays.", "What should I cook tonight?"])
    turns = (("user", f"Hi! My favourite {kind} is {value}."),
             ("assistant", f"Nice to know that your favourite {kind} is {value}!"),
             ("user", other), ("assistant", "Here is a short idea: keep it simple and enjoy it."),
             ("user", template.format(x=kind) + suffix))
    return turns, (value,)


def accuracy_by_skill(items: Sequence[GenItem], answers: Sequence[str]) -> dict[str, float]:
    """Share of correct answers per skill, and over all items under 'all'."""
    if len(items) != len(answers):
        raise ValueError(f"{len(items)} items but {len(answers)} answers")
    scores: dict[str, list[bool]] = {}
    for item, answer in zip(items, answers):
        scores.setdefault(item.skill, []).append(item.is_correct(answer))
        scores.setdefault("all", []).append(item.is_correct(answer))
    return {skill: sum(s) / len(s) for skill, s in scores.items()}
