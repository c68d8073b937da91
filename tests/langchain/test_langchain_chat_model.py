"""ChatRStitch on the real default pair: call paths, attribution, usage, stops, errors, concurrency.

Answers are kept short (a few tokens) because every call decodes with the real 135M pair on a CPU.
Greedy decoding makes them deterministic, so equalities between call paths are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import time
from typing import Any

import pytest
from live import remote_is_slow
from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from pydantic import ValidationError

from rstitch_engine import QUALITY_THRESHOLDS, InvalidSettingError, PromptTooLongError, StitchEngine
from rstitch_integrations.accounting import ModelPrice
from rstitch_integrations.callbacks import RStitchCallbackHandler, get_rstitch_callback
from rstitch_integrations.langchain import ChatRStitch

pytestmark = pytest.mark.real_model

QUESTION = "What is the capital of France?"
LONG_ANSWER_QUESTION = "Write a long story about a lighthouse keeper and a storm at sea."


@pytest.fixture
def chat(real_engine: StitchEngine, adapter) -> ChatRStitch:
    """Local, then remote (``ChatRStitch(base_url=...)`` on a live server on the same engine): the tests taking it run twice."""
    return adapter.chat(max_tokens=8)


class RecordingEngine(StitchEngine):
    """The real pair, keeping every stream it hands out (to see that abandoned ones get closed)."""

    def __init__(self, real: StitchEngine) -> None:
        super().__init__(real.pair, real.router, real.settings)
        self.streams: list[Any] = []

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        self.streams.append(super().stream(*args, **kwargs))
        return self.streams[-1]


def closed(stream: Any) -> bool:
    return inspect.getgeneratorstate(stream._core) == inspect.GEN_CLOSED


def add_up(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


# ----------------------------------------------------------------------------- construction


def test_construction_is_cheap_and_validated() -> None:
    started = time.perf_counter()
    chat = ChatRStitch(model="smollm2-135m-instruct", threshold=0.2)
    assert time.perf_counter() - started < 0.5
    assert chat._loaded is None  # nothing loaded until the first call
    assert chat.llm == "smollm2-135m-instruct"
    with pytest.raises(ValidationError, match=r"threshold \(tau\) must be a real number"):
        ChatRStitch(threshold=float("nan"))
    with pytest.raises(ValidationError, match="temperature must be a finite number >= 0"):
        ChatRStitch(temperature=-1)
    with pytest.raises(ValidationError, match="max_new_tokens must be an integer >= 1"):
        ChatRStitch(max_tokens=0)
    with pytest.raises(ValidationError, match="thresold"):
        ChatRStitch(thresold=0.2)  # a typo is an error, not a silently ignored setting


def test_entropies_of_the_llm_alone_come_only_when_asked(chat: ChatRStitch) -> None:
    """No router reads the LLM's entropy when it writes alone: None per token (JSON null from a server),
    unless ``token_entropy=True``; the answer is the same either way."""
    plain = chat.invoke(QUESTION, quality="exact")
    asked = chat.invoke(QUESTION, quality="exact", token_entropy=True)
    assert plain.content == asked.content
    assert plain.response_metadata["token_entropies"] == [None] * plain.usage_metadata["output_tokens"]
    entropies = asked.response_metadata["token_entropies"]
    assert len(entropies) == asked.usage_metadata["output_tokens"] and all(0.0 <= h <= 1.0 for h in entropies)


def test_unknown_call_options_are_rejected(chat: ChatRStitch) -> None:
    with pytest.raises(InvalidSettingError, match=r"unknown call options \['temprature'\]"):
        chat.invoke(QUESTION, temprature=0.5)


# ----------------------------------------------------------------------------- invoke and stream agree


def test_invoke_and_stream_give_the_same_answer_attribution_and_usage(chat: ChatRStitch) -> None:
    reply = chat.invoke(QUESTION)
    chunks = list(chat.stream(QUESTION))
    streamed = add_up(chunks)
    stitch = reply.response_metadata["stitch"]
    sources = reply.response_metadata["token_sources"]

    assert isinstance(reply, AIMessage) and reply.content
    assert streamed.content == reply.content
    assert streamed.response_metadata["token_sources"] == sources
    assert streamed.response_metadata["token_entropies"] == reply.response_metadata["token_entropies"]
    assert len(sources) == stitch["output_tokens"] == reply.usage_metadata["output_tokens"]
    assert sources.count("slm") == stitch["slm_tokens"] and sources.count("llm") == stitch["llm_tokens"]
    assert reply.usage_metadata["input_tokens"] == stitch["prompt_tokens"] == chat.get_num_tokens_from_messages(
        [HumanMessage(QUESTION)]
    )
    assert reply.usage_metadata == streamed.usage_metadata
    assert reply.response_metadata["finish_reason"] == stitch["finish_reason"]
    assert reply.response_metadata["model_name"] == chat.model_name
    assert {"slm_tokens", "llm_tokens", "discarded_slm_tokens", "switches_to_llm", "switches_to_slm", "speedup",
            "speedup_basis"} <= set(stitch)
    assert stitch["speedup_basis"] in ("measured", "estimated")

    # input tokens exactly once, stats only on the last chunk, which is marked last
    assert [c.usage_metadata["input_tokens"] for c in chunks] == [stitch["prompt_tokens"]] + [0] * (len(chunks) - 1)
    assert ["stitch" in c.response_metadata for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].chunk_position == "last"
    assert all(len(c.response_metadata["token_sources"]) == c.usage_metadata["output_tokens"] for c in chunks)


def test_the_threshold_can_be_set_per_call(chat: ChatRStitch) -> None:
    slm_only = chat.invoke(QUESTION, threshold=1.0, max_tokens=4)  # normalised entropy never exceeds 1
    llm_only = chat.invoke(QUESTION, threshold=-1.0, max_tokens=4)  # every SLM token is handed over
    assert set(slm_only.response_metadata["token_sources"]) == {"slm"}
    assert slm_only.response_metadata["stitch"]["switches_to_llm"] == 0
    assert set(llm_only.response_metadata["token_sources"]) == {"llm"}
    assert llm_only.response_metadata["stitch"]["threshold"] == -1.0


def test_quality_presets_pick_the_router_and_a_call_may_change_its_preset(real_engine: StitchEngine) -> None:
    exact = ChatRStitch(max_tokens=6, quality="exact")
    reply = exact.invoke(QUESTION)
    llm_alone = ChatRStitch(max_tokens=6, router="llm").invoke(QUESTION)
    assert set(reply.response_metadata["token_sources"]) == {"llm"} and reply.content == llm_alone.content
    fast = exact.invoke(QUESTION, quality="fast")
    assert fast.response_metadata["stitch"]["threshold"] == QUALITY_THRESHOLDS["fast"]
    balanced = exact.invoke(QUESTION, quality="balanced")
    assert balanced.response_metadata["stitch"]["threshold"] == QUALITY_THRESHOLDS["balanced"]
    assert exact.invoke(QUESTION, threshold=1.0).response_metadata["stitch"]["switches_to_llm"] == 0
    with pytest.raises(ValidationError, match="give either quality or router/threshold, not both"):
        ChatRStitch(quality="exact", threshold=0.2)
    with pytest.raises(InvalidSettingError, match="quality must be"):
        exact.invoke(QUESTION, quality="best")
    with pytest.raises(InvalidSettingError, match="give either quality or router/threshold, not both"):
        exact.invoke(QUESTION, quality="fast", threshold=0.2)
    assert reply.response_metadata["stitch"]["policy"] == "exact: LLM alone + lookup"
    assert fast.response_metadata["stitch"]["policy"] == "fast: R-Stitch tau=0.1"
    assert exact.invoke(QUESTION).content == reply.content  # a refused call leaves the model as it was


def test_a_measured_speedup(real_engine: StitchEngine, adapter) -> None:
    reply = adapter.chat(max_tokens=4, measure_speedup=True).invoke(QUESTION)  # remotely: the server measures
    stitch = reply.response_metadata["stitch"]
    assert stitch["speedup_basis"] == "measured"
    assert stitch["speedup"] == pytest.approx(stitch["llm_alone_seconds"] / stitch["busy_seconds"], rel=1e-12)


# ----------------------------------------------------------------------------- stops


def test_stop_sequences_from_the_constructor_and_from_the_call(chat: ChatRStitch, adapter) -> None:
    full = chat.invoke(QUESTION).content
    word = full.split()[2]  # a word from the middle of the greedy answer
    expected = full[: full.find(word)]
    by_call = chat.invoke(QUESTION, stop=[word])
    by_field = adapter.chat(max_tokens=8, stop=[word]).invoke(QUESTION)
    assert by_call.content == expected == by_field.content
    assert by_call.response_metadata["finish_reason"] == "stop"


# ----------------------------------------------------------------------------- messages


def test_any_message_order_renders_through_the_chat_template(chat: ChatRStitch, real_engine: StitchEngine) -> None:
    messages = [
        HumanMessage("Add 2 and 3."),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "c1"}]),
        ToolMessage("5", tool_call_id="c1"),
        SystemMessage("Answer in one word."),
        AIMessage("Five"),
    ]
    expected = real_engine.encode([
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'},
        {"role": "user", "content": "The tool add returned: 5.\nAnswer the question."},  # SmolLM2 has no tool role
        {"role": "system", "content": "Answer in one word."},
        {"role": "assistant", "content": "Five"},
    ])
    assert chat.get_num_tokens_from_messages(messages) == len(expected)
    reply = chat.invoke(messages, max_tokens=2)  # ends with an AI message: no "last must be human" rule
    assert reply.usage_metadata["input_tokens"] == len(expected)
    assert chat.get_token_ids("Paris") == real_engine.encode("Paris") and chat.get_token_ids("") == []


def test_a_prompt_too_long_is_refused_before_decoding_and_the_model_stays_usable(chat: ChatRStitch) -> None:
    with pytest.raises(PromptTooLongError, match="exceeds the"):  # remote: the server's 400, raised as the same type
        chat.invoke(QUESTION, max_tokens=10_000)
    assert chat.invoke(QUESTION, max_tokens=2).usage_metadata["output_tokens"] == 2


def test_timeout_raises_and_frees_the_request(real_engine: StitchEngine) -> None:
    engine = RecordingEngine(real_engine)
    with pytest.raises(TimeoutError, match="timeout"):
        ChatRStitch(engine=engine, timeout=1e-9, max_tokens=8).invoke(QUESTION)
    assert closed(engine.streams[-1])


def server_frees_its_requests(service: Any, seconds: float = 30) -> bool:
    """Whether the server's calls in flight drop to 0 within ``seconds`` (a closed HTTP stream ends its request)."""
    deadline = time.monotonic() + seconds
    while service.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    return service.in_flight == 0


