"""benchmarks/quality_contract.py end to end on the default pair: the LLM alone is the reference of every
configuration, constrained items run through the adapters' calls, and both suites reach the JSON."""

from __future__ import annotations

import json

import pytest
from helpers import load_benchmark


@pytest.mark.real_model
def test_a_short_run_of_both_suites_writes_every_record_and_the_tables(tmp_path, capsys):
    bench = load_benchmark("quality_contract")
    out = tmp_path / "contract.json"
    assert bench.main(["--suite", "everyday,gsm8k", "--skills", "tool,json,multiturn", "--per-skill", "1",
                       "--max-new-tokens", "24", "--gsm8k", "1", "--gsm8k-tokens", "8",
                       "--configs", "default,fast", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["default_policy"].startswith("auto: ") and report["default_reason"]
    everyday = report["suites"]["everyday"]
    assert everyday["items"] == 3 and sorted(everyday["per_skill"]) == ["json", "multiturn", "tool"]
    assert [row["config"] for row in everyday["summary"]] == ["LLM alone", "default", "fast"]
    llm = next(row for row in everyday["summary"] if row["config"] == "LLM alone")
    assert llm["agreement"] == 1.0 and llm["speedup"] == 1.0 and llm["slm_share"] == 0.0
    records = everyday["records"]
    assert len(records) == 9 and {r["config"] for r in records} == {"LLM alone", "default", "fast"}
    for record in records:
        if record["skill"] == "tool":  # the forced opening is part of the answer
            assert record["text"].startswith("<tool_call>")
        if record["skill"] == "json":
            json.loads(record["text"])  # the grammar keeps the answer valid JSON
        if record["config"] == "LLM alone":
            assert record["correct"] == record["llm_correct"] and record["agrees"]
    assert report["suites"]["gsm8k"]["items"] == 1 and len(report["suites"]["gsm8k"]["records"]) == 3
    assert "## everyday (3 items" in capsys.readouterr().out
