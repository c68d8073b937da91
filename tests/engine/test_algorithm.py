"""Algorithm 1 exactly: the exactness properties of the spec and the loop's invariants."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import hf_greedy
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from tiny import tiny_engine, tiny_pair

from rstitch_engine import (
    RouterBase,
    AlwaysLLMRouter,
    AlwaysSLMRouter,
    EntropyRouter,
    GenerationSettings,
    InvalidSettingError,
    StitchEngine,
)

PROMPTS = ["The quick brown", "What is 3 + 4?", "def add(a, b):", "Café 東京"]
ARCH_PAIRS = [("llama", "qwen2"), ("qwen2", "llama"), ("llama", "llama")]


def run(engine: StitchEngine, prompt, threshold: float | None = None, **settings):
    router = EntropyRouter(threshold) if threshold is not None else None
    stream = engine.stream(prompt, GenerationSettings(**settings), router)
    events = list(stream)
    return events, stream.stats, stream.request


@pytest.mark.parametrize("slm_arch,llm_arch", ARCH_PAIRS)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_threshold_at_least_one_is_the_slm_alone(slm_arch, llm_arch, prompt):
    engine = tiny_engine(slm_arch=slm_arch, llm_arch=llm_arch)
    prompt_ids = engine.encode(prompt)
    expected = hf_greedy(engine.pair.slm.model, prompt_ids, 24, engine.pair.eos_token_ids)
    for tau in (1.0, 1.5):
        events, stats, request = run(engine, prompt_ids, tau, max_new_tokens=24)
        assert [e.token_id for e in events] == expected
        assert stats.llm.forward_passes == 0 and request.slots["llm"].n_cached == 0


@pytest.mark.parametrize("slm_arch,llm_arch", ARCH_PAIRS)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_negative_threshold_is_the_llm_alone(slm_arch, llm_arch, prompt):
    engine = tiny_engine(slm_arch=slm_arch, llm_arch=llm_arch)
    prompt_ids = engine.encode(prompt)
    expected = hf_greedy(engine.pair.llm.model, prompt_ids, 24, engine.pair.eos_token_ids)
    events, stats, _ = run(engine, prompt_ids, -0.01, max_new_tokens=24)
    assert [e.token_id for e in events] == expected
    assert stats.slm_tokens == 0 and stats.discarded_slm_tokens == 1 and stats.switches_to_slm == 0
    assert stats.slm.forward_passes == 1  # the one SLM prompt pass whose token was discarded


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("tau", [0.55, 0.65, 0.7, 0.75, 0.8])
def test_same_model_as_slm_and_llm_is_that_models_greedy_output(arch, tau):
    engine = tiny_engine(slm_arch=arch, same_model=True)
    for prompt in PROMPTS:
        prompt_ids = engine.encode(prompt)
        expected = hf_greedy(engine.pair.slm.model, prompt_ids, 32, engine.pair.eos_token_ids)
        events, _, _ = run(engine, prompt_ids, tau, max_new_tokens=32)
        assert [e.token_id for e in events] == expected


def test_thresholds_used_above_really_switch_both_ways():
    """Guards the tests above against vacuity: at these taus the tiny pairs do switch, both ways."""
    engine = tiny_engine(same_model=True)
    switched = {tau: run(engine, PROMPTS[0], tau, max_new_tokens=32)[1] for tau in (0.65, 0.7, 0.75)}
    assert all(s.switches_to_llm > 0 and s.switches_to_slm > 0 for s in switched.values())


def assert_loop_invariants(events, stats, request, tau: float) -> None:
    """Everything Algorithm 1 promises about one finished request under the entropy router."""
    output = request.output_ids
    assert [e.token_id for e in events] == output
    assert [e.index for e in events] == list(range(len(output)))
    # Attribution: kept tokens per model; a discarded SLM token is never output nor counted as written.
    assert stats.slm_tokens == sum(e.source == "slm" for e in events)
    assert stats.llm_tokens == sum(e.source == "llm" for e in events)
    assert stats.slm_tokens + stats.llm_tokens == stats.output_tokens == len(output)
    assert stats.discarded_slm_tokens == stats.switches_to_llm == sum(e.took_over for e in events)
    assert stats.switches_to_slm == sum(e.hands_back for e in events)
    assert all(e.source == "llm" for e in events if e.took_over or e.hands_back)
    # Routing: an SLM token above tau never survives; the LLM hands back exactly when confident.
    assert all(e.entropy <= tau for e in events if e.source == "slm")
    assert all(e.hands_back == (e.entropy <= tau) for e in events if e.source == "llm")
    # Control alternates: switches differ by at most one, and the LLM ends active iff they differ.
    assert stats.switches_to_llm - stats.switches_to_slm in (0, 1)
    # Catch-up feeds exactly the unseen tokens, contiguously, and only when the model is behind.
    for role, slot in request.slots.items():
        covered = 0
        for record in slot.records:
            assert record.cached_tokens == covered
            assert record.new_tokens >= 1
            covered += record.new_tokens
        assert covered == slot.n_cached <= len(request.tokens)
        usage = stats.slm if role == "slm" else stats.llm
        assert usage.catchup_tokens + usage.decode_passes == slot.n_cached
        assert all(r.new_tokens == 1 for r in slot.records if r.kind == "decode")
    # The LLM never runs before the first switch; its first pass covers the prompt and output so far.
    llm_records = request.slots["llm"].records
    if stats.switches_to_llm == 0:
        assert llm_records == []
    else:
        first_takeover = next(e.index for e in events if e.took_over)
        assert llm_records[0].cached_tokens == 0
        assert llm_records[0].new_tokens == request.prompt_tokens + first_takeover


@pytest.mark.parametrize("slm_arch,llm_arch", ARCH_PAIRS)
def test_loop_invariants_with_many_switches(slm_arch, llm_arch):
    engine = tiny_engine(slm_arch=slm_arch, llm_arch=llm_arch)
    for prompt in PROMPTS:
        events, stats, request = run(engine, prompt, 0.7, max_new_tokens=48)
        assert stats.switches_to_llm >= 3
        assert_loop_invariants(events, stats, request, 0.7)


def test_baseline_routers_never_or_always_use_the_llm():
    engine = tiny_engine()
    prompt_ids = engine.encode(PROMPTS[1])
    slm_only = engine.generate(prompt_ids, GenerationSettings(max_new_tokens=16), AlwaysSLMRouter())
    llm_only = engine.generate(prompt_ids, GenerationSettings(max_new_tokens=16), AlwaysLLMRouter())
    eos = engine.pair.eos_token_ids
    assert list(slm_only.token_ids) == hf_greedy(engine.pair.slm.model, prompt_ids, 16, eos)
    assert list(llm_only.token_ids) == hf_greedy(engine.pair.llm.model, prompt_ids, 16, eos)
    assert slm_only.stats.llm.forward_passes == 0 and llm_only.stats.slm_tokens == 0
    # the LLM-alone router starts on the LLM: the SLM never runs, so nothing is discarded or switched
    assert llm_only.stats.slm.forward_passes == 0 and llm_only.stats.discarded_slm_tokens == 0
    assert llm_only.stats.switches_to_llm == 0 and not any(e.took_over for e in llm_only.events)


def test_the_llm_alone_computes_entropy_only_when_asked():
    """No router reads H under an ``llm_only`` router: events carry None, the same tokens as with
    ``token_entropy=True``, which reports each token's normalised entropy as stitching computes it."""
    engine = tiny_engine()
    prompt_ids = engine.encode(PROMPTS[0])
    plain = engine.generate(prompt_ids, GenerationSettings(max_new_tokens=16), AlwaysLLMRouter())
    asked = engine.generate(prompt_ids, GenerationSettings(max_new_tokens=16, token_entropy=True), AlwaysLLMRouter())
    at_minus_one = engine.generate(prompt_ids, GenerationSettings(max_new_tokens=16), EntropyRouter(-1.0))
    assert plain.token_ids == asked.token_ids == at_minus_one.token_ids
    assert all(event.entropy is None for event in plain.events)
    assert [e.entropy for e in asked.events] == [e.entropy for e in at_minus_one.events]
    assert all(0.0 < e.entropy <= 1.0 for e in asked.events)
    with pytest.raises(InvalidSettingError, match="token_entropy"):
        GenerationSettings(token_entropy="yes")