def test_remote_timeout_bounds_the_whole_call_and_frees_the_servers_request(remote_adapter) -> None:
    """The remote form of test_timeout_raises_and_frees_the_request: the server's request ends too."""
    adapter = remote_adapter
    chat = adapter.chat(max_tokens=8)
    # a story runs to the 400-token limit (seconds on a CPU); the capital question ends after 8 tokens, about
    # 0.27 s, which raced the 0.3 s timeout
    with pytest.raises(TimeoutError, match="timeout"):
        chat.invoke(LONG_ANSWER_QUESTION, timeout=0.3, max_tokens=400)
    with pytest.raises(TimeoutError, match="timeout"):
        adapter.chat(timeout=0.3, max_tokens=400).invoke(LONG_ANSWER_QUESTION)  # the field, as the call option
    assert server_frees_its_requests(adapter.service())
    assert chat.invoke(QUESTION, max_tokens=2).usage_metadata["output_tokens"] == 2


# ----------------------------------------------------------------------------- callbacks and events


class TokenRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.sources: list[str] = []
        self.stitch: list[dict] = []

    def on_llm_new_token(self, token: str, *, chunk: Any = None, **kwargs: Any) -> None:
        self.sources += chunk.message.response_metadata["token_sources"]

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.stitch.append(response.generations[0][0].message.response_metadata["stitch"])


