"""A LlamaIndex FunctionAgent with two Python tools, on RStitchLLM and the default pair.

The agent streams its answer; each tool call it makes is printed with its result, and any
malformed call the model wrote is printed with the reason it was rejected. Calls are decoded under
the tool-call grammar (``constrained=True``, the default), so the 135M default pair writes valid
calls; the first step must call tools (``--force required``; in parallel, up to one call per tool)
and the second answers from their results. ``--free`` turns the grammar off.

    python examples/llamaindex_agent.py "What is 6 times 7, and what is the capital of France?"
"""

from __future__ import annotations

import argparse
import asyncio
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llama_index.core.agent.workflow import AgentOutput, AgentStream, FunctionAgent, ToolCallResult
from llama_index.core.tools import FunctionTool
from rich.console import Console
from rich.markup import escape

from rstitch_integrations.llamaindex import RStitchLLM
from rstitch_integrations.llamaindex_events import RStitchEventHandler

console = Console(highlight=False)


def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product."""
    return a * b


CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid"}


def capital_of(country: str) -> str:
    """Look up the capital city of a country."""
    return CAPITALS.get(country, f"unknown country {country!r}")


async def run(question: str, llm: RStitchLLM, force: str | None) -> None:
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(multiply), FunctionTool.from_defaults(capital_of)],
        llm=llm,
        system_prompt="You answer with the tools.",
        initial_tool_choice=force,
    )
    handler = agent.run(question)
    console.print(f"[bold]Question:[/bold] {question}")
    async for event in handler.stream_events():
        if isinstance(event, AgentStream) and event.delta:
            console.print(event.delta, end="", markup=False)
        elif isinstance(event, ToolCallResult):
            console.print(f"[cyan]tool call:[/cyan] {event.tool_name}({event.tool_kwargs}) -> {event.tool_output.content}")
        elif isinstance(event, AgentOutput):
            for invalid in event.response.additional_kwargs.get("invalid_tool_calls", []):
                console.print(f"[red]malformed tool call:[/red] {escape(repr(invalid['raw'].strip()))}")
                console.print(f"  [red]rejected:[/red] {escape(invalid['error'])}")
    result = await handler
    console.print(f"\n[bold]Answer:[/bold] {escape(repr(str(result)))}")
    console.print(f"[bold]Tool calls:[/bold] {[(c.tool_name, c.tool_kwargs) for c in result.tool_calls] or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What is 6 times 7, and what is the capital of France?")
    parser.add_argument("--llm", default="smollm2-135m-instruct")
    parser.add_argument("--slm", default=None)
    parser.add_argument("--force", default="required",
                        help="first step: 'required' (some tool), a tool name, or '' (the model chooses)")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--free", action="store_true", help="no grammar: free generation, parsed after")
    args = parser.parse_args()

    tracker = RStitchEventHandler().attach()
    llm = RStitchLLM(llm=args.llm, slm=args.slm, max_tokens=args.max_tokens, constrained=not args.free)
    asyncio.run(run(args.question, llm, args.force or None))
    totals = tracker.totals
    console.print(
        f"[dim]{totals.requests} LLM calls, {totals.output_tokens} tokens "
        f"(SLM {totals.slm.tokens}, LLM {totals.llm.tokens})[/dim]"
    )


if __name__ == "__main__":
    main()
