"""Leave no idle OpenMP thread team behind, so that passes driven from several threads stay fast on CPU.

torch's CPU kernels run OpenMP parallel regions. GNU OpenMP (libgomp, which the PyPI torch wheels
for Linux ship) keeps a team of worker threads for every OS thread that has run such a region, for
as long as that thread lives. Once the teams' threads outnumber the CPUs, libgomp lets each worker
spin only briefly before it sleeps, so each of a decode pass's many small regions pays a futex
wake-up, on *any* thread once a second team lives, the first thread's included. Concurrent callers
drive the engine from several threads (LangChain's ``batch`` thread pool, ``asyncio.to_thread``, a
web server's workers), each of which would keep its team, so every later pass of the process ran
throttled (``benchmarks/batched_throughput.py`` measures it: "batched from threads", and its
``--keep-openmp-teams`` ablation).

So every unit of the engine's torch work (a scheduler step, a one-request pass, a model decoding
alone, loading a pair) ends with ``release_openmp_team``: OpenMP 5.0's ``omp_pause_resource_all``
frees the calling thread's team (its next parallel region makes a new one). The engine's work is
serialised per pair, so at most one of its teams lives at a time. Call it yourself after torch work of your own on a thread that then waits on the
engine (an embedding model on the event loop's thread, say) to keep that thread's team from
throttling the engine's passes.

It does nothing where torch does not use libgomp (LLVM's libomp on macOS, Intel's libiomp, no
OpenMP at all), where libgomp is older than OpenMP 5.0, or inside a parallel region.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch  # noqa: F401 - maps libgomp before ``_pause_all`` looks for it (its answer is cached)

OMP_PAUSE_SOFT = 1
"""``omp_pause_soft`` of OpenMP 5.0's ``omp_pause_resource_t``: free the threads, keep the settings."""

Result = TypeVar("Result")


@functools.cache
def _pause_all() -> Callable[[int], int] | None:
    """libgomp's ``omp_pause_resource_all``, if the libgomp this process loaded has it."""
    library = _loaded_libgomp()
    if library is None:
        return None
    try:
        pause = ctypes.CDLL(library).omp_pause_resource_all  # dlopen of a loaded library: the same copy
    except (OSError, AttributeError):
        return None
    pause.argtypes = [ctypes.c_int]
    pause.restype = ctypes.c_int
    return pause


def _loaded_libgomp() -> str | None:
    """Path of the libgomp mapped into this process (Linux), or None."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    return next((line.split()[-1] for line in maps.splitlines() if "/libgomp" in line), None)


def release_openmp_team() -> bool:
    """Free the calling thread's OpenMP worker threads (see the module docstring); True if freed or none held.

    Safe to call at any time from any thread: it only touches the caller's own team, and libgomp
    refuses (False) inside a parallel region.
    """
    pause = _pause_all()
    return pause is not None and pause(OMP_PAUSE_SOFT) == 0


def releasing_openmp_team(work: Callable[..., Result]) -> Callable[..., Result]:
    """Decorate a unit of torch work so that it ends with ``release_openmp_team``, however it ends."""

    @functools.wraps(work)
    def run(*args: Any, **kwargs: Any) -> Result:
        try:
            return work(*args, **kwargs)
        finally:
            release_openmp_team()

    return run
