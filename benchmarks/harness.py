"""Performance harness: R-Stitch replaying traces against the LLM alone, the SLM alone and HF assisted generation.

A model's latency does not depend on its weight values, so a pair can be given as real models
(default: the default pair) or as config shapes with random weights (``--slm-shape``/``--llm-shape``:
Qwen2.5-0.5B/1.5B/7B/14B, DeepSeek-R1-Distill-Qwen-1.5B/7B, and small CPU shapes). Routing does
depend on the weights, so R-Stitch replays traces: recorded from real default-pair runs
(``benchmarks/traces/default``, made with ``--record``) or synthetic (an SLM share and a
run-length distribution, seeded). Every run writes exactly the trace's number of tokens: EOS is
switched off (``pair_without_eos``; ``min_new_tokens`` for ``generate``).

For each trace, in one run and in lockstep (one output token of each method in turn, rotating the
order, so the shared machine's load hits all alike):

* LLM alone and SLM alone: the tightest cached greedy loop (prefill, then one token per pass);
* ideal: the trace's exact forward passes on bare model calls (no entropy, routing, detokenisation
  or events), the time R-Stitch would take with a free engine;
* R-Stitch: the engine replaying the trace (``ReplayRouter``), full path;

then HF assisted generation (``generate(assistant_model=SLM)``), which cannot be interleaved.
Reported: measured speedup (LLM alone / R-Stitch), ideal speedup (LLM alone / ideal), engine
efficiency (ideal / R-Stitch time), the cost model's predicted speedup when one is available,
per-token decode times and memory. Times are medians over ``--repeats``. Markdown tables on
stdout, ``--json PATH``, ``--plot PATH`` (matplotlib), tqdm progress.

    python benchmarks/harness.py --json results/harness_default.json --plot results/harness_default.png
    python benchmarks/harness.py --slm-shape mini-s --llm-shape mini-l --synthetic 0.6,0.8,0.95
    python benchmarks/harness.py --slm-shape r1-distill-qwen-1.5b --llm-shape r1-distill-qwen-7b --device cuda
    python benchmarks/harness.py --record benchmarks/traces/default      # record traces of the default pair
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

from rstitch_engine import DEFAULT_LLM, DEFAULT_SLM, GenerationSettings, ModelPair, ModelSpec, StitchEngine
from rstitch_engine.models.runner import RowPlan
from rstitch_engine.models.transformers_runner import Slot
from rstitch_engine.measure.cost_calibration import measure_passes
from rstitch_engine.measure.trace import (
    STEP_ROLE,
    Trace,
    pair_without_eos,
    record_trace,
    replay_stream,
    synthetic_trace,
)
from rstitch_engine.models.cost_model import PairCostModel, shipped_cost_model
from rstitch_engine.models.defaults import SHIPPED_DRAFTS
from rstitch_engine.models.execution import ExecutionConfig
from rstitch_engine.models.hardware import auto_dtype, processor_name
from rstitch_engine.models.loaded import LoadedModel, ModelRole

QWEN_VOCAB = 151665
"""Tokens of the Qwen2/2.5 and R1-Distill tokenizer; output layers have 151,936 or 152,064 rows."""

SHAPES: dict[str, dict[str, Any]] = {
    # Public config.json values (hidden, layers, heads, kv heads, MLP, output rows, tied embeddings).
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6),
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6),
    "qwen2.5-7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False, rope_theta=1e6),
    "qwen2.5-14b": dict(hidden_size=5120, num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8,
                        intermediate_size=13824, vocab_size=152064, tie_word_embeddings=False, rope_theta=1e6),
    "r1-distill-qwen-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                                 num_key_value_heads=2, intermediate_size=8960, vocab_size=151936,
                                 tie_word_embeddings=False, rope_theta=1e4),
    "r1-distill-qwen-7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                               intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False, rope_theta=1e4),
    # Small shapes for CPU runs (Qwen2 layout, the Qwen vocabulary).
    "mini-s": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=768, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6),
    "mini-l": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=2,
                   intermediate_size=2304, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6),
    # Tiny shapes with a small vocabulary: the seconds-long run of the test suite.
    "tiny-s": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128, vocab_size=2048, tie_word_embeddings=True, rope_theta=1e4),
    "tiny-l": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=256, vocab_size=2048, tie_word_embeddings=False, rope_theta=1e4),
}

RECORD_PROMPTS = [
    "A train leaves at 3 pm and travels for 2 hours. At what time does it arrive? Explain briefly.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May? Think step by step.",
    "Write a short story about a lighthouse keeper and a storm.",
    "Explain why the sky is blue to a ten-year-old.",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn? Show your reasoning.",
    "Give three tips for writing clear Python functions, with a short example.",
]
METHODS = ("llm_alone", "slm_alone", "ideal", "rstitch")
EARLY_EXIT_LAYERS = 8
"""The default pair's SLM before its distilled draft: the default LLM's first 8 of 30 layers."""


# ---------------------------------------------------------------------------- pairs


def shape_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """A real fast tokenizer over ``vocab`` word tokens 't0', 't1', ...: token ids are all that matter."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    core = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    return PreTrainedTokenizerFast(tokenizer_object=core)


