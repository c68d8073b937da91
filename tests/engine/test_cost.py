"""The LLM-alone estimate behind ``speedup_basis == 'estimated'``."""

from __future__ import annotations

import pytest

from rstitch_engine.decoding.speedup import LlmCostHistory, PassCostFit
from rstitch_engine.models.loaded import ForwardRecord


def record(role: str, new: int, seconds: float) -> ForwardRecord:
    return ForwardRecord(role, "catchup" if new > 1 else "decode", new, 0, seconds)  # type: ignore[arg-type]


def test_fit_recovers_a_linear_pass_cost():
    fit = PassCostFit.fit([(n, 0.05 + 0.002 * n) for n in (1, 1, 5, 20, 40)])
    assert fit.fixed_seconds == pytest.approx(0.05) and fit.per_token_seconds == pytest.approx(0.002)
    # LLM alone: prefill of 30 prompt tokens, then 9 one-token decodes.
    assert fit.generation_seconds(30, 10) == pytest.approx((0.05 + 0.06) + 9 * 0.052)


def test_fit_needs_a_single_token_pass_and_never_goes_negative():
    assert PassCostFit.fit([(10, 0.3), (20, 0.5)]) is None
    flat = PassCostFit.fit([(1, 0.07), (1, 0.09)])
    assert flat.fixed_seconds == pytest.approx(0.08) and flat.per_token_seconds == 0.0
    assert PassCostFit.fit([(1, 0.2), (50, 0.1)]).per_token_seconds == 0.0  # a slower 1-token pass: slope clamped


def test_estimate_prefers_the_requests_own_llm_passes_then_history():
    history = LlmCostHistory()
    assert history.estimate([record("slm", 1, 0.01)], 10, 5) is None  # the LLM never ran anywhere
    own = [record("llm", 12, 0.2), record("llm", 1, 0.1), record("slm", 1, 0.01)]
    history.add([record("llm", 1, 9.0)])
    fit = PassCostFit.fit([(12, 0.2), (1, 0.1)])
    assert history.estimate(own, 10, 5) == pytest.approx(fit.generation_seconds(10, 5))
    assert history.estimate([record("slm", 1, 0.01)], 10, 5) == pytest.approx(9.0 * 5)


def test_with_a_cost_model_the_estimate_is_its_prediction_scaled_to_the_requests_llm_speed():
    from rstitch_engine.models.cost_model import PairCostModel, PassCost

    cost = PassCost(fixed=0.05, per_token=0.002, per_token_context=1e-5)
    history = LlmCostHistory(model=PairCostModel(slm=cost, llm=cost))
    predicted_alone = history.model.alone_seconds("llm", 10, 5)
    assert history.estimate([record("slm", 1, 0.01)], 10, 5) == pytest.approx(predicted_alone)  # never ran
    own = [ForwardRecord("llm", "catchup", 12, 0, 2 * cost.seconds(12, 0)),  # twice as slow as calibrated
           ForwardRecord("llm", "decode", 1, 12, 2 * cost.seconds(1, 12))]
    assert history.estimate(own, 10, 5) == pytest.approx(2 * predicted_alone)
    history.add(own)
    assert history.estimate([record("slm", 1, 0.01)], 10, 5) == pytest.approx(2 * predicted_alone)  # from history
