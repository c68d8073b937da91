"""One request's state and its Algorithm 1 step, independent of how the forward pass is run.

Shapes and invariants of one request:

* ``tokens`` is x + y (prompt then kept output), a Python list; y is ``tokens[len(prompt):]``.
* Each model has a ``Slot`` whose cache covers ``tokens[:slot.n_cached]``.
* Only the active model runs in a step. It is fed ``tokens[slot.n_cached:]`` in one forward pass:
  one token when it wrote the previous token itself (decode), otherwise everything it missed
  (catch-up: the prompt, and tokens the other model wrote). The LLM is first run at the first
  switch, so it never sees the prompt before then; under a router that never lets the SLM keep
  a token (``AlwaysLLMRouter``) the request starts on the LLM and the SLM never runs.
* Entropy comes from the active model's untempered distribution over the shared real vocabulary.
* A discarded SLM token was never fed to the SLM (a token enters a cache only when the next step
  feeds it), so "rolling back" the SLM cache is free: its cache already ends before that position.

With a grammar (``constraints``), the active model's logits are masked to the allowed tokens
before entropy and choice, and the grammar advances on kept tokens only. A position where the
grammar allows one token is kept without any pass (``forced``), so a model's next pass may feed
several tokens it missed, even when it wrote the token before them; such a pass counts as a catch-up.

``RequestDecoder`` splits a step in two: ``next_pass`` says which model must run and how
(``PassNeed``); whoever runs it (the engine alone, or the batch scheduler in a batched pass) hands
the result to ``advance``, which applies the routing rule and returns the kept tokens' events (none
when the SLM's token was discarded). The decisions never depend on how the pass was run.

With prompt lookup (``GenerationSettings.prompt_lookup_tokens``, ``lookup``) a pass may also feed
tokens proposed from the context; ``advance`` then keeps several tokens from one pass, applying the
routing rule at each position in turn, and the slot drops the proposed tokens it did not keep.
Under a grammar each position is masked by the grammar's state after the kept tokens before it, and
a position the grammar forces counts as forced, as it would without lookup.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..models.loaded import ForwardKind, ForwardRecord, ModelRole
from ..models.pair import ModelPair
from .constraints import GrammarState
from .detokenize import TextAssembler
from .lookup import propose
from .policy import Policy
from .routing import Router, RouterState
from .sampling import RequestRandomness, entropy_and_choice
from .settings import GenerationSettings
from .slot import NextToken, Slot
from .speedup import LlmCostHistory
from .stats import FinishReason, ModelUsage, StitchStats, TokenEvent


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
    forced_tokens: int = 0
    """Output tokens a grammar forced (kept without a forward pass)."""
    switches_to_llm: int = 0
    switches_to_slm: int = 0
    proposed_tokens: int = 0
    """Tokens prompt lookup fed after a pass's unseen tokens (``lookup``)."""
    confirmed_tokens: int = 0
    """Of those, the ones the request kept: each saved a forward pass."""
    idle_seconds: float = 0.0
    """Time not spent on this request: waiting for other requests' passes, or for the consumer."""

    @classmethod
    def start(cls, pair: ModelPair, prompt_ids: list[int], max_new_tokens: int = 0) -> "StitchRequest":
        needed = len(prompt_ids) + max_new_tokens
        return cls(tokens=list(prompt_ids), prompt_tokens=len(prompt_ids),
                   slots={"slm": Slot(pair.slm, needed), "llm": Slot(pair.llm, needed)})

    def release(self) -> None:
        """The request is over: its static caches go back to their pools (dynamic ones to the collector)."""
        for slot in self.slots.values():
            slot.release()

    @property
    def output_tokens(self) -> int:
        return len(self.tokens) - self.prompt_tokens

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.prompt_tokens:]

    def records(self) -> list[ForwardRecord]:
        """Every forward pass of both models, SLM first."""
        return self.slots["slm"].records + self.slots["llm"].records


@dataclass(frozen=True)
class PassNeed:
    """The forward pass a request needs next: its active model over ``tokens[slot.n_cached:]``."""

    role: ModelRole
    kind: ForwardKind
    want_hidden: bool
    slot: Slot
    tokens: list[int]
    """The request's x + y (the slot feeds the part it has not seen)."""
    proposal: tuple[int, ...] = ()
    """Tokens prompt lookup proposes after them, fed in the same pass (``lookup``); () for a plain pass."""

    @property
    def new_tokens(self) -> int:
        """Tokens the pass feeds: the unseen ones and the proposal."""
        return len(self.tokens) - self.slot.n_cached + len(self.proposal)


