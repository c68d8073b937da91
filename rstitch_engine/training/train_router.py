"""Training the R-Stitch+ router with DAPO on rollouts whose answers can be checked.

One step:

1. draw ``batch_size`` tasks; for each, decode ``group_size`` stitched rollouts whose routing
   decisions are sampled from the current policy (``SamplingRouter``). The models decode greedily
   (or with a seeded temperature), so the decisions are the only randomness;
2. reward each rollout ``R = r_acc - lambda * r_acc * L_hat``: r_acc is 1 when the answer is right,
   and ``L_hat`` the rollout's latency predicted by the pair's cost model (no wall clock), divided by
   the predicted latency of the LLM alone on the same prompt, so that lambda is unitless;
3. group-relative advantages ``(R - mean) / std`` per task; a group whose rewards are all equal
   carries no signal and is skipped (DAPO's dynamic sampling);
4. a few gradient steps on the clipped surrogate with decoupled bounds
   ``-min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)``, ``rho = pi(a|s) / pi_old(a|s)``,
   averaged over every decision in the batch (token-level), with no KL term.

Resumable: the work folder keeps the cost model, the reference latencies, a checkpoint and a
JSONL log (one line per step: reward, accuracy, LLM share, ...). Rerunning the same command
continues from the last checkpoint; task order and sampling seeds depend only on (seed, step).
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..decoding.engine import PromptLike, StitchEngine
from ..decoding.learned_router import LearnedRouter, RouterConfig, router_features
from ..decoding.routers import EntropyRouter
from ..decoding.routing import RouterState
from ..decoding.sampling import normalised_entropy
from ..decoding.settings import GenerationSettings
from ..models.cost_model import PairCostModel
from .router_policy import Decision, RouterNet, SamplingRouter

Reference = Literal["budget", "llm_greedy", "same_length"]


@dataclass(frozen=True)
class RolloutTask:
    """A prompt whose answer can be checked."""

    id: str
    prompt: PromptLike
    is_correct: Callable[[str], bool]


def quality_tasks(part: Literal["tuning", "heldout", "all"] = "tuning") -> list[RolloutTask]:
    """The quality suite's items as tasks (tune on 'tuning' only)."""
    from ..measure.quality import quality_suite

    return [RolloutTask(item.id, item.messages(), item.is_correct) for item in quality_suite(part)]


def generalisation_tasks() -> list[RolloutTask]:
    """The generalisation suite's tuning part as tasks (its held-out part is for reporting only)."""
    from ..measure.generalisation import generalisation_suite

    return [RolloutTask(item.id, item.messages(), item.is_correct) for item in generalisation_suite("tuning")]


def gsm8k_tasks(path: Path, limit: int, seed: int = 0) -> list[RolloutTask]:
    """``limit`` GSM8K questions (JSONL with 'question' and 'answer' ending in '#### N'), checked on the last number."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    picked = np.random.default_rng(seed).permutation(len(rows))[:limit]
    tasks = []
    for index in picked:
        row = rows[int(index)]
        expected = row["answer"].split("####")[-1].strip().replace(",", "")
        tasks.append(RolloutTask(f"gsm8k/{index}", [{"role": "user", "content": row["question"]}],
                                 _last_number_is(expected)))
    return tasks


def _last_number_is(expected: str) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        numbers = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
        return bool(numbers) and float(numbers[-1]) == float(expected)

    return check


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of one training run."""

    lam: float = 0.5
    """lambda: weight of the (normalised) predicted latency in the reward of a correct rollout."""
    threshold: float = 0.02
    """tau: the router is consulted only where the SLM's normalised entropy is above it."""
    steps: int = 30
    batch_size: int = 4
    """Tasks per step."""
    group_size: int = 8
    """Rollouts per task (G)."""
    updates_per_step: int = 4
    """Gradient steps on each batch of rollouts (the ratio rho departs from 1 after the first)."""
    learning_rate: float = 3e-3
    eps_low: float = 0.2
    eps_high: float = 0.28
    width: int = 32
    initial_probability: float = 0.5
    """P(LLM) of the untrained router at every position (the output bias), unless ``initial_threshold`` is set."""
    initial_threshold: float | None = None
    """Start as an entropy router at this threshold: P(LLM) = sigmoid(initial_sharpness * (H - t))."""
    initial_sharpness: float = 20.0
    max_new_tokens: int = 48
    temperature: float = 0.0
    """0: both models decode greedily, so routing decisions are the only randomness."""
    reference: Reference = "budget"
    """Normaliser of the predicted latency, all predicted by the cost model for the LLM alone on the prompt:
    writing ``max_new_tokens`` tokens ('budget': a per-prompt constant, free), writing its own greedy answer
    ('llm_greedy': one LLM decode per task, cached), or as many tokens as the rollout ('same_length': does
    not reward shorter answers)."""
    warm_start_epochs: int = 0
    """0: no warm start. Otherwise, before any rollout, fit the router for this many epochs to predict
    where the SLM errs along the LLM's own answers to the training tasks (``imitation_warm_start``)."""
    seed: int = 0
    checkpoint_every: int = 5


