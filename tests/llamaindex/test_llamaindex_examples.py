"""The LlamaIndex examples run end to end on the default pair (slow: each loads the models afresh)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_rag_example_streams_an_answer_with_sources():
    out = run_example("llamaindex_rag.py", "What does the router decide?", "--max-tokens", "12")
    assert re.search(r"Indexed \d+ documents: .*llamaindex\.md", out)
    assert "source: " in out
    assert re.search(r"answer \d+ tokens: SLM \d+, LLM \d+", out)


def test_rag_example_with_auto_quality_gives_the_long_prompt_to_the_llm_with_prompt_lookup():
    out = run_example("llamaindex_rag.py", "What does the router decide?", "--max-tokens", "12", "--quality", "auto")
    found = re.search(r"prompt (\d+) tokens; answer (\d+) tokens: SLM 0, LLM (\d+)", out)
    assert found and int(found[1]) > 256 and found[2] == found[3]
    assert re.search(r"prompt lookup kept \d+ of [1-9]\d* proposed tokens", out)


def test_agent_example_runs_the_agent_loop():
    out = run_example("llamaindex_agent.py", "What is 6 times 7, and what is the capital of France?", "--max-tokens", "96")
    assert "tool call: multiply({'a': 6, 'b': 7}) -> 42" in out
    assert "tool call: capital_of({'country': 'France'}) -> Paris" in out
    assert "Answer:" in out and "Tool calls:" in out
    assert re.search(r"\d+ LLM calls, \d+ tokens \(SLM \d+, LLM \d+\)", out)


def test_cost_example_totals_agree_with_token_counting():
    out = run_example("llamaindex_cost.py", "--max-tokens", "8")
    assert "calls 4;" in out
    totals = re.search(r"prompt tokens (\d+); output tokens (\d+)", out)
    counted = re.search(r"TokenCountingHandler: prompt (\d+), completion (\d+)", out)
    assert totals and counted and totals.groups() == counted.groups()
