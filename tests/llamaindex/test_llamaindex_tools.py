"""Tool calls and thinking in free generation: scripted model text through the real tokenizer, detokeniser
and parsers.

These tests script what the model writes (see ``ScriptedEngine`` in conftest.py) to show how free
generation (``constrained=False``) parses text the 135M model does not write reliably: malformed and
unknown calls, parallel calls, ``<think>`` spans. Everything after the engine is the adapter's real
path. Grammar-constrained calls and a real two-tool agent run on the default pair are in
test_llamaindex_constrained.py.
"""

from __future__ import annotations

import json

import pytest
from llama_index.core.agent.workflow import AgentStream, FunctionAgent, ReActAgent
from llama_index.core.base.llms.types import (
    CacheControl,
    CachePoint,
    ChatMessage,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

from rstitch_engine import InvalidSettingError
from rstitch_integrations.tool_calls import tool_call_prefix

pytestmark = pytest.mark.real_model


def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product."""
    return a * b


def add(a: int, b: int) -> int:
    """Add two integers and return the sum."""
    return a + b


TOOLS = [FunctionTool.from_defaults(multiply), FunctionTool.from_defaults(add)]
CALL = '<tool_call>\n{"name": "multiply", "arguments": {"a": 6, "b": 7}}\n</tool_call>'


def test_a_tool_call_becomes_a_tool_call_block(scripted):
    llm, engine = scripted(CALL)
    response = llm.chat_with_tools(TOOLS, user_msg="What is 6 times 7?")
    blocks = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    assert [(b.tool_name, b.tool_kwargs) for b in blocks] == [("multiply", {"a": 6, "b": 7})]
    assert response.message.content == ""
    [selection] = llm.get_tool_calls_from_response(response)
    assert (selection.tool_name, selection.tool_kwargs, selection.tool_id) == ("multiply", {"a": 6, "b": 7}, blocks[0].tool_call_id)
    # the tools reached the model through the chat template's system turn
    prompt = engine.prompts[0]
    assert prompt.startswith("<|im_start|>system\n# Tools")
    assert json.dumps(TOOLS[0].metadata.to_openai_tool()["function"]) in prompt
    assert prompt.endswith("<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n")


def test_histories_from_other_integrations_render_through_the_template(scripted):
    llm, engine = scripted("42.")
    openai_call = {"id": "call_1", "type": "function", "function": {"name": "multiply", "arguments": '{"a": 6, "b": 7}'}}
    history = [
        ChatMessage(role="user", blocks=[TextBlock(text="What is 6 times 7?"), CachePoint(cache_control=CacheControl(type="ephemeral"))]),
        ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [openai_call]}),
        ChatMessage(role="tool", content="42", additional_kwargs={"tool_call_id": "call_1"}),
    ]
    assert llm.chat(history).message.content == "42."
    assert engine.prompts[0].endswith(
        "<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n" + CALL + "<|im_end|>\n"
        "<|im_start|>user\nThe tool multiply returned: 42.\nAnswer the question.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_malformed_tool_calls_never_raise(scripted):
    llm, _ = scripted('Sure. <tool_call>\n{"name": "multiply", "arguments": 6, and 7}\n</tool_call>')
    response = llm.chat_with_tools(TOOLS, user_msg="What is 6 times 7?")
    assert response.message.content == "Sure. "
    [invalid] = response.message.additional_kwargs["invalid_tool_calls"]
    assert invalid["name"] == "multiply" and invalid["error"].startswith("not valid JSON")
    assert invalid["raw"] == '\n{"name": "multiply", "arguments": 6, and 7}\n'
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="got none; 1 malformed"):
        llm.get_tool_calls_from_response(response)


def test_unknown_tools_and_unclosed_calls_are_invalid_not_errors(scripted):
    llm, _ = scripted('<tool_call>\n{"name": "divide", "arguments": {}}\n</tool_call><tool_call>\n{"name": "add"')
    response = llm.chat_with_tools(TOOLS, user_msg="?")
    errors = [call["error"] for call in response.message.additional_kwargs["invalid_tool_calls"]]
    assert errors == ["unknown tool 'divide'; the bound tools are ['add', 'multiply']",
                      "the text ended before </tool_call>"]


def test_streamed_tool_calls_appear_when_their_block_closes(scripted):
    llm, _ = scripted("Let me compute that. " + CALL)
    items = list(llm.stream_chat_with_tools(TOOLS, user_msg="What is 6 times 7?"))
    assert "".join(item.delta for item in items) == "Let me compute that. "
    assert not any("<tool" in item.delta for item in items)
    calls_per_item = [len(llm.get_tool_calls_from_response(i, error_on_no_tool_call=False)) for i in items]
    assert calls_per_item[0] == 0 and calls_per_item[-1] == 1
    assert calls_per_item == sorted(calls_per_item)
    sources = [s for item in items for s in item.additional_kwargs["token_sources"]]
    assert sources == ["slm", "llm"] * (len(sources) // 2) + ["slm"] * (len(sources) % 2)
    assert len(sources) == items[-1].raw["usage"]["completion_tokens"]


def test_a_named_tool_choice_is_forced_by_writing_the_call_opening(scripted):
    # the model only writes the arguments; its closing tag is a stop string, so it is trimmed and re-added
    llm, engine = scripted('"a": 6, "b": 7}}\n</tool_call> and more text')
    response = llm.chat_with_tools(TOOLS, user_msg="What is 6 times 7?", tool_choice="multiply")
    assert engine.prompts[0].endswith("<|im_start|>assistant\n" + tool_call_prefix("multiply"))
    assert "You must call the function multiply." in engine.prompts[0]
    [selection] = llm.get_tool_calls_from_response(response)
    assert (selection.tool_name, selection.tool_kwargs) == ("multiply", {"a": 6, "b": 7})
    assert response.message.content == ""


def test_a_required_tool_call_lets_the_model_name_the_tool(scripted):
    llm, engine = scripted('add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')
    response = llm.chat_with_tools(TOOLS, user_msg="What is 1 plus 2?", tool_required=True)
    assert engine.prompts[0].endswith(tool_call_prefix(None))
    assert [(s.tool_name, s.tool_kwargs) for s in llm.get_tool_calls_from_response(response)] == [("add", {"a": 1, "b": 2})]


def test_an_unknown_forced_tool_is_a_clear_error(scripted):
    llm, _ = scripted()
    with pytest.raises(InvalidSettingError, match="tool_choice 'divide' names no bound tool"):
        llm.chat_with_tools(TOOLS, user_msg="?", tool_choice="divide")


def test_only_the_first_call_is_kept_unless_parallel_calls_are_allowed(scripted):
    two = CALL + '\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    llm, _ = scripted(two, two)
    single = llm.chat_with_tools(TOOLS, user_msg="?")
    both = llm.chat_with_tools(TOOLS, user_msg="?", allow_parallel_tool_calls=True)
    assert [s.tool_name for s in llm.get_tool_calls_from_response(single)] == ["multiply"]
    assert [s.tool_name for s in llm.get_tool_calls_from_response(both)] == ["multiply", "add"]


def test_structured_predict_goes_through_a_forced_tool_call(scripted):
    class City(BaseModel):
        """A city and its country."""

        name: str
        country: str

    llm, engine = scripted('"name": "Paris", "country": "France"}}\n</tool_call>')
    city = llm.structured_predict(City, PromptTemplate("Which city is the capital of {country}?"), country="France")
    assert city == City(name="Paris", country="France")
    assert engine.prompts[0].endswith(tool_call_prefix("City"))


def test_thinking_becomes_a_thinking_block_and_thinking_deltas(scripted):
    answer = "<think>6 times 7 is 42.</think>The answer is 42."
    llm, _ = scripted(answer, answer, answer)
    response = llm.chat([ChatMessage(role="user", content="6*7?")])
    assert [type(b) for b in response.message.blocks] == [ThinkingBlock, TextBlock]
    assert response.message.blocks[0].content == "6 times 7 is 42."
    assert response.message.content == "The answer is 42."
    items = list(llm.stream_chat([ChatMessage(role="user", content="6*7?")]))
    assert "".join(i.additional_kwargs.get("thinking_delta", "") for i in items) == "6 times 7 is 42."
    assert "".join(i.delta for i in items) == "The answer is 42."
    llm.separate_thinking = False
    assert llm.chat([ChatMessage(role="user", content="6*7?")]).message.content == answer


async def test_function_agent_calls_a_tool_and_answers_from_its_result(scripted):
    llm, engine = scripted(CALL, "6 times 7 is 42.")
    agent = FunctionAgent(tools=TOOLS, llm=llm, system_prompt="You are a calculator.")
    handler = agent.run("What is 6 times 7?")
    deltas = [event.delta async for event in handler.stream_events() if isinstance(event, AgentStream)]
    result = await handler
    assert str(result) == "6 times 7 is 42."
    assert [c.tool_name for c in result.tool_calls] == ["multiply"]
    assert result.tool_calls[0].tool_output.content == "42"
    assert "".join(deltas) == "6 times 7 is 42."
    # the second turn shows the model its own call and the tool's result through the chat template
    second = engine.prompts[1]
    assert "<|im_start|>assistant\n" + CALL + "<|im_end|>" in second
    assert "<|im_start|>user\nThe tool multiply returned: 42.\nAnswer the question.<|im_end|>" in second


async def test_react_agent_runs_on_plain_streamed_text(scripted):
    llm, _ = scripted(
        'Thought: I need a tool.\nAction: multiply\nAction Input: {"a": 6, "b": 7}',
        "Thought: I can answer without using any more tools.\nAnswer: 42",
    )
    result = await ReActAgent(tools=TOOLS, llm=llm).run("What is 6 times 7?")
    assert str(result) == "42"
    assert [(c.tool_name, c.tool_kwargs, c.tool_output.content) for c in result.tool_calls] == [
        ("multiply", {"a": 6, "b": 7}, "42")
    ]
