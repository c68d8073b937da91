"""Throughput of concurrent requests on the default pair: one by one, batched, and the LLM alone batched.

For each concurrency c in ``--concurrency`` (default 1, 2, 4, 8, 16), the first c prompts of a
fixed set of short held-out questions of the quality suite are answered, side by side in one run:

* **one-by-one stitched**: an engine with ``max_batch_size=1``, the requests one after another
  (what a LangChain ``batch()`` got before batching);
* **batched stitched**: the same pair with ``max_batch_size=16``, ``generate_batch`` on all c
  (what ``batch()``, ``abatch()``, concurrent threads and async query engines get now: LLM rows
  wait up to ``DEFAULT_LLM_WAIT_STEPS`` steps for company, see ``decoding.scheduler``);
* **batched, LLM every step**: the same with ``llm_wait_steps=0`` (the LLM's pass runs in every
  step that has an LLM row), to show what gathering LLM rows adds;
* **batched from threads**: the batched engine, c threads each calling ``generate`` on one prompt
  (what LangChain's ``batch()`` thread pool and ``asyncio.to_thread`` callers do: each thread's
  reads drive the shared steps in turn, see ``models.openmp`` for why that needs care on CPU);
* **LLM alone, batched**: transformers' ``generate`` on the LLM with left padding, greedy, the
  whole batch in one call.

Each configuration is timed on the same prompts and ``max_new_tokens``; tokens/s counts each
request's own tokens up to its EOS. ``speedup_vs_sequential`` is tokens/s over one-by-one stitched
at the same concurrency. The order of the five configurations is rotated per concurrency (and per
repeat, with ``--repeats``: the table then shows each configuration's median) so that the shared
machine's load drifts over all of them.

What limits the batched speedup is reported with it: the LLM's passes in the batched run (each
counted once, from the requests' ``pass_share``) and their rows per pass; the share of the slowest
request's wall time spent in passes it took part in (the rest it waited for the other model's
pass or for LLM rows to gather); and the **critical-path bound**, one-by-one seconds over the
slowest request's own one-by-one seconds: batching does not change any request's sequence of
passes, and a batched pass costs at least its lone pass, so no schedule of these requests beats it.

``--keep-openmp-teams`` turns off the engine's release of each calling thread's OpenMP team after
its torch work (``rstitch_engine.models.openmp``), to show what it is for: threads driving the
steps in turn each keep a team, and on CPU every pass of the process runs throttled.

After the sweep, ``--memory-requests`` short
requests are run batched and the process's resident memory is read before and after (with the
engine's live-request count) to show that memory returns to its idle level.

    python benchmarks/batched_throughput.py --json benchmarks/results/batched_throughput.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from rich.console import Console
from rich.table import Table

from rstitch_engine import GenerationSettings, StitchEngine
from rstitch_engine.measure.quality import quality_suite
from rstitch_engine.models import openmp
from rstitch_engine.models.hardware import processor_name

CONFIGS = ("one_by_one_stitched", "batched_stitched", "batched_llm_every_step", "batched_threads", "llm_alone_batched")


def prompts(count: int) -> list[list[dict[str, str]]]:
    """The first ``count`` held-out questions of the quality suite, as chat messages."""
    return [[{"role": "user", "content": item.question}] for item in quality_suite("heldout")[:count]]


def own_tokens(ids: Sequence[int], eos: frozenset[int]) -> int:
    """Tokens up to and including the first EOS (a padded ``generate`` row continues past it)."""
    for index, token in enumerate(ids):
        if token in eos:
            return index + 1
    return len(ids)


def run_one_by_one(engine: StitchEngine, batch: list, settings: GenerationSettings) -> dict[str, Any]:
    start = time.perf_counter()
    results = [engine.generate(p, settings) for p in batch]
    return _summary(results, time.perf_counter() - start)


def run_batched(engine: StitchEngine, batch: list, settings: GenerationSettings) -> dict[str, Any]:
    start = time.perf_counter()
    results = engine.generate_batch(batch, settings)
    return _summary(results, time.perf_counter() - start)


def _summary(results: list, seconds: float) -> dict[str, Any]:
    """Throughput and the batch's shape: passes per model (each counted once however many rows it
    had), rows per pass, and how the slowest request spent its wall time."""
    stats = [r.stats for r in results]
    tokens = sum(s.output_tokens for s in stats)
    slowest = max(stats, key=lambda s: s.wall_seconds)
    passes = {role: sum(getattr(s, role).pass_share for s in stats) for role in ("slm", "llm")}
    rows = {role: sum(getattr(s, role).forward_passes for s in stats) for role in ("slm", "llm")}
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
            "slm_share": sum(s.slm_tokens for s in stats) / max(tokens, 1),
            "switches_per_100_tokens": 100 * sum(s.switches_to_llm for s in stats) / max(tokens, 1),
            "largest_batch": max(s.largest_batch for s in stats),
            "slm_passes": round(passes["slm"], 6), "llm_passes": round(passes["llm"], 6),
            "llm_rows_per_pass": rows["llm"] / passes["llm"] if passes["llm"] else 0.0,
            "slowest_request_seconds": slowest.wall_seconds,
            "slowest_request_tokens": {"slm": slowest.slm_tokens, "llm": slowest.llm_tokens},
            "slowest_request_llm_passes": slowest.llm.forward_passes,
            "slowest_request_busy_share": slowest.busy_seconds / slowest.wall_seconds if slowest.wall_seconds else 0.0,
            "token_ids": [list(r.token_ids) for r in results]}


def run_threads(engine: StitchEngine, batch: list, settings: GenerationSettings) -> dict[str, Any]:
    """One thread per prompt, each calling ``engine.generate`` (results in prompt order)."""
    results: list[Any] = [None] * len(batch)
    errors: list[BaseException] = []

    def answer(index: int) -> None:
        try:
            results[index] = engine.generate(batch[index], settings)
        except BaseException as error:  # noqa: BLE001 - re-raised below, on the benchmark's thread
            errors.append(error)

    threads = [threading.Thread(target=answer, args=(index,)) for index in range(len(batch))]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return _summary(results, seconds)


@torch.inference_mode()
def run_llm_alone(engine: StitchEngine, batch: list, settings: GenerationSettings) -> dict[str, Any]:
    tokenizer, llm = engine.pair.tokenizer, engine.pair.llm
    rendered = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in batch]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        inputs = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(llm.device)
    finally:
        tokenizer.padding_side = side
    start = time.perf_counter()
    output = llm.model.generate(**inputs, max_new_tokens=settings.max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id or 0, eos_token_id=sorted(engine.pair.eos_token_ids))
    seconds = time.perf_counter() - start
    new = output[:, inputs["input_ids"].shape[1]:].tolist()
    tokens = sum(own_tokens(row, engine.pair.eos_token_ids) for row in new)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}


def resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_check(engine: StitchEngine, requests: int) -> dict[str, Any]:
    """Resident memory before and after ``requests`` short batched requests (16 at a time)."""
    settings = GenerationSettings(max_new_tokens=8)
    batch = prompts(16)
    engine.generate_batch(batch, settings)  # warm the allocator at this size
    gc.collect()
    before = resident_mib()
    for start in range(0, requests, 16):
        engine.generate_batch(batch[: min(16, requests - start)], settings)
    gc.collect()
    after = resident_mib()
    return {"requests": requests, "rss_mib_before": before, "rss_mib_after": after,
            "live_requests_after": engine._scheduler.live_requests}


def sweep(batched: StitchEngine, levels: list[int], settings: GenerationSettings, repeats: int = 1) -> list[dict[str, Any]]:
    serial = StitchEngine(batched.pair, batched.router, batched.settings, max_batch_size=1)
    every_step = StitchEngine(batched.pair, batched.router, batched.settings, batched.max_batch_size, llm_wait_steps=0)
    runners = {"one_by_one_stitched": lambda b: run_one_by_one(serial, b, settings),
               "batched_stitched": lambda b: run_batched(batched, b, settings),
               "batched_llm_every_step": lambda b: run_batched(every_step, b, settings),
               "batched_threads": lambda b: run_threads(batched, b, settings),
               "llm_alone_batched": lambda b: run_llm_alone(batched, b, settings)}
    rows = []
    for turn, level in enumerate(levels):
        batch = prompts(level)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
        for repeat in range(repeats):
            shift = (turn + repeat) % len(CONFIGS)
            for name in CONFIGS[shift:] + CONFIGS[:shift]:
                runs[name].append(runners[name](batch))
        rows.append(_row(level, runs))
        print(f"c={level}: " + ", ".join(f"{n} {tps:.1f} tok/s" for n, tps in rows[-1]["tokens_per_second"].items()),
              file=sys.stderr)
    return rows


def _row(level: int, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One concurrency level: the first run of each configuration, and the median tokens/s of its runs."""
    tokens_per_second = {n: statistics.median(r["tokens_per_second"] for r in measured) for n, measured in runs.items()}
    lone_ids = runs["one_by_one_stitched"][0]["token_ids"]
    same = {n: sum(a == b for a, b in zip(runs[n][0]["token_ids"], lone_ids))
            for n in ("batched_stitched", "batched_llm_every_step", "batched_threads")}
    configs = {n: {**{k: v for k, v in measured[0].items() if k != "token_ids"},
                   "tokens_per_second_runs": [r["tokens_per_second"] for r in measured]} for n, measured in runs.items()}
    one_by_one = configs["one_by_one_stitched"]
    return {"concurrency": level, "configs": configs, "tokens_per_second": tokens_per_second,
            "speedup_vs_sequential": {n: tps / tokens_per_second["one_by_one_stitched"]
                                      for n, tps in tokens_per_second.items()},
            # no schedule finishes these requests before the slowest of them would finish alone
            "critical_path_speedup_bound": one_by_one["seconds"] / one_by_one["slowest_request_seconds"],
            "identical_answers_batched_vs_one_by_one": same["batched_stitched"],
            "identical_answers_llm_every_step_vs_one_by_one": same["batched_llm_every_step"],
            "identical_answers_threads_vs_one_by_one": same["batched_threads"]}


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for column in ("concurrent", "one-by-one stitched", "batched stitched", "batched, LLM every step",
                   "batched from threads", "LLM alone batched", "batched vs one-by-one", "critical-path bound", "batched vs LLM batched",
                   "LLM passes (rows/pass)", "slowest request busy", "same answers"):
        table.add_column(column, justify="right")
    for row in rows:
        tps = row["tokens_per_second"]
        batched = row["configs"]["batched_stitched"]
        table.add_row(str(row["concurrency"]), f"{tps['one_by_one_stitched']:.1f} tok/s",
                      f"{tps['batched_stitched']:.1f} tok/s", f"{tps['batched_llm_every_step']:.1f} tok/s",
                      f"{tps['batched_threads']:.1f} tok/s",
                      f"{tps['llm_alone_batched']:.1f} tok/s",
                      f"{row['speedup_vs_sequential']['batched_stitched']:.2f}x",
                      f"{row['critical_path_speedup_bound']:.2f}x",
                      f"{tps['batched_stitched'] / tps['llm_alone_batched']:.2f}x",
                      f"{batched['llm_passes']:.0f} ({batched['llm_rows_per_pass']:.1f})",
                      f"{batched['slowest_request_busy_share']:.0%}",
                      f"{row['identical_answers_batched_vs_one_by_one']}/{row['concurrency']}")
    Console(width=200).print(table)  # wide enough for every column when piped


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,2,4,8,16", help="comma-separated request counts")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each configuration this many times per concurrency (rotating order); tables show the median")
    parser.add_argument("--memory-requests", type=int, default=200)
    parser.add_argument("--llm", default=None, help="default: the default pair's LLM")
    parser.add_argument("--slm", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--keep-openmp-teams", action="store_true",
                        help="ablation: skip the engine's release of each thread's OpenMP team (rstitch_engine.models.openmp)")
    parser.add_argument("--json", type=Path, default=None)
    return parser


