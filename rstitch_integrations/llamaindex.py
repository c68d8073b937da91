"""LlamaIndex LLM for R-Stitch stitched decoding: ``Settings.llm = RStitchLLM()``.

One undecorated core generator (``_chat_responses``) turns the engine's token events into
``ChatResponse`` items; every public method is that generator plus exactly one LlamaIndex callback
decorator (``llm_chat_callback`` / ``llm_completion_callback``; the dispatcher span comes from
``DispatcherSpanMixin``), so instrumentation events and token counting fire once per call. The
completion methods convert the same core's chat responses instead of calling the decorated chat
methods (which would fire a second, nested LLM event). The async methods drive the same sync core
from worker threads and close the engine stream when the consumer stops early.

Every streamed item carries ``additional_kwargs["token_sources"]`` ("slm"/"llm" for the tokens it
adds); the last item (and a non-streamed response) carries ``raw["usage"]`` (the engine's prompt
and completion token counts, read by ``TokenCountingHandler``) and ``additional_kwargs["stitch"]``
(``StitchStats.to_dict()``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    TypeVar,
)

from llama_index.core.base.llms.generic_utils import (
    astream_chat_response_to_completion_response,
    chat_response_to_completion_response,
    stream_chat_response_to_completion_response,
)
from llama_index.core.base.llms.types import (
    CachePoint,
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator, model_validator
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from rstitch_engine import (
    DEFAULT_LLM,
    DEFAULT_THRESHOLD,
    GenerationSettings,
    InvalidSettingError,
    Router,
    RouterName,
    StitchEngine,
    StitchStream,
    router_named,
    shared_engine,
)
from rstitch_engine.decoding.settings import validate_threshold

from .chat_format import (
    AnswerParser,
    AnswerStep,
    TemplateSupport,
    normalise_tool_schema,
    to_template_prompt,
)
from .constrained import answer_shape, tool_choice_name

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

CALL_OPTIONS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "threshold", "tools", "tool_choice",
                "parallel_tool_calls", "constrained")
"""Keyword arguments a single call accepts (each overrides the field of the same name)."""

_ROLE_NAMES = {
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.FUNCTION: "tool",
}


class RStitchLLM(FunctionCallingLLM):
    """R-Stitch stitched decoding as a LlamaIndex LLM: the SLM writes, the LLM takes over where it is unsure.

    Construction is cheap; the pair loads on first use and is shared by every instance naming it.
    """

    llm: str = Field(default=DEFAULT_LLM, description="The large model: hub id, local folder, .gguf file or alias.")
    slm: str | None = Field(
        default=None, description="The small model (same tokenizer as the LLM); None: the default pair's built-in SLM."
    )
    threshold: float = Field(
        default=DEFAULT_THRESHOLD, description="tau: the LLM takes over where the SLM's normalised entropy is above it."
    )
    router: RouterName = Field(
        default="entropy",
        description="'entropy' (R-Stitch), 'learned' (R-Stitch+: the default pair's shipped router unless router_path "
                    "is set; it keeps its trained tau), or 'slm' / 'llm' for one model alone (baselines).",
    )
    router_path: str | None = Field(
        default=None, description="Folder of a learned router (rstitch train-router --out), used with router='learned'."
    )
    temperature: float = Field(default=0.0, description="Sampling temperature; 0 decodes greedily.")
    top_p: float = Field(default=1.0, description="Nucleus sampling mass in (0, 1].")
    top_k: int = Field(default=0, description="Keep the k most likely tokens before sampling; 0 keeps all.")
    max_tokens: int = Field(default=256, description="Most output tokens per call (also the metadata's num_output).")
    stop: list[str] = Field(default_factory=list, description="Strings that end the answer (trimmed from it).")
    seed: int | None = Field(default=None, description="Seed of each call's private sampler; None: unseeded.")
    device: str = Field(default="auto", description="Torch device for both models ('auto', 'cpu', 'cuda', ...).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weight dtype; 'auto' is bfloat16 where the device computes it natively (CUDA, AVX512-BF16/AMX CPUs), else float32."
    )
    measure_speedup: bool = Field(
        default=False,
        description="Also time the LLM alone on each prompt (doubles the work): the speedup is measured, not estimated.",
    )
    separate_thinking: bool = Field(
        default=True, description="Move <think>...</think> text into a ThinkingBlock and thinking_delta."
    )
    constrained: bool = Field(
        default=True,
        description="Decode tool calls (chat_with_tools, structured_predict, agents) under a grammar, so that every "
                    "call is well-formed with schema-valid arguments; False: free generation, parsed after.",
    )
    is_function_calling_model: bool = Field(
        default=True, description="Offer tool calling to agents (tools are rendered into the chat template)."
    )

    _engine: StitchEngine | None = PrivateAttr(default=None)

    def __init__(self, *, engine: StitchEngine | None = None, **data: Any) -> None:
        """``engine``: an already loaded engine to use instead of the shared one for ``llm``/``slm``."""
        super().__init__(**data)
        self._engine = engine

    @field_validator("threshold", mode="before")
    @classmethod
    def _valid_threshold(cls, value: Any) -> float:
        return validate_threshold(value)

    @model_validator(mode="after")
    def _valid_sampling(self) -> RStitchLLM:
        self._settings({})  # GenerationSettings validates every sampling field with a clear message
        return self

    @classmethod
    def class_name(cls) -> str:
        return "RStitchLLM"

    # ------------------------------------------------------------------ engine and metadata

    @property
    def engine(self) -> StitchEngine:
        """The loaded pair (loaded on first use, shared between instances naming the same pair)."""
        if self._engine is None:
            self._engine = shared_engine(self.llm, self.slm, self.device, self.dtype)
        return self._engine

    @property
    def metadata(self) -> LLMMetadata:
        pair = self.engine.pair
        windows = [w for w in (pair.slm.context_window, pair.llm.context_window) if w is not None]
        return LLMMetadata(
            context_window=min(windows) if windows else LLMMetadata.model_fields["context_window"].default,
            num_output=self.max_tokens,
            is_chat_model=True,
            is_function_calling_model=self.is_function_calling_model,
            model_name=self.model_name,
        )

    @property
    def model_name(self) -> str:
        """'rstitch:<llm>+<slm>' (the SLM part is 'draft' for the default pair's built-in draft), as ChatRStitch."""
        return f"rstitch:{self.llm}+{self.slm or 'draft'}"

    # ------------------------------------------------------------------ public API: chat

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return _whole(self._chat_responses(self._start(messages, kwargs)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._chat_responses(self._start(messages, kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await _awhole(await self._astream(messages, kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return await self._astream(messages, kwargs)

    # ------------------------------------------------------------------ public API: completion

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return chat_response_to_completion_response(_whole(self._chat_responses(self._start(_as_user(prompt), kwargs))))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return stream_chat_response_to_completion_response(self._chat_responses(self._start(_as_user(prompt), kwargs)))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return chat_response_to_completion_response(await _awhole(await self._astream(_as_user(prompt), kwargs)))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        return astream_chat_response_to_completion_response(await self._astream(_as_user(prompt), kwargs))

    # ------------------------------------------------------------------ tools

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Messages plus ``tools``/``tool_choice`` for ``chat``; the tools are rendered by ``chat_format``.

        With ``allow_parallel_tool_calls`` a required call may be several, up to one per tool
        (``constrained.answer_shape``); otherwise the answer is one call.
        """
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str) else user_msg)
        if tool_choice is None and tool_required:
            tool_choice = "required"
        return {"messages": messages, "tools": list(tools), "tool_choice": tool_choice,
                "parallel_tool_calls": allow_parallel_tool_calls, **kwargs}

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        """Keep only the first tool call unless parallel calls are allowed."""
        if not allow_parallel_tool_calls:
            calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
            response.message.blocks = [
                b for b in response.message.blocks if not isinstance(b, ToolCallBlock) or b is calls[0]
            ]
        return response

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The well-formed tool calls of a response (malformed ones: ``message.additional_kwargs["invalid_tool_calls"]``)."""
        selections = [
            ToolSelection(tool_id=block.tool_call_id or "", tool_name=block.tool_name, tool_kwargs=_arguments(block))
            for block in response.message.blocks
            if isinstance(block, ToolCallBlock)
        ]
        if not selections and error_on_no_tool_call:
            invalid = response.message.additional_kwargs.get("invalid_tool_calls") or []
            detail = f"; {len(invalid)} malformed: {[call['error'] for call in invalid]}" if invalid else ""
            raise ValueError(f"expected at least one tool call in the response, got none{detail}")
        return selections

    # ------------------------------------------------------------------ the core

    def _start(self, messages: Sequence[ChatMessage], options: dict[str, Any]) -> _Request:
        """Validate a call and start its engine stream (no forward pass yet): bad input raises here."""
        unknown = sorted(set(options) - set(CALL_OPTIONS))
        if unknown:
            raise InvalidSettingError(f"unknown call options {unknown}; a call accepts {list(CALL_OPTIONS)}")
        engine, settings = self.engine, self._settings(options)
        tool_choice = tool_choice_name(options.get("tool_choice"))
        try:
            tools = [normalise_tool_schema(_tool_schema(t)) for t in options.get("tools") or ()] if tool_choice != "none" else []
        except ValueError as error:
            raise InvalidSettingError(str(error)) from error
        shape = answer_shape(tools, tool_choice, None, options.get("constrained", self.constrained),
                             parallel_calls=bool(options.get("parallel_tool_calls", False)))
        settings = settings.replace(grammar=shape.grammar, stop=tuple(dict.fromkeys((*settings.stop, *shape.stop))))
        try:
            prompt = to_template_prompt(
                [_message_dict(m) for m in messages],
                tools,
                support=TemplateSupport.of(getattr(engine.pair.tokenizer, "chat_template", None)),
                tool_choice=tool_choice,
            )
        except ValueError as error:
            raise InvalidSettingError(str(error)) from error
        ids = engine.encode(prompt.messages, tools=prompt.tools)
        if shape.prefix:  # a forced call's opening: the answer starts as a call, the model continues it
            ids += engine.pair.tokenizer(shape.prefix, add_special_tokens=False)["input_ids"]
        stream = engine.stream(ids, settings, self._router(options))
        names = [tool["function"]["name"] for tool in tools] if tools else None
        return _Request(stream, ids, settings, shape.prefix, names, shape.forced_call)

    def _settings(self, options: dict[str, Any]) -> GenerationSettings:
        stop = [*self.stop, *_as_list(options.get("stop"))]
        return GenerationSettings(
            max_new_tokens=options.get("max_tokens", self.max_tokens),
            temperature=options.get("temperature", self.temperature),
            top_p=options.get("top_p", self.top_p),
            top_k=options.get("top_k", self.top_k),
            seed=options.get("seed", self.seed),
            stop=tuple(dict.fromkeys(stop)),
        )

    def _router(self, options: dict[str, Any]) -> Router:
        return router_named(self.router, options.get("threshold", self.threshold), self.router_path)

    def _chat_responses(self, request: _Request) -> ChatResponseGen:
        """The core: token events in, cumulative ``ChatResponse`` items out; the last one has the stats."""
        parser = AnswerParser(self.separate_thinking, request.tool_names)
        parser.feed(request.prefix)  # the forced opening of a tool call is part of the answer
        pending: list[str] = []  # sources of tokens not reported yet
        with request.stream as stream:
            for event in stream:
                pending.append(event.source)
                step = parser.feed(event.text)
                if step.visible:
                    yield _response(parser, step, pending)
                    pending = []
            stats = stream.stats
        if self.measure_speedup:
            stats = stats.with_measured_llm_alone(self.engine.decode_alone("llm", request.ids, request.settings))
        forced_call_stopped = request.forced_call and stats.finish_reason == "stop"  # its </tool_call> was the stop
        final = _response(parser, parser.finish(close_tool_call=forced_call_stopped), pending)
        final.raw = {
            "usage": {
                "prompt_tokens": stats.prompt_tokens,
                "completion_tokens": stats.output_tokens,
                "total_tokens": stats.prompt_tokens + stats.output_tokens,
            },
            "finish_reason": stats.finish_reason,
            "model": self.model_name,
        }
        final.additional_kwargs["stitch"] = stats.to_dict()
        yield final

    async def _astream(self, messages: Sequence[ChatMessage], options: dict[str, Any]) -> ChatResponseAsyncGen:
        """The core on worker threads; starting (and loading the pair the first time) too."""
        request = await asyncio.to_thread(self._start, messages, options)
        return _in_worker_threads(self._chat_responses(request))


# ---------------------------------------------------------------------- one request's parsing


@dataclass
class _Request:
    """A validated call whose engine stream has not decoded anything yet."""

    stream: StitchStream
    ids: list[int]
    """The prompt's token ids."""
    settings: GenerationSettings
    prefix: str
    """Text already written for the model (the opening of a forced tool call)."""
    tool_names: list[str] | None
    """Names of the tools offered; None: tool calls are not parsed."""
    forced_call: bool
    """The answer is one tool call, ended by its closing tag as a stop string."""


def _response(parser: AnswerParser, step: AnswerStep, sources: list[str]) -> ChatResponse:
    """The cumulative response after ``step``, reporting the ``sources`` of its new tokens."""
    blocks: list[Any] = [ThinkingBlock(content=parser.reasoning)] if parser.reasoning else []
    blocks.append(TextBlock(text=parser.content))
    blocks += [ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=c.arguments) for c in parser.tool_calls]
    extra: dict[str, Any] = {"token_sources": list(sources)}
    if step.reasoning:
        extra["thinking_delta"] = step.reasoning
    invalid = [{"id": c.id, "name": c.name, "raw": c.raw, "error": c.error} for c in parser.invalid_tool_calls]
    return ChatResponse(
        message=ChatMessage(
            role=MessageRole.ASSISTANT,
            blocks=blocks,
            additional_kwargs={"invalid_tool_calls": invalid} if invalid else {},
        ),
        delta=step.content,
        additional_kwargs=extra,
    )


# ---------------------------------------------------------------------- LlamaIndex -> chat_format


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    """A LlamaIndex message as an OpenAI-style dict (``chat_format`` renders it)."""
    role = _ROLE_NAMES.get(message.role, message.role.value)
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ToolCallBlock):
            calls.append({"id": block.tool_call_id, "function": {"name": block.tool_name, "arguments": block.tool_kwargs}})
        elif isinstance(block, CachePoint):
            continue  # a prompt-caching hint for remote APIs; a local KV cache needs none
        else:
            parts.append({"type": block.block_type})  # chat_format skips thinking, rejects media by name
    # OpenAI-style calls kept by other integrations (as dicts or as SDK objects)
    calls += [c.model_dump() if hasattr(c, "model_dump") else c for c in message.additional_kwargs.get("tool_calls") or ()]
    out: dict[str, Any] = {"role": role, "content": parts}
    if calls:
        out["tool_calls"] = calls
    if role == "tool" and message.additional_kwargs.get("tool_call_id"):
        out["tool_call_id"] = message.additional_kwargs["tool_call_id"]
    return out


def _arguments(block: ToolCallBlock) -> dict[str, Any]:
    """A call's arguments as a dict (blocks from other integrations may hold them as JSON text)."""
    if isinstance(block.tool_kwargs, dict):
        return block.tool_kwargs
    try:
        parsed = json.loads(block.tool_kwargs)
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _tool_schema(tool: Any) -> dict[str, Any]:
    """An OpenAI-style schema from a LlamaIndex tool, or a schema dict as given."""
    if isinstance(tool, dict):
        return tool
    return tool.metadata.to_openai_tool(skip_length_check=True)


def _as_user(prompt: str) -> list[ChatMessage]:
    return [ChatMessage(role=MessageRole.USER, content=prompt)]


def _as_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


# ---------------------------------------------------------------------- iteration helpers


def _whole(items: Iterable[ChatResponse]) -> ChatResponse:
    """The final response of a stream, reporting the sources of all its tokens (a non-streamed answer)."""
    sources: list[str] = []
    for item in items:
        sources += item.additional_kwargs["token_sources"]
    return _as_whole(item, sources)


async def _awhole(items: AsyncIterator[ChatResponse]) -> ChatResponse:
    """``_whole`` for an async stream."""
    sources: list[str] = []
    async for item in items:
        sources += item.additional_kwargs["token_sources"]
    return _as_whole(item, sources)


def _as_whole(final: ChatResponse, sources: list[str]) -> ChatResponse:
    final.delta = None
    final.additional_kwargs.pop("thinking_delta", None)
    final.additional_kwargs["token_sources"] = sources
    return final


T = TypeVar("T")


async def _in_worker_threads(items: Generator[T, None, None]) -> AsyncGenerator[T, None]:
    """Iterate a blocking generator on worker threads; the event loop stays free.

    If the consumer stops early (breaks, is cancelled, or the generator is closed), the blocking
    generator is closed too: at once when no step is running, else as soon as the running step ends.
    """
    loop = asyncio.get_running_loop()
    done = object()
    step: asyncio.Future[Any] | None = None
    try:
        while True:
            step = loop.run_in_executor(None, next, items, done)
            item = await asyncio.shield(step)
            if item is done:
                return
            yield item
    finally:
        if step is not None and not step.done():
            step.add_done_callback(lambda _: items.close())  # type: ignore[attr-defined]
        else:
            items.close()  # type: ignore[attr-defined]