@dataclass(frozen=True)
class Rollout:
    """One stitched answer decoded with sampled routing decisions."""

    task_id: str
    correct: bool
    latency: float
    """L_hat: predicted seconds of the rollout / predicted seconds of the reference."""
    llm_tokens: int
    output_tokens: int
    decisions: tuple[Decision, ...]

    def reward(self, lam: float) -> float:
        return reward(self.correct, self.latency, lam)

    @property
    def llm_share(self) -> float:
        return self.llm_tokens / max(self.output_tokens, 1)


def reward(correct: bool, latency: float, lam: float) -> float:
    """R = r_acc - lambda * r_acc * L_hat: latency only counts when the answer is right."""
    r_acc = 1.0 if correct else 0.0
    return r_acc - lam * r_acc * latency


def group_advantages(rewards: Sequence[float], eps: float = 1e-6) -> np.ndarray | None:
    """(R - mean) / std within one group; None when all rewards are equal (no signal: skip the group)."""
    values = np.asarray(rewards, dtype=np.float64)
    std = float(values.std())
    if std <= eps * max(1.0, float(np.abs(values).max())):
        return None
    return (values - values.mean()) / std


def dapo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
              eps_low: float = 0.2, eps_high: float = 0.28) -> torch.Tensor:
    """Clipped surrogate with decoupled bounds, averaged over all decisions (token-level), no KL.

    All inputs [N]: log pi(a|s) now, log pi_old(a|s) at sampling time, and each decision's
    advantage (its rollout's). Minimising it raises the probability of decisions with A > 0.
    """
    ratio = torch.exp(logprobs - old_logprobs)  # [N]
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    return -torch.minimum(ratio * advantages, clipped * advantages).mean()