def load_engine(pretrained: dict[str, str], device: str, dtype: str) -> StitchEngine:
    """The batched engine (``max_batch_size=16``, default ``llm_wait_steps``); the other configs share its pair."""
    return StitchEngine.from_pretrained(**pretrained, device=device, dtype=dtype, max_batch_size=16)


def main(argv: Sequence[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    if args.keep_openmp_teams:
        openmp._pause_all = lambda: None  # release_openmp_team then does nothing
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    pretrained = {} if args.llm is None else {"llm": args.llm, "slm": args.slm}
    batched = load_engine(pretrained, args.device, args.dtype)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    run_batched(batched, prompts(2), GenerationSettings(max_new_tokens=4))  # warm-up
    run_llm_alone(batched, prompts(2), GenerationSettings(max_new_tokens=4))
    started = time.perf_counter()
    rows = sweep(batched, levels, settings, args.repeats)
    memory = memory_check(batched, args.memory_requests) if args.memory_requests else None
    processor = processor_name(batched.pair.llm.device)
    dtype = str(batched.pair.llm.dtype).removeprefix("torch.")
    print_table(rows, f"{batched.pair.slm.name} + {batched.pair.llm.name}, {dtype} on {processor}, "
                      f"{args.max_new_tokens} new tokens, tau {batched.router.threshold}"
                      + (f", median of {args.repeats} runs" if args.repeats > 1 else ""))
    if memory:
        print(f"memory: {memory['rss_mib_before']:.0f} MiB resident before {memory['requests']} batched requests, "
              f"{memory['rss_mib_after']:.0f} MiB after; {memory['live_requests_after']} live requests left")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "batched_throughput", "command": " ".join(sys.argv), "pair": f"{batched.pair.slm.name}+"
            f"{batched.pair.llm.name}", "dtype": dtype, "threshold": batched.router.threshold,
            "max_new_tokens": args.max_new_tokens, "llm_wait_steps": batched.llm_wait_steps, "repeats": args.repeats,
            "openmp_teams_released": not args.keep_openmp_teams,
            "machine": platform.platform(), "processor": processor,
            "hardware": {"processor_name": processor}, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "seconds": time.perf_counter() - started,
            "rows": rows, "memory": memory}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