def shape_model(name: str, device: torch.device, dtype: torch.dtype, seed: int,
                init_range: float | None = None) -> torch.nn.Module:
    """Random weights in the shape of ``name``, created directly on the device, no EOS id.
    ``init_range``: the weights' standard deviation (default: the config's 0.02; larger gives peaked
    next-token distributions, whose greedy choices are far from ties)."""
    extra = {} if init_range is None else {"initializer_range": init_range}
    config = Qwen2Config(**SHAPES[name], max_position_embeddings=32768, eos_token_id=None, bos_token_id=None,
                         pad_token_id=None, **extra)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = None
    return model.eval()


def shape_pair(slm: str, llm: str, device: torch.device, dtype: torch.dtype, seed: int) -> ModelPair:
    vocab = min(QWEN_VOCAB, SHAPES[slm]["vocab_size"], SHAPES[llm]["vocab_size"])
    return ModelPair.from_models(shape_model(slm, device, dtype, seed), shape_model(llm, device, dtype, seed + 1),
                                 shape_tokenizer(vocab), slm_name=slm, llm_name=llm)


def pick_device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


# ---------------------------------------------------------------------------- runners (one token per next())


class AloneLoop:
    """One model decoding alone: the tightest cached greedy loop, on the engine's own passes (its runner,
    so the same cache backend and compiled step as the engine's)."""

    def __init__(self, loaded: LoadedModel, prompt_ids: list[int], needed_tokens: int) -> None:
        self.runner = loaded.runner
        self.slot: Slot = self.runner.new_slot(needed_tokens)  # type: ignore[assignment]
        self.tokens = list(prompt_ids)

    @torch.inference_mode()
    def __next__(self) -> int:
        kind = "decode" if self.slot.n_cached else "catchup"
        token = int(torch.argmax(self.runner.run_one(RowPlan(self.slot, self.tokens, kind)).logits))
        self.tokens.append(token)
        return token

    def caches(self) -> list[Any]:
        return [self.slot.cache]

    def close(self) -> None:
        self.runner.release(self.slot)


class IdealReplay:
    """The trace's forward passes on the bare runners' passes: what R-Stitch would cost with a free engine."""

    def __init__(self, pair: ModelPair, trace: Trace, prompt_ids: list[int], needed_tokens: int) -> None:
        self.runners = {"slm": pair.slm.runner, "llm": pair.llm.runner}
        self.slots: dict[ModelRole, Slot] = {role: runner.new_slot(needed_tokens)  # type: ignore[misc]
                                             for role, runner in self.runners.items()}
        self.tokens = list(prompt_ids)
        self.steps = iter(trace.steps)

    @torch.inference_mode()
    def __next__(self) -> int:
        for code in self.steps:
            role = STEP_ROLE[code]
            plan = RowPlan(self.slots[role], self.tokens, "catchup")
            token = int(torch.argmax(self.runners[role].run_one(plan).logits))
            if code != "x":
                self.tokens.append(token)
                return token
        raise StopIteration

    def caches(self) -> list[Any]:
        return [slot.cache for slot in self.slots.values()]

    def close(self) -> None:
        for role, slot in self.slots.items():
            self.runners[role].release(slot)


