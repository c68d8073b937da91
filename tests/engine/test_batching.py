"""Batched stitched decoding: concurrent requests share passes and get exactly their lone results.

The tiny pairs are float64, so a row of a padded batched pass and the same request's lone pass agree
to ~1e-15 and every greedy choice and routing decision is the same: tokens and sources are compared
exactly. Every test also checks that passes really were shared (``largest_batch``), so a scheduler
that silently ran requests one by one would fail here.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch
from helpers import assert_cache_is_fresh_prefill
from tiny import tiny_pair

from rstitch_engine import (
    RouterBase,
    AlwaysLLMRouter,
    EmptyPromptError,
    EntropyRouter,
    GenerationSettings,
    InvalidSettingError,
    StitchEngine,
)
from rstitch_engine.decoding.engine import read_in_turn
from rstitch_engine.decoding.scheduler import MAX_EVENTS_AHEAD
from rstitch_engine.models import transformers_runner as runner_module
from rstitch_engine.models.runner import RowPlan
from rstitch_engine.models.transformers_runner import Slot

PROMPTS = ["The quick brown", "What is 3 + 4? It is", "def add(a, b):", "Café 東京", "When the small model",
           "x", "12 * 3", "lazy dog and the quick fox jumps over"]
TAUS = (0.6, 0.7, 0.75, 0.8, 0.65, 0.7, 0.72, 0.78)
SETTINGS = GenerationSettings(max_new_tokens=20)


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


@pytest.fixture(scope="module")
def batched(pair) -> StitchEngine:
    return StitchEngine(pair, EntropyRouter(0.7), SETTINGS, max_batch_size=8)


@pytest.fixture(scope="module")
def alone(pair):
    """Lone results of each (prompt, tau), from an engine whose passes are never shared."""
    engine = StitchEngine(pair, EntropyRouter(0.7), SETTINGS, max_batch_size=1)
    return {(p, t): engine.generate(p, SETTINGS, EntropyRouter(t)) for p in PROMPTS for t in set(TAUS)}


def signature(result):
    """What must be identical: tokens, who wrote each, and the per-request accounting."""
    stats = result.stats
    return (result.token_ids, tuple(e.source for e in result.events), stats.switches_to_llm, stats.switches_to_slm,
            stats.discarded_slm_tokens, stats.slm.forward_passes, stats.llm.forward_passes,
            stats.slm.catchup_tokens, stats.llm.catchup_tokens, stats.finish_reason)


def test_a_batch_gives_each_request_its_lone_tokens_sources_and_stats(batched, alone):
    results = [batched.generate(p, SETTINGS, EntropyRouter(t)) for p, t in zip(PROMPTS, TAUS)]  # one at a time
    batch = [batched.stream(p, SETTINGS, EntropyRouter(t)) for p, t in zip(PROMPTS, TAUS)]
    outputs = _read_in_turn(batch)
    for (prompt, tau), (events, stats) in zip(zip(PROMPTS, TAUS), outputs):
        lone = alone[(prompt, tau)]
        assert tuple(e.token_id for e in events) == lone.token_ids
        assert tuple(e.source for e in events) == tuple(e.source for e in lone.events)
        assert (stats.switches_to_llm, stats.slm.catchup_tokens, stats.llm.forward_passes) == (
            lone.stats.switches_to_llm, lone.stats.slm.catchup_tokens, lone.stats.llm.forward_passes)
        assert stats.output_tokens == stats.slm_tokens + stats.llm_tokens == len(events)
    assert max(s.largest_batch for _, s in outputs) >= len(PROMPTS) // 2
    assert sum(s.switches_to_llm for _, s in outputs) > 0  # rows switched models inside the batch
    assert all(r.largest_batch == 1 for r in [result.stats for result in results])


def test_llm_alone_requests_start_on_the_llm_beside_stitched_ones(batched, pair):
    """Requests of the LLM-alone router (quality='exact', 'auto' on long prompts) start on the LLM and
    never run the SLM, inside a batch too; each keeps its lone tokens and stats."""
    routers = [AlwaysLLMRouter() if i % 2 else EntropyRouter(tau) for i, tau in enumerate(TAUS)]
    lone_engine = StitchEngine(pair, EntropyRouter(0.7), SETTINGS, max_batch_size=1)
    lone = [signature(lone_engine.generate(p, SETTINGS, r)) for p, r in zip(PROMPTS, routers)]
    streams = [batched.stream(p, SETTINGS, r) for p, r in zip(PROMPTS, routers)]
    results = [SimpleNamespace(token_ids=tuple(e.token_id for e in events), events=events, stats=stats)
               for events, stats in _read_in_turn(streams)]
    assert [signature(r) for r in results] == lone
    for stream, router in zip(streams, routers):
        if isinstance(router, AlwaysLLMRouter):
            assert not stream.request.slots["slm"].records and stream.request.slots["llm"].records[0].cached_tokens == 0
    assert max(r.stats.largest_batch for r in results) > 1


def test_generate_batch_equals_generate_one_by_one(batched, alone):
    results = batched.generate_batch(PROMPTS, SETTINGS, EntropyRouter(0.7))
    assert [signature(r) for r in results] == [signature(alone[(p, 0.7)]) for p in PROMPTS]
    assert all(r.stats.largest_batch > 1 for r in results)


def test_passes_mix_decode_and_catch_up_rows_of_different_lengths(pair):
    engine = StitchEngine(pair, EntropyRouter(0.7), SETTINGS, max_batch_size=8)
    streams = [engine.stream(p, SETTINGS) for p in PROMPTS]
    _read_in_turn(streams)
    shared = [r for s in streams for r in s.request.records() if r.batch_size > 1]
    assert {r.kind for r in shared} == {"decode", "catchup"}
    assert len({r.new_tokens for r in shared if r.kind == "catchup"}) > 1
    assert len({r.cached_tokens for r in shared if r.kind == "decode"}) > 1


def test_threads_and_asyncio_callers_are_batched_and_exact(batched, alone):
    barrier = threading.Barrier(len(PROMPTS))

    def call(prompt, tau):
        barrier.wait()
        return batched.generate(prompt, SETTINGS, EntropyRouter(tau))

    with ThreadPoolExecutor(max_workers=len(PROMPTS)) as pool:
        threaded = list(pool.map(call, PROMPTS, TAUS))

    async def gather():
        return await asyncio.gather(*(asyncio.to_thread(batched.generate, p, SETTINGS, EntropyRouter(t))
                                      for p, t in zip(PROMPTS, TAUS)))

    awaited = asyncio.run(gather())
    for results in (threaded, awaited):
        assert [signature(r) for r in results] == [signature(alone[k]) for k in zip(PROMPTS, TAUS)]
    assert max(r.stats.largest_batch for r in threaded) > 1


def test_max_batch_size_bounds_every_pass_and_serves_everyone(pair, alone):
    engine = StitchEngine(pair, EntropyRouter(0.7), SETTINGS, max_batch_size=3)
    streams = [engine.stream(p, SETTINGS) for p in PROMPTS]
    outputs = _read_in_turn(streams)
    assert [tuple(e.token_id for e in ev) for ev, _ in outputs] == [alone[(p, 0.7)].token_ids for p in PROMPTS]
    sizes = {r.batch_size for s in streams for r in s.request.records()}
    assert max(sizes) == 3


def test_seeded_sampling_is_reproducible_per_request_in_a_batch(batched, pair):
    lone_engine = StitchEngine(pair, EntropyRouter(0.7), SETTINGS, max_batch_size=1)
    settings = [GenerationSettings(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=s) for s in range(len(PROMPTS))]
    lone = [lone_engine.generate(p, s).token_ids for p, s in zip(PROMPTS, settings)]
    streams = [batched.stream(p, s) for p, s in zip(PROMPTS, settings)]
    assert [tuple(e.token_id for e in ev) for ev, _ in _read_in_turn(streams)] == lone


def test_max_batch_size_is_validated(pair):
    for bad in (0, -1, 1.5, True, "8"):
        with pytest.raises(InvalidSettingError, match="max_batch_size"):
            StitchEngine(pair, max_batch_size=bad)  # type: ignore[arg-type]
    for bad in (-1, 2.0, True, "4"):
        with pytest.raises(InvalidSettingError, match="llm_wait_steps"):
            StitchEngine(pair, llm_wait_steps=bad)  # type: ignore[arg-type]


MIXED_TAUS = (0.95, 0.7, 0.95, 0.0, 0.95, 0.7, 0.95, 0.0)
"""Mostly on the SLM, switching, and always on the LLM (tau 0): LLM rows are a minority of most steps."""


@pytest.mark.parametrize("wait", [1, 4])
def test_llm_rows_waiting_for_company_change_no_token_and_share_fewer_llm_passes(pair, wait):
    lone_engine = StitchEngine(pair, EntropyRouter(0.7), SETTINGS, max_batch_size=1)
    lone = [signature(lone_engine.generate(p, SETTINGS, EntropyRouter(t))) for p, t in zip(PROMPTS, MIXED_TAUS)]
    eager_results, eager_passes, eager_waits = _run_recorded(StitchEngine(pair, EntropyRouter(0.7), SETTINGS, 8, 0))
    results, passes, waits = _run_recorded(StitchEngine(pair, EntropyRouter(0.7), SETTINGS, 8, wait))
    assert [signature(r) for r in eager_results] == lone
    assert [signature(r) for r in results] == lone
    assert eager_waits == [0]
    assert max(waits) == wait  # LLM rows waited for company, never longer than allowed
    assert passes < eager_passes  # so the batch ran fewer LLM passes, each with more rows


def test_pass_shares_add_up_to_the_passes_each_model_ran(pair, monkeypatch):
    ran = {"slm": 0, "llm": 0}
    account = runner_module.TransformersRunner._account  # called once per pass the runner runs

    def counting_account(runner, rows, cached, start):
        ran[runner.role] += 1
        return account(runner, rows, cached, start)

    monkeypatch.setattr(runner_module.TransformersRunner, "_account", counting_account)
    engine = StitchEngine(pair, EntropyRouter(0.7), SETTINGS, 8, 4)
    stats = [s for _, s in _read_in_turn([engine.stream(p, SETTINGS, EntropyRouter(t))
                                          for p, t in zip(PROMPTS, MIXED_TAUS)])]
    for role in ("slm", "llm"):
        usage = [getattr(s, role) for s in stats]
        assert sum(u.pass_share for u in usage) == pytest.approx(ran[role], abs=1e-9)
        assert ran[role] < sum(u.forward_passes for u in usage)  # passes were shared
    lone = StitchEngine(pair, EntropyRouter(0.7), SETTINGS, max_batch_size=1).generate(PROMPTS[3], SETTINGS).stats
    assert (lone.slm.pass_share, lone.llm.pass_share) == (lone.slm.forward_passes, lone.llm.forward_passes)


def _run_recorded(engine):
    """Results of PROMPTS at MIXED_TAUS read in turn, the batched LLM passes run, each step's longest LLM wait."""
    scheduler = engine._scheduler
    waits: list[int] = []
    gather = scheduler._gather_llm_rows

    def recording_gather(needs):
        kept = gather(needs)
        waits.append(max((t.steps_waited_for_llm for t, need in needs if need.role == "llm"), default=0))
        return kept

    scheduler._gather_llm_rows = recording_gather
    streams = [engine.stream(p, SETTINGS, EntropyRouter(t)) for p, t in zip(PROMPTS, MIXED_TAUS)]
    results = [SimpleNamespace(token_ids=tuple(e.token_id for e in events), events=events, stats=stats)
               for events, stats in _read_in_turn(streams)]
    # a pass shared by b rows is in each of its b requests' records
    llm_passes = sum(1 / r.batch_size for s in streams for r in s.request.records() if r.role == "llm")
    return results, llm_passes, sorted(set(waits))


