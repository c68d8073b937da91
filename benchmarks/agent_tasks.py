"""Agent tasks on the default pair through LangChain's ``create_agent``: completion, right tool, right arguments,
steps and speed, the adapter's default routing side by side with the LLM alone.

Each task is one user question to ``langchain.agents.create_agent(ChatRStitch(...), tools=TOOLS)``
(three real Python tools: multiply, add, capital_of), written as LangChain's docs write an agent.
Tasks either need one tool (an expected call) or need none (the expected answer is text and no
call). All tasks of a configuration run at once (``agent.batch``: the adapter shares forward passes
between concurrent requests, up to ``max_batch_size``), and the configurations take turns, in the
order A B ... then ... B A (``--rounds`` 2), so the shared machine's load hits all alike:

* **policy / default routing**: ``tool_policy="until_result"`` (a call is required until a tool
  result is in, then the answer), the adapter's default routing (``quality`` unset);
* **policy / LLM alone**: the same policy, ``quality="exact"`` (the LLM alone, prompt lookup only);
* **model chooses / default routing**: ``tool_policy="auto"`` (no policy: the 135M model decides);
  only with ``--configs`` (it triples a run that takes about an hour on a loaded 2-core CPU).

Per configuration: **completed** (the agent ended on its own with a final answer, within the
recursion limit, with no error), **right tool** (the first call names the expected tool; for a
task needing no tool: no call), **right arguments** (the first call's arguments equal the expected
ones), **answer** (the expected text is in the final answer), **steps** (model calls), the wall
**seconds** of each configuration's batches, and its **speed** against the policy on the LLM alone
(the baseline's seconds over this configuration's, summed over the rounds). Greedy decoding: every round
must give the same answers (checked; ``rounds_agree``). The policy forces a call on every first turn, so on tasks that
need no tool it always calls one: that cost is in the table, not hidden.

    python benchmarks/agent_tasks.py --json benchmarks/results/agent_tasks.json
    python benchmarks/agent_tasks.py --table-from benchmarks/results/agent_tasks.json   # the table again
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from rich.console import Console
from rich.table import Table

from rstitch_engine.models.hardware import processor_name
from rstitch_integrations.langchain import ChatRStitch

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
            "Egypt": "Cairo", "Canada": "Ottawa", "Kenya": "Nairobi"}


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product."""
    return a * b


@tool
def add(a: int, b: int) -> int:
    """Add two integers and return the sum."""
    return a + b


@tool
def capital_of(country: str) -> str:
    """Look up the capital city of a country."""
    return CAPITALS.get(country, f"unknown country {country!r}")


TOOLS = [multiply, add, capital_of]
SYSTEM_PROMPT = "You are a helpful assistant. Use the tools when they help."


@dataclass(frozen=True)
class Task:
    """One question; ``tool`` None: no tool is needed."""

    question: str
    tool: str | None
    arguments: dict[str, Any] | None
    answer: str
    """Text the final answer should contain."""


TASKS = [
    Task("What is 6 times 7?", "multiply", {"a": 6, "b": 7}, "42"),
    Task("What is 12 times 3?", "multiply", {"a": 12, "b": 3}, "36"),
    Task("Multiply 9 by 8.", "multiply", {"a": 9, "b": 8}, "72"),
    Task("What is 15 multiplied by 4?", "multiply", {"a": 15, "b": 4}, "60"),
    Task("What is 25 times 11?", "multiply", {"a": 25, "b": 11}, "275"),
    Task("What is 17 plus 26?", "add", {"a": 17, "b": 26}, "43"),
    Task("Add 120 and 35.", "add", {"a": 120, "b": 35}, "155"),
    Task("What is the sum of 48 and 52?", "add", {"a": 48, "b": 52}, "100"),
    Task("What is 7 plus 5?", "add", {"a": 7, "b": 5}, "12"),
    Task("What is the capital of France?", "capital_of", {"country": "France"}, "Paris"),
    Task("What is the capital of Japan?", "capital_of", {"country": "Japan"}, "Tokyo"),
    Task("Which city is the capital of Italy?", "capital_of", {"country": "Italy"}, "Rome"),
    Task("Tell me the capital of Egypt.", "capital_of", {"country": "Egypt"}, "Cairo"),
    Task("What is the capital city of Kenya?", "capital_of", {"country": "Kenya"}, "Nairobi"),
    Task("Say hello to me.", None, None, "ello"),
    Task("What colour is the sky on a clear day?", None, None, "blue"),
    Task("Name a fruit that is yellow.", None, None, "anana"),
    Task("What do bees make?", None, None, "honey"),
    Task("Is water wet? Answer yes or no.", None, None, "es"),
    Task("What animal says moo?", None, None, "cow"),
]

