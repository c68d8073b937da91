"""Engines shared by every caller that asks for the same pair, loaded once and lazily."""

from __future__ import annotations

import threading

from ..models.defaults import DEFAULT_LLM
from .engine import StitchEngine

_engines: dict[tuple[str, str | None, str, str], StitchEngine] = {}
_lock = threading.Lock()


def shared_engine(
    llm: str = DEFAULT_LLM, slm: str | None = None, device: str = "auto", dtype: str = "auto"
) -> StitchEngine:
    """The engine for this pair, loading it on first request (thread-safe; loads once).

    The engine's own router and settings are defaults only: callers pass theirs per request
    (``engine.stream(prompt, settings, router)``), so instances with different thresholds share weights.
    """
    key = (llm, slm, device, dtype)
    with _lock:
        if key not in _engines:
            _engines[key] = StitchEngine.from_pretrained(llm, slm, device=device, dtype=dtype)
        return _engines[key]
