"""The performance harness end to end on tiny shapes: the table, the JSON and the plot agree."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import load_benchmark
from tiny import tiny_engine

from rstitch_engine import GenerationSettings
from rstitch_engine.measure.trace import record_trace


def test_tiny_run_writes_consistent_table_json_and_plot(tmp_path, capsys):
    harness = load_benchmark("harness")
    traces = tmp_path / "traces"
    _, recorded = record_trace(tiny_engine(threshold=0.75), "The quick brown", GenerationSettings(max_new_tokens=10))
    recorded.save(traces / "recorded.json")
    assert 0 < recorded.slm_share < 1
    out_json, out_plot = tmp_path / "report.json", tmp_path / "plot.png"
    threads = torch.get_num_threads()
    try:  # one thread: tiny passes stall on a busy machine with more
        harness.main(["--slm-shape", "tiny-s", "--llm-shape", "tiny-l", "--traces", str(traces), "--synthetic", "0.7",
                      "--prompt-tokens", "6", "--output-tokens", "10", "--mean-llm-run", "2", "--repeats", "1",
                      "--device", "cpu", "--dtype", "float32", "--threads", "1",
                      "--json", str(out_json), "--plot", str(out_plot)])
    finally:
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    report = json.loads(out_json.read_text())
    rows = report["rows"]
    assert [r["trace"] for r in rows] == ["recorded", "synthetic-0.7"]
    assert out_plot.stat().st_size > 1000

    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| trace | P / N | SLM share |") and "efficiency" in table[0]
    assert [line.split(" | ")[0][2:] for line in table[2:4]] == ["recorded", "synthetic-0.7"]

    shape = harness.SHAPES["tiny-l"]
    kv_bytes_per_token = shape["num_hidden_layers"] * 2 * shape["num_key_value_heads"] * (
        shape["hidden_size"] // shape["num_attention_heads"]) * 4  # float32, pinned above: auto is bf16 where native
    for row, length in zip(rows, [recorded.output_tokens, 10]):
        s = row["seconds"]
        assert row["speedup_measured"] == pytest.approx(s["llm_alone"] / s["rstitch"])
        assert row["speedup_ideal"] == pytest.approx(s["llm_alone"] / s["ideal"])
        assert row["efficiency"] == pytest.approx(s["ideal"] / s["rstitch"])
        assert row["speedup_assisted"] == pytest.approx(s["llm_alone"] / s["assisted"])
        assert all(v > 0 for v in s.values())
        assert row["tokens_match_ideal"] is True  # the ideal loop did exactly the engine's passes
        assert row["output_tokens"] == length
        # Same passes, same caches; the LLM alone caches everything but its last token.
        assert row["cache_bytes"]["rstitch"] == row["cache_bytes"]["ideal"]
        assert row["cache_bytes"]["llm_alone"] == kv_bytes_per_token * (row["prompt_tokens"] + length - 1)
        assert f"{row['efficiency']:.3f}" in stdout and f"{row['speedup_measured']:.2f}x" in stdout
    assert rows[0]["slm_share"] == pytest.approx(recorded.slm_share) and rows[0]["prompt_tokens"] == recorded.prompt_tokens
    assert rows[1]["prompt_tokens"] == 6
    assert rows[1]["slm_share"] == pytest.approx(0.7)
    assert report["models"]["llm"]["parameter_bytes"] > report["models"]["slm"]["parameter_bytes"] > 0

