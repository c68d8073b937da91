"""Engines shared by every caller that asks for the same pair, loaded once and lazily."""

from __future__ import annotations

import threading
from typing import Any

from ..models.defaults import DEFAULT_LLM
from ..models.execution import CacheKind, ExecutionConfig
from ..models.loading import Backend
from .engine import DEFAULT_LLM_WAIT_STEPS, DEFAULT_MAX_BATCH_SIZE, StitchEngine, validate_batching

_engines: dict[tuple[Any, ...], StitchEngine] = {}
"""Keyed by (pair key, max_batch_size, llm_wait_steps); the pair key is (llm, slm, device, dtype, execution, backend)."""
_lock = threading.Lock()


def shared_engine(
    llm: str = DEFAULT_LLM, slm: str | None = None, device: str = "auto", dtype: str = "auto",
    kv_cache: CacheKind | None = None, compile: bool = False, cache_tokens: int | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, llm_wait_steps: int = DEFAULT_LLM_WAIT_STEPS,
    backend: Backend = "transformers",
) -> StitchEngine:
    """The engine for this pair, loading it on first request (thread-safe; loads once).

    ``kv_cache``, ``compile``, ``cache_tokens``: how both models' passes run (``ExecutionConfig``);
    ``backend``: their inference library ('transformers' or 'llama.cpp', ``ModelSpec.backend``).
    ``max_batch_size``, ``llm_wait_steps``: how concurrent requests are batched (``StitchEngine``);
    engines that differ only in these share one loaded pair and take turns on it.
    The engine's own router and settings are defaults only: callers pass theirs per request
    (``engine.stream(prompt, settings, router)``), so instances with different thresholds share weights.
    """
    execution = ExecutionConfig(kv_cache=kv_cache, compile=compile, cache_tokens=cache_tokens)  # validated
    validate_batching(max_batch_size, llm_wait_steps)  # before any weights load
    pair_key = (llm, slm, device, dtype, execution, backend)
    key = (pair_key, max_batch_size, llm_wait_steps)
    with _lock:
        if key not in _engines:
            loaded = next((engine for (other, *_), engine in _engines.items() if other == pair_key), None)
            _engines[key] = (
                StitchEngine(loaded.pair, max_batch_size=max_batch_size, llm_wait_steps=llm_wait_steps)
                if loaded is not None else
                StitchEngine.from_pretrained(llm, slm, device=device, dtype=dtype, kv_cache=kv_cache, compile=compile,
                                             cache_tokens=cache_tokens, max_batch_size=max_batch_size,
                                             llm_wait_steps=llm_wait_steps, backend=backend))
        return _engines[key]
