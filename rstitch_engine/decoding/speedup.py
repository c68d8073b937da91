"""Estimating what the LLM alone would have cost, from the LLM's own forward passes.

With a calibrated cost model of the pair on this kind of device (``models.cost_model.PairCostModel``,
shipped per pair and device in ``rstitch_engine/costs``), the estimate is the model's LLM-alone
time for this prompt and output length, scaled by how fast the LLM ran in this request: the
measured seconds of its passes over their predicted seconds (or of the passes in earlier requests
when it did not run; the unscaled prediction when it never ran). The model gives the shape (decode
cost growing with the context, catch-up cost far from linear in its size); the scale absorbs the
machine's current load.

Without a cost model, a forward pass over n new tokens is modelled as t(n) = a + b * n (fixed cost
per pass plus a cost per token; the dependence on cached tokens is ignored, which is accurate for
short contexts). The LLM alone would prefill the prompt once and then decode one token per pass:

    T_llm_alone(P prompt tokens, N output tokens) = t(P) + (N - 1) * t(1)

a and b are fitted by least squares on the LLM's passes of the request itself; when the LLM did not
run with a single new token in that request, on the passes the engine saw in earlier requests.
When the per-token slope b cannot be identified (every pass fed the same number of tokens) it is
taken as 0, which under-estimates the prefill and so under-states the speedup.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Iterable

from ..models.cost_model import PairCostModel
from ..models.loaded import ForwardRecord


@dataclass(frozen=True)
class PassCostFit:
    """t(n) = fixed_seconds + per_token_seconds * n, for one model."""

    fixed_seconds: float
    per_token_seconds: float

    def seconds(self, new_tokens: int) -> float:
        return self.fixed_seconds + self.per_token_seconds * new_tokens

    def generation_seconds(self, prompt_tokens: int, output_tokens: int) -> float:
        return self.seconds(prompt_tokens) + max(output_tokens - 1, 0) * self.seconds(1)

    @classmethod
    def fit(cls, passes: Iterable[tuple[int, float]]) -> "PassCostFit | None":
        """Fit from (new_tokens, seconds); None unless some pass fed exactly one token."""
        points = list(passes)
        if not any(n == 1 for n, _ in points):
            return None
        ns = [float(n) for n, _ in points]
        ts = [t for _, t in points]
        mean_n, mean_t = sum(ns) / len(ns), sum(ts) / len(ts)
        spread = sum((n - mean_n) ** 2 for n in ns)
        slope = sum((n - mean_n) * (t - mean_t) for n, t in zip(ns, ts)) / spread if spread else 0.0
        slope = max(slope, 0.0)
        return cls(fixed_seconds=max(mean_t - slope * mean_n, 0.0), per_token_seconds=slope)


class LlmCostHistory:
    """The LLM's recent passes across requests (thread-safe), the fallback for estimates."""

    def __init__(self, capacity: int = 512, model: PairCostModel | None = None) -> None:
        self.model = model
        """A calibrated cost model of the pair, when one is known: estimates then come from it."""
        self._passes: deque[ForwardRecord] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, records: Iterable[ForwardRecord]) -> None:
        with self._lock:
            self._passes.extend(r for r in records if r.role == "llm")

    def estimate(self, records: list[ForwardRecord], prompt_tokens: int, output_tokens: int) -> float | None:
        """LLM-alone seconds for this request, from its own LLM passes or, failing that, history."""
        own = [r for r in records if r.role == "llm"]
        if self.model is not None:
            return self._model_estimate(own, prompt_tokens, output_tokens)
        fit = PassCostFit.fit((r.new_tokens, r.seconds) for r in own)
        if fit is None:
            with self._lock:
                fit = PassCostFit.fit([(r.new_tokens, r.seconds) for r in self._passes])
        return None if fit is None else fit.generation_seconds(prompt_tokens, output_tokens)

    def _model_estimate(self, own: list[ForwardRecord], prompt_tokens: int, output_tokens: int) -> float:
        assert self.model is not None
        if not own:
            with self._lock:
                own = list(self._passes)
        predicted = self.model.predict(own)
        scale = sum(r.seconds for r in own) / predicted if own and predicted > 0 else 1.0
        return scale * self.model.alone_seconds("llm", prompt_tokens, output_tokens)