class RequestDecoder:
    """Algorithm 1 for one request, one step at a time; the forward passes are run by the caller."""

    def __init__(self, pair: ModelPair, request: StitchRequest, settings: GenerationSettings, policy: Policy,
                 history: LlmCostHistory, grammar: GrammarState | None = None) -> None:
        self.pair = pair
        self.grammar = grammar
        """The request's grammar state (``constraints``), advanced only by kept tokens; None: free text."""
        self.request = request
        self.settings = settings
        self.policy = policy
        self.router = policy.router
        self._history = history
        self._text = TextAssembler(pair.tokenizer, settings.stop)
        self._randomness = RequestRandomness(settings.seed)
        self._lookup_tokens = (settings.prompt_lookup_tokens if settings.prompt_lookup_tokens is not None
                               else policy.prompt_lookup_tokens)
        self._took_over = False
        if self.router.llm_only and not request.output_tokens:
            request.active = "llm"  # the SLM would only write a token to discard (``Router.llm_only``)
        self.finish_reason: FinishReason | None = None
        """Set when the request is over: 'stop' (EOS or a stop string) or 'length'."""
        self.started = time.perf_counter()

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def next_pass(self) -> PassNeed:
        request = self.request
        active = request.active
        slot = request.slots[active]
        decode = request.last_writer == active and len(request.tokens) - slot.n_cached == 1
        want_hidden = active == "slm" and self.router.needs_hidden_state
        return PassNeed(role=active, kind="decode" if decode else "catchup", want_hidden=want_hidden,
                        slot=slot, tokens=request.tokens, proposal=self._proposal(slot, want_hidden))

    def _proposal(self, slot: Slot, want_hidden: bool) -> tuple[int, ...]:
        """Prompt lookup's tokens for the next pass, where it applies (``lookup``); () otherwise."""
        settings = self.settings
        if not self._lookup_tokens or not settings.greedy:
            return ()
        if want_hidden or not slot.has_plain_cache:
            return ()
        room = settings.max_new_tokens - self.request.output_tokens - 1  # the pass keeps at most 1 + k tokens
        return propose(self.request.tokens, min(self._lookup_tokens, room))

    def forced(self) -> TokenEvent | None:
        """Keep the grammar's one allowed token here without a forward pass; None when a pass is needed.

        Any decoding would choose that token, and H = 0 there, so the active model keeps it unless
        H = 0 is above tau with the SLM active (tau < 0: the LLM must take the position, by a pass).
        """
        if self.grammar is None or self.finished:
            return None
        request = self.request
        if self.grammar.dead_end:
            self.finish_reason = "no_allowed_token"
            return None
        if request.active == "slm" and self.router.threshold < 0:
            return None
        token = self.grammar.forced_token()
        if token is None:
            return None
        hands_back = _route(request, self.router, RouterState(0.0, len(request.tokens), token, None))
        request.forced_tokens += 1
        return self._emit(token, 0.0, bool(hands_back))

    def advance(self, nxt: NextToken) -> list[TokenEvent]:
        """Apply the routing to the active model's view of the next positions; the kept tokens' events.

        A plain pass gives one position: its token's event, or none when the SLM's token there was
        discarded (the LLM decodes that same position next). A pass that also fed a proposal gives
        one more position per proposed token; they are decided in turn while the kept token is the
        proposed one and the same model stays in control, and the slot then drops what was not kept.
        """
        request = self.request
        slot, kept_before = request.slots[request.active], len(request.tokens)
        views = [nxt.logits] if not nxt.proposal else [nxt.logits, *nxt.proposal_logits]  # type: ignore[misc]
        events: list[TokenEvent] = []
        confirmed = 0  # leading proposed tokens that are kept tokens: their cache entries stay
        discarded = False
        for position, logits in enumerate(views):
            # a later position the grammar forces would have been kept by ``forced``, without a pass:
            # the same token (H = 0 over one allowed token), counted the same way
            forced_here = position > 0 and self.grammar is not None and self.grammar.allowed_count == 1
            event = self._decide(logits, nxt.hidden if position == 0 else None)
            if event is None:
                discarded = True
                break
            request.forced_tokens += forced_here
            events.append(event)
            if position == len(nxt.proposal) or event.token_id != nxt.proposal[position]:
                break
            confirmed += 1
            if self.finished or event.hands_back:
                break
        if nxt.proposal:
            # As after plain steps, the cache ends before the last kept token (its writer feeds it at
            # its next pass) unless the next position was decided too (the SLM's token there discarded).
            fed_and_kept = confirmed if discarded or confirmed < len(events) else confirmed - 1
            slot.rewind(kept_before + fed_and_kept)
            request.proposed_tokens += len(nxt.proposal)
            request.confirmed_tokens += confirmed
        return events

    def _decide(self, logits: torch.Tensor, hidden: torch.Tensor | None) -> TokenEvent | None:
        """Algorithm 1 at one position (``logits`` [V], the active model's); None if the SLM token was discarded."""
        request, settings = self.request, self.settings
        if self.grammar is not None:  # entropy and choice over the renormalised allowed tokens
            if self.grammar.dead_end:
                self.finish_reason = "no_allowed_token"
                return None
            logits = self.grammar.mask(logits)
        support = self.grammar.allowed_count if self.grammar is not None else None
        entropy, token = entropy_and_choice(logits, settings, self._randomness.generator_for(logits.device), support)
        state = RouterState(entropy, len(request.tokens), token, hidden)
        hands_back = _route(request, self.router, state)
        if hands_back is None:  # the LLM decodes this same position next
            self._took_over = True
            return None
        return self._emit(token, entropy, hands_back)

    def _emit(self, token: int, entropy: float, hands_back: bool) -> TokenEvent:
        """Keep ``token`` (written by the active model), advance the grammar, and make its event."""
        request, settings = self.request, self.settings
        active = request.active
        _keep(request, token, hands_back)
        if self.grammar is not None:
            self.grammar.consume(token)
        is_eos = token in self.pair.eos_token_ids
        is_last = is_eos or request.output_tokens == settings.max_new_tokens
        event = TokenEvent(
            index=request.output_tokens - 1,
            token_id=token,
            text=self._text.push(token, is_last),
            source=active,
            entropy=entropy,
            took_over=self._took_over,
            hands_back=hands_back,
            seconds=time.perf_counter() - self.started,
        )
        self._took_over = False
        if is_eos or self._text.stopped:
            self.finish_reason = "stop"
        elif request.output_tokens >= settings.max_new_tokens:
            self.finish_reason = "length"
        return event

    def stats(self, wall_seconds: float | None = None) -> StitchStats:
        """The request's accounting; its LLM passes then join the engine's cost history."""
        request = self.request
        wall = wall_seconds if wall_seconds is not None else time.perf_counter() - self.started
        records = request.records()
        # the LLM alone would run a pass at every open position only: forced ones need none (``forced``)
        llm_alone = self._history.estimate(records, request.prompt_tokens, request.output_tokens - request.forced_tokens)
        self._history.add(records)
        return StitchStats(
            prompt_tokens=request.prompt_tokens,
            output_tokens=request.output_tokens,
            slm=ModelUsage.from_records("slm", request.written["slm"], records),
            llm=ModelUsage.from_records("llm", request.written["llm"], records),
            discarded_slm_tokens=request.discarded_slm_tokens,
            switches_to_llm=request.switches_to_llm,
            switches_to_slm=request.switches_to_slm,
            wall_seconds=wall,
            idle_seconds=min(request.idle_seconds, wall),
            finish_reason=self.finish_reason or "length",
            router=type(self.router).__name__,
            threshold=self.router.threshold,
            policy=self.policy.name,
            policy_reason=self.policy.reason,
            llm_alone_seconds=llm_alone,
            speedup_basis="estimated" if llm_alone is not None else "unavailable",
            largest_batch=max((r.batch_size for r in records), default=1),
            forced_tokens=request.forced_tokens,
            proposed_tokens=request.proposed_tokens,
            confirmed_tokens=request.confirmed_tokens,
        )


def _route(request: StitchRequest, router: Router, state: RouterState) -> bool | None:
    """Algorithm 1's decision at one position (``state.entropy`` is the active model's).

    None: the SLM's token is discarded and the LLM becomes active for this same position. Otherwise
    the token is kept, and the result says whether control returns to the SLM after it.
    """
    active = request.active
    if state.entropy > router.threshold:
        if active == "slm" and router.wants_llm(state):
            request.discarded_slm_tokens += 1
            request.switches_to_llm += 1
            request.active = "llm"
            return None
        return active == "llm" and bool(router.hands_back(state))
    if active == "llm":  # a confident LLM token is kept; by default (``RouterBase``) the SLM then resumes
        return bool(router.hands_back(RouterState(state.entropy, state.context_length, state.proposed_token, None)))
    return False


def _keep(request: StitchRequest, token: int, hands_back: bool) -> None:
    """Append the active model's token to x + y; hand control back to the SLM if asked."""
    request.tokens.append(token)
    request.written[request.active] += 1
    request.last_writer = request.active
    if hands_back:
        request.active = "slm"
        request.switches_to_slm += 1
