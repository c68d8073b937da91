"""A tool-calling agent loop on ChatRStitch with two real Python tools.

    python examples/langchain_tool_agent.py [--question TEXT] [--max-steps N]

The loop is the usual one: the model answers; each tool call is run and its result goes back as a
ToolMessage; a malformed call (``invalid_tool_calls``) goes back as an error ToolMessage so the
model can try again; the loop ends at an answer without calls or after --max-steps.

The default pair is a 135M model, too small to follow tool schemas: expect its calls to come out
malformed, and the loop to show how they are caught and reported rather than crash. With a pair
that can call tools (e.g. Qwen2.5 0.5B/7B: ``--slm`` / ``--llm``) the same loop runs the tools.
"""

from __future__ import annotations

import argparse

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from rstitch_integrations.langchain import ChatRStitch


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def word_length(word: str) -> int:
    """Count the letters of a word."""
    return len(word)


TOOLS = {t.name: t for t in (add, word_length)}


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
    parser.add_argument("--question", default="What is 17 plus 25? Use the add tool.")
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--llm", default="smollm2-135m-instruct")
    parser.add_argument("--slm", default=None)
    args = parser.parse_args()

    chat = ChatRStitch(llm=args.llm, slm=args.slm, max_tokens=args.max_tokens)
    messages: list[BaseMessage] = [SystemMessage("Use the tools to answer."), HumanMessage(args.question)]
    for step in range(1, args.max_steps + 1):
        # The first turn must call a tool; later turns may answer.
        model = chat.bind_tools(list(TOOLS.values()), tool_choice="any" if step == 1 else "auto")
        reply = model.invoke(messages)
        messages.append(reply)
        stitch = reply.response_metadata["stitch"]
        print(f"step {step}: {stitch['slm_tokens']} SLM / {stitch['llm_tokens']} LLM tokens")
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
