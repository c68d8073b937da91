"""Reaching ChatRStitch by name, as code written around LangChain's ``init_chat_model`` does."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rstitch_engine import InvalidSettingError
from rstitch_integrations.langchain import ChatRStitch, init_chat_model


def test_rstitch_model_strings_give_a_chat_rstitch_with_the_options() -> None:
    chat = init_chat_model("rstitch:smollm2-135m-instruct", max_tokens=16, tool_policy="until_result")
    assert isinstance(chat, ChatRStitch)
    assert (chat.llm, chat.slm, chat.max_tokens, chat.tool_policy) == ("smollm2-135m-instruct", None, 16, "until_result")
    assert init_chat_model(chat.model_name).model_name == chat.model_name  # 'rstitch:<llm>+draft' round-trips
    paired = init_chat_model("rstitch:some/llm+some/slm")
    assert (paired.llm, paired.slm) == ("some/llm", "some/slm")
    assert init_chat_model("smollm2-135m-instruct", model_provider="rstitch").llm == "smollm2-135m-instruct"


def test_bad_names_and_options_raise() -> None:
    with pytest.raises(InvalidSettingError, match="an rstitch model name is"):
        init_chat_model("rstitch:")
    with pytest.raises(ValidationError, match="temprature"):
        init_chat_model("rstitch:smollm2-135m-instruct", temprature=0.5)


def test_other_providers_go_to_langchains_own_function() -> None:
    with pytest.raises(ValueError, match="Unsupported provider='nonesuch'"):
        init_chat_model("x", model_provider="nonesuch")
