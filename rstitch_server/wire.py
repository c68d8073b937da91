"""The core's steps as OpenAI-shaped JSON: chat and text completion chunks and responses.

Every chunk and response carries a top-level ``rstitch`` object: ``token_sources`` (``"slm"`` or
``"llm"`` for each output token the chunk covers, in order) and ``token_entropies`` (the writer's
normalised entropy at each); the final chunk and a whole response add ``stats``
(``StitchStats.to_dict()``, passed through whole, so new stats fields appear without a change here)
and ``invalid_tool_calls`` when a free-generated call did not parse. Standard clients ignore the
field. Tool calls go out as ``delta.tool_calls`` entries, each whole (id, name and JSON arguments in
one fragment) once its block is complete; reasoning (``<think>`` spans) as ``reasoning_content``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from rstitch_engine import StitchStats, TokenEvent
from rstitch_integrations.answer_parsing import AnswerStep
from rstitch_integrations.tool_calls import InvalidToolCall, ParsedCall, ToolCall


@dataclass
class Reply:
    """One response being written: its id, kind, and what it has said so far."""

    model: str
    kind: Literal["chat", "text"]
    prompt_tokens: int
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))
    calls_sent: int = 0
    any_calls: bool = False

    @property
    def object(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"

    def chunk(self, step: AnswerStep | None, events: Sequence[TokenEvent] = (), stats: StitchStats | None = None,
              role: bool = False, in_reasoning: bool = False) -> dict[str, Any]:
        """One streamed chunk: the step's delta and the tokens it covers; ``stats`` makes it the final one.

        Streamed chunks also list each token's whole ``TokenEvent`` (``rstitch.tokens``: id, raw text,
        took_over, ...) for rstitch's own clients (``rstitch_integrations.remote``)."""
        extra = _rstitch([e.source for e in events], [e.entropy for e in events], step, stats)
        if events:
            extra["tokens"] = [dataclasses.asdict(event) for event in events]
        if in_reasoning:
            extra["in_reasoning"] = True
        if self.kind == "text":
            choice: dict[str, Any] = {"index": 0, "text": step.content if step else "", "logprobs": None,
                                      "finish_reason": self.finish_reason(stats)}
        else:
            delta = {"role": "assistant", "content": ""} if role else self.delta(step)
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": self.finish_reason(stats)}
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": [choice], "rstitch": extra}

    def usage_chunk(self, stats: StitchStats) -> dict[str, Any]:
        """The ``stream_options.include_usage`` chunk: no choices, the usage."""
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": [], "usage": self.usage(stats), "rstitch": {"token_sources": [], "token_entropies": []}}

    def delta(self, step: AnswerStep | None) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if step is None:
            return delta
        if step.content:
            delta["content"] = step.content
        if step.reasoning:
            delta["reasoning_content"] = step.reasoning
        if step.calls:
            delta["tool_calls"] = [dict(tool_call_json(call), index=self.calls_sent + i)
                                   for i, call in enumerate(step.calls)]
            self.calls_sent += len(step.calls)
            self.any_calls = True
        return delta

    def finish_reason(self, stats: StitchStats | None) -> str | None:
        """OpenAI's reasons: 'tool_calls' when the answer called tools and ended, 'length', else 'stop'."""
        if stats is None:
            return None
        if stats.finish_reason == "length":
            return "length"
        return "tool_calls" if self.any_calls else "stop"

    def usage(self, stats: StitchStats) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": stats.output_tokens,
                "total_tokens": self.prompt_tokens + stats.output_tokens}

    def response(self, answer: AnswerStep, sources: Sequence[str], entropies: Sequence[float | None],
                 stats: StitchStats) -> dict[str, Any]:
        """A whole (non-streamed) response from the answer added up."""
        extra = _rstitch(sources, entropies, answer, stats)
        if self.kind == "text":
            choice: dict[str, Any] = {"index": 0, "text": answer.content, "logprobs": None}
            obj = "text_completion"
        else:
            content = answer.content if answer.content or not answer.calls else None  # a call alone: null
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if answer.reasoning:
                message["reasoning_content"] = answer.reasoning
            if answer.calls:
                message["tool_calls"] = [tool_call_json(call) for call in answer.calls]
                self.any_calls = True
            choice = {"index": 0, "message": message, "logprobs": None}
            obj = "chat.completion"
        choice["finish_reason"] = self.finish_reason(stats)
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice],
                "usage": self.usage(stats), "rstitch": extra}


def tool_call_json(call: ParsedCall) -> dict[str, Any]:
    """A parsed call in OpenAI's shape; an invalid one carries the block's raw text as its arguments."""
    arguments = json.dumps(call.arguments) if isinstance(call, ToolCall) else call.raw
    return {"id": call.id, "type": "function", "function": {"name": call.name or "", "arguments": arguments}}


def _rstitch(sources: Sequence[str], entropies: Sequence[float | None], step: AnswerStep | None,
             stats: StitchStats | None) -> dict[str, Any]:
    extra: dict[str, Any] = {"token_sources": list(sources),
                             "token_entropies": [None if h is None else round(h, 6) for h in entropies]}
    invalid = [call for call in (step.calls if step else ()) if isinstance(call, InvalidToolCall)]
    if invalid:
        extra["invalid_tool_calls"] = [{"id": c.id, "name": c.name, "raw": c.raw, "error": c.error,
                                        "closed": c.closed} for c in invalid]
    if stats is not None:
        extra["stats"] = json_safe(stats.to_dict())
    return extra


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: ``data: <json>`` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, separators=(',', ':'))}\n\n"


def json_safe(stats: dict[str, Any]) -> dict[str, Any]:
    """The stats with non-finite floats (the LLM alone's tau is -inf, the SLM alone's +inf) as JSON strings
    ('-inf', 'inf'): JSON has no infinities, and the wire must stay valid JSON for every client."""
    return {key: (str(value) if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in stats.items()}
