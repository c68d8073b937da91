"""Async paths: same answers as the sync ones, the event loop stays free, early stops close the stream."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from live import remote_is_slow
from helpers import loop_thread_team_counts
from llama_index.core.base.llms.types import ChatMessage

from rstitch_integrations.llamaindex import RStitchLLM, _in_worker_threads

pytestmark = pytest.mark.real_model

QUESTIONS = ("What is the capital of France?", "What is 2 plus 3?")


@pytest.fixture
def rstitch_llm(real_engine, adapter) -> RStitchLLM:
    """Overrides the session one here: the adapter on the default pair (short greedy answers), local, then remote
    (``RStitchLLM(base_url=...)`` on a live server on the same engine): the tests taking it run in both modes."""
    return adapter.llm(max_tokens=8)


@pytest.fixture(scope="module")
def expected(engine_answer) -> dict[str, str]:
    return {question: engine_answer(question).text for question in QUESTIONS}


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


async def test_async_methods_give_the_sync_answers(rstitch_llm, expected):
    question = QUESTIONS[0]
    chat = await rstitch_llm.achat(user(question))
    assert chat.message.content == expected[question]
    assert len(chat.additional_kwargs["token_sources"]) == chat.raw["usage"]["completion_tokens"]
    completion = await rstitch_llm.acomplete(question)
    assert completion.text == expected[question]
    items = [item async for item in await rstitch_llm.astream_complete(question)]
    assert "".join(item.delta for item in items) == items[-1].text == expected[question]
    assert items[-1].raw["usage"] == completion.raw["usage"]


async def test_two_async_streams_interleave_without_blocking_the_loop(rstitch_llm, expected):
    arrivals: list[tuple[int, float]] = []
    ticks: list[float] = []
    finished = asyncio.Event()

    async def consume(which: int) -> str:
        text = ""
        async for item in await rstitch_llm.astream_chat(user(QUESTIONS[which])):
            arrivals.append((which, time.perf_counter()))
            text += item.delta
        return text

    async def tick() -> None:
        while not finished.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.02)

    ticker = asyncio.create_task(tick())
    texts = await asyncio.gather(consume(0), consume(1))
    finished.set()
    await ticker

    assert texts == [expected[QUESTIONS[0]], expected[QUESTIONS[1]]]  # concurrency changes nothing
    order = [which for which, _ in arrivals]
    last_of = {w: max(i for i, x in enumerate(order) if x == w) for w in (0, 1)}
    first_of = {w: order.index(w) for w in (0, 1)}
    assert first_of[1] < last_of[0] and first_of[0] < last_of[1], f"streams did not interleave: {order}"
    start, end = arrivals[0][1], arrivals[-1][1]
    assert sum(start <= t <= end for t in ticks) >= 10, "the event loop was blocked while decoding"


def slow_numbers(closed: threading.Event, step_seconds: float = 0.05):
    try:
        for n in range(1000):
            time.sleep(step_seconds)
            yield n
    finally:
        closed.set()


async def test_breaking_out_closes_the_blocking_stream():
    closed = threading.Event()
    blocking = slow_numbers(closed)  # held here, so only an explicit close (not garbage collection) closes it
    items = _in_worker_threads(blocking)
    async for n in items:
        if n == 2:
            break
    await items.aclose()
    assert closed.is_set()


async def test_cancelling_a_consumer_closes_the_stream_after_the_running_step():
    closed = threading.Event()
    blocking = slow_numbers(closed, step_seconds=0.3)  # held here: garbage collection cannot close it

    async def consume() -> None:
        async for _ in _in_worker_threads(blocking):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.45)  # mid-way through the second step
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(closed.wait, 5.0)


@remote_is_slow()  # test_abandoned_remote_streams_leave_the_servers_batch checks the server's side by default
async def test_an_abandoned_real_stream_leaves_the_engine_usable(rstitch_llm, expected):
    stream = await rstitch_llm.astream_chat(user(QUESTIONS[0]))
    async for _ in stream:
        break
    await stream.aclose()
    assert (await rstitch_llm.achat(user(QUESTIONS[1]))).message.content == expected[QUESTIONS[1]]


def test_an_async_call_frees_the_event_loop_threads_openmp_team(real_engine):
    """Torch work of the loop's own thread (retrieval embeddings, say) leaves an OpenMP team there;
    the adapter frees it before the passes run on worker threads (``rstitch_engine.models.openmp``). Local only:
    it checks threads of this process."""
    llm = RStitchLLM(max_tokens=8)
    assert loop_thread_team_counts(lambda: llm.achat(user(QUESTIONS[1]))) == [2, 1]
