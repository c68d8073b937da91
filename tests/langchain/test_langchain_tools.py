"""Tool calling: schemas through the chat template, model text into tool calls, forced calls.

SmolLM2-135M cannot follow a tool schema, so the parsing features are shown with scripted model
text (``scripted_chat``: the real tokenizer, template and adapter, a replayed answer). The real
model is used where its skill does not matter: a forced call's prompt, and malformed output
becoming ``invalid_tool_calls`` instead of an exception.
"""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from rstitch_engine import InvalidSettingError, StitchEngine
from rstitch_integrations.callbacks import RStitchCallbackHandler
from rstitch_integrations.tool_calls import tool_call_prefix
from rstitch_integrations.langchain import ChatRStitch

pytestmark = pytest.mark.real_model  # the real tokenizer and template (loaded once per session)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'


def add_up(chunks):
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


def test_bound_tools_are_rendered_into_the_prompt(scripted_chat) -> None:
    chat, engine = scripted_chat("Hello")
    chat.bind_tools([add, shout]).invoke("hi")
    prompt = engine.prompt_text()
    assert prompt.startswith("<|im_start|>system\n# Tools")  # SmolLM2's template has no tool support: text
    for schema in ('"name": "add"', '"name": "shout"', '"description": "Add two integers."'):
        assert schema in prompt
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    tools = [{"type": "function", "function": {"name": "add"}}]
    assert chat.get_num_tokens_from_messages([HumanMessage("hi")], tools=tools) > chat.get_num_tokens_from_messages(
        [HumanMessage("hi")]
    )


def test_tool_call_text_becomes_tool_calls_in_invoke_and_stream(scripted_chat) -> None:
    chat, _ = scripted_chat(f"Let me add. {CALL}")
    model = chat.bind_tools([add])
    reply = model.invoke("What is 2 + 3?")
    assert reply.content == "Let me add. "
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("add", {"a": 2, "b": 3})]
    assert reply.invalid_tool_calls == []

    chunks = list(model.stream("What is 2 + 3?"))
    pieces = [piece for chunk in chunks for piece in chunk.tool_call_chunks]
    assert [(p["name"], json.loads(p["args"]), p["index"]) for p in pieces] == [("add", {"a": 2, "b": 3}, 0)]
    streamed = add_up(chunks)
    assert streamed.content == reply.content
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [("add", {"a": 2, "b": 3})]
    # tokens inside the block are still counted and attributed
    assert streamed.usage_metadata["output_tokens"] == len(streamed.response_metadata["token_sources"])


def test_malformed_calls_become_invalid_tool_calls_never_an_exception(scripted_chat) -> None:
    text = ('<tool_call>{"name": "add", "arguments": {"a": 2,, "b": 3}}</tool_call>'
            '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 1}}</tool_call>'
            '<tool_call>{"name": "add", "argu')
    chat, _ = scripted_chat(text)
    model = chat.bind_tools([add])
    reply = model.invoke("2+3?")
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("add", {"a": 1, "b": 1})]
    first, unclosed = reply.invalid_tool_calls
    assert (first["name"], first["args"]) == ("add", '<tool_call>{"name": "add", "arguments": {"a": 2,, "b": 3}}</tool_call>')
    assert first["error"].startswith("not valid JSON")
    assert (unclosed["args"], unclosed["error"]) == ('<tool_call>{"name": "add", "argu', "the text ended before </tool_call>")

    streamed = add_up(list(model.stream("2+3?")))  # LangChain's own chunk merging agrees
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [("add", {"a": 1, "b": 1})]
    assert [c["args"] for c in streamed.invalid_tool_calls] == [c["args"] for c in reply.invalid_tool_calls]
    reasons = streamed.response_metadata["tool_call_errors"]  # merged chunks lose the reason; it travels here
    assert [reasons[c["id"]] for c in streamed.invalid_tool_calls] == [c["error"] for c in reply.invalid_tool_calls]


