"""Engines shared by every caller that asks for the same pair, loaded once and lazily."""

from __future__ import annotations

import threading
from typing import Any

from ..models.defaults import DEFAULT_LLM
from ..models.execution import CacheKind, ExecutionConfig
from .engine import StitchEngine

_engines: dict[tuple[Any, ...], StitchEngine] = {}
_lock = threading.Lock()


def shared_engine(
    llm: str = DEFAULT_LLM, slm: str | None = None, device: str = "auto", dtype: str = "auto",
    kv_cache: CacheKind | None = None, compile: bool = False, cache_tokens: int | None = None,
) -> StitchEngine:
    """The engine for this pair, loading it on first request (thread-safe; loads once).

    ``kv_cache``, ``compile``, ``cache_tokens``: how both models' passes run (``ExecutionConfig``).
    The engine's own router and settings are defaults only: callers pass theirs per request
    (``engine.stream(prompt, settings, router)``), so instances with different thresholds share weights.
    """
    execution = ExecutionConfig(kv_cache=kv_cache, compile=compile, cache_tokens=cache_tokens)  # validated
    key = (llm, slm, device, dtype, execution)
    with _lock:
        if key not in _engines:
            _engines[key] = StitchEngine.from_pretrained(llm, slm, device=device, dtype=dtype, kv_cache=kv_cache,
                                                         compile=compile, cache_tokens=cache_tokens)
        return _engines[key]
