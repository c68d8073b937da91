"""A streaming terminal chat; each token is coloured by the model that wrote it.

    python examples/langchain_streaming_chat.py                 # interactive (empty line quits)
    python examples/langchain_streaming_chat.py --ask "Hi!"     # one question, then exit

Green: the small model (SLM). Magenta: the large model (LLM), which took over where the SLM was
unsure. After each answer: the share of tokens per model and the estimated speedup.
"""

from __future__ import annotations

import argparse
import sys

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from rstitch_engine import DEFAULT_THRESHOLD
from rstitch_integrations.langchain import ChatRStitch

COLOURS = {"slm": "\033[32m", "llm": "\033[35m"}
RESET = "\033[0m"


def answer(chat: ChatRStitch, history: list[BaseMessage]) -> AIMessage:
    """Stream one answer to the terminal, coloured token by token; return it as a message."""
    full = None
    for chunk in chat.stream(history):
        sources = chunk.response_metadata.get("token_sources", [])
        if chunk.content:
            colour = COLOURS[sources[-1]] if sources else ""
            sys.stdout.write(f"{colour}{chunk.content}{RESET}")
            sys.stdout.flush()
        full = chunk if full is None else full + chunk
    stitch = full.response_metadata["stitch"]
    speedup = f"{stitch['speedup']:.2f}x ({stitch['speedup_basis']})" if stitch["speedup"] else "n/a"
    print(f"\n  [{stitch['slm_tokens']} SLM / {stitch['llm_tokens']} LLM tokens, "
          f"{stitch['switches_to_llm']} hand-overs, speedup {speedup}]")
    return AIMessage(content=full.content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ask", help="ask one question and exit")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="tau: above it the LLM takes over")
    args = parser.parse_args()

    chat = ChatRStitch(max_tokens=args.max_tokens, threshold=args.threshold)
    history: list[BaseMessage] = [SystemMessage("You are a helpful assistant. Keep answers short.")]
    print(f"Tokens by {COLOURS['slm']}SLM{RESET} and {COLOURS['llm']}LLM{RESET}.")
    questions = [args.ask] if args.ask else iter(lambda: input("\nyou> "), "")
    for question in questions:
        history.append(HumanMessage(question))
        print("bot> ", end="")
        history.append(answer(chat, history))


if __name__ == "__main__":
    main()
