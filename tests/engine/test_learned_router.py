"""R-Stitch+: the learned router (save/load, where it is consulted) and its DAPO training, on tiny models."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from helpers import RecordingRouter
from tiny import CORPUS, tiny_pair

from rstitch_engine import (
    GenerationSettings,
    InvalidSettingError,
    ModelLoadError,
    ModelPair,
    StitchEngine,
    resolve_policy,
    router_named,
)
from rstitch_engine.decoding.learned_router import LearnedRouter, RouterConfig, router_features
from rstitch_engine.decoding.routing import RouterBase, RouterState
from rstitch_engine.models.cost_model import PairCostModel, PassCost
from rstitch_engine.training.router_policy import RouterNet, SamplingRouter
from rstitch_engine.training.train_router import (
    ForcedDecisions,
    Rollout,
    RolloutTask,
    RouterTrainer,
    TrainSettings,
    dapo_loss,
    forced_decisions,
    group_advantages,
    imitation_warm_start,
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
    return LearnedRouter(config, net.weights())


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

    chat = ChatRStitch(engine=engine, router="learned", router_path=folder)
    assert isinstance(resolve_policy(chat.request_routing({}), None).router, LearnedRouter)
    with pytest.raises(Exception, match="no learned router"):
        ChatRStitch(engine=engine, router="learned", router_path=str(tmp_path / "missing"))
    pytest.importorskip("llama_index.core")
    from rstitch_integrations.llamaindex import RStitchLLM

    llm = RStitchLLM(engine=engine, router="learned", router_path=folder)
    assert isinstance(resolve_policy(llm.request_routing({}), None).router, LearnedRouter)


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
class EntropyRule(RouterBase):
    """Consulted above ``threshold`` (tau, which also sets when the LLM hands back); calls the LLM above ``cut``."""

    threshold: float
    cut: float
    needs_hidden_state: bool = False

    def wants_llm(self, state: RouterState) -> bool:
        return state.entropy > self.cut


def test_a_router_started_at_an_entropy_threshold_decodes_like_that_entropy_rule(engine):
    config = RouterConfig(hidden_size=engine.pair.slm.model.config.hidden_size, width=16, threshold=0.6)
    router = LearnedRouter(config, RouterNet(config, initial_threshold=0.75).weights())
    for prompt in PROMPTS[:2]:
        settings = GenerationSettings(max_new_tokens=12)
        learned, rule = engine.generate(prompt, settings, router), engine.generate(prompt, settings, EntropyRule(0.6, 0.75))
        assert learned.token_ids == rule.token_ids
        assert [e.source for e in learned.events] == [e.source for e in rule.events]


# ----------------------------------------------------------------------------- imitation warm start


def _config(engine: StitchEngine, threshold: float = TAU) -> RouterConfig:
    return RouterConfig(hidden_size=engine.pair.slm.model.config.hidden_size, width=16, threshold=threshold)


def test_forced_decisions_give_the_engines_features_at_the_first_answer_position(engine):
    config = _config(engine)
    for prompt in PROMPTS:
        recorder = RecordingRouter(random_router(engine))
        engine.generate(prompt, GenerationSettings(max_new_tokens=1), recorder)
        forced = forced_decisions(engine, [RolloutTask("p", prompt, lambda _: True)], config, 1)
        assert len(forced.features) == len(forced.slm_errs) == len(recorder.calls)  # consulted iff H > tau
        if recorder.calls:
            state = recorder.calls[0][0]
            np.testing.assert_allclose(forced.features[0], router_features(state, config), rtol=0, atol=1e-5)
            llm_first = engine.decode_alone("llm", prompt, GenerationSettings(max_new_tokens=1)).token_ids[0]
            assert forced.slm_errs[0] == float(state.proposed_token != llm_first) and forced.task[0] == 0


def test_an_slm_identical_to_the_llm_never_errs_along_its_answers():
    same = StitchEngine(tiny_pair(same_model=True))
    forced = forced_decisions(same, _tasks(), _config(same, threshold=0.0), 12)
    assert len(forced.slm_errs) > 20 and not forced.slm_errs.any()
    assert sorted(set(forced.task.tolist())) == list(range(len(_tasks())))


@pytest.fixture(scope="module")
def noisy_engine() -> StitchEngine:
    """The tiny LLM and, as SLM, a copy with a noisy last layer: the two agree on some tokens, not all."""
    pair = tiny_pair()
    llm = pair.llm.model
    slm = copy.deepcopy(llm)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in slm.model.layers[-1].parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return StitchEngine(ModelPair.from_models(slm, llm, pair.tokenizer, slm_name="noisy", llm_name="tiny"))


def _many_tasks() -> list[RolloutTask]:
    return [RolloutTask(f"t{i}", text[:20], lambda text: True) for i, text in enumerate(CORPUS[:8])]


def test_the_warm_start_learns_a_rule_that_holds_on_held_out_tasks_and_keeps_the_best_epoch():
    config = RouterConfig(hidden_size=16, width=8, threshold=0.1)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(600, config.n_features)).astype(np.float32)
    errs = (features[:, 3] + 0.5 * features[:, 5] > 0).astype(np.float32)  # where the SLM errs: a rule of the features
    forced = ForcedDecisions(features, errs, np.repeat(np.arange(12), 50))
    net = RouterNet(config, seed=0)
    fit = imitation_warm_start(net, forced, epochs=300, learning_rate=3e-2, validation_share=0.25)
    held = np.isin(forced.task, fit.validation_tasks)
    assert len(fit.validation_tasks) == 3 and held.sum() == 150
    assert fit.best_epoch == int(np.argmin(fit.validation_losses)) > 0
    with torch.no_grad():  # the kept weights are the best epoch's: their held-out loss is the minimum
        logits = net(torch.from_numpy(features))
        kept = torch.nn.functional.binary_cross_entropy_with_logits(logits[torch.from_numpy(held)],
                                                                  torch.from_numpy(errs[held]))
    assert float(kept) == pytest.approx(min(fit.validation_losses), rel=1e-5)
    accuracy = ((logits.numpy() > 0) == (errs > 0.5))[held].mean()
    assert accuracy > 0.9  # the rule carries over to tasks it never saw


def test_the_trainer_warm_starts_once_from_the_forced_decisions(noisy_engine, tmp_path):
    engine = noisy_engine
    settings = _settings(1.0, warm_start_epochs=60, threshold=0.3, max_new_tokens=16)
    forced = forced_decisions(engine, _many_tasks(), RouterConfig(hidden_size=48, width=16, threshold=0.3), 16)
    assert 0.2 < forced.slm_errs.mean() < 0.95  # both kinds of position occur
    trainer = RouterTrainer(engine, _many_tasks(), COST, settings, tmp_path / "warm")
    assert trainer.step == 0 and trainer.checkpoint_path.is_file()  # a rerun resumes instead of fitting again
    expected = RouterNet(trainer.config, seed=settings.seed)
    imitation_warm_start(expected, forced, 60, seed=settings.seed)
    for name, value in expected.weights().items():
        np.testing.assert_allclose(trainer.router().weights[name], value, rtol=0, atol=1e-6)
    again = RouterTrainer(engine, _many_tasks(), COST, settings, tmp_path / "warm")  # resumes: no second fit
    for name, value in trainer.router().weights.items():
        np.testing.assert_array_equal(again.router().weights[name], value)
