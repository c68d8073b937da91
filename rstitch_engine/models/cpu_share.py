"""How many CPU threads a llama.cpp pass should take now: the cores other processes leave free.

llama.cpp's CPU workers spin while they wait for each other. With as many workers as cores and another
process holding one of them, every pass waits on the worker that the scheduler parked, and the run is
slower than on one thread; with fewer workers than free cores it leaves an idle machine's cores unused
(RESULTS.md, "The llama.cpp backend", measures both). So the thread count follows the machine: every
``interval`` seconds, the CPU time all processes used (``/proc/stat``) minus this process's own
(``os.times``), over the wall time, is the share of the cores that others held; whole cores they held
are taken off.

Invariants: a count is never below 1 nor above its ceiling (the physical cores for a decode, the logical
CPUs for a pass of several tokens); where ``/proc/stat`` cannot be read (not Linux) the ceilings stand.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .hardware import allowed_cpus, physical_cores

HELD_BELOW = 0.25
"""Cores' worth of other processes' CPU time under which none counts as held (daemons, short jobs)."""


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used by every process (all cores together) and by this one, at ``wall`` seconds."""

    all_processes: float
    this_process: float
    wall: float


def read_cpu_sample() -> CpuSample | None:
    """Now's sample, or None where the system-wide figure cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal ...: busy is everything but idle and iowait
    ticks = [int(value) for value in fields[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    times = os.times()
    return CpuSample(busy / os.sysconf("SC_CLK_TCK"), times.user + times.system, time.monotonic())


def cores_held_by_others(before: CpuSample, after: CpuSample) -> int:
    """Whole cores other processes kept busy between two samples (their share rounded up past ``HELD_BELOW``)."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0
    others = ((after.all_processes - before.all_processes) - (after.this_process - before.this_process)) / wall
    return 0 if others <= HELD_BELOW else math.ceil(others - HELD_BELOW)


class ThreadShare:
    """Thread counts for the next pass, refreshed at most every ``interval`` seconds; shared by every
    llama.cpp context of the process (the SLM's and the LLM's), so both see the same machine."""

    def __init__(self, interval: float = 0.5, sample: Callable[[], CpuSample | None] = read_cpu_sample,
                 cores: int | None = None, logical: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._sample, self._clock = sample, clock
        self.cores = cores or physical_cores()
        self.logical = max(logical or allowed_cpus(), self.cores)
        self._lock = threading.Lock()
        self._last = sample()
        self._held = 0

    def threads(self) -> tuple[int, int]:
        """(decode threads, threads of a pass of several tokens) for a pass starting now."""
        with self._lock:  # a sample is taken only once ``interval`` has passed: a pass costs one clock read
            if self._last is not None and self._clock() - self._last.wall >= self.interval:
                now = self._sample()
                if now is not None:
                    self._held = cores_held_by_others(self._last, now)
                    self._last = now
            held = self._held
        return max(1, self.cores - held), max(1, self.logical - held)


_SHARED: ThreadShare | None = None
_SHARED_LOCK = threading.Lock()


def shared_thread_share() -> ThreadShare:
    """The process's one ``ThreadShare``."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = ThreadShare()
        return _SHARED
