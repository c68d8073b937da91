"""The static-cache path (``models.execution``): the same tokens and sources as the dynamic cache.

The tiny pairs are float64, so a bucket-padded static pass and the dynamic cache's exact-length pass
agree to ~1e-15 and every greedy choice and routing decision is identical: compared exactly. Each
test also checks that the path under test really ran (padded passes, chunked catch-ups, reused
caches), so a static config that silently fell back to the dynamic cache would fail here.
"""

from __future__ import annotations

import gc

import pytest
import torch
from test_learned_router import random_router
from tiny import tiny_pair
from transformers import MistralConfig, MistralForCausalLM, StaticCache

from rstitch_engine import (
    EntropyRouter,
    GenerationSettings,
    InvalidSettingError,
    ModelPair,
    PromptTooLongError,
    StitchEngine,
)
from rstitch_engine.decoding.sampling import choose_token, entropy_and_choice, normalised_entropy
from rstitch_engine.models.execution import ExecutionConfig, static_capacity

PROMPTS = ["The quick brown", "What is 3 + 4? It is", "Café 東京", "x",
           "lazy dog and the quick fox jumps over the small model; it writes the easy tokens."]
TAUS = (0.6, 0.7, 0.8)
SETTINGS = GenerationSettings(max_new_tokens=40)
SMALL_BUCKETS = ExecutionConfig(kv_cache="static", buckets=(1, 2, 4, 8))
"""Small buckets: catch-ups of 3, 5-7 and 9+ tokens are padded, and prompts longer than 8 are chunked."""


def static_pair(pair: ModelPair, config: ExecutionConfig = SMALL_BUCKETS) -> ModelPair:
    return pair.with_execution(slm=config, llm=config)


def signature(result):
    stats = result.stats
    return (result.token_ids, tuple(e.source for e in result.events), stats.switches_to_llm, stats.switches_to_slm,
            stats.discarded_slm_tokens, stats.slm.forward_passes, stats.llm.forward_passes, stats.finish_reason)


@pytest.fixture(scope="module", params=[("llama", "qwen2"), ("qwen2", "llama")], ids=["llama-qwen2", "qwen2-llama"])
def pair(request):
    slm_arch, llm_arch = request.param
    return tiny_pair(slm_arch=slm_arch, llm_arch=llm_arch)


@pytest.mark.parametrize("max_batch_size", [1, 8])
def test_static_caches_give_the_dynamic_cache_s_tokens_sources_and_stats(pair, max_batch_size):
    static = static_pair(pair)
    crossed, chunked = set(), 0
    for tau in TAUS:
        dynamic_engine = StitchEngine(pair, EntropyRouter(tau), SETTINGS, max_batch_size=max_batch_size)
        static_engine = StitchEngine(static, EntropyRouter(tau), SETTINGS, max_batch_size=max_batch_size)
        for prompt in PROMPTS:
            expected = dynamic_engine.generate(prompt)
            stream = static_engine.stream(prompt)
            events = list(stream)
            got = type(expected)(text="".join(e.text for e in events), token_ids=tuple(e.token_id for e in events),
                                 events=tuple(events), stats=stream.stats)
            assert signature(got) == signature(expected), (prompt, tau)
            for record in stream.request.records():
                if record.new_tokens not in SMALL_BUCKETS.buckets:
                    crossed.add(record.new_tokens)  # padded up to the next bucket
                chunked += record.new_tokens > SMALL_BUCKETS.buckets[-1]  # fed in chunks of 8
    assert {3, 5} <= crossed and chunked >= 1  # catch-ups across bucket boundaries and past the largest


def test_batched_static_requests_equal_their_lone_runs(pair):
    """Concurrent static requests run row by row inside a step; each keeps its own pooled cache."""
    static = static_pair(pair)
    alone = StitchEngine(pair, EntropyRouter(0.7), SETTINGS, max_batch_size=1)
    engine = StitchEngine(static, EntropyRouter(0.7), SETTINGS, max_batch_size=8)
    results = engine.generate_batch(PROMPTS)
    assert [signature(r) for r in results] == [signature(alone.generate(p)) for p in PROMPTS]
    pools = [static.slm.static_steps.pool, static.llm.static_steps.pool]
    assert all(1 < pool.allocated <= len(PROMPTS) and pool.free == pool.allocated for pool in pools)


