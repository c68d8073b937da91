"""The request bodies the server accepts, validated, and the OpenAI error shape.

Known fields are typed (a wrong type is a 400 naming the field); fields the OpenAI API defines but
rstitch cannot honour (``n`` > 1, ``logprobs``, penalties, ``echo``) are refused with a reason;
any other field is ignored, as OpenAI-compatible servers do, so that clients sending newer fields
keep working. rstitch's own options travel as extra body fields (``quality``, ``threshold``, ``agreement_target``,
``top_k``, ``constrained``, ``separate_reasoning``, ``prompt_lookup_tokens``, ``token_entropy``, ``tool_policy``,
``measure_speedup``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rstitch_engine import EmptyPromptError, PromptTooLongError, Quality


class RequestError(Exception):
    """A request the server answers with an OpenAI-shaped error (``status``, ``kind``, what to fix)."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.kind, self.param, self.code = message, status, kind, param, code

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``, as the OpenAI API answers (``code``: a name such as
        ``context_length_exceeded`` where one applies, else the status)."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code or self.status}}

    @classmethod
    def refused(cls, error: Exception) -> RequestError:
        """What the engine or the core refused (an ``RStitchError``, a timeout) as a 400 whose ``code`` names the
        error, so a remote client raises what a local call raises (``ERROR_CODES``)."""
        return cls(str(error), code=ERROR_CODES.get(type(error)))


ERROR_CODES: dict[type[Exception], str] = {
    PromptTooLongError: "context_length_exceeded",  # OpenAI's own code for it
    EmptyPromptError: "empty_prompt",
    TimeoutError: "timeout",
}
"""The error ``code`` of the engine's errors that a client may catch by type (``rstitch_integrations.remote``);
other refusals carry the status."""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    """Any name is accepted: the server serves one pair (``GET /v1/models``)."""
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    logprobs: bool | int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # rstitch's own options
    quality: Quality | None = None
    threshold: float | None = None
    agreement_target: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    prompt_lookup_tokens: int | None = Field(default=None, ge=0)
    token_entropy: bool | None = None

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> _Common:
        if self.n not in (None, 1):
            raise ValueError("n must be 1: send one request per answer (they share the batch anyway)")
        if self.logprobs:
            raise ValueError("logprobs are not supported; each chunk's rstitch.token_entropies gives the "
                             "writer's entropy")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ValueError(f"{name} is not supported; leave it out or set it to 0")
        if self.quality is not None and self.threshold is not None:
            raise ValueError("give either quality or threshold, not both")
        if isinstance(self.stop, list) and not all(self.stop):
            raise ValueError("stop strings must be non-empty")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _sampling_options(self, max_tokens: int | None) -> dict[str, Any]:
        """The core's call options (``rstitch_integrations.core.CALL_OPTIONS``) both endpoints share."""
        values = {"max_tokens": max_tokens, "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                  "stop": self.stop, "quality": self.quality, "threshold": self.threshold, "top_k": self.top_k,
                  "prompt_lookup_tokens": self.prompt_lookup_tokens, "agreement_target": self.agreement_target,
                  "token_entropy": self.token_entropy}
        return {key: value for key, value in values.items() if value is not None}


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """A JSON schema of the arguments (an object schema); None: no arguments."""


class ToolSpec(BaseModel):
    """An OpenAI tool: ``{"type": "function", "function": {"name", "description", "parameters"}}``."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["function"] = "function"
    function: FunctionSpec


class ChatCompletionRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    constrained: bool | None = None
    separate_reasoning: bool = True
    tool_policy: Literal["auto", "until_result"] | None = None
    """rstitch's tool policy (``rstitch_integrations.constrained.ToolPolicy``); None: the server's."""
    measure_speedup: bool | None = None
    """Also time the LLM alone on this prompt (doubles the work) so the speedup is measured; None: the server's."""

    @field_validator("messages")
    @classmethod
    def _message_shapes(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, message in enumerate(messages):
            if not isinstance(message.get("role"), str):
                raise ValueError(f"message {i} needs a 'role' string")
            content = message.get("content")
            if not (content is None or isinstance(content, (str, list))):
                raise ValueError(f"message {i}: content must be a string or a list of content parts, "
                                 f"got {type(content).__name__}")
        return messages

    def call_options(self) -> dict[str, Any]:
        """The core's call options this request sets (unset fields keep the server's defaults)."""
        options = self._sampling_options(self.max_completion_tokens or self.max_tokens)
        if self.tools:
            options["tools"] = [tool.model_dump(exclude_none=True) for tool in self.tools]
            if self.tool_choice is not None:
                options["tool_choice"] = self.tool_choice
            if self.parallel_tool_calls is not None:
                options["parallel_tool_calls"] = self.parallel_tool_calls
        if self.response_format and self.response_format.get("type") != "text":
            options["response_format"] = self.response_format
        if self.constrained is not None:
            options["constrained"] = self.constrained
        if self.tool_policy is not None:
            options["tool_policy"] = self.tool_policy
        return options


class CompletionRequest(_Common):
    """``POST /v1/completions``: a plain prompt, no chat template."""

    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("give one prompt per request (a string, or a list of one string)")
        if self.echo or self.suffix or self.best_of not in (None, 1):
            raise ValueError("echo, suffix and best_of are not supported")
        return self

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def call_options(self) -> dict[str, Any]:
        """The core's call options this request sets (unset fields keep the server's defaults)."""
        return self._sampling_options(self.max_tokens)


def validation_message(error: ValidationError) -> str:
    """A pydantic error as one line per field: ``field: what is wrong``."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "body"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if item["type"] != "value_error" or item["loc"] else message)
    return "; ".join(lines)
