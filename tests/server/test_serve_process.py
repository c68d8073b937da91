"""``rstitch serve`` as a process: it starts from the CLI on a saved tiny pair, and SIGTERM drains it.

On SIGTERM the request in flight runs to its end, a new request gets 503, and the process exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving import free_port, save_tiny_pair

ANSWER_LETTERS = 1500
LONG = {"type": "regex", "pattern": f"[a-z]{{{ANSWER_LETTERS}}}"}
"""An answer the grammar keeps going for 1500 letters (the tiny pair cannot end it early): long enough to be
still in flight when SIGTERM and the refused request arrive, on an idle machine too."""


@pytest.fixture(scope="module")
def tiny_pair_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_tiny_pair(tmp_path_factory.mktemp("tiny-pair"))


@pytest.fixture
def serve_process(tiny_pair_folders: tuple[Path, Path]) -> Iterator[tuple[subprocess.Popen, str]]:
    llm, slm = tiny_pair_folders
    port = free_port()
    command = [sys.executable, "-m", "rstitch_engine.cli", "serve", "--llm", str(llm), "--slm", str(slm),
               "--dtype", "float32", "--device", "cpu", "--threshold", "0.5", "--port", str(port),
               "--drain-seconds", "60"]
    env = {**os.environ, "RSTITCH_API_KEY": "k"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"rstitch serve did not start:\n{process.stdout.read()}")
        time.sleep(0.2)
    try:
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)


def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits(
    serve_process: tuple[subprocess.Popen, str],
) -> None:
    process, base = serve_process
    headers = {"Authorization": "Bearer k"}
    assert httpx.get(base + "/v1/models").status_code == 401  # the key came from RSTITCH_API_KEY
    events: list[str] = []
    first_token = threading.Event()
    request = {"messages": [{"role": "user", "content": "letters"}], "max_tokens": ANSWER_LETTERS,
               "response_format": LONG, "stream": True}

    def in_flight() -> None:
        with httpx.stream("POST", base + "/v1/chat/completions", json=request, headers=headers, timeout=120) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: "):])
                    if len(events) == 3:
                        first_token.set()

    thread = threading.Thread(target=in_flight)
    thread.start()
    assert first_token.wait(60)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    refused = httpx.post(base + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                         headers=headers, timeout=30)
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "service_unavailable"
    thread.join(120)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert len("".join(c["choices"][0]["delta"].get("content", "") for c in chunks)) == ANSWER_LETTERS  # all of it
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert process.wait(60) == 0
