"""AUROC and ECE of the draft's entropy: the arithmetic on known cases, and a run on a tiny pair."""

from __future__ import annotations

import pytest
from tiny import tiny_engine

from rstitch_engine.measure.calibration import (
    auroc,
    draft_positions,
    drafts_positions,
    expected_calibration_error,
    summarise,
)


def test_auroc_of_perfect_reversed_chance_and_tied_scores():
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [False, True, False, True]) == 0.5
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75  # one inverted pair of four
    assert auroc([0.1, 0.2], [False, False]) is None


def test_ece_of_calibrated_and_overconfident_predictions():
    assert expected_calibration_error([0.75] * 4, [True, True, True, False]) == pytest.approx(0.0)
    assert expected_calibration_error([0.95] * 10, [True] * 5 + [False] * 5) == pytest.approx(0.45)
    assert expected_calibration_error([], []) is None


def test_draft_positions_follow_the_llm_s_greedy_answer_on_a_tiny_pair():
    engine = tiny_engine()
    positions = draft_positions(engine, "The quick brown", 12)
    assert len(positions) == len(engine.decode_alone("llm", "The quick brown").token_ids[:12])
    assert all(0 <= p.entropy <= 1 and 0 < p.top_probability <= 1 for p in positions)
    summary = summarise(positions, taus=(0.5,))
    assert summary["positions"] == len(positions) and 0 <= summary["divergence_rate"] <= 1
    assert set(summary["missed_divergences"]) == {"0.5"}


def test_drafts_are_scored_on_the_same_llm_answer_and_the_llm_never_diverges_from_itself():
    engine = tiny_engine()
    as_draft, as_llm = drafts_positions(engine, "The quick brown", 12, [engine.pair.slm, engine.pair.llm])
    assert as_draft == draft_positions(engine, "The quick brown", 12)
    assert len(as_llm) == len(as_draft) > 0
    assert not any(p.diverges for p in as_llm)  # the LLM's greedy token is the answer's, position by position
