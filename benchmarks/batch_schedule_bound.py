"""How far any schedule of the batched scheduler could go on this machine: measured passes, simulated schedules.

``batched_throughput.py`` measures the engine; this asks what limits it. For each concurrency c
it runs the first c prompts of the same fixed set (48 new tokens, greedy, the default pair) twice:

* one by one (``max_batch_size=1``): each request's own sequence of passes (model, new tokens),
  read from its ``ForwardRecord``s, and the one-by-one wall time;
* batched (the engine as shipped): its wall time and every batched pass (rows, tokens, seconds).

From all those passes it fits, per model, the cost of one pass as ``a + b * rows + c * tokens``
(least squares; printed, with its error on the batched passes), and replays the lone sequences
through simulated schedules under that cost: the engine's own policy (a step runs one pass per
model, the LLM's rows waiting up to ``llm_wait_steps`` steps for company), a grid of its two
settings, and an *oracle* that knows each request's remaining work and never delays the request
with the most of it. Batching changes no request's sequence of passes (that is what keeps answers
exact), so over these policies the best simulated speedup says what scheduling alone can add; the
row "flat passes" replays the best policy with every pass costing what one row costs, which is
what a device where a pass costs about the same for 1 row as for 16 (a GPU) would allow, and the
row "no per-row cost" with the fitted per-row term moved into the intercept (what removing the
per-row cache copies and bookkeeping of a pass would allow, one row's cost unchanged).

    python benchmarks/batch_schedule_bound.py --json benchmarks/results/batch_schedule_bound.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batched_throughput import prompts  # noqa: E402 - the same fixed prompt set

from rstitch_engine import GenerationSettings, StitchEngine  # noqa: E402
from rstitch_engine.decoding.engine import read_in_turn  # noqa: E402
from rstitch_engine.decoding.scheduler import LLM_GATHER_FRACTION  # noqa: E402
from rstitch_engine.models.hardware import processor_name  # noqa: E402
from rstitch_engine.models.loaded import ForwardRecord  # noqa: E402

Step = tuple[str, int]
"""One pass of one request: (model role, tokens fed)."""


def lone_sequence(records: Sequence[ForwardRecord]) -> list[Step]:
    """A request's passes in the order it ran them: by the position each pass predicts
    (cached + new tokens); at a tie the SLM's pass came first (its token was discarded, the LLM's
    pass then predicted the same position)."""
    ordered = sorted(records, key=lambda r: (r.cached_tokens + r.new_tokens, r.role != "slm"))
    return [(r.role, r.new_tokens) for r in ordered]


def shared_passes(all_records: Sequence[Sequence[ForwardRecord]]) -> list[tuple[str, int, int, float]]:
    """The distinct passes of a batched run, (role, rows, tokens, seconds): rows of one pass share its record's seconds."""
    passes: dict[tuple[str, float, int], list[int]] = {}
    for records in all_records:
        for r in records:
            passes.setdefault((r.role, r.seconds, r.batch_size), []).append(r.new_tokens)
    return [(role, len(tokens), sum(tokens), seconds) for (role, seconds, _), tokens in passes.items()]


@dataclass(frozen=True)
class PassCost:
    """seconds = intercept + per_row * rows + per_token * tokens, for one model."""

    intercept: float
    per_row: float
    per_token: float

    def __call__(self, rows: int, tokens: int) -> float:
        return self.intercept + self.per_row * rows + self.per_token * tokens


def fit_cost(passes: Sequence[tuple[int, int, float]]) -> PassCost:
    """Least squares over (rows, tokens, seconds) samples."""
    design = np.array([[1.0, rows, tokens] for rows, tokens, _ in passes])
    seconds = np.array([s for _, _, s in passes])
    (a, b, c), *_ = np.linalg.lstsq(design, seconds, rcond=None)
    return PassCost(float(a), float(b), float(c))


Policy = Callable[[list[int], dict[int, Step], list[int], list[float]], set[int]]
"""(live requests, each one's next pass, steps each has waited for the LLM, remaining lone seconds) -> who runs."""


