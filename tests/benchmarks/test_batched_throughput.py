"""benchmarks/batched_throughput.py on a tiny float64 pair: every configuration side by side, exact answers."""

from __future__ import annotations

import json

import pytest
from helpers import load_benchmark
from tiny import tiny_chat_draft_pair

from rstitch_engine import EntropyRouter, StitchEngine
from rstitch_engine.decoding.engine import DEFAULT_LLM_WAIT_STEPS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_configuration_runs_side_by_side_and_batched_answers_equal_one_by_one(monkeypatch, tmp_path, capsys):
    bench = load_benchmark("batched_throughput")
    engine = StitchEngine(tiny_chat_draft_pair(), EntropyRouter(0.7), max_batch_size=16)
    monkeypatch.setattr(bench, "load_engine", lambda *args: engine)
    out = tmp_path / "throughput.json"
    assert bench.main(["--concurrency", "1,4", "--max-new-tokens", "8", "--memory-requests", "16",
                       "--repeats", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["concurrency"] for row in report["rows"]] == [1, 4]
    for row in report["rows"]:
        assert set(row["tokens_per_second"]) == set(bench.CONFIGS)
        assert row["speedup_vs_sequential"]["one_by_one_stitched"] == 1.0
        for name, measured in row["configs"].items():
            assert measured["tokens_per_second"] == pytest.approx(measured["tokens"] / measured["seconds"])
            runs = measured["tokens_per_second_runs"]
            assert len(runs) == 3 and runs[0] == measured["tokens_per_second"]
            assert row["tokens_per_second"][name] == sorted(runs)[1]  # the median of three
        one_by_one = row["configs"]["one_by_one_stitched"]
        assert one_by_one["llm_rows_per_pass"] in (0.0, 1.0)  # passes never shared
        assert one_by_one["slowest_request_seconds"] <= one_by_one["seconds"]
        assert 1.0 <= row["critical_path_speedup_bound"] <= row["concurrency"] + 0.5
        # float64: batching changes no answer, with or without LLM rows waiting for company
        assert row["identical_answers_batched_vs_one_by_one"] == row["concurrency"]
        assert row["identical_answers_llm_every_step_vs_one_by_one"] == row["concurrency"]
        assert row["identical_answers_threads_vs_one_by_one"] == row["concurrency"]
    four = report["rows"][1]["configs"]
    assert four["batched_stitched"]["largest_batch"] == four["batched_llm_every_step"]["largest_batch"] == 4
    assert four["one_by_one_stitched"]["largest_batch"] == 1
    assert report["llm_wait_steps"] == DEFAULT_LLM_WAIT_STEPS
    assert report["memory"]["live_requests_after"] == 0
    assert report["repeats"] == 3
    assert "tiny-draft + tiny-qwen2" in capsys.readouterr().out
