"""benchmarks/constrained.py end to end on a few tasks with the real default pair: table and JSON agree."""

from __future__ import annotations

import json

import pytest
from helpers import load_benchmark

pytestmark = pytest.mark.real_model


def test_a_short_run_writes_the_table_and_consistent_json(tmp_path, capsys):
    bench = load_benchmark("constrained")
    out = tmp_path / "constrained.json"
    assert bench.main(["--limit", "1", "--max-new-tokens", "32", "--dtype", "float32", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["tasks"] == {"tool": 1, "extraction": 1}
    configs = report["configs"]
    assert set(configs) == set(bench.CONFIGS)
    for name, config in configs.items():
        assert len(config["tasks"]) == 2 and 0 <= config["validity"] <= 1 and config["exact"] <= config["validity"]
        assert config["tokens"] == sum(len(row["token_ids"]) for row in config["tasks"])
    assert configs["constrained_stitched"]["validity"] == 1.0  # the grammar: valid or cut by the budget
    seconds = configs["constrained_stitched"]["seconds"]
    assert report["speedup_vs_constrained_llm_alone"] == pytest.approx(configs["constrained_llm_alone"]["seconds"] / seconds)
    assert 0 < report["forced_token_share"] < 1
    overhead = report["grammar_overhead"]
    assert overhead["fraction_of_slm_step"] == pytest.approx(overhead["grammar_seconds_per_token"] / overhead["slm_step_seconds"])
    assert "constrained_stitched" in capsys.readouterr().out
