"""Concurrent callers get independent, exact results; abandoned streams leave nothing behind."""

from __future__ import annotations

import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from tiny import tiny_pair

from rstitch_engine import EntropyRouter, GenerationSettings, StitchEngine
from rstitch_engine.decoding.engine import read_in_turn

PROMPTS = ["The quick brown", "What is 3 + 4?", "def add(a, b):", "Café 東京", "When the small", "x", "12 * 3", "lazy"]


@pytest.fixture(scope="module")
def engine() -> StitchEngine:
    return StitchEngine(tiny_pair(), EntropyRouter(0.7))


def requests_for(thread: int) -> list[tuple[str, float, GenerationSettings]]:
    """4 requests per thread, with different prompts, thresholds and lengths."""
    return [
        (PROMPTS[(thread + k) % len(PROMPTS)], (0.6, 0.7, 0.75, 0.8)[k], GenerationSettings(max_new_tokens=16 + 4 * k))
        for k in range(4)
    ]


def run_one(engine: StitchEngine, request) -> tuple[tuple[int, ...], str, int]:
    prompt, tau, settings = request
    result = engine.generate(prompt, settings, EntropyRouter(tau))
    return result.token_ids, result.text, result.stats.switches_to_llm


def test_eight_threads_times_four_requests_equal_sequential_results(engine):
    all_requests = [requests_for(t) for t in range(8)]
    sequential = [[run_one(engine, r) for r in reqs] for reqs in all_requests]
    barrier = threading.Barrier(8)

    def worker(reqs):
        barrier.wait()  # all threads start together
        return [run_one(engine, r) for r in reqs]

    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(worker, all_requests))
    assert concurrent == sequential
    assert sum(s for reqs in sequential for _, _, s in reqs) > 0  # the requests did switch models


def test_interleaved_streams_in_one_thread_are_independent(engine):
    settings = GenerationSettings(max_new_tokens=24)
    alone = [engine.generate(p, settings).token_ids for p in PROMPTS[:3]]
    streams = [engine.stream(p, settings) for p in PROMPTS[:3]]
    outputs = [tuple(e.token_id for e in events) for events in read_in_turn(streams)]  # one event each, in turn
    assert outputs == alone


@pytest.mark.parametrize("how", ["drop", "close", "context"])
def test_abandoned_stream_leaves_the_engine_ready(engine, how):
    settings = GenerationSettings(max_new_tokens=24)
    expected = engine.generate(PROMPTS[1], settings).token_ids
    stream = engine.stream(PROMPTS[0], settings)
    if how == "context":
        with stream:
            next(stream), next(stream)
    else:
        next(stream), next(stream), next(stream)
        if how == "close":
            stream.close()
            assert next(stream, None) is None
        del stream
        gc.collect()
    assert engine.generate(PROMPTS[1], settings).token_ids == expected


def test_time_spent_waiting_is_idle_not_busy(engine):
    """A slow consumer and another request's passes count as idle time, not as decoding time."""
    settings = GenerationSettings(max_new_tokens=6)
    stream = engine.stream(PROMPTS[0], settings)
    for _ in stream:
        time.sleep(0.05)  # the consumer's time
    stats = stream.stats
    assert stats.idle_seconds >= 6 * 0.05 and stats.busy_seconds == stats.wall_seconds - stats.idle_seconds
    other = engine.stream(PROMPTS[1], settings)
    next(other)
    engine._forward_lock.acquire()  # another request's long forward pass
    threading.Timer(0.3, engine._forward_lock.release).start()
    list(other)
    assert other.stats.idle_seconds >= 0.3 and other.stats.busy_seconds < other.stats.wall_seconds - 0.25


def test_stats_survive_iterating_past_the_end(engine):
    stream = engine.stream(PROMPTS[0], GenerationSettings(max_new_tokens=4))
    assert len(list(stream)) == 4
    assert next(stream, None) is None and list(stream) == []
    assert stream.stats.output_tokens == 4


def test_stream_abandoned_in_another_thread_does_not_block_others(engine):
    settings = GenerationSettings(max_new_tokens=24)
    expected = engine.generate(PROMPTS[2], settings).token_ids
    kept: list = []

    def abandon():
        stream = engine.stream(PROMPTS[0], settings)
        next(stream)
        kept.append(stream)  # still referenced, never finished

    thread = threading.Thread(target=abandon)
    thread.start()
    thread.join()
    result: list = []
    worker = threading.Thread(target=lambda: result.append(engine.generate(PROMPTS[2], settings).token_ids))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and result == [expected]
    with pytest.raises(RuntimeError, match="stats are available once"):
        kept[0].stats


def test_engines_on_one_pair_never_run_passes_at_the_same_time(engine, monkeypatch):
    """Two engines with other batching settings over the same loaded models take turns on them."""
    inside = {"now": 0, "most": 0}
    guard = threading.Lock()

    def counted(forward):
        def wrapped(*args, **kwargs):
            with guard:
                inside["now"] += 1
                inside["most"] = max(inside["most"], inside["now"])
            try:
                time.sleep(0.001)  # release the GIL mid-pass: an unguarded pass from another thread would start now
                return forward(*args, **kwargs)
            finally:
                with guard:
                    inside["now"] -= 1
        return wrapped

    for loaded in (engine.pair.slm, engine.pair.llm):
        decoder = loaded.model.get_decoder()
        monkeypatch.setattr(decoder, "forward", counted(decoder.forward))
    engines = [engine, StitchEngine(engine.pair, EntropyRouter(0.7), max_batch_size=1),
               StitchEngine(engine.pair, EntropyRouter(0.7), max_batch_size=4, llm_wait_steps=0)]
    expected = [run_one(engine, r) for r in requests_for(0)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda k: [run_one(engines[k % 3], r) for r in requests_for(0)], range(6)))
    assert results == [expected] * 6
    assert inside["most"] == 1
