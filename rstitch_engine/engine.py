"""The stitched decoding loop (Algorithm 1 of R-Stitch) and its public entry points.

Shapes and invariants of one request:

* ``tokens`` is x + y (prompt then kept output), a Python list; y is ``tokens[len(prompt):]``.
* Each model has a ``Slot`` whose cache covers ``tokens[:slot.n_cached]``.
* Only the active model runs in a step. It is fed ``tokens[slot.n_cached:]`` in one forward pass:
  one token when it wrote the previous token itself (decode), otherwise everything it missed
  (catch-up: the prompt, and tokens the other model wrote). The LLM is first run at the first
  switch, so it never sees the prompt before then.
* Entropy comes from the active model's untempered distribution over the shared real vocabulary.
* A discarded SLM token was never fed to the SLM (a token enters a cache only when the next step
  feeds it), so "rolling back" the SLM cache is free: its cache already ends before that position.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Generator, Iterator, Mapping, Sequence, Union

from .baseline import AloneResult, decode_alone
from .cost import LlmCostHistory
from .costmodel import shipped_cost_model
from .defaults import DEFAULT_LLM, DEFAULT_SLM, DEFAULT_THRESHOLD
from .detokenize import TextAssembler
from .errors import EmptyPromptError, InvalidSettingError, PromptTooLongError
from .loading import ModelSpec, load_pair
from .pair import ModelPair
from .routers import EntropyRouter, Router, RouterState, hand_back_hook
from .sampling import RequestRandomness, choose_token, normalised_entropy
from .settings import GenerationSettings
from .slot import ForwardKind, ForwardRecord, ModelRole, Slot
from .stats import ModelUsage, StitchStats, TokenEvent

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


@dataclass
class StitchRequest:
    """The mutable state of one request. Each slot's cache covers ``tokens[:slot.n_cached]``."""

    tokens: list[int]
    """x + y: the prompt followed by the kept output."""
    prompt_tokens: int
    slots: dict[ModelRole, Slot]
    active: ModelRole = "slm"
    last_writer: ModelRole | None = None
    """Who appended ``tokens[-1]``; None while it is a prompt token."""
    written: dict[ModelRole, int] = field(default_factory=lambda: {"slm": 0, "llm": 0})
    discarded_slm_tokens: int = 0
    switches_to_llm: int = 0
    switches_to_slm: int = 0
    idle_seconds: float = 0.0
    """Time not spent on this request: waiting for other requests' passes, or for the consumer."""

    @classmethod
    def start(cls, pair: ModelPair, prompt_ids: list[int]) -> "StitchRequest":
        return cls(tokens=list(prompt_ids), prompt_tokens=len(prompt_ids),
                   slots={"slm": Slot(pair.slm), "llm": Slot(pair.llm)})

    @property
    def output_tokens(self) -> int:
        return len(self.tokens) - self.prompt_tokens

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.prompt_tokens:]

    def records(self) -> list[ForwardRecord]:
        """Every forward pass of both models, SLM first."""
        return self.slots["slm"].records + self.slots["llm"].records


class StitchStream(Iterator[TokenEvent]):
    """Token events of one request as they are decided; ``stats`` once the stream is exhausted.

    Abandoning a stream (not iterating it further, or ``close()``) is always safe: a request owns
    its caches, and the engine holds no lock between two events.
    """

    def __init__(self, core: Generator[TokenEvent, None, StitchStats], request: StitchRequest) -> None:
        self._core = core
        self._stats: StitchStats | None = None
        self.request = request
        """The request's live state (tokens, caches): for inspection only."""

    @property
    def prompt_tokens(self) -> int:
        return self.request.prompt_tokens

    def __next__(self) -> TokenEvent:
        try:
            return next(self._core)
        except StopIteration as finished:
            if self._stats is None:  # a finished generator raises StopIteration(None) ever after
                self._stats = finished.value
            raise

    def close(self) -> None:
        """Stop decoding now; the engine is immediately ready for other requests."""
        self._core.close()

    def __enter__(self) -> "StitchStream":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def stats(self) -> StitchStats:
        if self._stats is None:
            raise RuntimeError("stats are available once the stream has been iterated to its end")
        return self._stats


