"""A tool-calling agent loop on ChatRStitch with two real Python tools, on the default pair.

    python examples/langchain_tool_agent.py [--question TEXT] [--max-steps N] [--free]

The loop is the usual one: the model answers; each tool call is run and its result goes back as a
ToolMessage; a malformed call (``invalid_tool_calls``) goes back as an error ToolMessage so the
model can try again; the loop ends at an answer without calls or after --max-steps. The first turn
must call tools (``tool_choice="any"``, in parallel: up to one call per tool); later turns may answer.

Calls are decoded under the tool-call grammar (``constrained=True``, the default), so even the 135M
default pair writes valid calls with schema-valid arguments. ``--free`` turns the grammar off, to
see what the model writes on its own. Each step prints which model wrote its tokens, in runs
(``slm×5 llm×2`` ...): forced positions of the grammar cost the SLM one step and never the LLM.
"""

from __future__ import annotations

import argparse
from itertools import groupby

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from rstitch_integrations.langchain import ChatRStitch

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid"}


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product."""
    return a * b


@tool
def capital_of(country: str) -> str:
    """Look up the capital city of a country."""
    return CAPITALS.get(country, f"unknown country {country!r}")


TOOLS = {t.name: t for t in (multiply, capital_of)}


def runs(sources: list[str]) -> str:
    """Token sources in runs: 'slm×5 llm×2 slm×9'."""
    return " ".join(f"{source}×{len(list(run))}" for source, run in groupby(sources))


def run_tools(reply: AIMessage) -> list[ToolMessage]:
    """Results of the reply's calls, and an error message for each malformed call."""
    results = [ToolMessage(str(TOOLS[call["name"]].invoke(call["args"])), tool_call_id=call["id"])
               for call in reply.tool_calls]
    errors = [ToolMessage(f"Error: {bad['error']}. Call the tool again with valid JSON arguments.",
                          tool_call_id=bad["id"], status="error")
              for bad in reply.invalid_tool_calls]
    return results + errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default="What is 6 times 7, and what is the capital of France?")
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--free", action="store_true", help="no grammar: free generation, parsed after")
    parser.add_argument("--llm", default="smollm2-135m-instruct")
    parser.add_argument("--slm", default=None)
    args = parser.parse_args()

    chat = ChatRStitch(llm=args.llm, slm=args.slm, max_tokens=args.max_tokens, constrained=not args.free)
    messages: list[BaseMessage] = [SystemMessage("Use the tools to answer."), HumanMessage(args.question)]
    for step in range(1, args.max_steps + 1):
        # The first turn must call a tool; later turns may answer.
        model = chat.bind_tools(list(TOOLS.values()), tool_choice="any" if step == 1 else "auto",
                                parallel_tool_calls=True)
        reply = model.invoke(messages)
        messages.append(reply)
        stitch = reply.response_metadata["stitch"]
        print(f"step {step}: {stitch['slm_tokens']} SLM / {stitch['llm_tokens']} LLM tokens, "
              f"x{stitch['speedup']:.2f} vs the LLM alone ({stitch['speedup_basis']})")
        print(f"  written by: {runs(reply.response_metadata['token_sources'])}")
        for call in reply.tool_calls:
            print(f"  tool call   {call['name']}({call['args']})")
        for bad in reply.invalid_tool_calls:
            print(f"  invalid call {bad['name']!r}: {bad['error']}\n    text: {bad['args'][:120]!r}")
        if not reply.tool_calls and not reply.invalid_tool_calls:
            print(f"  answer: {reply.content.strip()}")
            break
        for result in run_tools(reply):
            print(f"  tool result ({result.status}): {result.content[:120]}")
            messages.append(result)
    else:
        print(f"no final answer after {args.max_steps} steps")


if __name__ == "__main__":
    main()
