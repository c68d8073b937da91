"""LangChain's standard chat-model suites against ChatRStitch on the real default pair.

The unit suite is fast (no generation). The integration suite generates with the real 135M pair
and is marked slow. SmolLM2-135M cannot follow a tool or JSON schema: the tests that need it are
marked xfail (strict: greedy decoding makes the failure deterministic) and each of those features
is shown through the real parsing path in test_langchain_tools.py and test_langchain_structured.py.
"""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from rstitch_integrations.langchain import ChatRStitch

CANNOT_FOLLOW_SCHEMAS = (
    "SmolLM2-135M cannot follow a tool/JSON schema: forced calls come out malformed or with wrong arguments "
    "(shown working with scripted model text through the real parsing path in test_langchain_tools.py / test_langchain_structured.py)"
)


class _Capabilities:
    """What ChatRStitch implements (the 135M model's skill is a separate matter)."""

    @property
    def chat_model_class(self) -> type[ChatRStitch]:
        return ChatRStitch

    @property
    def standard_chat_model_params(self) -> dict:
        # Short answers keep the real-model suite fast on a CPU (the standard default is 100 tokens).
        return {**super().standard_chat_model_params, "max_tokens": 12}  # type: ignore[misc]

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict:
        return {"invoke": [], "stream": []}


class TestChatRStitchUnit(_Capabilities, ChatModelUnitTests):
    pass


@pytest.mark.slow
@pytest.mark.real_model
class TestChatRStitchIntegration(_Capabilities, ChatModelIntegrationTests):
    xfail_tests = dict.fromkeys(
        [
            "test_tool_calling",
            "test_tool_calling_async",
            "test_tool_choice",
            "test_tool_calling_with_no_arguments",
            "test_bind_runnables_as_tools",
            "test_unicode_tool_call_integration",
            "test_agent_loop",
            "test_structured_output",
            "test_structured_output_async",
            "test_structured_output_pydantic_2_v1",
            "test_structured_output_optional_param",
            "test_json_mode",
        ],
        CANNOT_FOLLOW_SCHEMAS,
    )
    """Standard tests (by name, every parametrisation) that fail on the model's skill; conftest marks them xfail."""
