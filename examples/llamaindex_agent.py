"""A LlamaIndex FunctionAgent with two Python tools, on RStitchLLM.

The agent streams its answer; each tool call it makes is printed with its result, and any
malformed call the model wrote is printed with the reason it was rejected. The default pair
(SmolLM2-135M) cannot follow the tool format, so by default the first step forces a call to
``multiply`` (``--force multiply``) and the model only has to write the arguments; give a larger
instruct model with ``--llm``/``--slm`` for a real agent.

    python examples/llamaindex_agent.py "What is 6 times 7?" --max-tokens 32
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


def add(a: int, b: int) -> int:
    """Add two integers and return the sum."""
    return a + b


async def run(question: str, llm: RStitchLLM, force: str | None) -> None:
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(multiply), FunctionTool.from_defaults(add)],
        llm=llm,
        system_prompt="You are a calculator. Use the tools for arithmetic.",
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
    parser.add_argument("question", nargs="?", default="What is 6 times 7?")
    parser.add_argument("--llm", default="smollm2-135m-instruct")
    parser.add_argument("--slm", default=None)
    parser.add_argument("--force", default="multiply", help="tool to call on the first step ('' lets the model choose)")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    tracker = RStitchEventHandler().attach()
    llm = RStitchLLM(llm=args.llm, slm=args.slm, max_tokens=args.max_tokens)
    asyncio.run(run(args.question, llm, args.force or None))
    totals = tracker.totals
    console.print(
        f"[dim]{totals.requests} LLM calls, {totals.output_tokens} tokens "
        f"(SLM {totals.slm.tokens}, LLM {totals.llm.tokens})[/dim]"
    )


if __name__ == "__main__":
    main()
