"""How closely the llama.cpp runner reproduces the transformers runner, on the same weights.

Configurations (transformers in float32 on the CPU against llama.cpp, ``reuse_prefixes=False``):

* ``quantised files, llama.cpp defaults``: the default pair as it ships on each runner: transformers runs the
  LLM's Q4_1 GGUF dequantised to float32 and the draft folder; llama.cpp runs the Q4_1 GGUF and the draft
  exported to q8_0 on it, with llama.cpp's own defaults: its f16 KV cache and flash attention (the runner's
  default is flash attention off, as llama-cpp-python's; ``flash_attn=True`` here keeps llama.cpp's);
* ``all-f32 GGUFs, f16 KV + flash attention``: both runners on the all-f32 pair (``float32_pair_ggufs``),
  llama.cpp with its default cache;
* ``all-f32 GGUFs, kv_type f32``: the same files, llama.cpp with an f32 KV cache (flash attention off).

Per configuration, over the plain-chat items of the everyday suite's tuning part (``--per-skill`` of each
skill): the largest |logit difference| and |normalised entropy difference| at the first generated position
(each model), how many items decode the same greedy tokens with each model alone, and how many stitched
runs (tau 0.1 and 0.05) keep the same tokens from the same models. Both runners use one thread.

    python benchmarks/llamacpp_exactness.py --json benchmarks/results/llamacpp_exactness.json
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

import torch

from rstitch_engine import EntropyRouter, GenerationSettings, ModelSpec, StitchEngine, load_pair
from rstitch_engine.decoding.sampling import normalised_entropy
from rstitch_engine.measure.everyday import everyday_suite
from rstitch_engine.models.defaults import DEFAULT_LLM, DEFAULT_SLM
from rstitch_engine.models.gguf_export import float32_pair_ggufs
from rstitch_engine.models.runner import RowPlan

SKILLS = ("capital", "sum", "opposite", "rag_short", "rag_long", "multiturn")
TAUS = (0.1, 0.05)
ROLES = ("slm", "llm")


def prompts(per_skill: int) -> list[tuple[str, list[dict[str, str]]]]:
    chosen = []
    for skill in SKILLS:
        items = [i for i in everyday_suite("tuning") if i.skill == skill and not i.call][:per_skill]
        chosen += [(f"{skill}/{i.id}", i.messages()) for i in items]
    return chosen


def torch_engine(slm: str, llm: str) -> StitchEngine:
    return StitchEngine(load_pair(ModelSpec(slm, device="cpu", dtype="float32"),
                                  ModelSpec(llm, device="cpu", dtype="float32")))


def llamacpp_engine(slm: str, llm: str, **options: Any) -> StitchEngine:
    options = {"reuse_prefixes": False, "n_threads": 1, "n_threads_batch": 1, **options}
    return StitchEngine(load_pair(ModelSpec(slm, backend="llama.cpp", extra=options),
                                  ModelSpec(llm, backend="llama.cpp", extra=options)))


def first_logits(engine: StitchEngine, role: str, ids: list[int]) -> torch.Tensor:
    runner = getattr(engine.pair, role).runner
    slot = runner.new_slot(len(ids) + 1)
    try:
        return runner.run_one(RowPlan(slot, list(ids), "catchup")).logits.float()
    finally:
        runner.release(slot)


def outputs(engine: StitchEngine, prompt: list[dict[str, str]], new_tokens: int) -> dict[str, Any]:
    """First-position logits, greedy tokens alone and stitched (token, source, entropy) of one prompt."""
    settings = GenerationSettings(max_new_tokens=new_tokens)
    ids = engine.encode(prompt)
    return {
        "logits": {role: first_logits(engine, role, ids) for role in ROLES},
        "alone": {role: engine.decode_alone(role, prompt, settings).token_ids for role in ROLES},
        "stitched": {tau: [(e.token_id, e.source, e.entropy) for e in engine.stream(prompt, settings,
                                                                                   EntropyRouter(tau))]
                     for tau in TAUS},
    }


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    stitched_equal = {tau: [t[:2] for t in a["stitched"][tau]] == [t[:2] for t in b["stitched"][tau]] for tau in TAUS}
    entropy_gaps = [abs(x[2] - y[2]) for tau in TAUS if stitched_equal[tau]
                    for x, y in zip(a["stitched"][tau], b["stitched"][tau])]
    return {
        "logit_gap": {r: float((a["logits"][r] - b["logits"][r]).abs().max()) for r in ROLES},
        "first_entropy_gap": {r: abs(normalised_entropy(a["logits"][r]) - normalised_entropy(b["logits"][r]))
                              for r in ROLES},
        "alone_equal": {r: a["alone"][r] == b["alone"][r] for r in ROLES},
        "stitched_equal": stitched_equal,
        "stitched_entropy_gap": max(entropy_gaps, default=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-skill", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    slm_f32, llm_f32 = map(str, float32_pair_ggufs())
    torch_engines = {"quantised": functools.partial(torch_engine, DEFAULT_SLM, DEFAULT_LLM),
                     "f32": functools.partial(torch_engine, slm_f32, llm_f32)}
    configs = {
        "quantised files, llama.cpp defaults": ("quantised",
                                                lambda: llamacpp_engine(DEFAULT_SLM, DEFAULT_LLM, flash_attn=True)),
        "all-f32 GGUFs, f16 KV + flash attention": ("f32", lambda: llamacpp_engine(slm_f32, llm_f32, flash_attn=True)),
        "all-f32 GGUFs, kv_type f32": ("f32", lambda: llamacpp_engine(slm_f32, llm_f32, kv_type="f32")),
    }
    items = prompts(args.per_skill)
    reference: dict[str, list[dict[str, Any]]] = {}
    results: dict[str, Any] = {}
    for name, (weights, make) in configs.items():
        if weights not in reference:
            engine = torch_engines[weights]()
            reference[weights] = [outputs(engine, prompt, args.max_new_tokens) for _, prompt in items]
        engine = make()
        rows = [compare(ref, outputs(engine, prompt, args.max_new_tokens))
                for ref, (_, prompt) in zip(reference[weights], items)]
        results[name] = {"items": dict(zip((key for key, _ in items), rows)), "summary": summary(rows)}
    print_table(results, len(items))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1, default=str))


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    gaps = [r["stitched_entropy_gap"] for r in rows if r["stitched_entropy_gap"] is not None]
    return {
        "max_logit_gap": {r: max(row["logit_gap"][r] for row in rows) for r in ROLES},
        "max_first_entropy_gap": max(row["first_entropy_gap"][r] for row in rows for r in ROLES),
        "alone_equal": {r: sum(row["alone_equal"][r] for row in rows) for r in ROLES},
        "stitched_equal": {str(tau): sum(row["stitched_equal"][tau] for row in rows) for tau in TAUS},
        "max_stitched_entropy_gap": max(gaps, default=None),
    }


def print_table(results: dict[str, Any], n: int) -> None:
    print(f"\n| configuration | max logit gap SLM / LLM | max entropy gap | alone equal SLM / LLM (of {n}) | "
          f"stitched equal tau 0.1 / 0.05 (of {n}) |")
    print("|---|---|---|---|---|")
    for name, result in results.items():
        s = result["summary"]
        print(f"| {name} | {s['max_logit_gap']['slm']:.1e} / {s['max_logit_gap']['llm']:.1e} | "
              f"{s['max_first_entropy_gap']:.1e} | {s['alone_equal']['slm']} / {s['alone_equal']['llm']} | "
              f"{s['stitched_equal']['0.1']} / {s['stitched_equal']['0.05']} |")


if __name__ == "__main__":
    main()
