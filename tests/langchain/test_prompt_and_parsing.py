"""prompt, answer_parsing and tool_calls: messages/tools to template input, model text to content, reasoning
and tool calls.

No model and no framework here: these are the helpers both adapters share.
"""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rstitch_integrations.answer_parsing import AnswerParser, TagSplitter, ThinkSplitter, ToolCallStream, parse_output
from rstitch_integrations.core import calls_since_user
from rstitch_integrations.prompt import TemplateSupport, normalise_tool_schema, to_template_prompt
from rstitch_integrations.tool_calls import InvalidToolCall, ToolCall, call_key, format_tool_call, tool_call_prefix

ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers.",
                                        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}


def counter_ids():
    numbers = itertools.count()
    return lambda: f"id{next(numbers)}"


# ----------------------------------------------------------------------------- streaming splitters


def split_at(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


def stream_think(pieces: list[str]) -> tuple[str, str]:
    splitter = ThinkSplitter()
    results = [splitter.feed(piece) for piece in pieces] + [splitter.finish()]
    return "".join(c for c, _ in results), "".join(r for _, r in results)


@given(
    st.lists(st.sampled_from(["<think>", "</think>", "<", "think", ">", "a", " b", "</", "\n"]), max_size=20),
    st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_think_splitter_is_independent_of_how_text_is_cut(parts: list[str], cuts: list[int]) -> None:
    text = "".join(parts)
    assert stream_think(split_at(text, cuts)) == stream_think([text])


@given(
    st.lists(st.sampled_from(["<tool_call>", "</tool_call>", "<tool", "_call>", '{"name": "add"}', "x", "</"]),
             max_size=20),
    st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_tool_call_stream_is_independent_of_how_text_is_cut(parts: list[str], cuts: list[int]) -> None:
    text = "".join(parts)

    def run(pieces: list[str]) -> tuple[str, list]:
        stream = ToolCallStream(new_id=counter_ids())
        steps = [stream.feed(piece) for piece in pieces] + [stream.finish()]
        return "".join(s.content for s in steps), [c for s in steps for c in s.calls]

    assert run(split_at(text, cuts)) == run([text])


def test_think_splitter_holds_back_only_what_could_be_a_tag() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("Hi <th") == ("Hi ", "")
    assert splitter.feed("ink>plan") == ("", "plan")
    assert splitter.inside
    assert splitter.feed(" </thinking") == ("", " </thinking")  # not the tag: '</think' must be followed by '>'
    assert splitter.feed("</thi") == ("", "")  # could still be the tag: held back
    assert splitter.feed("nk> done") == (" done", "")
    assert not splitter.inside
    assert splitter.feed(" 2 <") == (" 2 ", "")
    assert splitter.finish() == ("<", "")


def test_think_splitter_can_start_inside_a_reasoning_span() -> None:
    splitter = ThinkSplitter(start_inside=True)
    assert splitter.feed("step 1</think>Answer") == ("Answer", "step 1")


def test_tag_splitter_reports_opens_and_closes() -> None:
    tags = TagSplitter("[", "]")
    assert tags.feed("a[b]c[") == [("outside", "a"), ("open", ""), ("inside", "b"), ("close", ""),
                                   ("outside", "c"), ("open", "")]
    assert tags.finish() == []


# ----------------------------------------------------------------------------- parsing answers


def test_parse_output_splits_reasoning_content_and_calls() -> None:
    text = ('<think>need add</think>Sure. <tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>'
            '<tool_call>{"name": "add", "arguments": "{\\"a\\": 2}"}</tool_call> ok')
    parsed = parse_output(text, tool_names=["add"], new_id=counter_ids())
    assert parsed.content == "Sure.  ok"
    assert parsed.reasoning == "need add"
    assert parsed.tool_calls == [ToolCall("id0", "add", {"a": 1}), ToolCall("id1", "add", {"a": 2})]
    assert parsed.invalid_tool_calls == []


@pytest.mark.parametrize(
    ("block", "name", "error_start"),
    [
        ('{"name": "add", "arguments": {"a": 1,}}', "add", "not valid JSON"),
        ('["add", 1]', None, "a tool call must be a JSON object"),
        ('{"arguments": {}}', None, "the tool call has no 'name'"),
        ('{"name": "add", "arguments": [1]}', "add", "'arguments' must be a JSON object"),
        ('{"name": "add", "arguments": "{oops"}', "add", "'arguments' is a string that is not JSON"),
        ('{"name": "mul", "arguments": {}}', "mul", "unknown tool 'mul'"),
    ],
)
def test_malformed_tool_calls_become_invalid_calls_with_reasons(block: str, name: str | None, error_start: str) -> None:
    parsed = parse_output(f"<tool_call>{block}</tool_call>", tool_names=["add"], new_id=counter_ids())
    assert parsed.tool_calls == []
    [invalid] = parsed.invalid_tool_calls
    assert (invalid.id, invalid.name, invalid.raw, invalid.closed) == ("id0", name, block, True)
    assert invalid.error.startswith(error_start)
    assert invalid.text == f"<tool_call>{block}</tool_call>"


def test_an_unclosed_tool_call_is_invalid_and_keeps_its_text() -> None:
    parsed = parse_output('Calling <tool_call>{"name": "add", "argu', new_id=counter_ids())
    assert parsed.content == "Calling "
    assert parsed.invalid_tool_calls == [
        InvalidToolCall("id0", "add", '{"name": "add", "argu', "the text ended before </tool_call>", closed=False)
    ]
    assert parsed.invalid_tool_calls[0].text == '<tool_call>{"name": "add", "argu'


def test_parsing_can_be_turned_off() -> None:
    text = "<think>r</think><tool_call>{}</tool_call>"
    assert parse_output(text, split_reasoning=False, parse_tools=False).content == text
    assert parse_output(text, parse_tools=False).content == "<tool_call>{}</tool_call>"


def test_the_forced_prefix_plus_a_completion_parses_as_that_call() -> None:
    text = tool_call_prefix("add") + '"a": 3}}\n</tool_call>'
    assert parse_output(text, tool_names=["add"], new_id=counter_ids()).tool_calls == [ToolCall("id0", "add", {"a": 3})]
    named = tool_call_prefix() + 'add", "arguments": {}}</tool_call>'
    assert parse_output(named, new_id=counter_ids()).tool_calls == [ToolCall("id0", "add", {})]


# ----------------------------------------------------------------------------- messages in


SMOL_LIKE = TemplateSupport(tools=False, tool_calls=False)
NATIVE = TemplateSupport(tools=True, tool_calls=True)


def test_template_support_is_read_from_the_template_source() -> None:
    assert TemplateSupport.of(None) == SMOL_LIKE
    assert TemplateSupport.of("{% for m in messages %}{{ m['content'] }}{% endfor %}") == SMOL_LIKE
    assert TemplateSupport.of("{% if tools %}{{ tools }}{% endif %}{{ m.tool_calls }}") == NATIVE


CONVERSATION = [
    {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "1+2?"}]},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "3"},
    {"role": "assistant", "content": "It is 3."},
]