def gathering(wait_steps: int, fraction: float) -> Policy:
    """The engine's policy (``decoding.scheduler``): LLM rows wait for company up to ``wait_steps`` steps."""
    def choose(live: list[int], needs: dict[int, Step], waited: list[int], remaining: list[float]) -> set[int]:
        on_llm = [i for i in live if needs[i][0] == "llm"]
        if (wait_steps == 0 or not on_llm or len(on_llm) == len(live)
                or max(waited[i] for i in on_llm) >= wait_steps or len(on_llm) >= fraction * len(live)):
            return set(live)
        return {i for i in live if needs[i][0] != "llm"}
    return choose


def critical_first(wait_steps: int, fraction: float) -> Policy:
    """Gathering, except that the LLM's pass never waits when the request with the most remaining work needs it."""
    gather = gathering(wait_steps, fraction)

    def choose(live: list[int], needs: dict[int, Step], waited: list[int], remaining: list[float]) -> set[int]:
        critical = max(live, key=lambda i: remaining[i])
        return set(live) if needs[critical][0] == "llm" else gather(live, needs, waited, remaining)
    return choose


def simulate(sequences: list[list[Step]], policy: Policy, cost: dict[str, Callable[[int, int], float]]) -> float:
    """Seconds to run every sequence to its end, one pass per model per step, as ``policy`` chooses."""
    position = [0] * len(sequences)
    waited = [0] * len(sequences)
    # left[i][k]: lone seconds of request i's passes from its k-th on (0 once it has ended)
    left = [list(itertools.accumulate((cost[role](1, n) for role, n in reversed(seq)), initial=0.0))[::-1]
            for seq in sequences]
    seconds = 0.0
    while True:
        live = [i for i, seq in enumerate(sequences) if position[i] < len(seq)]
        if not live:
            return seconds
        needs = {i: sequences[i][position[i]] for i in live}
        remaining = [left[i][position[i]] for i in range(len(sequences))]
        running = policy(live, needs, waited, remaining)
        for role in ("slm", "llm"):
            rows = [needs[i][1] for i in running if needs[i][0] == role]
            if rows:
                seconds += cost[role](len(rows), sum(rows))
        for i in live:
            if i in running:
                position[i] += 1
                waited[i] = 0
            elif needs[i][0] == "llm":
                waited[i] += 1


def measure(engine: StitchEngine, level: int, settings: GenerationSettings) -> dict[str, Any]:
    batch = prompts(level)
    serial = StitchEngine(engine.pair, engine.router, engine.settings, max_batch_size=1)
    start = time.perf_counter()
    lone_records, lone_tokens = [], 0
    for prompt in batch:
        stream = serial.stream(prompt, settings)
        lone_tokens += len(list(stream))
        lone_records.append(stream.request.records())
    one_by_one = time.perf_counter() - start
    streams = [engine.stream(prompt, settings) for prompt in batch]
    start = time.perf_counter()
    events = read_in_turn(streams)
    batched = time.perf_counter() - start
    return {"lone_records": lone_records, "batched_records": [s.request.records() for s in streams],
            "one_by_one_seconds": one_by_one, "batched_seconds": batched,
            "one_by_one_tokens": lone_tokens, "batched_tokens": sum(len(e) for e in events)}