class NeverHandsBack(AlwaysLLMRouter):
    def hands_back(self, state):
        raise AssertionError("an llm_only router is never asked to hand back")


def test_an_llm_only_router_is_never_asked_to_hand_back():
    engine = tiny_engine()
    for settings in (GenerationSettings(max_new_tokens=8), GenerationSettings(max_new_tokens=8, token_entropy=True)):
        result = engine.generate(PROMPTS[1], settings, NeverHandsBack())
        assert {e.source for e in result.events} == {"llm"} and not any(e.hands_back for e in result.events)


@pytest.mark.parametrize("opening", [1, 3, 6])
def test_the_llm_writes_the_opening_tokens_then_algorithm_1_applies(opening):
    """``llm_opening_tokens=k``: the LLM's own greedy first k tokens; at tau 1 it hands back after them and
    the SLM continues greedily from there; an opening as long as the answer is the LLM alone."""
    engine = tiny_engine()
    prompt_ids = engine.encode(PROMPTS[1])
    eos, slm, llm = engine.pair.eos_token_ids, engine.pair.slm.model, engine.pair.llm.model
    result = engine.generate(prompt_ids, GenerationSettings(max_new_tokens=12), EntropyRouter(1.0, llm_opening_tokens=opening))
    tokens, sources = list(result.token_ids), [e.source for e in result.events]
    assert tokens[:opening] == hf_greedy(llm, prompt_ids, opening, eos)
    assert sources[:opening] == ["llm"] * opening and set(sources[opening:]) == {"slm"}
    assert tokens[opening:] == hf_greedy(slm, list(prompt_ids) + tokens[:opening], 12 - opening, eos)
    assert result.stats.discarded_slm_tokens == 0  # the SLM never ran before the opening was written
    whole = engine.generate(prompt_ids, GenerationSettings(max_new_tokens=12), EntropyRouter(1.0, llm_opening_tokens=12))
    assert list(whole.token_ids) == hf_greedy(llm, prompt_ids, 12, eos)
    with pytest.raises(InvalidSettingError, match="llm_opening_tokens"):
        EntropyRouter(0.1, llm_opening_tokens=-1)


