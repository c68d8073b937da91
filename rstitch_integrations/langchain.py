"""``ChatRStitch``: R-Stitch stitched decoding as a LangChain chat model.

The request itself is the shared core's (``rstitch_integrations.core``: options, ``prepare_call``,
``decode_call``); this module converts LangChain messages in and the core's steps out. One private
generator (``_chunks``) turns those steps into ``ChatGenerationChunk``s;
``_stream`` only adds callbacks, ``_generate`` adds the chunks up, and the async paths drive the
same generator from a worker thread so that the event loop never waits on a forward pass.

Every token chunk says which model wrote its tokens (``response_metadata["token_sources"]``) and
how unsure that model was (``response_metadata["token_entropies"]``), as lists so that adding
chunks concatenates them. The last chunk carries the finish reason, the model name and the
request's stitch stats (``response_metadata["stitch"]``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from contextlib import aclosing, closing
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_openai_messages
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import PydanticToolsParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from rstitch_engine import InvalidSettingError, StitchEngine, StitchStats, TokenEvent, release_openmp_team

from .answer_parsing import THINK_OPEN, AnswerStep
from .tool_calls import InvalidToolCall, ParsedCall, ToolCall
from .constrained import check_tool_choice, tool_choice_name
from .core import CallStep, PreparedCall, StitchOptions, decode_call, prepare_call
from .remote import remote_call

_IGNORED_CALL_OPTIONS = ("ls_structured_output_format", "stream")
"""Keyword arguments LangChain itself passes through to the model; they change nothing here."""
_NOT_IN_CACHE_KEY = ("timeout", "quality", "api_key")
"""Options left out of the cache key: ``timeout`` bounds the time only; ``quality`` goes in resolved (``preset``);
``api_key`` is a secret and changes no answer (``base_url``, the server, does go in)."""


class ChatRStitch(StitchOptions, BaseChatModel):
    """A chat model whose answer a small and a large model write together (R-Stitch).

    The SLM decodes; where its normalised next-token entropy is above tau its token is discarded
    and the LLM decodes until it is confident. By default (``quality='auto'``) a call runs what the
    pair's calibration profile proves faithful to the LLM alone, else the LLM alone with prompt
    lookup; ``response_metadata["stitch"]["policy"]`` says which ran and why. Weights load on first use and are shared
    by every instance using the same pair. The options it shares with ``RStitchLLM`` (pair,
    threshold, router, sampling, ``max_tokens``, ``stop``, ``constrained``, ...) are declared once,
    in ``rstitch_integrations.core.StitchOptions``.

    Example:
        .. code-block:: python

            from rstitch_integrations.langchain import ChatRStitch

            chat = ChatRStitch(max_tokens=64)
            reply = chat.invoke("What is the capital of France?")
            reply.response_metadata["stitch"]["speedup"]
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    separate_reasoning: bool = True
    """Move ``<think>...</think>`` text to ``additional_kwargs["reasoning_content"]``; False keeps it in content."""
    streaming: bool = False
    """Route ``invoke`` through the streaming path (LangChain's standard switch)."""
    stream_usage: bool = True
    """Put token usage on streamed chunks (LangChain's standard switch; a call may set ``stream_usage``).
    ``invoke`` results always carry usage."""
    engine: StitchEngine | None = Field(default=None, exclude=True)
    """A ready engine to use instead of loading ``llm``/``slm`` (e.g. a pair loaded from custom ModelSpecs)."""

    _loaded: StitchEngine | None = PrivateAttr(default=None)

    # ------------------------------------------------------------------ LangChain identity

    @property
    def _llm_type(self) -> str:
        return "rstitch-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        """Every option that can change an answer (LangChain's cache key is built from these and the call's
        options): all shared options but ``timeout``, the quality preset calls resolve to, the adapter's
        own output options, and a given engine's identity (its pair is not named by ``llm``/``slm``)."""
        options = {name: getattr(self, name) for name in StitchOptions.model_fields if name not in _NOT_IN_CACHE_KEY}
        options["option_stop"] = options.pop("stop")  # LangChain writes the call's stop over the key's "stop"
        return {"model_name": self.model_name, **options, "quality": self.preset,
                "separate_reasoning": self.separate_reasoning, "output_version": self.output_version,
                "engine": None if self.engine is None else f"{type(self.engine).__name__}@{id(self.engine):x}"}

    def _convert_cached_generations(self, cache_val: list[Any]) -> list[ChatGeneration]:
        """A cache hit, said so: ``response_metadata["cache_hit"]`` is True and the stitch stats of the call
        that was cached move to ``"cached_stitch"``, so cost handlers reading ``"stitch"`` do not count them twice.

        (LangChain's hook for cached generations, run on every hit of ``set_llm_cache`` or ``cache=``.)
        """
        hits = []
        for generation in super()._convert_cached_generations(cache_val):
            metadata = dict(generation.message.response_metadata)
            metadata["cache_hit"] = True
            if "stitch" in metadata:
                metadata["cached_stitch"] = metadata.pop("stitch")
            message = generation.message.model_copy(update={"response_metadata": metadata})
            hits.append(ChatGeneration(message=message, generation_info=generation.generation_info))
        return hits

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="rstitch",
            ls_model_name=kwargs["model"] if isinstance(kwargs.get("model"), str) else self.model_name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stops := [*(self.stop or ()), *(stop or ())]:
            params["ls_stop"] = stops
        return params

    def _resolve_model_profile(self) -> ModelProfile | None:
        """What this pair supports, from its config and chat template (no weights are loaded).

        Tool calls and structured output work for any pair: with ``constrained`` they are decoded
        under a grammar, without it parsed from the ``<tool_call>`` format the prompt asks for.
        Tool calls are not streamed in pieces (``tool_call_streaming=False``): each arrives whole, in
        the chunk of the token that closes it. ``structured_output=True`` makes LangChain's agents ask
        for the answer format natively (``response_format`` next to the tools; see ``bind_tools``).
        Reasoning output is there when the chat template knows ``<think>`` spans.
        """
        window, template = self.pair_window_and_template(self.engine)
        profile = ModelProfile(
            text_inputs=True, image_inputs=False, audio_inputs=False, video_inputs=False, pdf_inputs=False,
            text_outputs=True, image_outputs=False, audio_outputs=False, video_outputs=False,
            tool_calling=True, tool_choice=True, tool_call_streaming=False, structured_output=True,
            reasoning_output=THINK_OPEN in (template or ""), open_weights=True,
        )
        if window is not None:
            profile["max_input_tokens"] = window
        return profile

    # ------------------------------------------------------------------ the engine and a request

    def _engine(self) -> StitchEngine:
        """The given engine, or the shared one for this pair (loaded on first use)."""
        if self.engine is not None:
            return self.engine
        if self._loaded is None:
            self._loaded = self.load_engine()
        return self._loaded

    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any]) -> PreparedCall:
        """Validate the call and render the prompt (no forward pass yet)."""
        return prepare_call(self._engine(), self, convert_to_openai_messages(messages, text_format="string"),
                            _call_options(stop, kwargs))

    def _start(self, messages: list[BaseMessage], stop: list[str] | None,
               kwargs: Mapping[str, Any]) -> tuple[int, Generator[CallStep, None, None]]:
        """(prompt tokens, the call's steps): decoded here, or by the server at ``base_url`` (remote mode)."""
        if self.base_url is not None:
            remote = remote_call(self, convert_to_openai_messages(messages, text_format="string"),
                                 _call_options(stop, kwargs), self.separate_reasoning)
            return remote.prompt_tokens, remote.steps()
        call = self._prepare(messages, stop, kwargs)
        return len(call.prompt_ids), decode_call(self._engine(), call, self.separate_reasoning, self.measure_speedup)

    # ------------------------------------------------------------------ the core generator

    def _chunks(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any], streamed: bool = True
    ) -> Generator[ChatGenerationChunk, None, None]:
        """The one place the core's steps become chunks; closing it early closes the engine stream.

        ``streamed``: the chunks go to a stream consumer, so ``stream_usage`` (the call's, else the
        field) decides whether they carry usage; chunks added up into an ``invoke`` result always do.
        """
        options = dict(kwargs)
        with_usage = bool(options.pop("stream_usage", self.stream_usage)) or not streamed
        for chunk in self._usage_chunks(messages, stop, options):
            if not with_usage:
                chunk.message.usage_metadata = None  # type: ignore[attr-defined]
            yield chunk

    def _usage_chunks(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> Generator[ChatGenerationChunk, None, None]:
        input_tokens, call_steps = self._start(messages, stop, kwargs)
        call_index = 0  # input tokens go on the first chunk only
        with closing(call_steps) as steps:
            for step in steps:
                if step.stats is not None:
                    yield _last_chunk(step.parsed, step.stats, self.model_name, call_index, input_tokens)
                    return
                assert step.event is not None
                yield _token_chunk(step.event, step.parsed, call_index, input_tokens, step.in_reasoning)
                input_tokens, call_index = 0, call_index + len(step.parsed.calls)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        return self._reported(self._chunks(messages, stop, kwargs), run_manager)

    @staticmethod
    def _reported(
        chunks: Iterator[ChatGenerationChunk], run_manager: CallbackManagerForLLMRun | None
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in chunks:
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return _result(list(self._reported(self._chunks(messages, stop, kwargs, streamed=False), run_manager)))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # closed here, not left to the loop's async-generator finaliser: a consumer that stops early frees the request now
        async with aclosing(self._achunks(self._chunks(messages, stop, kwargs), run_manager)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _achunks(
        self, chunks: Generator[ChatGenerationChunk, None, None], run_manager: AsyncCallbackManagerForLLMRun | None
    ) -> AsyncIterator[ChatGenerationChunk]:
        """``chunks`` driven from worker threads (nothing runs until the first ``next``), with callbacks."""
        release_openmp_team()  # torch work of the loop's thread (retrieval embeddings) must not throttle the passes
        done = object()
        step: asyncio.Future | None = None  # the worker thread's current next(chunks)
        try:
            while True:
                step = asyncio.ensure_future(asyncio.to_thread(next, chunks, done))
                chunk = await asyncio.shield(step)  # cancelling the consumer cannot stop a thread mid-token
                if chunk is done:
                    break
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            if step is not None and not step.done():
                await asyncio.wait([step])  # let the token in flight finish: a running generator cannot be closed
            await asyncio.to_thread(chunks.close)  # frees the request even when the consumer stopped early

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = self._chunks(messages, stop, kwargs, streamed=False)
        return _result([chunk async for chunk in self._achunks(chunks, run_manager)])

    # ------------------------------------------------------------------ tokens

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the pair's tokenizer."""
        return self._engine().encode(text) if text else []

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Exact prompt length: the messages (and tools) rendered through the chat template."""
        options = {"tools": [convert_to_openai_tool(t) for t in tools]} if tools else {}
        return len(self._prepare(messages, None, options).prompt_ids)

    # ------------------------------------------------------------------ tools and structured output

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: dict | str | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer tools; ``tool_choice`` 'auto'/None, 'none', 'any'/'required'/True, or a tool name forces a call.

        With ``constrained`` (the default) the answer is decoded under a grammar: every
        ``<tool_call>`` block the model opens is a call to a bound tool with schema-valid arguments,
        and a forced choice makes the answer exactly one such call (``parallel_tool_calls=True`` with
        'any': up to one call per tool). A forced call's opening is written for the model, so it only
        chooses the tool (for 'any') and the arguments.

        ``response_format`` (a JSON schema, as LangChain's agents pass it with ``ProviderStrategy``) next
        to tools: with an automatic choice the answer is either one call or the final answer in that
        format. ``strict`` is accepted and changes nothing: the grammar always holds calls to the schema.
        With ``tool_policy='until_result'`` an automatic choice requires a call until a tool result is in
        the conversation, then asks for the answer.
        """
        kwargs.pop("strict", None)
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        choice = tool_choice_name(tool_choice)
        check_tool_choice(formatted, choice)  # at bind time, not at the first call
        return super().bind(tools=formatted, tool_choice=choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Answers parsed into ``schema``: through a forced tool call, or a JSON answer (schema or free JSON).

        ``strict`` is accepted for compatibility; parsing is always strict JSON.
        """
        if kwargs:
            raise InvalidSettingError(f"unsupported arguments {sorted(kwargs)}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        trace = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        if method == "function_calling":
            if schema is None:
                raise InvalidSettingError("method='function_calling' needs a schema")
            name = convert_to_openai_tool(schema)["function"]["name"]
            model = self.bind_tools([schema], tool_choice=name, ls_structured_output_format=trace)
            parser: Runnable = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_pydantic else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            if method == "json_schema" and schema is None:
                raise InvalidSettingError("method='json_schema' needs a schema")
            # json_mode with a schema: the answer is parsed into the schema, so the grammar holds it to the schema too
            response_format: dict[str, Any] = (
                {"type": "json_object"} if schema is None
                else {"type": "json_schema", "schema": convert_to_json_schema(schema)}  # type: ignore[arg-type]
            )
            model = self.bind(response_format=response_format, ls_structured_output_format=trace)
            parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()  # type: ignore[arg-type]
        else:
            raise InvalidSettingError(f"method must be function_calling, json_schema or json_mode, got {method!r}")
        if not include_raw:
            return model | parser
        with_parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        without = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=model) | with_parsed.with_fallbacks([without], exception_key="parsing_error")


# ---------------------------------------------------------------------- chunk building


def _tool_call_chunks(calls: Sequence[ParsedCall], first_index: int) -> list[Any]:
    """Completed calls as tool_call_chunks: valid ones with JSON arguments, invalid ones with the block's text.

    The block's text starts with ``<tool_call>``, so LangChain's lenient partial-JSON parsing of
    merged chunks cannot mistake a malformed call for a valid one.
    """
    return [
        tool_call_chunk(name=call.name, args=json.dumps(call.arguments), id=call.id, index=first_index + i)
        if isinstance(call, ToolCall)
        else tool_call_chunk(name=call.name, args=call.text, id=call.id, index=first_index + i)
        for i, call in enumerate(calls)
    ]


def _message_chunk(parsed: AnswerStep, call_index: int, **fields: Any) -> AIMessageChunk:
    extra = {"reasoning_content": parsed.reasoning} if parsed.reasoning else {}
    return AIMessageChunk(
        content=parsed.content,
        additional_kwargs=extra,
        tool_call_chunks=_tool_call_chunks(parsed.calls, call_index),
        **fields,
    )


def _token_chunk(
    event: TokenEvent, parsed: AnswerStep, call_index: int, input_tokens: int, reasoning_token: bool
) -> ChatGenerationChunk:
    """One kept token: its text (split), usage and attribution."""
    usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": 1, "total_tokens": input_tokens + 1}
    if reasoning_token:
        usage["output_token_details"] = {"reasoning": 1}
    errors = {call.id: call.error for call in parsed.calls if isinstance(call, InvalidToolCall)}
    metadata: dict[str, Any] = {"token_sources": [event.source], "token_entropies": [event.entropy]}
    if errors:  # streamed chunks merge into invalid_tool_calls without a reason: it travels here
        metadata["tool_call_errors"] = errors
    message = _message_chunk(parsed, call_index, usage_metadata=usage, response_metadata=metadata)
    return ChatGenerationChunk(message=message, generation_info={"tool_call_errors": errors} if errors else None)


def _last_chunk(
    parsed: AnswerStep, stats: StitchStats, model_name: str, call_index: int, input_tokens: int
) -> ChatGenerationChunk:
    """Held-back text, the finish reason, the model name and the request's stitch stats."""
    metadata = {
        "finish_reason": stats.finish_reason,
        "model_name": model_name,
        "model_provider": "rstitch",
        "stitch": stats.to_dict(),
        "token_sources": [],
        "token_entropies": [],
    }
    errors = {call.id: call.error for call in parsed.calls if isinstance(call, InvalidToolCall)}
    if errors:
        metadata["tool_call_errors"] = errors
    usage = {"input_tokens": input_tokens, "output_tokens": 0, "total_tokens": input_tokens}
    message = _message_chunk(parsed, call_index, usage_metadata=usage, response_metadata=metadata,
                             chunk_position="last")
    info: dict[str, Any] = {"finish_reason": stats.finish_reason}
    if errors:
        info["tool_call_errors"] = errors
    return ChatGenerationChunk(message=message, generation_info=info)


def _result(chunks: list[ChatGenerationChunk]) -> ChatResult:
    """The chunks added up into one message; tool calls classified strictly (malformed: invalid, with the reason)."""
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    merged = total.message
    errors = (total.generation_info or {}).get("tool_call_errors", {})
    calls, invalid = [], []
    for piece in merged.tool_call_chunks:  # type: ignore[attr-defined]
        if piece["id"] in errors:
            invalid.append(invalid_tool_call(name=piece["name"], args=piece["args"], id=piece["id"],
                                             error=errors[piece["id"]]))
        else:
            calls.append(tool_call(name=piece["name"] or "", args=json.loads(piece["args"] or "{}"), id=piece["id"]))
    message = AIMessage(
        content=merged.content,
        additional_kwargs=merged.additional_kwargs,
        response_metadata=merged.response_metadata,
        usage_metadata=merged.usage_metadata,  # type: ignore[attr-defined]
        tool_calls=calls,
        invalid_tool_calls=invalid,
        id=merged.id,
    )
    info = {key: value for key, value in (total.generation_info or {}).items() if key != "tool_call_errors"}
    return ChatResult(generations=[ChatGeneration(message=message, generation_info=info or None)])


# ---------------------------------------------------------------------- small helpers


def _call_options(stop: list[str] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A call's options from LangChain's keyword arguments and stop list."""
    call = {key: value for key, value in kwargs.items() if key not in _IGNORED_CALL_OPTIONS}
    if stop:
        call["stop"] = [*(call.get("stop") or ()), *stop]
    return call


# ---------------------------------------------------------------------- reaching the model by name

PROVIDER = "rstitch"
"""The provider name in ``"rstitch:<llm>"`` model strings."""


def init_chat_model(model: str, *, model_provider: str | None = None, **kwargs: Any) -> BaseChatModel:
    """``langchain.chat_models.init_chat_model`` that also knows rstitch: a drop-in for code that picks
    its chat model by name.

    ``"rstitch:<llm>"``, ``"rstitch:<llm>+<slm>"`` (the form of ``ChatRStitch.model_name``; ``+draft``
    is the default pair's shipped draft) or ``model_provider="rstitch"`` give a ``ChatRStitch`` with
    ``kwargs`` as its options (unknown ones raise); any other model goes to LangChain's own
    ``init_chat_model`` unchanged. LangChain's provider list is closed, so its function cannot be
    taught the name; from a server, ``rstitch serve`` is reached with its OpenAI provider instead
    (``init_chat_model(model, model_provider="openai", base_url=...)``).

    Example:
        .. code-block:: python

            from rstitch_integrations.langchain import init_chat_model

            chat = init_chat_model("rstitch:smollm2-135m-instruct", max_tokens=64, tool_policy="until_result")
    """
    name = model
    if model_provider is None and model.startswith(f"{PROVIDER}:"):
        model_provider, name = PROVIDER, model.split(":", 1)[1]
    if model_provider != PROVIDER:
        from langchain.chat_models import init_chat_model as langchain_init_chat_model

        return langchain_init_chat_model(model, model_provider=model_provider, **kwargs)
    llm, _, slm = name.partition("+")
    if not llm:
        raise InvalidSettingError(f"an rstitch model name is 'rstitch:<llm>' or 'rstitch:<llm>+<slm>', got {model!r}")
    pair = {"llm": llm} if not slm or slm == "draft" else {"llm": llm, "slm": slm}
    return ChatRStitch(**pair, **kwargs)