def action_logprobs(net: RouterNet, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log pi(a | features) for Bernoulli actions (1 = LLM). features [N, d+2], actions [N] -> [N]."""
    logits = net(features)  # [N]
    return -torch.nn.functional.softplus(torch.where(actions > 0, -logits, logits))


# ----------------------------------------------------------------------------- rollouts


def generation_settings(settings: TrainSettings, seed: int | None = None) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                              seed=seed if settings.temperature > 0 else None)


def run_rollout(engine: StitchEngine, task: RolloutTask, router: SamplingRouter, cost: PairCostModel,
                settings: TrainSettings, reference_seconds: float | None, seed: int) -> Rollout:
    """Decode ``task`` once with ``router`` sampling its decisions; score it with the cost model."""
    router.decisions.clear()
    stream = engine.stream(task.prompt, generation_settings(settings, seed), router)
    text = "".join(event.text for event in stream)
    stats = stream.stats
    predicted = cost.predict(stream.request.records())
    if reference_seconds is None:  # 'same_length': the LLM alone writing as many tokens
        reference_seconds = cost.alone_seconds("llm", stats.prompt_tokens, max(stats.output_tokens, 1))
    return Rollout(task.id, bool(task.is_correct(text)), predicted / reference_seconds, stats.llm_tokens,
                   stats.output_tokens, tuple(router.decisions))


def reference_seconds(engine: StitchEngine, task: RolloutTask, cost: PairCostModel, settings: TrainSettings) -> float:
    """Predicted seconds of the LLM alone on its own greedy answer to ``task`` (the 'llm_greedy' normaliser)."""
    prompt_tokens = len(engine.encode(task.prompt))
    alone = engine.decode_alone("llm", task.prompt, generation_settings(settings, 0))
    return cost.alone_seconds("llm", prompt_tokens, max(len(alone.token_ids), 1))


def calibrate_cost_model(engine: StitchEngine, pair: str = "", repeats: int = 3) -> PairCostModel:
    """A cost model of the engine's pair from timed passes over a grid of (new, cached) sizes.

    For pairs without a calibrated model (``models.cost_model.shipped_cost_model``): wall-clock
    measurements go into the fit only; rewards use the fitted model.
    """
    from ..measure.cost_calibration import measure_passes

    points = [(n, c) for n in (1, 2, 4, 8, 16, 32, 64) for c in (0, 32, 96)]
    records = [*measure_passes(engine.pair.slm, points, repeats), *measure_passes(engine.pair.llm, points, repeats)]
    return PairCostModel.fit(records, pair=pair, device=str(engine.pair.slm.device))


def fit_cost_model(engine: StitchEngine, tasks: Sequence[RolloutTask], max_new_tokens: int = 32,
                   thresholds: Sequence[float] = (0.02, 0.1, 0.3), pair: str = "") -> PairCostModel:
    """A cost model fitted from the passes of a few stitched runs (for pairs without a calibrated one).

    Several thresholds give both models decodes and catch-ups of varied sizes. Wall-clock
    measurements go into the fit only; rewards use the fitted model.
    """
    records = []
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    for task in tasks:
        for tau in thresholds:
            stream = engine.stream(task.prompt, settings, EntropyRouter(tau))
            for _ in stream:
                pass
            records.extend(stream.request.records())
    device = str(engine.pair.slm.device)
    return PairCostModel.fit(records, pair=pair, device=device)


# ----------------------------------------------------------------------------- imitation warm start


@dataclass(frozen=True)
class ForcedDecisions:
    """Router inputs at the consulted positions along the LLM's own answers, and where the SLM errs."""

    features: np.ndarray
    """[N, d + 2] float32: what the engine would hand the router at each position."""
    slm_errs: np.ndarray
    """[N] float32: 1 where the SLM's greedy token differs from the LLM's."""
    task: np.ndarray
    """[N] int: index of the task each position comes from."""


@torch.inference_mode()
def forced_decisions(engine: StitchEngine, tasks: Sequence[RolloutTask], config: RouterConfig,
                     max_new_tokens: int, progress: bool = False) -> ForcedDecisions:
    """Router inputs along the LLM's own greedy answer to each task, and whether the SLM would err there.

    Teacher forcing: one SLM forward over prompt + the LLM's answer. At every answer position where
    the SLM's normalised entropy is above ``config.threshold`` (where the router is consulted), the
    features are those the engine would give the router there, labelled 1 when the SLM's greedy
    token differs from the LLM's.
    """
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    features, labels, owners = [], [], []
    for index, task in enumerate(tqdm(tasks, desc="warm start: LLM answers", disable=not progress)):
        prompt = engine.encode(task.prompt)
        answer = list(engine.decode_alone("llm", prompt, settings).token_ids)
        logits, hidden = engine.pair.slm.answer_logits(prompt, answer, want_hidden=True)  # [R, V], [R, d]
        assert hidden is not None
        for j, token in enumerate(answer):
            entropy = normalised_entropy(logits[j])
            if entropy <= config.threshold:
                continue
            proposed = int(logits[j].argmax())
            state = RouterState(entropy, len(prompt) + j, proposed, hidden[j])
            features.append(router_features(state, config))
            labels.append(float(proposed != token))
            owners.append(index)
    stacked = np.stack(features) if features else np.zeros((0, config.n_features), np.float32)
    return ForcedDecisions(stacked, np.asarray(labels, np.float32), np.asarray(owners, np.int64))


@dataclass(frozen=True)
class WarmStart:
    """How the imitation fit went: losses per epoch on the training and the held-out tasks' positions."""

    train_losses: list[float]
    validation_losses: list[float]
    best_epoch: int
    """The epoch whose weights were kept (lowest held-out loss); -1 without held-out tasks."""
    validation_tasks: list[int] = field(default_factory=list)
    """Indices of the tasks whose positions were held out."""


def imitation_warm_start(net: RouterNet, decisions: ForcedDecisions, epochs: int = 200, learning_rate: float = 1e-2,
                         weight_decay: float = 1e-2, validation_share: float = 0.25, seed: int = 0) -> WarmStart:
    """Fit ``net`` to P(the SLM errs | features) by logistic regression (full batch, AdamW): the start
    that DAPO then refines, a router that calls the LLM where the SLM would write another token.

    The positions of a seeded ``validation_share`` of the tasks are held out, and the weights of the
    epoch with the lowest held-out loss are kept (the network can memorise a few thousand positions).
    """
    tasks = np.unique(decisions.task)
    held = np.random.default_rng(seed).permutation(tasks)[: int(len(tasks) * validation_share)]
    is_held = np.isin(decisions.task, held)
    x, y = torch.from_numpy(decisions.features), torch.from_numpy(decisions.slm_errs)
    train, valid = torch.from_numpy(~is_held), torch.from_numpy(is_held)
    if not train.any():
        return WarmStart([], [], -1, sorted(held.tolist()))
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=weight_decay)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    train_losses: list[float] = []
    validation_losses: list[float] = []
    best = (math.inf, -1, copy.deepcopy(net.state_dict()))
    for epoch in range(epochs):
        loss = bce(net(x[train]), y[train])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        train_losses.append(float(loss.detach()))
        if valid.any():
            with torch.no_grad():
                validation_losses.append(float(bce(net(x[valid]), y[valid])))
            if validation_losses[-1] < best[0]:
                best = (validation_losses[-1], epoch, copy.deepcopy(net.state_dict()))
    if valid.any():
        net.load_state_dict(best[2])
    return WarmStart(train_losses, validation_losses, best[1], sorted(held.tolist()))


