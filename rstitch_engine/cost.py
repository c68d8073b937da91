"""Estimating what the LLM alone would have cost, from the LLM's own forward passes.

A forward pass over n new tokens is modelled as t(n) = a + b * n (fixed cost per pass plus a cost
per token; the dependence on cached tokens is ignored, which is accurate for short contexts). The
LLM alone would prefill the prompt once and then decode one token per pass:

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

from .slot import ForwardRecord


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

    def __init__(self, capacity: int = 512) -> None:
        self._passes: deque[tuple[int, float]] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, records: Iterable[ForwardRecord]) -> None:
        with self._lock:
            self._passes.extend((r.new_tokens, r.seconds) for r in records if r.role == "llm")

    def estimate(self, records: list[ForwardRecord], prompt_tokens: int, output_tokens: int) -> float | None:
        """LLM-alone seconds for this request, from its own LLM passes or, failing that, history."""
        own = [(r.new_tokens, r.seconds) for r in records if r.role == "llm"]
        fit = PassCostFit.fit(own)
        if fit is None:
            with self._lock:
                fit = PassCostFit.fit(list(self._passes))
        return None if fit is None else fit.generation_seconds(prompt_tokens, output_tokens)
