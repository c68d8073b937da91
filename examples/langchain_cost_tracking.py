"""Cost tracking over a batch of questions with RStitchCallbackHandler.

    python examples/langchain_cost_tracking.py [--max-tokens N]

Prices are made up for the example: the LLM costs 10x the SLM per token, plus GPU time. The
handler sums tokens and seconds per model, switches, the cumulative speedup against the LLM
alone, and what the same answers would have cost with the LLM alone. LangChain's own
get_usage_metadata_callback() runs alongside it.
"""

from __future__ import annotations

import argparse

from langchain_core.callbacks import get_usage_metadata_callback

from rstitch_integrations.accounting import ModelPrice
from rstitch_integrations.callbacks import RStitchCallbackHandler
from rstitch_integrations.langchain import ChatRStitch

QUESTIONS = [
    "What is the capital of Italy?",
    "What is 3 + 4?",
    "Name a primary colour.",
    "What is the opposite of hot?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()

    handler = RStitchCallbackHandler(
        slm=ModelPrice(per_1k_tokens=0.02),
        llm=ModelPrice(per_1k_tokens=0.20, per_second=0.0005),
    )
    chat = ChatRStitch(max_tokens=args.max_tokens)
    with get_usage_metadata_callback() as usage:
        # Concurrent requests take turns for forward passes; the speedup counts each request's
        # busy time only (its wall time minus waiting for the others), so batching does not distort it.
        replies = chat.batch(QUESTIONS, config={"callbacks": [handler]})
    for question, reply in zip(QUESTIONS, replies):
        sources = reply.response_metadata["token_sources"]
        print(f"Q: {question}\nA: {reply.content.strip()}  [{sources.count('slm')} SLM / {sources.count('llm')} LLM]")
    print()
    print(handler)
    totals = handler.totals
    if totals.savings is not None:
        print(f"LLM alone would have cost {totals.llm_alone_cost:.6f}; saved {totals.savings:.6f}")
    print(f"LangChain usage callback: {usage.usage_metadata}")


if __name__ == "__main__":
    main()