class StitchEngine:
    """An SLM and an LLM decoding one answer together, token by token.

    Thread-safe: concurrent requests each get their own caches; forward passes are serialised
    (one at a time on the engine), so results equal those of the same requests run one by one.
    """

    def __init__(
        self,
        pair: ModelPair,
        router: Router | None = None,
        settings: GenerationSettings | None = None,
    ) -> None:
        self.pair = pair
        self.router: Router = router if router is not None else EntropyRouter()
        self.settings = settings if settings is not None else GenerationSettings()
        self._forward_lock = threading.Lock()
        self._llm_history = LlmCostHistory(model=shipped_cost_model(pair.slm.name, pair.llm.name, pair.llm.device, pair.llm.dtype))

    @classmethod
    def from_pretrained(
        cls,
        llm: str | ModelSpec = DEFAULT_LLM,
        slm: str | ModelSpec | None = None,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        device: str = "auto",
        dtype: str = "auto",
        settings: GenerationSettings | None = None,
    ) -> "StitchEngine":
        """Load a pair (hub ids, folders, .gguf files or specs) with the entropy router at ``threshold``.

        With no SLM given and the default LLM, the SLM is the draft shipped for it (``DEFAULT_SLM``).
        """
        llm_spec = llm if isinstance(llm, ModelSpec) else ModelSpec(llm, device=device, dtype=dtype)  # type: ignore[arg-type]
        if slm is None:
            if llm_spec.source != DEFAULT_LLM:
                raise InvalidSettingError(
                    "give an SLM (a model sharing the LLM's tokenizer, or a draft made with `rstitch distill`): "
                    "only the default LLM has a built-in SLM"
                )
            slm_spec = ModelSpec(DEFAULT_SLM, device=device, dtype=dtype)  # type: ignore[arg-type]
        else:
            slm_spec = slm if isinstance(slm, ModelSpec) else ModelSpec(slm, device=device, dtype=dtype)  # type: ignore[arg-type]
        return cls(load_pair(slm_spec, llm_spec), EntropyRouter(threshold), settings)

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
        router: Router | None = None,
    ) -> StitchStream:
        """Start a request; all validation happens here, before any forward pass."""
        settings = settings if settings is not None else self.settings
        router = router if router is not None else self.router
        prompt_ids = self.encode(prompt)
        self._check_fits(len(prompt_ids), settings)
        request = StitchRequest.start(self.pair, prompt_ids)
        return StitchStream(self._stitch(request, settings, router), request)

    def generate(
        self,
        prompt: PromptLike,
        settings: GenerationSettings | None = None,
        router: Router | None = None,
        measure_speedup: bool = False,
    ) -> GenerationResult:
        """Run a request to the end. ``measure_speedup`` also times the LLM alone on the same prompt."""
        stream = self.stream(prompt, settings, router)
        events = tuple(stream)
        stats = stream.stats
        if measure_speedup:
            alone = self.decode_alone("llm", prompt, settings)
            stats = stats.with_measured_llm_alone(alone)
        return GenerationResult(
            text="".join(e.text for e in events),
            token_ids=tuple(e.token_id for e in events),
            events=events,
            stats=stats,
        )

    def decode_alone(
        self, role: ModelRole, prompt: PromptLike, settings: GenerationSettings | None = None
    ) -> AloneResult:
        """One model decoding alone with a plain cached loop (the baseline for speedups)."""
        settings = settings if settings is not None else self.settings
        prompt_ids = self.encode(prompt)
        self._check_fits(len(prompt_ids), settings)
        loaded = self.pair.slm if role == "slm" else self.pair.llm
        with self._forward_lock:
            return decode_alone(loaded, prompt_ids, settings, self.pair.tokenizer, self.pair.eos_token_ids)

    # ----------------------------------------------------------------- the loop

    def _stitch(self, request: "StitchRequest", settings: GenerationSettings, router: Router
                ) -> Generator[TokenEvent, None, StitchStats]:
        """Algorithm 1. Yields each kept token; returns the stats."""
        text = TextAssembler(self.pair.tokenizer, settings.stop)
        randomness = RequestRandomness(settings.seed)
        eos_ids = self.pair.eos_token_ids
        tokens = request.tokens  # x + y, grows in place
        took_over = False
        hand_back = hand_back_hook(router)  # None: the LLM hands back exactly when H <= tau
        finish_reason = "length"
        start = time.perf_counter()

        while request.output_tokens < settings.max_new_tokens:
            active = request.active
            slot = request.slots[active]
            kind: ForwardKind = "decode" if request.last_writer == active else "catchup"
            want_hidden = active == "slm" and router.needs_hidden_state
            waiting_since = time.perf_counter()
            with self._forward_lock:
                request.idle_seconds += time.perf_counter() - waiting_since  # another request's pass
                nxt = slot.catch_up(tokens, kind, want_hidden)
            entropy = normalised_entropy(nxt.logits)
            token = choose_token(nxt.logits, settings, randomness.generator_for(nxt.logits.device))

            hands_back = False
            if entropy > router.threshold:
                state = RouterState(entropy, len(tokens), token, nxt.hidden)
                if active == "slm" and router.wants_llm(state):
                    # Discard the SLM token; the LLM decodes this same position next.
                    request.discarded_slm_tokens += 1
                    request.switches_to_llm += 1
                    request.active, took_over = "llm", True
                    continue
                if active == "llm" and hand_back is not None:
                    hands_back = hand_back(state)
            elif active == "llm":
                # The LLM's confident token is kept, then the SLM resumes (unless a hook says otherwise).
                hands_back = True if hand_back is None else hand_back(RouterState(entropy, len(tokens), token, None))

            tokens.append(token)
            request.written[active] += 1
            request.last_writer = active
            if hands_back:
                request.active = "slm"
                request.switches_to_slm += 1
            is_eos = token in eos_ids
            is_last = is_eos or request.output_tokens == settings.max_new_tokens
            event = TokenEvent(
                index=request.output_tokens - 1,
                token_id=token,
                text=text.push(token, is_last),
                source=active,
                entropy=entropy,
                took_over=took_over,
                hands_back=hands_back,
                seconds=time.perf_counter() - start,
            )
            took_over = False
            if is_eos or text.stopped:
                finish_reason = "stop"
            suspended_since = time.perf_counter()
            yield event
            request.idle_seconds += time.perf_counter() - suspended_since  # the consumer's time
            if finish_reason == "stop":
                break

        return self._finish(request, router, finish_reason, wall_seconds=time.perf_counter() - start)

    def _finish(self, request: "StitchRequest", router: Router, finish_reason: str, wall_seconds: float
                ) -> StitchStats:
        records = request.records()
        llm_alone = self._llm_history.estimate(records, request.prompt_tokens, request.output_tokens)
        self._llm_history.add(records)
        return StitchStats(
            prompt_tokens=request.prompt_tokens,
            output_tokens=request.output_tokens,
            slm=ModelUsage.from_records("slm", request.written["slm"], records),
            llm=ModelUsage.from_records("llm", request.written["llm"], records),
            discarded_slm_tokens=request.discarded_slm_tokens,
            switches_to_llm=request.switches_to_llm,
            switches_to_slm=request.switches_to_slm,
            wall_seconds=wall_seconds,
            idle_seconds=request.idle_seconds,
            finish_reason=finish_reason,  # type: ignore[arg-type]
            router=type(router).__name__,
            threshold=router.threshold,
            llm_alone_seconds=llm_alone,
            speedup_basis="estimated" if llm_alone is not None else "unavailable",
        )

    # ----------------------------------------------------------------- helpers

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

    def _render_chat(self, messages: list[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None) -> list[int]:
        tokenizer = self.pair.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidSettingError("this tokenizer has no chat template: pass raw text or token ids instead")
        rendered = tokenizer.apply_chat_template(
            messages, tools=list(tools) if tools else None, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(rendered["input_ids"])

