"""A thread-safe ledger of stitched requests: tokens and seconds per model, switches, speedup, cost.

Framework-free (no LangChain or LlamaIndex import): the adapters' callback handlers feed it the
per-request stats dicts the engine produces (``StitchStats.to_dict()``) and read totals back.

Costs come from per-model prices the user sets (``ModelPrice``): a price per 1,000 tokens the model
*wrote* (kept output tokens; discarded SLM drafts and prompt reading are not billed per token) and
a price per second the model *ran* (decode plus catch-up/prefill seconds, which does cover the
discarded drafts and the prompt). Either may be 0.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rstitch_engine import InvalidSettingError

ROLES = ("slm", "llm")
"""The two models of a pair, as the stats dicts name them."""

REQUIRED_STATS_KEYS = (
    "prompt_tokens",
    "output_tokens",
    "slm_tokens",
    "llm_tokens",
    "discarded_slm_tokens",
    "switches_to_llm",
    "switches_to_slm",
    "slm_catchup_tokens",
    "llm_catchup_tokens",
    "slm_catchup_seconds",
    "llm_catchup_seconds",
    "slm_decode_seconds",
    "llm_decode_seconds",
    "wall_seconds",
    "busy_seconds",
    "llm_alone_seconds",
)
"""Keys of ``StitchStats.to_dict()`` that ``StitchLedger.record`` reads."""


@dataclass(frozen=True)
class ModelPrice:
    """What one model costs; both parts are added."""

    per_1k_tokens: float = 0.0
    """Price per 1,000 output tokens the model wrote."""
    per_second: float = 0.0
    """Price per second the model ran (decode and catch-up forward passes)."""

    def __post_init__(self) -> None:
        for name in ("per_1k_tokens", "per_second"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidSettingError(f"ModelPrice.{name} must be a finite number >= 0, got {value!r}")

    def cost(self, tokens: int, seconds: float) -> float:
        """Cost of writing ``tokens`` tokens in ``seconds`` seconds of model time."""
        return self.per_1k_tokens * tokens / 1000 + self.per_second * seconds


@dataclass(frozen=True)
class ModelTotals:
    """One model's work summed over the recorded requests."""

    tokens: int = 0
    """Kept output tokens it wrote."""
    catchup_tokens: int = 0
    """Tokens it read in catch-up passes (prompt prefill and the other model's tokens)."""
    seconds: float = 0.0
    """Time in its forward passes (decode + catch-up)."""
    cost: float = 0.0
    """tokens and seconds priced with its ModelPrice."""


@dataclass(frozen=True)
class LedgerTotals:
    """Everything recorded so far: a consistent snapshot."""

    requests: int = 0
    """Requests recorded."""
    prompt_tokens: int = 0
    """Prompt tokens over all requests."""
    output_tokens: int = 0
    """Kept output tokens over all requests (slm.tokens + llm.tokens)."""
    slm: ModelTotals = field(default_factory=ModelTotals)
    """The small model's totals."""
    llm: ModelTotals = field(default_factory=ModelTotals)
    """The large model's totals."""
    discarded_slm_tokens: int = 0
    """SLM tokens thrown away because the SLM was unsure."""
    switches_to_llm: int = 0
    """Hand-overs SLM -> LLM."""
    switches_to_slm: int = 0
    """Hand-backs LLM -> SLM."""
    wall_seconds: float = 0.0
    """Wall time of all requests."""
    timed_requests: int = 0
    """Requests whose LLM-alone time is known (measured or estimated)."""
    busy_seconds: float = 0.0
    """Decoding time of all requests (wall time minus waiting for other requests or consumers)."""
    timed_busy_seconds: float = 0.0
    """Decoding time of those requests."""
    llm_alone_seconds: float = 0.0
    """Time the LLM alone would have taken for those requests."""
    llm_alone_cost: float = 0.0
    """What those requests would have cost with the LLM alone (same output tokens, LLM-alone time)."""
    timed_cost: float = 0.0
    """What those requests cost stitched."""

    @property
    def cost(self) -> float:
        """Total cost of all requests (both models)."""
        return self.slm.cost + self.llm.cost

    @property
    def speedup(self) -> float | None:
        """Cumulative speedup: LLM-alone time over stitched busy time, on the requests where it is known."""
        if self.timed_requests == 0 or self.timed_busy_seconds <= 0:
            return None
        return self.llm_alone_seconds / self.timed_busy_seconds

    @property
    def savings(self) -> float | None:
        """LLM-alone cost minus stitched cost, on the requests where the LLM-alone time is known."""
        return self.llm_alone_cost - self.timed_cost if self.timed_requests else None

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready view, with the derived cost, speedup and savings."""
        return {**asdict(self), "cost": self.cost, "speedup": self.speedup, "savings": self.savings}


class StitchLedger:
    """Accumulates per-request stitch stats; safe to share between threads.

    ``prices`` maps "slm"/"llm" to a ModelPrice (missing roles cost nothing).
    """

    def __init__(self, prices: Mapping[str, ModelPrice] | None = None) -> None:
        prices = dict(prices or {})
        unknown = set(prices) - set(ROLES)
        if unknown:
            raise InvalidSettingError(f"prices are keyed by 'slm' and 'llm', got {sorted(unknown)}")
        bad = {role: price for role, price in prices.items() if not isinstance(price, ModelPrice)}
        if bad:
            raise InvalidSettingError(f"prices must be ModelPrice objects, got {bad!r}")
        self.prices: dict[str, ModelPrice] = {role: prices.get(role, ModelPrice()) for role in ROLES}
        self._lock = threading.Lock()
        self._totals = LedgerTotals()

    def record(self, stats: Mapping[str, Any]) -> None:
        """Add one request's stats dict (``StitchStats.to_dict()``). Invalid input raises and records nothing."""
        request = _request_totals(stats, self.prices)
        with self._lock:
            self._totals = _add(self._totals, request)

    @property
    def totals(self) -> LedgerTotals:
        """A snapshot of the totals so far."""
        with self._lock:
            return self._totals

    def reset(self) -> LedgerTotals:
        """Start again from zero; returns the totals up to now."""
        with self._lock:
            previous, self._totals = self._totals, LedgerTotals()
            return previous


