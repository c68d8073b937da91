"""Shared test helpers: reference implementations the engine is checked against, a router that
records its consultations, loading a ``benchmarks/`` script as a module, and counting a thread's
OpenMP team (``rstitch_engine.models.openmp``)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ctypes
import importlib.util
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Awaitable, Callable, Iterator

import torch
from pydantic import BaseModel
from transformers import DynamicCache

from rstitch_engine.decoding.routing import Router, RouterBase, RouterState
from rstitch_engine.models.transformers_runner import Slot
from rstitch_engine.models.loaded import cache_keyword

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (loaded once; benchmarks are scripts, not a package)."""
    module_name = f"rstitch_bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@dataclass
class RecordingRouter(RouterBase):
    """Delegates to a router and records every consultation (state, answer)."""

    inner: Router
    calls: list[tuple[RouterState, bool]] = field(default_factory=list)
    needs_hidden_state: bool = True

    @property
    def threshold(self) -> float:
        return self.inner.threshold

    def wants_llm(self, state: RouterState) -> bool:
        answer = self.inner.wants_llm(state)
        self.calls.append((state, answer))
        return answer

    def hands_back(self, state: RouterState) -> bool:
        return self.inner.hands_back(state)


@torch.inference_mode()
def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int, eos_ids) -> list[int]:
    """The model's own greedy output from transformers' ``generate`` (EOS included, as the engine does)."""
    output = model.generate(
        torch.tensor([prompt_ids], device=model.device),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=model.device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(eos_ids),
        pad_token_id=sorted(eos_ids)[0],
    )
    return output[0, len(prompt_ids):].tolist()


@torch.inference_mode()
def fresh_logits(model, token_ids: list[int], vocab_size: int) -> torch.Tensor:
    """Next-token logits after a fresh prefill of ``token_ids`` (no cache reuse). [V]"""
    out = model(input_ids=torch.tensor([token_ids], device=model.device), use_cache=False)
    return out.logits[0, -1, :vocab_size].float()


@torch.inference_mode()
def assert_cache_is_fresh_prefill(slot: Slot, tokens: list[int], atol: float) -> None:
    """The slot's cache equals a fresh prefill of tokens[:n_cached], in contents and in the logits it gives."""
    n = slot.n_cached
    if n == 0:
        assert slot.cache.get_seq_length() == 0
        return
    model = slot.loaded.model
    assert slot.cache.get_seq_length() == n
    fresh = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([tokens[:n]], device=model.device), **{cache_keyword(model): fresh}, use_cache=True)
    for live_layer, fresh_layer in zip(slot.cache.layers, fresh.layers, strict=True):
        torch.testing.assert_close(live_layer.keys, fresh_layer.keys, rtol=0, atol=atol)
        torch.testing.assert_close(live_layer.values, fresh_layer.values, rtol=0, atol=atol)
    probe = tokens[n] if n < len(tokens) else tokens[0]
    live_cache = copy.deepcopy(slot.cache)
    live = model(input_ids=torch.tensor([[probe]], device=model.device), **{cache_keyword(model): live_cache},
                 use_cache=True)
    expected = fresh_logits(model, tokens[:n] + [probe], slot.loaded.vocab_size)
    torch.testing.assert_close(live.logits[0, -1, : slot.loaded.vocab_size].float(), expected, rtol=0, atol=atol)


# ---------------------------------------------------------------------- the two-tool agent task

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome"}
AGENT_TASK = "What is 6 times 7, and what is the capital of France?"
"""Both tools are needed; the real default pair solves it under the tool-call grammar."""
AGENT_CALLS = [("capital_of", {"country": "France"}), ("multiply", {"a": 6, "b": 7})]
"""The calls the task needs, sorted by tool name."""


class Capital(BaseModel):
    """A country and its capital city (a structured-output schema)."""

    country: str
    city: str


def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product."""
    return a * b


def capital_of(country: str) -> str:
    """Look up the capital city of a country."""
    return CAPITALS.get(country, f"unknown country {country!r}")


WORKER_NAME = "rstitch-omp"  # at most 15 bytes (PR_SET_NAME)
PR_SET_NAME = 15


def name_this_os_thread(name: str = WORKER_NAME) -> None:
    """Give the calling OS thread ``name`` (threads it creates from now on inherit it)."""
    libc = ctypes.CDLL(None)
    assert libc.prctl(PR_SET_NAME, name.encode(), 0, 0, 0) == 0


def os_threads() -> int:
    """Threads named by ``name_this_os_thread``: that thread and the OpenMP team threads it made (they inherit its name)."""
    tasks = Path("/proc/self/task")
    return sum((task / "comm").read_text().strip() == WORKER_NAME for task in tasks.iterdir() if (task / "comm").exists())


def settle(expected: int, timeout: float = 5.0) -> int:
    """``os_threads()`` once it reaches ``expected``, or after ``timeout`` (freed team threads exit asynchronously)."""
    deadline = time.monotonic() + timeout
    while os_threads() != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return os_threads()


def parallel_region() -> None:
    """An OpenMP parallel region at 2 torch threads: an element-wise op over libgomp's grain size."""
    torch.ones(1_000_000).add_(1)


def loop_thread_team_counts(ask: Callable[[], Awaitable[object]]) -> list[int]:
    """On a new event-loop thread at 2 torch threads: a parallel region, then ``await ask()``.

    Returns ``os_threads()`` after each: the loop's thread plus its OpenMP team (2), then what the
    call left (1 if it freed the team). The loop's executor threads get a name of their own, so
    their teams do not count.
    """
    counts: list[int] = []

    async def embed_then_ask() -> None:
        executor = ThreadPoolExecutor(initializer=name_this_os_thread, initargs=("rstitch-pool",))
        asyncio.get_running_loop().set_default_executor(executor)
        parallel_region()
        counts.append(settle(2))
        await ask()
        counts.append(settle(1))

    def loop_thread() -> None:
        name_this_os_thread()
        asyncio.run(embed_then_ask())

    with torch_threads(2):
        worker = threading.Thread(target=loop_thread)
        worker.start()
        worker.join()
    return counts


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
