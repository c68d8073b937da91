"""What rstitch does, on the default pair: each answer beside the LLM alone's, with measured times.

    python examples/demo.py                      (what `make demo` runs)
    python examples/demo.py --backend llama.cpp  (`make demo BACKEND=llama.cpp`: the same pair on llama.cpp)

Three short prompts the default pair answers well: a fact, a retrieval-style prompt with its passage,
and a tool call decoded under the tool-call grammar (as ``ChatRStitch.bind_tools`` would). For each,
the default preset's answer (tokens coloured by the model that wrote them: SLM green, LLM magenta),
the LLM alone's answer (a plain cached greedy loop), whether they match, and the wall time of each,
measured around the call; then one summary line naming the policy that ran and why.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from rstitch_engine import StitchEngine
from rstitch_engine.measure.everyday import WEATHER_TOOL
from rstitch_integrations.answer_parsing import parse_output
from rstitch_integrations.core import PreparedCall, StitchOptions, decode_call, prepare_call
from rstitch_integrations.tool_calls import TOOL_CALL_CLOSE

STYLES = {"slm": "green", "llm": "magenta"}
PASSAGE = "Mira Kolt owns a blue car. She lives near the river.\n\nTomas Brenner owns a red bicycle. He works at a bakery."
PROMPTS: list[tuple[str, str, dict[str, Any]]] = [
    ("a fact", "What is the capital of France? Answer in one sentence.", {}),
    ("retrieval", f"Read the passages and answer the question.\n\n{PASSAGE}\n\nQuestion: What colour is Mira "
                  "Kolt's car?", {}),
    ("tool call", "What's the weather like in Paris today?", {"tools": [WEATHER_TOOL], "tool_choice": "required"}),
]


@dataclass(frozen=True)
class Run:
    text: str
    """The whole answer, the forced opening of a tool call included."""
    shown: Text
    seconds: float


def stitched(engine: StitchEngine, call: PreparedCall) -> Run:
    """The default preset through the adapters' core (what ChatRStitch runs), timed around the call."""
    start = time.perf_counter()
    events = [step.event for step in decode_call(engine, call, separate_reasoning=True, measure_speedup=False)
              if step.event is not None]
    seconds = time.perf_counter() - start
    shown = Text()
    for event in events:
        shown.append(event.text, style=STYLES[event.source])
    return Run(call.prefix + "".join(e.text for e in events), shown, seconds)


def llm_alone(engine: StitchEngine, call: PreparedCall) -> Run:
    start = time.perf_counter()
    alone = engine.decode_alone("llm", call.prompt_ids, call.settings)
    seconds = time.perf_counter() - start
    return Run(call.prefix + alone.text, Text(alone.text, style=STYLES["llm"]), seconds)


def readable(run: Run, call: PreparedCall) -> Text:
    """A tool call as name(arguments), with the model-written part coloured; plain answers as they are."""
    if call.tool_names is None:
        return run.shown
    closed = run.text + (f"\n{TOOL_CALL_CLOSE}" if call.forced_call else "")  # the close is the call's stop string
    calls = parse_output(closed, tool_names=call.tool_names).tool_calls
    head = ", ".join(f"{c.name}({', '.join(f'{k}={v!r}' for k, v in c.arguments.items())})" for c in calls)
    return Text(f"{head or 'no valid call'}\n", style="bold") + run.shown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the default pair's answers beside the LLM alone's")
    parser.add_argument("--backend", default="transformers", choices=["transformers", "llama.cpp"])
    args = parser.parse_args(argv)
    console = Console(highlight=False)
    with console.status(f"loading the default pair (SmolLM2-135M-Instruct and its shipped draft) on {args.backend}"):
        engine = StitchEngine.from_pretrained(backend=args.backend)
        # llama.cpp keeps finished prompts' cells for reuse: the LLM-alone baseline gets a pair of its own, so
        # neither side starts from the other's cache (each reuses its own warm-up's, as a second ask would)
        baseline = StitchEngine(engine.pair) if args.backend == "transformers" else \
            StitchEngine.from_pretrained(backend=args.backend)
        options = StitchOptions(max_tokens=48)
        calls = [prepare_call(engine, options, [{"role": "user", "content": text}], extra) for _, text, extra in PROMPTS]
        for call in calls:  # warm-up, untimed: first calls pay for lazy set-up (grammars, caches)
            stitched(engine, call), llm_alone(baseline, call)
    policy = engine.policy()
    table = Table(title="rstitch default preset beside the LLM alone (SLM tokens green, LLM tokens magenta)",
                  title_justify="left", show_lines=True)
    for column in ("prompt", "rstitch (default)", "LLM alone", "same?", "time rstitch / LLM alone"):
        table.add_column(column)
    totals = [0.0, 0.0]
    matches = 0
    for (kind, text, _), call in zip(PROMPTS, calls):
        mine, theirs = stitched(engine, call), llm_alone(baseline, call)
        same = mine.text.strip() == theirs.text.strip()
        matches += same
        totals[0], totals[1] = totals[0] + mine.seconds, totals[1] + theirs.seconds
        question = text.rsplit("Question: ", 1)[-1]
        table.add_row(Text(f"{kind}\n", style="bold") + Text(question, style="dim"), readable(mine, call),
                      readable(theirs, call), "yes" if same else "no",
                      f"{mine.seconds:.2f} s / {theirs.seconds:.2f} s")
    console.print(table)
    console.print(f"{matches}/{len(PROMPTS)} answers identical to the LLM alone's; {totals[0]:.2f} s against "
                  f"{totals[1]:.2f} s ({totals[1] / totals[0]:.2f}x, measured). Policy: {policy.name} ({policy.reason}).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
