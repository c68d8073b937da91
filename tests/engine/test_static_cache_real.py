"""The static-cache path on the real default pair (float32): the dynamic cache's answers, token for token.

A bucket-padded static pass attends over the whole preallocated cache (masked) where the dynamic
cache attends over exactly the tokens seen, so float32 sums run in another order. On the fixed
prompts the answers are identical; should one ever differ, the test checks that the dynamic run sat
on a knife edge at the first difference (``assert_knife_edge``), which proves it numeric, and fails
otherwise.
"""

from __future__ import annotations

import pytest
from test_batching_real import PROMPTS, assert_knife_edge

from rstitch_engine import EntropyRouter, GenerationSettings, StitchEngine
from rstitch_engine.models.execution import ExecutionConfig

pytestmark = pytest.mark.real_model

SETTINGS = GenerationSettings(max_new_tokens=32)
STATIC = ExecutionConfig(kv_cache="static")


def test_static_caches_give_the_real_pair_s_dynamic_cache_answers(real_engine_float32):
    pair = real_engine_float32.pair
    router = EntropyRouter(real_engine_float32.router.threshold)
    dynamic_engine = StitchEngine(pair, router, SETTINGS, max_batch_size=1)
    static_pair = pair.with_execution(slm=STATIC, llm=STATIC)
    static_engine = StitchEngine(static_pair, router, SETTINGS, max_batch_size=1)
    switches = padded = 0
    for prompt in PROMPTS[:6]:
        expected = dynamic_engine.generate(prompt)
        stream = static_engine.stream(prompt)
        got = [(e.token_id, e.source) for e in stream]
        theirs = [(e.token_id, e.source) for e in expected.events]
        if got != theirs:
            first = next(i for i, (a, b) in enumerate(zip(got, theirs)) if a != b)
            assert_knife_edge(dynamic_engine, prompt, expected, first, router.threshold)
        switches += stream.stats.switches_to_llm
        padded += sum(r.new_tokens not in STATIC.buckets for r in stream.request.records())
    assert switches > 0 and padded > 0  # LLM catch-ups and padded passes both ran
    assert static_pair.llm.static_steps.pool.allocated == 1  # one cache, reused by every request
