"""Grammar-constrained tool calls and extraction on the default pair: validity, accuracy, speed, grammar cost.

A fixed set of tasks: tool-calling prompts (three bound tools, a required call, one expected call
each) and extraction prompts (a JSON schema, one expected object each). Every task is decoded three
ways, side by side in one run, on the same prompt ids:

* **constrained stitched**: the engine under the task's grammar (``rstitch_integrations.core.prepare_call``,
  what ``ChatRStitch`` / ``RStitchLLM`` send), entropy router at the default tau;
* **constrained LLM alone**: the LLM alone under the same grammar (``decode_alone``);
* **free LLM alone**: the LLM alone without a grammar, after the free-generation opening
  (``constrained=False``), parsed as the adapters parse it.

Per configuration: **validity** (the answer parses to a call of a bound tool whose arguments are
valid against its JSON schema, checked with ``jsonschema``; for extraction, a JSON value valid
against the schema), **exact accuracy** (arguments / object equal to the expected ones), SLM share,
seconds, and the **speedup** of constrained stitched over each LLM-alone configuration (their
seconds over its seconds on the same tasks). The **grammar overhead** is the time to compute a
step's allowed-token mask, mask the logits and advance the grammar, replayed along every
constrained stitched answer, over the median time of one SLM decode step (a cached one-token
forward pass at the same prompt lengths); the goal is under 5%.

    python benchmarks/constrained.py --json benchmarks/results/constrained.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import jsonschema
import torch
from rich.console import Console
from rich.table import Table
from transformers import DynamicCache

from rstitch_engine import GenerationSettings, StitchEngine, shared_engine
from rstitch_engine.models.defaults import DEFAULT_THRESHOLD
from rstitch_engine.models.hardware import processor_name
from rstitch_engine.models.loaded import cache_keyword
from rstitch_integrations.answer_parsing import parse_output
from rstitch_integrations.prompt import normalise_tool_schema
from rstitch_integrations.core import PreparedCall, StitchOptions, prepare_call

CONFIGS = ("constrained_stitched", "constrained_llm_alone", "free_llm_alone")

TOOLS = [normalise_tool_schema(tool) for tool in (
    {"name": "multiply", "description": "Multiply two integers and return the product.",
     "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"]}},
    {"name": "capital_of", "description": "Look up the capital city of a country.",
     "parameters": {"type": "object", "properties": {"country": {"type": "string"}}, "required": ["country"]}},
    {"name": "get_weather", "description": "Get the current weather in a city.",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                     "unit": {"enum": ["celsius", "fahrenheit"]}},
                    "required": ["city", "unit"]}},
)]
SCHEMAS = {name: tool["function"]["parameters"] for name, tool in ((t["function"]["name"], t) for t in TOOLS)}

TOOL_TASKS = [
    ("What is 6 times 7?", "multiply", {"a": 6, "b": 7}),
    ("Multiply 12 by 3.", "multiply", {"a": 12, "b": 3}),
    ("What is 25 times 4?", "multiply", {"a": 25, "b": 4}),
    ("What do you get if you multiply 9 and 8?", "multiply", {"a": 9, "b": 8}),
    ("What is the capital of France?", "capital_of", {"country": "France"}),
    ("Which city is the capital of Japan?", "capital_of", {"country": "Japan"}),
    ("Tell me the capital of Italy.", "capital_of", {"country": "Italy"}),
    ("What is the capital city of Germany?", "capital_of", {"country": "Germany"}),
    ("What is the weather in Paris in celsius?", "get_weather", {"city": "Paris", "unit": "celsius"}),
    ("How warm is it in London? Give me fahrenheit.", "get_weather", {"city": "London", "unit": "fahrenheit"}),
    ("Is it raining in Tokyo? Use celsius.", "get_weather", {"city": "Tokyo", "unit": "celsius"}),
    ("What's the weather like in Madrid, in fahrenheit?", "get_weather", {"city": "Madrid", "unit": "fahrenheit"}),
]
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
PLACE = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
         "required": ["city", "country"]}
EXTRACTION_TASKS = [
    ("Alice is 30 years old.", PERSON, {"name": "Alice", "age": 30}),
    ("Bob, aged 42, lives in Leeds.", PERSON, {"name": "Bob", "age": 42}),
    ("My friend Carol turned 25 last week.", PERSON, {"name": "Carol", "age": 25}),
    ("David is a 19 year old student.", PERSON, {"name": "David", "age": 19}),
    ("Paris is in France.", PLACE, {"city": "Paris", "country": "France"}),
    ("Tokyo is the largest city of Japan.", PLACE, {"city": "Tokyo", "country": "Japan"}),
    ("We flew to Rome, Italy.", PLACE, {"city": "Rome", "country": "Italy"}),
    ("Berlin, the German capital, is in Germany.", PLACE, {"city": "Berlin", "country": "Germany"}),
]


@dataclass(frozen=True)
class Task:
    """One prompt, prepared constrained and free as the adapters prepare it, and the expected call or object."""

    kind: str  # 'tool' or 'extraction'
    constrained: PreparedCall
    free: PreparedCall
    schema: dict[str, Any]
    expected: Any  # (tool name, arguments) or the object


def build_tasks(engine: StitchEngine, max_new_tokens: int) -> list[Task]:
    """Each task through ``prepare_call``, the adapters' own request path (template, tools or JSON
    instruction, grammar, forced opening), once constrained and once free."""
    options = {flag: StitchOptions(max_tokens=max_new_tokens, constrained=flag) for flag in (True, False)}

    def prepared(question: str, call: dict[str, Any]) -> list[PreparedCall]:
        messages = [{"role": "user", "content": question}]
        return [prepare_call(engine, options[flag], messages, call) for flag in (True, False)]

    tasks = []
    for question, name, arguments in TOOL_TASKS:
        calls = prepared(question, {"tools": TOOLS, "tool_choice": "any"})
        tasks.append(Task("tool", *calls, SCHEMAS[name], (name, arguments)))
    for text, schema, expected in EXTRACTION_TASKS:
        calls = prepared(f"Extract the fields from: {text}", {"response_format": {"type": "json_schema", "schema": schema}})
        tasks.append(Task("extraction", *calls, schema, expected))
    return tasks


def judge(task: Task, call: PreparedCall, text: str) -> tuple[bool, bool]:
    """(valid, exact) for an answer ``text`` decoded after ``call.prefix``."""
    answer = call.prefix + text + ("</tool_call>" if call.forced_call and "</tool_call>" not in text else "")
    if task.kind == "tool":
        calls = parse_output(answer, tool_names=SCHEMAS).tool_calls
        if len(calls) != 1:
            return False, False
        value, got = calls[0].arguments, (calls[0].name, calls[0].arguments)
        schema = SCHEMAS[calls[0].name]
    else:
        try:
            value = got = json.loads(answer)
        except json.JSONDecodeError:
            return False, False
        schema = task.schema
    valid = jsonschema.Draft202012Validator(schema).is_valid(value)
    return valid, valid and got == task.expected


def run_config(engine: StitchEngine, tasks: list[Task], config: str, max_new_tokens: int) -> dict[str, Any]:
    rows = []
    for task in tasks:
        call = task.free if config == "free_llm_alone" else task.constrained
        ids, settings = call.prompt_ids, call.settings
        start = time.perf_counter()
        if config == "constrained_stitched":
            result = engine.generate(ids, settings, call.routing)
            seconds, text, slm = time.perf_counter() - start, result.text, result.stats.slm_tokens
            token_ids, finish = list(result.token_ids), result.finish_reason
            sources = [event.source for event in result.events]
        else:
            alone = engine.decode_alone("llm", ids, settings)
            seconds, text, slm = time.perf_counter() - start, alone.text, 0
            token_ids = list(alone.token_ids)
            finish = "length" if len(token_ids) >= max_new_tokens else "stop"
            sources = ["llm"] * len(token_ids)
        valid, exact = judge(task, call, text)
        rows.append({"kind": task.kind, "valid": valid, "exact": exact, "seconds": seconds, "tokens": len(token_ids),
                     "slm_tokens": slm, "finish_reason": finish, "text": call.prefix + text, "token_ids": token_ids,
                     "sources": sources})
    return {"tasks": rows, **_totals(rows)}


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    tokens = sum(r["tokens"] for r in rows)
    return {"validity": sum(r["valid"] for r in rows) / len(rows), "exact": sum(r["exact"] for r in rows) / len(rows),
            "seconds": sum(r["seconds"] for r in rows), "tokens": tokens,
            "slm_share": sum(r["slm_tokens"] for r in rows) / max(tokens, 1)}


@torch.inference_mode()
def slm_step_seconds(engine: StitchEngine, tasks: list[Task], steps: int = 8) -> float:
    """Median time of one cached one-token SLM forward pass, at the tasks' prompt lengths."""
    model, times = engine.pair.slm.model, []
    device, keyword = engine.pair.slm.device, cache_keyword(engine.pair.slm.model)
    for task in tasks[::3]:
        cache = DynamicCache()
        ids = torch.tensor([task.constrained.prompt_ids], device=device)
        model(input_ids=ids, use_cache=True, **{keyword: cache})
        token = ids[:, -1:]
        for _ in range(steps):
            start = time.perf_counter()
            model(input_ids=token, use_cache=True, **{keyword: cache})
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def grammar_replay(engine: StitchEngine, tasks: list[Task], stitched: dict[str, Any]) -> dict[str, float]:
    """Replayed along the kept tokens of every constrained stitched answer: the mean time per token of
    the grammar's work in a step (mask, masked logits, advance), the share of forced tokens (one
    allowed: no pass, credited to the active model), and the SLM's share of the open positions."""
    logits = torch.zeros(engine.pair.vocab_size)
    total, tokens, forced, open_by_slm = 0.0, 0, 0, 0
    for task, row in zip(tasks, stitched["tasks"]):
        state = engine._grammar_tokenizer.start(task.constrained.settings.grammar)
        for token, source in zip(row["token_ids"], row["sources"]):
            start = time.perf_counter()
            state.mask(logits)
            is_forced = state.allowed_count == 1
            state.consume(token)
            total += time.perf_counter() - start
            tokens, forced = tokens + 1, forced + is_forced
            open_by_slm += not is_forced and source == "slm"
    return {"grammar_seconds_per_token": total / max(tokens, 1), "forced_token_share": forced / max(tokens, 1),
            "open_position_slm_share": open_by_slm / max(tokens - forced, 1)}


