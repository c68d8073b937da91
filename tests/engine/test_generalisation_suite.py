"""The generalisation suite: held-out forms and entities are disjoint from everything a draft or a tau
choice may see, and its checks accept right answers and reject wrong ones."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from rstitch_engine.measure.generalisation import (
    NEW_CAPITALS,
    NEW_OPPOSITES,
    NEW_PLURALS,
    PARTS,
    TEMPLATES,
    generalisation_suite,
)
from rstitch_engine.measure.quality import CAPITALS, OPPOSITES, PLURALS, quality_suite
from rstitch_engine.training import prompt_pool

SUITE = {part: generalisation_suite(part) for part in PARTS}


def test_the_held_out_part_is_large_and_covers_every_skill_with_many_forms():
    heldout = SUITE["heldout"]
    assert len(heldout) >= 400
    per_skill = Counter(item.skill for item in heldout)
    assert set(per_skill) == set(TEMPLATES) and min(per_skill.values()) >= 30
    for skill in TEMPLATES:
        phrasings = {item.turns[-1][1].split("?")[0] for item in heldout if item.skill == skill}
        assert len(TEMPLATES[skill]) == 6 and len({i.template for i in heldout if i.skill == skill}) == 2
        assert len(phrasings) >= 5, skill


@pytest.mark.parametrize("a,b", [("pool", "tuning"), ("pool", "heldout"), ("tuning", "heldout")])
def test_forms_and_entities_never_cross_parts(a, b):
    for skill in TEMPLATES:
        first = [i for i in SUITE[a] if i.skill == skill]
        second = [i for i in SUITE[b] if i.skill == skill]
        assert not {i.template for i in first} & {i.template for i in second}, skill
        assert not {i.entity for i in first} & {i.entity for i in second}, skill
        assert not {i.turns for i in first} & {i.turns for i in second}, skill


def test_held_out_items_share_no_form_or_entity_with_the_shipped_draft_s_training_prompts():
    """The first suite's questions and lists, and the pool's fixed forms, fed every shipped draft."""
    seen_forms = {*prompt_pool._CAPITAL_FORMS, *prompt_pool._PLURAL_FORMS, *prompt_pool._OPPOSITE_FORMS,
                  *prompt_pool._SUM_FORMS, *prompt_pool._LARGER_FORMS, *prompt_pool._COPY_FORMS}
    seen_questions = {item.question for item in quality_suite("all")}
    for item in SUITE["heldout"]:
        normalised = re.sub(r"\{\w+\}", "{}", item.template)
        assert normalised not in {re.sub(r"\{\w*\}", "{}", f) for f in seen_forms}, item.template
        assert item.turns[-1][1] not in seen_questions
    assert not set(NEW_CAPITALS) & set(CAPITALS) and not set(NEW_PLURALS) & set(PLURALS)
    assert not set(NEW_OPPOSITES) & set(OPPOSITES)
    for item in SUITE["heldout"]:
        if item.skill in ("capital", "plural", "opposite"):
            assert item.entity in {**NEW_CAPITALS, **NEW_PLURALS, **NEW_OPPOSITES}


def test_rag_items_hide_the_answer_among_distractor_passages_and_multiturn_in_an_earlier_turn():
    for item in SUITE["heldout"]:
        if item.skill == "rag":
            text = item.turns[-1][1]
            passages = re.findall(r"Passage \d+: (.*)", text)
            numbers = [int(n.replace(",", "")) for n in re.findall(r"population of ([\d,]+)", text)]
            assert 2 <= len(passages) <= 5 and len(set(numbers)) == len(passages)
            assert int(item.accepted[0]) in numbers and all(len(p.split()) >= 70 for p in passages)
        if item.skill == "multiturn":
            assert len(item.turns) == 5 and item.accepted[0] in item.turns[0][1]
            assert item.accepted[0] not in item.turns[-1][1]


def test_checks_accept_right_answers_and_reject_wrong_ones():
    by_skill = {item.skill: item for item in SUITE["heldout"]}
    total = by_skill["sum"]
    a, b = (int(n) for n in total.entity.split(","))
    assert total.is_correct(f"{a} + {b} = {a + b}.") and not total.is_correct(f"It is {a + b + 1}.")
    assert not total.is_correct(f"{a} and {b}")
    upper = by_skill["upper"]
    assert upper.is_correct(f"Sure: {upper.accepted[0]}") and not upper.is_correct(upper.accepted[0].lower())
    capital = by_skill["capital"]
    assert capital.is_correct(f"It is {capital.accepted[0]}.") and not capital.is_correct("It is Paris.")
    rag = by_skill["rag"]
    assert rag.is_correct(f"About {int(rag.accepted[0]):,} people.") and not rag.is_correct("About 12 people.")


def test_the_suite_is_the_same_on_every_call():
    assert generalisation_suite("heldout") == SUITE["heldout"]
