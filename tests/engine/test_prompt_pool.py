"""The distillation prompt pool: deterministic, and never holding a quality-suite item unless asked."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from rstitch_engine.measure.quality import CAPITALS, OPPOSITES, PLURALS, quality_suite
from rstitch_engine.training.prompt_pool import copy_prompts, family_prompts, made_up_word, prompt_pool

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
    assert with_tuning & suite == tuning  # the held-out part never enters


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
    assert len(pool) == 5 and all(len(text) > 40 for text in _texts(pool))