def test_the_static_cache_equals_a_fresh_prefill_of_exactly_what_it_covers(pair):
    """After padded passes, the first n_cached entries are the fresh prefill's and the fill count is n_cached."""
    static = static_pair(pair)
    stream = StitchEngine(static, EntropyRouter(0.7), SETTINGS).stream(PROMPTS[-1])
    checked = 0
    for _ in stream:
        for slot in stream.request.slots.values():
            if slot.cache is None:
                continue
            n, model = slot.n_cached, slot.loaded.model
            fresh = model(input_ids=torch.tensor([stream.request.tokens[:n]]), use_cache=True).past_key_values
            for layer, fresh_layer in zip(slot.cache.layers, fresh.layers, strict=True):
                assert int(layer.cumulative_length) == n
                torch.testing.assert_close(layer.keys[:, :, :n], fresh_layer.keys, rtol=0, atol=1e-10)
                torch.testing.assert_close(layer.values[:, :, :n], fresh_layer.values, rtol=0, atol=1e-10)
            checked += 1
        if checked > 30:
            break
    stream.close()
    assert checked > 30


def test_the_learned_router_s_hidden_states_and_seeded_sampling_are_the_same(pair):
    engine = StitchEngine(pair)
    router = random_router(engine)
    static_engine = StitchEngine(static_pair(pair))
    sampled = SETTINGS.replace(temperature=0.9, top_k=40, seed=11)
    for prompt in PROMPTS[:3]:
        assert signature(static_engine.generate(prompt, SETTINGS, router)) == signature(
            engine.generate(prompt, SETTINGS, router))
        assert signature(static_engine.generate(prompt, sampled)) == signature(engine.generate(prompt, sampled))


def test_tau_extremes_equal_each_model_decoding_alone(pair):
    static_engine = StitchEngine(static_pair(pair))
    for prompt in PROMPTS[:3]:
        slm_alone = static_engine.decode_alone("slm", prompt, SETTINGS)
        llm_alone = static_engine.decode_alone("llm", prompt, SETTINGS)
        assert static_engine.generate(prompt, SETTINGS, EntropyRouter(1.0)).token_ids == slm_alone.token_ids
        assert static_engine.generate(prompt, SETTINGS, EntropyRouter(-1.0)).token_ids == llm_alone.token_ids
        assert llm_alone.token_ids == StitchEngine(pair).decode_alone("llm", prompt, SETTINGS).token_ids


def test_pooled_caches_are_reused_across_requests_without_reallocation():
    static = static_pair(tiny_pair())
    engine = StitchEngine(static, EntropyRouter(0.7), SETTINGS, max_batch_size=1)
    engine.generate(PROMPTS[0])
    pool = static.llm.static_steps.pool
    addresses = {pool._free[0].layers[0].keys.data_ptr()}
    for prompt in PROMPTS * 4:
        engine.generate(prompt)
        assert pool.free == 1
        addresses.add(pool._free[0].layers[0].keys.data_ptr())
    assert pool.allocated == 1 and static.slm.static_steps.pool.allocated == 1
    assert len(addresses) == 1  # the same memory, request after request


def test_an_abandoned_or_failed_stream_gives_its_caches_back():
    static = static_pair(tiny_pair())
    engine = StitchEngine(static, EntropyRouter(0.7), SETTINGS)
    pools = [static.slm.static_steps.pool, static.llm.static_steps.pool]
    stream = engine.stream(PROMPTS[1])
    next(stream)
    del stream  # dropped halfway
    gc.collect()
    closed = engine.stream(PROMPTS[2])
    next(closed)
    closed.close()
    engine.generate(PROMPTS[0])  # the engine stays usable, and the next pass releases what ended
    assert all(pool.free == pool.allocated for pool in pools)
    assert all(pool.allocated <= 2 for pool in pools)


def test_a_request_exactly_at_the_fixed_cache_size_runs_and_one_token_more_is_refused():
    config = ExecutionConfig(kv_cache="static", cache_tokens=24, buckets=(1, 4, 16))
    static = static_pair(tiny_pair(), config)
    engine = StitchEngine(static, EntropyRouter(0.7))
    prompt = engine.encode(PROMPTS[-1])[:10]
    settings = GenerationSettings(max_new_tokens=24 - len(prompt))  # the last passes cannot be padded: unpadded
    expected = StitchEngine(tiny_pair(), EntropyRouter(0.7)).generate(prompt, settings)
    result = engine.generate(prompt, settings)
    assert signature(result) == signature(expected)
    with pytest.raises(PromptTooLongError, match="static cache of 24 tokens"):
        engine.stream(prompt, settings.replace(max_new_tokens=settings.max_new_tokens + 1))
    assert engine.generate(prompt, settings).token_ids == result.token_ids  # still usable
    assert static_capacity(static.llm.static_steps.pool._free[0]) == 24


