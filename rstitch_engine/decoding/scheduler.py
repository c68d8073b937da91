"""Continuous batching of concurrent requests: each step runs every live request once.

A step takes up to ``max_batch_size`` runnable requests (those served longest ago first, so a
bounded batch rotates fairly), asks each ``RequestDecoder`` which pass it needs, and runs one
batched pass per model (``decoding.batch``): all of a model's rows in one pass, packed where their
lengths differ, while their keys are few (``PACKED_KEYS_LIMIT``); otherwise (long caches, or a model
whose attention takes no block mask) one pass per group of similar numbers of new tokens: decodes
and short catch-ups together, long prompt prefills apart, so that a decode row never pays for a
prefill's padding. Then every decoder applies its own routing to its own row, exactly as it would
alone. Requests join (``admit``) and leave (``leave``: finished, closed, abandoned) between steps.

There is no scheduler thread. A consumer that wants its request's next event and finds none
decided yet runs a step for everyone if no other consumer is running one; otherwise it waits for
that step to end and takes its event from it (waiting on a condition, not on the step lock, so
that a driver that goes straight on to the next step never keeps the others from reading). Whoever
reads drives, so the step runs on the caller's threads, asyncio's worker threads included, and one
request alone decodes exactly as before.

Faults stay with their request:

* a request whose consumer stops reading pauses once ``MAX_EVENTS_AHEAD`` events wait unread, and
  the others go on;
* a batched pass that raises is rerun row by row, and only the rows that fail again get the error
  (raised to their consumer at its next read);
* an error in a request's own routing (a router that raises) ends that request only;
* a stream closed, cancelled or garbage-collected leaves before the next step.

A step waits for both models' groups: a request on the SLM waits for the LLM's pass of the same
step. Grouping by length keeps a long catch-up from stretching everyone's pass, and rotation keeps a
bounded batch from starving anyone; the step's order (SLM groups first) never changes a result.

Gathering LLM rows (``llm_wait_steps`` > 0). Where a pass costs nearly the same for 1 row as for 8
(a GPU, or a CPU with native bf16 matmuls: the LLM's pass here costs 41 ms for 1 token and 46 ms
for 8), running the LLM's pass in every step that has one LLM row pays its whole cost for that row,
and the requests on the SLM wait for it. So while some requests are on the SLM, the LLM's rows wait
for company: the LLM's pass runs in a step when at least ``LLM_GATHER_FRACTION`` of the step's
requests need it, when no request of the step is on the SLM, or when one of its rows has waited
``llm_wait_steps`` steps; otherwise the step runs the SLM's pass alone (about a quarter of the LLM's)
and the waiting rows keep their place. No decision depends on when a pass runs, so every request's
tokens and sources are the same as with no waiting; only its latency moves: an LLM row waits at most
``llm_wait_steps`` SLM-only steps, in exchange for fewer, fuller LLM passes for the batch.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Iterator

from ..models.openmp import releasing_openmp_team
from .batch import batchable, catch_up_batch
from .request import PassNeed, RequestDecoder
from .slot import NextToken
from .stats import TokenEvent

MAX_EVENTS_AHEAD = 32
"""A request with this many unread events sits out the next steps until its consumer reads."""
LLM_GATHER_FRACTION = 0.75
"""With LLM rows waiting for company, the LLM's pass runs once this share of a step's requests need it."""
LENGTH_SPREAD = 8
"""Rows that cannot be packed share a pass while the longest feeds at most 2x + this many tokens more than the shortest."""
PACKED_KEYS_LIMIT = 2048
"""All of a step's rows on one model share one pass while their cached plus new tokens are at most this many."""


class Ticket:
    """One admitted request: its decoder, events decided but not read yet, and how it ended."""

    def __init__(self, decoder: RequestDecoder) -> None:
        self.decoder = decoder
        self.events: deque[TokenEvent] = deque()
        self.error: BaseException | None = None
        self.left = False
        self.steps_waited_for_llm = 0
        """Steps in a row that this request needed the LLM's pass and the step ran without it."""

    @property
    def done(self) -> bool:
        return self.left or self.error is not None or self.decoder.finished

    @property
    def runnable(self) -> bool:
        return not self.done and len(self.events) < MAX_EVENTS_AHEAD