def test_tools_and_calls_are_written_as_text_for_a_template_without_tool_support() -> None:
    prompt = to_template_prompt(CONVERSATION, [ADD], support=SMOL_LIKE)
    assert prompt.tools is None
    system, user, call, result, answer = prompt.messages
    assert system["role"] == "system"
    assert json.dumps(ADD["function"]) in system["content"]
    assert "<tool_call>" in system["content"]
    assert user == {"role": "user", "content": "What is 1+2?"}
    assert call == {"role": "assistant", "content": format_tool_call("add", {"a": 1})}
    # no tool role the model knows: the result is a user message naming the tool (by the call's id)
    assert result == {"role": "user", "content": "The tool add returned: 3.\nAnswer the question."}
    assert answer == {"role": "assistant", "content": "It is 3."}


def test_a_run_of_tool_results_is_one_user_message_for_a_template_without_tool_support() -> None:
    calls = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "function": {"name": "add", "arguments": {"a": 1}}},
        {"id": "c2", "function": {"name": "capital_of", "arguments": {"country": "France"}}}]}
    results = [{"role": "tool", "tool_call_id": "c1", "content": "3"},
               {"role": "tool", "tool_call_id": "c2", "content": "Paris"},
               {"role": "tool", "tool_call_id": "unknown", "name": "lookup", "content": "none"}]
    prompt = to_template_prompt([{"role": "user", "content": "?"}, calls, *results], support=SMOL_LIKE)
    assert prompt.messages[-1] == {"role": "user", "content": (
        "The tool add returned: 3.\nThe tool capital_of returned: Paris.\nThe tool lookup returned: none.\n"
        "Answer the question.")}
    assert len(prompt.messages) == 3
    native = to_template_prompt([{"role": "user", "content": "?"}, calls, *results], support=NATIVE)
    assert [m["role"] for m in native.messages] == ["user", "assistant", "tool", "tool", "tool"]  # the template's own


