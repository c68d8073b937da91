"""The LangChain examples run end to end on the real default pair (slow: each decodes several answers)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_chain_example() -> None:
    out = run("langchain_chain.py", "--max-tokens", "12")
    assert out.startswith("France: ") and "\nJapan: " in out
    assert "Stitched calls: 2" in out


def test_streaming_chat_example_colours_tokens_by_model() -> None:
    out = run("langchain_streaming_chat.py", "--ask", "What is the capital of France?", "--max-tokens", "12")
    assert "bot> " in out
    assert "\033[32m" in out or "\033[35m" in out  # SLM green / LLM magenta tokens
    assert "SLM /" in out and "LLM tokens" in out


def test_tool_agent_example_runs_its_loop() -> None:
    out = run("langchain_tool_agent.py", "--max-steps", "2", "--max-tokens", "64")
    assert out.startswith("step 1: ")
    assert "tool call   multiply({'a': 6, 'b': 7})" in out and "tool call   capital_of({'country': 'France'})" in out
    assert "tool result (success): 42" in out and "tool result (success): Paris" in out
    assert re.search(r"written by: (slm|llm)×\d+", out)  # each token's model, in runs
    assert "step 2: " in out and "answer: " in out


def test_cost_tracking_example() -> None:
    out = run("langchain_cost_tracking.py", "--max-tokens", "8")
    assert out.count("Q: ") == 4
    assert "Stitched calls: 4" in out and "LangChain usage callback:" in out


def test_retrieval_chain_example_streams_an_answer_from_retrieved_docs() -> None:
    out = run("langchain_rag.py", "What does the router decide?", "--max-tokens", "12")
    assert re.search(r"Indexed \d+ chunks", out) and "Answer (SLM / LLM): " in out
    pages = {"README.md", *(page.name for page in (ROOT / "docs").glob("*.md"))}
    sources = re.findall(r"source: (\S+?):", out)
    assert len(sources) == 2 and set(sources) <= pages, sources
    found = re.search(r"answer (\d+) tokens: SLM (\d+), LLM (\d+)", out)
    assert found and int(found[1]) == int(found[2]) + int(found[3]) > 0
    assert re.search(r"prompt (\d{3,}) tokens", out)  # the retrieved context is in the prompt