def test_a_per_request_static_cache_is_sized_from_prompt_and_max_new_tokens():
    config = ExecutionConfig(kv_cache="static")
    assert config.capacity_for(10, 512) == 256  # at least MIN_STATIC_TOKENS
    assert config.capacity_for(300, 2048) == 512  # the next power of two
    assert config.capacity_for(600, 700) == 700  # never past the context window
    assert ExecutionConfig(compile=True).capacity_for(10, 8192) == 4096  # compiled: one fixed size
    assert ExecutionConfig(compile=True).capacity_for(10, 512) == 512
    assert config.padded_length(3, 0, 256) == 4 and config.padded_length(3, 254, 256) == 3
    assert config.chunks(600) == [256, 256, 88]


@pytest.mark.parametrize("kwargs,match", [
    (dict(kv_cache="paged"), "kv_cache must be"),
    (dict(kv_cache="dynamic", compile=True), "needs kv_cache='static'"),
    (dict(kv_cache="static", cache_tokens=1), "cache_tokens"),
    (dict(kv_cache="static", buckets=(2, 4)), "starting at 1"),
    (dict(kv_cache="static", buckets=(1, 8, 4)), "ascending"),
    (dict(compile="yes"), "compile must be"),
])
def test_invalid_execution_configs_are_refused(kwargs, match):
    with pytest.raises(InvalidSettingError, match=match):
        ExecutionConfig(**kwargs)


def test_compile_alone_implies_the_static_cache():
    assert ExecutionConfig(compile=True).kv_cache == "static" and ExecutionConfig().kv_cache == "dynamic"


def test_a_sliding_window_model_is_refused_with_a_clear_error_before_any_token():
    tokenizer = tiny_pair().tokenizer
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=8, eos_token_id=0)
    model = MistralForCausalLM(config).to(torch.float64).eval()
    assert any(type(layer).__name__ != "StaticLayer" for layer in StaticCache(config=config, max_cache_len=16).layers)
    pair = ModelPair.from_models(model, model, tokenizer).with_execution(slm=ExecutionConfig(kv_cache="static"))
    engine = StitchEngine(pair, EntropyRouter(0.7), SETTINGS)
    with pytest.raises(InvalidSettingError, match="kv_cache='dynamic'"):
        engine.generate(PROMPTS[0])
    assert StitchEngine(ModelPair.from_models(model, model, tokenizer)).generate(PROMPTS[0]).token_ids


def test_the_compiled_step_traced_by_dynamo_gives_the_same_tokens():
    """compile=True with the 'eager' backend: dynamo captures the padded step (graph breaks allowed)
    and runs the captured graphs; warm-up runs every bucket at load time."""
    pair = tiny_pair()
    config = ExecutionConfig(compile=True, compile_backend="eager", buckets=(1, 4, 16))
    compiled = static_pair(pair, config)
    engine = StitchEngine(compiled, EntropyRouter(0.7), SETTINGS)
    assert compiled.slm.static_steps.warmed_up == [1, 4, 16] == compiled.llm.static_steps.warmed_up
    reference = StitchEngine(pair, EntropyRouter(0.7), SETTINGS)
    for prompt in PROMPTS[:3]:
        assert signature(engine.generate(prompt)) == signature(reference.generate(prompt))
    assert compiled.llm.static_steps.pool.allocated == 1  # warm-up's cache serves the requests


@pytest.mark.slow
def test_the_inductor_compiled_step_gives_the_same_tokens_on_cpu():
    """The real code generator (inductor) on CPU: about 80 s of compiling on 2 cores."""
    pair = tiny_pair()
    compiled = static_pair(pair, ExecutionConfig(compile=True))
    engine = StitchEngine(compiled, EntropyRouter(0.7), SETTINGS)
    reference = StitchEngine(pair, EntropyRouter(0.7), SETTINGS)
    for prompt in PROMPTS:
        assert signature(engine.generate(prompt)) == signature(reference.generate(prompt))


def test_one_sync_entropy_and_choice_equal_the_separate_functions():
    torch.manual_seed(0)
    logits = torch.randn(300, dtype=torch.float64) * 3
    for settings in (GenerationSettings(), GenerationSettings(temperature=0.8, top_p=0.9, seed=5)):
        first = torch.Generator().manual_seed(5)
        second = torch.Generator().manual_seed(5)
        assert entropy_and_choice(logits, settings, first, 120) == (
            normalised_entropy(logits, 120), choose_token(logits, settings, second))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_entropy_and_choice_come_back_in_one_transfer_with_the_same_values():
    torch.manual_seed(0)
    logits = torch.randn(151_665, device="cuda") * 3
    entropy, token = entropy_and_choice(logits, GenerationSettings(), None)
    assert token == int(logits.argmax()) and entropy == pytest.approx(normalised_entropy(logits.cpu()), abs=1e-5)
