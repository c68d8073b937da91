"""One request's state and its Algorithm 1 step, independent of how the forward passes are run.

Shapes and invariants of one request:

* ``tokens`` is x + y (prompt then kept output), a Python list; y is ``tokens[len(prompt):]``.
* Each model has a cache slot (``models.runner.CacheSlot``) that covers ``tokens[:slot.n_cached]``.
* Only the active model runs in a step. It is fed ``tokens[slot.n_cached:]`` in one forward pass:
  one token when it wrote the previous token itself (decode), otherwise everything it missed
  (catch-up: the prompt, and tokens the other model wrote). The LLM is first run at the first
  switch, so it never sees the prompt before then; under a router that never lets the SLM keep
  a token (``AlwaysLLMRouter``) the request starts on the LLM and the SLM never runs.
* Entropy comes from the active model's untempered distribution over the shared real vocabulary.
* A discarded SLM token was never fed to the SLM (a token enters a cache only when the next step
  feeds it), so "rolling back" the SLM cache is free: its cache already ends before that position.

A step is plan -> run -> apply. ``RequestDecoder.plan`` says what the active model must be fed (a
``RowPlan``); the model's runner (``models.runner.ModelRunner``) runs it, with other requests' rows
or alone; ``RequestDecoder.advance`` applies the routing rule to the result and returns the kept
tokens' events (none when the SLM's token was discarded). No decision depends on how a pass ran.

The step's pieces, each with one owner:

* grammar forcing (``GrammarGate``): with a grammar (``constraints``), logits are masked to the
  allowed tokens before entropy and choice, the grammar advances on kept tokens only, and a
  position with one allowed token is kept without any pass (``RequestDecoder.forced``), so a
  model's next pass may feed several tokens it missed; such a pass counts as a catch-up;
* prompt lookup (``Lookahead``, ``lookup``): a pass may also feed tokens proposed from the context;
  ``advance`` then decides several positions from one pass, in turn, and the runner drops the
  proposed tokens the request did not keep; under a grammar each position is masked by the grammar's
  state after the kept tokens before it, and a position the grammar forces counts as forced;
* the routing decision (``RoutingRule``): keep, discard and switch to the LLM, or hand back;
* detokenisation and stops (``TextOutput``): text deltas, stop strings, EOS and the length limit;
* accounting (``RequestCounters``): every count of the request, changed only by its methods.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..models.pair import ModelPair
from ..models.runner import CacheSlot, ForwardRecord, ModelRole, ModelRunner, RowPlan, RowResult
from .constraints import GrammarState
from .detokenize import TextAssembler
from .lookup import propose
from .policy import Policy
from .routing import Router, RouterState
from .sampling import RequestRandomness, choose_token, entropy_and_choice
from .settings import GenerationSettings
from .speedup import LlmCostHistory
from .stats import FinishReason, ModelUsage, StitchStats, TokenEvent


@dataclass
class RequestCounters:
    """Every count of one request. Changed only by these methods (the step's accounting)."""

    written: dict[ModelRole, int] = field(default_factory=lambda: {"slm": 0, "llm": 0})
    """Output tokens each model wrote (forced ones count for the model active there)."""
    discarded_slm_tokens: int = 0
    switches_to_llm: int = 0
    switches_to_slm: int = 0
    forced_tokens: int = 0
    """Output tokens a grammar forced (kept without a forward pass, or inside a lookup walk)."""
    proposed_tokens: int = 0
    """Tokens prompt lookup fed after a pass's unseen tokens (``lookup``)."""
    confirmed_tokens: int = 0
    """Of those, the ones the request kept: each saved a forward pass."""

    def kept(self, writer: ModelRole, forced: bool) -> None:
        self.written[writer] += 1
        self.forced_tokens += forced

    def took_over(self) -> None:
        """The SLM's token was discarded; the LLM decodes that position."""
        self.discarded_slm_tokens += 1
        self.switches_to_llm += 1

    def handed_back(self) -> None:
        self.switches_to_slm += 1

    def walked(self, proposed: int, confirmed: int) -> None:
        """A pass fed ``proposed`` lookup tokens, of which the request kept the first ``confirmed``."""
        self.proposed_tokens += proposed
        self.confirmed_tokens += confirmed


@dataclass
class StitchRequest:
    """The mutable state of one request. Each slot's cache covers ``tokens[:slot.n_cached]``."""

    tokens: list[int]
    """x + y: the prompt followed by the kept output."""
    prompt_tokens: int
    slots: dict[ModelRole, CacheSlot]
    runners: dict[ModelRole, ModelRunner] = field(default_factory=dict, repr=False)
    """The ``ModelRunner`` of each model (the pair's)."""
    active: ModelRole = "slm"
    last_writer: ModelRole | None = None
    """Who appended ``tokens[-1]``; None while it is a prompt token."""
    counters: RequestCounters = field(default_factory=RequestCounters)

    @classmethod
    def start(cls, pair: ModelPair, prompt_ids: list[int], max_new_tokens: int = 0) -> "StitchRequest":
        needed = len(prompt_ids) + max_new_tokens
        runners: dict[ModelRole, ModelRunner] = {"slm": pair.slm.runner, "llm": pair.llm.runner}
        return cls(tokens=list(prompt_ids), prompt_tokens=len(prompt_ids), runners=runners,
                   slots={role: runner.new_slot(needed) for role, runner in runners.items()})

    def release(self) -> None:
        """The request is over: its pooled caches go back to their pools (others to the collector)."""
        for role, slot in self.slots.items():
            self.runners[role].release(slot)

    @property
    def pools_caches(self) -> bool:
        """Whether ``release`` must run when the request ends (a runner pools its caches)."""
        return any(runner.pools_caches for runner in self.runners.values())

    @property
    def output_tokens(self) -> int:
        return len(self.tokens) - self.prompt_tokens

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.prompt_tokens:]

    def records(self) -> list[ForwardRecord]:
        """Every forward pass of both models, SLM first."""
        return self.slots["slm"].records + self.slots["llm"].records