# ------------------------------------------------------------------------------------------- faults


class RaisingRouter(RouterBase):
    """Consulted at every SLM position (tau 0); keeps the first SLM token, raises at the second."""

    threshold = 0.0
    needs_hidden_state = False

    def __init__(self) -> None:
        self.calls = 0

    def wants_llm(self, state) -> bool:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("router failed")
        return False


def test_one_request_failing_in_each_way_never_breaks_the_others(batched, alone):
    """8 concurrent requests: bad input, a router that raises, a consumer that stops reading, one that
    closes early, one whose callback raises, one cancelled asyncio task; two plain ones must be exact."""
    barrier = threading.Barrier(6)
    stalled = batched.stream(PROMPTS[2], SETTINGS)
    first = next(stalled)  # read one event, then nobody reads it while the others run

    def plain(prompt):
        barrier.wait()
        return batched.generate(prompt, SETTINGS)

    def bad_input():
        barrier.wait()
        with pytest.raises(EmptyPromptError):
            batched.generate([], SETTINGS)
        return "bad input refused"

    def raising_router():
        barrier.wait()
        with pytest.raises(RuntimeError, match="router failed"):
            batched.generate(PROMPTS[3], SETTINGS, RaisingRouter())
        return "router error delivered"

    def closes_early():
        barrier.wait()
        with batched.stream(PROMPTS[4], SETTINGS) as stream:
            next(stream), next(stream)
        return "closed"

    def callback_raises():
        barrier.wait()
        with pytest.raises(ValueError):
            for event in batched.stream(PROMPTS[5], SETTINGS):
                if event.index == 3:
                    raise ValueError("a callback failed")
        return "callback error stayed with its caller"

    with ThreadPoolExecutor(max_workers=6) as pool:
        jobs = [pool.submit(plain, PROMPTS[0]), pool.submit(plain, PROMPTS[1]), pool.submit(bad_input),
                pool.submit(raising_router), pool.submit(closes_early), pool.submit(callback_raises)]
        cancelled = _cancelled_async_request(batched, PROMPTS[6])
        outcomes = [job.result(timeout=120) for job in jobs]

    assert signature(outcomes[0]) == signature(alone[(PROMPTS[0], 0.7)])
    assert signature(outcomes[1]) == signature(alone[(PROMPTS[1], 0.7)])
    assert cancelled == "cancelled"
    assert len(stalled.request.output_ids) > 1  # decided ahead while its consumer did not read
    rest = [first, *stalled]  # the stalled consumer resumes and gets its exact answer
    assert tuple(e.token_id for e in rest) == alone[(PROMPTS[2], 0.7)].token_ids
    assert batched._scheduler.live_requests == 0
    assert signature(batched.generate(PROMPTS[7], SETTINGS)) == signature(alone[(PROMPTS[7], 0.7)])


