"""constrained.answer_shape: the grammar, forced opening and stops of a tools or JSON call, checked exactly.

Each grammar is run over text through llguidance with a byte-level tokenizer (one token per byte
where no merge applies), so "accepts" and "rejects" below are the grammar engine's own verdicts.
"""

from __future__ import annotations

import json

import pytest
from tiny import byte_level_tokenizer

from rstitch_engine import Grammar, InvalidSettingError
from rstitch_engine.decoding.constraints import GrammarTokenizer
from rstitch_integrations.constrained import (
    ANSWER,
    answer_shape,
    policy_tool_choice,
    json_schema_of,
    strict_schema,
    tool_choice_name,
    with_json_instruction,
)
from rstitch_integrations.prompt import normalise_tool_schema
from rstitch_integrations.tool_calls import tool_call_prefix

MULTIPLY = normalise_tool_schema({"name": "multiply", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}})
CAPITAL = normalise_tool_schema({"name": "capital_of", "parameters": {
    "type": "object", "properties": {"country": {"type": "string"}}, "required": ["country"]}})
TOOLS = [MULTIPLY, CAPITAL]


@pytest.fixture(scope="module")
def grammar_tokenizer() -> GrammarTokenizer:
    tokenizer = byte_level_tokenizer()
    return GrammarTokenizer(tokenizer, len(tokenizer), frozenset({tokenizer.eos_token_id}))


def accepts(grammar_tokenizer: GrammarTokenizer, grammar: Grammar, text: str) -> bool:
    """Whether ``text`` is a complete sentence of ``grammar`` (every token allowed, and it may end there)."""
    state = grammar_tokenizer.start(grammar)
    for token in grammar_tokenizer._tokenizer.encode(text, add_special_tokens=False):
        if not bool(state.allowed()[token]):
            return False
        state.consume(token)
    return bool(state.allowed()[next(iter(grammar_tokenizer.eos_token_ids))])


def call(name: str, arguments: dict) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def test_tool_choice_forms_of_every_framework():
    assert [tool_choice_name(c) for c in (None, "auto", False, "none", True, "any", "required")] == [
        None, None, "none", "none", "any", "any", "any"]
    assert tool_choice_name({"type": "function", "function": {"name": "f"}}) == "f"
    assert tool_choice_name({"name": "f"}) == "f" and tool_choice_name("f") == "f"
    with pytest.raises(InvalidSettingError, match="tool_choice must be"):
        tool_choice_name(3)


def test_auto_allows_free_text_and_only_valid_calls(grammar_tokenizer):
    shape = answer_shape(TOOLS, None, None, constrained=True)
    assert shape.prefix == "" and shape.stop == () and not shape.forced_call
    ok = ["Paris.", f"Let me compute. {call('multiply', {'a': 6, 'b': 7})}",
          f"{call('capital_of', {'country': 'Japan'})} and {call('multiply', {'a': 1, 'b': 2})}"]
    bad = [call("divide", {"a": 6, "b": 7}), call("multiply", {"a": "6", "b": 7}), call("multiply", {"a": 6}),
           call("multiply", {"a": 6, "b": 7, "c": 1}), '<tool_call>\n{"arguments": {}, "name": "multiply"}\n</tool_call>']
    assert all(accepts(grammar_tokenizer, shape.grammar, text) for text in ok)
    assert not any(accepts(grammar_tokenizer, shape.grammar, text) for text in bad)


def test_a_named_tool_is_one_call_continued_after_its_written_opening(grammar_tokenizer):
    shape = answer_shape(TOOLS, "multiply", None, constrained=True)
    assert shape.prefix == '<tool_call>\n{"name": "multiply", "arguments":'
    assert shape.stop == ("</tool_call>",) and shape.forced_call
    assert accepts(grammar_tokenizer, shape.grammar, ' {"a": 6, "b": 7}}\n</tool_call>')
    assert not accepts(grammar_tokenizer, shape.grammar, ' {"country": "France"}}\n</tool_call>')
    assert not accepts(grammar_tokenizer, shape.grammar, ' {"a": 6, "b": 7}}')  # the close is required
    assert answer_shape([MULTIPLY], "any", None, True) == shape  # 'any' with one tool names it


