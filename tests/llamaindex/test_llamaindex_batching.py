"""Concurrent LlamaIndex calls on the real default pair share passes, with no user change."""

from __future__ import annotations

import asyncio

import pytest
from live import remote_is_slow
from llama_index.core.llms import ChatMessage

from rstitch_integrations.llamaindex import RStitchLLM

pytestmark = pytest.mark.real_model

QUESTIONS = ["What is the capital of France?", "Name a fruit that is yellow.", "What is the plural of mouse?",
             "Add 17 and 25. Reply with just the number."]


@remote_is_slow()
def test_concurrent_acomplete_and_achat_share_passes_and_equal_one_by_one(real_engine_float32, adapter):
    """Local, then remote (concurrent requests share the server's batch)."""
    llm = (adapter.llm(engine=real_engine_float32, max_tokens=12) if adapter.remote
           else RStitchLLM(max_tokens=12, dtype="float32"))
    expected = [llm.complete(q).text for q in QUESTIONS]

    async def run():
        completions = await asyncio.gather(*(llm.acomplete(q) for q in QUESTIONS))
        chats = await asyncio.gather(*(llm.achat([ChatMessage(role="user", content=q)]) for q in QUESTIONS))
        return completions, chats

    completions, chats = asyncio.run(run())
    assert [c.text for c in completions] == expected
    assert [c.message.content for c in chats] == [llm.chat([ChatMessage(role="user", content=q)]).message.content
                                                  for q in QUESTIONS]
    largest = [c.additional_kwargs["stitch"]["largest_batch"] for c in completions]
    assert max(largest) > 1
