"""benchmarks/batch_schedule_bound.py: pass order, cost fit and simulated schedules, exactly; the script on a tiny pair."""

from __future__ import annotations

import json

import pytest
from helpers import load_benchmark
from tiny import tiny_chat_draft_pair

from rstitch_engine import EntropyRouter, StitchEngine
from rstitch_engine.models.loaded import ForwardRecord

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_request_s_passes_are_ordered_by_the_position_they_predict_slm_first_at_a_tie():
    bench = load_benchmark("batch_schedule_bound")
    records = [ForwardRecord("llm", "decode", 1, 5, 0.0), ForwardRecord("slm", "catchup", 2, 5, 0.0),
               ForwardRecord("slm", "catchup", 5, 0, 0.0), ForwardRecord("llm", "catchup", 5, 0, 0.0)]
    assert bench.lone_sequence(records) == [("slm", 5), ("llm", 5), ("llm", 1), ("slm", 2)]


def test_the_cost_fit_recovers_a_linear_cost():
    bench = load_benchmark("batch_schedule_bound")
    samples = [(rows, tokens, 0.04 + 0.003 * rows + 0.0005 * tokens) for rows in (1, 2, 4, 8) for tokens in (rows, 3 * rows)]
    cost = bench.fit_cost(samples)
    assert (cost.intercept, cost.per_row, cost.per_token) == pytest.approx((0.04, 0.003, 0.0005), abs=1e-12)


def test_simulated_schedules_add_up_their_passes():
    """A on the LLM for one pass; B one SLM pass then one LLM pass. SLM passes cost 1, LLM passes 10.
    Every step runs what is needed: (A llm + B slm) then (B llm) = 21. Gathering lets A wait one step
    for B: (B slm) then (A + B llm) = 11. Critical-first: B has the most left and is on the SLM, so it
    gathers too."""
    bench = load_benchmark("batch_schedule_bound")
    costs = {"slm": bench.PassCost(1.0, 0.0, 0.0), "llm": bench.PassCost(10.0, 0.0, 0.0)}
    sequences = [[("llm", 1)], [("slm", 1), ("llm", 1)]]
    assert bench.simulate(sequences, bench.gathering(0, 0.75), costs) == 21.0
    assert bench.simulate(sequences, bench.gathering(4, 0.75), costs) == 11.0
    assert bench.simulate(sequences, bench.critical_first(4, 0.75), costs) == 11.0
    assert bench.simulate(sequences, bench.gathering(4, 0.5), costs) == 21.0  # half of the step on the LLM: it runs


def test_the_script_measures_fits_and_simulates_side_by_side(monkeypatch, tmp_path, capsys):
    bench = load_benchmark("batch_schedule_bound")
    engine = StitchEngine(tiny_chat_draft_pair(), EntropyRouter(0.7), max_batch_size=16)
    monkeypatch.setattr(bench, "load_engine", lambda: engine)
    out = tmp_path / "bound.json"
    assert bench.main(["--concurrency", "2,4", "--max-tokens", "8", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["concurrency"] for row in report["rows"]] == [2, 4]
    for row in report["rows"]:
        assert row["simulated_best_policy"] == max(row["simulated_policies"].values())
        assert row["simulated_engine_policy"] == row["simulated_policies"]["wait 4, fraction 0.75"]
        assert row["measured_speedup"] > 0 and row["critical_path_bound"] >= 1
    assert set(report["costs"]) == {"slm", "llm"}
    assert "Batched speedup over one-by-one" in capsys.readouterr().out
