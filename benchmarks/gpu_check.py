"""GPU check of the fast path: CUDA exactness, eager vs compiled decode steps against the HBM bound,
and the trace replay's measured vs ideal stitched speedup. One CUDA GPU, no hub access, under 6 minutes.

The pair is random weights in the shapes of DeepSeek-R1-Distill-Qwen-1.5B as the SLM (L1-1.5B-Short,
the paper's SLM, has this shape) and DeepSeek-R1-Distill-Qwen-7B as the LLM, bf16, over a real
151,665-token word-level tokenizer. Weight values do not change a pass's time; they are drawn with
std ``INIT_RANGE`` so that next-token distributions are peaked and greedy choices far from ties.

Sections, each written to the JSON as soon as it ends (a run stopped by its time limit keeps what
it measured; a section that raises is recorded with its error and the next one runs):

1. ``machine``: the GPU, versions, its HBM bandwidth (the named spec figure) and a measured
   device-to-device copy's;
2. ``decode``: per-token decode ms of each model, eager with the dynamic cache, eager with the static
   cache, and compiled (static cache, CUDA graphs), each step as the engine runs it (pass, argmax, the
   one host sync); the compiled step's CUDA kernel time from the profiler, overhead = wall - kernel
   time; the HBM bound = bytes of weights one decode step reads / bandwidth;
3. ``exactness`` (compiled path): tau >= 1 equals the SLM decoding alone, tau < 0 the LLM alone, and
   the 1.5B model paired with itself (tau at its median entropy, so it switches) the model alone,
   token for token; then the compiled path against eager dynamic-cache greedy decoding, where bf16
   kernels differ: a first difference is classified as a knife edge (the reference's top-2 logit gap
   under ``KNIFE_EDGE``) or as logical (a bug);
4. ``replay``: the harness's lockstep trace replay (recorded default-pair traces, a synthetic one) on
   the compiled pair: LLM alone, ideal (the trace's bare passes) and R-Stitch; measured vs ideal
   speedup and engine efficiency.

    bash benchmarks/gpu_check.sh                         # one CUDA GPU: JSON in benchmarks/results/
    python benchmarks/gpu_check.py --smoke --device cpu  # the same code on tiny shapes (the test suite)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import transformers
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (benchmarks/harness.py: shapes, tokenizer, lockstep replay)

from rstitch_engine import EntropyRouter, GenerationSettings, ModelPair, StitchEngine  # noqa: E402
from rstitch_engine.models.runner import RowPlan  # noqa: E402
from rstitch_engine.models.execution import ExecutionConfig  # noqa: E402
from rstitch_engine.models.hardware import processor_name  # noqa: E402
from rstitch_engine.models.loaded import LoadedModel, ModelRole  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INIT_RANGE = 0.1
KNIFE_EDGE = 0.25
"""bf16 noise bound for a top-2 logit gap (logits here have std ~4; bf16 keeps 8 significant bits)."""
BANDWIDTH = [  # (all substrings of the device name, bytes/s, the figure named)
    (("H200",), 4.8e12, "NVIDIA H200: 4.8 TB/s HBM3e (spec)"),
    (("H100", "NVL"), 3.9e12, "NVIDIA H100 NVL: 3.9 TB/s HBM3 (spec)"),
    (("H100", "PCIe"), 2.0e12, "NVIDIA H100 PCIe: 2.0 TB/s HBM2e (spec)"),
    (("H100",), 3.35e12, "NVIDIA H100 SXM: 3.35 TB/s HBM3 (spec)"),
    (("A100", "80GB", "PCIe"), 1.935e12, "NVIDIA A100 80GB PCIe: 1.94 TB/s HBM2e (spec)"),
    (("A100", "80GB"), 2.039e12, "NVIDIA A100 80GB SXM: 2.04 TB/s HBM2e (spec)"),
    (("A100",), 1.555e12, "NVIDIA A100 40GB: 1.56 TB/s HBM2 (spec)"),
    (("L40S",), 0.864e12, "NVIDIA L40S: 864 GB/s GDDR6 (spec)"),
    (("L4",), 0.300e12, "NVIDIA L4: 300 GB/s GDDR6 (spec)"),
]
FULL = dict(slm_shape="r1-distill-qwen-1.5b", llm_shape="r1-distill-qwen-7b", dtype=torch.bfloat16,
            prompt_tokens=128, decode_steps=64, profile_steps=16, new_tokens=48, replay_tokens=96,
            max_traces=3, repeats=2, backend="inductor", buckets=(1, 4, 16, 64, 256))
SMOKE = dict(slm_shape="tiny-s", llm_shape="tiny-l", dtype=torch.float32, prompt_tokens=8, decode_steps=6,
             profile_steps=0, new_tokens=10, replay_tokens=12, max_traces=1, repeats=1, backend="eager",
             buckets=(1, 4, 16))


# ---------------------------------------------------------------------------- machine


def spec_bandwidth(device_name: str) -> tuple[float | None, str]:
    for parts, bandwidth, named in BANDWIDTH:
        if all(part in device_name for part in parts):
            return bandwidth, named
    return None, f"{device_name}: no spec figure known (the measured copy bandwidth is used)"


def copy_bandwidth(device: torch.device, gib: float = 1.0) -> float:
    """Bytes/s of a device-to-device copy, counting bytes read and written (median of 10)."""
    source = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    times = []
    for _ in range(12):
        _sync(device)
        start = time.perf_counter()
        target.copy_(source)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * source.numel() / statistics.median(times[2:])


def machine(device: torch.device) -> dict[str, Any]:
    name = processor_name(device)
    spec, named = spec_bandwidth(name) if device.type == "cuda" else (None, "CPU: no HBM")
    copied = copy_bandwidth(device, 1.0 if device.type == "cuda" else 0.05)
    return {"device": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "spec_bandwidth_bytes_per_s": spec, "bandwidth_named": named,
            "copy_bandwidth_bytes_per_s": copied, "bound_bandwidth_bytes_per_s": spec or copied}


# ---------------------------------------------------------------------------- decode steps


def decode_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads: all distinct parameters except the input embedding
    table when the head does not share it (a decode reads one row of it)."""
    total = harness.parameter_bytes(model)
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if embedding.data_ptr() != head.data_ptr():
        total -= embedding.numel() * embedding.element_size()
    return total


