"""``rstitch serve`` on the real default pair: the clients users run, streaming, tools and JSON output.

The real ``openai`` client, LangChain's ``ChatOpenAI``, LlamaIndex's ``OpenAILike`` and
``ChatRStitch(base_url=...)`` against one server on SmolLM2-135M-Instruct and its draft, with
attribution and stats in the ``rstitch`` field; a forced tool call and ``json_schema`` /
``json_object`` answers are valid.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import openai
import pytest
from helpers import Capital, capital_of, multiply
from langchain_openai import ChatOpenAI
from llama_index.core.base.llms.types import ChatMessage
from llama_index.llms.openai_like import OpenAILike
from serving import running_server

from rstitch_engine import StitchEngine
from rstitch_integrations.core import StitchOptions
from rstitch_integrations.langchain import ChatRStitch
from rstitch_server import StitchService

pytestmark = pytest.mark.real_model

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def real_server(real_engine: StitchEngine) -> Iterator[str]:
    options = StitchOptions(max_tokens=48)
    service = StitchService(real_engine, options, options.model_name)
    with running_server(service) as base:
        yield base
    service.shutdown()


def test_the_openai_client_streams_with_attribution_and_stats(real_server: str) -> None:
    client = openai.OpenAI(base_url=real_server + "/v1", api_key="none")
    assert [m.id for m in client.models.list()] == ["rstitch:smollm2-135m-instruct+draft"]
    text, sources, stats, usage = "", [], None, None
    for chunk in client.chat.completions.create(model="rstitch", messages=QUESTION, max_tokens=24, stream=True,
                                                stream_options={"include_usage": True},
                                                extra_body={"quality": "fast"}):  # stitched: both models write
        sources += chunk.model_extra["rstitch"]["token_sources"]
        stats = chunk.model_extra["rstitch"].get("stats", stats)
        usage = chunk.usage or usage
        text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert "Paris" in text
    assert len(sources) == usage.completion_tokens == stats["output_tokens"]
    assert stats["slm_tokens"] == sources.count("slm") > 0 and stats["speedup_basis"] in ("estimated", "measured")
    assert stats["policy"] == "fast: R-Stitch tau=0.1"


def test_a_forced_tool_call_and_json_answers_are_valid(real_server: str) -> None:
    client = openai.OpenAI(base_url=real_server + "/v1", api_key="none")
    tool = {"type": "function", "function": {"name": "capital_of", "description": "Look up a country's capital",
                                             "parameters": {"type": "object", "properties": {"country": {"type": "string"}},
                                                            "required": ["country"]}}}
    reply = client.chat.completions.create(model="rstitch", messages=QUESTION, tools=[tool], tool_choice="required")
    assert reply.choices[0].finish_reason == "tool_calls"
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "capital_of" and json.loads(call.function.arguments) == {"country": "France"}
    schema = Capital.model_json_schema()
    answer = client.chat.completions.create(
        model="rstitch", messages=QUESTION, max_tokens=48,
        response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), schema)
    free = client.chat.completions.create(model="rstitch", messages=QUESTION, max_tokens=48,
                                          response_format={"type": "json_object"})
    assert free.model_extra["rstitch"]["stats"]["finish_reason"] == "stop"
    assert isinstance(json.loads(free.choices[0].message.content), dict)


def test_chat_openai_streams_calls_tools_and_structures(real_server: str) -> None:
    chat = ChatOpenAI(base_url=real_server + "/v1", api_key="none", model="rstitch", max_tokens=48,  # type: ignore[arg-type]
                      temperature=0)
    streamed = "".join(chunk.content for chunk in chat.stream(QUESTION))  # type: ignore[misc]
    assert "Paris" in streamed
    reply = chat.bind_tools([multiply, capital_of], tool_choice="multiply").invoke("What is 6 times 7?")
    assert reply.tool_calls[0]["name"] == "multiply" and reply.tool_calls[0]["args"] == {"a": 6, "b": 7}
    capital = chat.with_structured_output(Capital, method="json_schema").invoke("What is the capital of France?")
    assert isinstance(capital, Capital) and capital.city == "Paris"


def test_chat_rstitch_remote_and_openai_like_on_the_real_pair(real_server: str, real_engine: StitchEngine) -> None:
    remote = ChatRStitch(base_url=real_server, max_tokens=24)
    local = ChatRStitch(engine=real_engine, max_tokens=24)
    chunks = list(remote.stream(QUESTION))
    total = sum(chunks[1:], chunks[0])
    here = local.invoke(QUESTION)
    assert total.content == here.content and "Paris" in total.content
    assert total.response_metadata["token_sources"] == here.response_metadata["token_sources"]
    assert total.response_metadata["stitch"]["output_tokens"] == total.usage_metadata["output_tokens"]
    like = OpenAILike(model="rstitch", api_base=real_server + "/v1", api_key="none", is_chat_model=True, max_tokens=24)
    streamed = list(like.stream_chat([ChatMessage(role="user", content=QUESTION[0]["content"])]))
    assert "Paris" in streamed[-1].message.content
