"""ChatRStitch's options are strict and its LangChain cache key is complete; on the real default pair.

A misspelt or remote-only option raises; the options a LangChain user sets per call (``timeout``,
``stream_usage``) act; ``context_window`` bounds a call; the profile says what it does. With
``set_llm_cache``/``cache=`` every option that changes an answer changes the cache key, and a hit
says it is one (its stitch stats are not counted again).
"""

from __future__ import annotations

import pytest
from langchain_core.caches import InMemoryCache
from pydantic import ValidationError

from rstitch_engine import InvalidSettingError, StitchEngine
from rstitch_integrations.callbacks import RStitchCallbackHandler
from rstitch_integrations.langchain import ChatRStitch

pytestmark = pytest.mark.real_model

QUESTION = "What is the capital of France?"


# ----------------------------------------------------------------------------- strict options


@pytest.mark.parametrize("remote_only", [{"api_key": "sk-x"}, {"max_retries": 2},
                                         {"max_retries": 2, "base_url": "http://127.0.0.1:9/v1"}])
def test_remote_only_options_are_refused_with_the_reason(remote_only) -> None:
    with pytest.raises(ValidationError, match="options of remote chat models; rstitch decodes locally"):
        ChatRStitch(**remote_only)
    assert ChatRStitch(api_key=None, max_retries=None).max_tokens == 256  # None asks for nothing: accepted
    remote = ChatRStitch(base_url="http://127.0.0.1:9/v1", api_key="sk-x")  # remote mode: the key goes with the URL
    assert remote.api_key == "sk-x" and "api_key" not in remote._identifying_params  # a secret stays out of the key


def test_misspelt_options_raise_at_construction_and_per_call(real_engine: StitchEngine) -> None:
    with pytest.raises(ValidationError, match="temprature"):
        ChatRStitch(temprature=0.9)
    with pytest.raises(ValidationError, match="tool_policy"):
        ChatRStitch(tool_policy="always")
    with pytest.raises(ValidationError, match="context_window must be a token count > 0"):
        ChatRStitch(context_window=0)
    chat = ChatRStitch(max_tokens=4)
    with pytest.raises(InvalidSettingError, match=r"unknown call options \['tool_polcy'\]"):
        chat.invoke(QUESTION, tool_polcy="until_result")
    with pytest.raises(InvalidSettingError, match="timeout must be a number of seconds > 0"):
        chat.invoke(QUESTION, timeout=-1)


def test_a_call_sets_its_own_timeout(real_engine: StitchEngine) -> None:
    chat = ChatRStitch(max_tokens=4)
    with pytest.raises(TimeoutError, match="timeout"):
        chat.invoke(QUESTION, timeout=1e-9)
    assert chat.invoke(QUESTION, timeout=600).content  # the engine is usable afterwards


def test_context_window_bounds_prompt_plus_max_tokens(real_engine: StitchEngine, adapter) -> None:
    """Local, then remote (the window is the client's: checked once the server says the prompt's length)."""
    prompt_tokens = ChatRStitch().get_num_tokens_from_messages([("user", QUESTION)])
    tight = adapter.chat(max_tokens=4, context_window=prompt_tokens + 4)
    assert tight.invoke(QUESTION).usage_metadata["output_tokens"] <= 4
    with pytest.raises(InvalidSettingError, match=r"plus max_tokens \(5\) is over context_window"):
        tight.invoke(QUESTION, max_tokens=5)
    assert tight.invoke(QUESTION, max_tokens=2).usage_metadata["output_tokens"] == 2  # still usable
    assert ChatRStitch(context_window=2048).profile["max_input_tokens"] == 8192  # the pair's window is the profile's


def test_stream_usage_turns_usage_off_on_streamed_chunks_only(real_engine: StitchEngine) -> None:
    chat = ChatRStitch(max_tokens=4)
    assert all(chunk.usage_metadata is None for chunk in chat.stream(QUESTION, stream_usage=False))
    quiet = ChatRStitch(max_tokens=4, stream_usage=False)
    assert all(chunk.usage_metadata is None for chunk in quiet.stream(QUESTION))
    assert quiet.invoke(QUESTION).usage_metadata["output_tokens"] == 4  # invoke results always carry usage
    assert sum(c.usage_metadata["output_tokens"] for c in chat.stream(QUESTION)) == 4


def test_profile_says_tool_calls_arrive_whole() -> None:
    profile = ChatRStitch().profile
    assert profile["tool_call_streaming"] is False and profile["structured_output"] is True


# ----------------------------------------------------------------------------- the cache key

# One value per option that changes an answer, each different from the default.
CHANGED = {
    "stop": ["."], "constrained": False, "dtype": "float32", "separate_reasoning": False, "output_version": "v1",
    "prompt_lookup_tokens": 3, "tool_policy": "until_result", "context_window": 1000, "temperature": 0.5,
    "top_p": 0.9, "top_k": 5, "seed": 1, "max_tokens": 7, "threshold": 0.3, "router": "llm", "quality": "exact",
    "llm": "other-llm", "slm": "other-slm", "device": "cpu", "kv_cache": "static", "cache_tokens": 512,
}


@pytest.mark.parametrize("option", sorted(CHANGED))
def test_every_option_that_changes_an_answer_changes_the_cache_key(option: str) -> None:
    assert ChatRStitch(**{option: CHANGED[option]})._get_llm_string() != ChatRStitch()._get_llm_string()


def test_the_cache_key_leaves_out_only_the_time_limit() -> None:
    assert ChatRStitch(timeout=5)._get_llm_string() == ChatRStitch()._get_llm_string()
    assert ChatRStitch(quality="fast")._get_llm_string() != ChatRStitch(quality="exact")._get_llm_string()
    with_call_options = ChatRStitch()._get_llm_string(stop=["."], tool_policy="until_result")
    assert with_call_options != ChatRStitch()._get_llm_string()  # call options are in the key too (LangChain's part)


def test_in_memory_cache_serves_only_equal_options_and_marks_its_hits(real_engine: StitchEngine) -> None:
    cache = InMemoryCache()
    costs = RStitchCallbackHandler()
    plain = ChatRStitch(max_tokens=12, cache=cache, callbacks=[costs])
    first = plain.invoke(QUESTION)
    again = plain.invoke(QUESTION)
    assert again.content == first.content
    assert again.response_metadata["cache_hit"] is True and "cache_hit" not in first.response_metadata
    assert "stitch" not in again.response_metadata
    assert again.response_metadata["cached_stitch"] == first.response_metadata["stitch"]
    assert costs.totals.requests == 1  # the hit's stats are not counted a second time
    assert costs.totals.output_tokens == first.response_metadata["stitch"]["output_tokens"]

    stopped = ChatRStitch(max_tokens=12, cache=cache, stop=[" "])  # another instance, one option apart
    answer = stopped.invoke(QUESTION)
    assert "cache_hit" not in answer.response_metadata  # not served the other instance's answer
    assert answer.content == ChatRStitch(max_tokens=12, stop=[" "]).invoke(QUESTION).content != first.content