def _request_totals(stats: Mapping[str, Any], prices: Mapping[str, ModelPrice]) -> LedgerTotals:
    """One request as totals, after checking every field it needs."""
    if not isinstance(stats, Mapping):
        raise InvalidSettingError(f"expected a stitch stats dict (StitchStats.to_dict()), got {type(stats).__name__}")
    missing = [key for key in REQUIRED_STATS_KEYS if key not in stats]
    if missing:
        raise InvalidSettingError(f"stitch stats dict lacks {missing}; pass StitchStats.to_dict()")
    for key in REQUIRED_STATS_KEYS:
        value = stats[key]
        if key == "llm_alone_seconds" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InvalidSettingError(f"stitch stats {key!r} must be a finite number >= 0, got {value!r}")
    models = {}
    for role in ROLES:
        seconds = stats[f"{role}_decode_seconds"] + stats[f"{role}_catchup_seconds"]
        tokens = int(stats[f"{role}_tokens"])
        models[role] = ModelTotals(tokens, int(stats[f"{role}_catchup_tokens"]), seconds, prices[role].cost(tokens, seconds))
    alone = stats["llm_alone_seconds"]
    timed = alone is not None
    cost = models["slm"].cost + models["llm"].cost
    return LedgerTotals(
        requests=1,
        prompt_tokens=int(stats["prompt_tokens"]),
        output_tokens=int(stats["output_tokens"]),
        slm=models["slm"],
        llm=models["llm"],
        discarded_slm_tokens=int(stats["discarded_slm_tokens"]),
        switches_to_llm=int(stats["switches_to_llm"]),
        switches_to_slm=int(stats["switches_to_slm"]),
        wall_seconds=float(stats["wall_seconds"]),
        busy_seconds=float(stats["busy_seconds"]),
        timed_requests=int(timed),
        timed_busy_seconds=float(stats["busy_seconds"]) if timed else 0.0,
        llm_alone_seconds=float(alone) if timed else 0.0,
        llm_alone_cost=prices["llm"].cost(int(stats["output_tokens"]), alone) if timed else 0.0,
        timed_cost=cost if timed else 0.0,
    )


def _add(left: LedgerTotals, right: LedgerTotals) -> LedgerTotals:
    """Field-by-field sum of two totals."""

    def add_model(a: ModelTotals, b: ModelTotals) -> ModelTotals:
        return ModelTotals(a.tokens + b.tokens, a.catchup_tokens + b.catchup_tokens, a.seconds + b.seconds, a.cost + b.cost)

    summed = {name: getattr(left, name) + getattr(right, name) for name in LedgerTotals.__dataclass_fields__
              if name not in ROLES}
    return LedgerTotals(**summed, slm=add_model(left.slm, right.slm), llm=add_model(left.llm, right.llm))