def _cancelled_async_request(engine: StitchEngine, prompt: str) -> str:
    async def consume():
        stream = engine.stream(prompt, SETTINGS)
        try:
            while await asyncio.to_thread(next, stream, None) is not None:
                await asyncio.sleep(0)
        finally:
            stream.close()

    async def run():
        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "finished before the cancel"

    return asyncio.run(run())


def test_a_consumer_that_stops_reading_is_paused_not_buffered_without_bound(pair):
    engine = StitchEngine(pair, EntropyRouter(0.7), GenerationSettings(max_new_tokens=200), max_batch_size=8)
    settings = GenerationSettings(max_new_tokens=200)
    idle = engine.stream("lazy", settings)
    next(idle)
    busy = engine.generate("The quick brown", settings)
    assert busy.stats.output_tokens > 2 * MAX_EVENTS_AHEAD  # many steps ran while nobody read the other
    ticket = next(t for t in engine._scheduler._live)  # the idle request, still live
    assert len(ticket.events) == MAX_EVENTS_AHEAD and not ticket.runnable
    idle.close()
    assert engine._scheduler.live_requests == 0


def test_a_dropped_unread_stream_leaves_the_batch(batched):
    stream = batched.stream(PROMPTS[0], SETTINGS)
    assert batched._scheduler.live_requests == 1
    del stream
    gc.collect()
    assert batched._scheduler.live_requests == 0