@remote_is_slow()  # remote run out of the default suite for time: callbacks are client-side, the same in both modes
def test_attribution_arrives_in_on_llm_new_token_chunks(chat: ChatRStitch) -> None:
    recorder = TokenRecorder()
    for _ in chat.stream(QUESTION, config={"callbacks": [recorder]}):
        pass
    [stitch] = recorder.stitch
    assert len(recorder.sources) == stitch["output_tokens"]
    assert recorder.sources.count("slm") == stitch["slm_tokens"]


async def test_attribution_arrives_in_astream_events(chat: ChatRStitch) -> None:
    sources, end = [], None
    async for event in chat.astream_events(QUESTION, version="v2"):
        if event["event"] == "on_chat_model_stream":
            sources += event["data"]["chunk"].response_metadata["token_sources"]
        elif event["event"] == "on_chat_model_end":
            end = event["data"]["output"]
    assert end is not None
    assert sources == end.response_metadata["token_sources"]
    assert len(sources) == end.response_metadata["stitch"]["output_tokens"]


@remote_is_slow()  # remote run out of the default suite for time: callbacks are client-side, the same in both modes
def test_usage_callback_and_cost_handler_totals_equal_the_engine_stats(chat: ChatRStitch) -> None:
    prices = {"slm": ModelPrice(per_1k_tokens=0.5), "llm": ModelPrice(per_1k_tokens=4.0, per_second=0.01)}
    handler = RStitchCallbackHandler(**prices)
    config = {"callbacks": [handler]}
    with get_usage_metadata_callback() as usage:
        replies = [chat.invoke(QUESTION, config=config, max_tokens=3)]
        replies.append(add_up(list(chat.stream("Name a colour.", config=config, max_tokens=3))))
        replies += chat.batch(["Say hi.", "Count to three."], config=config, max_tokens=3)
    stats = [reply.response_metadata["stitch"] for reply in replies]
    totals = handler.totals

    assert totals.requests == 4
    assert totals.output_tokens == sum(s["output_tokens"] for s in stats)
    assert totals.prompt_tokens == sum(s["prompt_tokens"] for s in stats)
    assert totals.slm.tokens == sum(s["slm_tokens"] for s in stats)
    assert totals.llm.tokens == sum(s["llm_tokens"] for s in stats)
    assert totals.switches_to_llm == sum(s["switches_to_llm"] for s in stats)
    assert totals.discarded_slm_tokens == sum(s["discarded_slm_tokens"] for s in stats)
    llm_seconds = sum(s["llm_decode_seconds"] + s["llm_catchup_seconds"] for s in stats)
    assert totals.llm.seconds == pytest.approx(llm_seconds, rel=1e-12)
    assert totals.cost == pytest.approx(
        0.5 * totals.slm.tokens / 1000 + 4.0 * totals.llm.tokens / 1000 + 0.01 * llm_seconds, rel=1e-12
    )
    timed = [s for s in stats if s["llm_alone_seconds"] is not None]
    assert totals.speedup == pytest.approx(
        sum(s["llm_alone_seconds"] for s in timed) / sum(s["busy_seconds"] for s in timed), rel=1e-12
    )
    [(name, used)] = usage.usage_metadata.items()  # LangChain's own usage callback, side by side
    assert name == chat.model_name
    assert used["output_tokens"] == totals.output_tokens and used["input_tokens"] == totals.prompt_tokens
    assert "Stitched calls: 4" in str(handler)


