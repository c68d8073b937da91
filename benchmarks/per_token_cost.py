"""The engine's own cost per token: its time above a bare cached greedy loop that computes the same tokens.

A tiny random-weight pair is built from the default LLM's config with few layers (``--layers``),
over the default tokenizer, so that a forward pass is short, as a pass of a larger model is on a
GPU, and the engine's per-token Python work shows. Two workloads, each against its own bare loop,
run in lockstep with the engine (one token from each in turn, alternating which goes first, so a
shared machine's load falls on both alike):

* **LLM alone** (always-LLM router): the bare loop is the tightest cached greedy loop of the LLM
  (one pass per token, argmax, no engine);
* **stitching** (entropy router at ``--tau``; default: the median normalised entropy of the SLM's
  first tokens, so both models write a share): the bare loop is a minimal Algorithm 1 written
  here, with two caches, the engine's own entropy function and the same greedy choice.

Each bare loop must produce the engine's tokens and the same writer of every token (a mismatch
stops the benchmark, as does an EOS, where the engine ends and the bare loop does not). The figure
is the median over repeats of (engine seconds - bare seconds) / tokens, prefill included in both,
in the calling thread's CPU time by default (``--clock``; with one torch thread it holds all the work). Prompt lookup is off (a bare loop has none).

    python benchmarks/per_token_cost.py --layers 3 --tokens 200 --repeats 7 --json benchmarks/results/per_token_cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache

from rstitch_engine import AlwaysLLMRouter, EntropyRouter, GenerationSettings, ModelPair, StitchEngine
from rstitch_engine.decoding.sampling import normalised_entropy
from rstitch_engine.models.defaults import default_llm_folder
from rstitch_engine.models.loaded import cache_keyword

CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.thread_time, "wall": time.perf_counter}
"""``cpu``: CPU time of the calling thread, which runs both loops' passes (one torch thread) and the
engine's steps (a consumer drives its own steps), so other processes' load barely moves it."""
PROMPT = "Write a long story about a lighthouse keeper and a storm at sea, with many small details."


def tiny_default_pair(layers: int) -> ModelPair:
    """Two random float32 models of the default LLM's architecture with ``layers`` layers, and its tokenizer."""
    folder = default_llm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    config.num_hidden_layers = layers
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval())
    return ModelPair.from_models(models[0], models[1], tokenizer, slm_name=f"tiny-{layers}-slm",
                                 llm_name=f"tiny-{layers}-llm")


class BareModel:
    """One model's cache and a cached greedy pass: no engine code at all."""

    def __init__(self, model: Any, vocab_size: int) -> None:
        self.model, self.vocab_size = model, vocab_size
        self.cache = DynamicCache(config=model.config)
        self.keyword = cache_keyword(model)
        self.fed = 0  # tokens the cache covers

    def logits(self, tokens: list[int]) -> torch.Tensor:
        """Feed ``tokens[fed:]``; the float32 logits [V] that predict the next token."""
        ids = torch.tensor([tokens[self.fed:]])
        out = self.model(input_ids=ids, **{self.keyword: self.cache}, use_cache=True, logits_to_keep=1,
                         cache_position=torch.arange(self.fed, len(tokens)))
        self.fed = len(tokens)
        return out.logits[0, -1, : self.vocab_size].float()


def bare_alone(pair: ModelPair, prompt: list[int]) -> Iterator[tuple[int, str]]:
    """The LLM's greedy tokens by the tightest cached loop, one (token, writer) per ``next()``."""
    llm = BareModel(pair.llm.model, pair.vocab_size)
    sequence = list(prompt)
    while True:
        with torch.inference_mode():
            token = int(torch.argmax(llm.logits(sequence)))
        sequence.append(token)
        yield token, "llm"


def bare_stitch(pair: ModelPair, prompt: list[int], tau: float) -> Iterator[tuple[int, str]]:
    """Algorithm 1, greedy, by a minimal loop: the SLM writes while its entropy is at most tau, else the
    LLM writes that position and keeps control until its own entropy is at most tau."""
    models = {"slm": BareModel(pair.slm.model, pair.vocab_size), "llm": BareModel(pair.llm.model, pair.vocab_size)}
    sequence, active = list(prompt), "slm"
    while True:
        with torch.inference_mode():
            logits = models[active].logits(sequence)
            entropy = normalised_entropy(logits)
            if active == "slm" and entropy > tau:
                active = "llm"  # the SLM's token is discarded; the LLM decodes this position
                continue
            token = int(torch.argmax(logits))
        sequence.append(token)
        yield token, active
        if active == "llm" and entropy <= tau:
            active = "slm"


def engine_events(engine: StitchEngine, prompt: list[int], tokens: int, router: Any) -> Iterator[tuple[int, str]]:
    settings = GenerationSettings(max_new_tokens=tokens, prompt_lookup_tokens=0)
    for event in engine.stream(prompt, settings, router):
        yield event.token_id, event.source