class BatchScheduler:
    """Runs the steps of every admitted request together (see the module docstring)."""

    def __init__(self, max_batch_size: int, step_lock: threading.Lock,
                 before_step: Callable[[], None] | None = None, llm_wait_steps: int = 0) -> None:
        self.max_batch_size = max_batch_size
        self.llm_wait_steps = llm_wait_steps
        """At most this many steps an LLM row waits for company (0: the LLM's pass runs in every step that needs it)."""
        self._step_lock = step_lock
        """Held for a whole step: one pass at a time on the models (shared with ``decode_alone``)."""
        self._before_step = before_step
        """Run first in every step, under the step lock (the engine gives ended requests' caches back)."""
        self._members_lock = threading.Lock()
        self._turns = threading.Condition()
        self._driving = False
        """A consumer is running a step (under ``_turns``); the others wait on ``_turns`` (``_take_the_drive``)."""
        self._live: list[Ticket] = []
        """Admitted and not done, least recently served first."""

    @property
    def live_requests(self) -> int:
        with self._members_lock:
            return len(self._live)

    def admit(self, decoder: RequestDecoder) -> Ticket:
        ticket = Ticket(decoder)
        with self._members_lock:
            self._live.append(ticket)
        return ticket

    def leave(self, ticket: Ticket) -> None:
        ticket.left = True
        with self._members_lock:
            if ticket in self._live:
                self._live.remove(ticket)
        with self._turns:
            self._turns.notify_all()  # a consumer waiting for a turn on this ticket finds it done

    def events(self, ticket: Ticket) -> Iterator[TokenEvent]:
        """The ticket's events in order, running steps while none is decided; ends with the request."""
        while True:
            if ticket.events:
                yield ticket.events.popleft()
                continue
            if ticket.error is not None:
                error, ticket.error = ticket.error, None
                ticket.left = True
                raise error
            if ticket.done:
                return
            if self._take_the_drive(ticket):
                try:
                    self._locked_step()
                finally:
                    self._hand_over_the_drive()

    def _take_the_drive(self, ticket: Ticket) -> bool:
        """Wait until this ticket has something to read (False) or no consumer is driving (True: drive now).

        Consumers with events to read never queue behind the step lock: a lock is not fair, so a driver
        that takes the next step at once could keep them from reading, and a request whose unread
        events reach ``MAX_EVENTS_AHEAD`` sits steps out.
        """
        with self._turns:
            while self._driving and not ticket.events and not ticket.done:
                self._turns.wait()
            if ticket.events or ticket.done:
                return False
            self._driving = True
            return True

    def _hand_over_the_drive(self) -> None:
        with self._turns:
            self._driving = False
            self._turns.notify_all()  # readers of this step's events, and the next driver

    @releasing_openmp_team  # the next step may run on another consumer's thread (``models.openmp``)
    def _locked_step(self) -> None:
        with self._step_lock:
            self._step()

    def _step(self) -> None:
        if self._before_step is not None:
            self._before_step()
        members = [ticket for ticket in self._take_members() if not _keep_forced(ticket)]
        needs = self._gather_llm_rows([(ticket, ticket.decoder.next_pass()) for ticket in members])
        self._mark_served([ticket for ticket, _ in needs])
        for group in _groups(needs):
            results = _run_group(group)
            for (ticket, _), nxt in zip(group, results):
                if nxt is not None:
                    _advance(ticket, nxt)
        with self._members_lock:
            self._live = [t for t in self._live if not t.done]

    def _take_members(self) -> list[Ticket]:
        """Up to ``max_batch_size`` runnable tickets, least recently served first."""
        with self._members_lock:
            return [t for t in self._live if t.runnable][: self.max_batch_size]

    def _mark_served(self, served: list[Ticket]) -> None:
        """The tickets that get a pass this step move to the back; those left waiting keep their place."""
        moved = set(served)
        with self._members_lock:  # a ticket that left meanwhile (another thread's ``leave``) stays out
            self._live = [t for t in self._live if t not in moved] + [t for t in served if not t.left]

    def _gather_llm_rows(self, needs: list[tuple[Ticket, PassNeed]]) -> list[tuple[Ticket, PassNeed]]:
        """The step's rows, less the LLM's rows while they wait for company (see the module docstring)."""
        on_llm = [ticket for ticket, need in needs if need.role == "llm"]
        if self.llm_wait_steps == 0 or not on_llm:
            return needs
        waited_enough = max(ticket.steps_waited_for_llm for ticket in on_llm) >= self.llm_wait_steps
        if len(on_llm) == len(needs) or waited_enough or len(on_llm) >= LLM_GATHER_FRACTION * len(needs):
            for ticket in on_llm:
                ticket.steps_waited_for_llm = 0
            return needs
        for ticket in on_llm:
            ticket.steps_waited_for_llm += 1
        return [(ticket, need) for ticket, need in needs if need.role != "llm"]