# ----------------------------------------------------------------------------- the trainer


@dataclass
class StepLog:
    """One line of the JSONL log."""

    step: int
    reward: float
    accuracy: float
    llm_share: float
    """Mean share of output tokens the LLM wrote."""
    llm_decision_rate: float
    """Share of consulted positions where the sampled decision was the LLM."""
    latency: float
    """Mean L_hat (predicted latency / reference)."""
    decisions: int
    groups_used: int
    groups_skipped: int
    loss: float
    seconds: float
    lam: float = 0.0
    tasks: list[str] = field(default_factory=list)


class RouterTrainer:
    """DAPO training of one router on one engine; state lives in ``work_dir`` (resumable)."""

    def __init__(self, engine: StitchEngine, tasks: Sequence[RolloutTask], cost: PairCostModel,
                 settings: TrainSettings, work_dir: Path, pair_name: str = "",
                 log: Callable[[str], None] | None = None, progress: bool = False) -> None:
        if not tasks:
            raise ValueError("training needs at least one task")
        self.engine, self.tasks, self.cost, self.settings = engine, list(tasks), cost, settings
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log = log or (lambda line: None)
        hidden_size = int(engine.pair.slm.model.config.get_text_config(decoder=True).hidden_size)
        self.config = RouterConfig(hidden_size=hidden_size, width=settings.width, threshold=settings.threshold,
                                   pair=pair_name)
        torch.manual_seed(settings.seed)
        self.net = RouterNet(self.config, seed=settings.seed, initial_probability=settings.initial_probability,
                             initial_threshold=settings.initial_threshold, initial_sharpness=settings.initial_sharpness)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=settings.learning_rate)
        self.step = 0
        self._references: dict[str, float] = self._read_references()
        if not self._resume() and settings.warm_start_epochs:
            self._warm_start(progress)

    # -- state on disk

    @property
    def checkpoint_path(self) -> Path:
        return self.work_dir / "checkpoint.pt"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "log.jsonl"

    def _resume(self) -> bool:
        if not self.checkpoint_path.is_file():
            return False
        state = torch.load(self.checkpoint_path, weights_only=True)
        if state["settings"] != json.dumps(asdict(self.settings), sort_keys=True):
            self.log(f"note: {self.checkpoint_path} was written with other settings; continuing with these")
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.log(f"resumed at step {self.step} from {self.checkpoint_path}")
        return True

    def _warm_start(self, progress: bool) -> None:
        decisions = forced_decisions(self.engine, self.tasks, self.config, self.settings.max_new_tokens, progress)
        fit = imitation_warm_start(self.net, decisions, self.settings.warm_start_epochs, seed=self.settings.seed)
        if fit.validation_losses:
            self.log(f"warm start: {len(decisions.slm_errs)} consulted positions along the LLM's answers, SLM "
                     f"wrong at {decisions.slm_errs.mean():.1%}; held-out imitation loss "
                     f"{fit.validation_losses[0]:.3f} -> {fit.validation_losses[fit.best_epoch]:.3f} "
                     f"(epoch {fit.best_epoch + 1} kept)")
        self.save_checkpoint()  # step 0: a rerun resumes here instead of fitting again

    def save_checkpoint(self) -> None:
        partial = self.checkpoint_path.with_suffix(".partial")
        torch.save({"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                    "settings": json.dumps(asdict(self.settings), sort_keys=True)}, partial)
        partial.replace(self.checkpoint_path)

    def _read_references(self) -> dict[str, float]:
        path = self.work_dir / "references.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _reference(self, task: RolloutTask) -> float | None:
        if self.settings.reference == "same_length":
            return None
        if self.settings.reference == "budget":
            return self.cost.alone_seconds("llm", len(self.engine.encode(task.prompt)), self.settings.max_new_tokens)
        if task.id not in self._references:
            self._references[task.id] = reference_seconds(self.engine, task, self.cost, self.settings)
            (self.work_dir / "references.json").write_text(json.dumps(self._references, indent=1))
        return self._references[task.id]

    # -- one step

    def batch_tasks(self, step: int) -> list[RolloutTask]:
        """The tasks of ``step``: consecutive slices of a per-epoch permutation (depends on seed and step only)."""
        n, size = len(self.tasks), min(self.settings.batch_size, len(self.tasks))
        per_epoch = max(n // size, 1)
        epoch, slot = divmod(step, per_epoch)
        order = np.random.default_rng([self.settings.seed, epoch]).permutation(n)
        return [self.tasks[int(i)] for i in order[slot * size:(slot + 1) * size]]

    def router(self) -> LearnedRouter:
        """The current policy as a deterministic router."""
        training = {**asdict(self.settings), "trained_steps": self.step}
        return LearnedRouter(replace(self.config, training=training), self.net.weights())

    def rollouts(self, step: int) -> list[list[Rollout]]:
        """G rollouts for each task of ``step``, decisions sampled from the current (old) policy."""
        weights = self.net.weights()
        groups = []
        for t, task in enumerate(self.batch_tasks(step)):
            reference = self._reference(task)
            group = []
            for g in range(self.settings.group_size):
                seed = int(np.random.default_rng([self.settings.seed, step, t, g]).integers(2**31))
                sampler = SamplingRouter(self.config, weights, seed)
                group.append(run_rollout(self.engine, task, sampler, self.cost, self.settings, reference, seed))
            groups.append(group)
        return groups

    def update(self, groups: Sequence[Sequence[Rollout]]) -> tuple[float, int, int, int]:
        """DAPO gradient steps on one batch; returns (last loss, decisions used, groups used, groups skipped)."""
        features, actions, old, advantages = [], [], [], []
        used = skipped = 0
        for group in groups:
            adv = group_advantages([r.reward(self.settings.lam) for r in group])
            if adv is None or not any(r.decisions for r in group):
                skipped += 1
                continue
            used += 1
            for rollout, a in zip(group, adv):
                for decision in rollout.decisions:
                    features.append(decision.features)
                    actions.append(decision.action)
                    old.append(decision.logprob)
                    advantages.append(a)
        if not features:
            return 0.0, 0, used, skipped
        x = torch.from_numpy(np.stack(features))  # [N, d+2]
        a = torch.tensor(actions, dtype=torch.float32)  # [N]
        old_lp = torch.tensor(old, dtype=torch.float32)  # [N]
        adv_t = torch.tensor(advantages, dtype=torch.float32)  # [N]
        loss = torch.zeros(())
        for _ in range(self.settings.updates_per_step):
            loss = dapo_loss(action_logprobs(self.net, x, a), old_lp, adv_t, self.settings.eps_low,
                             self.settings.eps_high)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        return float(loss.detach()), len(features), used, skipped

    def train_step(self) -> StepLog:
        start = time.perf_counter()
        step = self.step
        groups = self.rollouts(step)
        loss, n_decisions, used, skipped = self.update(groups)
        flat = [r for group in groups for r in group]
        decisions = [d for r in flat for d in r.decisions]
        self.step += 1
        return StepLog(
            step=step,
            reward=float(np.mean([r.reward(self.settings.lam) for r in flat])),
            accuracy=float(np.mean([r.correct for r in flat])),
            llm_share=float(np.mean([r.llm_share for r in flat])),
            llm_decision_rate=float(np.mean([d.action for d in decisions])) if decisions else 0.0,
            latency=float(np.mean([r.latency for r in flat])),
            decisions=n_decisions,
            groups_used=used,
            groups_skipped=skipped,
            loss=loss,
            seconds=time.perf_counter() - start,
            lam=self.settings.lam,
            tasks=[group[0].task_id for group in groups],
        )

    def train(self, progress: bool = True, out: Path | None = None) -> LearnedRouter:
        """Run the remaining steps (logging each, checkpointing every few), and return the final router.

        With ``out``, the current router is also saved there at every checkpoint (usable if stopped early).
        """
        remaining = range(self.step, self.settings.steps)
        bar = tqdm(remaining, desc=f"train-router lambda={self.settings.lam}", disable=not progress,
                   initial=self.step, total=self.settings.steps)
        for _ in bar:
            entry = self.train_step()
            with self.log_path.open("a") as log_file:
                log_file.write(json.dumps(asdict(entry)) + "\n")
            bar.set_postfix(reward=f"{entry.reward:.3f}", acc=f"{entry.accuracy:.2f}",
                            llm=f"{entry.llm_share:.2f}", used=entry.groups_used)
            if self.step % self.settings.checkpoint_every == 0 or self.step == self.settings.steps:
                self.save_checkpoint()
                if out is not None:
                    self.router().save(out)
        return self.router()


def train_router(engine: StitchEngine, tasks: Sequence[RolloutTask], cost: PairCostModel, out: Path,
                 settings: TrainSettings, work_dir: Path | None = None, pair_name: str = "",
                 progress: bool = True, log: Callable[[str], None] | None = None) -> LearnedRouter:
    """Train a router with DAPO and save it to ``out`` (``router.json`` + ``router.safetensors``)."""
    trainer = RouterTrainer(engine, tasks, cost, settings, work_dir or Path(out) / "work", pair_name, log, progress)
    router = trainer.train(progress, out)
    router.save(out)
    return router


def read_log(path: Path) -> list[dict[str, object]]:
    """The JSONL training log as a list of dicts (one per step)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def mean_llm_probability(router: LearnedRouter, features: np.ndarray) -> float:
    """Mean P(LLM) of ``router`` over stacked features [N, d+2] (a smooth measure of its LLM share)."""
    from ..decoding.learned_router import _logit

    logits = _logit(router.weights, features)
    return float(np.mean(1 / (1 + np.exp(-logits)))) if len(features) else math.nan
