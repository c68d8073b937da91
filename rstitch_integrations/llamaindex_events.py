"""Cost and attribution tracking for ``RStitchLLM`` through LlamaIndex instrumentation.

``RStitchEventHandler`` is a ``BaseEventHandler`` for the instrumentation dispatcher. It reads the
LLM events every ``RStitchLLM`` call emits (one start and one end event per call, in-progress
events while streaming) and feeds each finished call's stitch stats to a ``StitchLedger`` (the
accounting shared with the LangChain handler): tokens and seconds per model, switches, cumulative
speedup and cost. It also keeps, per call, which model wrote each token. Events of other LLMs are
ignored.

    handler = RStitchEventHandler(ledger=StitchLedger({"llm": ModelPrice(per_1k_tokens=0.5)})).attach()
    ... run query engines, agents ...
    print(handler.totals.cost, handler.totals.speedup)
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.instrumentation import Dispatcher, get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.exception import ExceptionEvent
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatInProgressEvent,
    LLMCompletionEndEvent,
    LLMCompletionInProgressEvent,
)

from .accounting import LedgerTotals, StitchLedger

_IN_PROGRESS = (LLMChatInProgressEvent, LLMCompletionInProgressEvent)
_END = (LLMChatEndEvent, LLMCompletionEndEvent)


@dataclass(frozen=True)
class StitchedCall:
    """One finished ``RStitchLLM`` call as the handler saw it."""

    span_id: str | None
    """Instrumentation span of the call."""
    text: str
    """The answer text."""
    token_sources: tuple[str, ...]
    """'slm' or 'llm' for each output token, in order."""
    stats: Mapping[str, Any]
    """The engine's stats for the call (``StitchStats.to_dict()``)."""


class RStitchEventHandler(BaseEventHandler):
    """Adds up the cost of every ``RStitchLLM`` call and records which model wrote each token. Thread-safe."""

    ledger: StitchLedger = Field(
        default_factory=StitchLedger, description="Where each call's stats are added (prices per model live here)."
    )
    max_calls: int = Field(default=1000, ge=0, description="How many recent calls to keep in ``calls``.")

    _calls: deque = PrivateAttr()
    _streams: dict = PrivateAttr(default_factory=dict)  # span id -> token sources streamed so far
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _dispatcher: Dispatcher | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        self._calls = deque(maxlen=self.max_calls)

    @classmethod
    def class_name(cls) -> str:
        return "RStitchEventHandler"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, _IN_PROGRESS):
            sources = event.response.additional_kwargs.get("token_sources")
            if sources is not None:
                with self._lock:
                    self._streams.setdefault(event.span_id, []).extend(sources)
        elif isinstance(event, _END):
            self._finish(event)
        elif isinstance(event, ExceptionEvent):  # a failed or abandoned stream: no end event will come
            with self._lock:
                self._streams.pop(event.span_id, None)

    def _finish(self, event: Any) -> None:
        with self._lock:
            streamed = self._streams.pop(event.span_id, None)
        response = event.response
        stats = response.additional_kwargs.get("stitch") if response is not None else None
        if stats is None:
            return  # not an RStitchLLM call, or a stream that was abandoned before its end
        sources = streamed if streamed is not None else response.additional_kwargs.get("token_sources", [])
        text = response.text if hasattr(response, "text") else (response.message.content or "")
        self.ledger.record(stats)
        with self._lock:
            self._calls.append(StitchedCall(event.span_id, text, tuple(sources), dict(stats)))

    # ------------------------------------------------------------------ reading back

    @property
    def totals(self) -> LedgerTotals:
        """Totals over every call recorded so far (tokens, seconds, switches, speedup, cost)."""
        return self.ledger.totals

    @property
    def calls(self) -> list[StitchedCall]:
        """The most recent calls (up to ``max_calls``), oldest first."""
        with self._lock:
            return list(self._calls)

    def reset(self) -> LedgerTotals:
        """Forget everything; returns the totals up to now."""
        with self._lock:
            self._calls.clear()
            self._streams.clear()
        return self.ledger.reset()

    # ------------------------------------------------------------------ wiring

    def attach(self, dispatcher: Dispatcher | None = None) -> RStitchEventHandler:
        """Listen to ``dispatcher`` (default: the root dispatcher, which sees every event)."""
        self._dispatcher = dispatcher if dispatcher is not None else get_dispatcher()
        self._dispatcher.add_event_handler(self)
        return self

    def detach(self) -> None:
        """Stop listening."""
        if self._dispatcher is not None:
            self._dispatcher.event_handlers = [h for h in self._dispatcher.event_handlers if h is not self]
            self._dispatcher = None