@remote_is_slow()  # remote run out of the default suite for time: callbacks are client-side, the same in both modes
def test_get_rstitch_callback_collects_the_calls_made_in_its_block(chat: ChatRStitch) -> None:
    with get_rstitch_callback(llm=ModelPrice(per_1k_tokens=1000.0)) as costs:
        reply = chat.invoke(QUESTION, max_tokens=2)
    chat.invoke(QUESTION, max_tokens=2)  # outside the block: not counted
    assert costs.totals.requests == 1
    assert costs.totals.llm.cost == reply.response_metadata["stitch"]["llm_tokens"]  # 1 per LLM token


# ----------------------------------------------------------------------------- async and abandonment


async def test_two_async_streams_interleave_without_blocking_the_loop(chat: ChatRStitch) -> None:
    arrivals: list[str] = []
    ticks: list[float] = []
    done = asyncio.Event()

    async def consume(label: str, prompt: str) -> None:
        async for _ in chat.astream(prompt, max_tokens=6):
            arrivals.append(label)

    async def tick() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    await asyncio.gather(consume("a", QUESTION), consume("b", "Name a colour."))
    done.set()
    await ticker

    assert arrivals.count("a") == arrivals.count("b") == 7  # 6 tokens + the last chunk each
    first_b, last_a = arrivals.index("b"), len(arrivals) - 1 - arrivals[::-1].index("a")
    assert first_b < last_a, f"the streams ran one after the other: {arrivals}"
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 1.0  # the loop kept running during forward passes


