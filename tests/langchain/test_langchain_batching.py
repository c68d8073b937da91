"""LangChain ``batch``/``abatch`` on the real default pair: the inputs share passes, with no user change."""

from __future__ import annotations

import asyncio

import pytest
from live import remote_is_slow
from helpers import loop_thread_team_counts

from rstitch_integrations.langchain import ChatRStitch

pytestmark = pytest.mark.real_model

QUESTIONS = ["What is the capital of France?", "Name a fruit that is yellow.", "What is the plural of mouse?",
             "Add 17 and 25. Reply with just the number."]


@pytest.fixture
def chat(real_engine_float32) -> ChatRStitch:
    return ChatRStitch(max_tokens=12, dtype="float32")


@pytest.fixture
def either_chat(real_engine_float32, adapter) -> ChatRStitch:
    """Local, then remote: ``batch`` sends its inputs as concurrent requests, which share the server's batch."""
    if adapter.remote:
        return adapter.chat(engine=real_engine_float32, max_tokens=12)
    return ChatRStitch(max_tokens=12, dtype="float32")


@remote_is_slow()
def test_batch_shares_forward_passes_and_equals_one_by_one(either_chat):
    chat = either_chat
    one_by_one = [chat.invoke(q) for q in QUESTIONS]
    batched = chat.batch(QUESTIONS)
    assert [m.content for m in batched] == [m.content for m in one_by_one]
    assert [m.response_metadata["stitch"]["slm_tokens"] for m in batched] == [
        m.response_metadata["stitch"]["slm_tokens"] for m in one_by_one]
    assert max(m.response_metadata["stitch"]["largest_batch"] for m in batched) > 1
    assert all(m.response_metadata["stitch"]["largest_batch"] == 1 for m in one_by_one)


@remote_is_slow()
def test_abatch_and_concurrent_astream_share_passes(either_chat):
    chat = either_chat
    expected = [chat.invoke(q).content for q in QUESTIONS]

    async def run():
        batched = await chat.abatch(QUESTIONS)

        async def streamed(question):
            return "".join([chunk.content async for chunk in chat.astream(question)])

        return batched, await asyncio.gather(*(streamed(q) for q in QUESTIONS))

    batched, streamed = asyncio.run(run())
    assert [m.content for m in batched] == expected
    assert streamed == expected
    assert max(m.response_metadata["stitch"]["largest_batch"] for m in batched) > 1


def test_batching_options_share_the_loaded_pair_and_change_no_answer(chat):
    one_by_one = ChatRStitch(max_tokens=12, dtype="float32", max_batch_size=1)
    eager_llm = ChatRStitch(max_tokens=12, dtype="float32", llm_wait_steps=0)
    engines = [chat.load_engine(), one_by_one.load_engine(), eager_llm.load_engine()]
    assert len({id(e) for e in engines}) == 3 and all(e.pair is engines[0].pair for e in engines)
    assert (engines[1].max_batch_size, engines[2].llm_wait_steps) == (1, 0)
    serial = one_by_one.batch(QUESTIONS)
    assert all(m.response_metadata["stitch"]["largest_batch"] == 1 for m in serial)
    batched = eager_llm.batch(QUESTIONS)
    assert max(m.response_metadata["stitch"]["largest_batch"] for m in batched) > 1
    assert [m.content for m in batched] == [m.content for m in serial]


def test_an_async_call_frees_the_event_loop_threads_openmp_team(chat):
    """Torch work of the loop's own thread (retrieval embeddings, say) leaves an OpenMP team there;
    the adapter frees it before the passes run on worker threads (``rstitch_engine.models.openmp``)."""
    assert loop_thread_team_counts(lambda: chat.ainvoke("What is 2 plus 3?")) == [2, 1]