class EngineReplay:
    """The engine replaying the trace (full path: entropy, routing, detokenisation, events, stats)."""

    def __init__(self, engine: StitchEngine, trace: Trace, prompt_ids: list[int]) -> None:
        self.stream = replay_stream(engine, trace, prompt_ids)

    def __next__(self) -> int:
        return next(self.stream).token_id

    def caches(self) -> list[Any]:
        return [slot.cache for slot in self.stream.request.slots.values()]

    def close(self) -> None:
        self.stream.close()


def make_runner(method: str, engine: StitchEngine, trace: Trace, prompt_ids: list[int]) -> Any:
    pair, needed = engine.pair, len(prompt_ids) + trace.output_tokens
    if method == "llm_alone":
        return AloneLoop(pair.llm, prompt_ids, needed)
    if method == "slm_alone":
        return AloneLoop(pair.slm, prompt_ids, needed)
    if method == "ideal":
        return IdealReplay(pair, trace, prompt_ids, needed)
    return EngineReplay(engine, trace, prompt_ids)


@dataclass
class RoundResult:
    """One lockstep round: per method, the seconds of each output token and the tokens."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    tokens: dict[str, list[int]] = field(default_factory=dict)
    cache_bytes: dict[str, int] = field(default_factory=dict)


def lockstep_round(engine: StitchEngine, trace: Trace, prompt_ids: list[int], device: torch.device) -> RoundResult:
    """Every method writes the trace's output, one token each in turn (order rotating per token)."""
    runners = {m: make_runner(m, engine, trace, prompt_ids) for m in METHODS}
    result = RoundResult({m: [] for m in METHODS}, {m: [] for m in METHODS})
    for i in range(trace.output_tokens):
        k = i % len(METHODS)
        for method in METHODS[k:] + METHODS[:k]:
            _sync(device)
            start = time.perf_counter()
            token = next(runners[method])
            _sync(device)
            result.seconds[method].append(time.perf_counter() - start)
            result.tokens[method].append(token)
    result.cache_bytes = {m: sum(cache_bytes(c) for c in r.caches()) for m, r in runners.items()}
    for runner in runners.values():
        runner.close()  # static caches back to their pools
    return result


@torch.inference_mode()
def assisted_seconds(pair: ModelPair, prompt_ids: list[int], tokens: int, device: torch.device) -> float:
    """HF assisted generation (speculative decoding with the SLM as assistant), greedy, exactly ``tokens``."""
    ids = torch.tensor([prompt_ids], device=device)
    _sync(device)
    start = time.perf_counter()
    out = pair.llm.model.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=pair.slm.model,
                                  max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                  temperature=None, top_p=None, top_k=None, pad_token_id=0)
    _sync(device)
    seconds = time.perf_counter() - start
    assert out.shape[1] == len(prompt_ids) + tokens, "assisted generation stopped early"
    return seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- memory


def cache_bytes(cache: Any) -> int:
    """Bytes a cache holds (a static one: its whole preallocated capacity; a released one: 0)."""
    total = 0
    for layer in getattr(cache, "layers", ()):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def parameter_bytes(*models: torch.nn.Module) -> int:
    """Bytes of distinct parameter and buffer storage (a draft sharing the LLM's head counts it once)."""
    seen: set[int] = set()
    total = 0
    for model in models:
        for tensor in list(model.parameters()) + list(model.buffers()):
            ptr = tensor.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += tensor.untyped_storage().nbytes()
    return total


def cuda_peaks(engine: StitchEngine, trace: Trace, prompt_ids: list[int], device: torch.device,
               assisted: bool) -> dict[str, int]:
    """Peak CUDA memory (weights of both models included) of each method run on its own."""
    peaks = {}
    for method in METHODS + (("assisted",) if assisted else ()):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        if method == "assisted":
            assisted_seconds(engine.pair, prompt_ids, trace.output_tokens, device)
        else:
            runner = make_runner(method, engine, trace, prompt_ids)
            for _ in range(trace.output_tokens):
                next(runner)
            runner.close()
            del runner
        peaks[method] = torch.cuda.max_memory_allocated(device)
    return peaks


# ---------------------------------------------------------------------------- one workload


@dataclass
class Workload:
    name: str
    trace: Trace
    prompt_ids: list[int]


