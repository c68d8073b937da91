"""Load on ``rstitch serve``: concurrent streams over loopback against in-process ``abatch``, side by side.

For each concurrency c in ``--concurrency`` (default 1, 4, 16, 64) the first max(c, ``--min-requests``)
prompts of the quality suite's held-out part (fixed, short questions) are answered greedily with
``--max-tokens`` new tokens each, two ways, alternating per round so that the shared machine's load
drifts over both:

* **server**: ``rstitch serve`` on the default pair in its own process, on 127.0.0.1; a bounded async
  client (the ``openai`` library's ``AsyncOpenAI``) keeps c streams open (a semaphore), reading SSE
  chunks; time to first token (TTFT: request sent -> first chunk with a token) and inter-token
  latency (ITL: gaps between token chunks) per request; any failed request counts as an error;
* **in-process**: ``ChatRStitch.abatch`` on the same pair in this process, ``max_concurrency=c``.

Both run the same engine configuration (default batching, ``quality='auto'``), so they decode the
same tokens; throughput is output tokens over wall seconds. ``overhead`` is 1 - server/in-process
throughput (the HTTP layer's cost: serialisation, SSE, one worker-thread hop per token). With
``--ray`` the server rows are repeated against ``rstitch serve --ray --replicas 2`` (same machine:
the replicas share its cores). The client stops by itself once every level is done; only loopback
is used. ``--threads N`` gives the server process and this one N torch threads (on a 2-core machine
shared with other work, 1 avoids OpenMP teams spinning against each other; Ray's replicas get 1).

    python benchmarks/serve_load.py --json benchmarks/results/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import torch
from rich.console import Console
from rich.table import Table

from rstitch_engine.measure.quality import quality_suite
from rstitch_integrations.langchain import ChatRStitch


@dataclass
class LevelResult:
    """One configuration at one concurrency: throughput and latency percentiles (seconds)."""

    mode: str
    concurrency: int
    requests: int
    output_tokens: int
    seconds: float
    errors: int
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, "concurrency": self.concurrency, "requests": self.requests,
                "output_tokens": self.output_tokens, "seconds": self.seconds, "errors": self.errors,
                "tokens_per_second": self.tokens_per_second, "ttft_p50": _pct(self.ttft, 50),
                "ttft_p95": _pct(self.ttft, 95), "itl_p50": _pct(self.itl, 50), "itl_p95": _pct(self.itl, 95)}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def prompts(count: int) -> list[list[dict[str, str]]]:
    items = quality_suite("heldout")
    return [[{"role": "user", "content": items[i % len(items)].question}] for i in range(count)]


# ---------------------------------------------------------------------- the server side


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(extra: list[str], timeout: float, threads: int | None) -> tuple[subprocess.Popen, str]:
    """``rstitch serve`` in its own process on a free loopback port; returns once /health answers."""
    port = free_port()
    command = [sys.executable, "-m", "rstitch_engine.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *extra]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while True:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(process)
            raise RuntimeError(f"rstitch serve {' '.join(extra)} did not start")
        time.sleep(1)


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


async def one_stream(client: openai.AsyncOpenAI, messages: list[dict[str, str]], max_tokens: int,
                     result: LevelResult) -> None:
    """One streamed request: its tokens, TTFT and inter-token gaps go into ``result``."""
    sent = time.perf_counter()
    last: float | None = None
    tokens = 0
    stream = await client.chat.completions.create(model="default", messages=messages,  # type: ignore[arg-type]
                                                  max_tokens=max_tokens, temperature=0, stream=True)
    async for chunk in stream:
        count = len(chunk.model_extra["rstitch"]["token_sources"])
        if count:
            now = time.perf_counter()
            if last is None:
                result.ttft.append(now - sent)
            else:
                result.itl.append(now - last)
            last, tokens = now, tokens + count
    result.output_tokens += tokens


async def server_level(base: str, mode: str, batch: list[list[dict[str, str]]], concurrency: int,
                       max_tokens: int) -> LevelResult:
    """``batch`` through the server with at most ``concurrency`` streams open."""
    result = LevelResult(mode, concurrency, len(batch), 0, 0.0, 0)
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600,
                                  http_client=httpx.AsyncClient(limits=limits, timeout=600)) as client:
        async def bounded(messages: list[dict[str, str]]) -> None:
            async with gate:
                try:
                    await one_stream(client, messages, max_tokens, result)
                except Exception:  # noqa: BLE001 - counted, reported: must be 0
                    result.errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(bounded(m) for m in batch))
        result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------- the in-process side


async def inprocess_level(chat: ChatRStitch, batch: list[list[dict[str, str]]], concurrency: int) -> LevelResult:
    result = LevelResult("in-process abatch", concurrency, len(batch), 0, 0.0, 0)
    started = time.perf_counter()
    replies = await chat.abatch(batch, config={"max_concurrency": concurrency})  # type: ignore[arg-type]
    result.seconds = time.perf_counter() - started
    result.output_tokens = sum(r.response_metadata["stitch"]["output_tokens"] for r in replies)
    return result


# ---------------------------------------------------------------------- the run


def sweep(args: argparse.Namespace, console: Console) -> list[LevelResult]:
    if args.threads:
        torch.set_num_threads(args.threads)
    chat = ChatRStitch(max_tokens=args.max_tokens, temperature=0)
    chat.invoke("Warm up.")  # load the pair here before any timing
    servers = {"server": start_server([], args.start_timeout, args.threads)}
    if args.ray:  # Ray gives each replica OMP_NUM_THREADS = its CPUs (at least 1)
        servers["ray x2"] = start_server(["--ray", "--replicas", "2", "--cpus-per-replica", "0.5"],
                                         args.start_timeout, args.threads)
    results: list[LevelResult] = []
    try:
        for _, base in servers.values():  # warm up every server (first request compiles nothing, but pages in)
            asyncio.run(server_level(base, "warm-up", prompts(2), 2, args.max_tokens))
        for concurrency in args.concurrency:
            batch = prompts(max(concurrency, args.min_requests))
            for round_index in range(args.rounds):
                order = [*servers, "in-process"]
                order = order[round_index % len(order):] + order[:round_index % len(order)]
                for mode in order:
                    if mode == "in-process":
                        level = asyncio.run(inprocess_level(chat, batch, concurrency))
                    else:
                        level = asyncio.run(server_level(servers[mode][1], mode, batch, concurrency, args.max_tokens))
                    results.append(level)
                    console.print(f"c={concurrency} round {round_index + 1} {mode}: "
                                  f"{level.tokens_per_second:.1f} tok/s, errors {level.errors}")
    finally:
        for process, _ in servers.values():
            stop_server(process)
    return results


def merged(results: list[LevelResult]) -> list[LevelResult]:
    """Rounds of one mode and concurrency added up (tokens, seconds, latencies)."""
    out: dict[tuple[str, int], LevelResult] = {}
    for r in results:
        key = (r.mode, r.concurrency)
        if key not in out:
            out[key] = LevelResult(r.mode, r.concurrency, 0, 0, 0.0, 0)
        m = out[key]
        m.requests += r.requests
        m.output_tokens += r.output_tokens
        m.seconds += r.seconds
        m.errors += r.errors
        m.ttft += r.ttft
        m.itl += r.itl
    return list(out.values())


def overheads(rows: list[LevelResult]) -> dict[str, dict[int, float]]:
    """1 - server throughput / in-process throughput, per server mode and concurrency."""
    base = {r.concurrency: r.tokens_per_second for r in rows if r.mode == "in-process abatch"}
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        if r.mode != "in-process abatch" and base.get(r.concurrency):
            out.setdefault(r.mode, {})[r.concurrency] = 1 - r.tokens_per_second / base[r.concurrency]
    return out


def table(rows: list[LevelResult], over: dict[str, dict[int, float]]) -> Table:
    out = Table(title="rstitch serve under load (default pair, greedy)")
    for name in ("mode", "streams", "requests", "tokens/s", "overhead", "TTFT p50/p95 ms", "ITL p50/p95 ms", "errors"):
        out.add_column(name, justify="left" if name == "mode" else "right")
    ms = lambda v: "-" if v is None else f"{1000 * v:.0f}"  # noqa: E731
    for r in sorted(rows, key=lambda r: (r.concurrency, r.mode)):
        s = r.summary()
        cost = over.get(r.mode, {}).get(r.concurrency)
        out.add_row(r.mode, str(r.concurrency), str(r.requests), f"{r.tokens_per_second:.1f}",
                    "-" if cost is None else f"{cost:+.1%}", f"{ms(s['ttft_p50'])} / {ms(s['ttft_p95'])}",
                    f"{ms(s['itl_p50'])} / {ms(s['itl_p95'])}", str(r.errors))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--min-requests", type=int, default=8, help="requests per level at least (default: 8)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per level (default: 2)")
    parser.add_argument("--ray", action="store_true", help="also against rstitch serve --ray --replicas 2")
    parser.add_argument("--start-timeout", type=float, default=600)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the server and of this process (OMP_NUM_THREADS); default: torch's")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    console = Console(width=150)
    rows = merged(sweep(args, console))
    over = overheads(rows)
    console.print(table(rows, over))
    if args.json:
        payload = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                   "rows": [r.summary() for r in rows],
                   "overhead": {mode: {str(c): v for c, v in levels.items()} for mode, levels in over.items()},
                   "errors": sum(r.errors for r in rows)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if all(r.errors == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
