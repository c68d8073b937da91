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
in the calling thread's CPU time by default (``--clock``; with one torch thread it holds all the work).
"Added outside forward" is the same difference with the time inside the models' forward calls taken
out of both (hooks on the models): both loops run the same passes, so this is the engine's own
work with less of the noise a loaded machine puts into the passes. Prompt lookup is off (a bare loop has none).

    python benchmarks/per_token_cost.py --tokens 200 --repeats 5 --json benchmarks/results/per_token_cost_after.json
    git archive 0af5d46 rstitch_engine | tar -x -C /tmp/before    # the engine before the runner refactor
    python benchmarks/per_token_cost.py --engine-from /tmp/before --tokens 200 --repeats 5 \
        --json benchmarks/results/per_token_cost_before.json
    python benchmarks/per_token_cost.py --compare benchmarks/results/per_token_cost_before.json \
        benchmarks/results/per_token_cost_after.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator


def _engine_from_argv() -> None:
    """``--engine-from DIR``: import ``rstitch_engine`` from DIR (a source tree of another commit, e.g.
    ``git archive <commit> rstitch_engine | tar -x -C DIR``) instead of the installed one."""
    if "--engine-from" in sys.argv:
        folder = sys.argv[sys.argv.index("--engine-from") + 1]
        sys.meta_path[:] = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
        sys.path.insert(0, folder)


_engine_from_argv()

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache  # noqa: E402

from rstitch_engine import AlwaysLLMRouter, EntropyRouter, GenerationSettings, ModelPair, StitchEngine  # noqa: E402
from rstitch_engine.decoding.sampling import normalised_entropy  # noqa: E402
from rstitch_engine.models.defaults import default_llm_folder  # noqa: E402
from rstitch_engine.models.loaded import cache_keyword  # noqa: E402

CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.thread_time, "wall": time.perf_counter}
"""``cpu``: CPU time of the calling thread, which runs both loops' passes (one torch thread) and the
engine's steps (a consumer drives its own steps), so other processes' load barely moves it."""
PROMPT = "Write a long story about a lighthouse keeper and a storm at sea, with many small details."


