"""The engine's torch work leaves no OpenMP thread team on the thread that ran it (``models.openmp``).

A libgomp team is one extra OS thread per extra torch thread. The worker thread here gets an OS
name of its own, which the threads it creates inherit, so its team shows in ``/proc/self/task``
whatever other threads come and go (``helpers.settle``). Tiny models run no parallel region, so
the passes here are made to run one (``helpers.parallel_region``); the control shows that such a
region leaves a team.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pytest
import torch
from helpers import name_this_os_thread, parallel_region, settle, torch_threads
from tiny import byte_level_tokenizer, tiny_engine, tiny_model

from rstitch_engine import GenerationSettings, StitchEngine
from rstitch_engine.models import loading
from rstitch_engine.models.loaded import LoadedModel
from rstitch_engine.models.openmp import release_openmp_team

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task") or release_openmp_team() is False,
                                reason="needs Linux and torch on GNU OpenMP 5.0 (the PyPI wheels)")


@pytest.fixture()
def two_torch_threads():
    with torch_threads(2):
        yield


@pytest.fixture()
def worker(two_torch_threads):
    """A long-lived thread (like an executor's) holding no team, and its count of OS threads then (1: itself)."""
    with ThreadPoolExecutor(1) as executor:
        executor.submit(name_this_os_thread).result()
        assert executor.submit(release_openmp_team).result() is True
        yield executor, settle(1)


@pytest.fixture()
def passes_run_parallel_regions(monkeypatch):
    forward, forward_rows = LoadedModel.forward, LoadedModel.forward_rows

    def forward_with_region(self, *args, **kwargs):
        parallel_region()
        return forward(self, *args, **kwargs)

    def rows_with_region(self, *args, **kwargs):
        parallel_region()
        return forward_rows(self, *args, **kwargs)

    monkeypatch.setattr(LoadedModel, "forward", forward_with_region)
    monkeypatch.setattr(LoadedModel, "forward_rows", rows_with_region)


def test_a_parallel_region_leaves_a_team_until_released(worker):
    executor, idle = worker
    executor.submit(parallel_region).result()
    assert settle(idle + 1) == idle + 1  # the worker's team: one more OS thread at 2 torch threads
    assert executor.submit(release_openmp_team).result() is True
    assert settle(idle) == idle


def settings() -> GenerationSettings:
    return GenerationSettings(max_new_tokens=6)


def scheduled(engine: StitchEngine) -> Callable[[], object]:
    return lambda: engine.generate("abc", settings())


def batch(engine: StitchEngine) -> Callable[[], object]:
    return lambda: engine.generate_batch(["abc", "hello"], settings())


def streamed_halfway(engine: StitchEngine) -> Callable[[], object]:
    def read_two() -> None:
        stream = engine.stream("abc", settings())
        next(stream), next(stream)
        stream.close()

    return read_two


def serial(engine: StitchEngine) -> Callable[[], object]:
    one_by_one = StitchEngine(engine.pair, engine.router, max_batch_size=1)
    return lambda: one_by_one.generate("abc", settings())


def alone(engine: StitchEngine) -> Callable[[], object]:
    return lambda: engine.decode_alone("llm", "abc", settings())


@pytest.mark.parametrize("work", [scheduled, batch, streamed_halfway, serial, alone])
def test_engine_work_on_a_thread_leaves_no_team_there(worker, passes_run_parallel_regions, work):
    executor, idle = worker
    engine = tiny_engine(0.5)
    executor.submit(work(engine)).result()
    assert settle(idle) == idle
    executor.submit(parallel_region).result()  # the control: the same region outside the engine stays
    assert settle(idle + 1) == idle + 1


def test_loading_a_pair_leaves_no_team(worker, monkeypatch, tmp_path):
    executor, idle = worker
    tokenizer = byte_level_tokenizer()
    for role, seed in (("slm", 1), ("llm", 2)):
        tiny_model("llama", len(tokenizer), seed=seed).to(torch.float32).save_pretrained(tmp_path / role)
        tokenizer.save_pretrained(tmp_path / role)
    load_model = loading.load_model

    def load_with_region(spec):
        parallel_region()
        return load_model(spec)

    monkeypatch.setattr(loading, "load_model", load_with_region)
    specs = [loading.ModelSpec(str(tmp_path / role), device="cpu", dtype="float32") for role in ("slm", "llm")]
    pair = executor.submit(loading.load_pair, *specs).result()
    assert pair.vocab_size == len(tokenizer)
    assert settle(idle) == idle
