"""LangChain 1.x and LangGraph agents on ChatRStitch, written the way those frameworks' docs write them.

``langchain.agents.create_agent`` with tools, with tools and a ``response_format`` (LangChain picks
its provider strategy because the profile says ``structured_output``: the format is bound next to
the tools), and LangGraph's ``StateGraph`` + ``ToolNode`` + ``tools_condition`` loop. The 135M
default pair does not choose tools on its own, so the model is built with
``tool_policy="until_result"`` (a call is required until a tool result is in, then the answer).

The fast tests script the model's text (``scripted_chat``: real tokenizer, template and parsing,
``constrained=False``) to check the mechanics; the real-pair runs are marked slow.
"""

from __future__ import annotations

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from pydantic import BaseModel

from rstitch_integrations.tool_calls import tool_call_prefix


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product."""
    return a * b


class Product(BaseModel):
    """The product of two numbers."""

    product: int


QUESTION = {"messages": [{"role": "user", "content": "What is 6 times 7?"}]}
ARGUMENTS = '"a": 6, "b": 7}}\n</tool_call>'  # what follows a forced call's opening


def calls_and_answer(messages: list) -> tuple[list, str]:
    calls = [(c["name"], c["args"]) for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    return calls, messages[-1].content


# ----------------------------------------------------------------------------- mechanics (scripted text)


def test_create_agent_calls_the_tool_then_answers_and_stops(scripted_chat) -> None:
    chat, engine = scripted_chat([ARGUMENTS, "6 times 7 is 42."], tool_policy="until_result")
    result = create_agent(chat, tools=[multiply]).invoke(QUESTION)
    assert calls_and_answer(result["messages"]) == ([("multiply", {"a": 6, "b": 7})], "6 times 7 is 42.")
    assert [m.content for m in result["messages"] if isinstance(m, ToolMessage)] == ["42"]
    assert engine.prompt_text(0).endswith(tool_call_prefix("multiply"))  # the first turn must call
    assert "# Tools" not in engine.prompt_text(1)  # the result is in: the answer, no tools
    assert len(engine.prompts) == 2


def test_create_agent_with_a_response_format_ends_with_a_parsed_structured_response(scripted_chat) -> None:
    chat, engine = scripted_chat([ARGUMENTS, '"product": 42}'], tool_policy="until_result")
    result = create_agent(chat, tools=[multiply], response_format=Product).invoke(QUESTION)
    assert result["structured_response"] == Product(product=42)
    assert calls_and_answer(result["messages"]) == ([("multiply", {"a": 6, "b": 7})], '{"product": 42}')
    assert "matches this JSON schema" in engine.prompt_text(1)  # the format was bound, not dropped


def test_without_a_policy_the_model_chooses_and_a_repeated_call_stops_the_loop(scripted_chat) -> None:
    call = '<tool_call>\n{"name": "multiply", "arguments": {"a": 6, "b": 7}}\n</tool_call>'
    chat, engine = scripted_chat([call, call])  # a small model copies its last call
    result = create_agent(chat, tools=[multiply]).invoke(QUESTION)
    last = result["messages"][-1]
    assert last.tool_calls == [] and "repeats the call multiply" in last.invalid_tool_calls[0]["error"]
    assert len(engine.prompts) == 2  # stopped, not run to the recursion limit


# ----------------------------------------------------------------------------- the real default pair


@pytest.mark.real_model
def test_the_tool_policy_calls_until_a_result_then_answers_on_the_default_pair(real_engine, adapter) -> None:
    """One agent turn by hand, local and remote (the policy travels to the server): a forced call first; with its
    result in, an answer without tools; a model bound with the default policy answers in prose."""
    model = adapter.chat(max_tokens=48, tool_policy="until_result").bind_tools([multiply])
    messages: list = [{"role": "user", "content": "What is 6 times 7?"}]
    first = model.invoke(messages)
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [("multiply", {"a": 6, "b": 7})]
    messages += [first, multiply.invoke(first.tool_calls[0])]
    answer = model.invoke(messages)
    assert answer.tool_calls == [] and answer.invalid_tool_calls == [] and answer.content.strip()
    free = adapter.chat(max_tokens=8).bind_tools([multiply]).invoke(messages[:1])
    assert free.tool_calls == []  # tool_policy='auto': the 135M model does not choose the tool


@pytest.mark.slow
@pytest.mark.real_model
def test_create_agent_on_the_default_pair(real_engine, adapter) -> None:
    model = adapter.chat(max_tokens=48, tool_policy="until_result")
    result = create_agent(model, tools=[multiply], system_prompt="Use the tools to answer.").invoke(QUESTION)
    calls, answer = calls_and_answer(result["messages"])
    assert calls == [("multiply", {"a": 6, "b": 7})]
    assert "42" in answer


@pytest.mark.slow
@pytest.mark.real_model
def test_create_agent_with_response_format_on_the_default_pair(real_engine, adapter) -> None:
    model = adapter.chat(max_tokens=48, tool_policy="until_result")
    agent = create_agent(model, tools=[multiply], response_format=Product, system_prompt="Use the tools to answer.")
    result = agent.invoke(QUESTION)
    assert [c for c, _ in calls_and_answer(result["messages"])[0]] == ["multiply"]
    assert isinstance(result["structured_response"], Product)  # parsed; the 135M model's number may be wrong


@pytest.mark.slow
@pytest.mark.real_model
def test_langgraph_tool_loop_on_the_default_pair(real_engine, adapter) -> None:
    model = adapter.chat(max_tokens=48, tool_policy="until_result").bind_tools([multiply])

    def call_model(state: MessagesState) -> dict:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", call_model)
    graph.add_node("tools", ToolNode([multiply]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    result = graph.compile().invoke(QUESTION, {"recursion_limit": 8})
    calls, answer = calls_and_answer(result["messages"])
    assert calls == [("multiply", {"a": 6, "b": 7})] and "42" in answer
    assert isinstance(result["messages"][-1], AIMessage) and not result["messages"][-1].tool_calls  # ended on its own
