"""The distillation prompt pool: deterministic, and never holding a quality-suite item unless asked."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from rstitch_engine.measure.generalisation import (
    TEMPLATES,
    entities_of,
    generalisation_suite,
    heldout_mentions,
    templates_of,
    training_items,
)
from rstitch_engine.measure.quality import CAPITALS, OPPOSITES, PLURALS, quality_suite
from rstitch_engine.training.prompt_pool import (
    RETRIEVAL_WRAPPERS,
    copy_prompts,
    family_prompts,
    made_up_word,
    names_heldout,
    prompt_pool,
    retrieval_prompts,
)

GSM8K = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "train.jsonl"


def _texts(pool):
    return [messages[0]["content"] for messages in pool]


def test_the_pool_is_a_pure_function_of_its_arguments():
    assert prompt_pool(30, 0, seed=1, copies=50) == prompt_pool(30, 0, seed=1, copies=50)
    assert prompt_pool(30, 0, seed=1, copies=50) != prompt_pool(30, 0, seed=2, copies=50)
    assert copy_prompts(40, 3) == copy_prompts(40, 3)


def test_the_pool_holds_no_suite_question_unless_the_tuning_part_is_asked_for():
    suite = {item.question for item in quality_suite("all")}
    tuning = {item.question for item in quality_suite("tuning")}
    default = set(_texts(prompt_pool(200, 0, seed=0, copies=2000)))
    assert not default & suite
    with_tuning = set(_texts(prompt_pool(200, 0, seed=0, copies=2000, include_quality_tuning=True)))
    kept_tuning = {q for q in tuning if not heldout_mentions(q)}  # less those naming a generalisation held-out entity
    assert with_tuning & suite == kept_tuning and len(kept_tuning) > len(tuning) / 2  # the held-out part never enters


def test_made_up_names_are_not_suite_entities():
    words = {made_up_word(random.Random(seed)) for seed in range(500)}
    suite_words = {w.lower() for w in [*CAPITALS, *PLURALS, *OPPOSITES]}
    assert len(words) > 300 and not words & suite_words


def test_families_use_the_suite_forms_on_other_entities():
    texts = _texts(family_prompts(0))
    assert len(texts) == len(set(texts)) > 1000
    assert any(t.startswith("What is the capital of ") for t in texts)
    assert not any(t == f"What is {a} + {b}?" for t in texts for a in range(1, 10) for b in range(1, 10))


@pytest.mark.skipif(not GSM8K.is_file(), reason="needs ../shared/data/gsm8k beside the repository")
def test_gsm8k_questions_come_from_the_file():
    pool = prompt_pool(0, 5, seed=0, gsm8k_path=GSM8K, include_families=False)
    questions = {json.loads(line)["question"] for line in GSM8K.read_text().splitlines() if line.strip()}
    assert 3 <= len(pool) <= 5 and set(_texts(pool)) <= questions  # the ones naming a held-out entity are left out


def test_held_out_mentions_follow_the_documented_rule():
    assert heldout_mentions("What is the capital of Portugal?") == ["capital/Portugal"]
    assert "plural/louse" in heldout_mentions("One louse, many what?")
    assert heldout_mentions("He left before noon and then walked for an hour, which he had not planned to do "
                            "at all, because the road was long and the weather was turning bad by the minute.") == []
    pair = next(i.entity for i in generalisation_suite("heldout") if i.skill == "sum")
    a, b = pair.split(",")
    assert f"sum/{pair}" in heldout_mentions(f"What is {b} plus {a}?")
    assert f"sum/{pair}" not in heldout_mentions(f"I bought {a} pears. Later that week, far away, the price was {b}0.")


def test_no_pool_prompt_names_a_held_out_entity_and_the_old_families_did():
    """The shipped draft before round 2's retrain saw held-out countries, nouns and adjectives in the
    family prompts; the pool now leaves every such prompt out."""
    assert sum(names_heldout(p) for p in family_prompts(0)) > 100
    pool = prompt_pool(200, 40, seed=0, gsm8k_path=GSM8K if GSM8K.is_file() else None, copies=500, generalisation=20)
    assert len(pool) > 1200 and not any(names_heldout(p) for p in pool)
    pool_forms = {t for skill in TEMPLATES for t in templates_of(skill, "pool")}
    items = training_items(20, seed=0)
    assert {i.template for i in items} <= pool_forms and {i.part for i in items} == {"pool"}
    assert {i.skill for i in items} == set(TEMPLATES) and len(items) == len({i.turns for i in items})


def test_retrieval_prompts_ask_about_pool_towns_in_every_wrapper_and_never_in_other_parts_forms():
    prompts = retrieval_prompts(160, seed=0)
    assert prompts == retrieval_prompts(160, seed=0) and prompts != retrieval_prompts(160, seed=1)
    users = [p[-1]["content"] for p in prompts]
    for system, user in RETRIEVAL_WRAPPERS:  # every wrapper is used, with its system message where it has one
        shape = re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(user)), re.DOTALL)
        used = [p for p, text in zip(prompts, users) if shape.fullmatch(text)]
        assert used and all((p[0]["content"] == system) if system else len(p) == 1 for p in used)
    pool_towns = {t.capitalize() for t in entities_of("rag", "pool")}
    other_forms = [t for part in ("tuning", "heldout") for t in templates_of("rag", part)]
    for text in users:
        asked = [t for t in pool_towns if f"{t} " in text or f"{t}?" in text or f"{t}'" in text]
        assert asked, text[-120:]  # the asked town (and the passage about it) is a pool town
        assert not any(form.split("{x}")[0].lower() in text.lower() for form in other_forms)
    assert sum("population" in u or "live in" in u for u in users) > 20  # the pool's own forms ...
    assert sum("founded?" in u or "Summarise" in u for u in users) > 10  # ... and free-form questions
    pool = prompt_pool(0, 0, seed=0, include_families=False, retrieval=40)
    assert 36 <= len(pool) <= 40 and not any(names_heldout(p) for p in pool)
