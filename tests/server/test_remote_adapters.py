"""The adapters in remote mode against a live server, side by side with the same adapters in local mode.

``ChatRStitch(base_url=...)`` and ``RStitchLLM(base_url=...)`` load no weights; every answer, token
attribution, usage, tool call and structured output is compared with the local adapter on the very
engine the server runs (greedy, float64: equal token for token). Then the standard OpenAI clients
of both frameworks (``ChatOpenAI``, ``OpenAILike``) run unchanged against the server.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_openai import ChatOpenAI
from llama_index.core.base.llms.types import ChatMessage
from llama_index.llms.openai_like import OpenAILike
from pydantic import BaseModel
from serving import API_KEY, TINY_MODEL_ID

from rstitch_engine import InvalidSettingError, PromptTooLongError
from rstitch_integrations.langchain import ChatRStitch
from rstitch_integrations.llamaindex import RStitchLLM
from rstitch_server import StitchService

OPTIONS = {"threshold": 0.5, "max_tokens": 14}
QUESTION = "What is 3 + 4?"


class Weather(BaseModel):
    """The weather of a city (closed choices: a random-weight model's free strings may not end)."""

    city: Literal["Paris", "Rome"]
    sunny: bool


def get_weather(city: Literal["Paris", "Rome"], days: Literal[1, 2, 3]) -> str:
    """Weather in a city for some days."""
    return f"{city}: sunny for {days} days"


@pytest.fixture
def chats(tiny_server: tuple[str, StitchService]) -> tuple[ChatRStitch, ChatRStitch]:
    base, service = tiny_server
    return (ChatRStitch(base_url=base, api_key=API_KEY, **OPTIONS),
            ChatRStitch(engine=service.engine, **OPTIONS))


def sources(message: Any) -> list[str]:
    return message.response_metadata["token_sources"]


def stitch(message: Any) -> dict[str, Any]:
    return message.response_metadata["stitch"]


def test_chat_rstitch_remote_invoke_equals_local(chats: tuple[ChatRStitch, ChatRStitch]) -> None:
    remote, local = chats
    there, here = remote.invoke(QUESTION), local.invoke(QUESTION)
    assert there.content == here.content
    assert sources(there) == sources(here) and len(sources(there)) == stitch(there)["output_tokens"]
    assert there.usage_metadata == here.usage_metadata
    assert stitch(there)["finish_reason"] == here.response_metadata["finish_reason"]
    assert {k for k in stitch(there)} == {k for k in stitch(here)}
    assert remote._loaded is None  # no weights were loaded


async def test_chat_rstitch_remote_streams_like_local(chats: tuple[ChatRStitch, ChatRStitch]) -> None:
    remote, local = chats
    there = [c async for c in remote.astream(QUESTION, temperature=0.0)]
    here = list(local.stream(QUESTION, temperature=0.0))
    assert [c.content for c in there] == [c.content for c in here]
    assert [c.response_metadata.get("token_sources") for c in there] == [
        c.response_metadata.get("token_sources") for c in here]
    total_there, total_here = sum(there[1:], there[0]), sum(here[1:], here[0])
    assert isinstance(total_there, AIMessageChunk) and total_there.usage_metadata == total_here.usage_metadata


def test_chat_rstitch_remote_batches_with_call_options(chats: tuple[ChatRStitch, ChatRStitch]) -> None:
    remote, local = chats
    prompts = ["Count to three.", QUESTION, "Name a colour."]
    there = remote.batch(prompts, stop=["e"])
    here = local.batch(prompts, stop=["e"])
    assert [m.content for m in there] == [m.content for m in here]
    assert [sources(m) for m in there] == [sources(m) for m in here]


def test_chat_rstitch_remote_tools_and_structured_output_equal_local(chats: tuple[ChatRStitch, ChatRStitch]) -> None:
    remote, local = chats
    question = [HumanMessage("What is the weather in Paris for 2 days?")]
    there = remote.bind_tools([get_weather], tool_choice="get_weather", max_tokens=80).invoke(question)
    here = local.bind_tools([get_weather], tool_choice="get_weather", max_tokens=80).invoke(question)
    assert [(c["name"], c["args"]) for c in there.tool_calls] == [(c["name"], c["args"]) for c in here.tool_calls]
    assert there.tool_calls and set(there.tool_calls[0]["args"]) == {"city", "days"}
    assert there.response_metadata["stitch"]["output_tokens"] == here.response_metadata["stitch"]["output_tokens"]
    for method in ("function_calling", "json_schema"):
        structured_there = remote.with_structured_output(Weather, method=method).bind(max_tokens=80).invoke(question)
        structured_here = local.with_structured_output(Weather, method=method).bind(max_tokens=80).invoke(question)
        assert isinstance(structured_there, Weather) and structured_there == structured_here


def test_chat_rstitch_remote_reports_a_bad_call_as_local_does(chats: tuple[ChatRStitch, ChatRStitch]) -> None:
    remote, _ = chats
    with pytest.raises(PromptTooLongError, match="context window"):  # the type a local call raises
        remote.invoke(QUESTION, max_tokens=100000)
    with pytest.raises(InvalidSettingError, match="unknown call options"):
        remote.invoke(QUESTION, frobnicate=1)
    assert remote.invoke(QUESTION).content  # still usable


def test_rstitch_llm_remote_equals_local(tiny_server: tuple[str, StitchService]) -> None:
    base, service = tiny_server
    remote = RStitchLLM(base_url=base, api_key=API_KEY, **OPTIONS)
    local = RStitchLLM(engine=service.engine, **OPTIONS)
    messages = [ChatMessage(role="user", content=QUESTION)]
    there, here = remote.chat(messages), local.chat(messages)
    assert there.message.content == here.message.content
    assert there.additional_kwargs["token_sources"] == here.additional_kwargs["token_sources"]
    assert there.raw["usage"] == here.raw["usage"]
    streamed = list(remote.stream_chat(messages))
    assert streamed[-1].message.content == here.message.content
    assert [s for r in streamed for s in r.additional_kwargs["token_sources"]] == [
        s for r in local.stream_chat(messages) for s in r.additional_kwargs["token_sources"]]
    longer = OPTIONS | {"max_tokens": 80}
    weather_there = RStitchLLM(base_url=base, api_key=API_KEY, **longer).structured_predict(Weather, _prompt("Rome?"))
    weather_here = RStitchLLM(engine=service.engine, **longer).structured_predict(Weather, _prompt("Rome?"))
    assert weather_there == weather_here


def _prompt(text: str) -> Any:
    from llama_index.core.prompts import PromptTemplate

    return PromptTemplate(text)


def test_chat_openai_works_unchanged_against_the_server(tiny_server: tuple[str, StitchService]) -> None:
    base, _ = tiny_server
    chat = ChatOpenAI(base_url=base + "/v1", api_key=API_KEY, model=TINY_MODEL_ID, max_tokens=10,  # type: ignore[arg-type]
                      temperature=0, stream_usage=True, extra_body={"threshold": 0.5})
    reply = chat.invoke(QUESTION)
    assert reply.usage_metadata["output_tokens"] == 10
    chunks = list(chat.stream(QUESTION))
    assert "".join(c.content for c in chunks) == reply.content
    longer = chat.model_copy(update={"max_tokens": 80})
    call = longer.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Rome for 3 days?")
    assert call.tool_calls[0]["name"] == "get_weather" and set(call.tool_calls[0]["args"]) == {"city", "days"}
    weather = longer.with_structured_output(Weather, method="json_schema").invoke("Weather in Rome?")
    assert isinstance(weather, Weather)


def test_openai_like_works_unchanged_against_the_server(tiny_server: tuple[str, StitchService]) -> None:
    base, _ = tiny_server
    llm = OpenAILike(model=TINY_MODEL_ID, api_base=base + "/v1", api_key=API_KEY, is_chat_model=True,
                     max_tokens=10, temperature=0, additional_kwargs={"extra_body": {"threshold": 0.5}})
    reply = llm.chat([ChatMessage(role="user", content=QUESTION)])
    streamed = list(llm.stream_chat([ChatMessage(role="user", content=QUESTION)]))
    assert streamed[-1].message.content == reply.message.content
    assert json.loads(json.dumps(reply.raw.model_extra["rstitch"]))["stats"]["output_tokens"] == 10
    completion = llm.complete("The quick brown", formatted=True)  # a chat model answers complete() through chat
    assert completion.text == llm.chat([ChatMessage(role="user", content="The quick brown")]).message.content
