"""Calibrate a pair's cost model on this device and check it on held-out passes.

Times forward passes of both models (exactly as the engine runs them) over a grid of (new tokens,
cached tokens), fits ``PairCostModel`` (grid knots + the smooth formula, see
``rstitch_engine/models/cost_model.py``), then measures a second, disjoint set of points (other new-token
counts and cache sizes, between the grid's) and reports the relative prediction error there,
separately for decode (one new token) and catch-up (several), per model. Fit and held-out points
are measured together in ``--repeats`` sweeps, each timing every (model, point) once in a new random
order; each point is the median over the sweeps.

    python benchmarks/cost_model.py --json results/cost_model_default_cpu.json     # default pair, saved
    python benchmarks/cost_model.py --slm-shape mini-s --llm-shape mini-l --out results/mini-cpu.json
    python benchmarks/cost_model.py --slm-shape r1-distill-qwen-1.5b --llm-shape r1-distill-qwen-7b --device cuda

With a real pair the model is saved to ``rstitch_engine/costs/<pair>-<device>-<dtype>.json`` unless ``--out``
says otherwise (the harness and ``shipped_cost_model`` find it there).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from harness import SHAPES, build_engine, pick_device  # noqa: E402

from rstitch_engine.measure.cost_calibration import measure_passes  # noqa: E402
from rstitch_engine.models.cost_model import (  # noqa: E402
    PairCostModel,
    PassCost,
    cost_model_path,
    device_name,
    pair_name,
)
from rstitch_engine.models.loaded import ForwardRecord  # noqa: E402

GRIDS = {
    # (fit new tokens, fit cached tokens, held-out new tokens, held-out cached tokens).
    # Every n up to 8 is a fit knot: at small n the pass time is not smooth, nor even monotone, in n
    # (GEMV for n = 1, then GEMM kernels whose blocking changes with n), so interpolating between
    # n = 4 and n = 8 can miss badly, and engine catch-ups are mostly that small. Held-out points use
    # cache sizes the fit never saw at every n, and new-token counts between the knots above 8.
    "full": ((1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32, 64, 128, 256), (0, 96, 192, 320, 448),
             (1, 3, 6, 14, 20, 48, 96, 192), (48, 256, 384)),
    "medium": ((1, 2, 3, 4, 5, 6, 7, 8, 10, 16, 24, 32, 64, 128), (0, 96, 192, 320, 448),
               (1, 3, 6, 12, 20, 48, 96), (48, 256, 384)),
    "quick": ((1, 2, 3, 4, 6, 8, 16, 32, 64), (0, 64, 192), (1, 3, 12, 48), (32, 128)),
}


def error_summary(model: PairCostModel, held_out: Sequence[ForwardRecord]) -> list[dict[str, Any]]:
    rows = []
    for role in ("slm", "llm"):
        for kind in ("decode", "catchup"):
            points = [r for r in held_out if r.role == role and (r.new_tokens == 1) == (kind == "decode")]
            errors = [(model.pass_seconds(role, r.new_tokens, r.cached_tokens) - r.seconds) / r.seconds for r in points]
            formula = model.slm if role == "slm" else model.llm
            formula_only = PassCost(formula.fixed, formula.per_token, formula.per_token_context)
            formula_errors = [abs(formula_only.seconds(r.new_tokens, r.cached_tokens) - r.seconds) / r.seconds
                              for r in points]
            worst = max(range(len(points)), key=lambda i: abs(errors[i]))
            rows.append({
                "model": role, "kind": kind, "points": len(points),
                "median_abs_rel_error": statistics.median(abs(e) for e in errors),
                "worst_abs_rel_error": abs(errors[worst]),
                "worst_at": {"new_tokens": points[worst].new_tokens, "cached_tokens": points[worst].cached_tokens,
                             "measured_s": points[worst].seconds},
                "formula_only_median_abs_rel_error": statistics.median(formula_errors),
                "formula_only_worst_abs_rel_error": max(formula_errors),
            })
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llm", default=None)
    p.add_argument("--slm", default=None)
    p.add_argument("--slm-layers", type=int, default=None, help="SLM: the first N layers of the real LLM")
    p.add_argument("--slm-shape", choices=sorted(SHAPES), default=None)
    p.add_argument("--llm-shape", choices=sorted(SHAPES), default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--grid", choices=sorted(GRIDS), default="full")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="where to save the fitted model "
                   "(default for a real pair: rstitch_engine/costs/<pair>-<device>-<dtype>.json)")
    p.add_argument("--json", type=Path, default=None, help="write the calibration report here")
    return p


def print_report(engine: Any, device_label: str, model: PairCostModel, summary: list[dict[str, Any]],
                 fit_points: int, held_points: int, repeats: int) -> None:
    """The held-out error table and the decode costs it implies."""
    print(f"Cost model of {engine.pair.slm.name} + {engine.pair.llm.name} on {device_label}: "
          f"{fit_points} fit points, {held_points} held-out points per model, median of {repeats}\n")
    print("| model | pass | held-out points | median abs. rel. error | worst | worst at (n, c) | formula alone: median / worst |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in summary:
        at = row["worst_at"]
        print(f"| {row['model'].upper()} | {row['kind']} | {row['points']} | {row['median_abs_rel_error']:.1%} | "
              f"{row['worst_abs_rel_error']:.1%} | ({at['new_tokens']}, {at['cached_tokens']}) | "
              f"{row['formula_only_median_abs_rel_error']:.1%} / {row['formula_only_worst_abs_rel_error']:.1%} |")
    decode = {role: model.pass_seconds(role, 1, 256) * 1000 for role in ("slm", "llm")}
    print(f"\nDecode at 256 cached tokens: SLM {decode['slm']:.2f} ms, LLM {decode['llm']:.2f} ms "
          f"(SLM/LLM cost ratio {decode['slm'] / decode['llm']:.2f}).")
    worst = max(row["worst_abs_rel_error"] for row in summary)
    print(f"Worst held-out error {worst:.1%}: {'within' if worst <= 0.10 else 'OVER'} the 10% acceptance bound.")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    engine, real = build_engine(args, device)
    fit_n, fit_c, held_n, held_c = GRIDS[args.grid]
    fit_points = list(itertools.product(fit_n, fit_c))
    held_points = list(itertools.product(held_n, held_c))
    for loaded in (engine.pair.slm, engine.pair.llm):  # warm-up
        measure_passes(loaded, [(1, 0), (8, 16)], repeats=2)
    with tqdm(total=2 * args.repeats * (len(fit_points) + len(held_points)), desc="passes", file=sys.stderr) as progress:
        records = measure_passes([engine.pair.slm, engine.pair.llm], fit_points + held_points, args.repeats,
                                 args.seed, on_pass=progress.update)
    held_set = set(held_points) - set(fit_points)
    fit_records = [r for r in records if (r.new_tokens, r.cached_tokens) not in held_set]
    held_records = [r for r in records if (r.new_tokens, r.cached_tokens) in held_set]
    pair, device_label = pair_name(engine.pair.slm.name, engine.pair.llm.name), device_name(device, engine.pair.llm.dtype)
    model = PairCostModel.fit(fit_records, pair=pair, device=device_label)
    summary = error_summary(model, held_records)

    print_report(engine, device_label, model, summary, len(fit_points), len(held_points), args.repeats)

    out = args.out if args.out is not None else (cost_model_path(pair, device_label) if real else None)
    if out is not None:
        model.save(out)
        print(f"saved the model to {out}")
    if args.json:
        report = {
            "benchmark": "cost_model", "command": " ".join(sys.argv), "pair": pair, "device": device_label,
            "machine": platform.platform(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "repeats": args.repeats, "grid": args.grid, "model": model.to_dict(), "held_out_errors": summary,
            "fit_passes": [r.__dict__ for r in fit_records], "held_out_passes": [r.__dict__ for r in held_records],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
