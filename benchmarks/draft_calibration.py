"""How well the draft's entropy marks where it would diverge from the LLM, per skill, on a suite part.

For each item: the LLM alone answers greedily; one teacher-forced SLM pass over that answer gives
the SLM's entropy, top probability and greedy token at every position
(``rstitch_engine.measure.calibration``). Prints a table per skill (AUROC of entropy for divergence,
ECE of the top probability, divergence rate, divergences a tau lets through) and writes JSON.
``--slm`` (repeatable) compares drafts on the very same LLM answers; without it, the shipped draft.

    python benchmarks/draft_calibration.py --json benchmarks/results/draft_calibration_heldout.json
    python benchmarks/draft_calibration.py --part tuning --slm DRAFT_A --slm DRAFT_B --json PATH
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from rstitch_engine import DEFAULT_LLM, StitchEngine
from rstitch_engine.measure.calibration import drafts_positions, summarise
from rstitch_engine.measure.generalisation import generalisation_suite
from rstitch_engine.models.hardware import processor_name
from rstitch_engine.models.loaded import LoadedModel


def run(engine: StitchEngine, items: Sequence[Any], max_new_tokens: int, taus: Sequence[float],
        slms: Sequence[LoadedModel] = ()) -> list[dict[str, Any]]:
    """One report per SLM of ``slms`` (default: the engine's own), all on the same LLM answers."""
    slms = list(slms) or [engine.pair.slm]
    per_skill: list[dict[str, list[Any]]] = [{} for _ in slms]
    started = time.perf_counter()
    for item in tqdm(items, desc="items", unit="item", file=sys.stderr):
        for found, positions in zip(per_skill, drafts_positions(engine, item.messages(), max_new_tokens, slms)):
            found.setdefault(item.skill, []).extend(positions)
    seconds = round(time.perf_counter() - started, 1)
    reports = []
    for slm, found in zip(slms, per_skill):
        everything = [p for positions in found.values() for p in positions]
        reports.append({"slm": slm.name, "all": summarise(everything, taus),
                        "skills": {s: summarise(p, taus) for s, p in sorted(found.items())}, "seconds": seconds})
    return reports


def table(report: dict[str, Any], taus: Sequence[float]) -> str:
    head = "| skill | positions | AUROC | ECE | divergence rate | " + " | ".join(
        f"divergences at H <= {t:g}" for t in taus) + " |"
    lines = [head, "|" + "---|" * (5 + len(taus))]
    for name, row in [*report["skills"].items(), ("all", report["all"])]:
        cells = [f"{row['positions']}", _f(row["auroc"]), _f(row["ece"]), _f(row["divergence_rate"])]
        cells += [_f(row["missed_divergences"][f"{t:g}"]) for t in taus]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="heldout", choices=["pool", "tuning", "heldout"])
    parser.add_argument("--every", type=int, default=1, help="every k-th item only")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--taus", default="0.1,0.3", help="thresholds for the 'divergences let through' columns")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--slm", action="append", default=[],
                        help="a draft folder to score (repeatable; default: the shipped draft)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    taus = [float(t) for t in args.taus.split(",") if t]
    engines = [StitchEngine.from_pretrained(DEFAULT_LLM, slm, device=args.device, dtype=args.dtype)
               for slm in args.slm or [None]]
    engine = engines[0]
    items = generalisation_suite(args.part)[:: args.every]
    reports = run(engine, items, args.max_new_tokens, taus, [e.pair.slm for e in engines])
    report = {**reports[0], "drafts": reports} if len(reports) > 1 else reports[0]
    report.update({"benchmark": "draft_calibration", "suite": "generalisation", "part": args.part, "items": len(items),
                   "every": args.every, "max_new_tokens": args.max_new_tokens, "pair":
                   {"slm": engine.pair.slm.name, "llm": engine.pair.llm.name},
                   "dtype": str(engine.pair.llm.dtype), "processor": processor_name(engine.pair.llm.device),
                   "machine": platform.platform(), "torch": torch.__version__})
    print(f"\n{len(items)} items of the generalisation suite's {args.part} part, {report['processor']}, "
          f"{report['dtype']}")
    for one in reports:
        print(f"\nSLM {one['slm']}\n")
        print(table(one, taus))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