def test_tools_and_calls_go_to_a_template_that_renders_them() -> None:
    prompt = to_template_prompt([{"role": "system", "content": "Be brief."}, *CONVERSATION], [ADD], support=NATIVE)
    assert prompt.tools == [ADD]
    assert prompt.messages[0] == {"role": "system", "content": "Be brief."}
    assert prompt.messages[2]["tool_calls"] == [
        {"type": "function", "id": "c1", "function": {"name": "add", "arguments": {"a": 1}}}
    ]


def test_tool_choice_adds_an_instruction_and_none_drops_the_tools() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    forced = to_template_prompt(messages, [ADD], support=SMOL_LIKE, tool_choice="add")
    assert forced.messages[0]["content"].startswith("Be brief.\n\n# Tools")
    assert forced.messages[0]["content"].endswith("You must call the function add.")
    assert to_template_prompt(messages, [ADD], support=SMOL_LIKE, tool_choice="none").messages == messages
    with pytest.raises(ValueError, match="tool_choice 'mul' is not one of the bound tools"):
        to_template_prompt(messages, [ADD], support=SMOL_LIKE, tool_choice="mul")


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"role": "robot", "content": "x"}, "message 0 has role 'robot'"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, "'image_url' content part"),
        ({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "add", "arguments": "{"}}]},
         "arguments that are not JSON"),
    ],
)
def test_bad_messages_raise_clear_errors(message: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        to_template_prompt([message])


def test_a_bare_function_schema_is_wrapped_and_a_nameless_one_rejected() -> None:
    assert normalise_tool_schema({"name": "f"}) == {
        "type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}
    }
    with pytest.raises(ValueError, match="needs a function name"):
        normalise_tool_schema({"type": "function", "function": {"description": "x"}})


def test_a_call_repeating_an_earlier_one_with_the_same_arguments_is_invalid() -> None:
    earlier = frozenset({call_key("add", {"a": 1, "b": 2})})
    parser = AnswerParser(False, ["add"], earlier)
    text = format_tool_call("add", {"b": 2, "a": 1}) + format_tool_call("add", {"a": 1, "b": 3})
    step = parser.feed(text).then(parser.finish())
    repeated, fresh = step.calls
    assert isinstance(repeated, InvalidToolCall) and repeated.name == "add"
    assert repeated.error.startswith('repeats the call add({"b": 2, "a": 1})')  # key order does not hide a repeat
    assert isinstance(fresh, ToolCall) and fresh.arguments == {"a": 1, "b": 3}
    assert calls_since_user([{"role": "user", "content": "?"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "function": {"name": "add", "arguments": '{"b": 2, "a": 1}'}}]}]) == earlier
    assert calls_since_user([{"role": "assistant", "tool_calls": [{"function": {"name": "add", "arguments": {}}}]},
                             {"role": "user", "content": "?"}]) == frozenset()  # before the question: not a repeat