CONFIGS = {
    "policy / default routing": {"tool_policy": "until_result"},
    "policy / LLM alone": {"tool_policy": "until_result", "quality": "exact"},
    "model chooses / default routing": {"tool_policy": "auto"},
}
"""Configuration name -> ChatRStitch options (besides max_tokens)."""
BASELINE = "policy / LLM alone"


@dataclass
class Outcome:
    """One task under one configuration."""

    task: str
    config: str
    completed: bool
    right_tool: bool
    right_arguments: bool
    answer_ok: bool
    steps: int
    calls: list[list[Any]]
    final_answer: str
    error: str | None = None


def run_batch(config: str, model: ChatRStitch, tasks: Sequence[Task], recursion_limit: int) -> tuple[list[Outcome], float]:
    """Every task through one agent at once; the outcomes and the batch's wall seconds."""
    agent = create_agent(model, tools=TOOLS, system_prompt=SYSTEM_PROMPT)
    inputs = [{"messages": [{"role": "user", "content": task.question}]} for task in tasks]
    started = time.perf_counter()
    results = agent.batch(inputs, {"recursion_limit": recursion_limit, "max_concurrency": len(tasks)},
                          return_exceptions=True)
    seconds = time.perf_counter() - started
    return [outcome(config, task, result) for task, result in zip(tasks, results, strict=True)], seconds


def outcome(config: str, task: Task, result: Any) -> Outcome:
    if isinstance(result, Exception):  # a failed run is a result (not completed), with its reason
        return Outcome(task.question, config, False, False, False, False, 0, [], "", repr(result)[:200])
    replies = [m for m in result["messages"] if isinstance(m, AIMessage)]
    calls = [[c["name"], c["args"]] for m in replies for c in m.tool_calls]
    final = replies[-1] if replies else None
    completed = final is not None and not final.tool_calls and bool(str(final.content).strip())
    if task.tool is None:
        right_tool = right_arguments = not calls
    else:
        right_tool = bool(calls) and calls[0][0] == task.tool
        right_arguments = right_tool and calls[0][1] == task.arguments
    answer = str(final.content) if final is not None else ""
    return Outcome(task.question, config, completed, right_tool, right_arguments,
                   completed and task.answer.lower() in answer.lower(), len(replies), calls, answer)


def summarise(outcomes: list[Outcome], tasks: Sequence[Task], configs: Sequence[str],
              seconds: dict[str, list[float]]) -> dict[str, Any]:
    """Counts per configuration and group (``outcomes``: the first round's), seconds and speed over all rounds."""
    by_config: dict[str, Any] = {}
    needs = {t.question: t.tool is not None for t in tasks}
    for config in configs:
        mine = [o for o in outcomes if o.config == config]
        row: dict[str, Any] = {"tasks": len(mine)}
        for group, members in (("all", mine), ("tool needed", [o for o in mine if needs[o.task]]),
                               ("no tool needed", [o for o in mine if not needs[o.task]])):
            row[group] = {
                "tasks": len(members),
                "completed": sum(o.completed for o in members),
                "right_tool": sum(o.right_tool for o in members),
                "right_arguments": sum(o.right_arguments for o in members),
                "answer_ok": sum(o.answer_ok for o in members),
                "mean_steps": statistics.fmean(o.steps for o in members) if members else None,
            }
        row["batch_seconds"] = seconds[config]
        row["speed_vs_llm_alone"] = sum(seconds[BASELINE]) / sum(seconds[config])
        by_config[config] = row
    return by_config


