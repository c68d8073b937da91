"""Traces: recording, exact replay, synthetic traces, and the hand-back hook they rely on."""

from __future__ import annotations

import dataclasses
import math

import pytest
from tiny import tiny_engine, tiny_pair

from rstitch_engine import EntropyRouter, GenerationSettings, InvalidSettingError, StitchEngine
from rstitch_engine.decoding.routing import RouterBase, RouterState
from rstitch_engine.measure.trace import (
    ReplayRouter,
    Trace,
    TraceMismatchError,
    TracePass,
    pair_without_eos,
    record_trace,
    replay,
    synthetic_trace,
)

PROMPTS = ["The quick brown", "What is 3 + 4?", "def add(a, b):"]


def passes_of(records) -> list[tuple]:
    return [(r.role, r.kind, r.new_tokens, r.cached_tokens) for r in records]


@pytest.mark.parametrize("tau", [0.6, 0.75])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_record_then_replay_reproduces_passes_and_tokens_exactly(tau, prompt):
    engine = tiny_engine(threshold=tau)
    recorded, trace = record_trace(engine, prompt, GenerationSettings(max_new_tokens=40))
    assert trace.output_tokens == recorded.stats.output_tokens
    assert (trace.slm_tokens, trace.llm_tokens) == (recorded.stats.slm_tokens, recorded.stats.llm_tokens)
    assert trace.discarded_slm_tokens == recorded.stats.discarded_slm_tokens
    assert trace.switches_to_slm == recorded.stats.switches_to_slm
    assert len(trace.pass_seconds) == len(trace.steps) and all(s > 0 for s in trace.pass_seconds)

    fresh = StitchEngine(engine.pair)  # a different engine and router: only the trace carries the routing
    stream = fresh.stream(list(trace.prompt_ids), GenerationSettings(max_new_tokens=trace.output_tokens),
                          ReplayRouter(trace))
    events = list(stream)
    assert [e.token_id for e in events] == list(recorded.token_ids)
    assert [(e.source, e.took_over, e.hands_back) for e in events] == [
        (e.source, e.took_over, e.hands_back) for e in recorded.events]
    # Same passes, in each model's order, as recorded and as the trace implies.
    assert passes_of(stream.request.records()) == passes_of(recorded_records(engine, prompt, tau))
    planned = [(p.role, p.kind, p.new_tokens, p.cached_tokens) for p in trace.passes()]
    assert sorted(planned, key=lambda p: p[0] == "llm") == passes_of(stream.request.records())


def recorded_records(engine: StitchEngine, prompt, tau: float):
    stream = engine.stream(prompt, GenerationSettings(max_new_tokens=40), EntropyRouter(tau))
    list(stream)
    return stream.request.records()


def test_traces_of_these_runs_really_switch_both_ways():
    """Guards the replay test against vacuity."""
    _, trace = record_trace(tiny_engine(threshold=0.75), PROMPTS[0], GenerationSettings(max_new_tokens=40))
    assert trace.discarded_slm_tokens >= 3 and trace.switches_to_slm >= 3 and 0 < trace.slm_share < 1
    assert any(p.kind == "catchup" and p.new_tokens > 1 and p.cached_tokens > 0 for p in trace.passes())


def test_passes_follow_algorithm_1():
    trace = Trace(prompt_tokens=5, steps="ssxllhsxh")
    assert trace.passes() == [
        TracePass("slm", "catchup", 5, 0),  # prompt
        TracePass("slm", "decode", 1, 5),
        TracePass("slm", "decode", 1, 6),  # its token is discarded
        TracePass("llm", "catchup", 7, 0),  # first LLM pass: the prompt and the SLM's two tokens
        TracePass("llm", "decode", 1, 7),
        TracePass("llm", "decode", 1, 8),  # hands back
        TracePass("slm", "catchup", 3, 7),  # the LLM's three tokens
        TracePass("slm", "decode", 1, 10),  # discarded
        TracePass("llm", "catchup", 2, 9),  # its own last token was not fed yet, plus the SLM's
    ]
    assert (trace.output_tokens, trace.slm_tokens, trace.llm_tokens) == (7, 3, 4)
    assert trace.llm_runs() == [3, 1]


@pytest.mark.parametrize("steps", ["l", "sh", "xs", "ssx", "sxq"])
def test_invalid_steps_are_refused(steps):
    with pytest.raises(ValueError):
        Trace(prompt_tokens=3, steps=steps)


def test_json_round_trip(tmp_path):
    _, trace = record_trace(tiny_engine(threshold=0.75), PROMPTS[1], GenerationSettings(max_new_tokens=20))
    trace.save(tmp_path / "t.json")
    loaded = Trace.load(tmp_path / "t.json")
    assert loaded == trace and loaded.meta == trace.meta


def test_replay_refuses_a_run_that_leaves_the_trace():
    engine = tiny_engine(threshold=0.75)
    _, trace = record_trace(engine, PROMPTS[0], GenerationSettings(max_new_tokens=20))
    with pytest.raises(TraceMismatchError):  # a longer prompt: the context lengths disagree
        replay(engine, trace, prompt=list(trace.prompt_ids) + [5])


