"""The everyday suite: its parts never share a form or an entity, retrieval contexts hold the answer once
among distractors of the same kind, follow-ups need the turn before them, and its checks accept right
answers and reject wrong ones."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from rstitch_engine.measure.everyday import (
    CAPITALS,
    LONG_CONTEXT_PEOPLE,
    PARTS,
    PER_SKILL,
    RETRIEVAL_INSTRUCTION,
    TEMPLATES,
    everyday_suite,
)

SUITE = {part: everyday_suite(part) for part in PARTS}


def test_each_part_has_every_skill_at_its_size_and_is_the_same_on_every_call():
    for part in PARTS:
        per_skill = Counter(item.skill for item in SUITE[part])
        assert per_skill == {skill: PER_SKILL[part] for skill in TEMPLATES}, part
        assert everyday_suite(part) == SUITE[part]
        assert len({item.id for item in SUITE[part]}) == len(SUITE[part])


def test_forms_and_entities_never_cross_parts():
    for skill in TEMPLATES:
        tuning = [i for i in SUITE["tuning"] if i.skill == skill]
        heldout = [i for i in SUITE["heldout"] if i.skill == skill]
        assert {i.template for i in tuning} == set(TEMPLATES[skill][:2]), skill
        assert {i.template for i in heldout} == set(TEMPLATES[skill][2:]), skill
        assert not {i.entity for i in tuning} & {i.entity for i in heldout}, skill


@pytest.mark.parametrize("skill,people", [("rag_short", 2), ("rag_long", LONG_CONTEXT_PEOPLE)])
def test_a_retrieval_context_says_where_each_person_lives_once_and_the_answer_is_the_asked_person_s_city(
        skill, people):
    for item in (i for part in PARTS for i in SUITE[part] if i.skill == skill):
        (role, context), (user, question) = item.turns
        assert (role, user) == ("system", "user") and context.startswith(RETRIEVAL_INSTRUCTION)
        homes = dict(re.findall(r"^(\w+) lives in (\w+)\.", context, flags=re.MULTILINE))
        assert len(homes) == people and len(set(homes.values())) == people  # distractors of the same kind
        assert homes[item.entity] == item.accepted[0] and item.entity in question
        assert item.accepted[0] not in question


def test_a_follow_up_names_only_the_new_country_and_the_first_turn_answers_another():
    for item in (i for part in PARTS for i in SUITE[part] if i.skill == "multiturn"):
        (_, first), (_, answer), (_, follow_up) = item.turns
        asked = re.fullmatch(r"What is the capital of (.+)\?", first).group(1)  # type: ignore[union-attr]
        assert asked != item.entity and answer == f"The capital of {asked} is {CAPITALS[asked]}."
        assert item.entity in follow_up and item.accepted == (CAPITALS[item.entity],)
        assert "capital" in follow_up or item.template in ("What about {x}?", "How about {x}?")


def test_checks_accept_right_answers_and_reject_wrong_ones():
    by_skill = {item.skill: item for item in SUITE["heldout"]}
    home = by_skill["rag_long"]
    wrong_city = next(city for city in re.findall(r"lives in (\w+)\.", home.turns[0][1]) if city != home.accepted[0])
    assert home.is_correct(f"{home.entity} lives in {home.accepted[0]}.")
    assert not home.is_correct(f"{home.entity} lives in {wrong_city}.")
    follow_up = by_skill["multiturn"]
    assert follow_up.is_correct(f"The capital of {follow_up.entity} is {follow_up.accepted[0]}.")
    assert not follow_up.is_correct("The capital is Atlantis.")
    tool, person = by_skill["tool"], by_skill["json"]
    assert tool.is_correct(f'<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "{tool.entity}"}}}}')
    assert not tool.is_correct('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Atlantis"}}')
    name, age = person.accepted
    assert person.is_correct(f'{{"name": "{name}", "age": {age}}}')
    assert not person.is_correct(f'{{"name": "{name}", "age": {int(age) + 1}}}')
