"""Grammar-constrained tool calls and structured output through ChatRStitch on the real default pair.

``constrained=True`` (the default) decodes calls and JSON answers under a grammar
(``rstitch_integrations.constrained``); every answer below is what SmolLM2-135M and its draft write.
``constrained=False`` is free generation: what the model writes is parsed after, and a malformed
call becomes an ``invalid_tool_call``.
"""

from __future__ import annotations

import json
import re

import pytest
from live import remote_is_slow
from helpers import AGENT_CALLS, AGENT_TASK, Capital, capital_of, multiply
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from rstitch_engine import InvalidSettingError
from rstitch_integrations.langchain import ChatRStitch

pytestmark = pytest.mark.real_model

TOOLS = [tool(multiply), tool(capital_of)]
BY_NAME = {t.name: t for t in TOOLS}


@pytest.fixture
def chat(real_engine_float32, adapter) -> ChatRStitch:
    """Local, then remote (``ChatRStitch(base_url=...)`` on a live server on the same float32 engine)."""
    return adapter.chat(engine=real_engine_float32, max_tokens=96)


@pytest.mark.slow
def test_a_tool_calling_agent_loop_solves_a_two_tool_task_on_the_default_pair(chat):
    """The usual loop: calls run, results go back as ToolMessages, until an answer without calls."""
    messages: list[BaseMessage] = [SystemMessage("You answer with the tools."), HumanMessage(AGENT_TASK)]
    made: list[tuple[str, dict]] = []
    for step in range(3):
        model = chat.bind_tools(TOOLS, tool_choice="any" if step == 0 else "auto", parallel_tool_calls=True)
        reply = model.invoke(messages)
        assert reply.invalid_tool_calls == []
        messages.append(reply)
        if not reply.tool_calls:
            break
        for call in reply.tool_calls:
            made.append((call["name"], call["args"]))
            messages.append(BY_NAME[call["name"]].invoke(call))
    assert sorted(made) == AGENT_CALLS
    assert [m.content for m in messages if isinstance(m, ToolMessage)] == ["42", "Paris"]
    assert isinstance(messages[-1], AIMessage) and messages[-1].content.strip() and not messages[-1].tool_calls


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_structured_output_fills_the_schema_by_every_method(chat, method):
    structured = chat.with_structured_output(Capital, method=method)
    assert structured.invoke("What is the capital of Japan?") == Capital(country="Japan", city="Tokyo")


@remote_is_slow()
def test_json_mode_without_a_schema_is_one_json_object(chat):
    reply = chat.bind(response_format={"type": "json_object"}).invoke("Describe Paris in JSON.", max_tokens=48)
    if reply.response_metadata["finish_reason"] == "stop":
        assert isinstance(json.loads(reply.content), dict)
    else:  # cut by the budget: still a prefix the grammar allowed, so it starts as an object
        assert reply.content.startswith("{")


def test_a_regex_answer_matches_the_pattern_whole(chat):
    """The grammar decides the form only: which city the 135M model picks is its own skill."""
    reply = chat.bind(response_format={"type": "regex", "pattern": "The answer is (Paris|London|Rome)[.]"}).invoke(
        "What is the capital of France?")
    assert re.fullmatch("The answer is (Paris|London|Rome)[.]", reply.content)
    assert reply.response_metadata["finish_reason"] == "stop"


def test_streamed_tool_call_chunks_keep_each_token_s_model(chat):
    model = chat.bind_tools(TOOLS, tool_choice="capital_of")
    chunks = list(model.stream("What is the capital of Italy?"))
    sources = [s for chunk in chunks for s in chunk.response_metadata["token_sources"]]
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert set(sources) <= {"slm", "llm"} and len(sources) == total.response_metadata["stitch"]["output_tokens"]
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [("capital_of", {"country": "Italy"})]


@remote_is_slow()
def test_free_generation_turns_a_malformed_call_into_an_invalid_tool_call(chat, adapter, real_engine_float32):
    """constrained=False with the SLM alone: digits without end, so the call never closes; reported, not raised.
    The same request constrained (and stitched) is a valid call. Remotely, the SLM alone is threshold=1.0 (remote
    mode takes quality or threshold; router='slm' is the server's choice), the same decoding."""
    free = adapter.chat(engine=real_engine_float32, constrained=False, max_tokens=24,
                        **({"threshold": 1.0} if adapter.remote else {"router": "slm"}))
    reply = free.bind_tools(TOOLS, tool_choice="multiply").invoke("What is 6 times 7?")
    assert reply.tool_calls == [] and len(reply.invalid_tool_calls) == 1
    assert reply.invalid_tool_calls[0]["name"] == "multiply"
    reply = chat.bind_tools(TOOLS, tool_choice="multiply").invoke("What is 6 times 7?")
    assert reply.invalid_tool_calls == []
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("multiply", {"a": 6, "b": 7})]
    per_call = chat.bind_tools(TOOLS, tool_choice="multiply").bind(constrained=False)
    assert per_call.invoke("What is 6 times 7?", max_tokens=4).invalid_tool_calls  # the call option wins


def test_bad_constraints_are_clear_errors_and_the_model_stays_usable(chat):
    with pytest.raises(InvalidSettingError, match="tool_choice 'divide' names no bound tool"):
        chat.bind_tools(TOOLS, tool_choice="divide")
    unusable = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}
    with pytest.raises(InvalidSettingError, match="grammar|schema"):
        chat.bind_tools([unusable], tool_choice="f").invoke("?")
    with pytest.raises(InvalidSettingError, match="response_format"):
        chat.bind(response_format={"type": "xml"}).invoke("?")
    assert chat.invoke("Hi", max_tokens=4).content
