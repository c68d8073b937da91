"""Prompts for distillation: GSM8K questions plus chat instructions built from templates.

The draft learns the LLM's own answers to these prompts, so the pool should look like what users
ask: word problems, explanations, lists, rewrites and short answers. Everything is drawn with a
seeded ``random.Random``, so a pool is a pure function of its arguments.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..measure.generalisation import entities_of, heldout_mentions, rag_context, templates_of, training_items
from ..measure.quality import CAPITALS, OPPOSITES, PLURALS, quality_suite

Messages = list[dict[str, str]]

TOPICS = (
    "photosynthesis", "gravity", "the water cycle", "volcanoes", "the internet", "democracy", "inflation",
    "vaccines", "climate change", "electricity", "the moon", "recycling", "sleep", "the human heart",
    "rainbows", "bees", "the Roman Empire", "music", "friendship", "exercise", "money", "clouds",
    "computers", "the ocean", "plants", "magnets", "earthquakes", "the solar system", "time zones", "bread",
    "honey", "bicycles", "libraries", "elections", "batteries", "coffee", "dinosaurs", "rivers", "snow",
)
CATEGORIES = (
    "fruits", "vegetables", "mammals", "birds", "colors", "musical instruments", "sports", "planets",
    "countries in Europe", "programming languages", "kitchen tools", "types of weather", "jobs",
    "shapes", "board games", "things that are cold", "ways to save energy", "healthy breakfast foods",
)
SENTENCES = (
    "me and him goes to the store yesterday.", "The meeting have been moved to friday.",
    "i dont know where is the library.", "She can sings very good.", "Their going to they're house later.",
    "The cat sat on the mat and it was happy because the sun was warm.",
    "We need to finish the report before the deadline which is tomorrow morning at nine.",
    "This phone is very very good and I like it a lot.", "He said that he will come but he did not came.",
    "The weather is nice today so we should go outside and play in the park.",
    "Can you send me the file when you have time?", "Our team won the game after a long and hard match.",
)
WORDS = (
    "apple", "river", "garden", "window", "planet", "butter", "candle", "forest", "pencil", "rocket",
    "silver", "thunder", "market", "bridge", "yellow", "winter", "orange", "doctor", "camera", "island",
)

TEMPLATES: tuple[str, ...] = (
    "Explain {topic} in simple terms.",
    "Why is {topic} important?",
    "Give a short definition of {topic}.",
    "Write two sentences about {topic}.",
    "What are the main facts about {topic}?",
    "List three facts about {topic}.",
    "Name three {category}.",
    "List five {category}.",
    "Give me some examples of {category}.",
    "Correct the grammar: {sentence}",
    "Rewrite this sentence more formally: {sentence}",
    "Make this sentence shorter: {sentence}",
    "Summarize in a few words: {sentence}",
    "What is {a} times {b}?",
    "What is {big} minus {a}?",
    "What is {big} plus {big2}?",
    "How many letters are in the word {word}?",
    "What is the first letter of the word {word}?",
    "Use the word {word} in a sentence.",
    "Write a short poem about {word}.",
    "What rhymes with {word}?",
)


def instruction_prompts(count: int, seed: int) -> list[Messages]:
    """``count`` chat instructions, each a template filled with seeded random values."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        text = rng.choice(TEMPLATES).format(
            topic=rng.choice(TOPICS), category=rng.choice(CATEGORIES), sentence=rng.choice(SENTENCES),
            word=rng.choice(WORDS), a=rng.randint(2, 12), b=rng.randint(2, 12),
            big=rng.randint(20, 99), big2=rng.randint(10, 99),
        )
        prompts.append([{"role": "user", "content": text}])
    return prompts


