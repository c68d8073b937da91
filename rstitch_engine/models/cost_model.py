"""A latency model of a pair on a device: how long each forward pass takes.

A pass of one model that feeds ``n`` new tokens on top of ``c`` cached ones costs t(n, c). Two
forms, fitted per model from measured passes:

* Grid knots (used whenever the measurements support them): for each measured ``n`` with at least
  ``MIN_KNOT_SAMPLES`` passes over at least two cache sizes, t(n, c) = alpha_n + beta_n * c (for a
  fixed number of new tokens, attention and cache work grow linearly with the context). Between
  knots alpha and beta are interpolated linearly in n; past the last knot, the last knot's cost
  grows as the formula below does. Decode is the knot n = 1. This follows the measured shape of t in n, which
  is far from linear at small n: one token and eight cost nearly the same where reading the
  weights dominates (CPU and GPU alike), then cost grows with n once compute dominates.
* The smooth formula, the fallback outside the knots' range (or with no knots):

      t(n, c) = fixed + per_token * n + per_token_context * n * (c + n / 2)

  (a fixed launch/framework cost, the matmuls per token, and attention whose work grows with the
  context each new token attends to), fitted by non-negative least squares on all passes.

``rstitch_engine.measure.cost_calibration.measure_passes`` times passes of a loaded model over a grid
of (new, cached) sizes exactly as the engine runs them; ``benchmarks/cost_model.py`` calibrates a pair, checks held-out error and saves
the model per pair, device and dtype (``rstitch_engine/costs/<pair>-<device>-<dtype>.json``, read back with
``shipped_cost_model``).

Users: the learned router's reward (predicted latency of a rollout, no wall clock), the speedup
estimate (the LLM alone on the same request) and the benchmark harness (ideal time of a trace).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .loaded import ForwardRecord, ModelRole

MIN_KNOT_SAMPLES = 3
"""Passes of one size ``n`` (over >= 2 cache sizes) needed before ``n`` becomes a knot."""
COSTS_DIR = Path(__file__).parents[1] / "costs"
"""Cost models shipped with the package: ``<pair>-<device>-<dtype>.json``."""


@dataclass(frozen=True)
class Knot:
    """t(n, c) = seconds + per_cached_token * c, for one measured number of new tokens n."""

    new_tokens: int
    seconds: float
    """At an empty cache."""
    per_cached_token: float


@dataclass(frozen=True)
class PassCost:
    """t(n, c) for one model, in seconds: grid knots where fitted, else the smooth formula."""

    fixed: float
    per_token: float
    per_token_context: float
    knots: tuple[Knot, ...] = ()
    """Sorted by ``new_tokens``; empty when the passes did not support any (formula only)."""

    def __post_init__(self) -> None:
        knots = tuple(k if isinstance(k, Knot) else Knot(**k) for k in self.knots)  # from JSON too
        object.__setattr__(self, "knots", tuple(sorted(knots, key=lambda k: k.new_tokens)))

    def seconds(self, new_tokens: int, cached_tokens: int) -> float:
        knots = self.knots
        if not knots or new_tokens < knots[0].new_tokens:
            return self.formula_seconds(new_tokens, cached_tokens)
        last = knots[-1]
        if new_tokens >= last.new_tokens:  # at or past the last knot: its cost plus the formula's increase
            increase = self.formula_seconds(new_tokens, cached_tokens) - self.formula_seconds(last.new_tokens, cached_tokens)
            return last.seconds + last.per_cached_token * cached_tokens + max(increase, 0.0)
        alpha, beta = self._interpolate(new_tokens)
        return alpha + beta * cached_tokens

    def formula_seconds(self, new_tokens: int, cached_tokens: int) -> float:
        """The smooth three-coefficient form alone."""
        return self.fixed + self.per_token * new_tokens + self.per_token_context * new_tokens * (
            cached_tokens + new_tokens / 2
        )

    def _interpolate(self, n: int) -> tuple[float, float]:
        """(alpha_n, beta_n), linear in n between the two knots around n (first <= n < last)."""
        knots = self.knots
        i = int(np.searchsorted([k.new_tokens for k in knots], n, side="right"))  # knots[i-1].n <= n < knots[i].n
        lo, hi = knots[i - 1], knots[i]
        w = (n - lo.new_tokens) / (hi.new_tokens - lo.new_tokens)
        alpha = lo.seconds + w * (hi.seconds - lo.seconds)
        beta = lo.per_cached_token + w * (hi.per_cached_token - lo.per_cached_token)
        return alpha, beta

    @classmethod
    def fit(cls, samples: Iterable[tuple[int, int, float]]) -> "PassCost":
        """Fit from (new_tokens, cached_tokens, seconds): the formula on all passes (coefficients
        kept >= 0), and a knot for each n measured often enough over several cache sizes."""
        points = list(samples)
        if len(points) < 3:
            raise ValueError(f"a pass-cost fit needs at least 3 passes, got {len(points)}")
        rows = np.array([(1.0, n, n * (c + n / 2)) for n, c, _ in points], dtype=np.float64)
        seconds = np.array([t for _, _, t in points], dtype=np.float64)
        coefficients = _nonnegative_least_squares(rows, seconds)
        return cls(*(float(x) for x in coefficients), knots=_fit_knots(points))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "PassCost":
        return cls(float(raw["fixed"]), float(raw["per_token"]), float(raw["per_token_context"]),
                   tuple(Knot(**k) for k in raw.get("knots", ())))


def _fit_knots(points: Sequence[tuple[int, int, float]]) -> tuple[Knot, ...]:
    by_n: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for n, c, t in points:
        by_n[n].append((c, t))
    knots = []
    for n, group in sorted(by_n.items()):
        if len(group) < MIN_KNOT_SAMPLES or len({c for c, _ in group}) < 2:
            continue
        a = np.array([(1.0, c) for c, _ in group], dtype=np.float64)
        alpha, beta = _nonnegative_least_squares(a, np.array([t for _, t in group], dtype=np.float64))
        knots.append(Knot(n, float(alpha), float(beta)))
    return tuple(knots)


@dataclass(frozen=True)
class PairCostModel:
    """Pass costs of both models of a pair on one device."""

    slm: PassCost
    llm: PassCost
    pair: str = ""
    device: str = ""

    def pass_seconds(self, role: ModelRole, new_tokens: int, cached_tokens: int) -> float:
        return (self.slm if role == "slm" else self.llm).seconds(new_tokens, cached_tokens)

    def predict(self, records: Iterable[ForwardRecord]) -> float:
        """Predicted seconds of a sequence of passes (e.g. one stitched request)."""
        return sum(self.pass_seconds(r.role, r.new_tokens, r.cached_tokens) for r in records)

    def alone_seconds(self, role: ModelRole, prompt_tokens: int, output_tokens: int) -> float:
        """One model decoding alone: a prefill of the prompt, then one pass per further token."""
        total = self.pass_seconds(role, prompt_tokens, 0)
        for k in range(1, output_tokens):
            total += self.pass_seconds(role, 1, prompt_tokens + k - 1)
        return total

    @classmethod
    def fit(cls, records: Sequence[ForwardRecord], pair: str = "", device: str = "") -> "PairCostModel":
        """Fit both models from measured passes (each model needs passes of several sizes)."""
        by_role = {role: [(r.new_tokens, r.cached_tokens, r.seconds) for r in records if r.role == role]
                   for role in ("slm", "llm")}
        return cls(slm=PassCost.fit(by_role["slm"]), llm=PassCost.fit(by_role["llm"]), pair=pair, device=device)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> "PairCostModel":
        return cls(slm=PassCost.from_dict(raw["slm"]), llm=PassCost.from_dict(raw["llm"]),  # type: ignore[arg-type]
                   pair=str(raw.get("pair", "")), device=str(raw.get("device", "")))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "PairCostModel":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _nonnegative_least_squares(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin ||a x - b|| with x >= 0, by dropping negative coefficients until none is left (few unknowns)."""
    active = list(range(a.shape[1]))
    while True:
        solution = np.zeros(a.shape[1])
        solution[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
        negative = [i for i in active if solution[i] < 0]
        if not negative:
            return solution
        active.remove(min(negative, key=lambda i: solution[i]))


# ---------------------------------------------------------------------------- names and files


def slug(text: str) -> str:
    """A file-name-safe lowercase name: 'SmolLM2-135M[:8 layers]' -> 'smollm2-135m-8-layers'."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")


def pair_name(slm_name: str, llm_name: str) -> str:
    """The name a pair's cost model is saved under: '<slm>__<llm>'."""
    return f"{slug(slm_name)}__{slug(llm_name)}"


def device_name(device: torch.device | str, dtype: torch.dtype) -> str:
    """What a cost model is calibrated for: the device kind and the weights' dtype, e.g. 'cpu-float32',
    'cpu-bfloat16' or 'cuda-nvidia-h100-80gb-hbm3-bfloat16' (costs differ per GPU model and dtype)."""
    device = torch.device(device)
    kind = "cuda-" + slug(torch.cuda.get_device_name(device)) if device.type == "cuda" else device.type
    return f"{kind}-{str(dtype).removeprefix('torch.')}"


def cost_model_path(pair: str, device: str, folder: Path = COSTS_DIR) -> Path:
    return folder / f"{pair}-{device}.json"


def shipped_cost_model(slm_name: str, llm_name: str, device: torch.device | str,
                       dtype: torch.dtype) -> PairCostModel | None:
    """The packaged cost model of this pair on this kind of device in this dtype, if one was calibrated."""
    path = cost_model_path(pair_name(slm_name, llm_name), device_name(device, dtype))
    return PairCostModel.load(path) if path.is_file() else None