def test_any_picks_a_bound_tool_and_in_parallel_calls_at_most_one_per_tool(grammar_tokenizer):
    single = answer_shape(TOOLS, "any", None, constrained=True)
    assert single.prefix == '<tool_call>\n{"name": "' and single.forced_call
    first = 'capital_of", "arguments": {"country": "France"}}\n</tool_call>'
    second = '\n<tool_call>\n{"name": "multiply", "arguments": {"a": 6, "b": 7}}\n</tool_call>'
    assert accepts(grammar_tokenizer, single.grammar, first)
    assert not accepts(grammar_tokenizer, single.grammar, first + second)
    assert not accepts(grammar_tokenizer, single.grammar, 'divide", "arguments": {}}\n</tool_call>')
    parallel = answer_shape(TOOLS, "any", None, constrained=True, parallel_calls=True)
    assert parallel.prefix == single.prefix and parallel.stop == () and not parallel.forced_call
    assert accepts(grammar_tokenizer, parallel.grammar, first)
    assert accepts(grammar_tokenizer, parallel.grammar, first + second)
    assert not accepts(grammar_tokenizer, parallel.grammar, first + second + second)  # two tools: two calls


def test_free_generation_writes_the_opening_only():
    assert answer_shape(TOOLS, None, None, constrained=False).grammar is None
    named = answer_shape(TOOLS, "multiply", None, constrained=False)
    assert (named.grammar, named.prefix, named.stop) == (None, tool_call_prefix("multiply"), ("</tool_call>",))
    assert answer_shape(TOOLS, "any", None, constrained=False).prefix == tool_call_prefix(None)
    assert answer_shape([], None, {"type": "json_object"}, constrained=False).prefix == "{"


def test_json_answers_follow_their_schema(grammar_tokenizer):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    shape = answer_shape([], None, {"type": "json_schema", "schema": schema}, constrained=True)
    assert accepts(grammar_tokenizer, shape.grammar, '{"city": "Paris"}')
    assert not accepts(grammar_tokenizer, shape.grammar, '{"city": "Paris", "country": "France"}')  # closed
    assert not accepts(grammar_tokenizer, shape.grammar, '{"town": "Paris"}')
    mode = answer_shape([], None, {"type": "json_object"}, constrained=True)
    assert accepts(grammar_tokenizer, mode.grammar, '{"anything": [1, 2]}')
    assert not accepts(grammar_tokenizer, mode.grammar, "[1, 2]")
    openai_form = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert json_schema_of(openai_form) == schema
    assert answer_shape(TOOLS, "none", {"type": "json_object"}, True) == mode  # 'none' drops the tools


def test_a_regex_response_format_is_matched_whole(grammar_tokenizer):
    shape = answer_shape([], None, {"type": "regex", "pattern": r"(yes|no), [0-9]{1,2}"}, constrained=True)
    assert shape.prefix == "" and shape.json_answer is None
    assert accepts(grammar_tokenizer, shape.grammar, "yes, 42")
    assert not accepts(grammar_tokenizer, shape.grammar, "maybe, 42")
    assert not accepts(grammar_tokenizer, shape.grammar, "no, 123")
    assert answer_shape([], None, {"type": "regex", "pattern": "x"}, constrained=False) == type(shape)()
    with pytest.raises(InvalidSettingError, match="needs a 'pattern'"):
        answer_shape([], None, {"type": "regex"}, constrained=True)


def test_bad_constraints_are_clear_errors():
    with pytest.raises(InvalidSettingError, match="tool_choice 'divide' names no bound tool"):
        answer_shape(TOOLS, "divide", None, constrained=True)
    with pytest.raises(InvalidSettingError, match="response_format must be"):
        answer_shape([], None, {"type": "xml"}, constrained=True)
    unusable = normalise_tool_schema({"name": "f", "parameters": {"type": "object", "properties": {
        "a": {"$ref": "#/$defs/missing"}}}})
    with pytest.raises(InvalidSettingError, match="cannot be compiled: .*does not exist"):
        answer_shape([unusable], "f", None, constrained=True)


