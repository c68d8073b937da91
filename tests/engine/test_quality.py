"""The quality suite: a deterministic generator, a stable split, and a checker that means what it says."""

from __future__ import annotations

from collections import Counter

import pytest

from rstitch_engine.measure.quality import HELDOUT_SHARE, QualityItem, accuracy, quality_suite


def _item(item_id: str) -> QualityItem:
    return next(item for item in quality_suite() if item.id == item_id)


def test_generator_is_deterministic_with_unique_ids_over_five_skills():
    first, second = quality_suite(), quality_suite()
    assert first == second
    assert len(first) >= 200
    assert len({item.id for item in first}) == len(first)
    skills = Counter(item.skill for item in first)
    assert set(skills) == {"sum", "capital", "plural", "opposite", "larger"}
    assert min(skills.values()) >= 30
    assert all(item.accepted and item.question.strip() for item in first)


def test_split_is_stable_disjoint_and_covers_every_item():
    everything = quality_suite("all")
    tuning, heldout = quality_suite("tuning"), quality_suite("heldout")
    assert quality_suite("heldout") == heldout and quality_suite("tuning") == tuning
    assert {i.id for i in tuning}.isdisjoint({i.id for i in heldout})
    assert sorted(i.id for i in tuning + heldout) == sorted(i.id for i in everything)
    assert abs(len(heldout) / len(everything) - HELDOUT_SHARE) < 0.08
    # The split is a function of the id alone: a fresh item with the same id lands in the same part.
    for item in everything[:20]:
        assert QualityItem(item.id, item.skill, "another question", ("x",)).part == item.part
    # Every skill is in both parts (the held-out part is not one skill).
    assert {i.skill for i in heldout} == {i.skill for i in tuning} == {i.skill for i in everything}


def test_messages_are_one_user_turn_with_the_question():
    item = _item("capital/France")
    assert item.messages() == [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.parametrize(
    ("item_id", "answer", "correct"),
    [
        ("sum/3+4", "3 + 4 = 7", True),
        ("sum/3+4", "The answer is 7.", True),
        ("sum/3+4", "3 + 4 = 8", False),
        ("sum/3+4", "It is 34.", False),
        ("sum/7+8", "7 + 8 = 15", True),
        ("sum/7+8", "7 + 8 = 55", False),
        ("sum/7+8", "I cannot say.", False),
        ("capital/Colombia", "The capital of Colombia is Bogotá.", True),
        ("capital/Colombia", "The capital of Colombia is BOGOTA", True),
        ("capital/Colombia", "The capital of Colombia is Medellín.", False),
        ("capital/Italy", "The capital of Italy is Rome.", True),
        ("capital/Italy", "Romeo and Juliet is set in Verona, Italy.", False),
        ("capital/India", "The capital of India is New Delhi.", True),
        ("capital/Ukraine", "Kiev is the capital.", True),
        ("plural/mouse", "The plural of mouse is mice.", True),
        ("plural/mouse", "The plural of mouse is mouses.", False),
        ("plural/mouse", "Mice.", True),
        ("opposite/hot", "The opposite of hot is cold.", True),
        ("opposite/hot", "The opposite of hot is coldness.", False),
        ("opposite/hot", "hot", False),
    ],
)
def test_checker_accepts_right_and_rejects_wrong_answers(item_id, answer, correct):
    assert _item(item_id).is_correct(answer) is correct


def test_larger_of_two_takes_the_first_number_of_the_answer():
    item = next(i for i in quality_suite() if i.skill == "larger")
    a, b = (int(x) for x in item.id.split("/")[1].split(","))
    big, small = max(a, b), min(a, b)
    assert item.operands == ()  # the answer is one of the two numbers, so none is skipped
    assert item.is_correct(f"{big} is larger than {small}.")
    assert not item.is_correct(f"{small} is larger than {big}.")
    assert not item.is_correct(f"Neither; {big + small} is.")
    assert not item.is_correct("Both are equal.")


def test_extract_is_what_the_check_compares():
    item = _item("sum/3+4")
    assert item.extract("3 + 4 = 7") == "7"
    assert item.extract("3 + 4 is 1,000") == "1000"
    assert item.extract("no number") is None
    assert _item("capital/Colombia").extract("Bogotá!") == "bogota"
    assert _item("capital/Italy").extract("Romeo") is None


def test_accuracy_counts_correct_answers_and_checks_lengths():
    items = [_item("sum/3+4"), _item("capital/France")]
    assert accuracy(items, ["7", "Paris"]) == 1.0
    assert accuracy(items, ["8", "Paris"]) == 0.5
    with pytest.raises(ValueError):
        accuracy(items, ["7"])