class GrammarGate:
    """Grammar forcing: masks, forced positions and the grammar's advance on kept tokens (None: free text)."""

    def __init__(self, grammar: GrammarState | None) -> None:
        self.grammar = grammar

    def forced_token(self) -> int | None:
        """The one token the grammar allows here, if exactly one."""
        return self.grammar.forced_token() if self.grammar is not None else None

    @property
    def dead_end(self) -> bool:
        return self.grammar is not None and self.grammar.dead_end

    @property
    def forces_here(self) -> bool:
        """Whether the grammar allows exactly one token at the next position."""
        return self.grammar is not None and self.grammar.allowed_count == 1

    def masked(self, logits: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        """``logits`` [V] masked to the allowed tokens, and how many are allowed (None: free text)."""
        if self.grammar is None:
            return logits, None
        return self.grammar.mask(logits), self.grammar.allowed_count

    def consume(self, token: int) -> None:
        if self.grammar is not None:
            self.grammar.consume(token)


class Lookahead:
    """Prompt lookup: the tokens proposed for the next pass, and how many of them the request kept."""

    def __init__(self, tokens: int, settings: GenerationSettings) -> None:
        self.tokens = tokens if settings.greedy else 0
        """Tokens to propose per pass (0: lookup is off; it needs greedy decoding)."""
        self._max_new_tokens = settings.max_new_tokens

    def proposal(self, request: StitchRequest, takes_proposals: bool, want_hidden: bool) -> tuple[int, ...]:
        """Prompt lookup's tokens for the next pass, where it applies (``lookup``); () otherwise."""
        if not self.tokens or want_hidden or not takes_proposals:
            return ()
        room = self._max_new_tokens - request.output_tokens - 1  # the pass keeps at most 1 + k tokens
        return propose(request.tokens, min(self.tokens, room))

    @staticmethod
    def cached_after(kept_before: int, confirmed: int, decided: int, discarded: bool) -> int:
        """Tokens the cache keeps after a walk: as after plain steps, it ends before the last kept token
        (its writer feeds it at its next pass) unless the position after it was decided too (the SLM's
        token there discarded)."""
        return kept_before + (confirmed if discarded or confirmed < decided else confirmed - 1)


class RoutingRule:
    """Algorithm 1's decision at one position, from the router (``routing``: its ``hands_back`` decides when
    the LLM returns control; ``RouterBase``'s is H <= tau, Algorithm 1 exactly)."""

    def __init__(self, router: Router, prompt_tokens: int) -> None:
        self.router = router
        self.threshold = router.threshold
        # the LLM keeps control while it writes output positions 0 .. k-2; from position k-1 on, Algorithm 1
        self._opening_ends = prompt_tokens + router.llm_opening_tokens - 1  # context length of position k-1

    def decide(self, active: ModelRole, state: RouterState) -> bool | None:
        """None: the SLM's token is discarded and the LLM takes this same position. Otherwise the token
        is kept, and the result says whether control returns to the SLM after it."""
        if self.router.llm_only:  # the SLM never keeps a token, so control never returns to it
            return None if active == "slm" else False
        if active == "llm" and state.context_length < self._opening_ends:  # the LLM's opening (``llm_opening_tokens``)
            return False
        if state.entropy > self.threshold:
            if active == "slm" and self.router.wants_llm(state):
                return None
            return active == "llm" and bool(self.router.hands_back(state))
        if active == "llm":  # a confident LLM token is kept; by default (``RouterBase``) the SLM then resumes
            return bool(self.router.hands_back(RouterState(state.entropy, state.context_length,
                                                           state.proposed_token, None)))
        return False


class TextOutput:
    """Detokenisation and stops: each kept token's text delta, and whether the request ends there."""

    def __init__(self, tokenizer: object, settings: GenerationSettings, eos_token_ids: frozenset[int]) -> None:
        self._text = TextAssembler(tokenizer, settings.stop)
        self._eos = eos_token_ids
        self._max_new_tokens = settings.max_new_tokens

    def push(self, token: int, output_tokens: int) -> tuple[str, FinishReason | None]:
        """The text delta of the ``output_tokens``-th output token, and why the request ends after it (or None)."""
        is_eos = token in self._eos
        text = self._text.push(token, is_eos or output_tokens == self._max_new_tokens)
        if is_eos or self._text.stopped:
            return text, "stop"
        return text, "length" if output_tokens >= self._max_new_tokens else None


class RequestDecoder:
    """Algorithm 1 for one request, one step at a time; the forward passes are run by the models' runners."""

    def __init__(self, pair: ModelPair, request: StitchRequest, settings: GenerationSettings, policy: Policy,
                 history: LlmCostHistory, grammar: GrammarState | None = None) -> None:
        router = policy.router
        self.request = request
        self.settings = settings
        self.policy = policy
        self.router = router
        self._history = history
        self.grammar = GrammarGate(grammar)
        self.routing = RoutingRule(router, request.prompt_tokens)
        lookup = settings.prompt_lookup_tokens  # None: the policy's default (on for the LLM alone)
        self.lookahead = Lookahead(lookup if lookup is not None else policy.prompt_lookup_tokens, settings)
        self.text = TextOutput(pair.tokenizer, settings, pair.eos_token_ids)
        self._randomness = RequestRandomness(settings.seed)
        self._want_hidden = router.needs_hidden_state
        self._entropy_unread = router.llm_only and not settings.token_entropy  # see ``Router.llm_only``
        self._took_over = False
        if (router.llm_only or router.llm_opening_tokens > 0) and not request.output_tokens:
            request.active = "llm"  # the SLM would only write a token to discard (``Router.llm_only``, the opening)
        self.finish_reason: FinishReason | None = None
        """Set when the request is over: 'stop' (EOS or a stop string), 'length' or 'no_allowed_token'."""
        self.started = time.perf_counter()

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def plan(self) -> RowPlan:
        """What the active model must be fed next: ``tokens[slot.n_cached:]`` and lookup's proposal."""
        request = self.request
        active = request.active
        slot = request.slots[active]
        decode = request.last_writer == active and len(request.tokens) - slot.n_cached == 1
        want_hidden = active == "slm" and self._want_hidden
        takes = bool(self.lookahead.tokens) and request.runners[active].takes_proposals(slot)
        return RowPlan(slot, request.tokens, "decode" if decode else "catchup", want_hidden,
                       self.lookahead.proposal(request, takes, want_hidden))

    def forced(self) -> TokenEvent | None:
        """Keep the grammar's one allowed token here without a forward pass; None when a pass is needed.

        Any decoding would choose that token, and H = 0 there, so the active model keeps it unless
        H = 0 is above tau with the SLM active (tau < 0: the LLM must take the position, by a pass).
        """
        if self.grammar.grammar is None or self.finished:
            return None
        request = self.request
        if self.grammar.dead_end:
            self.finish_reason = "no_allowed_token"
            return None
        if request.active == "slm" and self.routing.threshold < 0:
            return None
        token = self.grammar.forced_token()
        if token is None:
            return None
        hands_back = self.routing.decide(request.active, RouterState(0.0, len(request.tokens), token, None))
        return self._keep(token, 0.0, bool(hands_back), forced=True)

    def advance(self, result: RowResult) -> list[TokenEvent]:
        """Apply the routing to the active model's view of the next positions; the kept tokens' events.

        A plain pass gives one position: its token's event, or none when the SLM's token there was
        discarded (the LLM decodes that same position next). A pass that also fed a proposal gives
        one more position per proposed token; they are decided in turn while the kept token is the
        proposed one and the same model stays in control, and the runner then drops what was not kept.
        """
        if not result.proposal:
            event = self._decide(result.logits, result.hidden, forced=False)  # type: ignore[arg-type]
            return [] if event is None else [event]
        return self._walk(result)

    def _walk(self, result: RowResult) -> list[TokenEvent]:
        """Decide the positions of a pass that fed a proposal, then keep the cache entries of what was kept."""
        request, proposal = self.request, result.proposal
        active, kept_before = request.active, len(request.tokens)
        views = [result.logits, *result.proposal_logits]  # type: ignore[misc]
        events: list[TokenEvent] = []
        confirmed = 0  # leading proposed tokens that are kept tokens: their cache entries stay
        discarded = False
        for position, logits in enumerate(views):
            # a later position the grammar forces would have been kept by ``forced``, without a pass:
            # the same token (H = 0 over one allowed token), counted the same way
            event = self._decide(logits, result.hidden if position == 0 else None,
                                 forced=position > 0 and self.grammar.forces_here)
            if event is None:
                discarded = True
                break
            events.append(event)
            if position == len(proposal) or event.token_id != proposal[position]:
                break
            confirmed += 1
            if self.finished or event.hands_back:
                break
        cached = Lookahead.cached_after(kept_before, confirmed, len(events), discarded)
        request.runners[active].rewind(request.slots[active], cached)
        request.counters.walked(len(proposal), confirmed)
        return events

    def _decide(self, logits: torch.Tensor, hidden: torch.Tensor | None, forced: bool) -> TokenEvent | None:
        """Algorithm 1 at one position (``logits`` [V], the active model's); None if the SLM token was discarded."""
        request = self.request
        if self.grammar.dead_end:
            self.finish_reason = "no_allowed_token"
            return None
        logits, support = self.grammar.masked(logits)  # entropy and choice over the renormalised allowed tokens
        generator = None if self.settings.greedy else self._randomness.generator_for(logits.device)
        if request.active == "llm" and self._entropy_unread:  # the LLM alone: no router reads H
            return self._keep(choose_token(logits, self.settings, generator), None, False, forced)
        entropy, token = entropy_and_choice(logits, self.settings, generator, support)
        hands_back = self.routing.decide(request.active, RouterState(entropy, len(request.tokens), token, hidden))
        if hands_back is None:  # the LLM decodes this same position next
            request.active = "llm"
            request.counters.took_over()
            self._took_over = True
            return None
        return self._keep(token, entropy, hands_back, forced)

    def _keep(self, token: int, entropy: float | None, hands_back: bool, forced: bool) -> TokenEvent:
        """Append ``token`` (written by the active model) to x + y, advance the grammar, make its event."""
        request = self.request
        writer = request.active
        request.tokens.append(token)
        request.last_writer = writer
        request.counters.kept(writer, forced)
        if hands_back:
            request.active = "slm"
            request.counters.handed_back()
        self.grammar.consume(token)
        index = len(request.tokens) - request.prompt_tokens - 1
        text, finish = self.text.push(token, index + 1)
        event = TokenEvent(index, token, text, writer, entropy, self._took_over, hands_back,
                           time.perf_counter() - self.started)
        self._took_over = False
        if finish is not None:
            self.finish_reason = finish
        return event

    def stats(self, wall_seconds: float | None = None) -> StitchStats:
        """The request's accounting; its LLM passes then join the engine's cost history.

        Idle time is the wall time minus the wall time of the passes it took part in (a shared pass
        counts whole for each of its requests).
        """
        request, counts = self.request, self.request.counters
        wall = wall_seconds if wall_seconds is not None else time.perf_counter() - self.started
        records = request.records()
        # the LLM alone would run a pass at every open position only: forced ones need none (``forced``)
        llm_alone = self._history.estimate(records, request.prompt_tokens, request.output_tokens - counts.forced_tokens)
        self._history.add(records)
        return StitchStats(
            prompt_tokens=request.prompt_tokens,
            output_tokens=request.output_tokens,
            slm=ModelUsage.from_records("slm", counts.written["slm"], records),
            llm=ModelUsage.from_records("llm", counts.written["llm"], records),
            discarded_slm_tokens=counts.discarded_slm_tokens,
            switches_to_llm=counts.switches_to_llm,
            switches_to_slm=counts.switches_to_slm,
            wall_seconds=wall,
            idle_seconds=max(wall - sum(record.seconds for record in records), 0.0),
            finish_reason=self.finish_reason or "length",
            router=type(self.router).__name__,
            threshold=self.router.threshold,
            policy=self.policy.name,
            policy_reason=self.policy.reason,
            llm_alone_seconds=llm_alone,
            speedup_basis="estimated" if llm_alone is not None else "unavailable",
            largest_batch=max((r.batch_size for r in records), default=1),
            forced_tokens=counts.forced_tokens,
            proposed_tokens=counts.proposed_tokens,
            confirmed_tokens=counts.confirmed_tokens,
        )