async def test_an_abandoned_async_stream_closes_its_engine_stream(real_engine: StitchEngine) -> None:
    engine = RecordingEngine(real_engine)
    chat = ChatRStitch(engine=engine, max_tokens=8)
    async with contextlib.aclosing(chat.astream(QUESTION)) as chunks:
        async for _ in chunks:
            break
    for _ in range(500):  # LangChain closes our inner generator from a finaliser task: give it a moment
        if closed(engine.streams[-1]):
            break
        await asyncio.sleep(0.01)
    assert closed(engine.streams[-1])
    reply = await chat.ainvoke(QUESTION, max_tokens=2)  # the engine is free for the next request
    assert reply.usage_metadata["output_tokens"] == 2


async def test_a_cancelled_async_consumer_closes_its_engine_stream(real_engine: StitchEngine) -> None:
    engine = RecordingEngine(real_engine)
    chat = ChatRStitch(engine=engine, max_tokens=8)
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in chat.astream(QUESTION):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    await asyncio.sleep(0.03)  # a worker thread is now inside the next forward pass (~70 ms or more)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed(engine.streams[-1])


def test_an_abandoned_stream_closes_its_engine_stream(real_engine: StitchEngine) -> None:
    engine = RecordingEngine(real_engine)
    chunks = ChatRStitch(engine=engine, max_tokens=8).stream(QUESTION)
    next(chunks)
    chunks.close()
    assert closed(engine.streams[-1])


async def test_abandoned_remote_streams_leave_the_servers_batch(remote_adapter) -> None:
    """The remote form of the abandoned-stream tests above (those record the engine's streams, which remote mode
    cannot see): the server's requests end."""
    adapter = remote_adapter
    chat = adapter.chat(max_tokens=200)
    chunks = chat.stream(QUESTION)
    next(chunks)
    chunks.close()
    async with contextlib.aclosing(chat.astream(QUESTION)) as achunks:
        async for _ in achunks:
            break
    assert server_frees_its_requests(adapter.service())
    assert (await chat.ainvoke(QUESTION, max_tokens=2)).usage_metadata["output_tokens"] == 2


def test_prompt_lookup_speeds_the_exact_preset_on_a_retrieval_prompt_and_keeps_its_answer(real_engine: StitchEngine) -> None:
    """quality='exact' checks tokens copied from the passages in its passes (on by default there);
    float32, so the answer is the same token for token as without lookup."""
    from rstitch_engine.measure.generalisation import generalisation_suite

    item = next(i for i in generalisation_suite("heldout") if i.skill == "rag")
    messages = [(m["role"].replace("user", "human").replace("assistant", "ai"), m["content"]) for m in item.messages()]
    exact = ChatRStitch(quality="exact", dtype="float32", max_tokens=20)
    reply = exact.invoke(messages)
    plain = exact.invoke(messages, prompt_lookup_tokens=0)
    assert reply.content == plain.content and set(reply.response_metadata["token_sources"]) == {"llm"}
    assert reply.response_metadata["stitch"]["confirmed_tokens"] > 0
    assert plain.response_metadata["stitch"]["proposed_tokens"] == 0
    assert reply.response_metadata["stitch"]["llm_forward_passes"] < plain.response_metadata["stitch"]["llm_forward_passes"]
    stitched = ChatRStitch(quality="fast", dtype="float32", max_tokens=20).invoke(messages)  # stitching: off unless asked
    assert stitched.response_metadata["stitch"]["proposed_tokens"] == 0
    with pytest.raises(ValidationError, match="prompt_lookup_tokens"):
        ChatRStitch(prompt_lookup_tokens=-1)
    with pytest.raises(InvalidSettingError, match="prompt_lookup_tokens"):
        exact.invoke(messages, prompt_lookup_tokens=1.5)