def measure(engine: StitchEngine, workload: Workload, repeats: int, assisted: bool, device: torch.device,
            cost_model: PairCostModel | None, progress: tqdm) -> dict[str, Any]:
    """All methods on one trace; medians over ``repeats`` lockstep rounds (plus one warm-up)."""
    trace, prompt_ids = workload.trace, workload.prompt_ids
    lockstep_round(engine, _prefix(trace, 8), prompt_ids, device)  # warm-up (kernels, allocator)
    rounds, assisted_runs = [], []
    for _ in range(repeats):
        rounds.append(lockstep_round(engine, trace, prompt_ids, device))
        if assisted:
            assisted_runs.append(assisted_seconds(engine.pair, prompt_ids, trace.output_tokens, device))
        progress.update(1)
    totals = {m: [sum(r.seconds[m]) for r in rounds] for m in METHODS}
    t = {m: statistics.median(v) for m, v in totals.items()}
    row: dict[str, Any] = {
        "trace": workload.name,
        "source": trace.meta.get("source", "recorded"),
        "prompt_tokens": trace.prompt_tokens,
        "output_tokens": trace.output_tokens,
        "slm_share": trace.slm_share,
        "switches_to_llm": trace.discarded_slm_tokens,
        "llm_passes": sum(p.role == "llm" for p in trace.passes()),
        "slm_passes": sum(p.role == "slm" for p in trace.passes()),
        "seconds": t,
        "seconds_per_repeat": totals,
        "speedup_measured": t["llm_alone"] / t["rstitch"],
        "speedup_ideal": t["llm_alone"] / t["ideal"],
        "efficiency": t["ideal"] / t["rstitch"],
        "efficiency_per_repeat": [i / s for i, s in zip(totals["ideal"], totals["rstitch"])],
        "slm_alone_speedup": t["llm_alone"] / t["slm_alone"],
        "decode_ms_per_token": {role: 1000 * statistics.median(
            statistics.fmean(r.seconds[f"{role}_alone"][1:]) for r in rounds) for role in ("slm", "llm")},
        "tokens_match_ideal": all(r.tokens["ideal"] == r.tokens["rstitch"] for r in rounds),
        "cache_bytes": rounds[-1].cache_bytes,
    }
    if assisted:
        row["seconds"]["assisted"] = statistics.median(assisted_runs)
        row["seconds_per_repeat"]["assisted"] = assisted_runs
        row["speedup_assisted"] = t["llm_alone"] / row["seconds"]["assisted"]
    if cost_model is not None:
        predicted_stitch = cost_model.predict(trace.records())
        predicted_llm = cost_model.alone_seconds("llm", trace.prompt_tokens, trace.output_tokens)
        row["predicted"] = {"rstitch_seconds": predicted_stitch, "llm_alone_seconds": predicted_llm,
                            "speedup": predicted_llm / predicted_stitch,
                            "error_vs_ideal": predicted_stitch / t["ideal"] - 1,
                            "llm_alone_error": predicted_llm / t["llm_alone"] - 1}
    if device.type == "cuda":
        row["cuda_peak_bytes"] = cuda_peaks(engine, trace, prompt_ids, device, assisted)
    return row


def _prefix(trace: Trace, tokens: int) -> Trace:
    """The first steps of a trace that write ``tokens`` tokens (for warm-up)."""
    kept, end = 0, 0
    while end < len(trace.steps) and kept < tokens:
        kept += trace.steps[end] != "x"
        end += 1
    return Trace(trace.prompt_tokens, trace.steps[:end], trace.prompt_ids)


# ---------------------------------------------------------------------------- workloads and reports


def load_workloads(args: argparse.Namespace, vocab: int, use_recorded_prompts: bool) -> list[Workload]:
    rng = random.Random(args.seed)
    workloads = []
    paths: list[Path] = []
    for item in args.traces:
        path = Path(item)
        paths += sorted(path.glob("*.json")) if path.is_dir() else [path]
    for path in paths[: args.max_traces]:
        trace = Trace.load(path)
        if args.max_output_tokens:
            trace = _prefix(trace, args.max_output_tokens)
        ids = list(trace.prompt_ids) if use_recorded_prompts and trace.prompt_ids else \
            [rng.randrange(vocab) for _ in range(trace.prompt_tokens)]
        workloads.append(Workload(path.stem, trace, ids))
    for share in args.synthetic:
        trace = synthetic_trace(args.prompt_tokens, args.output_tokens, share, args.mean_llm_run, args.run_lengths,
                                seed=args.seed)
        workloads.append(Workload(f"synthetic-{share:g}", trace, [rng.randrange(vocab) for _ in range(args.prompt_tokens)]))
    return workloads


