"""Remote mode: the adapters' calls answered by an ``rstitch serve`` server instead of local weights.

``remote_call`` sends one call through the ``openai`` client (always streamed) and gives back the
same ``CallStep`` sequence ``core.decode_call`` gives locally: one step per kept token (its
``TokenEvent`` rebuilt from the chunk's ``rstitch.tokens``, what it made final in the answer, and
the running totals), then a last step with the held-back rest and the stats. So an adapter in
remote mode needs one branch: where it would prepare and decode locally, it opens a remote call.

Invariants: no weights are loaded; a request the server refuses raises what ``prepare_call`` would
raise locally (``InvalidSettingError``, or ``PromptTooLongError`` / ``EmptyPromptError`` / ``TimeoutError``
by the error's ``code``) before any step; a call's ``timeout`` bounds the whole call, as locally; closing
the steps early closes the HTTP stream, and the server drops the request from its batch.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rstitch_engine import DEFAULT_THRESHOLD, EmptyPromptError, InvalidSettingError, PromptTooLongError, TokenEvent

from .answer_parsing import AnswerStep
from .tool_calls import InvalidToolCall, ParsedCall, ToolCall
from .constrained import tool_choice_name
from .core import CALL_OPTIONS, CallStep, StitchOptions, validate_timeout


@dataclass(frozen=True)
class RemoteStats:
    """A request's stats as the server reported them (``StitchStats.to_dict()``): the same keys as attributes."""

    values: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class RemoteAnswer:
    """Running totals of a remote answer (what ``answer_parsing.AnswerParser`` keeps locally)."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)
    in_reasoning: bool = False

    def record(self, step: AnswerStep) -> None:
        self.content += step.content
        self.reasoning += step.reasoning
        self.tool_calls += [c for c in step.calls if isinstance(c, ToolCall)]
        self.invalid_tool_calls += [c for c in step.calls if isinstance(c, InvalidToolCall)]


@functools.lru_cache(maxsize=16)
def _client(base_url: str, api_key: str | None) -> Any:
    import openai  # the 'serve' extra; only remote mode needs it

    return openai.OpenAI(base_url=_v1(base_url), api_key=api_key or "none", max_retries=0)  # timeouts: per call


def _v1(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/v1") else f"{base}/v1"


class RemoteCall:
    """One call sent to a server; ``prompt_tokens`` is known once it was accepted."""

    def __init__(self, chunks: Any, prompt_tokens: int, deadline: float | None = None) -> None:
        self._chunks = chunks
        self.prompt_tokens = prompt_tokens
        self._deadline = deadline  # time.monotonic() past which the call raises TimeoutError

    def steps(self) -> Generator[CallStep, None, None]:
        """The call's steps, as ``core.decode_call`` gives them; closing early closes the stream."""
        import httpx  # the openai client's transport
        import openai

        answer = RemoteAnswer()
        try:
            for chunk in self._chunks:
                if self._deadline is not None and time.monotonic() > self._deadline:
                    raise TimeoutError("the call ran past its timeout; raise timeout or lower max_tokens")
                extra = (chunk.model_extra or {}).get("rstitch", {})
                if "error" in (chunk.model_extra or {}):
                    raise _refusal(chunk.model_extra["error"])
                if not chunk.choices:
                    continue  # the usage chunk
                step = _answer_step(chunk.choices[0].delta, extra)
                answer.record(step)
                answer.in_reasoning = bool(extra.get("in_reasoning"))
                if "stats" in extra:
                    yield CallStep(step, answer, stats=RemoteStats(_floats(extra["stats"])))  # type: ignore[arg-type]
                    return
                for i, token in enumerate(extra.get("tokens", ())):
                    parsed, event = (step if i == 0 else AnswerStep()), TokenEvent(**token)
                    yield CallStep(parsed, answer, event, in_reasoning=answer.in_reasoning)  # type: ignore[arg-type]
        except (openai.APITimeoutError, httpx.TimeoutException):  # mid-stream, the client's own (httpx) error
            raise TimeoutError("the call ran past its timeout; raise timeout or lower max_tokens") from None
        finally:
            self._chunks.close()


def remote_call(options: StitchOptions, messages: Sequence[Mapping[str, Any]], call: Mapping[str, Any],
                separate_reasoning: bool) -> RemoteCall:
    """Send a call (OpenAI-style ``messages``; ``call``: its keyword options) to ``options.base_url``."""
    import openai

    unknown = sorted(set(call) - set(CALL_OPTIONS))
    if unknown:
        raise InvalidSettingError(f"unknown call options {unknown}; a call accepts {', '.join(CALL_OPTIONS)}")
    if not messages:  # as the engine says it (the server would refuse the empty list as a malformed body)
        raise EmptyPromptError("the prompt is empty: give text, token ids or at least one message")
    options.request_settings(call)  # settings and routing checked here as locally: the same errors, no round trip
    options.request_routing(call)
    timeout = validate_timeout(call.get("timeout", options.timeout))
    deadline = time.monotonic() + timeout if timeout is not None else None
    client = _client(options.base_url, options.api_key)  # type: ignore[arg-type]
    try:
        chunks = client.chat.completions.create(
            model=options.model_name, messages=list(messages), stream=True, **_request_fields(options, call),
            extra_body=_rstitch_fields(options, call) | {"separate_reasoning": separate_reasoning,
                                                         "measure_speedup": options.measure_speedup},
            timeout=timeout if timeout is not None else openai.NOT_GIVEN)
        stream: Iterator[Any] = iter(chunks)
        first = next(stream)  # the role chunk: the request was accepted
    except openai.BadRequestError as error:
        body = getattr(error, "body", None)
        raise _refusal(body.get("error", body) if isinstance(body, Mapping) else {}, _message(error)) from None
    except openai.APITimeoutError:
        raise TimeoutError("the call ran past its timeout; raise timeout or lower max_tokens") from None
    prompt_tokens = int(((first.model_extra or {}).get("rstitch") or {}).get("prompt_tokens", 0))
    max_tokens = call.get("max_tokens", options.max_tokens)
    if options.context_window is not None and prompt_tokens + max_tokens > options.context_window:
        chunks.close()  # before any token: the server drops the request
        raise InvalidSettingError(
            f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is over context_window "
            f"({options.context_window}); shorten the prompt, lower max_tokens or raise context_window")
    return RemoteCall(chunks, prompt_tokens, deadline)


