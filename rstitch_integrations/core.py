"""The request core both adapters share: options, a call's preparation, and its decoding into parsed steps.

Framework-free (no LangChain or LlamaIndex import). ``ChatRStitch`` and ``RStitchLLM`` inherit
``StitchOptions`` (the fields they share, validated once), turn their framework's messages into
OpenAI-style dicts, call ``prepare_call`` and iterate ``decode_call``; they only convert what comes
out (``CallStep``) into chunks or responses.

* ``prepare_call``: call options checked, ``GenerationSettings`` and routing built, tools and the
  answer shape set up (``constrained``), the prompt rendered through the chat template and encoded,
  a forced opening appended. No forward pass yet, so bad input raises before any work.
* ``decode_call``: the engine's token events, each with what it made final in the answer (content,
  reasoning, completed tool calls), then one last step with the held-back rest and the stats.
  Closing the generator early closes the engine stream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rstitch_engine import (
    DEFAULT_AGREEMENT_TARGET,
    DEFAULT_LLM,
    DEFAULT_THRESHOLD,
    ExecutionConfig,
    GenerationSettings,
    InvalidSettingError,
    Quality,
    RouterName,
    Routing,
    StitchEngine,
    resolve_policy,
    StitchStats,
    StitchStream,
    TokenEvent,
    shared_engine,
)
from rstitch_engine.decoding.engine import DEFAULT_LLM_WAIT_STEPS, DEFAULT_MAX_BATCH_SIZE, validate_batching
from rstitch_engine.models.facts import pair_facts
from rstitch_engine.models.loading import Backend

from .answer_parsing import AnswerParser, AnswerStep
from .prompt import TemplateSupport, normalise_tool_schema, to_template_prompt
from .tool_calls import TOOL_CALL_OPEN, call_key
from .constrained import (
    ANSWER,
    ToolPolicy,
    answer_shape,
    policy_tool_choice,
    react_shape,
    tool_choice_name,
    with_json_instruction,
)

CALL_OPTIONS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "threshold", "quality", "tools",
                "tool_choice", "parallel_tool_calls", "response_format", "constrained", "prompt_lookup_tokens",
                "timeout", "tool_policy", "agreement_target", "token_entropy")
"""Keyword arguments one call may set (each overrides the option of the same name for that call)."""

REFUSED_OPTIONS = ("max_retries",)
"""Constructor options of other chat models that mean nothing here: rstitch retries no request (a failed local
call fails the same way again; remote mode's client does not retry either), so a value is refused, not dropped
(``StitchOptions._refuse_remote_only``; None is accepted and means nothing). ``api_key`` is accepted with
``base_url`` only (remote mode)."""

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class StitchOptions(BaseModel):
    """The options of a stitched chat model, shared by the LangChain and LlamaIndex adapters."""

    model_config = ConfigDict(populate_by_name=True)

    llm: str = Field(default=DEFAULT_LLM, alias="model",
                     description="The large model: hub id, local folder, .gguf file or built-in alias (also `model`).")
    slm: str | None = Field(default=None, description=(
        "The small model (same tokenizer, or a draft folder from `rstitch distill`); None with the default LLM: "
        "its shipped draft."))
    quality: Quality | None = Field(default=None, description=(
        "A preset: 'auto' (what the pair's calibration profile proves faithful to the LLM alone, else the LLM alone "
        "with prompt lookup), 'exact' (the LLM alone: its own answer, sped up by prompt lookup only), or 'balanced' / "
        "'fast' (R-Stitch at a fixed tau: a measured trade-off). None: 'auto', unless router or threshold is given. "
        "A call may set its own quality or threshold."))
    threshold: float | None = Field(default=None, description=(
        f"R-Stitch's tau instead of a preset: the SLM hands a position to the LLM when its normalised entropy is "
        f"above this (with router='entropy' or no router; None there means {DEFAULT_THRESHOLD})."))
    router: RouterName | None = Field(default=None, description=(
        "Instead of a preset: 'entropy' (R-Stitch at threshold), 'learned' (R-Stitch+: the default pair's shipped "
        "router unless router_path is set; it keeps its trained tau), or 'slm' / 'llm' for one model alone."))
    router_path: str | None = Field(default=None, description=(
        "Folder of a learned router (`rstitch train-router --out`), used with router='learned'."))
    agreement_target: float | None = Field(default=None, description=(
        f"With 'auto': the agreement with the LLM alone a stitched configuration must have shown in the pair's "
        f"profile (None: {DEFAULT_AGREEMENT_TARGET}). A call may set its own."))
    temperature: float = Field(default=0.0, description="Sampling temperature; 0 decodes greedily.")
    top_p: float = Field(default=1.0, description="Nucleus sampling mass in (0, 1].")
    top_k: int = Field(default=0, description="Keep the k most likely tokens before sampling; 0 keeps all.")
    max_tokens: int = Field(default=256, description="Most output tokens one call may produce.")
    stop: list[str] | None = Field(default=None, description=(
        "Strings that end the answer (trimmed from it); a call's `stop` adds to these."))
    seed: int | None = Field(default=None, description="Seed for sampling; equal seeds give equal answers.")
    prompt_lookup_tokens: int | None = Field(default=None, description=(
        "Prompt lookup: check up to this many tokens copied from the prompt in each pass (retrieved passages, "
        "earlier turns: same answer, fewer passes; greedy only); 0: off; None: on for quality='exact' and "
        "router='llm', off for stitching."))
    token_entropy: bool = Field(default=False, description=(
        "Report every token's normalised entropy (`token_entropies`) also when the LLM writes alone (`quality='exact'`, "
        "router='llm', or `auto` choosing the LLM alone), where no router reads it and it is otherwise None; costs one "
        "pass over the vocabulary's logits per token."))
    backend: Backend = Field(default="transformers", description=(
        "The inference library of both models: 'transformers', or 'llama.cpp' (GGUF files through llama-cpp-python, "
        "`pip install 'rstitch[llamacpp]'`; the default pair runs on it as is: the LLM's GGUF and the shipped draft "
        "exported to GGUF once)."))
    device: str = Field(default="auto", description="'cpu', 'cuda', 'cuda:N' or 'auto'.")
    dtype: Dtype = Field(default="auto", description=(
        "Weight dtype; 'auto' is bfloat16 where the device computes it natively (CUDA, AVX512-BF16/AMX CPUs), "
        "else float32."))
    kv_cache: Literal["dynamic", "static"] | None = Field(default=None, description=(
        "KV cache backend of both models: 'dynamic' (default) or 'static' (preallocated, pooled); "
        "None: static when compile is on."))
    compile: bool = Field(default=False, description=(
        "Compile the decode and catch-up steps (CUDA graphs on CUDA; compiled at load time). Needs the static cache."))
    cache_tokens: int | None = Field(default=None, description=(
        "Capacity of every static KV cache (prompt + max_tokens must fit); None: sized per call (4096 compiled)."))
    max_batch_size: int = Field(default=DEFAULT_MAX_BATCH_SIZE, description=(
        "Most concurrent requests (batch(), abatch(), threads, async queries) that share one forward pass; "
        "1 runs them one by one."))
    llm_wait_steps: int = Field(default=DEFAULT_LLM_WAIT_STEPS, description=(
        "Most steps a request that needs the LLM waits for other requests to join the LLM's pass while "
        "others decode on the SLM (same tokens; 0: the LLM's pass runs at once)."))
    measure_speedup: bool = Field(default=False, description=(
        "Also time the LLM alone on each prompt (doubles the work): the speedup is measured, not estimated."))
    constrained: bool = Field(default=True, description=(
        "Decode tool calls and structured output under a grammar (always well-formed, schema-valid); "
        "False: free generation, parsed after."))
    timeout: float | None = Field(default=None, description=(
        "Seconds one call may take before it raises TimeoutError; None: no limit. A call may set its own."))
    context_window: int | None = Field(default=None, description=(
        "Most tokens a call may use, prompt plus max_tokens (a call over it raises InvalidSettingError before "
        "any work); None: the pair's own window. LlamaIndex sizes its prompts to it (metadata.context_window)."))
    tool_policy: ToolPolicy = Field(default="auto", description=(
        "How a call with tools and no explicit tool_choice picks: 'auto': the model decides each turn; "
        "'until_result': a tool call is required until a tool result follows the latest user message, then "
        "the model answers (text, or the response format) without tools, so it cannot repeat a call. "
        "For small pairs that do not choose tools on their own (the default 135M pair)."))
    base_url: str | None = Field(default=None, description=(
        "Remote mode: the URL of an `rstitch serve` server (e.g. http://127.0.0.1:8000/v1); no weights load here, "
        "and calls go to the server's pair (rstitch_integrations.remote)."))
    api_key: str | None = Field(default=None, description="Remote mode: the server's API key (`rstitch serve --api-key`).")

    @model_validator(mode="before")
    @classmethod
    def _refuse_remote_only(cls, values: Any) -> Any:
        """The one place options of remote chat models are refused: ``max_retries`` always, ``api_key`` without
        ``base_url`` (local mode has no key to send)."""
        if not isinstance(values, dict):
            return values
        given = [key for key in REFUSED_OPTIONS if values.get(key) is not None]
        if values.get("api_key") is not None and values.get("base_url") is None:
            given.append("api_key")
        if given:
            raise InvalidSettingError(
                f"{', '.join(sorted(given))}: options of remote chat models; rstitch decodes locally, with no key to "
                "send and no request to retry (api_key goes with base_url, an `rstitch serve` server). Remove them."
            )
        return {key: value for key, value in values.items() if key not in REFUSED_OPTIONS}

    @model_validator(mode="after")
    def _check_options(self) -> StitchOptions:
        if self.preset is None:
            resolve_policy(self.routing(), None)  # a named router loads now: a missing learned router raises here
        self.request_settings({})  # GenerationSettings too
        ExecutionConfig(kv_cache=self.kv_cache, compile=self.compile, cache_tokens=self.cache_tokens)  # raises if invalid
        validate_batching(self.max_batch_size, self.llm_wait_steps)
        validate_timeout(self.timeout)
        if self.context_window is not None and not self.context_window > 0:
            raise InvalidSettingError(f"context_window must be a token count > 0 or None, got {self.context_window!r}")
        return self

    def load_engine(self) -> StitchEngine:
        """The shared engine of this pair, device, dtype, execution and batching (loaded on first use;
        engines that differ only in batching share the loaded pair)."""
        return shared_engine(self.llm, self.slm, self.device, self.dtype, kv_cache=self.kv_cache,
                             compile=self.compile, cache_tokens=self.cache_tokens,
                             max_batch_size=self.max_batch_size, llm_wait_steps=self.llm_wait_steps,
                             backend=self.backend)

    @property
    def model_name(self) -> str:
        """'rstitch:<llm>+<slm>' (the SLM part is 'draft' for the default pair's shipped draft), with '@llama.cpp'
        on that backend."""
        on_backend = "" if self.backend == "transformers" else f"@{self.backend}"
        return f"rstitch:{self.llm}+{self.slm or 'draft'}{on_backend}"

    def request_settings(self, options: Mapping[str, Any]) -> GenerationSettings:
        """This call's settings: the options, with the call's overrides (a call's stops add to these)."""
        stops = [*(self.stop or ()), *_as_list(options.get("stop"))]
        return GenerationSettings(
            max_new_tokens=options.get("max_tokens", self.max_tokens),
            temperature=options.get("temperature", self.temperature),
            top_p=options.get("top_p", self.top_p),
            top_k=options.get("top_k", self.top_k),
            seed=options.get("seed", self.seed),
            stop=tuple(dict.fromkeys(stops)),
            prompt_lookup_tokens=options.get("prompt_lookup_tokens", self.prompt_lookup_tokens),
            token_entropy=options.get("token_entropy", self.token_entropy),
        )

    def routing(self) -> Routing:
        """The routing these options ask for (``rstitch_engine.Routing``: one rule for engine, CLI and adapters)."""
        return Routing(quality=self.quality, router=self.router, threshold=self.threshold, router_path=self.router_path,
                       agreement_target=self.agreement_target)

    @property
    def preset(self) -> Quality | None:
        """The quality preset of calls that set none: ``quality``, or 'auto' when neither it nor a
        router/threshold was given; None when the options name a router or threshold."""
        return self.routing().preset

    def request_routing(self, options: Mapping[str, Any]) -> Routing:
        """This call's routing: the options', with a call's ``quality``, ``threshold`` or ``agreement_target``."""
        return self.routing().with_call(options.get("quality"), options.get("threshold"), options.get("agreement_target"))

    def pair_window_and_template(self, engine: StitchEngine | None) -> tuple[int | None, str | None]:
        """The pair's context window and the LLM's chat template: from ``engine`` when one is loaded,
        else from the configuration files (``rstitch_engine.models.facts``; no weights are loaded)."""
        if engine is None:
            facts = pair_facts(self.llm, self.slm)
            return facts.context_window, facts.llm.chat_template
        windows = [w for w in (engine.pair.slm.context_window, engine.pair.llm.context_window) if w is not None]
        return (min(windows) if windows else None), getattr(engine.pair.tokenizer, "chat_template", None)


@dataclass(frozen=True)
class PreparedCall:
    """Everything one call decodes with, prepared before the first forward pass."""

    prompt_ids: list[int]
    settings: GenerationSettings
    routing: Routing
    prefix: str
    """Answer text put in the model's mouth (a forced call's opening, a JSON brace): parsed, not counted."""
    tool_names: frozenset[str] | None
    """Bound tools (None: no tools; ``<tool_call>`` text stays content)."""
    forced_call: bool
    """The answer is one tool call, ended by its closing tag as a stop string."""
    deadline: float | None
    """``time.monotonic()`` past which the call raises TimeoutError."""
    earlier_calls: frozenset[str] = frozenset()
    """``call_key``s of the calls made since the latest user message: the answer repeating one is an invalid call."""


def prepare_call(
    engine: StitchEngine, options: StitchOptions, messages: Sequence[Mapping[str, Any]], call: Mapping[str, Any]
) -> PreparedCall:
    """Validate a call (``call``: its keyword options) and render its prompt; ``messages`` are OpenAI-style dicts.

    Raises ``InvalidSettingError`` for an unknown option, a bad tool schema or choice, a schema the
    grammar engine cannot compile, or a message the template cannot render.
    """
    unknown = sorted(set(call) - set(CALL_OPTIONS))
    if unknown:
        raise InvalidSettingError(f"unknown call options {unknown}; a call accepts {', '.join(CALL_OPTIONS)}")
    settings, routing = options.request_settings(call), options.request_routing(call)
    timeout = validate_timeout(call.get("timeout", options.timeout))
    tool_choice = policy_tool_choice(tool_choice_name(call.get("tool_choice")), call.get("tool_policy", options.tool_policy),
                                     messages, bool(call.get("tools")))
    answer_now = tool_choice == ANSWER  # the policy's last turn: tools off, the answer ends where a call would open
    if answer_now:
        tool_choice = "none"
    react = None  # a ReAct agent binds no tools: under the policy, its text protocol is the shape
    if call.get("tool_policy", options.tool_policy) == "until_result" and not call.get("tools"):
        react = react_shape(messages, call.get("constrained", options.constrained))
    try:
        tools = [normalise_tool_schema(t) for t in call.get("tools") or ()] if tool_choice != "none" else []
        shape = react or answer_shape(tools, tool_choice, call.get("response_format"),
                                      call.get("constrained", options.constrained),
                                      parallel_calls=bool(call.get("parallel_tool_calls", False)))
        prompt = to_template_prompt(
            messages, tools, support=TemplateSupport.of(getattr(engine.pair.tokenizer, "chat_template", None)),
            tool_choice=tool_choice,
        )
    except ValueError as error:  # the prompt module's one error type: a message or tool it cannot render
        raise InvalidSettingError(str(error)) from error
    stop = (*settings.stop, *shape.stop, *((TOOL_CALL_OPEN,) if answer_now else ()))
    settings = settings.replace(grammar=shape.grammar, stop=tuple(dict.fromkeys(stop)))
    template_messages = prompt.messages
    if shape.json_answer is not None:
        template_messages = with_json_instruction(template_messages, shape.json_answer)
    ids = engine.encode(template_messages, tools=prompt.tools)
    if shape.prefix:
        ids += engine.pair.tokenizer.encode(shape.prefix, add_special_tokens=False)
    if options.context_window is not None and len(ids) + settings.max_new_tokens > options.context_window:
        raise InvalidSettingError(
            f"the prompt ({len(ids)} tokens) plus max_tokens ({settings.max_new_tokens}) is over context_window "
            f"({options.context_window}); shorten the prompt, lower max_tokens or raise context_window"
        )
    deadline = time.monotonic() + timeout if timeout is not None else None
    tool_names = frozenset(t["function"]["name"] for t in tools) if tools else None
    return PreparedCall(ids, settings, routing, shape.prefix, tool_names, shape.forced_call, deadline,
                        calls_since_user(messages))


@dataclass(frozen=True)
class CallStep:
    """One step of a decoded call: a kept token and what it made final, or (``stats`` set) the end."""

    parsed: AnswerStep
    """Content, reasoning and completed tool calls this step made final."""
    answer: AnswerParser
    """The whole answer so far (running totals: content, reasoning, tool calls, invalid calls)."""
    event: TokenEvent | None = None
    """The kept token (None on the last step)."""
    stats: StitchStats | None = None
    """The call's stats (last step only)."""
    in_reasoning: bool = False
    """The token was inside a ``<think>`` span."""


def decode_call(
    engine: StitchEngine, call: PreparedCall, separate_reasoning: bool, measure_speedup: bool
) -> Generator[CallStep, None, None]:
    """The call's steps: one per kept token, then the last one with the held-back rest and the stats.

    The engine stream starts here (a prompt too long for the context window raises now, not at
    the first step); closing the generator early closes it.
    """
    stream = engine.stream(call.prompt_ids, call.settings, call.routing)
    return _steps(engine, stream, call, separate_reasoning, measure_speedup)


def _steps(
    engine: StitchEngine, stream: StitchStream, call: PreparedCall, separate_reasoning: bool, measure_speedup: bool
) -> Generator[CallStep, None, None]:
    parser = AnswerParser(separate_reasoning, call.tool_names, call.earlier_calls)
    pending = parser.feed(call.prefix)  # the forced prefix is part of the answer
    try:
        for event in stream:
            _check_deadline(call.deadline)
            parsed = pending.then(parser.feed(event.text))
            pending = AnswerStep()
            yield CallStep(parsed, parser, event, in_reasoning=parser.in_reasoning)
        stats = stream.stats
        if measure_speedup:
            stats = stats.with_measured_llm_alone(engine.decode_alone("llm", call.prompt_ids, call.settings))
        rest = parser.finish(close_tool_call=call.forced_call and stats.finish_reason == "stop")  # cut at its stop
        yield CallStep(pending.then(rest), parser, stats=stats)
    finally:
        stream.close()


def calls_since_user(messages: Sequence[Mapping[str, Any]]) -> frozenset[str]:
    """``call_key``s of the assistant's tool calls after the latest user message (OpenAI-style messages)."""
    keys: set[str] = set()
    for message in reversed(messages):
        if message.get("role") == "user":
            break
        for call in message.get("tool_calls") or ():
            function = call.get("function", call)
            arguments = function.get("arguments", function.get("args", {}))
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments or "{}")
                except json.JSONDecodeError:
                    continue  # a malformed earlier call cannot be repeated exactly
            if isinstance(function.get("name"), str):
                keys.add(call_key(function["name"], arguments))
    return frozenset(keys)


def validate_timeout(timeout: Any) -> float | None:
    """``timeout`` if it is None or a number of seconds > 0, else ``InvalidSettingError``."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidSettingError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")
    return float(timeout)


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError("the call ran past its timeout; raise timeout or lower max_tokens")


def _as_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)
