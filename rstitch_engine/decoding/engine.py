"""The public entry points of stitched decoding: ``StitchEngine`` and its streams.

A request's state and its Algorithm 1 step are in ``request`` (``StitchRequest``,
``RequestDecoder``); this module runs those steps through the ``scheduler``, which runs the steps of
all concurrent requests together, each model's rows handed to its runner (``models.runner``).
``max_batch_size=1`` is the same scheduler with one row per step: requests take turns. Which routing
a request runs is decided once, before its first pass (``policy``).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterator, Literal, Mapping, Sequence, Union

from tqdm.auto import tqdm

from ..errors import EmptyPromptError, InvalidSettingError, PromptTooLongError, require_int_at_least
from ..models.cost_model import shipped_cost_model
from ..models.defaults import DEFAULT_LLM, default_slm_for
from ..models.execution import CacheKind, ExecutionConfig
from ..models.loaded import ModelRole
from ..models.loading import Backend, ModelSpec, load_pair
from ..models.openmp import releasing_openmp_team
from ..models.pair import ModelPair
from .alone import AloneResult, decode_alone
from .constraints import GrammarState, GrammarTokenizer
from .request import RequestDecoder, StitchRequest
from .policy import Policy, Quality, Routing, resolve_policy
from .profile import PairProfile, find_profile
from .routers import RouterName
from .routing import Router
from .scheduler import BatchScheduler, Ticket
from .settings import GenerationSettings
from .speedup import LlmCostHistory
from .stats import StitchStats, TokenEvent

DEFAULT_MAX_BATCH_SIZE = 16
"""Concurrent requests one step runs together (more wait their turn, served in rotation)."""
DEFAULT_LLM_WAIT_STEPS = 4
"""Steps an LLM row may wait for company in a batch (``scheduler``: fewer, fuller LLM passes)."""

Message = Mapping[str, Any]
PromptLike = Union[str, Sequence[int], Sequence[Message]]
"""Raw text, token ids, or chat messages (rendered with the LLM's chat template)."""


@dataclass(frozen=True)
class GenerationResult:
    """A finished request: the text, the kept token ids, every token event and the stats."""

    text: str
    token_ids: tuple[int, ...]
    events: tuple[TokenEvent, ...]
    stats: StitchStats

    @property
    def finish_reason(self) -> str:
        return self.stats.finish_reason


class StitchStream(Iterator[TokenEvent]):
    """Token events of one request as they are decided; ``stats`` once the stream is exhausted.

    Abandoning a stream (not iterating it further, ``close()``, or dropping it) is always safe: a
    request owns its caches, and the engine holds no lock between two events. ``close()`` may come
    from another thread while a ``next()`` is running (an asyncio task cancelled while a worker
    thread reads): the request leaves the batch at once and the stream closes when that read returns.
    """

    def __init__(self, core: Generator[TokenEvent, None, StitchStats], request: StitchRequest, policy: Policy,
                 on_close: Callable[[], None] | None = None) -> None:
        self._core = core
        self._stats: StitchStats | None = None
        self._on_close = on_close
        self._reading = threading.RLock()  # a generator cannot be closed while another thread runs it
        self.request = request
        """The request's live state (tokens, caches): for inspection only."""
        self.policy = policy
        """The routing policy this request runs (``policy``): known before the first token."""

    @property
    def prompt_tokens(self) -> int:
        return self.request.prompt_tokens

    def __next__(self) -> TokenEvent:
        with self._reading:
            try:
                return next(self._core)
            except StopIteration as finished:
                if self._stats is None:  # a finished generator raises StopIteration(None) ever after
                    self._stats = finished.value
                raise

    def close(self) -> None:
        """Stop decoding now; the engine is immediately ready for other requests."""
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()  # leave the batch first, so that a read running in another thread ends soon
        with self._reading:
            self._core.close()

    def __del__(self) -> None:
        on_close = getattr(self, "_on_close", None)  # a stream dropped unread leaves the batch too
        if on_close is not None:
            on_close()

    def __enter__(self) -> "StitchStream":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def stats(self) -> StitchStats:
        if self._stats is None:
            raise RuntimeError("stats are available once the stream has been iterated to its end")
        return self._stats


def validate_batching(max_batch_size: object, llm_wait_steps: object) -> None:
    """Raise ``InvalidSettingError`` unless ``max_batch_size`` >= 1 and ``llm_wait_steps`` >= 0 are integers."""
    require_int_at_least("max_batch_size", max_batch_size, 1)
    require_int_at_least("llm_wait_steps", llm_wait_steps, 0)


class StitchEngine:
    """An SLM and an LLM decoding one answer together, token by token.

    Thread-safe, and batched: concurrent requests (threads, asyncio workers, several streams read
    in turn) each keep their own caches and routing, and their steps run together, one batched
    pass per model (``scheduler``), up to ``max_batch_size`` requests a step. Greedy results equal
    those of the same requests run one by one, up to floating-point summation order.
    ``max_batch_size=1`` runs one request's step at a time (requests take turns).
    ``llm_wait_steps`` > 0 lets the LLM's rows of a batch wait up to that many steps for company
    while other requests decode on the SLM (fewer, fuller LLM passes: more throughput where a pass
    costs about the same for one row as for several; same tokens, later LLM tokens).
    Several engines may share one pair (other batching settings, routers or settings): they take
    turns, one forward pass at a time on its models (``ModelPair.pass_lock``).
    """

    def __init__(
        self,
        pair: ModelPair,
        router: Router | None = None,
        settings: GenerationSettings | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        llm_wait_steps: int = DEFAULT_LLM_WAIT_STEPS,
        *,
        routing: Routing | None = None,
        profile: PairProfile | None | Literal["find"] = "find",
    ) -> None:
        validate_batching(max_batch_size, llm_wait_steps)
        if router is not None and routing is not None:
            raise InvalidSettingError("give either a router or a routing, not both")
        self.pair = pair
        self.routing = routing if routing is not None else Routing(router=router)
        """What requests that name no routing of their own run (``policy``; default: the 'auto' preset)."""
        self.profile = find_profile(pair.slm.name, pair.llm.name) if profile == "find" else profile
        """The pair's calibration profile (``profile``; None: not calibrated), which 'auto' chooses from."""
        self.settings = settings if settings is not None else GenerationSettings()
        self.max_batch_size = max_batch_size
        self._forward_lock = pair.pass_lock
        """One pass at a time on the pair's models, shared with every engine built on the same pair."""
        self._retired: list[StitchRequest] = []
        """Ended requests whose static caches go back to their pools before the next pass (``_retire``)."""
        self._retired_lock = threading.Lock()
        self.llm_wait_steps = llm_wait_steps
        self._scheduler = BatchScheduler(max_batch_size, self._forward_lock,
                                         {"slm": pair.slm.runner, "llm": pair.llm.runner},
                                         before_step=self._release_retired, llm_wait_steps=llm_wait_steps)
        self._grammar_tokenizer = GrammarTokenizer(pair.tokenizer, pair.vocab_size, pair.eos_token_ids)
        self._llm_history = LlmCostHistory(model=shipped_cost_model(pair.slm.name, pair.llm.name, pair.llm.device, pair.llm.dtype))
        warm_up_compiled(pair, self.router, self.settings)

    @property
    def router(self) -> Router:
        """The router of the engine's default routing (the policy's, for a request that names none)."""
        return self.policy(warn=False).router

    def policy(self, routing: Routing | None = None, warn: bool = False) -> Policy:
        """The policy a request runs under ``routing`` (None: the engine's), with this pair's profile;
        ``warn`` as ``resolve_policy``'s (requests warn, inspection does not)."""
        return resolve_policy(routing if routing is not None else self.routing, self.profile, warn)

    @classmethod
    def from_pretrained(
        cls,
        llm: str | ModelSpec = DEFAULT_LLM,
        slm: str | ModelSpec | None = None,
        *,
        threshold: float | None = None,
        quality: Quality | None = None,
        router: RouterName | Router | None = None,
        router_path: str | None = None,
        agreement_target: float | None = None,
        device: str = "auto",
        dtype: str = "auto",
        settings: GenerationSettings | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        llm_wait_steps: int = DEFAULT_LLM_WAIT_STEPS,
        kv_cache: CacheKind | None = None,
        compile: bool = False,
        cache_tokens: int | None = None,
        backend: Backend = "transformers",
    ) -> "StitchEngine":
        """Load a pair (hub ids, folders, .gguf files or specs). Requests that name no routing run the
        ``quality`` preset, or ``router``/``threshold``, or with none of them the default preset ('auto':
        what the pair's calibration profile proves faithful, else the LLM alone; ``policy``).

        With no SLM given and the default LLM, the SLM is the draft shipped for it (``DEFAULT_SLM``).
        ``kv_cache``, ``compile`` and ``cache_tokens`` choose how both models' passes run
        (``ExecutionConfig``: 'dynamic' or 'static' KV caches, compiled steps; ``compile=True`` on
        CUDA is the fast path); a spec given with its own ``execution`` keeps it. ``backend``: the inference
        library of both models named by string ('transformers', or 'llama.cpp' for GGUF files, ``ModelSpec.backend``).
        """
        routing = Routing(quality=quality, router=router, threshold=threshold, router_path=router_path,
                          agreement_target=agreement_target)  # validated before any weights load
        execution = ExecutionConfig(kv_cache=kv_cache, compile=compile, cache_tokens=cache_tokens)
        llm_spec = llm if isinstance(llm, ModelSpec) else ModelSpec(llm, device=device, dtype=dtype,  # type: ignore[arg-type]
                                                                     execution=execution, backend=backend)
        if slm is None:
            slm_spec = ModelSpec(default_slm_for(llm_spec.source), device=device, dtype=dtype,  # type: ignore[arg-type]
                                 execution=execution, backend=backend)
        else:
            slm_spec = slm if isinstance(slm, ModelSpec) else ModelSpec(slm, device=device, dtype=dtype,  # type: ignore[arg-type]
                                                                         execution=execution, backend=backend)
        return cls(load_pair(slm_spec, llm_spec), None, settings, max_batch_size, llm_wait_steps, routing=routing)

    # ----------------------------------------------------------------- public entry points

    def encode(self, prompt: PromptLike, tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """Token ids of a prompt: raw text, ids, or chat messages through the chat template."""
        tokenizer = self.pair.tokenizer
        if isinstance(prompt, str):
            ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        elif len(prompt) == 0:
            raise EmptyPromptError("the prompt is empty: give text, token ids or at least one message")
        elif all(isinstance(item, Mapping) for item in prompt):
            ids = self._render_chat(list(prompt), tools)  # type: ignore[arg-type]
        elif all(isinstance(item, int) and not isinstance(item, bool) for item in prompt):
            ids = list(prompt)  # type: ignore[arg-type]
            bad = [i for i in ids if not 0 <= i < self.pair.vocab_size]
            if bad:
                raise InvalidSettingError(f"token ids out of the vocabulary [0, {self.pair.vocab_size}): {bad[:5]}")
        else:
            raise InvalidSettingError("a prompt is a string, a sequence of token ids, or a sequence of message dicts")
        if not ids:
            raise EmptyPromptError("the prompt encodes to no tokens")
        return ids

    def stream(
        self,
        prompt: PromptLike,
        settings: GenerationSettings | None = None,
        router: Router | Routing | None = None,
    ) -> StitchStream:
        """Start a request; all validation happens here, before any forward pass.

        ``router``: a router object, or a ``Routing`` (a quality preset, a named router, a threshold);
        None runs the engine's routing. The stats name the policy that ran and why.
        """
        settings = settings if settings is not None else self.settings
        prompt_ids = self.encode(prompt)
        self._check_fits(len(prompt_ids), settings)
        policy = self.policy(router if isinstance(router, Routing) or router is None else Routing(router=router),
                             warn=True)
        grammar = self._grammar_state(settings)
        request = StitchRequest.start(self.pair, prompt_ids, settings.max_new_tokens)
        decoder = RequestDecoder(self.pair, request, settings, policy, self._llm_history, grammar)
        ticket = self._scheduler.admit(decoder)  # joins the next step, whoever drives it
        return StitchStream(self._scheduled(ticket), request, policy, on_close=lambda: self._scheduler.leave(ticket))

    def generate_batch(
        self,
        prompts: Sequence[PromptLike],
        settings: GenerationSettings | None = None,
        router: Router | Routing | None = None,
    ) -> list[GenerationResult]:
        """Run several requests together to their ends; results in the order of ``prompts``.

        Every prompt is validated before any pass, so one bad prompt raises and runs nothing.
        """
        streams: list[StitchStream] = []
        try:
            for prompt in prompts:
                streams.append(self.stream(prompt, settings, router))
        except Exception:
            for stream in streams:
                stream.close()
            raise
        try:
            events = read_in_turn(streams)
        finally:  # a request that raised ends the batch: the others leave it now, not when collected
            for stream in streams:
                stream.close()
        return [_result(tuple(e), s.stats) for e, s in zip(events, streams)]

    def generate(
        self,
        prompt: PromptLike,
        settings: GenerationSettings | None = None,
        router: Router | Routing | None = None,
        measure_speedup: bool = False,
    ) -> GenerationResult:
        """Run a request to the end. ``measure_speedup`` also times the LLM alone on the same prompt."""
        stream = self.stream(prompt, settings, router)
        events = tuple(stream)
        stats = stream.stats
        if measure_speedup:
            alone = self.decode_alone("llm", prompt, settings)
            stats = stats.with_measured_llm_alone(alone)
        return _result(events, stats)

    @releasing_openmp_team  # see ``models.openmp``
    def decode_alone(
        self, role: ModelRole, prompt: PromptLike, settings: GenerationSettings | None = None
    ) -> AloneResult:
        """One model decoding alone with a plain cached loop (the baseline for speedups)."""
        settings = settings if settings is not None else self.settings
        prompt_ids = self.encode(prompt)
        self._check_fits(len(prompt_ids), settings)
        loaded = self.pair.slm if role == "slm" else self.pair.llm
        grammar = self._grammar_state(settings)
        with self._forward_lock:
            self._release_retired()
            return decode_alone(loaded, prompt_ids, settings, self.pair.tokenizer, self.pair.eos_token_ids, grammar)

    # ----------------------------------------------------------------- the loop

    def _scheduled(self, ticket: Ticket) -> Generator[TokenEvent, None, StitchStats]:
        """The request's events as the scheduler's steps decide them (this consumer may drive steps)."""
        try:
            yield from self._scheduler.events(ticket)
        finally:
            self._scheduler.leave(ticket)
            self._retire(ticket.decoder.request)
        decoder = ticket.decoder
        return decoder.stats(time.perf_counter() - decoder.started)

    # ----------------------------------------------------------------- helpers

    def _retire(self, request: StitchRequest) -> None:
        """Queue an ended request's caches for release. Not released here: this may run while a pass
        (another consumer's step, or the garbage collector inside one) still uses them."""
        if request.pools_caches:
            with self._retired_lock:  # a dynamic cache needs no release: the collector takes it with the request
                self._retired.append(request)
            if self._forward_lock.acquire(blocking=False):  # no pass running: release now (else before the next)
                try:
                    self._release_retired()
                finally:
                    self._forward_lock.release()

    def _release_retired(self) -> None:
        """Give retired requests' static caches back to their pools; called with the forward lock held."""
        with self._retired_lock:
            retired, self._retired = self._retired, []
        for request in retired:
            request.release()

    def _grammar_state(self, settings: GenerationSettings) -> GrammarState | None:
        """A fresh state of the settings' grammar (compiled here, so a bad one raises before any pass)."""
        return self._grammar_tokenizer.start(settings.grammar) if settings.grammar is not None else None

    def _check_fits(self, prompt_tokens: int, settings: GenerationSettings) -> None:
        needed = prompt_tokens + settings.max_new_tokens
        for loaded in (self.pair.slm, self.pair.llm):
            window = loaded.context_window
            if window is not None and needed > window:
                raise PromptTooLongError(
                    f"prompt ({prompt_tokens} tokens) + max_new_tokens ({settings.max_new_tokens}) = {needed} "
                    f"exceeds the {loaded.role.upper()}'s context window of {window} tokens"
                    f"{f' ({loaded.name})' if loaded.name else ''}; shorten the prompt or lower max_new_tokens "
                    f"to at most {max(window - prompt_tokens, 0)}"
                )
            if loaded.static_steps is not None:
                loaded.static_steps.capacity_for(needed)  # a fixed static cache too small raises here

    def _render_chat(self, messages: list[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None) -> list[int]:
        tokenizer = self.pair.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidSettingError("this tokenizer has no chat template: pass raw text or token ids instead")
        rendered = tokenizer.apply_chat_template(
            messages, tools=list(tools) if tools else None, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(rendered["input_ids"])


@releasing_openmp_team
def warm_up_compiled(pair: ModelPair, router: Router, settings: GenerationSettings) -> None:
    """Compile and record every bucket's step of each compiled model now, at load time, with a progress line."""
    jobs = []
    for loaded in (pair.slm, pair.llm):
        steps = loaded.static_steps
        if steps is not None and steps.config.compile and not steps.warmed_up:
            hidden = (False, True) if loaded.role == "slm" and router.needs_hidden_state else (False,)
            jobs.append((steps, hidden))
    if not jobs:
        return
    total = sum(len(hidden) * len(steps.config.buckets) for steps, hidden in jobs)
    with tqdm(total=total, desc="compiling stitched steps", unit="shape", file=sys.stderr, leave=False) as progress:
        for steps, hidden in jobs:
            progress.set_postfix_str(steps.loaded.role)
            steps.warm_up(steps.capacity_for(1), hidden, progress)  # compiled: one fixed capacity


def _result(events: tuple[TokenEvent, ...], stats: StitchStats) -> GenerationResult:
    return GenerationResult(text="".join(e.text for e in events), token_ids=tuple(e.token_id for e in events),
                            events=events, stats=stats)


def read_in_turn(streams: Sequence[StitchStream]) -> list[list[TokenEvent]]:
    """Every stream's events, read one event from each in turn (as one thread or event loop would), so
    that no request sits paused behind another's unread events. Lists in the order of ``streams``."""
    events: list[list[TokenEvent]] = [[] for _ in streams]
    live = list(range(len(streams)))
    while live:
        for index in list(live):
            event = next(streams[index], None)
            if event is None:
                live.remove(index)
            else:
                events[index].append(event)
    return events
