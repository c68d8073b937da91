"""LlamaIndex LLM for R-Stitch stitched decoding: ``Settings.llm = RStitchLLM()``.

The request itself is the shared core's (``rstitch_integrations.core``: options, ``prepare_call``,
``decode_call``); this module converts LlamaIndex messages and tools in and the core's steps out.
One undecorated generator (``_chat_responses``) turns those steps into ``ChatResponse`` items; every public method is that generator plus exactly one LlamaIndex callback
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
from contextlib import closing
from typing import (
    TYPE_CHECKING,
    Any,
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
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.prompts.base import BasePromptTemplate
from llama_index.core.types import PydanticProgramMode

from rstitch_engine import StitchEngine, release_openmp_team

from .answer_parsing import AnswerParser, AnswerStep
from .tool_calls import ToolCall
from .core import CALL_OPTIONS, CallStep, StitchOptions, decode_call, prepare_call
from .remote import remote_call

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = ["CALL_OPTIONS", "RStitchLLM"]

_ROLE_NAMES = {
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.FUNCTION: "tool",
}


class RStitchLLM(StitchOptions, FunctionCallingLLM):
    """R-Stitch stitched decoding as a LlamaIndex LLM: the SLM writes, the LLM takes over where it is unsure.

    By default (``quality='auto'``) a call runs what the pair's calibration profile proves faithful
    to the LLM alone, else the LLM alone with prompt lookup; ``additional_kwargs["stitch"]["policy"]``
    says which ran and why. Construction is cheap; the pair loads on first use and is shared by every
    instance naming it.
    The options it shares with ``ChatRStitch`` (pair, threshold, router, sampling, ``max_tokens``,
    ``stop``, ``constrained``, ...; ``model=`` names the LLM too) are declared once, in
    ``rstitch_integrations.core.StitchOptions``.
    Options are strict: an unknown or misspelt one raises (``RStitchLLM(temprature=0.9)``), as in ``ChatRStitch``.
    """

    model_config = ConfigDict(extra="forbid")

    separate_thinking: bool = Field(
        default=True, description="Move <think>...</think> text into a ThinkingBlock and thinking_delta."
    )
    is_function_calling_model: bool = Field(
        default=True, description="Offer tool calling to agents (tools are rendered into the chat template)."
    )

    _engine: StitchEngine | None = PrivateAttr(default=None)

    def __init__(self, *, engine: StitchEngine | None = None, **data: Any) -> None:
        """``engine``: an already loaded engine to use instead of the shared one for ``llm``/``slm``."""
        super().__init__(**data)
        self._engine = engine

    @classmethod
    def class_name(cls) -> str:
        return "RStitchLLM"

    # ------------------------------------------------------------------ engine and metadata

    @property
    def engine(self) -> StitchEngine:
        """The loaded pair (loaded on first use, shared between instances naming the same pair)."""
        if self._engine is None:
            self._engine = self.load_engine()
        return self._engine

    @property
    def metadata(self) -> LLMMetadata:
        """Read when query engines and ``Settings`` are built: from the pair's config files, no weights loaded."""
        window, _ = self.pair_window_and_template(self._engine)
        windows = [w for w in (window, self.context_window) if w is not None]  # the option may narrow the pair's
        return LLMMetadata(
            context_window=min(windows) if windows else LLMMetadata.model_fields["context_window"].default,
            num_output=self.max_tokens,
            is_chat_model=True,
            is_function_calling_model=self.is_function_calling_model,
            model_name=self.model_name,
        )

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
        """Messages plus ``tools``/``tool_choice`` for ``chat``; the tools are rendered by ``prompt``.

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

    # ------------------------------------------------------------------ streamed structured output

    def _structured_stream_call(
        self, output_cls: type[Any], prompt: BasePromptTemplate, llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:
        """``stream_structured_predict`` (and ``as_structured_llm(...).stream_chat``) with the call forced.

        LlamaIndex's streaming program does not pass ``tool_required`` on (its non-streaming one does),
        so a model that may answer in prose does; here the program names its one tool as ``tool_choice``.
        """
        program = self._forced_program(output_cls, prompt)
        if program is None:
            return super()._structured_stream_call(output_cls, prompt, llm_kwargs, **prompt_args)
        return program.stream_call(llm_kwargs=llm_kwargs, **prompt_args)

    async def _structured_astream_call(
        self, output_cls: type[Any], prompt: BasePromptTemplate, llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:
        """The async form of ``_structured_stream_call``."""
        program = self._forced_program(output_cls, prompt)
        if program is None:
            return await super()._structured_astream_call(output_cls, prompt, llm_kwargs, **prompt_args)
        return await program.astream_call(llm_kwargs=llm_kwargs, **prompt_args)

    def _forced_program(self, output_cls: type[Any], prompt: BasePromptTemplate) -> Any:
        """A function-calling program whose one tool is required; None for a program mode that is not function calling."""
        from llama_index.core.program.function_program import FunctionCallingProgram, get_function_tool

        if self.pydantic_program_mode not in (PydanticProgramMode.DEFAULT, PydanticProgramMode.FUNCTION):
            return None
        name = get_function_tool(output_cls).metadata.name
        return FunctionCallingProgram.from_defaults(output_cls=output_cls, llm=self, prompt=prompt, tool_choice=name)

    # ------------------------------------------------------------------ the core

    def _start(self, messages: Sequence[ChatMessage], options: dict[str, Any]) -> Generator[CallStep, None, None]:
        """Validate a call and start its engine stream (no forward pass yet): bad input raises here."""
        call = {**options, "tools": [_tool_schema(tool) for tool in options.get("tools") or ()]}
        if self.base_url is not None:  # remote mode: the server at base_url decodes
            return remote_call(self, [_message_dict(m) for m in messages], call, self.separate_thinking).steps()
        prepared = prepare_call(self.engine, self, [_message_dict(m) for m in messages], call)
        return decode_call(self.engine, prepared, self.separate_thinking, self.measure_speedup)

    def _chat_responses(self, call_steps: Generator[CallStep, None, None]) -> ChatResponseGen:
        """The core's steps in, cumulative ``ChatResponse`` items out; the last one has the stats."""
        pending: list[str] = []  # sources of tokens not reported yet
        with closing(call_steps) as steps:
            for step in steps:
                if step.stats is not None:
                    yield self._final(step, pending)
                    return
                assert step.event is not None
                pending.append(step.event.source)
                if step.parsed.visible:
                    yield _response(step.answer, step.parsed, pending)
                    pending = []

    def _final(self, step: CallStep, sources: list[str]) -> ChatResponse:
        """The last response: held-back text, usage for token counters, and the stitch stats."""
        stats = step.stats
        assert stats is not None
        final = _response(step.answer, step.parsed, sources)
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
        return final

    async def _astream(self, messages: Sequence[ChatMessage], options: dict[str, Any]) -> ChatResponseAsyncGen:
        """The core on worker threads; starting (and loading the pair the first time) too."""
        release_openmp_team()  # torch work of the loop's thread (retrieval embeddings) must not throttle the passes
        call_steps = await asyncio.to_thread(self._start, messages, options)
        return _in_worker_threads(self._chat_responses(call_steps))


