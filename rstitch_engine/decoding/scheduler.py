"""Continuous batching of concurrent requests: each step runs every live request once.

A step takes up to ``max_batch_size`` runnable requests (those served longest ago first, so a
bounded batch rotates fairly), keeps the tokens their grammars force (no pass), asks each
``RequestDecoder`` for its plan (one ``RowPlan`` for its active model), hands each model's rows to
that model's runner (``models.runner.ModelRunner``: it chooses how the rows share passes), and
gives every decoder its own row's result, which it applies exactly as it would alone. Serial
decoding is this scheduler with ``max_batch_size=1``. Requests join (``admit``) and leave
(``leave``: finished, closed, abandoned) between steps.

There is no scheduler thread. A consumer that wants its request's next event and finds none
decided yet runs a step for everyone if no other consumer is running one; otherwise it waits for
that step to end and takes its event from it (waiting on a condition, not on the step lock, so
that a driver that goes straight on to the next step never keeps the others from reading). Whoever
reads drives, so the step runs on the caller's threads, asyncio's worker threads included, and one
request alone decodes exactly as before.

Faults stay with their request:

* a request whose consumer stops reading pauses once ``MAX_EVENTS_AHEAD`` events wait unread, and
  the others go on;
* a row whose pass fails gets the error (the runner reruns a failed shared pass row by row), raised
  to its consumer at its next read;
* an error in a request's own routing (a router that raises) ends that request only;
* a stream closed, cancelled or garbage-collected leaves before the next step.

A step waits for both models' passes: a request on the SLM waits for the LLM's pass of the same
step. Rotation keeps a bounded batch from starving anyone; the step's order (the SLM's rows first)
never changes a result.

Gathering LLM rows (``llm_wait_steps`` > 0). Where a pass costs nearly the same for 1 row as for 8
(a GPU, or a CPU with native bf16 matmuls), running the LLM's pass in every step that has one LLM row pays its whole cost for that row,
and the requests on the SLM wait for it. So while some requests are on the SLM, the LLM's rows wait
for company: the LLM's pass runs in a step when at least ``LLM_GATHER_FRACTION`` of the step's
requests need it, when no request of the step is on the SLM, or when one of its rows has waited
``llm_wait_steps`` steps; otherwise the step runs the SLM's pass alone and the waiting rows keep their place. No decision depends on when a pass runs, so every request's
tokens and sources are the same as with no waiting; only its latency moves: an LLM row waits at most
``llm_wait_steps`` SLM-only steps, in exchange for fewer, fuller LLM passes for the batch.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Iterator, Mapping

from ..models.openmp import releasing_openmp_team
from ..models.runner import ModelRole, ModelRunner, RowPlan, RowResult
from .request import RequestDecoder
from .stats import TokenEvent

MAX_EVENTS_AHEAD = 32
"""A request with this many unread events sits out the next steps until its consumer reads."""
LLM_GATHER_FRACTION = 0.75
"""With LLM rows waiting for company, the LLM's pass runs once this share of a step's requests need it."""

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

    def __init__(self, max_batch_size: int, step_lock: threading.Lock, runners: Mapping[ModelRole, ModelRunner],
                 before_step: Callable[[], None] | None = None, llm_wait_steps: int = 0) -> None:
        self.max_batch_size = max_batch_size
        self._runners = runners
        """Each model's runner: all of a step's rows on that model go to it together."""
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
        rows = self._gather_llm_rows([(ticket, ticket.decoder.plan()) for ticket in members])
        self._mark_served([ticket for ticket, _ in rows])
        for role in ("slm", "llm"):
            on_model = [(ticket, plan) for ticket, plan in rows if plan.slot.role == role]
            if on_model:
                results = self._runners[role].run([plan for _, plan in on_model])  # type: ignore[index]
                for (ticket, _), result in zip(on_model, results):
                    _advance(ticket, result)
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

    def _gather_llm_rows(self, rows: list[tuple[Ticket, RowPlan]]) -> list[tuple[Ticket, RowPlan]]:
        """The step's rows, less the LLM's rows while they wait for company (see the module docstring)."""
        on_llm = [ticket for ticket, plan in rows if plan.slot.role == "llm"]
        if self.llm_wait_steps == 0 or not on_llm:
            return rows
        waited_enough = max(ticket.steps_waited_for_llm for ticket in on_llm) >= self.llm_wait_steps
        if len(on_llm) == len(rows) or waited_enough or len(on_llm) >= LLM_GATHER_FRACTION * len(rows):
            for ticket in on_llm:
                ticket.steps_waited_for_llm = 0
            return rows
        for ticket in on_llm:
            ticket.steps_waited_for_llm += 1
        return [(ticket, plan) for ticket, plan in rows if plan.slot.role != "llm"]


def _keep_forced(ticket: Ticket) -> bool:
    """Queue the tokens the request's grammar forces here (no pass); True if the request needs no pass now."""
    try:
        while (event := ticket.decoder.forced()) is not None:
            ticket.events.append(event)
    except Exception as error:  # noqa: BLE001 - ends this request only
        ticket.error = error
    return ticket.done


def _advance(ticket: Ticket, result: RowResult) -> None:
    """Apply a row's result to its request: its events, or the error of its pass or of its routing."""
    if result.error is not None:
        ticket.error = result.error
        return
    try:
        events = ticket.decoder.advance(result)
    except Exception as error:  # noqa: BLE001 - a router that raises ends its own request only
        ticket.error = error
        return
    ticket.events.extend(events)
