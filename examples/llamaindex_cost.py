"""Cost tracking over a small query workload with RStitchEventHandler.

Runs a few questions through RStitchLLM (plain, streamed and async calls), with per-model prices,
and prints each call's attribution and the totals: tokens and seconds per model, hand-overs,
cumulative speedup against the LLM alone, and cost against what the LLM alone would have cost.
LlamaIndex's own TokenCountingHandler runs alongside and agrees on the token counts.

    python examples/llamaindex_cost.py --max-tokens 24
"""

from __future__ import annotations

import argparse
import asyncio
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.llms import ChatMessage
from rich.console import Console
from rich.table import Table

from rstitch_engine import DEFAULT_THRESHOLD
from rstitch_integrations.accounting import ModelPrice, StitchLedger
from rstitch_integrations.llamaindex import RStitchLLM
from rstitch_integrations.llamaindex_events import RStitchEventHandler

QUESTIONS = (
    "What is the capital of France?",
    "What is 3 plus 4?",
    "Name a primary colour.",
    "What is the capital of Japan?",
)
PRICES = {"slm": ModelPrice(per_1k_tokens=0.02), "llm": ModelPrice(per_1k_tokens=0.60)}
"""Illustrative prices per 1,000 written tokens: the large model costs 30 times the small one."""


async def workload(llm: RStitchLLM) -> None:
    llm.complete(QUESTIONS[0])
    for _ in llm.stream_chat([ChatMessage(role="user", content=QUESTIONS[1])]):
        pass
    await asyncio.gather(llm.acomplete(QUESTIONS[2]), llm.achat([ChatMessage(role="user", content=QUESTIONS[3])]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    args = parser.parse_args()

    tracker = RStitchEventHandler(ledger=StitchLedger(PRICES)).attach()
    counter = TokenCountingHandler(tokenizer=lambda text: text.split())  # never used: the LLM reports usage
    llm = RStitchLLM(max_tokens=args.max_tokens, threshold=args.threshold, callback_manager=CallbackManager([counter]))
    asyncio.run(workload(llm))

    console = Console(highlight=False)
    table = Table("answer", "tokens", "SLM", "LLM", "hand-overs", "speedup")
    for call in tracker.calls:
        stats, text = call.stats, " ".join(call.text.split())
        coloured = "".join("[green]S[/green]" if s == "slm" else "[magenta]L[/magenta]" for s in call.token_sources)
        speedup = f"{stats['speedup']:.2f}x" if stats["speedup"] else "n/a"
        table.add_row(text[:40], str(stats["output_tokens"]), str(stats["slm_tokens"]),
                      str(stats["llm_tokens"]), str(stats["switches_to_llm"]), speedup)
        console.print(f"{coloured}  {text[:60]!r}")
    console.print(table)

    totals = tracker.totals
    console.print(f"calls {totals.requests}; prompt tokens {totals.prompt_tokens}; output tokens {totals.output_tokens} "
                  f"(SLM {totals.slm.tokens}, LLM {totals.llm.tokens}); discarded SLM drafts {totals.discarded_slm_tokens}")
    console.print(f"model seconds: SLM {totals.slm.seconds:.2f}, LLM {totals.llm.seconds:.2f}; wall {totals.wall_seconds:.2f}")
    speedup = f"{totals.speedup:.2f}x" if totals.speedup is not None else "n/a"
    console.print(f"cumulative speedup vs LLM alone: {speedup}")
    saved = f"; LLM alone {totals.llm_alone_cost:.6f}, saved {totals.savings:.6f}" if totals.savings is not None else ""
    console.print(f"cost {totals.cost:.6f} (SLM {totals.slm.cost:.6f}, LLM {totals.llm.cost:.6f}){saved}")
    console.print(f"TokenCountingHandler: prompt {counter.prompt_llm_token_count}, "
                  f"completion {counter.completion_llm_token_count} (equal to the engine's counts above)")


if __name__ == "__main__":
    main()
