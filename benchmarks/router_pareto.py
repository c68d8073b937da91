"""R-Stitch+ (learned routers) against the fixed-threshold sweep of R-Stitch, on the held-out quality suite.

For each item, every configuration decodes the same chat prompt back to back, in an order rotated
by one per item (load drifts on a shared machine hit all alike): the LLM alone (the speedup
baseline), R-Stitch at each tau, and each learned router (folders from ``rstitch train-router``).
All greedy, same ``max_new_tokens``.

Per configuration: accuracy (``item.is_correct``), mean latency per answer (wall clock around one
call on the already-encoded prompt), SLM share of the output tokens, speedup against the LLM alone
(total LLM-alone seconds / total seconds), and, with a cost model, the predicted speedup (the
pair's cost model on each answer's forward passes: free of machine noise).

Then the Pareto front (speedup, accuracy) of the fixed-threshold sweep, and for each learned
router its margin: accuracy above the front at its speedup, and speedup beyond the front at its
accuracy, both against the front as a step (the best tau point at least as fast / as accurate) and
as a straight-line interpolation between neighbouring front points. A router is "on or beyond the
front" when no tau point is at least as good in both and better in one.

Router overhead: mean seconds per ``wants_llm`` call of each learned router during the run,
against the mean SLM decode pass (its hidden state is read from the same pass).

    python benchmarks/router_pareto.py --routers rstitch_engine/routers/smollm2-135m-instruct \
        results/router_models/lam0.2 --json results/router_pareto.json --plot results/router_pareto.png
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rstitch_engine import EntropyRouter, GenerationSettings, RouterBase, RouterState, StitchEngine
from rstitch_engine.decoding.learned_router import LearnedRouter
from rstitch_engine.measure.quality import QualityItem, quality_suite
from rstitch_engine.models.cost_model import PairCostModel
from rstitch_engine.models.defaults import DEFAULT_LLM

DEFAULT_TAUS = (0.001, 0.01, 0.02, 0.03, 0.05, 0.1)


@dataclass(frozen=True)
class Config:
    """One decoder under test: the LLM alone, an entropy threshold, or a learned router."""

    name: str
    kind: str
    """'llm', 'tau' or 'learned'."""
    tau: float | None = None
    router: LearnedRouter | None = None


class TimedRouter(RouterBase):
    """Wraps a learned router and accumulates the time spent in ``wants_llm``."""

    needs_hidden_state = True

    def __init__(self, inner: LearnedRouter) -> None:
        self.inner, self.calls, self.seconds = inner, 0, 0.0

    @property
    def threshold(self) -> float:
        return self.inner.threshold

    def wants_llm(self, state: RouterState) -> bool:
        start = time.perf_counter()
        answer = self.inner.wants_llm(state)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return answer


def learned_name(router: LearnedRouter, folder: Path) -> str:
    """'R-Stitch+ lambda=0.5, 20 DAPO steps' from the router's training record, else the folder's name."""
    lam, steps = router.config.training.get("lam"), router.config.training.get("trained_steps")
    if not isinstance(lam, (int, float)):
        return f"R-Stitch+ {folder.name}"
    return f"R-Stitch+ lambda={lam:g}" + (f", {steps} DAPO steps" if isinstance(steps, int) else "")


def configs_for(taus: Sequence[float], router_folders: Sequence[Path]) -> list[Config]:
    configs = [Config("LLM alone", "llm")]
    configs += [Config(f"R-Stitch tau={tau:g}", "tau", tau) for tau in taus]
    for folder in router_folders:
        router = LearnedRouter.load(folder)
        configs.append(Config(learned_name(router, folder), "learned", router.threshold, router))
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise SystemExit(f"two configurations share a name: {names}")
    return configs


def run_config(engine: StitchEngine, config: Config, prompt_ids: list[int], settings: GenerationSettings,
               cost: PairCostModel | None) -> dict[str, Any]:
    """One answer, timed with the wall clock around the call."""
    if config.kind == "llm":
        start = time.perf_counter()
        alone = engine.decode_alone("llm", prompt_ids, settings)
        seconds = time.perf_counter() - start
        tokens = len(alone.token_ids)
        predicted = cost.alone_seconds("llm", len(prompt_ids), max(tokens, 1)) if cost else None
        return {"text": alone.text, "tokens": tokens, "slm_tokens": 0, "seconds": seconds, "predicted": predicted,
                "router_calls": 0, "router_seconds": 0.0, "slm_decode_passes": 0, "slm_decode_seconds": 0.0}
    router = TimedRouter(config.router) if config.router is not None else EntropyRouter(config.tau)  # type: ignore[arg-type]
    start = time.perf_counter()
    stream = engine.stream(prompt_ids, settings, router)
    text = "".join(event.text for event in stream)
    seconds = time.perf_counter() - start
    stats = stream.stats
    return {
        "text": text, "tokens": stats.output_tokens, "slm_tokens": stats.slm_tokens, "seconds": seconds,
        "predicted": cost.predict(stream.request.records()) if cost else None,
        "router_calls": getattr(router, "calls", 0), "router_seconds": getattr(router, "seconds", 0.0),
        "slm_decode_passes": stats.slm.decode_passes, "slm_decode_seconds": stats.slm.decode_seconds,
        "switches": stats.switches_to_llm,
    }


def benchmark(engine: StitchEngine, items: Sequence[QualityItem], configs: Sequence[Config],
              settings: GenerationSettings, cost: PairCostModel | None, progress: bool = True) -> list[dict[str, Any]]:
    """Every configuration on every item, rotated per item; one record per (item, configuration)."""
    encoded = [engine.encode(item.messages()) for item in items]
    for config in configs:  # warm-up, untimed
        run_config(engine, config, encoded[0], settings, cost)
    records = []
    for index, (item, prompt_ids) in enumerate(tqdm(list(zip(items, encoded)), desc="items", disable=not progress)):
        shift = index % len(configs)
        order = list(configs[shift:]) + list(configs[:shift])
        answers = {config.name: run_config(engine, config, prompt_ids, settings, cost) for config in order}
        llm = answers["LLM alone"]
        for config in configs:
            answer = answers[config.name]
            records.append({"item": item.id, "skill": item.skill, "config": config.name, "kind": config.kind,
                            "tau": config.tau, "correct": item.is_correct(answer["text"]),
                            "llm_alone_seconds": llm["seconds"], "llm_alone_predicted": llm["predicted"], **answer})
    return records


def summarise(records: Sequence[dict[str, Any]], configs: Sequence[Config]) -> list[dict[str, Any]]:
    rows = []
    for config in configs:
        mine = [r for r in records if r["config"] == config.name]
        seconds = sum(r["seconds"] for r in mine)
        tokens = sum(r["tokens"] for r in mine)
        row = {
            "config": config.name, "kind": config.kind, "tau": config.tau, "items": len(mine),
            "accuracy": sum(r["correct"] for r in mine) / len(mine),
            "latency": seconds / len(mine),
            "tokens": tokens / len(mine),
            "slm_share": sum(r["slm_tokens"] for r in mine) / max(tokens, 1),
            "speedup": sum(r["llm_alone_seconds"] for r in mine) / seconds,
            "predicted_speedup": (sum(r["llm_alone_predicted"] for r in mine) / sum(r["predicted"] for r in mine)
                                  if mine[0]["predicted"] is not None else None),
        }
        passes = sum(r["slm_decode_passes"] for r in mine)
        if passes:  # the SLM decode pass; a learned router's includes reading out the hidden state
            row["slm_decode_step_seconds"] = sum(r["slm_decode_seconds"] for r in mine) / passes
        calls = sum(r["router_calls"] for r in mine)
        if config.kind == "learned" and calls and passes:
            per_call = sum(r["router_seconds"] for r in mine) / calls
            row.update(router_calls=calls, router_seconds_per_call=per_call,
                       router_overhead=per_call / row["slm_decode_step_seconds"])
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- Pareto front and margins


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated (speedup, accuracy) points, by increasing speedup (so decreasing accuracy)."""
    front = [p for p in points
             if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def margins(point: tuple[float, float], front: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """How far ``point`` (speedup, accuracy) lies beyond the front (positive: beyond)."""
    s, a = point
    faster = [q[1] for q in front if q[0] >= s]
    more_accurate = [q[0] for q in front if q[1] >= a]
    dominated = any(q[0] >= s and q[1] >= a and q != point for q in front)
    return {
        "dominated": dominated,
        "accuracy_margin_step": a - max(faster) if faster else None,
        "speedup_margin_step": s - max(more_accurate) if more_accurate else None,
        "accuracy_margin_interpolated": a - _interpolate(front, s, 0, 1),
        "speedup_margin_interpolated": _speedup_margin(front, s, a),
    }


def _interpolate(front: Sequence[tuple[float, float]], x: float, xi: int, yi: int) -> float:
    """The front's y at x, on straight lines between neighbouring points (clamped at the ends)."""
    ordered = sorted(front, key=lambda p: p[xi])
    if x <= ordered[0][xi]:
        return ordered[0][yi]
    if x >= ordered[-1][xi]:
        return ordered[-1][yi]
    for lo, hi in itertools.pairwise(ordered):
        if lo[xi] <= x <= hi[xi]:
            t = (x - lo[xi]) / (hi[xi] - lo[xi]) if hi[xi] > lo[xi] else 0.0
            return lo[yi] + t * (hi[yi] - lo[yi])
    return ordered[-1][yi]


def _speedup_margin(front: Sequence[tuple[float, float]], s: float, a: float) -> float | None:
    """s minus the front's (interpolated) speedup at accuracy a; None above the front's best accuracy."""
    if a > max(q[1] for q in front):
        return None
    return s - _interpolate(front, a, 1, 0)


def pareto_report(rows: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """The tau sweep's front on (``key``, accuracy) and each learned router's margins against it."""
    sweep = [(r[key], r["accuracy"]) for r in rows if r["kind"] == "tau" and r[key] is not None]
    if not sweep:
        return {}
    front = pareto_front(sweep)
    return {
        "front": [{"speedup": s, "accuracy": a} for s, a in front],
        "routers": {r["config"]: margins((r[key], r["accuracy"]), front)
                    for r in rows if r["kind"] == "learned" and r[key] is not None},
    }


# ----------------------------------------------------------------------------- output


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| configuration | accuracy | latency (s) | tokens | SLM share | speedup | predicted speedup |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        predicted = "-" if r["predicted_speedup"] is None else f"{r['predicted_speedup']:.2f}x"
        lines.append(f"| {r['config']} | {r['accuracy']:.1%} | {r['latency']:.3f} | {r['tokens']:.1f} | "
                     f"{r['slm_share']:.1%} | {r['speedup']:.2f}x | {predicted} |")
    return "\n".join(lines)


def margins_table(report: dict[str, Any], basis: str) -> str:
    lines = [f"Margins against the tau sweep's Pareto front ({basis}):", "",
             ("| router | on/beyond front | acc. margin at equal speedup (step / line) | "
             "speedup margin at equal accuracy (step / line) |"), "|---|---|---|---|"]

    def fmt(value: float | None, percent: bool) -> str:
        if value is None:
            return "n/a"
        return f"{value:+.1%}" if percent else f"{value:+.2f}x"

    for name, m in report.get("routers", {}).items():
        lines.append(f"| {name} | {'no' if m['dominated'] else 'yes'} | "
                     f"{fmt(m['accuracy_margin_step'], True)} / {fmt(m['accuracy_margin_interpolated'], True)} | "
                     f"{fmt(m['speedup_margin_step'], False)} / {fmt(m['speedup_margin_interpolated'], False)} |")
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], report: dict[str, Any], key: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sweep = [r for r in rows if r["kind"] == "tau"]
    ax.scatter([r[key] for r in sweep], [r["accuracy"] for r in sweep], color="tab:blue", label="R-Stitch (tau sweep)")
    for r in sweep:
        ax.annotate(f"{r['tau']:g}", (r[key], r["accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = report.get("front", [])
    if front:
        xs, ys = [p["speedup"] for p in front], [p["accuracy"] for p in front]
        ax.plot(xs, ys, color="tab:blue", linestyle="--", linewidth=1, label="Pareto front of the sweep")
    learned = [r for r in rows if r["kind"] == "learned"]
    ax.scatter([r[key] for r in learned], [r["accuracy"] for r in learned], color="tab:red", marker="*", s=140,
               label="R-Stitch+ (learned)", zorder=3)
    for r in learned:
        ax.annotate(r["config"].replace("R-Stitch+ ", ""), (r[key], r["accuracy"]), textcoords="offset points",
                    xytext=(5, -10), fontsize=8, color="tab:red")
    llm = [r for r in rows if r["kind"] == "llm"]
    ax.scatter([r[key] for r in llm], [r["accuracy"] for r in llm], color="black", marker="s", label="LLM alone")
    ax.set_xlabel("predicted speedup vs LLM alone" if key == "predicted_speedup" else "speedup vs LLM alone (wall clock)")
    ax.set_ylabel("accuracy (held-out quality suite)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routers", nargs="*", type=Path, default=[],
                        help="learned router folders (default: the shipped router of the default pair)")
    parser.add_argument("--taus", default=",".join(f"{t:g}" for t in DEFAULT_TAUS), help="comma-separated thresholds")
    parser.add_argument("--slm", default=None, help="SLM or draft folder (default: the default pair's)")
    parser.add_argument("--llm", default=DEFAULT_LLM)
    parser.add_argument("--part", default="heldout", choices=["heldout", "tuning", "all"])
    parser.add_argument("--limit", type=int, default=None, help="only the first N items")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--cost-model", type=Path, default=None, help="PairCostModel JSON for predicted speedups")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="write summary, margins and every answer here")
    parser.add_argument("--plot", type=Path, default=None, help="write the speedup-accuracy plot (PNG) here")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def print_router_overheads(rows: list[dict[str, Any]]) -> None:
    """What consulting a learned router costs, per call and against one SLM decode pass."""
    overheads = [r for r in rows if "router_overhead" in r]
    tau_steps = [r["slm_decode_step_seconds"] for r in rows if r["kind"] == "tau" and "slm_decode_step_seconds" in r]
    if not overheads:
        return
    print("\nRouter overhead per consulted position (NumPy MLP) vs one SLM decode pass:")
    for r in overheads:
        print(f"  {r['config']}: {r['router_seconds_per_call'] * 1e6:.0f} us per call vs "
              f"{r['slm_decode_step_seconds'] * 1e3:.1f} ms per SLM step = {r['router_overhead']:.2%} "
              f"({r['router_calls']} calls)")
    if tau_steps:
        print(f"  SLM decode pass with the hidden state read out (learned routers) vs without (tau sweep): "
              f"{overheads[0]['slm_decode_step_seconds'] * 1e3:.1f} ms vs "
              f"{sum(tau_steps) / len(tau_steps) * 1e3:.1f} ms")


def main(argv: Sequence[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)

    from rstitch_engine.decoding.learned_router import DEFAULT_ROUTER

    folders = args.routers or [DEFAULT_ROUTER]
    taus = [float(t) for t in args.taus.split(",") if t.strip()]
    configs = configs_for(taus, folders)
    items = quality_suite(args.part)[: args.limit]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    cost = PairCostModel.load(args.cost_model) if args.cost_model else None
    engine = StitchEngine.from_pretrained(args.llm, args.slm, device=args.device, dtype=args.dtype)
    started = time.perf_counter()
    records = benchmark(engine, items, configs, settings, cost, progress=not args.no_progress)
    rows = summarise(records, configs)
    reports = {"wall": pareto_report(rows, "speedup")}
    if cost is not None:
        reports["predicted"] = pareto_report(rows, "predicted_speedup")
    pair = f"{engine.pair.slm.name}+{engine.pair.llm.name}"
    print(f"\n{len(items)} items of the {args.part} part, max_new_tokens={args.max_new_tokens}, pair {pair}, "
          f"{time.perf_counter() - started:.0f} s\n")
    print(markdown_table(rows))
    for basis, report in reports.items():
        print()
        print(margins_table(report, "wall-clock speedup" if basis == "wall" else "cost-model speedup"))
    print_router_overheads(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "settings": {"part": args.part, "items": len(items), "max_new_tokens": args.max_new_tokens, "pair": pair,
                         "taus": taus, "routers": [str(f) for f in folders], "cost_model": str(args.cost_model),
                         "machine": platform.platform(), "processor": platform.processor()},
            "summary": rows, "pareto": reports, "records": records,
        }, indent=1, default=_json_default))
    if args.plot:
        plot(rows, reports["wall"], "speedup", args.plot, f"R-Stitch+ vs tau sweep, {pair}, {len(items)} items")
        if cost is not None:
            predicted_path = args.plot.with_name(args.plot.stem + "_predicted" + args.plot.suffix)
            plot(rows, reports["predicted"], "predicted_speedup", predicted_path,
                 f"R-Stitch+ vs tau sweep (cost-model speedup), {pair}")
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


if __name__ == "__main__":
    raise SystemExit(main())
