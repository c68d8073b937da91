"""Choose the default threshold tau on the TUNING part of a quality suite (never the held-out part).

Runs the LLM alone and R-Stitch at each tau side by side (``benchmarks/default_pair.py``'s
machinery: rotated order per item, greedy, same ``max_new_tokens``) on every ``--every``-th tuning
item (the suite is ordered by skill, so every skill is sampled), then applies one rule:

    the fastest tau whose accuracy is at least the LLM alone's minus ``--margin`` points.

The held-out numbers of the chosen tau then come from ``benchmarks/default_pair.py``.

    python benchmarks/choose_tau.py --json results/choose_tau.json
    python benchmarks/choose_tau.py --suite generalisation --every 1 --taus 0.05,0.1 --json PATH

``--suite generalisation`` tunes on the generalisation suite's tuning part (its own forms and
entities, never a draft's training prompts or the held-out part).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).parent))

from default_pair import (  # noqa: E402
    DEFAULT_TAUS,
    Config,
    benchmark,
    comma_floats,
    load_engine,
    markdown_table,
    skill_rows,
    skill_table,
    stitched_configs,
    suite_items,
    summarise,
)

from rstitch_engine import GenerationSettings  # noqa: E402
from rstitch_engine.models.defaults import DEFAULT_LLM  # noqa: E402
from rstitch_engine.models.hardware import processor_name  # noqa: E402


def choose(rows: Sequence[dict[str, Any]], margin_points: float) -> dict[str, Any] | None:
    """The stitched row with the highest speedup among those within ``margin_points`` of the LLM's accuracy."""
    llm = next(row for row in rows if row["config"] == "LLM alone")
    eligible = [row for row in rows if row["kind"] == "stitch"
                and 100 * row["accuracy"] >= 100 * llm["accuracy"] - margin_points]
    return max(eligible, key=lambda row: row["speedup"], default=None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slm", default=None, help="SLM (default: the engine's default SLM)")
    parser.add_argument("--llm", default=DEFAULT_LLM)
    parser.add_argument("--suite", default="quality", choices=["quality", "generalisation"],
                        help="whose tuning part (default: %(default)s)")
    parser.add_argument("--every", type=int, default=3, help="use every N-th tuning item (default: %(default)s)")
    parser.add_argument("--margin", type=float, default=1.0, help="accuracy points allowed below the LLM alone")
    parser.add_argument("--taus", default=",".join(f"{t:g}" for t in DEFAULT_TAUS))
    parser.add_argument("--hand-back", default="",
                        help="comma-separated hand-back thresholds: each tau also runs with the LLM handing back "
                             "once its entropy is <= each one above tau (EntropyRouter's hand_back_threshold)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 where native (CUDA, AVX512-BF16/AMX CPUs)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    engine = load_engine(args.llm, args.slm, args.device, args.dtype)
    items = suite_items(args.suite, "tuning")[:: args.every]
    configs = [Config("LLM alone", "llm")] + stitched_configs(comma_floats(args.taus), comma_floats(args.hand_back))
    records = benchmark(engine, items, configs, GenerationSettings(max_new_tokens=args.max_new_tokens))
    rows = summarise(records, configs)
    chosen = choose(rows, args.margin)
    per_skill = skill_rows(records, configs)
    print(f"\n{len(items)} {args.suite} tuning items (every {args.every}-th), max_new_tokens={args.max_new_tokens}, "
          f"SLM {engine.pair.slm.name}\n")
    print(markdown_table(rows))
    print("\n" + skill_table(per_skill))
    print(f"\nchosen: {chosen['config'] if chosen else 'none'} (fastest within {args.margin:g} points of the LLM alone)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "dtype": str(engine.pair.llm.dtype),
                                         "processor": processor_name(engine.pair.llm.device),
                                         "suite": args.suite, "slm": engine.pair.slm.name, "items": len(items),
                                         "every": args.every, "margin_points": args.margin,
                                         "rows": rows, "per_skill": per_skill, "chosen": chosen, "answers": records},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
