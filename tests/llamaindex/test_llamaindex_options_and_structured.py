"""RStitchLLM's options are strict, and LlamaIndex's streaming structured output is filled; real default pair.

``stream_structured_predict``, its async form and ``as_structured_llm(...).stream_chat`` go through
llama-index-core's own streaming program, which reads streamed calls from
``message.additional_kwargs["tool_calls"]`` and does not pass ``tool_required`` on.
"""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock
from llama_index.core.bridge.pydantic import BaseModel, ValidationError
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool

from rstitch_engine import InvalidSettingError
from rstitch_integrations.llamaindex import RStitchLLM, _message_dict

pytestmark = pytest.mark.real_model


class Person(BaseModel):
    """A person."""

    name: str
    age: int


PROMPT = PromptTemplate("Make up a person called {name} who is 30 years old.")


def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product."""
    return a * b


# ----------------------------------------------------------------------------- strict options


def test_misspelt_and_remote_only_options_raise() -> None:
    with pytest.raises(ValidationError, match="temprature"):
        RStitchLLM(temprature=0.9)
    with pytest.raises(ValidationError, match="options of remote chat models"):
        RStitchLLM(api_key="sk-x")
    with pytest.raises(ValidationError, match="options of remote chat models"):
        RStitchLLM(max_retries=3)


def test_context_window_narrows_the_metadata_and_bounds_a_call(real_engine) -> None:
    assert RStitchLLM(context_window=2048).metadata.context_window == 2048
    assert RStitchLLM(context_window=100_000).metadata.context_window == 8192  # never past the pair's window
    with pytest.raises(InvalidSettingError, match="is over context_window"):
        RStitchLLM(context_window=20, max_tokens=8).chat([ChatMessage(role="user", content="What is 6 times 7?")])


def test_a_call_sets_its_own_timeout(real_engine) -> None:
    llm = RStitchLLM(max_tokens=4)
    with pytest.raises(TimeoutError, match="timeout"):
        llm.chat([ChatMessage(role="user", content="Hi")], timeout=1e-9)
    with pytest.raises(InvalidSettingError, match="timeout must be"):
        llm.chat([ChatMessage(role="user", content="Hi")], timeout=0)


# ----------------------------------------------------------------------------- streamed structured output


def test_stream_structured_predict_is_filled(real_engine, adapter) -> None:
    llm = adapter.llm(max_tokens=40)
    parts = list(llm.stream_structured_predict(Person, PROMPT, name="Alice"))
    assert parts[-1] == Person(name="Alice", age=30)
    assert isinstance(parts[-1], Person)


@pytest.mark.slow  # the same forced program as the sync form; ~25 s on a loaded 2-core CPU
async def test_astream_structured_predict_is_filled(real_engine, adapter) -> None:
    llm = adapter.llm(max_tokens=40)
    parts = [part async for part in await llm.astream_structured_predict(Person, PROMPT, name="Alice")]
    assert parts[-1] == Person(name="Alice", age=30)


@pytest.mark.slow  # stream_structured_predict again, behind StructuredLLM; ~20 s on a loaded 2-core CPU
def test_structured_llm_stream_chat_is_filled(real_engine, adapter) -> None:
    structured = adapter.llm(max_tokens=40).as_structured_llm(Person)
    messages = [ChatMessage(role="user", content="Make up a person called Alice who is 30 years old.")]
    *_, last = structured.stream_chat(messages)
    assert last.raw == Person(name="Alice", age=30)


def test_streamed_tool_calls_are_in_additional_kwargs_and_honour_tool_required(real_engine, adapter) -> None:
    llm = adapter.llm(max_tokens=24)
    tool = FunctionTool.from_defaults(multiply)
    *_, last = llm.stream_chat_with_tools([tool], user_msg="What is 6 times 7?", tool_required=True)
    [block] = [b for b in last.message.blocks if isinstance(b, ToolCallBlock)]
    [kept] = last.message.additional_kwargs["tool_calls"]
    assert kept["id"] == block.tool_call_id and kept["function"]["name"] == "multiply" == block.tool_name
    assert [s.tool_kwargs for s in llm.get_tool_calls_from_response(last)] == [block.tool_kwargs]
    # sent back in a history, the call is rendered once (its block and its OpenAI form share the id)
    assert len(_message_dict(last.message)["tool_calls"]) == 1
