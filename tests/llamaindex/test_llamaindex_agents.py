"""LlamaIndex agents on RStitchLLM, written the way LlamaIndex's docs write them: ``FunctionAgent`` and
``AgentWorkflow.from_tools_or_functions`` with plain Python functions as tools.

The 135M default pair does not choose tools on its own, so the LLM is built with
``tool_policy="until_result"`` (a call is required until a tool result is in, then the answer).
The fast tests script the model's text (real tokenizer, template and parsing, ``constrained=False``);
the real-pair runs are marked slow.
"""

from __future__ import annotations

import pytest
from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent, ReActAgent

from rstitch_integrations.constrained import REACT_ACT, REACT_ANSWER, react_shape
from rstitch_integrations.tool_calls import tool_call_prefix

pytestmark = pytest.mark.real_model


def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product."""
    return a * b


ARGUMENTS = '"a": 6, "b": 7}}\n</tool_call>'  # what follows a forced call's opening
CALL = '<tool_call>\n{"name": "multiply", "arguments": {"a": 6, "b": 7}}\n</tool_call>'


async def test_function_agent_with_the_policy_calls_then_answers(scripted) -> None:
    llm, engine = scripted(ARGUMENTS, "6 times 7 is 42.", tool_policy="until_result")
    result = await FunctionAgent(tools=[multiply], llm=llm, system_prompt="You are a helpful assistant.").run(
        "What is 6 times 7?")
    assert str(result) == "6 times 7 is 42."
    assert [(c.tool_name, c.tool_kwargs, c.tool_output.content) for c in result.tool_calls] == [
        ("multiply", {"a": 6, "b": 7}, "42")]
    assert engine.prompts[0].endswith(tool_call_prefix("multiply"))  # the first turn must call
    assert len(engine.prompts) == 2


async def test_a_repeated_call_ends_the_function_agent_instead_of_its_iteration_limit(scripted) -> None:
    # LlamaIndex's docs: initial_tool_choice forces the first call; the model then copies it
    llm, engine = scripted(ARGUMENTS, CALL, CALL)  # the forced first turn, then the copy
    agent = FunctionAgent(tools=[multiply], llm=llm, initial_tool_choice="multiply")
    result = await agent.run("What is 6 times 7? Use the multiply tool.")
    assert [c.tool_name for c in result.tool_calls] == ["multiply"]  # run once, not until "Max iterations"
    assert "repeats the call multiply" in result.response.additional_kwargs["invalid_tool_calls"][0]["error"]
    assert len(engine.prompts) == 2


@pytest.mark.slow
async def test_function_agent_on_the_default_pair(real_engine, adapter) -> None:
    llm = adapter.llm(max_tokens=48, tool_policy="until_result")
    agent = FunctionAgent(tools=[multiply], llm=llm, system_prompt="You are a helpful assistant.")
    result = await agent.run("What is 6 times 7?")
    assert [(c.tool_name, c.tool_kwargs) for c in result.tool_calls] == [("multiply", {"a": 6, "b": 7})]
    assert "42" in str(result)


@pytest.mark.slow
async def test_agent_workflow_from_functions_on_the_default_pair(real_engine, adapter) -> None:
    llm = adapter.llm(max_tokens=48, tool_policy="until_result")
    workflow = AgentWorkflow.from_tools_or_functions([multiply], llm=llm, system_prompt="You are a helpful assistant.")
    result = await workflow.run(user_msg="What is 6 times 7?")
    assert [(c.tool_name, c.tool_kwargs) for c in result.tool_calls] == [("multiply", {"a": 6, "b": 7})]
    assert "42" in str(result)


async def test_react_agent_with_the_policy_acts_then_answers(scripted) -> None:
    # ReAct binds no tools; the policy holds the reply to the protocol: an action, then (after the
    # observation) an answer. The openings are the model's; it writes the tool, the input and the answer.
    llm, engine = scripted('multiply\nAction Input: {"a": 6, "b": 7}', "6 times 7 is 42.", tool_policy="until_result")
    result = await ReActAgent(tools=[multiply], llm=llm).run("What is 6 times 7?")
    assert [(c.tool_name, c.tool_kwargs, c.tool_output.content) for c in result.tool_calls] == [
        ("multiply", {"a": 6, "b": 7}, "42")]
    assert str(result) == "6 times 7 is 42."
    assert engine.prompts[0].endswith(REACT_ACT) and engine.prompts[1].endswith(REACT_ANSWER)


def test_the_react_action_grammar_allows_listed_tools_with_valid_input() -> None:
    from llama_index.core.agent.react.formatter import ReActChatFormatter
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.core.tools import FunctionTool

    from rstitch_integrations.llamaindex import _message_dict

    messages = ReActChatFormatter.from_defaults().format([FunctionTool.from_defaults(multiply)],
                                                         [ChatMessage(role="user", content="6*7?")])
    shape = react_shape([_message_dict(m) for m in messages], constrained=True)
    assert shape is not None and shape.prefix == REACT_ACT
    source = shape.grammar.source
    assert '"multiply\\nAction Input: "' in source and '"a"' in source and '"integer"' in source
    assert react_shape([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "?"}], True) is None


@pytest.mark.slow
async def test_react_agent_on_the_default_pair(real_engine, adapter) -> None:
    llm = adapter.llm(max_tokens=48, tool_policy="until_result")
    result = await ReActAgent(tools=[multiply], llm=llm).run("What is 6 times 7?")
    assert [(c.tool_name, c.tool_kwargs) for c in result.tool_calls] == [("multiply", {"a": 6, "b": 7})]
    assert str(result).strip()
