"""Each model's KV cache always equals a fresh prefill of exactly the tokens it has seen."""

from __future__ import annotations

import pytest
from helpers import assert_cache_is_fresh_prefill, fresh_logits
from tiny import tiny_engine

from rstitch_engine import EntropyRouter, GenerationSettings, normalised_entropy


@pytest.mark.parametrize("slm_arch,llm_arch", [("llama", "qwen2"), ("qwen2", "llama")])
def test_caches_match_fresh_prefill_after_every_step(slm_arch, llm_arch):
    engine = tiny_engine(slm_arch=slm_arch, llm_arch=llm_arch)
    stream = engine.stream("The quick brown", GenerationSettings(max_new_tokens=40), EntropyRouter(0.7))
    for _ in stream:
        for slot in stream.request.slots.values():
            assert_cache_is_fresh_prefill(slot, stream.request.tokens, atol=1e-10)
    assert stream.stats.switches_to_llm >= 3 and stream.stats.switches_to_slm >= 3


def test_discarded_token_never_enters_the_slm_cache():
    """After a discard the SLM cache ends right before the position the LLM then decodes."""
    engine = tiny_engine()
    stream = engine.stream("What is 3 + 4?", GenerationSettings(max_new_tokens=40), EntropyRouter(0.7))
    checked = 0
    for event in stream:
        if event.took_over:
            slm = stream.request.slots["slm"]
            position = stream.prompt_tokens + event.index
            assert slm.n_cached == position  # covers exactly the tokens before the discarded one
            assert_cache_is_fresh_prefill(slm, stream.request.tokens, atol=1e-10)
            checked += 1
    assert checked >= 3


def test_event_entropy_is_the_writers_untempered_entropy_over_the_real_vocabulary():
    """Entropy is taken at temperature 1 whatever the sampling temperature (documented choice)."""
    engine = tiny_engine()
    settings = GenerationSettings(max_new_tokens=24, temperature=1.7, top_k=20, seed=3)
    stream = engine.stream("Café 東京", settings, EntropyRouter(0.7))
    events = list(stream)
    tokens = stream.request.tokens
    for event in events:
        model = engine.pair.slm.model if event.source == "slm" else engine.pair.llm.model
        prefix = tokens[: stream.prompt_tokens + event.index]
        expected = normalised_entropy(fresh_logits(model, prefix, engine.pair.vocab_size))
        assert event.entropy == pytest.approx(expected, abs=1e-12)
    assert {e.source for e in events} == {"slm", "llm"}


def test_padded_output_layers_are_sliced_to_the_shared_vocabulary():
    """SLM with 320 and LLM with 384 output rows over a 300-token vocabulary (like Qwen2 pairs)."""
    engine = tiny_engine(slm_rows=320, llm_rows=384)
    vocab = len(engine.pair.tokenizer)
    assert engine.pair.vocab_size == vocab == 300
    stream = engine.stream("The quick brown", GenerationSettings(max_new_tokens=32), EntropyRouter(0.7))
    events = list(stream)
    assert all(e.token_id < vocab for e in events)
    tokens = stream.request.tokens
    for event in events[:8]:
        model = engine.pair.slm.model if event.source == "slm" else engine.pair.llm.model
        logits = fresh_logits(model, tokens[: stream.prompt_tokens + event.index], vocab)  # sliced to |V|
        assert logits.shape == (vocab,)
        assert event.entropy == pytest.approx(normalised_entropy(logits), abs=1e-12)
        assert event.token_id == int(logits.argmax())