def _request_fields(options: StitchOptions, call: Mapping[str, Any]) -> dict[str, Any]:
    """The standard OpenAI fields of a call: its options over the adapter's."""
    stops = [*(options.stop or ()), *_as_list(call.get("stop"))]
    fields: dict[str, Any] = {
        "max_tokens": call.get("max_tokens", options.max_tokens),
        "temperature": call.get("temperature", options.temperature),
        "top_p": call.get("top_p", options.top_p),
    }
    seed = call.get("seed", options.seed)
    if seed is not None:
        fields["seed"] = seed
    if stops:
        fields["stop"] = list(dict.fromkeys(stops))
    if call.get("tools"):
        fields["tools"] = list(call["tools"])
        choice = tool_choice_name(call.get("tool_choice"))
        if choice is not None:
            fields["tool_choice"] = ("required" if choice == "any" else "none" if choice == "none"
                                     else {"type": "function", "function": {"name": choice}})
        if call.get("parallel_tool_calls") is not None:
            fields["parallel_tool_calls"] = call["parallel_tool_calls"]
    if call.get("response_format"):
        fields["response_format"] = dict(call["response_format"])
    return fields


def _rstitch_fields(options: StitchOptions, call: Mapping[str, Any]) -> dict[str, Any]:
    """rstitch's own fields: the router (a call's threshold or quality, else the adapter's), top_k, constrained."""
    if options.router not in (None, "entropy") or options.router_path is not None:
        raise InvalidSettingError("remote mode takes quality or threshold; choose other routers on the server")
    fields: dict[str, Any] = {"top_k": call.get("top_k", options.top_k),
                              "constrained": call.get("constrained", options.constrained)}
    if "threshold" in call:
        fields["threshold"] = call["threshold"]
    elif "quality" in call:
        fields["quality"] = call["quality"]
    elif options.preset is not None:
        fields["quality"] = options.preset
    else:
        fields["threshold"] = options.threshold if options.threshold is not None else DEFAULT_THRESHOLD
    policy = call.get("tool_policy", options.tool_policy)
    if policy != "auto":
        fields["tool_policy"] = policy
    agreement = call.get("agreement_target", options.agreement_target)
    if agreement is not None:
        fields["agreement_target"] = agreement
    lookup = call.get("prompt_lookup_tokens", options.prompt_lookup_tokens)
    if lookup is not None:
        fields["prompt_lookup_tokens"] = lookup
    if call.get("token_entropy", options.token_entropy):
        fields["token_entropy"] = True
    return fields


def _answer_step(delta: Any, extra: Mapping[str, Any]) -> AnswerStep:
    invalid = {c["id"]: c for c in extra.get("invalid_tool_calls", ())}
    calls: list[ParsedCall] = []
    for call in delta.tool_calls or ():
        if call.id in invalid:
            info = invalid[call.id]
            calls.append(InvalidToolCall(info["id"], info["name"], info["raw"], info["error"], info["closed"]))
        else:
            calls.append(ToolCall(call.id, call.function.name, json.loads(call.function.arguments or "{}")))
    reasoning = (delta.model_extra or {}).get("reasoning_content") or ""
    return AnswerStep(delta.content or "", reasoning, tuple(calls))


REFUSALS: dict[str, type[Exception]] = {
    "context_length_exceeded": PromptTooLongError,
    "empty_prompt": EmptyPromptError,
    "timeout": TimeoutError,
}
"""The server's error ``code``s (``rstitch_server.protocol.ERROR_CODES``) of errors a local call raises by type."""


def _refusal(error: Any, message: str | None = None) -> Exception:
    """The exception a local call raises for a server's error object (``{"message", "code", ...}``)."""
    error = error if isinstance(error, Mapping) else {}
    text = message or str(error.get("message") or "the server failed")
    return REFUSALS.get(str(error.get("code")), InvalidSettingError)(text)


NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
"""How the server writes non-finite floats (``rstitch_server.wire``: JSON has no infinities)."""


def _floats(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The stats as the engine gave them: the server's '-inf'/'inf'/'nan' strings back to floats (the LLM alone's
    tau is -inf, the SLM alone's +inf); no stat is a string otherwise."""
    return {key: NON_FINITE.get(value, value) if isinstance(value, str) else value for key, value in stats.items()}


def _message(error: Any) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and inner.get("message"):
            return str(inner["message"])
    return str(error)


def _as_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)