@torch.inference_mode()
def decode_loop(loaded: LoadedModel, prompt_tokens: int, steps: int, around: Callable[[], Any] | None = None
                ) -> list[float]:
    """Seconds of each of ``steps`` engine-style decode steps (pass, argmax, the host sync) after a prefill."""
    rng = random.Random(0)
    tokens = [rng.randrange(loaded.vocab_size) for _ in range(prompt_tokens)]
    runner = loaded.runner
    slot = runner.new_slot(prompt_tokens + steps + 1)
    try:
        tokens.append(int(torch.argmax(runner.run_one(RowPlan(slot, tokens, "catchup")).logits)))
        context = around() if around is not None else None
        times = []
        with context if context is not None else contextlib.nullcontext():
            for _ in range(steps):
                start = time.perf_counter()
                tokens.append(int(torch.argmax(runner.run_one(RowPlan(slot, tokens, "decode")).logits)))
                times.append(time.perf_counter() - start)
        return times
    finally:
        runner.release(slot)


def kernel_ms(loaded: LoadedModel, prompt_tokens: int, steps: int) -> float | None:
    """CUDA kernel (and copy) time per decode step from the profiler; None when it saw no kernels."""
    from torch.profiler import ProfilerActivity, profile

    holder: dict[str, Any] = {}

    def around() -> Any:
        holder["prof"] = profile(activities=[ProfilerActivity.CUDA])
        return holder["prof"]

    decode_loop(loaded, prompt_tokens, steps, around)
    events = [e for e in holder["prof"].events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.time_range.elapsed_us() for e in events)
    return total_us / 1000 / steps if total_us > 0 else None