def markdown_tables(report: dict[str, Any]) -> str:
    rows = report["rows"]
    assisted = any("speedup_assisted" in r for r in rows)
    predicted = any("predicted" in r for r in rows)
    head = ["trace", "P / N", "SLM share", "switches", "LLM alone s", "SLM alone s"] + \
        (["assisted s"] if assisted else []) + ["R-Stitch s", "ideal s", "speedup", "ideal speedup", "efficiency"] + \
        (["assisted speedup"] if assisted else []) + (["cost-model speedup"] if predicted else [])
    lines = [_md_row(head), _md_row(["---"] * len(head))]
    for r in rows:
        s = r["seconds"]
        cells = [r["trace"], f"{r['prompt_tokens']} / {r['output_tokens']}", f"{r['slm_share']:.2f}",
                 str(r["switches_to_llm"]), f"{s['llm_alone']:.3f}", f"{s['slm_alone']:.3f}"]
        cells += [f"{s['assisted']:.3f}"] if assisted else []
        cells += [f"{s['rstitch']:.3f}", f"{s['ideal']:.3f}", f"{r['speedup_measured']:.2f}x",
                  f"{r['speedup_ideal']:.2f}x", f"{r['efficiency']:.3f}"]
        cells += [f"{r['speedup_assisted']:.2f}x"] if assisted else []
        cells += [f"{r['predicted']['speedup']:.2f}x" if "predicted" in r else "-"] if predicted else []
        lines.append(_md_row(cells))
    effs = [r["efficiency"] for r in rows]
    lines.append("")
    lines.append(f"Engine efficiency (ideal / R-Stitch time): median {statistics.median(effs):.3f}, "
                 f"min {min(effs):.3f} over {len(effs)} traces; ideal and R-Stitch tokens identical: "
                 f"{all(r['tokens_match_ideal'] for r in rows)}")
    lines.append("")
    models = report["models"]
    mem_head = ["model", "shape / name", "decode ms/token", "parameters", "parameter bytes"]
    lines += [_md_row(mem_head), _md_row(["---"] * len(mem_head))]
    for role in ("slm", "llm"):
        m = models[role]
        lines.append(_md_row([role.upper(), m["name"], f"{statistics.median(r['decode_ms_per_token'][role] for r in rows):.2f}",
                              f"{m['parameters'] / 1e6:.1f} M", _mib(m["parameter_bytes"])]))
    lines.append(f"\nBoth models' distinct weights: {_mib(models['pair_parameter_bytes'])}.")
    last = rows[-1]
    cache = ", ".join(f"{m} {_mib(b)}" for m, b in last["cache_bytes"].items())
    lines.append(f"KV cache at the end of `{last['trace']}` ({last['prompt_tokens'] + last['output_tokens']} tokens): {cache}.")
    if "cuda_peak_bytes" in last:
        peaks = ", ".join(f"{m} {_mib(b)}" for m, b in last["cuda_peak_bytes"].items())
        lines.append(f"CUDA peak allocated (weights included) on `{last['trace']}`: {peaks}.")
    lines.append(f"Process peak RSS: {_mib(report['peak_rss_bytes'])}.")
    return "\n".join(lines)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    names = [r["trace"] for r in rows]
    series = {"measured": [r["speedup_measured"] for r in rows], "ideal": [r["speedup_ideal"] for r in rows]}
    if all("speedup_assisted" in r for r in rows):
        series["HF assisted"] = [r["speedup_assisted"] for r in rows]
    if all("predicted" in r for r in rows):
        series["cost model"] = [r["predicted"]["speedup"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(rows) + 6), 4.5), width_ratios=[3, 1.3])
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series.items()):
        left.bar([i + k * width for i in range(len(rows))], values, width, label=label)
    left.axhline(1.0, color="grey", lw=0.8, ls="--")
    left.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], names, rotation=30, ha="right", fontsize=8)
    left.set_ylabel("speedup vs LLM alone")
    left.set_title(f"{report['pair']['slm']} + {report['pair']['llm']} on {report['device']}", fontsize=9)
    left.legend(fontsize=8)
    right.bar(range(len(rows)), [r["efficiency"] for r in rows], color="tab:green")
    right.axhline(0.95, color="red", lw=0.8, ls="--")
    right.set_ylim(0, max(1.1, 1.05 * max(r["efficiency"] for r in rows)))
    right.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
    right.set_title("engine efficiency (ideal / measured)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- commands


def record(args: argparse.Namespace) -> int:
    """Record traces of the default (or given) real pair on fixed prompts, with EOS, as JSON."""
    engine = real_engine(args, args.device, **({} if args.tau is None else {"threshold": args.tau}))
    out = Path(args.record)
    settings = GenerationSettings(max_new_tokens=args.record_tokens)
    for i, prompt in enumerate(tqdm(RECORD_PROMPTS, desc="recording")):
        result, trace = record_trace(engine, [{"role": "user", "content": prompt}], settings,
                                     meta={"prompt": prompt, "source": "recorded"})
        trace.save(out / f"prompt{i}.json")
        print(f"prompt{i}: {trace.output_tokens} tokens, SLM share {trace.slm_share:.2f}, "
              f"{trace.discarded_slm_tokens} switches ({result.stats.finish_reason})")
    return 0


def build_engine(args: argparse.Namespace, device: torch.device) -> tuple[StitchEngine, bool]:
    """(engine over a pair without EOS, whether the pair is real)."""
    if args.slm_shape or args.llm_shape:
        if not (args.slm_shape and args.llm_shape):
            raise SystemExit("give both --slm-shape and --llm-shape")
        dtype = {"auto": auto_dtype(device), "float32": torch.float32,
                 "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
        pair = shape_pair(args.slm_shape, args.llm_shape, device, dtype, args.seed)
        real = False
    else:
        pair, real = pair_without_eos(real_engine(args, str(device)).pair), True
    execution = execution_config(args)
    return StitchEngine(pair.with_execution(slm=execution, llm=execution)), real


def execution_config(args: argparse.Namespace) -> ExecutionConfig:
    """Both models' cache backend and compiled steps from ``--kv-cache``, ``--compile``, ``--cache-tokens``."""
    return ExecutionConfig(kv_cache=args.kv_cache, compile=args.compile, cache_tokens=args.cache_tokens)


def real_engine(args: argparse.Namespace, device: str, **kwargs: Any) -> StitchEngine:
    """The default pair (``from_pretrained()``), or the real models given.

    Until the default pair's distilled draft is in the package, its SLM is the early-exit cut of the
    default LLM (its first ``EARLY_EXIT_LAYERS`` layers), as before the draft.
    """
    llm = args.llm or DEFAULT_LLM
    slm: str | ModelSpec | None = args.slm
    layers = args.slm_layers or (EARLY_EXIT_LAYERS if slm is None and not default_draft_available() else None)
    if layers:
        slm = ModelSpec(llm, device=device, dtype=args.dtype, num_layers=layers)
        print(f"SLM: the first {layers} layers of {llm} (early-exit cut)", file=sys.stderr)
    return StitchEngine.from_pretrained(llm, slm, device=device, dtype=args.dtype, **kwargs)


def default_draft_available() -> bool:
    return (SHIPPED_DRAFTS[DEFAULT_SLM] / "draft.safetensors").is_file()


def calibrate(engine: StitchEngine) -> PairCostModel:
    """A quick in-run cost model (see benchmarks/cost_model.py for the full calibration)."""
    points = [(n, c) for n in (1, 2, 4, 8, 16, 32, 64, 128) for c in (0, 128, 384)]
    records = measure_passes(engine.pair.slm, points, repeats=3) + measure_passes(engine.pair.llm, points, repeats=3)
    return PairCostModel.fit(records, pair=f"{engine.pair.slm.name}+{engine.pair.llm.name}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    engine, real = build_engine(args, device)
    pair = engine.pair
    if args.cost_model:
        cost_model: PairCostModel | None = PairCostModel.load(Path(args.cost_model))
    elif args.calibrate:
        cost_model = calibrate(engine)
    else:
        cost_model = shipped_cost_model(pair.slm.name, pair.llm.name, device, pair.llm.dtype) if real else None
    workloads = load_workloads(args, pair.vocab_size, use_recorded_prompts=real)
    if not workloads:
        raise SystemExit("no traces: give --traces and/or --synthetic")
    rows = []
    with tqdm(total=len(workloads) * args.repeats, desc="harness", file=sys.stderr) as progress:
        for workload in workloads:
            progress.set_postfix_str(workload.name)
            rows.append(measure(engine, workload, args.repeats, not args.no_assisted, device, cost_model, progress))
    models = {role: {"name": loaded.name, "parameters": sum(p.numel() for p in loaded.model.parameters()),
                     "parameter_bytes": parameter_bytes(loaded.model),
                     "dtype": str(next(loaded.model.parameters()).dtype),
                     "shape": SHAPES.get(loaded.name)}
              for role, loaded in (("slm", pair.slm), ("llm", pair.llm))}
    models["pair_parameter_bytes"] = parameter_bytes(pair.slm.model, pair.llm.model)
    return {
        "benchmark": "harness",
        "command": " ".join(sys.argv),
        "pair": {"slm": pair.slm.name, "llm": pair.llm.name, "real_weights": real},
        "execution": {role: dataclasses.asdict(loaded.execution) for role, loaded in (("slm", pair.slm), ("llm", pair.llm))},
        "device": processor_name(device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "repeats": args.repeats,
        "seed": args.seed,
        "cost_model": None if cost_model is None else cost_model.to_dict(),
        "models": models,
        "rows": rows,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pair = p.add_argument_group("pair (default: the default pair, real weights)")
    pair.add_argument("--llm", default=None, help="real LLM (hub id, folder, alias)")
    pair.add_argument("--slm", default=None, help="real SLM")
    pair.add_argument("--slm-layers", type=int, default=None, help="SLM: the first N layers of the real LLM")
    pair.add_argument("--slm-shape", choices=sorted(SHAPES), default=None, help="SLM as a config shape, random weights")
    pair.add_argument("--llm-shape", choices=sorted(SHAPES), default=None, help="LLM as a config shape, random weights")
    pair.add_argument("--device", default="auto")
    pair.add_argument("--kv-cache", choices=["dynamic", "static"], default=None,
                      help="KV cache backend of both models (default: dynamic; static with --compile)")
    pair.add_argument("--compile", action="store_true", help="compiled steps (CUDA graphs on CUDA); static cache")
    pair.add_argument("--cache-tokens", type=int, default=None, help="capacity of every static cache")
    pair.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                      help="auto: bfloat16 where native (CUDA, AVX512-BF16/AMX CPUs), else float32")
    work = p.add_argument_group("traces")
    work.add_argument("--traces", nargs="*", default=[], help="trace files or folders of recorded traces")
    work.add_argument("--max-traces", type=int, default=None, help="use at most this many recorded traces")
    work.add_argument("--max-output-tokens", type=int, default=None, help="cut recorded traces to this many tokens")
    work.add_argument("--synthetic", type=lambda s: [float(x) for x in s.split(",") if x], default=[],
                      help="SLM shares of synthetic traces, e.g. 0.6,0.8,0.95")
    work.add_argument("--mean-llm-run", type=float, default=4.0, help="mean LLM run length of synthetic traces")
    work.add_argument("--run-lengths", choices=["geometric", "fixed"], default="geometric")
    work.add_argument("--prompt-tokens", type=int, default=64, help="prompt length of synthetic traces")
    work.add_argument("--output-tokens", type=int, default=128, help="output length of synthetic traces")
    out = p.add_argument_group("measurement and output")
    out.add_argument("--repeats", type=int, default=3)
    out.add_argument("--no-assisted", action="store_true", help="skip HF assisted generation")
    out.add_argument("--cost-model", default=None, help="cost model JSON for predicted speedups")
    out.add_argument("--calibrate", action="store_true", help="fit a quick cost model in this run")
    out.add_argument("--seed", type=int, default=0)
    out.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    out.add_argument("--json", type=Path, default=None, help="write the full report here")
    out.add_argument("--plot", type=Path, default=None, help="write a speedup/efficiency plot here (PNG)")
    rec = p.add_argument_group("recording traces (real pair)")
    rec.add_argument("--record", default=None, metavar="DIR", help="record traces of the real pair into DIR and exit")
    rec.add_argument("--tau", type=float, default=None, help="threshold for recording (default: the engine's)")
    rec.add_argument("--record-tokens", type=int, default=160, help="max new tokens per recorded trace")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.record:
        return record(args)
    report = run(args)
    print(markdown_tables(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