# Short-answer questions in the quality suite's forms (and a few rephrasings), about things the
# suite never asks about: a draft learns the answer shapes, and to be unsure where the answer needs
# knowledge it lacks, without ever seeing a held-out item.
FAMILY_COUNTRIES = (
    "Portugal", "Greece", "Sweden", "Norway", "Denmark", "Finland", "Ireland", "Austria", "Switzerland",
    "Belgium", "Netherlands", "Hungary", "Czech Republic", "Cuba", "Jamaica", "Ecuador", "Bolivia", "Uruguay",
    "Paraguay", "New Zealand", "Israel", "Jordan", "Lebanon", "Qatar", "Kuwait", "Oman", "Singapore",
    "Cambodia", "Laos", "Mongolia", "Senegal", "Tunisia", "Libya", "Zimbabwe", "Rwanda", "Somalia",
    "Iceland", "Croatia", "Serbia", "Bulgaria", "Philippines", "Albania", "Armenia", "Azerbaijan", "Bahrain",
    "Belarus", "Benin", "Bhutan", "Botswana", "Burundi", "Chad", "Costa Rica", "Cyprus", "Dominican Republic",
    "El Salvador", "Eritrea", "Estonia", "Fiji", "Gabon", "Georgia", "Guatemala", "Guinea", "Haiti",
    "Honduras", "Kyrgyzstan", "Latvia", "Liberia", "Lithuania", "Luxembourg", "Malta", "Mauritania",
    "Mauritius", "Moldova", "Namibia", "Nicaragua", "Panama", "Slovakia", "Slovenia", "Tajikistan", "Togo",
    "Turkmenistan", "Zambia", "Sierra Leone", "Belize", "Bahamas", "Maldives", "Monaco", "Andorra",
)
FAMILY_NOUNS = (
    "cherry", "lady", "fox", "glass", "watch", "brush", "class", "calf", "shelf", "loaf", "thief", "echo",
    "volcano", "louse", "die", "radius", "fungus", "crisis", "thesis", "index", "horse", "table", "window",
    "garden", "river", "pencil", "flower", "bottle", "monkey", "donkey", "valley", "journey", "puppy",
    "pony", "army", "candy", "city block", "spoon", "cup", "star", "wish", "match", "beach", "fly", "lily",
    "berry", "country", "family", "hobby", "penny", "body", "copy", "duty", "enemy", "factory", "library",
    "cow", "pig", "lion", "tiger", "snake", "frog", "door", "shoe", "sock", "hat", "coat", "ring", "bell",
    "cake", "egg", "plate", "bowl", "lamp", "clock", "phone", "computer", "desk", "pen", "bag", "ball",
    "boat", "train", "plane", "road", "hill", "lake", "cloud", "storm", "girl", "king", "queen", "teacher",
    "student", "farmer", "nurse", "friend", "brother", "sister", "uncle", "cousin", "idea", "song", "game",
    "scarf", "elf", "wharf", "hoof", "igloo", "zoo", "kangaroo", "piano", "photo", "kilo", "hippo",
    "analysis", "basis", "axis", "cactus seed", "phenomenon", "criterion", "datum", "medium", "bacterium",
)
FAMILY_ADJECTIVES = (
    "brave", "cheap", "quick", "noisy", "rough", "bright", "heavy", "polite", "tight", "smooth", "sharp",
    "fat", "warm", "calm", "wild", "safe", "loose", "fresh", "proud", "kind", "busy", "huge", "tiny",
    "modern", "ancient", "simple", "public", "active", "absent", "major", "inner", "upper", "positive",
    "visible", "legal", "honest", "patient", "possible", "correct", "regular", "dangerous", "beautiful",
    "expensive", "difficult", "careful", "friendly", "lazy", "clever", "healthy", "dull", "fancy", "gentle",
    "humble", "generous", "guilty", "innocent", "junior", "senior", "mature", "narrow-minded", "natural",
    "optimistic", "ordinary", "permanent", "plain", "private", "rare", "raw", "rude", "sane", "silent",
    "sober", "solid", "stale", "steep", "strict", "tame", "tidy", "timid", "ugly", "vague", "vertical",
    "wise", "worse", "cruel", "dry-eyed", "flexible", "formal", "frequent", "minor", "maximum", "complex",
)
_FAMILY_LARGER_SEED = 7
_CAPITAL_FORMS = ("What is the capital of {}?", "What is the capital city of {}?", "Name the capital of {}.")
_PLURAL_FORMS = ("What is the plural of {}?", "What is the plural form of the word {}?")
_OPPOSITE_FORMS = ("What is the opposite of {}?", "What is a word that means the opposite of {}?")
_SUM_FORMS = ("What is {} + {}?", "What is {} plus {}?", "Add {} and {}.")
_LARGER_FORMS = ("Which is larger, {} or {}?", "Which is smaller, {} or {}?", "Which number is bigger: {} or {}?")