def print_table(result: dict[str, Any]) -> None:
    table = Table(title=f"Constrained decoding, default pair ({result['processor']})")
    for column in ("configuration", "validity", "exact", "SLM share", "seconds", "speedup of stitched"):
        table.add_column(column, justify="right" if column != "configuration" else "left")
    stitched = result["configs"]["constrained_stitched"]["seconds"]
    for name in CONFIGS:
        row = result["configs"][name]
        speedup = "-" if name == "constrained_stitched" else f"{row['seconds'] / stitched:.2f}x"
        table.add_row(name, f"{row['validity']:.0%}", f"{row['exact']:.0%}", f"{row['slm_share']:.0%}",
                      f"{row['seconds']:.1f}", speedup)
    console = Console(width=120)
    console.print(table)
    overhead = result["grammar_overhead"]
    console.print(f"forced tokens (one allowed, no pass): {result['forced_token_share']:.0%} of the stitched answers' "
                  f"tokens; the SLM wrote {result['open_position_slm_share']:.0%} of the open positions")
    console.print(f"grammar per token: {overhead['grammar_seconds_per_token'] * 1e3:.3f} ms; one SLM decode step: "
                    f"{overhead['slm_step_seconds'] * 1e3:.2f} ms; overhead {overhead['fraction_of_slm_step']:.1%} "
                    f"(goal < 5%)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--limit", type=int, default=None, help="first N tasks of each kind (a quick run)")
    args = parser.parse_args(argv)

    engine = shared_engine(dtype=args.dtype)
    tasks = build_tasks(engine, args.max_new_tokens)
    if args.limit is not None:
        tasks = [t for t in tasks if t.kind == "tool"][: args.limit] + [t for t in tasks if t.kind == "extraction"][: args.limit]
    engine.generate(tasks[0].constrained.prompt_ids, GenerationSettings(max_new_tokens=4))  # warm-up
    configs = {name: run_config(engine, tasks, name, args.max_new_tokens) for name in CONFIGS}
    step = slm_step_seconds(engine, tasks)
    replay = grammar_replay(engine, tasks, configs["constrained_stitched"])
    stitched = configs["constrained_stitched"]["seconds"]
    result = {
        "processor": processor_name(engine.pair.llm.device), "machine": platform.platform(), "torch": torch.__version__,
        "dtype": str(engine.pair.llm.dtype), "threshold": DEFAULT_THRESHOLD, "max_new_tokens": args.max_new_tokens,
        "tasks": {"tool": sum(t.kind == "tool" for t in tasks), "extraction": sum(t.kind == "extraction" for t in tasks)},
        "configs": configs,
        "speedup_vs_constrained_llm_alone": configs["constrained_llm_alone"]["seconds"] / stitched,
        "speedup_vs_free_llm_alone": configs["free_llm_alone"]["seconds"] / stitched,
        "by_kind": {kind: {name: _totals([r for r in configs[name]["tasks"] if r["kind"] == kind]) for name in CONFIGS}
                    for kind in ("tool", "extraction")},
        "grammar_overhead": {"grammar_seconds_per_token": replay["grammar_seconds_per_token"], "slm_step_seconds": step,
                             "fraction_of_slm_step": replay["grammar_seconds_per_token"] / step},
        "forced_token_share": replay["forced_token_share"],
        "open_position_slm_share": replay["open_position_slm_share"],
    }
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
