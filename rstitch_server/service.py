"""The engine behind the HTTP layer: requests in, the core's steps out, asynchronously.

Framework-free apart from asyncio: a request (its validated body) becomes the adapters' core call
(``rstitch_integrations.core.prepare_call`` / ``decode_call``; plain prompts skip the chat
template), and its steps are read one by one on a worker thread, so the event loop never waits on
a forward pass. All requests share the engine's batching scheduler: whoever reads drives a step
for everyone (``rstitch_engine.decoding.scheduler``).

Invariants:

* every call that was opened is closed: ``RunningCall.steps`` closes the core's generator on a
  worker thread once the step in flight (if any) returns, even when the reader was cancelled (a
  client that went away), so the request leaves the batch within a step;
* ``in_flight`` counts opened calls not yet closed (the drain on shutdown waits for it to reach 0).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any

from rstitch_engine import InvalidSettingError, StitchEngine
from rstitch_integrations.core import CallStep, PreparedCall, StitchOptions, decode_call, prepare_call

from .metrics import ServerMetrics
from .protocol import ChatCompletionRequest, CompletionRequest

_DONE = object()


@dataclass
class RunningCall:
    """One opened request: its prompt length and its steps (read with ``steps()``, once)."""

    prompt_tokens: int
    tool_names: frozenset[str] | None
    _service: StitchService
    _core: Generator[CallStep, None, None]
    _started: float

    _reading: bool = False

    def __del__(self) -> None:
        if not self._reading:  # never read (the client left before the response started): close it anyway
            self._reading = True
            self._service.metrics.queue_depth.dec()
            self._close_later(None)

    async def steps(self) -> AsyncIterator[CallStep]:
        """The core's steps; the last one has the stats. Closing or cancelling the reader ends the request."""
        self._reading = True
        service, pending = self._service, None
        last_token, finished = None, False
        try:
            while True:
                pending = service.pool.submit(next, self._core, _DONE)
                step = await asyncio.wrap_future(pending)
                if step is _DONE:
                    finished = True
                    return
                now = time.perf_counter()
                if step.event is not None:
                    if last_token is None:
                        service.metrics.ttft.observe(now - self._started)
                        service.metrics.queue_depth.dec()
                    else:
                        service.metrics.itl.observe(now - last_token)
                    last_token = now
                if step.stats is not None:  # the last step: the request is complete
                    finished = True
                    service.metrics.record_stats(step.stats)
                yield step
        finally:
            if last_token is None:
                service.metrics.queue_depth.dec()
            if not finished:  # its reader went away (or it raised) before the end
                service.metrics.disconnects.inc()
            self._close_later(pending)  # no await here: this may run in a cancelled task (the client went away)

    def _close_later(self, pending: concurrent.futures.Future | None) -> None:
        """Close the core on a worker thread once ``pending`` (the step in flight) returns."""
        try:
            self._service.pool.submit(self._service.close_call, pending, self._core)
        except RuntimeError:  # the pool has shut down with the server: nothing runs the core any more
            self._service.close_call(None, self._core)


class StitchService:
    """An engine and the server's default options; opens calls and closes them."""

    def __init__(self, engine: StitchEngine, options: StitchOptions, model_id: str,
                 metrics: ServerMetrics | None = None) -> None:
        self.engine = engine
        self.options = options
        self.model_id = model_id
        self.metrics = metrics or ServerMetrics()
        # one thread per reader in flight: a reader blocks while another drives the batch's step
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(64, 4 * engine.max_batch_size),
                                                          thread_name_prefix="rstitch-serve")
        self._lock = threading.Lock()
        self._closed = False
        self.in_flight = 0

    async def open_chat(self, request: ChatCompletionRequest) -> RunningCall:
        """Validate and start a chat request (raises ``RStitchError`` for what the engine refuses)."""
        messages = request.messages
        measure = self.options.measure_speedup if request.measure_speedup is None else request.measure_speedup
        return await self._open(lambda: prepare_call(self.engine, self.options, messages, request.call_options()),
                                request.separate_reasoning, measure)

    async def open_completion(self, request: CompletionRequest) -> RunningCall:
        """Validate and start a plain-prompt request (no chat template)."""
        def prepare() -> PreparedCall:
            options = request.call_options()
            settings, routing = self.options.request_settings(options), self.options.request_routing(options)
            return PreparedCall(self.engine.encode(request.text), settings, routing, prefix="", tool_names=None,
                                forced_call=False, deadline=None)
        return await self._open(prepare, separate_reasoning=False, measure_speedup=self.options.measure_speedup)

    async def _open(self, prepare: Any, separate_reasoning: bool, measure_speedup: bool) -> RunningCall:
        started = time.perf_counter()

        def start() -> tuple[PreparedCall, Generator[CallStep, None, None]]:
            try:
                call = prepare()  # input processing only: what fails here is the request's fault
            except (TypeError, KeyError, AttributeError) as error:
                raise InvalidSettingError(f"the request cannot be read: {error!r}") from error
            return call, decode_call(self.engine, call, separate_reasoning, measure_speedup)

        call, core = await asyncio.wrap_future(self.pool.submit(start))  # bad input raises here, before any pass
        with self._lock:
            self.in_flight += 1
        self.metrics.running.inc()
        self.metrics.queue_depth.inc()
        return RunningCall(len(call.prompt_ids), call.tool_names, self, core, started)

    def close_call(self, pending: concurrent.futures.Future | None, core: Generator[CallStep, None, None]) -> None:
        """Close a call's generator once its step in flight returns (a running generator cannot be closed)."""
        if pending is not None:
            concurrent.futures.wait([pending])
        try:
            core.close()
        except ValueError:  # still running (only when the pool shut down under it): it ends with the process
            pass
        finally:
            with self._lock:
                self.in_flight -= 1
            self.metrics.running.dec()

    @property
    def closed(self) -> bool:
        """Whether ``shutdown`` ran (the service takes no more requests)."""
        return self._closed

    def shutdown(self) -> None:
        """Stop the worker threads (reads in flight finish; queued ones are cancelled)."""
        self._closed = True
        self.pool.shutdown(wait=False, cancel_futures=True)
