"""Per-token cost of the stitched loop against a plain cached decode loop of the same model.

For each model of the pair, in one run:

* plain loop: the tightest cached greedy decode loop (forward on the last token, argmax), no engine;
* stitched loop with the always-SLM router (for the SLM) or the always-LLM router (for the LLM):
  the engine's full path (entropy, routing, detokenisation, events, stats) with one model decoding;
* transformers' ``model.generate`` (greedy), for reference.

The plain and stitched loops advance in lockstep, one token each in alternating order, so the
shared machine's load hits both alike; their ratio is total stitched time / total plain time over
the decode phase (prefill excluded), median over repeats. ``generate`` cannot be interleaved and
runs between lockstep rounds. Prints a table; ``--json PATH`` writes the results.

    python benchmarks/loop_overhead.py --tokens 64 --repeats 5 --json results/loop_overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Iterator

import torch
from rich.console import Console
from rich.table import Table
from transformers import DynamicCache, StoppingCriteria

from rstitch_engine import AlwaysLLMRouter, AlwaysSLMRouter, GenerationSettings, StitchEngine
from rstitch_engine.models.loaded import LoadedModel

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


@torch.inference_mode()
def plain_loop(loaded: LoadedModel, prompt_ids: list[int]) -> Iterator[int]:
    """Greedy cached decoding, one token per ``next()``: the first call prefills the prompt."""
    model, device = loaded.model, loaded.device
    cache = DynamicCache(config=model.config)
    next_input = torch.tensor([prompt_ids], device=device)  # [1, P], then [1, 1]
    fed = 0  # tokens the cache covers
    while True:
        logits = loaded.forward(next_input, cache, fed).logits
        fed += next_input.shape[1]
        token = int(torch.argmax(logits[0, -1, : loaded.vocab_size]))
        yield token
        next_input = torch.tensor([[token]], device=device)


def lockstep_seconds(engine: StitchEngine, role: str, prompt_ids: list[int], tokens: int) -> tuple[float, float]:
    """(plain, stitched) seconds over tokens - 1 decode steps, taken alternately."""
    loaded = engine.pair.slm if role == "slm" else engine.pair.llm
    router = AlwaysSLMRouter() if role == "slm" else AlwaysLLMRouter()
    plain = plain_loop(loaded, prompt_ids)
    stitched = engine.stream(prompt_ids, GenerationSettings(max_new_tokens=tokens, prompt_lookup_tokens=0), router)
    totals = {"plain": 0.0, "stitched": 0.0}
    steps = {"plain": lambda: next(plain), "stitched": lambda: next(stitched).token_id}
    assert steps["plain"]() == steps["stitched"]()  # prefill steps, not timed
    for i in range(tokens - 1):
        order = ("plain", "stitched") if i % 2 == 0 else ("stitched", "plain")
        produced = []
        for name in order:
            start = time.perf_counter()
            produced.append(steps[name]())
            totals[name] += time.perf_counter() - start
        if produced[0] != produced[1]:
            raise RuntimeError(f"the stitched loop diverged from the plain loop at token {i + 1}")
    stitched.close()
    return totals["plain"], totals["stitched"]


class _Stamps(StoppingCriteria):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):  # called once per generated token
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def hf_generate_seconds(loaded: LoadedModel, prompt_ids: list[int], tokens: int) -> float:
    """Seconds of transformers' greedy generate over tokens - 1 decode steps."""
    stamps = _Stamps()
    ids = torch.tensor([prompt_ids], device=loaded.device)
    loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                          do_sample=False, stopping_criteria=[stamps], pad_token_id=0)
    return stamps.stamps[-1] - stamps.stamps[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm", default="smollm2-135m-instruct")
    parser.add_argument("--slm", default=None, help="default: the draft shipped for the default LLM")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    console = Console()
    with console.status("loading the pair"):
        engine = StitchEngine.from_pretrained(args.llm, args.slm, device=args.device, dtype=args.dtype)
    prompt_ids = engine.encode(PROMPT)
    steps = args.tokens - 1
    rows = []
    for role in ("slm", "llm"):
        loaded = engine.pair.slm if role == "slm" else engine.pair.llm
        lockstep_seconds(engine, role, prompt_ids, 8)  # warm-up
        plain, stitched, generate = [], [], []
        for _ in range(args.repeats):
            plain_s, stitched_s = lockstep_seconds(engine, role, prompt_ids, args.tokens)
            plain.append(plain_s / steps)
            stitched.append(stitched_s / steps)
            generate.append(hf_generate_seconds(loaded, prompt_ids, args.tokens) / steps)
        ratios = [s / p for s, p in zip(stitched, plain)]
        rows.append({
            "model": role,
            "router": "always-SLM" if role == "slm" else "always-LLM",
            "plain_ms_per_token": 1000 * statistics.median(plain),
            "hf_generate_ms_per_token": 1000 * statistics.median(generate),
            "stitched_ms_per_token": 1000 * statistics.median(stitched),
            "ratio_stitched_over_plain": statistics.median(ratios),
            "ratio_per_repeat": ratios,
        })
    table = Table(title=f"Per-token decode cost over {steps} decode steps, median of {args.repeats} repeats")
    for column in ("model", "router", "plain loop ms", "HF generate ms", "stitched ms", "stitched / plain"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["model"], row["router"], f"{row['plain_ms_per_token']:.2f}",
                      f"{row['hf_generate_ms_per_token']:.2f}", f"{row['stitched_ms_per_token']:.2f}",
                      f"{row['ratio_stitched_over_plain']:.3f}")
    console.print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "benchmark": "loop_overhead",
            "pair": {"slm": engine.pair.slm.name, "llm": engine.pair.llm.name},
            "device": str(engine.pair.llm.device),
            "dtype": str(next(engine.pair.llm.model.parameters()).dtype),
            "machine": platform.platform(),
            "torch_threads": torch.get_num_threads(),
            "tokens": args.tokens,
            "repeats": args.repeats,
            "rows": rows,
        }
        args.json.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