@pytest.mark.parametrize("share", [0.0, 0.3, 0.77, 0.9, 1.0])
@pytest.mark.parametrize("run_lengths", ["geometric", "fixed"])
def test_synthetic_trace_matches_its_share_and_is_deterministic(share, run_lengths):
    trace = synthetic_trace(12, 101, share, mean_llm_run=3.0, run_lengths=run_lengths, seed=7)
    assert trace.output_tokens == 101
    assert trace.slm_tokens == round(share * 101)
    assert abs(trace.slm_share - share) <= 0.5 / 101
    assert synthetic_trace(12, 101, share, 3.0, run_lengths, seed=7) == trace
    if run_lengths == "fixed" and 0 < share < 1:
        assert all(run == 3 for run in trace.llm_runs()[:-1])


def test_synthetic_run_lengths_follow_the_distribution():
    trace = synthetic_trace(8, 4000, 0.5, mean_llm_run=5.0, seed=1)
    runs = trace.llm_runs()
    assert abs(sum(runs[:-1]) / len(runs[:-1]) - 5.0) < 0.5  # geometric, mean 5
    assert synthetic_trace(8, 4000, 0.5, 5.0, seed=2).steps != trace.steps


def test_synthetic_trace_replays_on_a_pair_without_eos():
    engine = StitchEngine(pair_without_eos(tiny_pair()))
    assert engine.pair.eos_token_ids == frozenset()
    trace = synthetic_trace(6, 60, 0.7, mean_llm_run=3.0, seed=3)
    result = replay(engine, trace, prompt=list(range(10, 16)))
    assert [(e.source, e.took_over) for e in result.events] == [
        ("slm" if code == "s" else "llm", i > 0 and trace.steps[i - 1] == "x")
        for i, code in enumerate(trace.steps) if code != "x"]
    assert result.stats.output_tokens == 60 and result.stats.slm_tokens == trace.slm_tokens


# ---------------------------------------------------------------------------- the hand-back hook


@dataclasses.dataclass(frozen=True)
class BaseRuleRouter(RouterBase):
    """The entropy router with ``RouterBase``'s ``hands_back``: Algorithm 1's own rule."""

    threshold: float


@dataclasses.dataclass(frozen=True)
class NoHandBack:
    """Lacks ``hands_back`` and ``llm_only``: not a router."""

    threshold: float
    needs_hidden_state: bool = False

    def wants_llm(self, state: RouterState) -> bool:
        return True


@dataclasses.dataclass(frozen=True)
class DefaultRuleHook(EntropyRouter):
    """The default rule, spelled as a hook: must change nothing."""

    def hands_back(self, state: RouterState) -> bool:
        return not state.entropy > self.threshold


@dataclasses.dataclass(frozen=True)
class NeverHandsBack(EntropyRouter):
    seen: list = dataclasses.field(default_factory=list)

    def hands_back(self, state: RouterState) -> bool:
        self.seen.append(state)
        return False


@pytest.mark.parametrize("tau", [0.7, 0.75])
def test_a_hook_with_the_default_rule_changes_nothing(tau):
    engine = tiny_engine(threshold=tau)
    for prompt in PROMPTS:
        plain = engine.generate(prompt, GenerationSettings(max_new_tokens=40), BaseRuleRouter(tau))
        strip = [dataclasses.replace(e, seconds=0.0) for e in plain.events]
        for hooked_router in (DefaultRuleHook(tau), EntropyRouter(tau)):  # EntropyRouter's own hook, no hand_back_threshold
            hooked = engine.generate(prompt, GenerationSettings(max_new_tokens=40), hooked_router)
            assert [dataclasses.replace(e, seconds=0.0) for e in hooked.events] == strip
        assert plain.stats.switches_to_slm > 0


def test_an_object_lacking_a_router_member_is_refused_before_any_pass():
    engine = tiny_engine(threshold=0.7)
    with pytest.raises(InvalidSettingError, match="lacks llm_only, llm_opening_tokens, hands_back.*RouterBase"):
        engine.stream(PROMPTS[0], GenerationSettings(max_new_tokens=4), NoHandBack(0.7))
    assert engine.generate(PROMPTS[0], GenerationSettings(max_new_tokens=4)).stats.output_tokens == 4  # still usable


def test_the_hook_is_consulted_after_every_llm_token_and_can_keep_the_llm():
    router = NeverHandsBack(0.75)
    result = tiny_engine(threshold=0.75).generate(PROMPTS[0], GenerationSettings(max_new_tokens=30), router)
    first_llm = next(e.index for e in result.events if e.source == "llm")
    assert all(e.source == "llm" for e in result.events[first_llm:])  # never handed back
    assert result.stats.switches_to_slm == 0 and result.stats.switches_to_llm == 1
    assert len(router.seen) == result.stats.llm_tokens
    assert [s.context_length for s in router.seen] == [
        result.stats.prompt_tokens + e.index for e in result.events if e.source == "llm"]
    assert all(s.slm_hidden is None and 0 <= s.entropy <= 1 for s in router.seen)
    assert math.isinf(ReplayRouter(Trace(1, "s")).threshold)