class CountingRouter(EntropyRouter):
    """Entropy router that records every state it is consulted on."""

    def __init__(self, threshold: float) -> None:
        super().__init__(threshold)
        object.__setattr__(self, "seen", [])

    def wants_llm(self, state):
        self.seen.append(state)
        return True


def test_router_is_consulted_only_above_threshold_and_only_for_the_slm():
    engine = tiny_engine()
    router = CountingRouter(0.7)
    stream = engine.stream(PROMPTS[0], GenerationSettings(max_new_tokens=40), router)
    events = list(stream)
    assert len(router.seen) == stream.stats.discarded_slm_tokens > 0
    assert all(state.entropy > 0.7 for state in router.seen)
    # Each consultation is at the position the LLM then wrote, with the context before it.
    takeovers = [e for e in events if e.took_over]
    assert [s.context_length for s in router.seen] == [stream.prompt_tokens + e.index for e in takeovers]
    assert all(s.slm_hidden is None for s in router.seen)


class HiddenStateRouter(RouterBase):
    """A stand-in for a learned router: reads the hidden state, and declines some switches."""

    needs_hidden_state = True

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.seen = []

    def wants_llm(self, state):
        self.seen.append(state)
        return state.context_length % 2 == 0  # declines half the time: the SLM token is then kept


def test_learned_router_seam_gets_the_slm_hidden_state_and_may_decline():
    engine = tiny_engine()
    router = HiddenStateRouter(0.7)
    stream = engine.stream(PROMPTS[0], GenerationSettings(max_new_tokens=40), router)
    events = list(stream)
    hidden_size = engine.pair.slm.model.config.hidden_size
    assert router.seen and all(s.slm_hidden is not None and s.slm_hidden.shape == (hidden_size,) for s in router.seen)
    declined = [s for s in router.seen if s.context_length % 2]
    kept_uncertain = [e for e in events if e.source == "slm" and e.entropy > 0.7]
    assert declined and len(kept_uncertain) == len(declined)
    assert stream.stats.discarded_slm_tokens == len(router.seen) - len(declined)


