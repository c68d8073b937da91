"""Per-token cost of the stitched loop against a plain cached decode loop of the same model.

For each model of the pair, side by side in one run (variants interleaved in every repeat, so the
machine's noise hits all of them alike):

* plain loop: the tightest cached greedy decode loop (forward on the last token, argmax), no engine;
* ``model.generate``: transformers' own greedy decoding, for reference;
* stitched loop with the always-SLM router (for the SLM) or the always-LLM router (for the LLM):
  the engine's full path (entropy, routing, detokenisation, events, stats) with one model decoding.

The per-token cost is the decode phase only: (time of last token - time of first token) / (n - 1).
Ratios are medians over repeats of stitched / plain. Prints a table and writes JSON with --json.

    python benchmarks/loop_overhead.py --tokens 64 --repeats 5 --json results/loop_overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import DynamicCache, StoppingCriteria

from rstitch_engine import AlwaysLLMRouter, AlwaysSLMRouter, GenerationSettings, StitchEngine
from rstitch_engine.slot import LoadedModel

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


@torch.inference_mode()
def plain_loop_per_token(loaded: LoadedModel, prompt_ids: list[int], tokens: int) -> float:
    model, device = loaded.model, loaded.device
    cache = DynamicCache(config=model.config)
    next_input = torch.tensor([prompt_ids], device=device)
    stamps = []
    for _ in range(tokens):
        logits = model(input_ids=next_input, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        token = int(torch.argmax(logits[0, -1, : loaded.vocab_size]))
        stamps.append(time.perf_counter())
        next_input = torch.tensor([[token]], device=device)
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


class _Stamps(StoppingCriteria):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):  # called once per generated token
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def hf_generate_per_token(loaded: LoadedModel, prompt_ids: list[int], tokens: int) -> float:
    stamps = _Stamps()
    ids = torch.tensor([prompt_ids], device=loaded.device)
    loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                          do_sample=False, stopping_criteria=[stamps], pad_token_id=0)
    return (stamps.stamps[-1] - stamps.stamps[0]) / (len(stamps.stamps) - 1)


def stitched_per_token(engine: StitchEngine, role: str, prompt_ids: list[int], tokens: int) -> float:
    router = AlwaysSLMRouter() if role == "slm" else AlwaysLLMRouter()
    events = list(engine.stream(prompt_ids, GenerationSettings(max_new_tokens=tokens), router))
    if len(events) < tokens:
        raise RuntimeError(f"the {role} stopped after {len(events)} tokens; use a prompt with a longer answer")
    return (events[-1].seconds - events[0].seconds) / (len(events) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm", default="smollm2-135m-instruct")
    parser.add_argument("--slm", default=None, help="default: the early-exit cut of the default LLM")
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
    variants = {
        "plain loop": lambda loaded, role: plain_loop_per_token(loaded, prompt_ids, args.tokens),
        "HF generate": lambda loaded, role: hf_generate_per_token(loaded, prompt_ids, args.tokens),
        "stitched loop": lambda loaded, role: stitched_per_token(engine, role, prompt_ids, args.tokens),
    }
    samples: dict[str, dict[str, list[float]]] = {role: {v: [] for v in variants} for role in ("slm", "llm")}
    for role in ("slm", "llm"):
        loaded = engine.pair.slm if role == "slm" else engine.pair.llm
        for fn in variants.values():  # warm-up
            fn(loaded, role)
        for _ in range(args.repeats):
            for name, fn in variants.items():
                samples[role][name].append(fn(loaded, role))

    rows = []
    for role in ("slm", "llm"):
        medians = {name: statistics.median(values) for name, values in samples[role].items()}
        ratios = [s / p for s, p in zip(samples[role]["stitched loop"], samples[role]["plain loop"])]
        rows.append({
            "model": role,
            "router": "always-SLM" if role == "slm" else "always-LLM",
            "plain_ms_per_token": 1000 * medians["plain loop"],
            "hf_generate_ms_per_token": 1000 * medians["HF generate"],
            "stitched_ms_per_token": 1000 * medians["stitched loop"],
            "ratio_stitched_over_plain": statistics.median(ratios),
            "ratio_per_repeat": ratios,
        })
    table = Table(title=f"Per-token decode cost, {args.tokens} tokens, median of {args.repeats} interleaved repeats")
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