def _groups(needs: list[tuple[Ticket, PassNeed]]) -> list[list[tuple[Ticket, PassNeed]]]:
    """Rows that share a pass: one model; all its rows if they can be packed into one pass, else rows
    of similar numbers of new tokens (shortest first)."""
    groups: list[list[tuple[Ticket, PassNeed]]] = []
    for role in ("slm", "llm"):
        rows = sorted((item for item in needs if item[1].role == role), key=lambda item: item[1].new_tokens)
        if rows and _one_packed_pass(rows):
            groups.append(rows)
            continue
        current: list[tuple[Ticket, PassNeed]] = []
        for item in rows:
            if current and item[1].new_tokens > 2 * current[0][1].new_tokens + LENGTH_SPREAD:
                groups.append(current)
                current = []
            current.append(item)
        if current:
            groups.append(current)
    return groups


def _one_packed_pass(rows: list[tuple[Ticket, PassNeed]]) -> bool:
    """Whether these rows of one model can share one pass (packed, when their lengths differ: ``decoding.batch``).

    A packed pass's attention covers every row's keys for every query, so its cost grows with the
    product of new tokens and all keys; below ``PACKED_KEYS_LIMIT`` keys the weights' matmuls, which
    grow with the new tokens alone, dominate, and one pass costs less than one per length group.
    """
    slots = [need.slot for _, need in rows]
    keys = sum(slot.n_cached for slot in slots) + sum(need.new_tokens for _, need in rows)
    return batchable(slots) and slots[0].loaded.packs_rows and keys <= PACKED_KEYS_LIMIT


def _run_group(group: list[tuple[Ticket, PassNeed]]) -> list[NextToken | None]:
    """One batched pass; if it raises, each row alone, with the error kept by the rows that fail."""
    needs = [need for _, need in group]
    try:
        return catch_up_batch([n.slot for n in needs], [n.tokens for n in needs], [n.kind for n in needs],
                              any(n.want_hidden for n in needs), [n.proposal for n in needs])
    except Exception:  # noqa: BLE001 - find the row at fault; the others go on
        results: list[NextToken | None] = []
        for ticket, need in group:
            try:
                results.append(need.slot.catch_up(need.tokens, need.kind, need.want_hidden, need.proposal))
            except Exception as error:  # noqa: BLE001 - delivered to this request's consumer
                ticket.error = error
                results.append(None)
        return results


def _keep_forced(ticket: Ticket) -> bool:
    """Queue the tokens the request's grammar forces here (no pass); True if the request needs no pass now."""
    try:
        while (event := ticket.decoder.forced()) is not None:
            ticket.events.append(event)
    except Exception as error:  # noqa: BLE001 - ends this request only
        ticket.error = error
    return ticket.done


def _advance(ticket: Ticket, nxt: NextToken) -> None:
    try:
        events = ticket.decoder.advance(nxt)
    except Exception as error:  # noqa: BLE001 - a router that raises ends its own request only
        ticket.error = error
        return
    ticket.events.extend(events)


def idle_when_batched(decoder: RequestDecoder, wall_seconds: float) -> float:
    """Idle time of a batched request: its wall time minus the wall time of the passes it took part in."""
    busy = sum(record.seconds for record in decoder.request.records())
    return max(wall_seconds - busy, 0.0)