token_ids = st.lists(st.integers(min_value=3, max_value=299), min_size=1, max_size=12)
sampling = st.one_of(
    st.just({}),
    st.fixed_dictionaries({
        "temperature": st.sampled_from([0.5, 1.0, 1.7]),
        "top_p": st.sampled_from([0.3, 0.9, 1.0]),
        "top_k": st.sampled_from([0, 1, 5]),
        "seed": st.integers(min_value=0, max_value=2**31),
    }),
)
HYPOTHESIS = hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(prompt=token_ids, tau=st.floats(min_value=-0.2, max_value=1.2), max_new=st.integers(1, 24))
def test_property_same_model_pair_is_greedy_exact(prompt, tau, max_new):
    engine = _same_model_engine()
    expected = hf_greedy(engine.pair.slm.model, prompt, max_new, engine.pair.eos_token_ids)
    events, _, _ = run(engine, prompt, tau, max_new_tokens=max_new)
    assert [e.token_id for e in events] == expected


@HYPOTHESIS
@given(prompt=token_ids, tau=st.floats(min_value=-0.2, max_value=1.2), max_new=st.integers(1, 32), extra=sampling)
def test_property_loop_invariants(prompt, tau, max_new, extra):
    engine = _two_model_engine()
    events, stats, request = run(engine, prompt, tau, max_new_tokens=max_new, **extra)
    assert_loop_invariants(events, stats, request, tau)
    if "seed" in extra:  # seeded sampling is reproducible, switches included
        again, again_stats, _ = run(engine, prompt, tau, max_new_tokens=max_new, **extra)
        assert again == [dataclasses.replace(e, seconds=a.seconds) for e, a in zip(events, again)]
        assert again_stats.switches_to_llm == stats.switches_to_llm


_ENGINES: dict[str, StitchEngine] = {}


def _same_model_engine() -> StitchEngine:
    return _ENGINES.setdefault("same", StitchEngine(tiny_pair(same_model=True)))


def _two_model_engine() -> StitchEngine:
    return _ENGINES.setdefault("two", StitchEngine(tiny_pair()))


def test_a_looser_hand_back_returns_control_sooner_and_keeps_the_exactness_properties():
    engine, same = tiny_engine(), tiny_engine(same_model=True)
    settings = GenerationSettings(max_new_tokens=24)

    def routed(on, prompt, tau, back):
        stream = on.stream(on.encode(prompt), settings, EntropyRouter(tau, hand_back_threshold=back))
        events = [(e.token_id, e.source, e.entropy, e.hands_back) for e in stream]
        stats = stream.stats
        return events, (stats.switches_to_llm, stats.switches_to_slm, stats.discarded_slm_tokens,
                        stats.slm.forward_passes, stats.llm.forward_passes)

    sooner = 0
    for prompt in PROMPTS:
        assert routed(engine, prompt, 0.7, 0.7) == routed(engine, prompt, 0.7, None)  # back = tau: Algorithm 1
        events, stats = routed(engine, prompt, 0.7, 0.95)
        assert all(back == (entropy <= 0.95) for _, source, entropy, back in events if source == "llm")
        sooner += stats[1] > routed(engine, prompt, 0.7, None)[1][1]  # more switches back to the SLM
        llm_alone = [token for token, *_ in routed(engine, prompt, -0.01, None)[0]]
        assert [token for token, *_ in routed(engine, prompt, -0.01, 0.95)[0]] == llm_alone  # tau < 0: the LLM alone
        ids = same.encode(prompt)
        expected = hf_greedy(same.pair.llm.model, ids, 24, same.pair.eos_token_ids)
        assert [token for token, *_ in routed(same, prompt, 0.7, 0.95)[0]] == expected  # same model: its greedy output
    assert sooner > 0  # the looser hand-back did return control sooner somewhere


def test_hand_back_threshold_is_validated():
    with pytest.raises(InvalidSettingError, match="threshold"):
        EntropyRouter(0.1, hand_back_threshold=float("nan"))