# ---------------------------------------------------------------------- one request's parsing


def _response(parser: AnswerParser, step: AnswerStep, sources: list[str]) -> ChatResponse:
    """The cumulative response after ``step``, reporting the ``sources`` of its new tokens."""
    blocks: list[Any] = [ThinkingBlock(content=parser.reasoning)] if parser.reasoning else []
    blocks.append(TextBlock(text=parser.content))
    blocks += [ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=c.arguments) for c in parser.tool_calls]
    extra: dict[str, Any] = {"token_sources": list(sources)}
    if step.reasoning:
        extra["thinking_delta"] = step.reasoning
    invalid = [{"id": c.id, "name": c.name, "raw": c.raw, "error": c.error} for c in parser.invalid_tool_calls]
    message_extra: dict[str, Any] = {"invalid_tool_calls": invalid} if invalid else {}
    if parser.tool_calls:  # where llama-index-core's streaming structured output looks for calls
        message_extra["tool_calls"] = [_openai_call(call) for call in parser.tool_calls]
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=message_extra),
        delta=step.content,
        additional_kwargs=extra,
    )


def _openai_call(call: ToolCall) -> dict[str, Any]:
    """A call in OpenAI's form (arguments as JSON text), as other LlamaIndex integrations keep it."""
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}


# ---------------------------------------------------------------------- LlamaIndex -> prompt


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    """A LlamaIndex message as an OpenAI-style dict (``prompt`` renders it)."""
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
            parts.append({"type": block.block_type})  # prompt skips thinking, rejects media by name
    # OpenAI-style calls kept by other integrations (as dicts or as SDK objects), and by this one next to
    # its ToolCallBlocks: a call is rendered once per id
    seen = {call["id"] for call in calls if call["id"]}
    for kept in message.additional_kwargs.get("tool_calls") or ():
        kept = kept.model_dump() if hasattr(kept, "model_dump") else kept
        if not kept.get("id") or kept["id"] not in seen:
            calls.append(kept)
            seen.add(kept.get("id"))
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