def family_prompts(seed: int) -> list[Messages]:
    """Questions in the quality suite's five forms (and rephrasings) on entities and numbers outside it.

    Asserted disjoint from the suite: no suite country, noun or adjective, no one-digit sum, and no
    suite question verbatim.
    """
    assert not set(FAMILY_COUNTRIES) & CAPITALS.keys() and not set(FAMILY_NOUNS) & PLURALS.keys()
    assert not set(FAMILY_ADJECTIVES) & OPPOSITES.keys()
    rng = random.Random(_FAMILY_LARGER_SEED + seed)
    suite_questions = {item.question for item in quality_suite("all")}
    texts = [form.format(country) for country in FAMILY_COUNTRIES for form in _CAPITAL_FORMS]
    texts += [form.format(noun) for noun in FAMILY_NOUNS for form in _PLURAL_FORMS]
    texts += [form.format(word) for word in FAMILY_ADJECTIVES for form in _OPPOSITE_FORMS]
    texts += [_SUM_FORMS[0].format(a, b) for a in range(10, 20) for b in range(1, 10)]
    # Two-digit sums in every form: one operand at least 10, so no one-digit sum of the suite appears.
    texts += [rng.choice(_SUM_FORMS).format(*rng.sample([rng.randint(10, 99), rng.randint(1, 99)], 2))
              for _ in range(200)]
    larger: list[str] = []
    while len(larger) < 240:
        question = rng.choice(_LARGER_FORMS).format(*rng.sample(range(10, 1000 if len(larger) > 120 else 100), 2))
        if question not in suite_questions and question not in larger:
            larger.append(question)
    texts += larger
    texts = list(dict.fromkeys(texts))
    assert not suite_questions & set(texts)
    return [[{"role": "user", "content": text}] for text in texts]


_SYLLABLES = ("ka", "lo", "mi", "zor", "bel", "ta", "ven", "ri", "dus", "qua", "nel", "or", "pim", "sa", "tro",
              "vil", "ga", "mon", "dri", "ul", "fen", "ar", "bro", "kes", "li", "ne", "po", "shu", "ter", "wa")
_COPY_FORMS = (
    "What is the capital of {place}?", "What is the capital city of {place}?", "What is the plural of {word}?",
    "What is the opposite of {word}?", "What does the word {word} mean?", "Repeat this word: {word}",
    "Spell the word {word}.", "Use the word {word} in a sentence.", "Where is {place}?",
    "Write one sentence about {place}.", "What is {a} + {b}?", "Which is larger, {a} or {b}?",
    "What is {a} minus {b}?", "Is {a} bigger than {b}?",
)