def tiny_default_pair(layers: int, hidden_size: int | None = None) -> ModelPair:
    """Two random float32 models of the default LLM's architecture with ``layers`` layers, and its tokenizer.

    ``hidden_size`` (None: the LLM's own, 576) narrows the models: attention heads of the LLM's head size
    (64), as many key/value heads, the MLP narrowed in proportion. The output head is vocabulary x hidden
    size, so at 576 each pass streams its 113 MB of float32 weights through the CPU's caches."""
    folder = default_llm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    config.num_hidden_layers = layers
    if hidden_size is not None:
        head_size = config.hidden_size // config.num_attention_heads
        config.intermediate_size = max(1, config.intermediate_size * hidden_size // config.hidden_size)
        config.hidden_size, config.head_dim = hidden_size, head_size
        config.num_attention_heads = config.num_key_value_heads = max(1, hidden_size // head_size)
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


ARGMAX: dict[str, Callable[[torch.Tensor], int]] = {
    "torch": lambda logits: int(torch.argmax(logits)),
    "numpy": lambda logits: int(logits.numpy().argmax()),  # what the engine's greedy choice runs on a CPU
}
"""The bare loops' greedy choice (``--bare-argmax``): over a vocabulary-sized row torch's reduction costs
tens of microseconds more than NumPy's, a difference of the loops, not of the engine's bookkeeping."""


def bare_alone(pair: ModelPair, prompt: list[int], argmax: str = "torch") -> Iterator[tuple[int, str]]:
    """The LLM's greedy tokens by the tightest cached loop, one (token, writer) per ``next()``."""
    llm = BareModel(pair.llm.model, pair.vocab_size)
    sequence = list(prompt)
    while True:
        with torch.inference_mode():
            token = ARGMAX[argmax](llm.logits(sequence))
        sequence.append(token)
        yield token, "llm"


def bare_stitch(pair: ModelPair, prompt: list[int], tau: float, argmax: str = "torch") -> Iterator[tuple[int, str]]:
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
            token = ARGMAX[argmax](logits)
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


class ForwardClock:
    """Time spent inside the models' forward calls (hooks on both models), on the benchmark's clock."""

    def __init__(self, pair: ModelPair, clock: Callable[[], float]) -> None:
        self.clock, self.seconds, self._entered = clock, 0.0, 0.0
        for model in {id(m): m for m in (pair.slm.model, pair.llm.model)}.values():
            model.register_forward_pre_hook(self._enter)
            model.register_forward_hook(self._leave)

    def _enter(self, *_: object) -> None:
        self._entered = self.clock()

    def _leave(self, *_: object) -> None:
        self.seconds += self.clock() - self._entered


def lockstep(bare: Iterator[tuple[int, str]], engine: Iterator[tuple[int, str]], tokens: int,
             forward: ForwardClock) -> tuple[list[float], list[float], list[str]]:
    """([seconds, of which in forward] for the bare loop, the same for the engine, writers) over ``tokens``
    tokens taken one from each in turn, alternating which goes first; both must give the same token and
    writer every time."""
    totals, sources, clock = [[0.0, 0.0], [0.0, 0.0]], [], forward.clock
    loops = (bare, engine)
    for index in range(tokens):
        produced = [None, None]
        for which in ((0, 1) if index % 2 == 0 else (1, 0)):
            start, in_forward = clock(), forward.seconds
            produced[which] = next(loops[which], None)
            totals[which][0] += clock() - start
            totals[which][1] += forward.seconds - in_forward
        if produced[0] != produced[1] or produced[1] is None:
            raise RuntimeError(f"the engine's token {index} differs from the bare loop's: {produced}")
        sources.append(produced[1][1])
    return totals[0], totals[1], sources


def measure(pair: ModelPair, engine: StitchEngine, prompt: list[int], tau: float, tokens: int, repeats: int,
            forward: ForwardClock, argmax: str = "torch") -> dict[str, Any]:
    """Per workload: bare and engine seconds of every repeat, and the writers of the tokens."""
    workloads = {
        "alone": lambda: (bare_alone(pair, prompt, argmax),
                          engine_events(engine, prompt, tokens, AlwaysLLMRouter())),
        "stitch": lambda: (bare_stitch(pair, prompt, tau, argmax),
                           engine_events(engine, prompt, tokens, EntropyRouter(tau))),
    }
    found: dict[str, Any] = {name: {"bare": [], "engine": [], "sources": []} for name in workloads}
    for _ in range(repeats):
        for name, make in workloads.items():
            bare_s, engine_s, sources = lockstep(*make(), tokens, forward)
            found[name]["bare"].append(bare_s)
            found[name]["engine"].append(engine_s)
            found[name]["sources"] = sources
    return found


def summary(found: dict[str, Any], workload: str, tokens: int) -> dict[str, Any]:
    found = found[workload]
    bare, engine = [b for b, _ in found["bare"]], [e for e, _ in found["engine"]]
    added = [(e - b) / tokens * 1e6 for b, e in zip(bare, engine)]
    # the same difference without the time inside the models' forward calls (the part that varies with load)
    outside = [((e - ef) - (b - bf)) / tokens * 1e6 for (b, bf), (e, ef) in zip(found["bare"], found["engine"])]
    return {
        "workload": "LLM alone" if workload == "alone" else "stitching",
        "tokens": tokens,
        "llm_tokens": found["sources"].count("llm"),
        "bare_us_per_token": statistics.median(bare) / tokens * 1e6,
        "engine_us_per_token": statistics.median(engine) / tokens * 1e6,
        "added_us_per_token": statistics.median(added),
        "added_us_per_repeat": added,
        "added_outside_forward_us_per_token": statistics.median(outside),
        "added_outside_forward_us_per_repeat": outside,
        "ratio": statistics.median(e / b for b, e in zip(bare, engine)),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=3, help="layers of each tiny model")
    parser.add_argument("--hidden-size", type=int, default=None,
                        help="hidden size of each tiny model (default: the LLM's, 576)")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per run")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--tau", type=float, default=None, help="default: the SLM's median entropy")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: the calling thread's CPU time (steady on a shared machine); wall: elapsed time")
    parser.add_argument("--engine-from", type=Path, default=None,
                        help="import rstitch_engine from this source tree (another commit's), for a before/after")
    parser.add_argument("--compare", type=Path, nargs=2, default=None, metavar=("BEFORE", "AFTER"),
                        help="print two JSON results side by side and exit")
    parser.add_argument("--bare-argmax", choices=sorted(ARGMAX), default="torch",
                        help="the bare loops' greedy choice (torch: as in the earlier runs; numpy: as the engine's)")
    parser.add_argument("--label", default="", help="a name for this code state, stored in the JSON")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.compare:
        print_comparison(*(json.loads(path.read_text()) for path in args.compare))
        return []
    torch.set_num_threads(args.threads)
    pair = tiny_default_pair(args.layers, args.hidden_size)
    engine = StitchEngine(pair)
    prompt = engine.encode(PROMPT)
    tau = args.tau if args.tau is not None else median_slm_entropy(pair, prompt, 32)
    forward = ForwardClock(pair, CLOCKS[args.clock])
    measure(pair, engine, prompt, tau, 16, 1, forward, args.bare_argmax)  # warm-up
    found = measure(pair, engine, prompt, tau, args.tokens, args.repeats, forward, args.bare_argmax)
    rows = [summary(found, workload, args.tokens) for workload in ("alone", "stitch")]
    hidden_size = pair.llm.model.config.hidden_size
    print_table(rows, args, tau, hidden_size)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "label": args.label, "clock": args.clock, "bare_argmax": args.bare_argmax, "layers": args.layers,
            "hidden_size": hidden_size,
            "threads": args.threads, "repeats": args.repeats,
            "engine": str(Path(sys.modules["rstitch_engine"].__file__).parent),
            "tau": tau, "prompt_tokens": len(prompt), "platform": platform.processor() or platform.machine(),
            "torch": torch.__version__, "rows": rows,
        }, indent=2))
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, tau: float, hidden_size: int) -> None:
    table = Table(title=f"Engine cost per token above a bare loop: {args.layers}-layer random models of hidden size "
                        f"{hidden_size}, "
                        f"{args.threads} thread(s), {args.clock} time, median of {args.repeats} repeats, tau {tau:.4f}, "
                        f"bare loops' argmax: {args.bare_argmax}")
    for column in ("workload", "tokens (LLM)", "bare us/token", "engine us/token", "added us/token",
                   "added outside forward", "ratio"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["workload"], f"{row['tokens']} ({row['llm_tokens']})", f"{row['bare_us_per_token']:.0f}",
                      f"{row['engine_us_per_token']:.0f}", f"{row['added_us_per_token']:.0f}",
                      f"{row['added_outside_forward_us_per_token']:.0f}", f"{row['ratio']:.3f}")
    Console().print(table)


def print_comparison(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Added microseconds per token (all, and outside the models' forward calls), before and after."""
    table = Table(title=f"Engine cost per token above a bare loop ({before['clock']} time, {before['layers']} layers, "
                        f"{before['threads']} thread(s)): {before['label']} -> {after['label']}")
    for column in ("workload", "bare us/token", "added before", "added after", "outside forward before",
                   "outside forward after", "ratio before", "ratio after"):
        table.add_column(column, justify="right")
    for old, new in zip(before["rows"], after["rows"]):
        table.add_row(old["workload"], f"{old['bare_us_per_token']:.0f} / {new['bare_us_per_token']:.0f}",
                      f"{old['added_us_per_token']:.0f}", f"{new['added_us_per_token']:.0f}",
                      f"{old.get('added_outside_forward_us_per_token', float('nan')):.0f}",
                      f"{new['added_outside_forward_us_per_token']:.0f}", f"{old['ratio']:.3f}", f"{new['ratio']:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
