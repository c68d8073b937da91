"""benchmarks/per_token_cost.py: its bare loops give the engine's tokens and writers, and it reports both workloads."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import load_benchmark
from tiny import tiny_pair


@pytest.mark.real_model  # the default tokenizer and config (random weights)
def test_a_short_run_checks_every_token_against_the_bare_loops_and_writes_both_workloads(tmp_path, capsys):
    bench = load_benchmark("per_token_cost")
    out = tmp_path / "cost.json"
    threads = torch.get_num_threads()
    try:
        rows = bench.main(["--layers", "1", "--tokens", "12", "--repeats", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)  # the benchmark runs on one thread
    assert [row["workload"] for row in rows] == ["LLM alone", "stitching"]
    assert rows[0]["llm_tokens"] == 12  # the LLM alone wrote every token
    assert 0 < rows[1]["llm_tokens"] < 12  # at the SLM's median entropy both models wrote
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows and saved["layers"] == 1 and saved["hidden_size"] == 576
    bench.main(["--compare", str(out), str(out)])
    assert "stitching" in capsys.readouterr().out


@pytest.mark.real_model  # the default config
def test_a_narrower_pair_keeps_the_llm_s_head_size_and_narrows_the_mlp_in_proportion():
    bench = load_benchmark("per_token_cost")
    config = bench.tiny_default_pair(1, hidden_size=128).llm.model.config
    heads = (config.num_attention_heads, config.num_key_value_heads)
    assert (config.hidden_size, config.head_dim, heads) == (128, 64, (2, 2))
    assert config.intermediate_size == 1536 * 128 // 576


def test_the_bare_stitching_loop_is_algorithm_1():
    """A pair whose SLM is the LLM itself: the bare loop's writer follows the entropy rule exactly."""
    bench = load_benchmark("per_token_cost")
    pair = tiny_pair()
    prompt = [5, 9, 14, 20]
    tokens = bench.bare_stitch(pair, prompt, -1.0)  # tau < 0: the LLM writes every token
    assert [next(tokens)[1] for _ in range(5)] == ["llm"] * 5
    tokens = bench.bare_stitch(pair, prompt, 1.0)  # tau = 1: the SLM writes every token
    slm_alone = bench.bare_alone(pair.__class__(slm=pair.slm, llm=pair.slm, tokenizer=pair.tokenizer), prompt)
    assert [next(tokens) for _ in range(5)] == [(next(slm_alone)[0], "slm") for _ in range(5)]
