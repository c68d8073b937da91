"""The routing policy: one rule from (quality, router, threshold, the pair's profile) to what runs, and calibration."""

from __future__ import annotations

import dataclasses

import json
import math
import warnings

import pytest
from tiny import tiny_pair

from rstitch_engine import (
    DEFAULT_AGREEMENT_TARGET,
    AlwaysLLMRouter,
    EntropyRouter,
    GenerationSettings,
    InvalidSettingError,
    MeasuredConfig,
    PairProfile,
    Routing,
    StitchEngine,
    find_profile,
    resolve_policy,
)
from rstitch_engine.decoding import policy as policy_module
from rstitch_engine.decoding.lookup import LLM_ALONE_LOOKUP_TOKENS
from rstitch_engine.decoding.profile import user_profile_path
from rstitch_engine.measure.calibrate import CalibrationPrompt, calibrate, default_candidates, read_prompts

LLM_LOOKUP = MeasuredConfig("LLM alone + lookup", {"kind": "llm"}, 6, agreement=1.0, speedup=1.15, slm_share=0.0)


def stitched(tau: float, agreement: float, speedup: float) -> MeasuredConfig:
    return MeasuredConfig(f"tau={tau:g}", {"kind": "entropy", "threshold": tau}, 0, agreement, speedup, 0.5)


