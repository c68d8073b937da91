"""benchmarks/router_pareto.py: the Pareto front of the tau sweep and a router's margins against it."""

from __future__ import annotations

import pytest
from helpers import load_benchmark

bench = load_benchmark("router_pareto")

# (speedup, accuracy) of a tau sweep: (1.0, 0.70) is dominated by (1.1, 0.70).
SWEEP = [(0.9, 0.70), (1.0, 0.70), (1.1, 0.70), (1.2, 0.50), (1.5, 0.40), (1.4, 0.30)]
FRONT = [(1.1, 0.70), (1.2, 0.50), (1.5, 0.40)]


def test_the_front_keeps_exactly_the_non_dominated_points():
    assert bench.pareto_front(SWEEP) == FRONT


def test_a_router_between_front_points_is_beyond_with_exact_margins():
    m = bench.margins((1.15, 0.65), FRONT)
    assert not m["dominated"]
    assert m["accuracy_margin_step"] == pytest.approx(0.65 - 0.50)  # best front point at least as fast: (1.2, 0.50)
    assert m["accuracy_margin_interpolated"] == pytest.approx(0.65 - 0.60)  # line (1.1, .7)-(1.2, .5) at 1.15
    assert m["speedup_margin_step"] == pytest.approx(1.15 - 1.1)  # best front point at least as accurate: 1.1
    assert m["speedup_margin_interpolated"] == pytest.approx(1.15 - 1.125)  # the line at accuracy 0.65


def test_a_dominated_router_has_negative_margins():
    m = bench.margins((1.05, 0.45), FRONT)
    assert m["dominated"]
    assert m["accuracy_margin_step"] < 0 and m["accuracy_margin_interpolated"] < 0
    assert m["speedup_margin_step"] < 0


def test_a_router_above_the_best_accuracy_has_no_speedup_margin_on_the_line():
    m = bench.margins((1.0, 0.75), FRONT)
    assert not m["dominated"]
    assert m["speedup_margin_interpolated"] is None and m["speedup_margin_step"] is None
    assert m["accuracy_margin_step"] == pytest.approx(0.05)


def test_report_uses_only_the_sweep_for_the_front():
    rows = [{"kind": "tau", "config": f"tau {i}", "speedup": s, "accuracy": a} for i, (s, a) in enumerate(SWEEP)]
    rows += [{"kind": "llm", "config": "LLM alone", "speedup": 1.0, "accuracy": 0.9},
             {"kind": "learned", "config": "router", "speedup": 1.15, "accuracy": 0.65}]
    report = bench.pareto_report(rows, "speedup")
    assert [(p["speedup"], p["accuracy"]) for p in report["front"]] == FRONT
    assert report["routers"]["router"] == bench.margins((1.15, 0.65), FRONT)