def analyse(runs: dict[int, dict[str, Any]], wait_steps: int) -> dict[str, Any]:
    lone_passes = [(r.role, 1, r.new_tokens, r.seconds) for run in runs.values() for recs in run["lone_records"] for r in recs]
    batched = [p for run in runs.values() for p in shared_passes(run["batched_records"])]
    costs = {role: fit_cost([(rows, tokens, s) for r, rows, tokens, s in lone_passes + batched if r == role])
             for role in ("slm", "llm")}
    errors = {role: float(np.median([abs(costs[role](rows, tokens) - s) / s for r, rows, tokens, s in batched if r == role]))
              for role in ("slm", "llm")}
    flat = {role: (lambda rows, tokens, c=costs[role]: c(1, max(1, tokens // rows))) for role in ("slm", "llm")}
    rowless = {role: PassCost(c.intercept + c.per_row, 0.0, c.per_token) for role, c in costs.items()}
    rows = []
    for level, run in sorted(runs.items()):
        sequences = [lone_sequence(recs) for recs in run["lone_records"]]
        serial = sum(costs[role](1, n) for seq in sequences for role, n in seq)
        critical = max(sum(costs[role](1, n) for role, n in seq) for seq in sequences)
        grid = {f"wait {w}, fraction {f}": gathering(w, f) for w, f in itertools.product((0, 1, 2, 4, 8, 16), (0.5, 0.75, 1.0))}
        grid |= {f"critical-first, wait {w}, fraction {f}": critical_first(w, f)
                 for w, f in itertools.product((2, 4, 8, 16), (0.75, 1.0))}
        simulated = {name: serial / simulate(sequences, policy, costs) for name, policy in grid.items()}
        best = max(simulated, key=simulated.__getitem__)
        engine_policy = f"wait {wait_steps}, fraction {LLM_GATHER_FRACTION}"
        measured = (run["batched_tokens"] / run["batched_seconds"]) / (run["one_by_one_tokens"] / run["one_by_one_seconds"])
        rows.append({"concurrency": level, "measured_speedup": measured,
                     "simulated_engine_policy": simulated[engine_policy],
                     "best_policy": best, "simulated_best_policy": simulated[best],
                     "simulated_no_per_row_cost": serial / simulate(sequences, grid[best], rowless),
                     "simulated_flat_passes": serial / simulate(sequences, grid[best], flat),
                     "critical_path_bound": serial / critical,
                     "simulated_policies": simulated})
    return {"costs": {role: vars(c) for role, c in costs.items()}, "cost_fit_median_relative_error": errors, "rows": rows}


def load_engine() -> StitchEngine:
    """The default pair, batched as shipped (the test suite swaps in a tiny pair)."""
    return StitchEngine.from_pretrained(max_batch_size=16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="4,8,16", help="comma-separated numbers of concurrent requests")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path, help="write the fitted costs and the table here")
    args = parser.parse_args(argv)
    engine = load_engine()
    settings = GenerationSettings(max_new_tokens=args.max_tokens)
    engine.generate_batch(prompts(2), GenerationSettings(max_new_tokens=4))  # warm up
    levels = [int(x) for x in args.concurrency.split(",") if x]
    runs = {level: measure(engine, level, settings) for level in levels}
    result = analyse(runs, engine._scheduler.llm_wait_steps)
    result |= {"processor": processor_name(), "platform": platform.platform(), "dtype": str(engine.pair.llm.dtype),
               "max_new_tokens": args.max_tokens}
    table = Table(title=f"Batched speedup over one-by-one: measured and simulated ({result['processor']}, {result['dtype']})")
    for column in ("concurrent", "measured", "simulated: engine policy", "best policy", "which",
                   "no per-row cost", "flat passes (GPU-like)", "critical-path bound"):
        table.add_column(column)
    for row in result["rows"]:
        table.add_row(str(row["concurrency"]), f"{row['measured_speedup']:.2f}x", f"{row['simulated_engine_policy']:.2f}x",
                      f"{row['simulated_best_policy']:.2f}x", row["best_policy"], f"{row['simulated_no_per_row_cost']:.2f}x",
                      f"{row['simulated_flat_passes']:.2f}x",
                      f"{row['critical_path_bound']:.2f}x")
    console = Console(width=200)
    console.print(table)
    for role, cost in result["costs"].items():
        console.print(f"{role} pass: {cost['intercept'] * 1e3:.1f} ms + {cost['per_row'] * 1e3:.2f} ms/row + "
                      f"{cost['per_token'] * 1e3:.2f} ms/token (median error on batched passes "
                      f"{result['cost_fit_median_relative_error'][role]:.0%})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
