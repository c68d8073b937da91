"""LangChain callback handler that tracks what stitched decoding did and cost, across calls.

Attach it like any handler (``config={"callbacks": [handler]}`` or ``ChatRStitch(callbacks=[...])``),
or collect every call in a block with ``with get_rstitch_callback() as handler:``;
it works with invoke, stream, batch, their async forms and inside agents, and next to LangChain's
own ``get_usage_metadata_callback()``. Totals live in a thread-safe ``StitchLedger``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult
from langchain_core.tracers.context import register_configure_hook

from .accounting import LedgerTotals, ModelPrice, StitchLedger


class RStitchCallbackHandler(BaseCallbackHandler):
    """Tokens and seconds per model, switches, cumulative speedup and cost over every call it sees.

    Prices are per model: ``ModelPrice(per_1k_tokens=..., per_second=...)``; a model without a
    price costs nothing. Calls from models other than ``ChatRStitch`` are ignored.
    """

    def __init__(self, slm: ModelPrice | None = None, llm: ModelPrice | None = None) -> None:
        super().__init__()
        prices = {role: price for role, price in (("slm", slm), ("llm", llm)) if price is not None}
        self.ledger = StitchLedger(prices)
        """The running totals; ``ledger.totals`` is a consistent snapshot."""

    @property
    def totals(self) -> LedgerTotals:
        """Snapshot of everything recorded so far."""
        return self.ledger.totals

    def reset(self) -> LedgerTotals:
        """Start again from zero; returns the totals up to now."""
        return self.ledger.reset()

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        """Record the stitch stats of every generation of a finished call."""
        for generations in response.generations:
            for generation in generations:
                message = getattr(generation, "message", None)
                stats = getattr(message, "response_metadata", {}).get("stitch") if message is not None else None
                if stats is not None:
                    self.ledger.record(stats)

    def __str__(self) -> str:
        totals = self.totals
        speedup = f"{totals.speedup:.2f}x" if totals.speedup is not None else "n/a"
        return (
            f"Stitched calls: {totals.requests}\n"
            f"Output tokens: {totals.output_tokens} (SLM {totals.slm.tokens}, LLM {totals.llm.tokens}); "
            f"prompt tokens: {totals.prompt_tokens}\n"
            f"Model seconds: SLM {totals.slm.seconds:.2f}, LLM {totals.llm.seconds:.2f}; wall {totals.wall_seconds:.2f}\n"
            f"Switches: {totals.switches_to_llm} to LLM, {totals.switches_to_slm} back; "
            f"discarded SLM tokens: {totals.discarded_slm_tokens}\n"
            f"Speedup vs LLM alone: {speedup}\n"
            f"Cost: {totals.cost:.6f} (SLM {totals.slm.cost:.6f}, LLM {totals.llm.cost:.6f})"
        )


_current_handler: ContextVar[RStitchCallbackHandler | None] = ContextVar("rstitch_callback", default=None)
register_configure_hook(_current_handler, inheritable=True)


@contextmanager
def get_rstitch_callback(slm: ModelPrice | None = None, llm: ModelPrice | None = None) -> Iterator[RStitchCallbackHandler]:
    """A handler that sees every call made inside the ``with`` block, without passing callbacks.

    Example:
        .. code-block:: python

            with get_rstitch_callback(llm=ModelPrice(per_1k_tokens=0.2)) as costs:
                chain.invoke(...)
            print(costs)
    """
    handler = RStitchCallbackHandler(slm=slm, llm=llm)
    token = _current_handler.set(handler)
    try:
        yield handler
    finally:
        _current_handler.reset(token)