def decode_section(models: dict[ModelRole, torch.nn.Module], vocab: int, config: dict[str, Any], bandwidth: float,
                   compiled: ModelPair, device: torch.device) -> dict[str, Any]:
    rows = {}
    for role, model in models.items():
        variants = {"eager_dynamic": LoadedModel(role, model, vocab, role),
                    "eager_static": LoadedModel(role, model, vocab, role, ExecutionConfig(kv_cache="static")),
                    "compiled_static": compiled.slm if role == "slm" else compiled.llm}
        row: dict[str, Any] = {"shape": config[f"{role}_shape"], "parameters": sum(p.numel() for p in model.parameters()),
                               "decode_weight_bytes": decode_weight_bytes(model)}
        row["hbm_bound_ms"] = 1000 * row["decode_weight_bytes"] / bandwidth
        for name, loaded in variants.items():
            row[f"{name}_ms"] = 1000 * statistics.median(decode_loop(loaded, config["prompt_tokens"],
                                                                     config["decode_steps"]))
        if device.type == "cuda" and config["profile_steps"]:
            kernel = kernel_ms(variants["compiled_static"], config["prompt_tokens"], config["profile_steps"])
            row["compiled_kernel_ms"] = kernel
            row["compiled_overhead_fraction"] = None if kernel is None else 1 - kernel / row["compiled_static_ms"]
        row["compiled_vs_bound"] = row["compiled_static_ms"] / row["hbm_bound_ms"]
        row["compile_speedup"] = row["eager_dynamic_ms"] / row["compiled_static_ms"]
        rows[role] = row
    return rows


# ---------------------------------------------------------------------------- exactness


def first_difference(got: Sequence[int], expected: Sequence[int]) -> int | None:
    pairs = list(zip(got, expected))
    index = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
    return index if index is not None or len(got) == len(expected) else len(pairs)


def verdict(name: str, got: Sequence[int], expected: Sequence[int], reference: LoadedModel, prompt: list[int]
            ) -> dict[str, Any]:
    """Exact, or the first difference with the reference's top-2 logit gap there (knife edge: numeric)."""
    first = first_difference(got, expected)
    if first is None:
        return {"check": name, "verdict": "exact", "tokens": len(got)}
    with torch.inference_mode():
        logits, _ = reference.answer_logits(prompt, list(expected[: first + 1]))
    top = torch.topk(logits[min(first, len(expected) - 1)], 2).values
    gap = float(top[0] - top[1])
    return {"check": name, "verdict": "numeric" if gap < KNIFE_EDGE else "logical", "first_difference": first,
            "top2_gap": gap, "tokens": len(got)}


