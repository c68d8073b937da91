"""``rstitch serve --ray --replicas 2`` on a local Ray instance: both replicas serve, and one that dies is
replaced by Ray Serve while the other keeps answering.

Slow: a local Ray instance and two replicas each importing torch and loading a pair take a minute or
two on 2 shared CPU cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving import free_port, save_tiny_pair

pytestmark = pytest.mark.slow

HELLO = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def replica_pids(base: str, probes: int = 16) -> set[int]:
    """The process ids of the replicas that answered ``probes`` health checks (Ray Serve spreads them)."""
    pids = set()
    for _ in range(probes):
        try:
            reply = httpx.get(base + "/health", timeout=10)
        except httpx.TransportError:
            continue
        if reply.status_code == 200:
            pids.add(reply.json()["pid"])
    return pids


@pytest.fixture
def ray_server(tmp_path: Path) -> Iterator[str]:
    llm, slm = save_tiny_pair(tmp_path)
    port = free_port()
    command = [sys.executable, "-m", "rstitch_engine.cli", "serve", "--ray", "--replicas", "2",
               "--cpus-per-replica", "0.5", "--llm", str(llm), "--slm", str(slm), "--dtype", "float32",
               "--device", "cpu", "--threshold", "0.5", "--port", str(port)]
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 400
        while len(replica_pids(base, 8)) < 2:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"two replicas did not come up:\n{log.read_text()[-4000:]}")
            time.sleep(2)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)  # serve.shutdown() and ray.shutdown()
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


def test_two_replicas_serve_and_a_dead_one_is_replaced_while_the_other_serves(ray_server: str) -> None:
    base = ray_server
    first = replica_pids(base)
    assert len(first) == 2
    reply = httpx.post(base + "/v1/chat/completions", json=HELLO | {"stream": True}, timeout=60)
    assert reply.status_code == 200 and reply.text.rstrip().endswith("data: [DONE]") and '"rstitch"' in reply.text
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    answered, deadline = 0, time.monotonic() + 300
    while True:
        reply = httpx.post(base + "/v1/chat/completions", json=HELLO, timeout=60)
        assert reply.status_code == 200, reply.text  # the surviving replica keeps serving
        answered += 1
        pids = replica_pids(base, 8)
        if len(pids - first) == 1 and victim not in pids:
            break  # Ray Serve started a replacement, and it serves
        assert time.monotonic() < deadline, f"no replacement replica after {answered} answered requests"
        time.sleep(1)
    assert len(replica_pids(base)) == 2