def test_strict_schema_closes_objects_but_not_data_or_explicit_choices():
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"x": {"type": "integer"}}},  # a property named so
            "free": {"type": "object", "properties": {}, "additionalProperties": True},
            "tag": {"const": {"properties": {}}},
        },
        "$defs": {"Item": {"type": "object", "properties": {"id": {"type": "integer"}}}},
    }
    closed = strict_schema(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["properties"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["properties"]["properties"]  # the map, not a schema
    assert closed["properties"]["free"]["additionalProperties"] is True
    assert closed["properties"]["tag"] == {"const": {"properties": {}}}
    assert closed["$defs"]["Item"]["additionalProperties"] is False
    assert schema["$defs"]["Item"] == {"type": "object", "properties": {"id": {"type": "integer"}}}  # not mutated


def test_the_json_instruction_joins_the_system_message():
    messages = with_json_instruction([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "?"}],
                                     {"type": "json_object"})
    assert messages[0]["content"] == "Be brief.\n\nAnswer with a single JSON object and nothing else."
    assert with_json_instruction([{"role": "user", "content": "?"}], {"type": "json_object"})[0]["role"] == "system"


# ---------------------------------------------------------------------- tools and a response format together

PRODUCT_FORMAT = {"type": "json_schema", "json_schema": {"name": "Product", "schema": {
    "type": "object", "properties": {"product": {"type": "integer"}}, "required": ["product"]}}}


def test_tools_and_a_response_format_allow_a_call_or_the_answer_in_the_format(grammar_tokenizer):
    shape = answer_shape(TOOLS, None, PRODUCT_FORMAT, constrained=True)
    assert (shape.prefix, shape.stop, shape.forced_call, shape.json_answer) == ("", (), False, PRODUCT_FORMAT)
    assert accepts(grammar_tokenizer, shape.grammar, call("multiply", {"a": 6, "b": 7}))
    assert accepts(grammar_tokenizer, shape.grammar, '{"product": 42}')
    assert not accepts(grammar_tokenizer, shape.grammar, "The product is 42.")  # prose: the format is not dropped
    assert not accepts(grammar_tokenizer, shape.grammar, '{"product": "42"}')  # the answer holds to its schema
    assert not accepts(grammar_tokenizer, shape.grammar, call("multiply", {"a": "6", "b": 7}))
    assert not accepts(grammar_tokenizer, shape.grammar, call("multiply", {"a": 6, "b": 7}) + '{"product": 42}')


def test_a_forced_choice_with_a_response_format_is_a_call_and_none_is_the_answer(grammar_tokenizer):
    forced = answer_shape(TOOLS, "multiply", PRODUCT_FORMAT, constrained=True)
    assert forced.forced_call and forced.json_answer is None  # the format applies to a later turn
    answer = answer_shape(TOOLS, "none", PRODUCT_FORMAT, constrained=True)
    assert accepts(grammar_tokenizer, answer.grammar, '{"product": 42}')
    assert not accepts(grammar_tokenizer, answer.grammar, call("multiply", {"a": 6, "b": 7}))


def test_tools_with_a_regex_format_is_a_clear_error_and_free_generation_keeps_the_format():
    with pytest.raises(InvalidSettingError, match="regex response_format cannot be combined with tools"):
        answer_shape(TOOLS, None, {"type": "regex", "pattern": "[0-9]+"}, constrained=True)
    free = answer_shape(TOOLS, None, PRODUCT_FORMAT, constrained=False)
    assert (free.grammar, free.prefix, free.json_answer) == (None, "", PRODUCT_FORMAT)  # the prompt still asks for it


# ---------------------------------------------------------------------- tool policy


def test_until_result_requires_a_call_until_a_tool_result_follows_the_user_message():
    asked = [{"role": "system", "content": "s"}, {"role": "user", "content": "What is 6 times 7?"}]
    called = [*asked, {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "function": {"name": "m"}}]},
              {"role": "tool", "tool_call_id": "c", "content": "42"}]
    assert policy_tool_choice(None, "until_result", asked, has_tools=True) == "any"
    assert policy_tool_choice(None, "until_result", called, has_tools=True) == ANSWER
    assert policy_tool_choice(None, "until_result", [*called, {"role": "user", "content": "And 2 times 3?"}],
                              has_tools=True) == "any"  # a new question needs a new call
    assert policy_tool_choice("multiply", "until_result", called, has_tools=True) == "multiply"  # explicit wins
    assert policy_tool_choice(None, "until_result", asked, has_tools=False) is None  # no tools: nothing to force
    assert policy_tool_choice(None, "auto", asked, has_tools=True) is None
    with pytest.raises(InvalidSettingError, match="tool_policy must be"):
        policy_tool_choice(None, "always", asked, has_tools=True)  # type: ignore[arg-type]
