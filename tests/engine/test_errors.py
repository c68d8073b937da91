"""Bad input gets a clear error before any work, and the engine stays usable afterwards."""

from __future__ import annotations

import math

import pytest
from tiny import byte_level_tokenizer, tiny_model, tiny_pair

from rstitch_engine import (
    EmptyPromptError,
    EntropyRouter,
    GenerationSettings,
    InvalidSettingError,
    ModelPair,
    PromptTooLongError,
    StitchEngine,
    TokenizerMismatchError,
)

SETTINGS = GenerationSettings(max_new_tokens=12)


@pytest.fixture(scope="module")
def engine() -> StitchEngine:
    return StitchEngine(tiny_pair(max_positions=64), EntropyRouter(0.7))


@pytest.fixture(scope="module")
def reference(engine) -> tuple[int, ...]:
    return engine.generate("The quick brown", SETTINGS).token_ids


def count_forwards(engine: StitchEngine) -> list[int]:
    calls = [0]
    for loaded in (engine.pair.slm, engine.pair.llm):
        loaded.model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("bad", [math.nan, "0.1", None, True, [0.1]])
def test_invalid_thresholds_are_refused(bad):
    with pytest.raises(InvalidSettingError, match="threshold"):
        EntropyRouter(bad)


@pytest.mark.parametrize("tau", [-5.0, -0.0, 0.0, 0.5, 1.0, 7.0, math.inf, -math.inf])
def test_every_real_threshold_is_accepted(tau):
    assert EntropyRouter(tau).threshold == tau


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"seed": "7"}, "seed"),
        ({"stop": ("",)}, "stop"),
    ],
)
def test_invalid_generation_settings_are_refused(changes, field):
    with pytest.raises(InvalidSettingError, match=field):
        GenerationSettings(**changes)


def test_single_stop_string_is_accepted_as_a_tuple():
    assert GenerationSettings(stop="END").stop == ("END",)


def test_prompt_longer_than_the_context_window_fails_before_any_forward_pass(engine, reference):
    calls = count_forwards(engine)
    prompt = list(range(3, 58))  # 55 tokens + 12 new > 64
    with pytest.raises(PromptTooLongError) as error:
        engine.stream(prompt, SETTINGS)
    assert "64" in str(error.value) and "55" in str(error.value) and "at most 9" in str(error.value)
    with pytest.raises(PromptTooLongError):
        engine.decode_alone("llm", prompt, SETTINGS)
    assert calls[0] == 0
    assert engine.generate("The quick brown", SETTINGS).token_ids == reference
    assert len(engine.generate(prompt, SETTINGS.replace(max_new_tokens=9)).token_ids) <= 9


@pytest.mark.parametrize("prompt", ["", [], ()])
def test_empty_prompts_are_refused(engine, reference, prompt):
    with pytest.raises(EmptyPromptError):
        engine.stream(prompt)
    assert engine.generate("The quick brown", SETTINGS).token_ids == reference


def test_out_of_vocabulary_token_ids_and_odd_prompts_are_refused(engine, reference):
    with pytest.raises(InvalidSettingError, match="out of the vocabulary"):
        engine.stream([5, 300, 7])
    with pytest.raises(InvalidSettingError):
        engine.stream([5, "a"])  # type: ignore[list-item]
    with pytest.raises(InvalidSettingError, match="chat template"):
        engine.stream([{"role": "user", "content": "hi"}])  # the tiny tokenizer has none
    assert engine.generate("The quick brown", SETTINGS).token_ids == reference


def test_tokenizers_with_different_merges_are_refused_with_the_difference():
    other = byte_level_tokenizer(seed_text="zebra quagga zebra quagga")
    slm = tiny_model("llama", len(other), seed=1)
    llm = tiny_model("qwen2", len(byte_level_tokenizer()), seed=2)
    with pytest.raises(TokenizerMismatchError) as error:
        ModelPair.from_models(slm, llm, byte_level_tokenizer(), slm_tokenizer=other)
    assert "map to different ids" in str(error.value)


def test_tokenizers_of_different_sizes_are_refused_with_the_sizes():
    smaller = byte_level_tokenizer(vocab_size=280)
    slm = tiny_model("llama", len(smaller), seed=1)
    llm = tiny_model("qwen2", 300, seed=2)
    with pytest.raises(TokenizerMismatchError, match="vocabulary sizes differ: SLM 280, LLM 300"):
        ModelPair.from_models(slm, llm, byte_level_tokenizer(), slm_tokenizer=smaller)


def test_same_tokenizer_files_are_accepted():
    pair = ModelPair.from_models(tiny_model("llama", 300, 1), tiny_model("qwen2", 300, 2), byte_level_tokenizer(),
                                 slm_tokenizer=byte_level_tokenizer())
    assert pair.vocab_size == 300 and pair.eos_token_ids == frozenset({0})


def test_routers_by_name():
    from rstitch_engine import AlwaysLLMRouter, AlwaysSLMRouter, router_named

    assert router_named("entropy", 0.3) == EntropyRouter(0.3)
    assert router_named("slm", 0.3) == AlwaysSLMRouter() and router_named("llm", 0.3) == AlwaysLLMRouter()
    with pytest.raises(InvalidSettingError, match="router must be"):
        router_named("bogus", 0.3)  # type: ignore[arg-type]
    with pytest.raises(InvalidSettingError, match="threshold"):
        router_named("entropy", math.nan)


def test_from_pretrained_takes_a_quality_or_a_threshold_not_both():
    with pytest.raises(InvalidSettingError, match="give either quality or router/threshold, not both"):
        StitchEngine.from_pretrained(threshold=0.1, quality="fast")  # refused before any weight loads
