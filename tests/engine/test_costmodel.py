"""The pass-cost model: exact recovery of known costs, the knot form, files, and measuring."""

from __future__ import annotations

import itertools

import pytest
import torch
from tiny import tiny_pair

from rstitch_engine.measure.cost_calibration import measure_passes, relative_errors
from rstitch_engine.models.cost_model import Knot, PairCostModel, PassCost, device_name, pair_name, shipped_cost_model
from rstitch_engine.models.defaults import DEFAULT_LLM, DEFAULT_SLM
from rstitch_engine.models.loaded import ForwardRecord

GRID = list(itertools.product([1, 2, 4, 8, 16, 32, 64], [0, 40, 200, 500]))


def formula(n: int, c: int) -> float:
    return 0.02 + 0.003 * n + 1e-6 * n * (c + n / 2)


def records(role: str, cost, points) -> list[ForwardRecord]:
    return [ForwardRecord(role, "decode" if n == 1 else "catchup", n, c, cost(n, c)) for n, c in points]  # type: ignore[arg-type]


def test_fit_recovers_known_formula_coefficients():
    fit = PassCost.fit([(r.new_tokens, r.cached_tokens, r.seconds) for r in records("llm", formula, GRID)])
    assert (fit.fixed, fit.per_token, fit.per_token_context) == pytest.approx((0.02, 0.003, 1e-6), rel=1e-9)
    for knot in fit.knots:  # at a fixed n the formula is linear in c: each knot is exact too
        n = knot.new_tokens
        assert (knot.seconds, knot.per_cached_token) == pytest.approx((formula(n, 0), 1e-6 * n), rel=1e-9)
    for n, c in [(1, 123), (8, 777), (64, 3)]:
        assert fit.seconds(n, c) == pytest.approx(formula(n, c), rel=1e-9)


def roofline(n: int, c: int) -> float:
    """Flat while reading the weights dominates (n <= 8), then linear in n; attention linear in c."""
    return max(0.05, 0.05 * n / 8) + 2e-6 * n * c


def test_knots_follow_a_non_linear_shape_in_n_that_the_formula_cannot():
    points = list(itertools.product([1, 2, 4, 8, 16, 32, 64, 128], [0, 100, 300]))
    model = PairCostModel.fit(records("slm", roofline, points) + records("llm", formula, GRID))
    held_out = list(itertools.product([1, 3, 5, 8, 12, 24, 50, 100], [17, 250, 420]))
    truth = records("slm", roofline, held_out)
    assert max(relative_errors(model, truth)) < 1e-9  # piecewise linear in n with a knot at the kink: exact
    formula_only = PassCost(model.slm.fixed, model.slm.per_token, model.slm.per_token_context)
    worst_formula = max(abs(formula_only.seconds(r.new_tokens, r.cached_tokens) - r.seconds) / r.seconds for r in truth)
    assert worst_formula > 0.2  # why the knots exist


def test_past_the_last_knot_the_formula_adds_its_increase_and_below_the_first_it_decides():
    cost = PassCost(fixed=1.0, per_token=0.1, per_token_context=0.0,
                    knots=(Knot(4, 0.4, 0.001), Knot(8, 0.8, 0.002)))
    assert cost.seconds(16, 10) == pytest.approx(0.8 + 0.002 * 10 + 0.1 * (16 - 8))
    assert cost.seconds(6, 0) == pytest.approx(0.6)  # interpolated
    assert cost.seconds(2, 10) == pytest.approx(1.2)  # below the knots: the formula
    single = PassCost(fixed=1.0, per_token=0.1, per_token_context=0.0, knots=(Knot(1, 0.1, 0.01),))
    assert single.seconds(1, 5) == pytest.approx(0.15) and single.seconds(3, 5) == pytest.approx(0.35)


def test_scattered_passes_give_no_knots_and_the_formula_alone():
    points = [(1, 10), (3, 50), (7, 20), (12, 90), (30, 0)]  # each n once: no knot is supported
    fit = PassCost.fit([(n, c, formula(n, c)) for n, c in points])
    assert fit.knots == ()
    assert fit.seconds(5, 60) == pytest.approx(formula(5, 60), rel=1e-9)


def test_coefficients_stay_non_negative():
    fit = PassCost.fit([(1, 0, 0.1), (10, 0, 0.09), (20, 0, 0.08), (1, 100, 0.1)])
    assert min(fit.fixed, fit.per_token, fit.per_token_context) >= 0
    assert all(k.seconds >= 0 and k.per_cached_token >= 0 for k in fit.knots)
    with pytest.raises(ValueError):
        PassCost.fit([(1, 0, 0.1)])


def test_predict_and_alone_seconds_add_up_passes():
    model = PairCostModel.fit(records("slm", roofline, GRID) + records("llm", formula, GRID), pair="p", device="cpu")
    passes = records("llm", formula, [(16, 0), (1, 16), (1, 17)]) + records("slm", roofline, [(3, 12)])
    assert model.predict(passes) == pytest.approx(sum(r.seconds for r in passes), rel=1e-9)
    assert model.alone_seconds("llm", 16, 3) == pytest.approx(formula(16, 0) + formula(1, 16) + formula(1, 17), rel=1e-9)


def test_round_trip_through_json(tmp_path):
    model = PairCostModel.fit(records("slm", roofline, GRID) + records("llm", formula, GRID), pair="a__b", device="cpu")
    assert model.slm.knots and model.llm.knots
    model.save(tmp_path / "m.json")
    assert PairCostModel.load(tmp_path / "m.json") == model
    assert PairCostModel.from_dict(model.to_dict()) == model
    legacy = {"slm": {"fixed": 1.0, "per_token": 2.0, "per_token_context": 0.0},
              "llm": {"fixed": 1.0, "per_token": 2.0, "per_token_context": 0.0}}
    assert PairCostModel.from_dict(legacy).pass_seconds("llm", 3, 0) == 7.0  # files without knots still load


def test_names():
    assert pair_name("smollm2-135m-instruct[:8 layers]", "SmolLM2-135M-Instruct") == \
        "smollm2-135m-instruct-8-layers__smollm2-135m-instruct"
    assert device_name("cpu", torch.float32) == "cpu-float32"
    assert device_name("cpu", torch.bfloat16) == "cpu-bfloat16"
    assert shipped_cost_model("no-such-slm", "no-such-llm", "cpu", torch.float32) is None


def test_the_shipped_cost_model_is_found_only_for_the_dtype_it_was_calibrated_in():
    shipped = shipped_cost_model(DEFAULT_SLM, DEFAULT_LLM, "cpu", torch.float32)
    assert shipped is not None and shipped.device == "cpu-float32"
    assert shipped_cost_model(DEFAULT_SLM, DEFAULT_LLM, "cpu", torch.float16) is None


def test_measure_passes_times_each_point_as_the_engine_runs_it():
    pair = tiny_pair()
    points = [(1, 0), (1, 30), (5, 30), (12, 0)]
    measured = measure_passes(pair.llm, points, repeats=2)
    assert [(r.role, r.kind, r.new_tokens, r.cached_tokens) for r in measured] == [
        ("llm", "decode", 1, 0), ("llm", "decode", 1, 30), ("llm", "catchup", 5, 30), ("llm", "catchup", 12, 0)]
    assert all(r.seconds > 0 for r in measured)