def test_memory_returns_to_idle_after_200_requests(pair):
    engine = StitchEngine(pair, EntropyRouter(0.7), GenerationSettings(max_new_tokens=8), max_batch_size=16)
    caches: list[weakref.ref] = []
    original_init = Slot.__init__

    def tracking_init(slot, *args, **kwargs):
        original_init(slot, *args, **kwargs)
        caches.append(weakref.ref(slot.cache))

    Slot.__init__ = tracking_init
    try:
        for start in range(0, 200, 20):
            chunk = [PROMPTS[(start + k) % len(PROMPTS)] for k in range(20)]
            for k, stream in enumerate([engine.stream(p) for p in chunk]):
                if k % 5 == 0:
                    stream.close()  # some abandoned, some read to the end
                else:
                    list(stream)
        del stream  # the loop variable holds the last request
    finally:
        Slot.__init__ = original_init
    gc.collect()
    assert len(caches) == 400  # two slots per request
    assert engine._scheduler.live_requests == 0
    assert [ref for ref in caches if ref() is not None] == []


def test_models_whose_head_scales_logits_batch_through_the_model_s_own_head(alone):
    """A head with softcapping or a logit scale is not applied by hand: the pass asks the model for the
    logits at the columns some row needs. Forced here on the tiny pair, it gives the same answers."""
    pair = tiny_pair()
    for loaded in (pair.slm, pair.llm):
        loaded.__dict__["_plain_output_head"] = False  # the cached_property's slot
    engine = StitchEngine(pair, EntropyRouter(0.7), SETTINGS, max_batch_size=8)
    results = engine.generate_batch(PROMPTS, SETTINGS)
    assert [signature(r) for r in results] == [signature(alone[(p, 0.7)]) for p in PROMPTS]
    assert max(r.stats.largest_batch for r in results) > 1


def _read_in_turn(streams):
    """(events, stats) of each stream, read in turn."""
    return [(events, stream.stats) for events, stream in zip(read_in_turn(streams), streams)]


# ---------------------------------------------------------------------- packed and padded passes

