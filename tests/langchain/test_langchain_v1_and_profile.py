"""LangChain 1.x conventions: ``output_version="v1"`` standard content blocks and the model ``profile``.

Text and tool calls run on the real default pair; reasoning blocks need a model that writes
``<think>`` spans, so they are shown with scripted text through the real parsing path.
"""

from __future__ import annotations

import pytest
from helpers import multiply
from langchain_core.tools import tool

from rstitch_engine import StitchEngine
from rstitch_integrations.langchain import ChatRStitch

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def chat_v1(real_engine_float32: StitchEngine) -> ChatRStitch:
    return ChatRStitch(engine=real_engine_float32, output_version="v1", max_tokens=24)


def test_v1_text_is_a_text_block_and_keeps_each_token_s_model(chat_v1):
    reply = chat_v1.invoke("What is the capital of France?")
    assert [block["type"] for block in reply.content] == ["text"]
    assert reply.content[0]["text"] == reply.text and reply.text.strip()
    assert len(reply.response_metadata["token_sources"]) == reply.usage_metadata["output_tokens"]
    chunks = list(chat_v1.stream("What is the capital of France?"))
    assert all(isinstance(chunk.content, list) for chunk in chunks)
    assert all(len(chunk.response_metadata["token_sources"]) == chunk.usage_metadata["output_tokens"]
               for chunk in chunks)


def test_v1_tool_calls_are_tool_call_blocks_streamed_with_attribution(chat_v1):
    model = chat_v1.bind_tools([tool(multiply)], tool_choice="multiply")
    reply = model.invoke("What is 6 times 7?")
    assert [(b["type"], b["name"], b["args"]) for b in reply.content] == [("tool_call", "multiply", {"a": 6, "b": 7})]
    total = None
    for chunk in model.stream("What is 6 times 7?"):
        total = chunk if total is None else total + chunk
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [("multiply", {"a": 6, "b": 7})]
    assert "tool_call" in [b["type"] for b in total.content_blocks]
    assert set(total.response_metadata["token_sources"]) <= {"slm", "llm"}


def test_v1_reasoning_is_a_reasoning_block(scripted_chat):
    chat, _ = scripted_chat("<think>6 times 7 is 42.</think>The answer is 42.", output_version="v1")
    reply = chat.invoke("6*7?")
    assert [(b["type"], b.get("reasoning", b.get("text"))) for b in reply.content] == [
        ("reasoning", "6 times 7 is 42."), ("text", "The answer is 42.")]


def test_the_profile_is_read_without_loading_weights(monkeypatch):
    from rstitch_engine.decoding import engine as engine_module

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded to build the profile")

    monkeypatch.setattr(engine_module, "load_pair", no_loading)
    profile = ChatRStitch(dtype="float32", device="cpu").profile
    assert profile["max_input_tokens"] == 8192  # SmolLM2-135M's window, from its config.json
    assert profile["tool_calling"] and profile["tool_choice"] and profile["structured_output"]
    assert profile["reasoning_output"] is False  # SmolLM2's chat template has no <think> spans
    assert profile["image_inputs"] is False and profile["text_outputs"] is True


def test_a_given_engine_s_profile_matches_the_config_facts(real_engine_float32):
    from_engine = ChatRStitch(engine=real_engine_float32).profile
    assert from_engine == ChatRStitch().profile
