"""Batched decoding on the real default pair (float32): every request gets its lone answer.

Rows of a padded batched pass sum in another order than a lone pass, so float32 logits differ in
the last bits. On the fixed prompts below the answers are identical; should a change ever make one
differ, the test does not pass silently: it checks that at the first differing position the lone
run was on a knife edge (its top two logits, or its entropy and tau, within float32 noise), which
proves the difference numeric, and fails otherwise.
"""

from __future__ import annotations

import pytest
import torch

from rstitch_engine import EntropyRouter, GenerationSettings, StitchEngine

pytestmark = pytest.mark.real_model

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Add 17 and 25. Reply with just the number."}],
    [{"role": "user", "content": "Give one word that means the opposite of hot."}],
    [{"role": "user", "content": "Name a fruit that is yellow."}],
    [{"role": "user", "content": "Write a short sentence about the sea."}],
    [{"role": "user", "content": "What is the plural of mouse?"}],
    [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "How many legs has a spider?"}],
    [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have now?"}],
]
SETTINGS = GenerationSettings(max_new_tokens=24)
KNIFE_EDGE = 1e-3
"""Float32 noise bound for a logit gap or an entropy-to-tau distance (observed differences are ~1e-5)."""


def test_a_batch_of_eight_gives_each_request_its_lone_answer(real_engine_float32):
    pair = real_engine_float32.pair
    router = EntropyRouter(real_engine_float32.router.threshold)
    lone_engine = StitchEngine(pair, router, SETTINGS, max_batch_size=1)
    batched_engine = StitchEngine(pair, router, SETTINGS, max_batch_size=8)
    lone = [lone_engine.generate(p) for p in PROMPTS]
    batched = batched_engine.generate_batch(PROMPTS)
    assert max(r.stats.largest_batch for r in batched) == len(PROMPTS)
    assert sum(r.stats.switches_to_llm for r in batched) > 0
    for prompt, alone, together in zip(PROMPTS, lone, batched):
        assert_same_or_knife_edge(lone_engine, prompt, alone, together, router.threshold)


def assert_same_or_knife_edge(engine: StitchEngine, prompt, reference, other, tau: float) -> None:
    """``other`` has ``reference``'s tokens and sources, or first differs where ``reference`` was on a knife edge."""
    mine = [(e.token_id, e.source) for e in other.events]
    theirs = [(e.token_id, e.source) for e in reference.events]
    if mine != theirs:
        first = next(i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b)
        assert_knife_edge(engine, prompt, reference, first, tau)


def assert_knife_edge(engine: StitchEngine, prompt, alone, position: int, tau: float) -> None:
    event = alone.events[position]
    if abs(event.entropy - tau) < KNIFE_EDGE:
        return  # the routing decision itself sat on tau
    loaded = engine.pair.slm if event.source == "slm" else engine.pair.llm
    logits, _ = loaded.answer_logits(engine.encode(prompt), list(alone.token_ids[: position + 1]))
    top = torch.topk(logits[position], 2).values
    assert float(top[0] - top[1]) < KNIFE_EDGE, (
        f"batched and lone answers differ at token {position} where the lone run was not on a knife edge "
        f"(logit gap {float(top[0] - top[1]):.3g}, entropy {event.entropy:.4f} vs tau {tau}): a logical difference")
