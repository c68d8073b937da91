"""R-Stitch+: the learned router (save/load, where it is consulted) and its DAPO training, on tiny models."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from tiny import CORPUS, tiny_pair

from rstitch_engine import GenerationSettings, InvalidSettingError, ModelLoadError, StitchEngine, router_named
from rstitch_engine.costmodel import PairCostModel, PassCost
from rstitch_engine.learned_router import LearnedRouter, RouterConfig, RouterNet, SamplingRouter, router_features
from rstitch_engine.routers import RouterState
from rstitch_engine.train_router import (
    Rollout,
    RolloutTask,
    RouterTrainer,
    TrainSettings,
    dapo_loss,
    group_advantages,
    mean_llm_probability,
    read_log,
    reward,
    train_router,
)

TAU = 0.7
"""About the median SLM entropy of the tiny random pair: both sides of tau are populated."""
PROMPTS = [text[:20] for text in CORPUS[:4]]
COST = PairCostModel(slm=PassCost(1e-3, 1e-3, 0.0), llm=PassCost(4e-3, 4e-3, 0.0), pair="tiny")
"""A synthetic cost model: the LLM costs four times the SLM per pass and per token."""


@pytest.fixture(scope="module")
def engine() -> StitchEngine:
    return StitchEngine(tiny_pair())


def random_router(engine: StitchEngine, seed: int = 0, threshold: float = TAU) -> LearnedRouter:
    """An untrained router whose decisions vary from position to position."""
    config = RouterConfig(hidden_size=engine.pair.slm.model.config.hidden_size, width=16, threshold=threshold)
    net = RouterNet(config, seed=seed)
    with torch.no_grad():
        net.out.weight.mul_(30.0)  # spread P(LLM) around 0.5 so both decisions occur
    return LearnedRouter.from_net(config, net)


@dataclass
class RecordingRouter:
    """Delegates to a router and records every consultation (state, answer)."""

    inner: LearnedRouter
    calls: list[tuple[RouterState, bool]] = field(default_factory=list)
    needs_hidden_state: bool = True

    @property
    def threshold(self) -> float:
        return self.inner.threshold

    def wants_llm(self, state: RouterState) -> bool:
        answer = self.inner.wants_llm(state)
        self.calls.append((state, answer))
        return answer


def consulted_states(engine: StitchEngine, router: LearnedRouter, max_new_tokens: int = 12) -> list[RouterState]:
    states = []
    for prompt in PROMPTS:
        recorder = RecordingRouter(router)
        engine.generate(prompt, GenerationSettings(max_new_tokens=max_new_tokens), recorder)
        states += [state for state, _ in recorder.calls]
    return states


# ----------------------------------------------------------------------------- the router


def test_save_load_round_trip_gives_identical_probabilities_and_decisions(engine, tmp_path):
    router = random_router(engine)
    loaded = LearnedRouter.load(router.save(tmp_path / "router"))
    assert loaded.config == router.config
    states = consulted_states(engine, router)
    assert len(states) > 10
    probabilities = [router.probability(s) for s in states]
    assert [loaded.probability(s) for s in states] == probabilities  # exactly equal
    decisions = [router.wants_llm(s) for s in states]
    assert [loaded.wants_llm(s) for s in states] == decisions
    assert 0 < sum(decisions) < len(decisions), "the check needs both decisions"
    for prompt in PROMPTS[:3]:
        settings = GenerationSettings(max_new_tokens=16)
        first, second = (engine.generate(prompt, settings, r) for r in (router, loaded))
        assert first.token_ids == second.token_ids
        assert [e.source for e in first.events] == [e.source for e in second.events]


def test_router_is_consulted_exactly_where_the_slm_entropy_is_above_tau(engine):
    for prompt in PROMPTS:
        recorder = RecordingRouter(random_router(engine))
        result = engine.generate(prompt, GenerationSettings(max_new_tokens=24), recorder)
        assert all(state.entropy > TAU for state, _ in recorder.calls)
        # Rebuild the expected consultations from the events: an SLM token above tau was kept after
        # the router said "SLM"; a take-over is a position where the router said "LLM".
        expected = []
        for event in result.events:
            if event.took_over:
                expected.append((None, True))
            if event.source == "slm" and event.entropy > TAU:
                expected.append((event.entropy, False))
        observed = [(None if answer else state.entropy, answer) for state, answer in recorder.calls]
        assert observed == expected
        below = [e for e in result.events if e.source == "slm" and e.entropy <= TAU]
        assert below, "the check needs SLM tokens at or below tau"
        assert all(state.slm_hidden is not None for state, _ in recorder.calls)


def test_features_and_shape_checks(engine, tmp_path):
    router = random_router(engine)
    state = consulted_states(engine, router)[0]
    x = router_features(state, router.config)
    assert x.shape == (router.config.hidden_size + 2,) and x.dtype == np.float32
    assert x[-2] == np.float32(state.entropy)
    with pytest.raises(InvalidSettingError, match="hidden state"):
        router.wants_llm(RouterState(0.9, 10, 3, None))
    with pytest.raises(InvalidSettingError, match="size"):
        router.wants_llm(RouterState(0.9, 10, 3, torch.zeros(router.config.hidden_size + 1)))
    with pytest.raises(ModelLoadError):
        LearnedRouter.load(tmp_path / "nothing-here")


def test_router_named_and_adapters_load_a_learned_router_from_one_field(engine, tmp_path):
    folder = str(random_router(engine).save(tmp_path / "router"))
    assert isinstance(router_named("learned", 0.1, folder), LearnedRouter)
    assert router_named("learned", 0.1, folder).threshold == TAU  # its own trained tau
    with pytest.raises(InvalidSettingError, match="learned"):
        router_named("entropy", 0.1, folder)
    with pytest.raises(ModelLoadError):
        router_named("learned", 0.1, str(tmp_path / "missing"))

    pytest.importorskip("langchain_core")
    from rstitch_integrations.langchain import ChatRStitch

    assert isinstance(ChatRStitch(engine=engine, router="learned", router_path=folder)._router({}), LearnedRouter)
    with pytest.raises(Exception, match="no learned router"):
        ChatRStitch(engine=engine, router="learned", router_path=str(tmp_path / "missing"))
    pytest.importorskip("llama_index.core")
    from rstitch_integrations.llamaindex import RStitchLLM

    assert isinstance(RStitchLLM(engine=engine, router="learned", router_path=folder)._router({}), LearnedRouter)


# ----------------------------------------------------------------------------- DAPO pieces


def test_reward_penalises_latency_only_for_correct_answers():
    assert reward(True, 0.5, 0.4) == pytest.approx(0.8)
    assert reward(False, 0.5, 0.4) == 0.0
    assert reward(False, 9.0, 10.0) == 0.0


def test_group_advantages_normalise_and_skip_zero_variance_groups():
    assert group_advantages([1.0, 1.0, 1.0]) is None
    assert group_advantages([0.0, 0.0]) is None
    adv = group_advantages([0.2, 0.5, 0.9, 0.0])
    assert adv is not None
    assert adv.mean() == pytest.approx(0.0, abs=1e-12) and adv.std() == pytest.approx(1.0)
    assert list(np.argsort(adv)) == [3, 0, 1, 2]


def _clip_grad(ratio: float, advantage: float) -> tuple[float, float]:
    """(loss, d loss / d logprob) of one decision with pi / pi_old = ratio."""
    logprob = torch.tensor([float(np.log(ratio))], requires_grad=True)
    loss = dapo_loss(logprob, torch.zeros(1), torch.tensor([advantage]), eps_low=0.2, eps_high=0.28)
    loss.backward()
    return float(loss), float(logprob.grad[0])


def test_dapo_loss_clips_with_decoupled_bounds():
    # A > 0: the ratio may rise to 1 + eps_high = 1.28 (not 1.2) before the gradient stops.
    loss, grad = _clip_grad(1.25, 1.0)
    assert loss == pytest.approx(-1.25) and grad == pytest.approx(-1.25)
    loss, grad = _clip_grad(1.40, 1.0)
    assert loss == pytest.approx(-1.28) and grad == 0.0
    # A < 0: the ratio may fall to 1 - eps_low = 0.8 before the gradient stops.
    loss, grad = _clip_grad(0.85, -1.0)
    assert loss == pytest.approx(0.85) and grad == pytest.approx(0.85)
    loss, grad = _clip_grad(0.70, -1.0)
    assert loss == pytest.approx(0.80) and grad == 0.0
    # Unclipped side: a ratio far above 1 with A < 0 keeps its full (pessimistic) gradient.
    loss, grad = _clip_grad(2.0, -1.0)
    assert loss == pytest.approx(2.0) and grad == pytest.approx(2.0)


def test_dapo_loss_is_averaged_over_decisions_not_rollouts():
    # Rollout A has 3 decisions with advantage +1, rollout B one with -1; at ratio 1 the token-level
    # mean is (3 * -1 + 1 * 1) / 4 = -0.5 (a per-rollout mean would give 0).
    zeros = torch.zeros(4)
    assert float(dapo_loss(zeros, zeros, torch.tensor([1.0, 1.0, 1.0, -1.0]))) == pytest.approx(-0.5)


def test_update_skips_zero_variance_groups(engine, tmp_path):
    trainer = RouterTrainer(engine, [RolloutTask("t", PROMPTS[0], lambda text: True)], COST,
                            TrainSettings(lam=1.0, threshold=TAU), tmp_path)
    router = random_router(engine)
    states = consulted_states(engine, router)[:6]
    sampler = SamplingRouter(trainer.config, trainer.net.weights(), seed=0)
    for state in states:
        sampler.wants_llm(state)
    decisions = tuple(sampler.decisions)

    def rollout(correct: bool, latency: float) -> Rollout:
        return Rollout("t", correct, latency, 1, 4, decisions)

    before = trainer.net.weights()
    flat = [rollout(True, 0.5), rollout(True, 0.5)]
    all_wrong = [rollout(False, 0.3), rollout(False, 0.9)]
    assert trainer.update([flat, all_wrong]) == (0.0, 0, 0, 2)
    assert all(np.array_equal(before[k], v) for k, v in trainer.net.weights().items())
    _loss, n_decisions, used, skipped = trainer.update([flat, [rollout(True, 0.2), rollout(True, 0.9)]])
    assert (n_decisions, used, skipped) == (2 * len(decisions), 1, 1)
    assert any(not np.array_equal(before[k], v) for k, v in trainer.net.weights().items())


# ----------------------------------------------------------------------------- training moves the router


def _settings(lam: float, **changes: object) -> TrainSettings:
    base = {"lam": lam, "threshold": TAU, "steps": 6, "batch_size": 2, "group_size": 4, "updates_per_step": 4,
            "max_new_tokens": 8, "learning_rate": 3e-2, "reference": "same_length", "width": 16, "seed": 3,
            "checkpoint_every": 2}
    return TrainSettings(**{**base, **changes})  # type: ignore[arg-type]


def _tasks() -> list[RolloutTask]:
    return [RolloutTask(f"t{i}", prompt, lambda text: True) for i, prompt in enumerate(PROMPTS)]  # r_acc = 1


def test_training_moves_the_llm_share_the_way_the_reward_asks(engine, tmp_path):
    """With r_acc = 1 the reward is 1 - lambda * L_hat: lambda > 0 asks for less LLM, lambda < 0 for more."""
    probe = np.stack([router_features(s, random_router(engine).config)
                      for s in consulted_states(engine, random_router(engine))])
    initial = RouterTrainer(engine, _tasks(), COST, _settings(1.0), tmp_path / "init").router()
    start = mean_llm_probability(initial, probe)
    assert 0.4 < start < 0.6
    shares = {}
    for lam in (-1.0, 1.0):
        router = train_router(engine, _tasks(), COST, tmp_path / f"out{lam}", _settings(lam), progress=False)
        shares[lam] = mean_llm_probability(router, probe)
        log = read_log(tmp_path / f"out{lam}" / "work" / "log.jsonl")
        assert [entry["step"] for entry in log] == list(range(6))
        assert {"reward", "accuracy", "llm_share", "llm_decision_rate", "latency"} <= set(log[0])
        assert LearnedRouter.load(tmp_path / f"out{lam}").config.training["lam"] == lam
    assert shares[1.0] < start - 0.05, shares
    assert shares[-1.0] > start + 0.05, shares
    assert shares[1.0] < shares[-1.0]


def test_resume_continues_exactly_where_a_run_stopped(engine, tmp_path):
    straight = RouterTrainer(engine, _tasks(), COST, _settings(1.0, steps=3), tmp_path / "straight").train(False)
    RouterTrainer(engine, _tasks(), COST, _settings(1.0, steps=2, checkpoint_every=1), tmp_path / "resumed").train(False)
    resumed = RouterTrainer(engine, _tasks(), COST, _settings(1.0, steps=3, checkpoint_every=1), tmp_path / "resumed")
    assert resumed.step == 2
    final = resumed.train(False)
    for name, value in straight.weights.items():
        np.testing.assert_array_equal(final.weights[name], value)
    lines = (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2]


@dataclass(frozen=True)
class EntropyRule:
    """Consulted above ``threshold`` (tau, which also sets when the LLM hands back); calls the LLM above ``cut``."""

    threshold: float
    cut: float
    needs_hidden_state: bool = False

    def wants_llm(self, state: RouterState) -> bool:
        return state.entropy > self.cut


def test_a_router_started_at_an_entropy_threshold_decodes_like_that_entropy_rule(engine):
    config = RouterConfig(hidden_size=engine.pair.slm.model.config.hidden_size, width=16, threshold=0.6)
    router = LearnedRouter.from_net(config, RouterNet(config, initial_threshold=0.75))
    for prompt in PROMPTS[:2]:
        settings = GenerationSettings(max_new_tokens=12)
        learned, rule = engine.generate(prompt, settings, router), engine.generate(prompt, settings, EntropyRule(0.6, 0.75))
        assert learned.token_ids == rule.token_ids
        assert [e.source for e in learned.events] == [e.source for e in rule.events]
