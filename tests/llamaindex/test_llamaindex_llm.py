"""RStitchLLM on the real default pair: every call path against the engine's own output, exactly."""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, ImageBlock, TextBlock
from llama_index.core.bridge.pydantic import ValidationError
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatInProgressEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionStartEvent,
)

from rstitch_engine import EmptyPromptError, InvalidSettingError, PromptTooLongError
from rstitch_integrations.llamaindex import RStitchLLM

pytestmark = pytest.mark.real_model

QUESTION = "What is the capital of France?"


@pytest.fixture
def rstitch_llm(real_engine, adapter) -> RStitchLLM:
    """Overrides the session one here: the adapter on the default pair (short greedy answers), local, then remote
    (``RStitchLLM(base_url=...)`` on a live server on the same engine): the tests taking it run in both modes."""
    return adapter.llm(max_tokens=8)


@pytest.fixture(scope="module")
def expected(engine_answer):
    return engine_answer(QUESTION)


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


# ---------------------------------------------------------------------- construction and metadata


def test_construction_is_cheap_and_metadata_is_real(real_engine):
    llm = RStitchLLM(max_tokens=16)
    assert llm._engine is None  # nothing loaded until used
    meta = llm.metadata
    assert meta.context_window == real_engine.pair.llm.context_window == 8192
    assert meta.num_output == 16
    assert meta.is_chat_model and meta.is_function_calling_model
    assert meta.model_name == "rstitch:smollm2-135m-instruct+draft"
    assert llm.engine is real_engine  # the shared pair, not a second copy


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"threshold": float("nan")}, "threshold (tau) must be a real number"),
        ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
        ({"max_tokens": 0}, "max_new_tokens must be an integer >= 1"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"router": "random"}, "Input should be 'entropy', 'learned', 'slm' or 'llm'"),
        ({"quality": "best"}, "Input should be 'auto', 'exact', 'balanced' or 'fast'"),
        ({"quality": "exact", "threshold": 0.2}, "give either quality or router/threshold, not both"),
        ({"max_batch_size": 0}, "max_batch_size must be an integer >= 1"),
        ({"llm_wait_steps": -1}, "llm_wait_steps must be an integer >= 0"),
    ],
)
def test_bad_fields_are_rejected_with_the_reason(fields, message):
    with pytest.raises(ValidationError) as caught:
        RStitchLLM(**fields)
    assert message in str(caught.value)


# ---------------------------------------------------------------------- chat and complete vs the engine


def test_chat_equals_the_engine_output(rstitch_llm, expected):
    response = rstitch_llm.chat(user(QUESTION))
    assert response.message.content == expected.text
    assert response.additional_kwargs["token_sources"] == [e.source for e in expected.events]
    stitch = response.additional_kwargs["stitch"]
    assert set(stitch) == set(expected.stats.to_dict())
    for key in ("prompt_tokens", "output_tokens", "slm_tokens", "llm_tokens", "discarded_slm_tokens",
                "switches_to_llm", "switches_to_slm", "finish_reason", "threshold"):
        assert stitch[key] == expected.stats.to_dict()[key], key
    assert response.raw["usage"] == {
        "prompt_tokens": expected.stats.prompt_tokens,
        "completion_tokens": expected.stats.output_tokens,
        "total_tokens": expected.stats.prompt_tokens + expected.stats.output_tokens,
    }
    assert response.delta is None


def test_stream_chat_items_add_up_to_the_engine_output(rstitch_llm, expected):
    items = list(rstitch_llm.stream_chat(user(QUESTION)))
    assert all(isinstance(item, ChatResponse) for item in items)
    assert "".join(item.delta for item in items) == expected.text
    assert items[-1].message.content == expected.text
    sources = [s for item in items for s in item.additional_kwargs["token_sources"]]
    assert sources == [e.source for e in expected.events]
    text_so_far = ""
    for item in items:  # cumulative content, delta by delta
        text_so_far += item.delta
        assert item.message.content == text_so_far
    assert [item.raw is not None for item in items] == [False] * (len(items) - 1) + [True]
    assert items[-1].raw["usage"]["completion_tokens"] == expected.stats.output_tokens
    assert items[-1].additional_kwargs["stitch"]["llm_tokens"] == expected.stats.llm_tokens


def test_complete_and_stream_complete_equal_the_engine_output(rstitch_llm, expected):
    completion = rstitch_llm.complete(QUESTION)
    assert isinstance(completion, CompletionResponse)
    assert completion.text == expected.text
    assert completion.additional_kwargs["token_sources"] == [e.source for e in expected.events]
    assert completion.raw["usage"]["prompt_tokens"] == expected.stats.prompt_tokens

    items = list(rstitch_llm.stream_complete(QUESTION))
    assert "".join(item.delta for item in items) == items[-1].text == expected.text
    assert [s for item in items for s in item.additional_kwargs["token_sources"]] == [e.source for e in expected.events]
    assert items[-1].additional_kwargs["stitch"]["output_tokens"] == expected.stats.output_tokens