def table(summary: dict[str, Any]) -> Table:
    out = Table(title="Agent tasks: create_agent on the default pair (counts out of each group's tasks)")
    for column in ("configuration", "group", "completed", "right tool", "right args", "answer", "steps",
                   "batch seconds (rounds)", "speed vs policy / LLM alone"):
        out.add_column(column)
    for config, row in summary.items():
        for group in ("tool needed", "no tool needed", "all"):
            cells = row[group]
            n = cells["tasks"]
            last = group == "all"
            out.add_row(config if group == "tool needed" else "", group, f"{cells['completed']}/{n}",
                        f"{cells['right_tool']}/{n}", f"{cells['right_arguments']}/{n}", f"{cells['answer_ok']}/{n}",
                        f"{cells['mean_steps']:.2f}" if n else "",
                        " + ".join(f"{x:.0f}" for x in row["batch_seconds"]) if last else "",
                        f"x{row['speed_vs_llm_alone']:.2f}" if last else "")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the outcomes and the summary here")
    parser.add_argument("--max-tokens", type=int, default=32, help="per model call")
    parser.add_argument("--recursion-limit", type=int, default=8, help="LangGraph steps before an agent is stopped")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every configuration (alternating order)")
    parser.add_argument("--tasks", type=int, default=len(TASKS), help="the first N tasks only (a quick look)")
    parser.add_argument("--configs", default=",".join(list(CONFIGS)[:2]),
                        help=f"comma-separated configurations, from: {', '.join(CONFIGS)} (default: the first two)")
    parser.add_argument("--table-from", type=Path, help="print the table of a JSON report written before, and stop")
    args = parser.parse_args(argv)
    console = Console(width=160)
    if args.table_from:
        console.print(table(json.loads(args.table_from.read_text())["summary"]))
        return 0

    tasks = TASKS[: args.tasks]
    configs = args.configs.split(",")
    if BASELINE not in configs or not set(configs) <= set(CONFIGS):
        parser.error(f"--configs must name configurations from {list(CONFIGS)}, {BASELINE!r} among them")
    models = {name: ChatRStitch(max_tokens=args.max_tokens, **CONFIGS[name]) for name in configs}
    models[BASELINE].invoke("Hi", max_tokens=1)  # load the pair before any timing
    rounds: list[list[Outcome]] = []
    seconds: dict[str, list[float]] = {config: [] for config in configs}
    for round_index in range(args.rounds):
        order = configs if round_index % 2 == 0 else configs[::-1]  # A B, then B A: load drifts hit both
        outcomes: list[Outcome] = []
        for config in order:
            batch, took = run_batch(config, models[config], tasks, args.recursion_limit)
            outcomes += batch
            seconds[config].append(took)
            print(f"round {round_index + 1}, {config}: {took:.1f} s", flush=True)
            for one in batch:
                print(f"  {one.task!r} -> calls {one.calls}, answer {one.final_answer[:60]!r}"
                      + (f", error {one.error}" if one.error else ""), flush=True)
        rounds.append(outcomes)
    first = rounds[0]
    key = lambda o: (o.config, o.task)  # noqa: E731
    rounds_agree = all(sorted(map(asdict, r), key=lambda d: (d["config"], d["task"]))
                       == sorted(map(asdict, first), key=lambda d: (d["config"], d["task"])) for r in rounds)
    summary = summarise(sorted(first, key=key), tasks, configs, seconds)
    console.print(table(summary))
    console.print(f"rounds agree: {rounds_agree}")
    if args.json:
        report = {
            "benchmark": "agent_tasks",
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "machine": {"processor": processor_name(), "platform": platform.platform(),
                        "torch_threads": torch.get_num_threads()},
            "settings": {"max_tokens": args.max_tokens, "rounds": args.rounds, "tasks": len(tasks), "recursion_limit": args.recursion_limit,
                         "configs": {name: CONFIGS[name] for name in configs}, "baseline": BASELINE, "system_prompt": SYSTEM_PROMPT},
            "summary": summary,
            "rounds_agree": rounds_agree,
            "outcomes": [asdict(o) for o in first],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