def exactness_section(compiled: ModelPair, eager: ModelPair, config: dict[str, Any]) -> list[dict[str, Any]]:
    settings = GenerationSettings(max_new_tokens=config["new_tokens"])
    engine = StitchEngine(compiled, settings=settings, max_batch_size=1)
    rng = random.Random(1)
    results = []
    for p in range(2):
        prompt = [rng.randrange(compiled.vocab_size) for _ in range(config["prompt_tokens"] // 2 + 7 * p)]
        slm_alone = engine.decode_alone("slm", prompt).token_ids
        llm_alone = engine.decode_alone("llm", prompt).token_ids
        top = engine.generate(prompt, router=EntropyRouter(1.0))
        bottom = engine.generate(prompt, router=EntropyRouter(-1.0))
        results.append(verdict(f"prompt {p}: tau=1 vs SLM alone", top.token_ids, slm_alone, compiled.slm, prompt))
        results.append(verdict(f"prompt {p}: tau=-1 vs LLM alone", bottom.token_ids, llm_alone, compiled.llm, prompt))
        tau = statistics.median(e.entropy for e in top.events)
        # one LoadedModel in both roles: its compiled steps serve both slots (each its own pooled cache)
        self_engine = StitchEngine(ModelPair(compiled.slm, compiled.slm, compiled.tokenizer), EntropyRouter(tau),
                                   settings, max_batch_size=1)
        paired = self_engine.generate(prompt)
        results.append(verdict(f"prompt {p}: {config['slm_shape']} self-pair (tau {tau:.3g}, "
                               f"{paired.stats.switches_to_llm} switches) vs alone",
                               paired.token_ids, slm_alone, compiled.slm, prompt))
        for role in ("slm", "llm"):
            eager_engine = StitchEngine(eager, settings=settings, max_batch_size=1)
            reference = eager_engine.decode_alone(role, prompt).token_ids  # type: ignore[arg-type]
            mine = slm_alone if role == "slm" else llm_alone
            results.append(verdict(f"prompt {p}: compiled {role.upper()} vs eager dynamic greedy", mine, reference,
                                   eager.slm if role == "slm" else eager.llm, prompt))
    return results


# ---------------------------------------------------------------------------- trace replay


def replay_section(compiled: ModelPair, config: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    engine = StitchEngine(compiled, max_batch_size=1)
    spec = argparse.Namespace(seed=0, traces=[str(ROOT / "benchmarks" / "traces" / "default")],
                              max_traces=config["max_traces"], max_output_tokens=config["replay_tokens"],
                              synthetic=[0.8], prompt_tokens=config["prompt_tokens"],
                              output_tokens=config["replay_tokens"], mean_llm_run=4.0, run_lengths="geometric")
    workloads = harness.load_workloads(spec, compiled.vocab_size, use_recorded_prompts=False)
    rows = []
    with tqdm(total=len(workloads) * config["repeats"], desc="trace replay", file=sys.stderr) as progress:
        for workload in workloads:
            row = harness.measure(engine, workload, config["repeats"], False, device, None, progress)
            rows.append({key: row[key] for key in ("trace", "prompt_tokens", "output_tokens", "slm_share",
                                                   "switches_to_llm", "seconds", "speedup_measured",
                                                   "speedup_ideal", "efficiency", "tokens_match_ideal")})
    return rows


# ---------------------------------------------------------------------------- the run


def build(config: dict[str, Any], device: torch.device) -> tuple[dict[ModelRole, torch.nn.Module], ModelPair, ModelPair]:
    """(the two models, the compiled pair, the eager dynamic-cache pair): one set of weights."""
    init = INIT_RANGE if config["slm_shape"].startswith("r1") else None
    models: dict[ModelRole, torch.nn.Module] = {
        "slm": harness.shape_model(config["slm_shape"], device, config["dtype"], 0, init),
        "llm": harness.shape_model(config["llm_shape"], device, config["dtype"], 1, init)}
    vocab = min(harness.QWEN_VOCAB, harness.SHAPES[config["slm_shape"]]["vocab_size"],
                harness.SHAPES[config["llm_shape"]]["vocab_size"])
    eager = ModelPair.from_models(models["slm"], models["llm"], harness.shape_tokenizer(vocab),
                                  slm_name=config["slm_shape"], llm_name=config["llm_shape"])
    compiled_config = ExecutionConfig(compile=True, cache_tokens=1024, compile_backend=config["backend"],
                                      buckets=config["buckets"])
    return models, eager.with_execution(slm=compiled_config, llm=compiled_config), eager


def run_sections(args: argparse.Namespace, config: dict[str, Any], report: dict[str, Any], save: Callable[[], None]
                 ) -> None:
    device = torch.device(args.device)
    deadline = time.perf_counter() + args.budget_s
    report["machine"] = machine(device)
    save()
    started = time.perf_counter()
    models, compiled, eager = build(config, device)
    report["build_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    StitchEngine(compiled)  # compiles and records every bucket of both models (warm-up, with a progress line)
    report["warm_up_seconds"] = time.perf_counter() - started
    save()
    bandwidth = report["machine"]["bound_bandwidth_bytes_per_s"]
    sections: list[tuple[str, Callable[[], Any]]] = [
        ("decode", lambda: decode_section(models, compiled.vocab_size, config, bandwidth, compiled, device)),
        ("exactness", lambda: exactness_section(compiled, eager, config)),
        ("replay", lambda: replay_section(compiled, config, device)),
    ]
    for name, section in sections:
        if time.perf_counter() > deadline:
            report[name] = {"skipped": f"over the {args.budget_s:.0f} s budget"}
        else:
            started = time.perf_counter()
            try:
                report[name] = section()
            except Exception as error:  # noqa: BLE001 - recorded; the next section still runs
                report[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
            report[f"{name}_seconds"] = time.perf_counter() - started
        save()
    report["goals"] = goals(report)
    save()


def goals(report: dict[str, Any]) -> dict[str, Any]:
    """The fast path's three goals (compiled LLM decode vs its HBM bound, replay efficiency, compiled SLM
    overhead), as measured (None where a section did not run)."""
    decode, replay = report.get("decode"), report.get("replay")
    llm = decode.get("llm") if isinstance(decode, dict) else None
    slm = decode.get("slm") if isinstance(decode, dict) else None
    efficiency = statistics.median(r["efficiency"] for r in replay) if isinstance(replay, list) and replay else None
    return {"llm_compiled_vs_hbm_bound": llm and llm["compiled_vs_bound"], "llm_goal": "<= 1.5",
            "replay_efficiency_median": efficiency, "efficiency_goal": ">= 0.95",
            "slm_compiled_overhead_fraction": slm and slm.get("compiled_overhead_fraction"), "overhead_goal": "< 0.10"}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"GPU check on {report['machine']['device']} ({report['machine']['bandwidth_named']}); "
             f"torch {report['machine']['torch']}, transformers {report['machine']['transformers']}", ""]
    decode = report.get("decode")
    if isinstance(decode, dict) and "slm" in decode:
        lines += ["| model | shape | HBM bound ms | eager dynamic ms | eager static ms | compiled ms | kernel ms | "
                  "overhead | compiled / bound |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for role, row in decode.items():
            kernel, overhead = row.get("compiled_kernel_ms"), row.get("compiled_overhead_fraction")
            lines.append(f"| {role.upper()} | {row['shape']} | {row['hbm_bound_ms']:.2f} | {row['eager_dynamic_ms']:.2f} "
                         f"| {row['eager_static_ms']:.2f} | {row['compiled_static_ms']:.2f} | "
                         f"{'-' if kernel is None else f'{kernel:.2f}'} | "
                         f"{'-' if overhead is None else f'{overhead:.1%}'} | {row['compiled_vs_bound']:.2f}x |")
        lines.append("")
    replay = report.get("replay")
    if isinstance(replay, list):
        lines += ["| trace | P / N | SLM share | speedup | ideal speedup | efficiency | tokens = ideal |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['trace']} | {r['prompt_tokens']} / {r['output_tokens']} | {r['slm_share']:.2f} | "
                  f"{r['speedup_measured']:.2f}x | {r['speedup_ideal']:.2f}x | {r['efficiency']:.3f} | "
                  f"{r['tokens_match_ideal']} |" for r in replay]
        lines.append("")
    exact = report.get("exactness")
    if isinstance(exact, list):
        lines += [f"- {r['check']}: **{r['verdict']}**" + (f" (first difference at token {r['first_difference']}, "
                  f"top-2 gap {r['top2_gap']:.3g})" if r["verdict"] != "exact" else "") for r in exact]
    lines += ["", "goals: " + json.dumps(report.get("goals", {}))]
    return "\n".join(lines)


def default_json(device: torch.device) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", processor_name(device).split(",")[0].lower()).strip("-")
    return ROOT / "benchmarks" / "results" / f"gpu_{slug}.json"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, float32, dynamo's eager backend (CPU tests)")
    p.add_argument("--budget-s", type=float, default=300.0, help="sections starting later than this are skipped")
    p.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/gpu_<device>.json")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or try --smoke --device cpu")
    torch.manual_seed(0)
    config = SMOKE if args.smoke else FULL
    path = args.json or default_json(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"benchmark": "gpu_check", "command": " ".join(sys.argv), "smoke": args.smoke,
                              "config": {k: str(v) if isinstance(v, torch.dtype) else v for k, v in config.items()}}

    def save() -> None:
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")

    run_sections(args, config, report, save)
    print(markdown(report))
    print(f"\nwrote {path}")
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