def test_without_bound_tools_tool_call_text_stays_content(scripted_chat) -> None:
    chat, _ = scripted_chat(CALL)
    reply = chat.invoke("hi")
    assert reply.content == CALL and reply.tool_calls == []


def test_a_forced_call_puts_its_opening_in_the_models_mouth(scripted_chat) -> None:
    chat, engine = scripted_chat('"a": 2, "b": 3}}\n</tool_call> trailing text never produced')
    reply = chat.bind_tools([add, shout], tool_choice="add").invoke("2+3?")
    assert engine.prompt_text().endswith("<|im_start|>assistant\n" + tool_call_prefix("add"))
    assert "You must call the function add." in engine.prompt_text()
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("add", {"a": 2, "b": 3})]
    assert reply.content == ""

    chat, engine = scripted_chat('shout", "arguments": {"text": "hi"}}</tool_call>')
    reply = chat.bind_tools([add, shout], tool_choice="any").invoke("Shout hi")
    assert engine.prompt_text().endswith(tool_call_prefix())  # 'any': the model names the tool
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("shout", {"text": "hi"})]


def test_a_forced_call_cut_at_its_closing_tag_is_complete(scripted_chat) -> None:
    # The closing tag is a stop string of a forced call: the engine trims it, the adapter restores it.
    chat, _ = scripted_chat('"a": 2, "b": 3}}\n</tool_call>')
    reply = chat.bind_tools([add], tool_choice="any").invoke("2+3?")
    assert reply.tool_calls[0]["args"] == {"a": 2, "b": 3}


def test_tool_choice_none_hides_the_tools(scripted_chat) -> None:
    chat, engine = scripted_chat("Hi")
    chat.bind_tools([add], tool_choice="none").invoke("hi")
    assert "# Tools" not in engine.prompt_text()


def test_tool_choice_must_name_a_bound_tool(scripted_chat) -> None:
    chat, _ = scripted_chat("Hi")
    with pytest.raises(InvalidSettingError, match=r"names no bound tool; the tools are \['add'\]"):
        chat.bind_tools([add], tool_choice="multiply")
    with pytest.raises(InvalidSettingError, match="tool_choice must be"):
        chat.bind_tools([add], tool_choice=3)  # type: ignore[arg-type]


def test_an_agent_loop_with_scripted_answers_runs_real_tools(scripted_chat) -> None:
    chat, engine = scripted_chat([CALL, "2 + 3 = 5."])
    costs = RStitchCallbackHandler()
    model = chat.bind_tools([add]).with_config(callbacks=[costs])
    messages = [HumanMessage("What is 2 + 3?")]
    reply = model.invoke(messages)
    steps = [reply]
    while reply.tool_calls:
        messages.append(reply)
        for call in reply.tool_calls:
            messages.append(ToolMessage(str(add.invoke(call["args"])), tool_call_id=call["id"]))
        reply = model.invoke(messages)
        steps.append(reply)
    assert reply.content == "2 + 3 = 5."
    assert costs.totals.requests == len(steps) == 2  # the cost handler follows the agent's calls
    assert costs.totals.output_tokens == sum(step.response_metadata["stitch"]["output_tokens"] for step in steps)
    second_prompt = engine.prompt_text(1)
    assert CALL in second_prompt  # the earlier call is shown to the model in its own format
    assert "<|im_start|>user\nThe tool add returned: 5.\nAnswer the question.<|im_end|>" in second_prompt


def test_the_real_model_forced_to_call_writes_a_valid_call(real_engine: StitchEngine) -> None:
    """Constrained (the default): with room to finish, the call is valid; never malformed."""
    reply = ChatRStitch(max_tokens=24).bind_tools([add], tool_choice="add").invoke("What is 2 + 3?")
    assert isinstance(reply, AIMessage) and reply.invalid_tool_calls == []
    assert [c["name"] for c in reply.tool_calls] == ["add"] and set(reply.tool_calls[0]["args"]) == {"a", "b"}
