"""The engine on the real default pair: SmolLM2-135M-Instruct and its distilled draft."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import assert_cache_is_fresh_prefill, hf_greedy

from rstitch_engine import (
    EntropyRouter,
    GenerationSettings,
    ModelPair,
    PromptTooLongError,
    StitchEngine,
)

pytestmark = pytest.mark.real_model

# The spec's exactness properties are checked in float32 (``real_engine_float32``), where they hold to
# float tolerance. In bfloat16 (``dtype='auto'`` on CPUs with native bf16) a catch-up pass over k tokens
# rounds differently from k decode steps, so near-ties may break the other way.

CHATS = [
    [{"role": "user", "content": "What is 3 + 4?"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a primary colour."}],
]


def test_default_pair_is_smollm2_and_its_distilled_draft(real_engine):
    slm, llm = real_engine.pair.slm.model, real_engine.pair.llm.model
    assert llm.config.num_hidden_layers == 30 and slm.config.num_hidden_layers == 4
    assert real_engine.pair.vocab_size == 49152 and real_engine.pair.llm.context_window == 8192
    assert 2 in real_engine.pair.eos_token_ids  # <|im_end|>
    # The draft shares the LLM's embeddings, final norm and head: the same tensors, not copies.
    assert slm.lm_head.weight is llm.lm_head.weight and slm.model.norm.weight is llm.model.norm.weight
    assert slm.model.embed_tokens.weight is llm.model.embed_tokens.weight


@pytest.mark.parametrize("chat", CHATS[:2])
def test_extreme_thresholds_reproduce_each_model_alone(real_engine_float32, chat):
    prompt_ids = real_engine_float32.encode(chat)
    eos = real_engine_float32.pair.eos_token_ids
    settings = GenerationSettings(max_new_tokens=16)
    slm_alone = real_engine_float32.generate(prompt_ids, settings, EntropyRouter(1.0))
    llm_alone = real_engine_float32.generate(prompt_ids, settings, EntropyRouter(-1.0))
    assert list(slm_alone.token_ids) == hf_greedy(real_engine_float32.pair.slm.model, prompt_ids, 16, eos)
    assert list(llm_alone.token_ids) == hf_greedy(real_engine_float32.pair.llm.model, prompt_ids, 16, eos)
    assert slm_alone.stats.llm.forward_passes == 0


def test_same_model_as_both_gives_its_own_greedy_output(real_engine_float32):
    llm = real_engine_float32.pair.llm.model
    engine = StitchEngine(ModelPair.from_models(llm, llm, real_engine_float32.pair.tokenizer))
    settings = GenerationSettings(max_new_tokens=16)
    switched = 0
    for chat in CHATS[:2]:
        prompt_ids = engine.encode(chat)
        expected = hf_greedy(llm, prompt_ids, 16, engine.pair.eos_token_ids)
        for tau in (0.05, 0.3):
            result = engine.generate(prompt_ids, settings, EntropyRouter(tau))
            assert list(result.token_ids) == expected, (chat, tau)
            switched += result.stats.switches_to_llm
    assert switched > 0


def test_caches_match_fresh_prefill_during_a_switching_run(real_engine_float32):
    stream = real_engine_float32.stream(CHATS[0], GenerationSettings(max_new_tokens=12), EntropyRouter(0.1))
    for _ in stream:
        for slot in stream.request.slots.values():
            assert_cache_is_fresh_prefill(slot, stream.request.tokens, atol=2e-4)
    assert stream.stats.switches_to_llm > 0 and stream.stats.switches_to_slm > 0


def test_stats_add_up_and_speedup_is_estimated_from_this_run(real_engine):
    result = real_engine.generate(CHATS[1], GenerationSettings(max_new_tokens=24), EntropyRouter(0.1))
    stats = result.stats
    assert stats.slm_tokens + stats.llm_tokens == stats.output_tokens == len(result.token_ids)
    assert stats.llm.forward_passes > 0 and stats.speedup_basis == "estimated" and stats.speedup > 0
    measured = real_engine.generate(CHATS[1], GenerationSettings(max_new_tokens=24), EntropyRouter(0.1),
                                    measure_speedup=True).stats
    assert measured.speedup_basis == "measured" and measured.llm_alone_seconds > 0
    alone = real_engine.decode_alone("llm", CHATS[1], GenerationSettings(max_new_tokens=24))
    assert measured.llm_alone_tokens == len(alone.token_ids) and stats.llm_alone_tokens is None
    assert measured.speedup == pytest.approx(measured.llm_alone_seconds / measured.busy_seconds)


def test_stop_string_on_real_output(real_engine):
    free = real_engine.generate(CHATS[0], GenerationSettings(max_new_tokens=16), EntropyRouter(0.1))
    words = free.text.split()
    assert len(words) >= 3
    stop = " ".join(words[1:3])
    stopped = real_engine.generate(CHATS[0], GenerationSettings(max_new_tokens=16, stop=(stop,)), EntropyRouter(0.1))
    assert stopped.finish_reason == "stop" and stopped.text == free.text[: free.text.index(stop)]


def test_prompt_too_long_for_the_real_context_window(real_engine):
    with pytest.raises(PromptTooLongError, match="8192"):
        real_engine.stream("word " * 8190, GenerationSettings(max_new_tokens=16))


@pytest.mark.slow
def test_concurrent_threads_get_the_sequential_results(real_engine_float32):
    """float32: in bf16 a row of a batched pass rounds differently from its lone pass, and the real
    pair's near-ties flip (``test_batching_real.py`` shows such differences are numeric)."""
    real_engine = real_engine_float32
    settings = GenerationSettings(max_new_tokens=8)
    requests = [(CHATS[i % 3], (0.05, 0.1, 0.2, 1.0)[i % 4]) for i in range(32)]
    sequential = [real_engine.generate(c, settings, EntropyRouter(t)).token_ids for c, t in requests]
    barrier = threading.Barrier(8)

    def worker(k: int):
        barrier.wait()
        return [real_engine.generate(c, settings, EntropyRouter(t)).token_ids for c, t in requests[4 * k: 4 * k + 4]]

    with ThreadPoolExecutor(8) as pool:
        concurrent = [ids for chunk in pool.map(worker, range(8)) for ids in chunk]
    assert concurrent == sequential