@pytest.mark.parametrize("packed", [True, False])
def test_a_pass_gives_each_row_its_lone_logits_and_cache_in_either_layout(pair, packed, monkeypatch):
    """Rows of different cached lengths and new tokens (decodes beside catch-ups), packed into one
    sequence with a block mask or padded: each row's logits equal its lone pass and its cache
    equals a fresh prefill (float64)."""
    monkeypatch.setattr(runner_module, "PACKING_WASTE", 1 if packed else 10**9)
    prefixes = [[5, 9, 14], [7, 3, 22, 11, 8, 30, 2], [], [40, 41]]
    new_tokens = [[6], [19], [12, 13, 15, 16, 17], [8, 9, 10, 11, 12, 13, 14]]
    for loaded in (pair.slm, pair.llm):
        assert runner_module.should_pack(loaded, [len(n) for n in new_tokens]) is packed
        runner = loaded.runner
        rows = [prefix + new for prefix, new in zip(prefixes, new_tokens)]
        batched, lone = [Slot(loaded) for _ in rows], [Slot(loaded) for _ in rows]
        for slots in (batched, lone):
            for slot, prefix in zip(slots, prefixes):
                if prefix:
                    runner.run_one(RowPlan(slot, prefix, "catchup"))
        monkeypatch.setattr(runner_module, "PACKED_KEYS_LIMIT", 10**9)  # one pass for all rows
        results = runner.run([RowPlan(slot, row, "catchup", want_hidden=True) for slot, row in zip(batched, rows)])
        for slot, lone_slot, row, result in zip(batched, lone, rows, results):
            expected = runner.run_one(RowPlan(lone_slot, row, "catchup", want_hidden=True))
            torch.testing.assert_close(result.logits, expected.logits, rtol=0, atol=1e-9)
            torch.testing.assert_close(result.hidden, expected.hidden, rtol=0, atol=1e-9)
            assert result.logits.argmax() == expected.logits.argmax()
            assert_cache_is_fresh_prefill(slot, row, atol=1e-9)
            assert slot.records[-1].batch_size == len(rows)


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_a_batch_is_exact_whichever_layout_its_passes_take(pair, alone, monkeypatch, layout):
    """Every pass packed (one pass per model and step) or every pass padded (length groups): each
    request keeps its lone tokens, sources and stats."""
    monkeypatch.setattr(runner_module, "PACKING_WASTE", 1 if layout == "packed" else 10**9)
    monkeypatch.setattr(runner_module, "PACKED_KEYS_LIMIT", 10**9 if layout == "packed" else 0)
    engine = StitchEngine(pair, EntropyRouter(0.7), SETTINGS, max_batch_size=8, llm_wait_steps=0)
    streams = [engine.stream(p, SETTINGS, EntropyRouter(t)) for p, t in zip(PROMPTS, TAUS)]
    results = [SimpleNamespace(token_ids=tuple(e.token_id for e in events), events=events, stats=stats)
               for events, stats in _read_in_turn(streams)]
    assert [signature(r) for r in results] == [signature(alone[(p, t)]) for p, t in zip(PROMPTS, TAUS)]
    shared = [r for s in streams for r in s.request.records() if r.batch_size > 1]
    catch_up_lengths = {r.new_tokens for r in shared if r.kind == "catchup"}
    assert len(catch_up_lengths) > 1 and shared  # passes did mix rows of different lengths


def test_a_step_packs_all_rows_of_a_model_into_one_pass_unless_their_keys_are_many(pair, monkeypatch):
    """A prompt prefill beside decodes shares the decodes' pass when packable; above the key limit
    (or for a model whose attention cannot take the block mask) rows are grouped by length instead."""
    engine = StitchEngine(pair, EntropyRouter(0.7), SETTINGS, max_batch_size=8)
    long_prompt = " ".join(["word"] * 30)
    streams = [engine.stream(p, SETTINGS) for p in PROMPTS[:3]]
    for stream in streams:
        next(iter(stream))  # each has decoded a token: the next passes are decodes
    late = engine.stream(long_prompt, SETTINGS)  # its first pass is a prefill of its whole prompt
    tickets = [t for t in engine._scheduler._live]
    plans = [t.decoder.plan() for t in tickets]
    by_role = {role: [p for p in plans if p.role == role] for role in ("slm", "llm")}
    prefill = [p for p in by_role["slm"] if p.slot.n_cached == 0]
    assert prefill and prefill[0].new_tokens > 2 * min(p.new_tokens for p in by_role["slm"]) + runner_module.LENGTH_SPREAD
    assert len(engine.pair.slm.runner.pass_groups(by_role["slm"])) == 1
    monkeypatch.setattr(runner_module, "PACKED_KEYS_LIMIT", 0)
    assert len(engine.pair.slm.runner.pass_groups(by_role["slm"])) == 2
    for stream in streams + [late]:
        stream.close()
