"""The fast-path options through both adapters: the static KV cache on the real default pair, and bad
options refused at construction with the reason (no weights are loaded for that)."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage

from rstitch_engine import InvalidSettingError
from rstitch_integrations.langchain import ChatRStitch
from rstitch_integrations.llamaindex import RStitchLLM

pytestmark = pytest.mark.real_model

QUESTION = "What is the capital of France?"


def test_chat_rstitch_with_static_kv_caches_gives_the_default_answer_token_for_token(real_engine_float32):
    dynamic = ChatRStitch(engine=real_engine_float32, max_tokens=24)
    static = ChatRStitch(dtype="float32", kv_cache="static", max_tokens=24)
    engine = static.load_engine()
    assert engine.pair.llm.execution.kv_cache == "static" and engine.pair.llm.model is not None
    expected, got = dynamic.invoke([HumanMessage(QUESTION)]), static.invoke([HumanMessage(QUESTION)])
    assert got.content == expected.content and "Paris" in got.content
    assert got.response_metadata["token_sources"] == expected.response_metadata["token_sources"]
    assert engine.pair.llm.static_steps.pool.allocated >= 1  # the static path really ran


@pytest.mark.parametrize("adapter", [ChatRStitch, RStitchLLM])
@pytest.mark.parametrize("options,match", [
    (dict(kv_cache="dynamic", compile=True), "needs kv_cache='static'"),
    (dict(kv_cache="static", cache_tokens=0), "cache_tokens"),
])
def test_invalid_fast_path_options_are_refused_when_the_model_is_made(adapter, options, match):
    with pytest.raises((InvalidSettingError, ValueError), match=match):
        adapter(**options)