def made_up_word(rng: random.Random) -> str:
    """A pronounceable non-word of two or three syllables (no real entity, so nothing to memorise)."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3))))


def copy_prompts(count: int, seed: int) -> list[Messages]:
    """Questions about made-up places and words, and random numbers, in the suite's forms and a few others.

    An answer to them mostly copies a name or number from the question, then needs knowledge the
    model does not have: a draft trained on them learns to copy any name (rather than memorise the
    names it saw) and to be unsure where the LLM is unsure. Nothing here can be a suite item: the
    names are not words, and the numbers have at least two digits.
    """
    rng = random.Random(f"copy-{seed}")
    prompts = []
    for _ in range(count):
        a, b = rng.sample(range(10, 1000 if rng.random() < 0.3 else 100), 2)
        text = rng.choice(_COPY_FORMS).format(place=made_up_word(rng).capitalize(), word=made_up_word(rng), a=a, b=b)
        prompts.append([{"role": "user", "content": text}])
    return prompts


def gsm8k_prompts(path: Path, count: int, seed: int) -> list[Messages]:
    """``count`` questions drawn without replacement from a GSM8K jsonl file."""
    questions = [json.loads(line)["question"] for line in path.read_text().splitlines() if line.strip()]
    chosen = random.Random(seed).sample(questions, min(count, len(questions)))
    return [[{"role": "user", "content": q}] for q in chosen]


def quality_tuning_prompts() -> list[Messages]:
    """The tuning part of the quality suite (its held-out part never enters a pool)."""
    return [item.messages() for item in quality_suite("tuning")]


def generalisation_prompts(per_skill: int, seed: int) -> list[Messages]:
    """Questions in the generalisation suite's pool forms and entities (``training_items``): varied
    phrasings and instructions, retrieved passages with distractors, and multi-turn chats."""
    return [item.messages() for item in training_items(per_skill, seed)]


# How retrieval frameworks and their users wrap retrieved text: (system message or None, user message).
# The generalisation suite asks in one wrapper ("Use these passages to answer."); a draft that only
# ever saw that one would meet LangChain's and LlamaIndex's prompts, and free-form questions about
# the passages, for the first time in use.
RETRIEVAL_WRAPPERS: tuple[tuple[str | None, str], ...] = (
    ("Answer the question from the context only, in one or two sentences.",
     "Context:\n{context}\n\nQuestion: {question}"),
    (None, "Context information is below.\n---------------------\n{context}\n---------------------\n"
           "Given the context information and not prior knowledge, answer the query.\nQuery: {question}\nAnswer: "),
    ("You are a helpful assistant. Use the retrieved documents to answer.", "Documents:\n{context}\n\n{question}"),
    (None, "{context}\n\nBased on the text above, {question_lower}"),
)
FREE_FORM_RETRIEVAL_QUESTIONS = (
    "What do the passages say about {x}?", "Summarise what the text tells us about {x}.",
    "When was {x} founded?", "How far is {x} from its nearest neighbour?", "Describe {x} in two sentences.",
    "What is special about {x}?",
)


def retrieval_prompts(count: int, seed: int) -> list[Messages]:
    """``count`` prompts with retrieved passages (``rag_context``) about the generalisation suite's *pool*
    towns, in the wrappers of ``RETRIEVAL_WRAPPERS``, asking the pool's population forms or a free-form
    question (``FREE_FORM_RETRIEVAL_QUESTIONS``): reading from context in the shapes real chains send."""
    rng = random.Random(f"retrieval-{seed}")
    towns = entities_of("rag", "pool")
    questions = templates_of("rag", "pool") + FREE_FORM_RETRIEVAL_QUESTIONS
    prompts = []
    for _ in range(count):
        town = rng.choice(towns).capitalize()
        context, _ = rag_context(town, rng)
        question = rng.choice(questions).format(x=town)
        system, user = rng.choice(RETRIEVAL_WRAPPERS)
        text = user.format(context=context, question=question, question_lower=question[0].lower() + question[1:])
        prompts.append(([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}])
    return prompts


def names_heldout(messages: Messages) -> bool:
    """Whether any message names an entity of the generalisation suite's held-out part (``heldout_mentions``)."""
    return any(heldout_mentions(message["content"]) for message in messages)


def prompt_pool(
    instructions: int,
    gsm8k: int,
    seed: int,
    gsm8k_path: Path | None = None,
    include_quality_tuning: bool = False,
    include_families: bool = True,
    copies: int = 0,
    generalisation: int = 0,
    retrieval: int = 0,
) -> list[Messages]:
    """The distillation pool, shuffled: instructions + GSM8K questions + ``copies`` made-up-entity
    questions (``copy_prompts``) + ``generalisation`` pool-form questions per skill
    (``generalisation_prompts``) + ``retrieval`` passages in framework wrappers (``retrieval_prompts``),
    and optionally the quality suite's tuning part and the short-answer
    families (``family_prompts``). Prompts that name a held-out entity of the generalisation suite are
    left out, so its held-out part stays unseen in form and entity."""
    pool: list[Messages] = instruction_prompts(instructions, seed)
    if include_families:
        pool += family_prompts(seed)
    pool += copy_prompts(copies, seed)
    if gsm8k and gsm8k_path is not None:
        pool += gsm8k_prompts(gsm8k_path, gsm8k, seed)
    if include_quality_tuning:
        pool += quality_tuning_prompts()
    pool += generalisation_prompts(generalisation, seed) if generalisation else []
    pool += retrieval_prompts(retrieval, seed)
    pool = [messages for messages in pool if not names_heldout(messages)]
    random.Random(seed).shuffle(pool)
    return pool