def test_the_default_preset_is_auto_unless_a_router_or_threshold_is_named() -> None:
    """No weights load: the preset and router of each way of configuring the model."""
    from rstitch_engine import EntropyRouter, Routing, resolve_policy

    assert ChatRStitch().preset == "auto" and ChatRStitch()._identifying_params["quality"] == "auto"
    assert ChatRStitch().request_routing({}) == Routing()
    assert ChatRStitch(quality="exact").preset == "exact"
    for named in ({"threshold": 0.1}, {"router": "entropy"}):
        assert ChatRStitch(**named).preset is None
        assert resolve_policy(ChatRStitch(**named).request_routing({}), None).router == EntropyRouter(0.1)
    a_calls_tau = ChatRStitch().request_routing({"threshold": 0.05})  # a call's tau: R-Stitch at it
    assert resolve_policy(a_calls_tau, None).router == EntropyRouter(0.05)
    assert ChatRStitch(agreement_target=0.9).request_routing({"agreement_target": 0.99}).agreement_target == 0.99
    with pytest.raises(ValidationError, match="either quality or router/threshold"):
        ChatRStitch(quality="fast", threshold=0.2)
    with pytest.raises(ValidationError, match="agreement_target"):
        ChatRStitch(agreement_target=1.5)


@pytest.mark.parametrize("options", [{"quality": "auto"}, {}], ids=["auto", "default"])
def test_auto_runs_the_shipped_profile_s_choice_and_says_so(real_engine: StitchEngine, options: dict[str, str]) -> None:
    """'auto' is also the default: the default pair's shipped profile decides, and the metadata names the
    policy and the reason. Where it is the LLM alone, requests start on the LLM (no SLM pass at all)."""
    from rstitch_engine import Routing
    from rstitch_engine.measure.generalisation import generalisation_suite

    expected = real_engine.policy(Routing())
    assert real_engine.profile is not None and "profile" in expected.reason  # the default pair ships one
    item = next(i for i in generalisation_suite("heldout") if i.skill == "rag")
    messages = [(m["role"].replace("user", "human").replace("assistant", "ai"), m["content"]) for m in item.messages()]
    auto = ChatRStitch(max_tokens=12, **options)
    for reply in (auto.invoke(messages), auto.invoke(QUESTION)):
        stitch = reply.response_metadata["stitch"]
        assert (stitch["policy"], stitch["policy_reason"]) == (expected.name, expected.reason)
        if expected.router.llm_only:
            assert set(reply.response_metadata["token_sources"]) == {"llm"}
            assert stitch["slm_forward_passes"] == 0 and stitch["switches_to_llm"] == 0
    same = (ChatRStitch(max_tokens=12, quality="exact") if expected.router.llm_only
            else ChatRStitch(max_tokens=12, threshold=expected.router.threshold))
    assert auto.invoke(QUESTION).content == same.invoke(QUESTION).content


def test_prompt_lookup_under_the_tool_call_grammar_keeps_the_llm_alone_s_calls(real_engine: StitchEngine) -> None:
    """quality='exact' with bound tools: lookup checks copied tokens under the grammar; float32, so
    the calls and text are those without lookup, token for token."""
    from langchain_core.tools import tool

    @tool
    def send_email(to: str, subject: str) -> str:
        """Send an email to an address with a subject line."""
        return to

    question = "Send an email to maria.lopez@example.com with the subject Quarterly budget review."
    model = ChatRStitch(quality="exact", dtype="float32", max_tokens=48).bind_tools([send_email], tool_choice="any")
    looked_up, plain = model.invoke(question), model.invoke(question, prompt_lookup_tokens=0)
    assert looked_up.tool_calls[0]["args"] == plain.tool_calls[0]["args"] == {
        "to": "maria.lopez@example.com", "subject": "Quarterly Budget Review"}
    assert looked_up.content == plain.content
    assert looked_up.response_metadata["token_sources"] == plain.response_metadata["token_sources"]
    stats, plain_stats = looked_up.response_metadata["stitch"], plain.response_metadata["stitch"]
    assert stats["forced_tokens"] == plain_stats["forced_tokens"] > 0
    assert stats["confirmed_tokens"] > 0 and stats["llm_forward_passes"] < plain_stats["llm_forward_passes"]