def test_call_options_override_fields(rstitch_llm, expected):
    three = rstitch_llm.chat(user(QUESTION), max_tokens=3)
    assert three.raw["usage"]["completion_tokens"] == 3
    slm_only = rstitch_llm.chat(user(QUESTION), max_tokens=4, threshold=1.0)  # entropy never exceeds 1
    assert slm_only.additional_kwargs["token_sources"] == ["slm"] * 4
    llm_alone = RStitchLLM(router="llm", max_tokens=4).chat(user(QUESTION))
    assert llm_alone.additional_kwargs["token_sources"] == ["llm"] * 4
    exact = rstitch_llm.chat(user(QUESTION), max_tokens=4, quality="exact")  # the preset for the LLM's own answer
    assert exact.message.content == llm_alone.message.content and exact.additional_kwargs["token_sources"] == ["llm"] * 4
    assert exact.additional_kwargs["stitch"]["policy"] == "exact: LLM alone + lookup"
    assert slm_only.additional_kwargs["stitch"]["policy"] == "R-Stitch tau=1"  # a call's tau: R-Stitch at it
    measured = RStitchLLM(measure_speedup=True, max_tokens=4).chat(user(QUESTION)).additional_kwargs["stitch"]
    assert measured["speedup_basis"] == "measured" and measured["speedup"] > 0
    first_word = expected.text.split()[1]  # "capital" in "The capital of France ..."
    stopped = rstitch_llm.chat(user(QUESTION), stop=[first_word])
    assert stopped.message.content == expected.text[: expected.text.index(first_word)]
    assert stopped.raw["finish_reason"] == "stop"


# ---------------------------------------------------------------------- bad input


def test_bad_calls_raise_before_decoding_and_the_llm_still_works(rstitch_llm, expected):
    with pytest.raises(PromptTooLongError, match="exceeds the"):
        rstitch_llm.stream_chat(user(QUESTION), max_tokens=9000)  # raised at the call, not on iteration
    with pytest.raises(InvalidSettingError, match="unknown call options \\['temprature'\\]"):
        rstitch_llm.chat(user(QUESTION), temprature=0.5)
    with pytest.raises(EmptyPromptError):
        rstitch_llm.chat([])
    with pytest.raises(InvalidSettingError, match="message 0 has a 'image' content part"):
        rstitch_llm.chat([ChatMessage(role="user", blocks=[TextBlock(text="hi"), ImageBlock(url="http://x/y.png")])])
    with pytest.raises(InvalidSettingError, match="temperature must be a finite number"):
        rstitch_llm.complete(QUESTION, temperature=-2)
    assert rstitch_llm.chat(user(QUESTION)).message.content == expected.text


# ---------------------------------------------------------------------- token counting and events


def counting_llm() -> tuple[RStitchLLM, TokenCountingHandler]:
    # A character "tokenizer": if the handler ever re-tokenised, its counts would differ from the engine's.
    counter = TokenCountingHandler(tokenizer=list)
    return RStitchLLM(max_tokens=8, callback_manager=CallbackManager([counter])), counter


@pytest.mark.parametrize("method", ["chat", "stream_chat", "complete", "stream_complete", "achat", "astream_complete"])
async def test_token_counting_handler_totals_equal_the_engine_counts(method):
    llm, counter = counting_llm()
    result = getattr(llm, method)(user(QUESTION) if "chat" in method else QUESTION)
    if method.startswith("a"):
        result = await result
    if method.startswith("stream"):
        result = list(result)[-1]
    elif method.startswith("astream"):
        result = [item async for item in result][-1]
    stats = result.additional_kwargs["stitch"]
    assert len(counter.llm_token_counts) == 1  # one event per call: no double counting
    assert counter.prompt_llm_token_count == stats["prompt_tokens"]
    assert counter.completion_llm_token_count == stats["output_tokens"]
    assert counter.total_llm_token_count == stats["prompt_tokens"] + stats["output_tokens"]


def kinds(events) -> list[str]:
    return [type(e).__name__ for e in events if type(e).__name__.startswith("LLM")]


def test_each_call_emits_one_start_and_one_end_event(rstitch_llm, recorder):
    rstitch_llm.complete(QUESTION)
    assert kinds(recorder.events) == ["LLMCompletionStartEvent", "LLMCompletionEndEvent"]  # no nested chat events
    recorder.events.clear()
    items = list(rstitch_llm.stream_chat(user(QUESTION)))
    names = kinds(recorder.events)
    assert names == ["LLMChatStartEvent"] + ["LLMChatInProgressEvent"] * len(items) + ["LLMChatEndEvent"]
    in_progress = [e for e in recorder.events if isinstance(e, LLMChatInProgressEvent)]
    assert [e.response.additional_kwargs["token_sources"] for e in in_progress] == [
        i.additional_kwargs["token_sources"] for i in items
    ]
    end = next(e for e in recorder.events if isinstance(e, LLMChatEndEvent))
    streamed = sum(len(i.additional_kwargs["token_sources"]) for i in items)
    assert end.response.additional_kwargs["stitch"]["output_tokens"] == streamed
    assert isinstance(recorder.events[0], LLMChatStartEvent)
    assert not any(isinstance(e, (LLMCompletionStartEvent, LLMCompletionEndEvent)) for e in recorder.events)