def profile_of(*configs: MeasuredConfig) -> PairProfile:
    return PairProfile(pair="tiny-llama__tiny-qwen2", device="cpu-float64", calibration_set="test", prompts=40,
                       max_new_tokens=16, configs=configs)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Profiles written by a test stay in its own cache folder."""
    monkeypatch.setenv("RSTITCH_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- what a caller asks for


@pytest.mark.parametrize("asked", [dict(quality="fast", threshold=0.2), dict(quality="exact", router="entropy"),
                                   dict(quality="auto", router_path="somewhere")])
def test_quality_and_a_router_together_are_refused_with_one_wording(asked):
    with pytest.raises(InvalidSettingError, match="give either quality or router/threshold, not both"):
        Routing(**asked)


@pytest.mark.parametrize("asked, message", [
    (dict(quality="best"), "quality must be one of"),
    (dict(threshold=float("nan")), "threshold"),
    (dict(agreement_target=1.2), "agreement_target"),
    (dict(router=EntropyRouter(0.2), threshold=0.3), "carries its own threshold"),
    (dict(router=object()), "lacks threshold"),
])
def test_bad_routings_say_what_is_wrong(asked, message):
    with pytest.raises(InvalidSettingError, match=message):
        Routing(**asked)


def test_each_preset_and_named_router_resolves_to_its_policy():
    exact = resolve_policy(Routing(quality="exact"), None)
    assert exact.router == AlwaysLLMRouter() and exact.prompt_lookup_tokens == LLM_ALONE_LOOKUP_TOKENS
    assert resolve_policy(Routing(quality="balanced"), None).router == EntropyRouter(0.05)
    fast = resolve_policy(Routing(quality="fast"), None)
    assert fast.router == EntropyRouter(0.1) and fast.prompt_lookup_tokens == 0 and fast.name == "fast: R-Stitch tau=0.1"
    assert resolve_policy(Routing(threshold=0.3), None).router == EntropyRouter(0.3)
    assert resolve_policy(Routing(router="llm"), None).prompt_lookup_tokens == LLM_ALONE_LOOKUP_TOKENS
    assert resolve_policy(Routing(router="slm"), None).router.threshold == math.inf
    given = EntropyRouter(0.4, hand_back_threshold=0.2)
    assert resolve_policy(Routing(router=given), None).router is given


def test_a_calls_threshold_replaces_a_preset_and_keeps_a_named_routers_kind():
    assert Routing(quality="exact").with_call(threshold=0.3) == Routing(threshold=0.3)
    assert Routing(router="slm").with_call(threshold=0.3).router == "slm"
    assert Routing(threshold=0.3).with_call(quality="fast") == Routing(quality="fast")
    assert Routing(agreement_target=0.9).with_call().agreement_target == 0.9
    with pytest.raises(InvalidSettingError, match="not both"):
        Routing().with_call(quality="fast", threshold=0.1)


# ----------------------------------------------------------------------------- 'auto' and the profile


def test_auto_without_a_profile_runs_the_llm_alone_and_warns_once(monkeypatch):
    monkeypatch.setattr(policy_module, "_warned", policy_module.threading.Event())
    with pytest.warns(UserWarning, match="rstitch calibrate"):
        policy = resolve_policy(Routing(), None)
    assert policy.router == AlwaysLLMRouter() and policy.prompt_lookup_tokens == LLM_ALONE_LOOKUP_TOKENS
    assert policy.name == "auto: LLM alone + lookup" and "no calibration profile" in policy.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second request does not warn again
        resolve_policy(Routing(), None)


def test_auto_picks_the_fastest_configuration_that_meets_the_target():
    profile = profile_of(LLM_LOOKUP, stitched(0.02, 0.97, 1.3), stitched(0.05, 0.96, 1.6), stitched(0.1, 0.80, 2.2))
    policy = resolve_policy(Routing(), profile)
    assert policy.router == EntropyRouter(0.05) and policy.prompt_lookup_tokens == 0
    assert policy.name == "auto: tau=0.05" and "96%" in policy.reason and "1.60x" in policy.reason
    stricter = resolve_policy(Routing(agreement_target=0.97), profile)
    assert stricter.router == EntropyRouter(0.02)
    looser = resolve_policy(Routing(agreement_target=0.8), profile)
    assert looser.router == EntropyRouter(0.1)


def test_auto_falls_back_to_the_llm_alone_when_nothing_stitched_is_faithful_or_faster():
    unfaithful = profile_of(LLM_LOOKUP, stitched(0.02, 0.61, 0.7), stitched(0.1, 0.39, 1.2))
    policy = resolve_policy(Routing(), unfaithful)
    assert policy.router == AlwaysLLMRouter() and policy.name == "auto: LLM alone + lookup"
    assert f"no stitched configuration kept {DEFAULT_AGREEMENT_TARGET:.0%}" in policy.reason
    assert "best: tau=0.02, 61%" in policy.reason
    slower = profile_of(LLM_LOOKUP, stitched(0.02, 0.99, 1.05))  # faithful, but slower than the LLM with lookup
    assert resolve_policy(Routing(), slower).router == AlwaysLLMRouter()


def test_auto_drops_prompt_lookup_where_the_profile_measured_it_slower_than_the_plain_llm():
    """On a runtime where a pass over several tokens costs several decodes (llama.cpp on a CPU), lookup can lose."""
    slow_lookup = dataclasses.replace(LLM_LOOKUP, speedup=0.8)
    policy = resolve_policy(Routing(), profile_of(slow_lookup, stitched(0.02, 0.61, 0.7)))
    assert policy.router == AlwaysLLMRouter() and policy.prompt_lookup_tokens == 0
    assert policy.name == "auto: LLM alone" and "prompt lookup measured slower" in policy.reason
    faster_than_plain = profile_of(slow_lookup, stitched(0.05, 0.97, 0.9))  # faithful, beats lookup, not the plain LLM
    assert resolve_policy(Routing(), faster_than_plain).name == "auto: LLM alone"
    assert resolve_policy(Routing(quality="exact"), profile_of(slow_lookup)).prompt_lookup_tokens > 0  # asked for


def test_profiles_round_trip_and_the_users_is_found_before_the_shipped_one(tmp_path):
    profile = profile_of(LLM_LOOKUP, stitched(0.05, 0.96, 1.6))
    shipped, user = tmp_path / "shipped", tmp_path / "user"
    profile.save(shipped / "tiny-llama__tiny-qwen2.json")
    assert find_profile("tiny-llama", "tiny-qwen2", [user, shipped]) == profile
    other = profile_of(LLM_LOOKUP)
    other.save(user / "tiny-llama__tiny-qwen2.json")
    assert find_profile("tiny-llama", "tiny-qwen2", [user, shipped]) == other
    assert find_profile("tiny-llama", "another", [user, shipped]) is None
    (user / "tiny-llama__tiny-qwen2.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(InvalidSettingError, match="calibration profile"):
        find_profile("tiny-llama", "tiny-qwen2", [user, shipped])


def test_the_engine_uses_its_pairs_profile_and_the_stats_name_the_policy():
    pair = tiny_pair()
    settings = GenerationSettings(max_new_tokens=8)
    profile_of(LLM_LOOKUP, stitched(0.7, 0.96, 1.6)).save(user_profile_path("tiny-llama", "tiny-qwen2"))
    engine = StitchEngine(pair, settings=settings)
    result = engine.generate("The quick brown fox")
    assert result.stats.policy == "auto: tau=0.7" and result.stats.threshold == 0.7
    assert result.stats.to_dict()["policy_reason"].startswith("tau=0.7 agreed with the LLM alone on 96%")
    exact = engine.generate("The quick brown fox", router=Routing(quality="exact"))
    assert exact.stats.policy == "exact: LLM alone + lookup" and {e.source for e in exact.events} == {"llm"}
    assert StitchEngine(pair, settings=settings, profile=None).policy().name == "auto: LLM alone + lookup"


# ----------------------------------------------------------------------------- calibration


def test_calibrating_a_self_pair_measures_full_agreement_and_the_engine_finds_the_profile():
    """SLM = LLM: every tau reproduces the LLM's greedy answer (the spec's self-pair property), so every
    candidate agrees on every prompt; the profile is written where the engine looks, and 'auto' chooses from it."""
    pair = tiny_pair(same_model=True)
    engine = StitchEngine(pair, profile=None)
    prompts = [CalibrationPrompt(text) for text in ("The quick brown fox", "def add(a, b):", "What is 3 + 4?")]
    profile = calibrate(engine, prompts, default_candidates(taus=(0.7, 2.0)), GenerationSettings(max_new_tokens=12),
                        progress=False)
    assert [c.name for c in profile.configs] == ["LLM alone + lookup", "tau=0.7", "tau=2"]
    assert all(c.agreement == 1.0 and c.speedup > 0 for c in profile.configs)
    assert profile.configs[0].slm_share == 0 and profile.configs[2].slm_share == 1.0  # tau >= 1: the SLM writes all
    assert profile.pair == "tiny-llama__tiny-qwen2" and profile.prompts == 3
    profile.save(user_profile_path(pair.slm.name, pair.llm.name))
    reloaded = StitchEngine(pair)
    assert reloaded.profile == profile
    chosen, _ = profile.choose(DEFAULT_AGREEMENT_TARGET)
    fallback = "LLM alone + lookup" if profile.lookup_pays else "LLM alone"  # as measured on this run
    expected = chosen.name if chosen is not None else fallback
    assert reloaded.policy().name == f"auto: {expected}"


def test_calibration_measures_disagreement_on_a_real_pair_of_different_models():
    engine = StitchEngine(tiny_pair(), profile=None)
    prompts = [CalibrationPrompt(text) for text in ("The quick brown fox", "def add(a, b):", "lazy dog and the")]
    profile = calibrate(engine, prompts, default_candidates(taus=(-1.0, 2.0)), GenerationSettings(max_new_tokens=12),
                        progress=False)
    by_name = {c.name: c for c in profile.configs}
    assert by_name["tau=-1"].agreement == 1.0  # tau < 0: the LLM's greedy answer exactly
    assert by_name["tau=2"].agreement == 0.0 and by_name["tau=2"].slm_share == 1.0  # the SLM alone: other text


def test_user_prompt_files_are_read_or_refused_clearly(tmp_path):
    good = tmp_path / "prompts.jsonl"
    good.write_text('[{"role": "user", "content": "Hi"}]\n\n{"messages": [{"role": "user", "content": "Yo"}]}\n'
                    '{"prompt": "raw text"}\n')
    assert [p.prompt for p in read_prompts(good)] == [[{"role": "user", "content": "Hi"}],
                                                      [{"role": "user", "content": "Yo"}], "raw text"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n')
    with pytest.raises(InvalidSettingError, match="bad.jsonl:1: expected chat messages"):
        read_prompts(bad)
    bad.write_text("not json\n")
    with pytest.raises(InvalidSettingError, match="bad.jsonl:1: not JSON"):
        read_prompts(bad)


def test_calibration_candidates_with_an_llm_opening_round_trip_through_a_profile_spec():
    from rstitch_engine.decoding.profile import router_from_spec

    candidates = default_candidates([0.1], openings=[4])
    opening = next(c for c in candidates if c.name == "tau=0.1 LLM opens 4")
    router = router_from_spec(opening.router_spec)
    assert router == EntropyRouter(0.1, llm_opening_tokens=4)
    assert router_from_spec({"kind": "entropy", "threshold": 0.1}).llm_opening_tokens == 0