def median_slm_entropy(pair: ModelPair, prompt: list[int], tokens: int) -> float:
    """The median normalised entropy of the SLM's greedy tokens: a tau at which both models write."""
    with torch.inference_mode():
        slm = BareModel(pair.slm.model, pair.vocab_size)
        sequence, entropies = list(prompt), []
        for _ in range(tokens):
            logits = slm.logits(sequence)
            entropies.append(normalised_entropy(logits))
            sequence.append(int(torch.argmax(logits)))
    return statistics.median(entropies)


def lockstep(bare: Iterator[tuple[int, str]], engine: Iterator[tuple[int, str]], tokens: int,
             clock: Callable[[], float] = time.thread_time) -> tuple[float, float, list[str]]:
    """(bare seconds, engine seconds, writers) over ``tokens`` tokens taken one from each in turn,
    alternating which goes first; the two must give the same token and writer every time."""
    totals, sources = [0.0, 0.0], []
    loops = (bare, engine)
    for index in range(tokens):
        produced = [None, None]
        for which in ((0, 1) if index % 2 == 0 else (1, 0)):
            start = clock()
            produced[which] = next(loops[which], None)
            totals[which] += clock() - start
        if produced[0] != produced[1] or produced[1] is None:
            raise RuntimeError(f"the engine's token {index} differs from the bare loop's: {produced}")
        sources.append(produced[1][1])
    return totals[0], totals[1], sources


def measure(pair: ModelPair, engine: StitchEngine, prompt: list[int], tau: float, tokens: int, repeats: int,
            clock: Callable[[], float]) -> dict[str, Any]:
    """Per workload: bare and engine seconds of every repeat, and the writers of the tokens."""
    workloads = {
        "alone": lambda: (bare_alone(pair, prompt), engine_events(engine, prompt, tokens, AlwaysLLMRouter())),
        "stitch": lambda: (bare_stitch(pair, prompt, tau), engine_events(engine, prompt, tokens, EntropyRouter(tau))),
    }
    found: dict[str, Any] = {name: {"bare": [], "engine": [], "sources": []} for name in workloads}
    for _ in range(repeats):
        for name, make in workloads.items():
            bare_s, engine_s, sources = lockstep(*make(), tokens, clock)
            found[name]["bare"].append(bare_s)
            found[name]["engine"].append(engine_s)
            found[name]["sources"] = sources
    return found


def summary(found: dict[str, Any], workload: str, tokens: int) -> dict[str, Any]:
    bare, engine, sources = found[workload]["bare"], found[workload]["engine"], found[workload]["sources"]
    added = [(e - b) / tokens * 1e6 for b, e in zip(bare, engine)]
    return {
        "workload": "LLM alone" if workload == "alone" else "stitching",
        "tokens": tokens,
        "llm_tokens": sources.count("llm"),
        "bare_us_per_token": statistics.median(bare) / tokens * 1e6,
        "engine_us_per_token": statistics.median(engine) / tokens * 1e6,
        "added_us_per_token": statistics.median(added),
        "added_us_per_repeat": added,
        "ratio": statistics.median(e / b for b, e in zip(bare, engine)),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=3, help="layers of each tiny model")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per run")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--tau", type=float, default=None, help="default: the SLM's median entropy")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: the calling thread's CPU time (steady on a shared machine); wall: elapsed time")
    parser.add_argument("--label", default="", help="a name for this code state, stored in the JSON")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pair = tiny_default_pair(args.layers)
    engine = StitchEngine(pair)
    prompt = engine.encode(PROMPT)
    tau = args.tau if args.tau is not None else median_slm_entropy(pair, prompt, 32)
    clock = CLOCKS[args.clock]
    measure(pair, engine, prompt, tau, 16, 1, clock)  # warm-up
    found = measure(pair, engine, prompt, tau, args.tokens, args.repeats, clock)
    rows = [summary(found, workload, args.tokens) for workload in ("alone", "stitch")]
    print_table(rows, args, tau)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "label": args.label, "clock": args.clock, "layers": args.layers, "threads": args.threads, "repeats": args.repeats,
            "tau": tau, "prompt_tokens": len(prompt), "platform": platform.processor() or platform.machine(),
            "torch": torch.__version__, "rows": rows,
        }, indent=2))
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, tau: float) -> None:
    table = Table(title=f"Engine cost per token above a bare loop: {args.layers}-layer random models, "
                        f"{args.threads} thread(s), {args.clock} time, median of {args.repeats} repeats, tau {tau:.4f}")
    for column in ("workload", "tokens (LLM)", "bare us/token", "engine us/token", "added us/token", "ratio"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["workload"], f"{row['tokens']} ({row['llm_tokens']})", f"{row['bare_us_per_token']:.0f}",
                      f"{row['engine_us_per_token']:.0f}", f"{row['added_us_per_token']:.0f}", f"{row['ratio']:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
