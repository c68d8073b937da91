"""with_structured_output and reasoning, through the real parsing path with scripted model text.

SmolLM2-135M neither follows a JSON schema nor writes ``<think>`` spans, so these features are
shown with scripted answers (real tokenizer, template and adapter).
"""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, Field

from rstitch_engine import InvalidSettingError

pytestmark = pytest.mark.real_model  # the real tokenizer and template (loaded once per session)


class Capital(BaseModel):
    """The capital of a country."""

    country: str = Field(description="The country")
    city: str = Field(description="Its capital city")


CAPITAL_DICT_SCHEMA = {
    "title": "Capital", "description": "The capital of a country.", "type": "object",
    "properties": {"country": {"type": "string"}, "city": {"type": "string"}}, "required": ["country", "city"],
}


def add_up(chunks):
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


def test_function_calling_forces_the_schema_tool(scripted_chat) -> None:
    chat, engine = scripted_chat('"country": "France", "city": "Paris"}}</tool_call>')
    assert chat.with_structured_output(Capital).invoke("Capital of France?") == Capital(country="France", city="Paris")
    assert engine.prompt_text().endswith('<tool_call>\n{"name": "Capital", "arguments": {')
    as_dict = chat.with_structured_output(CAPITAL_DICT_SCHEMA).invoke("Capital of France?")
    assert as_dict == {"country": "France", "city": "Paris"}


def test_json_schema_asks_for_json_and_parses_it(scripted_chat) -> None:
    chat, engine = scripted_chat('"country": "France", "city": "Paris"}')
    result = chat.with_structured_output(Capital, method="json_schema").invoke("Capital of France?")
    assert result == Capital(country="France", city="Paris")
    prompt = engine.prompt_text()
    assert "matches this JSON schema" in prompt and '"city"' in prompt
    assert prompt.endswith("<|im_start|>assistant\n{")  # the answer starts as a JSON object


def test_json_mode_returns_a_dict(scripted_chat) -> None:
    chat, engine = scripted_chat('"answer": 4}')
    assert chat.with_structured_output(None, method="json_mode").invoke("2+2 as JSON") == {"answer": 4}
    assert "Answer with a single JSON object and nothing else." in engine.prompt_text()


def test_include_raw_keeps_the_message_and_the_parsing_error(scripted_chat) -> None:
    chat, _ = scripted_chat('"country": "France"}')  # no city: does not validate
    out = chat.with_structured_output(Capital, method="json_schema", include_raw=True).invoke("Capital of France?")
    assert out["parsed"] is None
    assert out["raw"].content == '{"country": "France"}'
    assert "city" in str(out["parsing_error"])
    chat, _ = scripted_chat('"country": "France", "city": "Paris"}}</tool_call>')
    out = chat.with_structured_output(Capital, include_raw=True).invoke("Capital of France?")
    assert (out["parsed"], out["parsing_error"]) == (Capital(country="France", city="Paris"), None)


def test_structured_output_rejects_bad_arguments(scripted_chat) -> None:
    chat, _ = scripted_chat("{}")
    with pytest.raises(InvalidSettingError, match="method must be"):
        chat.with_structured_output(Capital, method="xml")  # type: ignore[arg-type]
    with pytest.raises(InvalidSettingError, match="needs a schema"):
        chat.with_structured_output(None, method="json_schema")


# ----------------------------------------------------------------------------- reasoning


THOUGHT = "<think>France's capital is Paris.</think>Paris."


def test_reasoning_goes_to_reasoning_content_and_usage_details(scripted_chat) -> None:
    chat, engine = scripted_chat(THOUGHT)
    reply = chat.invoke("Capital of France?")
    assert reply.content == "Paris."
    assert reply.additional_kwargs["reasoning_content"] == "France's capital is Paris."
    ids = engine.pair.tokenizer.encode(THOUGHT, add_special_tokens=False)
    thought_ids = engine.pair.tokenizer.encode("<think>France's capital is Paris.", add_special_tokens=False)
    assert reply.usage_metadata["output_tokens"] == len(ids)
    # the tokens written while the span was open, '<think>' included, are reasoning tokens
    assert reply.usage_metadata["output_token_details"]["reasoning"] == len(thought_ids)

    streamed = add_up(list(chat.stream("Capital of France?")))
    assert streamed.content == reply.content
    assert streamed.additional_kwargs == reply.additional_kwargs
    assert streamed.usage_metadata == reply.usage_metadata


def test_reasoning_separation_can_be_turned_off(scripted_chat) -> None:
    chat, _ = scripted_chat(THOUGHT, separate_reasoning=False)
    reply = chat.invoke("Capital of France?")
    assert reply.content == THOUGHT
    assert "reasoning_content" not in reply.additional_kwargs
    assert "output_token_details" not in reply.usage_metadata


def test_attribution_of_scripted_tokens_is_exact(scripted_chat) -> None:
    chat, engine = scripted_chat("one two three four five")
    reply = chat.invoke("count")
    n = reply.usage_metadata["output_tokens"]
    assert reply.response_metadata["token_sources"] == [engine.source_of(i) for i in range(n)]
    assert json.dumps(reply.response_metadata["stitch"])  # JSON-ready
