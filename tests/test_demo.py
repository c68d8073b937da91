"""`make demo` (examples/demo.py) on the real default pair: every prompt answered right, beside the LLM alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


@pytest.mark.real_model
@pytest.mark.parametrize("backend", ["transformers", "llama.cpp"])
def test_the_demo_answers_each_prompt_right_beside_the_llm_alone(backend):
    done = subprocess.run([sys.executable, str(DEMO), "--backend", backend], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    rows = [line for line in out.splitlines() if line.startswith("│ ") and ("a fact" in line or "retrieval" in line
                                                                          or "tool call" in line)]
    assert len(rows) == 3, out
    fact, retrieval, tool = rows
    assert "Paris" in fact.split("│")[2] and "blue" in retrieval.split("│")[2].lower()
    assert "get_weather(city='Paris')" in tool.split("│")[2] and "get_weather(city='Paris')" in tool.split("│")[3]
    summary = re.search(r"(\d)/3 answers identical to the LLM alone's; ([\d.]+) s against ([\d.]+) s \(([\d.]+)x, "
                        r"measured\)\. Policy: (auto: [^(]+)", " ".join(out.split()))
    assert summary is not None, out
    assert int(summary.group(1)) == sum(row.split("│")[4].strip() == "yes" for row in rows)
    policy = summary.group(5).strip()  # what the pair's profile on this backend proves (llama.cpp: the plain LLM)
    assert policy in ("auto: LLM alone + lookup", "auto: LLM alone") or policy.startswith("auto: tau")
