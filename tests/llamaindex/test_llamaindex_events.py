"""RStitchEventHandler: attribution and cost from instrumentation events, equal to the engine's stats."""

from __future__ import annotations

import math

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.llms import MockLLM

from rstitch_integrations.accounting import ModelPrice, StitchLedger
from rstitch_integrations.llamaindex_events import RStitchEventHandler

pytestmark = pytest.mark.real_model

PRICES = {"slm": ModelPrice(per_1k_tokens=0.1, per_second=0.001), "llm": ModelPrice(per_1k_tokens=2.0, per_second=0.01)}


@pytest.fixture
def handler():
    attached = RStitchEventHandler(ledger=StitchLedger(PRICES)).attach()
    yield attached
    attached.detach()


async def test_every_call_path_is_recorded_once_with_its_attribution(rstitch_llm, handler):
    messages = [ChatMessage(role="user", content="Name a primary colour.")]
    finals = [
        rstitch_llm.chat(messages),
        list(rstitch_llm.stream_chat(messages))[-1],
        rstitch_llm.complete("Name a primary colour."),
        [item async for item in await rstitch_llm.astream_complete("Name a primary colour.")][-1],
    ]
    MockLLM(max_tokens=4).complete("another LLM's call is ignored")
    stats = [final.additional_kwargs["stitch"] for final in finals]

    calls = handler.calls
    assert [call.stats for call in calls] == stats
    for call, final in zip(calls, finals):
        assert len(call.token_sources) == call.stats["output_tokens"]
        assert call.token_sources.count("llm") == call.stats["llm_tokens"]
        assert call.text == (final.text if hasattr(final, "text") else final.message.content)
    assert calls[0].token_sources == tuple(finals[0].additional_kwargs["token_sources"])  # non-streamed: all tokens

    totals = handler.totals
    assert totals.requests == 4
    assert totals.output_tokens == sum(s["output_tokens"] for s in stats)
    assert totals.prompt_tokens == sum(s["prompt_tokens"] for s in stats)
    assert totals.slm.tokens == sum(s["slm_tokens"] for s in stats)
    assert totals.llm.tokens == sum(s["llm_tokens"] for s in stats)
    assert totals.switches_to_llm == sum(s["switches_to_llm"] for s in stats)
    assert totals.discarded_slm_tokens == sum(s["discarded_slm_tokens"] for s in stats)
    expected_cost = sum(
        PRICES[role].cost(s[f"{role}_tokens"], s[f"{role}_decode_seconds"] + s[f"{role}_catchup_seconds"])
        for s in stats for role in ("slm", "llm")
    )
    assert math.isclose(totals.cost, expected_cost, rel_tol=1e-12)


def test_an_abandoned_stream_is_not_recorded_and_leaves_nothing_behind(rstitch_llm, handler):
    stream = rstitch_llm.stream_complete("Name a primary colour.")
    next(stream)
    stream.close()
    assert handler.calls == [] and handler.totals.requests == 0
    assert handler._streams == {}


def test_detach_and_reset(rstitch_llm, handler):
    rstitch_llm.complete("Say yes.", max_tokens=2)
    assert handler.reset().requests == 1
    assert handler.totals.requests == 0 and handler.calls == []
    handler.detach()
    assert handler not in get_dispatcher().event_handlers
    rstitch_llm.complete("Say yes.", max_tokens=2)
    assert handler.totals.requests == 0
