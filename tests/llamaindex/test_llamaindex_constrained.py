"""Grammar-constrained tool calls and structured output through RStitchLLM on the real default pair.

``constrained=True`` (the default) decodes every call under the tool-call grammar
(``rstitch_integrations.constrained``): the answers below are what SmolLM2-135M and its draft write,
not scripts. ``constrained=False`` is free generation, parsed after.
"""

from __future__ import annotations

import json

import pytest
from helpers import AGENT_CALLS, AGENT_TASK, Capital, capital_of, multiply
from llama_index.core.agent.workflow import AgentStream, FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool

from rstitch_engine import InvalidSettingError
from rstitch_integrations.llamaindex import RStitchLLM

pytestmark = pytest.mark.real_model

TOOLS = [FunctionTool.from_defaults(multiply), FunctionTool.from_defaults(capital_of)]


@pytest.fixture
def llm(real_engine_float32, adapter) -> RStitchLLM:
    """Local, then remote (``RStitchLLM(base_url=...)`` on a live server on the same float32 engine)."""
    return adapter.llm(engine=real_engine_float32, max_tokens=96)


@pytest.mark.slow
async def test_a_function_agent_solves_a_two_tool_task_on_the_default_pair(llm):
    """First turn: a required call, in parallel (one call per tool at most); second turn: the answer in prose."""
    agent = FunctionAgent(tools=TOOLS, llm=llm, system_prompt="You answer with the tools.",
                          initial_tool_choice="required")
    handler = agent.run(AGENT_TASK)
    streamed = [event async for event in handler.stream_events() if isinstance(event, AgentStream)]
    result = await handler
    assert sorted((c.tool_name, c.tool_kwargs) for c in result.tool_calls) == AGENT_CALLS
    assert sorted(c.tool_output.content for c in result.tool_calls) == ["42", "Paris"]
    assert str(result).strip()  # the second turn answers from the tools' results
    assert streamed  # the agent streamed the answer as it was written


def test_chat_with_tools_writes_a_valid_call_to_the_named_tool(llm):
    response = llm.chat_with_tools(TOOLS, user_msg="What is 12 times 3?", tool_choice="multiply")
    calls = llm.get_tool_calls_from_response(response)
    assert [(c.tool_name, c.tool_kwargs) for c in calls] == [("multiply", {"a": 12, "b": 3})]
    assert response.additional_kwargs["token_sources"]  # who wrote each token of the call


def test_structured_predict_fills_the_schema(llm):
    capital = llm.structured_predict(Capital, PromptTemplate("What is the capital of Japan?"))
    assert capital == Capital(country="Japan", city="Tokyo")


def test_streamed_tool_calls_keep_each_token_s_model(llm):
    items = list(llm.stream_chat_with_tools(TOOLS, user_msg="What is the capital of Italy?", tool_choice="capital_of"))
    sources = [s for item in items for s in item.additional_kwargs["token_sources"]]
    assert set(sources) <= {"slm", "llm"} and len(sources) == items[-1].additional_kwargs["stitch"]["output_tokens"]
    blocks = [b for b in items[-1].message.blocks if isinstance(b, ToolCallBlock)]
    assert [(b.tool_name, b.tool_kwargs) for b in blocks] == [("capital_of", {"country": "Italy"})]


def test_free_generation_still_reports_malformed_calls(llm, adapter, real_engine_float32):
    """constrained=False with the SLM alone: it writes digits without end, and the unclosed call is an
    invalid call (reported, never raised). The same request constrained and stitched is a valid call.
    Remotely the SLM alone is threshold=1.0 (remote mode takes quality or threshold), the same decoding."""
    free = adapter.llm(engine=real_engine_float32, constrained=False, max_tokens=24,
                       **({"threshold": 1.0} if adapter.remote else {"router": "slm"}))
    response = free.chat_with_tools(TOOLS, user_msg="What is 6 times 7?", tool_choice="multiply")
    assert free.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    invalid = response.message.additional_kwargs["invalid_tool_calls"]
    assert len(invalid) == 1 and invalid[0]["name"] == "multiply"
    response = llm.chat_with_tools(TOOLS, user_msg="What is 6 times 7?", tool_choice="multiply")
    assert "invalid_tool_calls" not in response.message.additional_kwargs
    assert [(c.tool_name, c.tool_kwargs) for c in llm.get_tool_calls_from_response(response)] == [
        ("multiply", {"a": 6, "b": 7})
    ]


def test_an_unknown_tool_choice_is_a_clear_error_and_the_llm_stays_usable(llm):
    with pytest.raises(InvalidSettingError, match="tool_choice 'divide' names no bound tool"):
        llm.chat_with_tools(TOOLS, user_msg="?", tool_choice="divide")
    assert llm.chat([ChatMessage(role="user", content="Hi")], max_tokens=4).message.content


def test_a_schema_the_grammar_cannot_compile_is_a_clear_error(llm):
    bad = FunctionTool.from_defaults(multiply)
    schema = json.loads(json.dumps(bad.metadata.to_openai_tool()))
    schema["function"]["parameters"] = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    with pytest.raises(InvalidSettingError, match="grammar|schema"):
        llm.chat([ChatMessage(role="user", content="?")], tools=[schema], tool_choice="multiply")
