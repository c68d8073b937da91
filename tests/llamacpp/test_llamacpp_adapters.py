"""Both adapters and the CLI on the default pair on llama.cpp (``backend="llama.cpp"``): answers equal the
engine's, streaming attribution, stats with the policy that ran, a forced tool call, and an agent loop."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.tools import tool
from llama_index.core.llms import ChatMessage

from rstitch_engine import GenerationSettings, Routing, shared_engine
from rstitch_integrations.langchain import ChatRStitch
from rstitch_integrations.llamaindex import RStitchLLM

pytestmark = pytest.mark.real_model

QUESTION = "What is the capital of France? Reply with one word."


@pytest.fixture(scope="module")
def engine():
    return shared_engine(backend="llama.cpp")


def engine_text(engine, question: str, max_tokens: int, routing: Routing | None = None) -> str:
    return engine.generate([{"role": "user", "content": question}], GenerationSettings(max_new_tokens=max_tokens),
                           routing).text


def test_langchain_invoke_and_stream_on_llama_cpp(engine):
    chat = ChatRStitch(backend="llama.cpp", max_tokens=12)
    assert chat.model_name.endswith("@llama.cpp")
    reply = chat.invoke([HumanMessage(QUESTION)])
    assert reply.content == engine_text(engine, QUESTION, 12)
    stitch = reply.response_metadata["stitch"]
    assert stitch["policy"] == engine.policy().name and stitch["output_tokens"] == reply.usage_metadata["output_tokens"]
    chunks = list(ChatRStitch(backend="llama.cpp", max_tokens=12, quality="fast").stream([HumanMessage(QUESTION)]))
    sources = [s for chunk in chunks for s in chunk.response_metadata.get("token_sources", [])]
    streamed = "".join(str(chunk.content) for chunk in chunks)
    assert streamed == engine_text(engine, QUESTION, 12, Routing(quality="fast"))
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert isinstance(total, AIMessageChunk) and set(sources) == {"slm", "llm"}
    assert len(sources) == total.usage_metadata["output_tokens"] == total.response_metadata["stitch"]["output_tokens"]


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def test_langchain_tool_call_on_llama_cpp(engine):
    chat = ChatRStitch(backend="llama.cpp", max_tokens=40).bind_tools([get_weather], tool_choice="get_weather")
    reply = chat.invoke([HumanMessage("What is the weather in Paris?")])
    (call,) = reply.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str)


def test_langchain_agent_runs_a_tool_and_answers_on_llama_cpp(engine):
    from langchain.agents import create_agent

    agent = create_agent(ChatRStitch(backend="llama.cpp", max_tokens=40, tool_policy="until_result"),
                         tools=[get_weather])
    result = agent.invoke({"messages": [HumanMessage("What is the weather in Paris?")]})
    kinds = [type(message).__name__ for message in result["messages"]]
    assert "ToolMessage" in kinds and kinds[-1] == "AIMessage"


def test_llamaindex_chat_and_stream_on_llama_cpp(engine):
    llm = RStitchLLM(backend="llama.cpp", max_tokens=12)
    reply = llm.chat([ChatMessage(role="user", content=QUESTION)])
    assert reply.message.content == engine_text(engine, QUESTION, 12)
    assert reply.additional_kwargs["stitch"]["policy"] == engine.policy().name
    pieces = list(llm.stream_chat([ChatMessage(role="user", content=QUESTION)]))
    assert pieces[-1].message.content == reply.message.content
    assert all(piece.additional_kwargs.get("token_sources") for piece in pieces if piece.delta)


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def test_llamaindex_tool_call_on_llama_cpp(engine):
    from llama_index.core.tools import FunctionTool

    llm = RStitchLLM(backend="llama.cpp", max_tokens=40)
    response = llm.chat_with_tools([FunctionTool.from_defaults(multiply)], user_msg="What is 12 times 3?",
                                   tool_choice="multiply")
    (call,) = llm.get_tool_calls_from_response(response)
    assert call.tool_name == "multiply" and set(call.tool_kwargs) == {"a", "b"}
    assert len(response.additional_kwargs["token_sources"]) > 0


def test_cli_generate_on_llama_cpp(engine):
    done = subprocess.run([sys.executable, "-m", "rstitch_engine.cli", "generate", "--backend", "llama.cpp",
                           "--max-tokens", "12", "--json", QUESTION], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout[done.stdout.index("{"):])
    assert stats["output_tokens"] > 0 and stats["policy"] == engine.policy().name


def test_rstitch_serve_on_llama_cpp_answers_an_openai_client(engine):
    """``rstitch serve --backend llama.cpp``'s service on the default pair, called with the openai client."""
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from rstitch_server import create_app
    from rstitch_server.config import ServeConfig, load_service

    config = ServeConfig(backend="llama.cpp", request_defaults={"max_tokens": 12})
    assert config.model_id.endswith("@llama.cpp")
    with TestClient(create_app(load_service(config))) as http:  # the app in process, over its ASGI interface
        client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)
        reply = client.chat.completions.create(model=config.model_id, messages=[{"role": "user", "content": QUESTION}])
    assert reply.choices[0].message.content == engine_text(engine, QUESTION, 12)
    stats = reply.model_extra["rstitch"]["stats"]
    assert stats["policy"] == engine.policy().name and stats["output_tokens"] == reply.usage.completion_tokens
