"""benchmarks/serve_load.py's two sides on the tiny pair: a live server and in-process abatch decode the same tokens."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from helpers import load_benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from serving import running_server, tiny_service  # noqa: E402

from rstitch_integrations.langchain import ChatRStitch  # noqa: E402

PROMPTS = [[{"role": "user", "content": f"Count to {n}."}] for n in range(6)]


def test_server_and_in_process_levels_count_the_same_tokens_with_no_errors() -> None:
    bench = load_benchmark("serve_load")
    service = tiny_service(max_tokens=64)
    chat = ChatRStitch(engine=service.engine, threshold=0.5, max_tokens=12)
    with running_server(service) as base:
        served = asyncio.run(bench.server_level(base, "server", PROMPTS, 4, 12))
    local = asyncio.run(bench.inprocess_level(chat, PROMPTS, 4))
    service.shutdown()
    assert served.errors == 0 and served.requests == local.requests == 6
    assert served.output_tokens == local.output_tokens == sum(
        chat.invoke(p).response_metadata["stitch"]["output_tokens"] for p in PROMPTS)
    assert len(served.ttft) == 6 and len(served.itl) == served.output_tokens - 6
    rows = bench.merged([served, local])
    over = bench.overheads(rows)
    assert over["server"][4] == pytest.approx(1 - served.tokens_per_second / local.tokens_per_second)
    assert bench._pct([3.0, 1.0, 2.0], 50) == 2.0 and bench._pct([], 95) is None
