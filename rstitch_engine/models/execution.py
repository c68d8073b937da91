"""How one model's forward passes run: its KV cache backend and, optionally, compiled steps.

Two cache backends (``ExecutionConfig.kv_cache``):

* ``"dynamic"`` (the default): transformers' ``DynamicCache``, grown by concatenation, one per
  request; passes are fed exactly their tokens; any architecture; batched passes share a step.
* ``"static"``: a preallocated transformers ``StaticCache`` per request, taken from the model's
  ``StaticCachePool`` and given back when the request ends, so a steady stream of requests
  allocates no cache memory (and a compiled step keeps its captured addresses). Its capacity is
  ``cache_tokens``, or, when that is None, the request's prompt + max_new_tokens rounded up to a
  power of two (at least ``MIN_STATIC_TOKENS``, at most the context window), so that few sizes exist.

Static passes are padded to a few lengths (``buckets``) so that a compiled step sees few shapes: a
pass over n tokens at positions c .. c+n-1 is fed as b >= n tokens (b the smallest bucket >= n;
passes longer than the largest bucket go in chunks of it), the pads at positions c+n .. c+b-1.
Pads change nothing a real token sees:

* a static layer writes keys/values at its fill count (``cumulative_length``); after the pass the
  count is set back to c + n, so the next pass overwrites the pads' entries before any query can read them;
* the causal mask lets a query at position p see keys at positions <= p only, and every one of
  those was written by this request's real tokens (a cache is filled in order from position 0);
* the logits are read at the last real token (``logits_to_keep`` is its index), the pads' never.

A pad never goes past the cache's capacity: a pass that would is fed unpadded instead. The pool
resets a cache (zeros, fill count 0) when it hands it out. Only full-attention models qualify (a
sliding-window layer would let pads push real keys out of the window).

Compiled steps (``compile=True``): the padded pass is one ``torch.compile``d function: with mode
'reduce-overhead' on CUDA, i.e. CUDA graphs, where a decode step's many small kernels are launched
as one graph. The decode shape [1, 1] gets a graph of its own; catch-up buckets share one
whose length is marked dynamic (so there are two compilations per model), and each bucket's CUDA
graph is recorded once, at warm-up (``StaticSteps.warm_up``). Outputs are copied out of the graph's buffers before the next
replay.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol, Sequence

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

from ..errors import InvalidSettingError, PromptTooLongError

CacheKind = Literal["dynamic", "static"]
DEFAULT_BUCKETS = (1, 4, 16, 64, 256)
"""Lengths a static pass is padded to: decodes are 1; catch-ups at most 4x their length."""
MIN_STATIC_TOKENS = 256
"""Smallest capacity of a static cache sized per request."""
COMPILED_CACHE_TOKENS = 4096
"""Capacity of every static cache of a compiled model without ``cache_tokens`` (at most its context
window): one cache shape, so the graphs recorded at warm-up serve every request."""
POOL_KEEP = 16
"""Free static caches a model keeps for reuse (more are dropped when given back)."""


@dataclass(frozen=True)
class ExecutionConfig:
    """How a model's passes run (see the module docstring). ``ExecutionConfig()`` is today's eager path."""

    kv_cache: CacheKind | None = None
    """KV cache backend, 'dynamic' or 'static'; None: 'static' when ``compile`` is on, else 'dynamic'."""
    cache_tokens: int | None = None
    """Capacity of every static cache; a request needing more (prompt + max_new_tokens) is refused.
    None: each request's cache is sized from its own prompt + max_new_tokens; compiled, it is
    ``COMPILED_CACHE_TOKENS`` (or the context window, if smaller)."""
    compile: bool = False
    """Compile the padded pass (``torch.compile``; CUDA graphs on CUDA). Needs the static cache."""
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    """Lengths static passes are padded to, ascending, starting at 1."""
    compile_backend: str = "inductor"
    """torch.compile backend; 'eager' traces the step with dynamo but runs it eagerly (for tests)."""

    def __post_init__(self) -> None:
        if self.kv_cache is None:
            object.__setattr__(self, "kv_cache", "static" if self.compile else "dynamic")
        object.__setattr__(self, "buckets", tuple(self.buckets))
        if self.kv_cache not in ("dynamic", "static"):
            raise InvalidSettingError(f"kv_cache must be 'dynamic' or 'static', got {self.kv_cache!r}")
        if not isinstance(self.compile, bool):
            raise InvalidSettingError(f"compile must be True or False, got {self.compile!r}")
        if self.compile and self.kv_cache != "static":
            raise InvalidSettingError("compile=True needs kv_cache='static' (a compiled step needs fixed cache shapes)")
        tokens = self.cache_tokens
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 2):
            raise InvalidSettingError(f"cache_tokens must be an integer >= 2 or None, got {tokens!r}")
        buckets = self.buckets
        if not buckets or buckets[0] != 1 or any(not isinstance(b, int) or b < 1 for b in buckets) \
                or list(buckets) != sorted(set(buckets)):
            raise InvalidSettingError(f"buckets must be distinct ascending integers starting at 1, got {buckets!r}")

    @property
    def static(self) -> bool:
        return self.kv_cache == "static"

    def capacity_for(self, needed_tokens: int, context_window: int | None) -> int:
        """Static cache capacity for a request of ``needed_tokens`` (prompt + max_new_tokens)."""
        fixed = self.cache_tokens
        if fixed is None and self.compile:
            fixed = min(COMPILED_CACHE_TOKENS, context_window or COMPILED_CACHE_TOKENS)
        if fixed is not None:
            if needed_tokens > fixed:
                raise PromptTooLongError(
                    f"prompt + max_new_tokens = {needed_tokens} tokens exceed the static cache of {fixed} tokens "
                    f"(cache_tokens); shorten the prompt, lower max_new_tokens or raise cache_tokens"
                )
            return fixed
        size = max(MIN_STATIC_TOKENS, 1 << max(needed_tokens - 1, 0).bit_length())
        return max(needed_tokens, min(size, context_window)) if context_window else size

    def padded_length(self, new_tokens: int, cached_tokens: int, capacity: int) -> int:
        """Tokens one static pass over ``new_tokens`` (<= the largest bucket) is fed, pads included."""
        bucket = next((b for b in self.buckets if b >= new_tokens), new_tokens)
        return bucket if cached_tokens + bucket <= capacity else new_tokens

    def chunks(self, new_tokens: int) -> list[int]:
        """Real tokens of each pass that feeds ``new_tokens``: chunks of the largest bucket, then the rest."""
        largest = self.buckets[-1]
        full, rest = divmod(new_tokens, largest)
        return [largest] * full + ([rest] if rest else [])


class RunnableModel(Protocol):
    """What the static path needs of a ``loaded.LoadedModel`` (named here without importing it)."""

    model: Any
    vocab_size: int
    name: str

    @property
    def device(self) -> torch.device: ...

    @property
    def context_window(self) -> int | None: ...

    @property
    def cache_keyword(self) -> str: ...


StepFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any, bool], tuple[torch.Tensor, Any]]


class StaticSteps:
    """A model's static-cache passes: the cache pool, bucket padding and the (compiled) step function."""

    def __init__(self, loaded: RunnableModel, config: ExecutionConfig) -> None:
        self.loaded = loaded
        self.config = config
        self.pool = StaticCachePool(loaded, config)
        eager = _step_function(loaded)
        self._step = _compiled(eager, loaded.device, config.compile_backend) if config.compile else eager
        self.warmed_up: list[int] = []
        """Pass lengths run by ``warm_up`` (their compiled graphs exist)."""

    def capacity_for(self, needed_tokens: int) -> int:
        return self.config.capacity_for(needed_tokens, self.loaded.context_window)

    def run(self, unseen: list[int], cache: StaticCache, start: int, want_hidden: bool
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed ``unseen`` at positions ``start ..`` into ``cache`` (which covers ``start`` tokens).

        Returns the float32 logits over the shared vocabulary at the last token ([V]) and, when
        asked, the last-layer hidden state there ([d]); the cache then covers start + len(unseen).
        """
        capacity = static_capacity(cache)
        if start + len(unseen) > capacity:
            raise PromptTooLongError(f"{start + len(unseen)} tokens do not fit this request's static cache of "
                                     f"{capacity} tokens")
        offset = 0
        for real in self.config.chunks(len(unseen)):
            logits, hidden = self._padded_pass(unseen[offset:offset + real], cache, start + offset, capacity,
                                               want_hidden)
            offset += real
        return logits, hidden

    def _padded_pass(self, tokens: list[int], cache: StaticCache, start: int, capacity: int, want_hidden: bool
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pass of ``len(tokens)`` real tokens padded to its bucket; the fill count ends at start + real."""
        device, real = self.loaded.device, len(tokens)
        width = self.config.padded_length(real, start, capacity)
        ids = torch.zeros((1, width), dtype=torch.long)  # [1, b]; pads are token 0, never read
        ids[0, :real] = torch.tensor(tokens)
        positions = torch.arange(start, start + width).unsqueeze(0)  # [1, b]
        last = torch.tensor([real - 1])  # [1]: the last real token's column
        ids, positions, last = ids.to(device), positions.to(device), last.to(device)
        if self.config.compile:
            if width > 1:  # one catch-up graph of dynamic length for every bucket (no per-bucket recompile)
                torch._dynamo.mark_dynamic(ids, 1)
                torch._dynamo.mark_dynamic(positions, 1)
            if device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
        logits, hidden = self._step(ids, positions, last, cache, want_hidden)
        if width > real:
            for layer in cache.layers:  # fill count back to start + real: the pads' entries are free again
                layer.cumulative_length.sub_(width - real)  # in place (a compiled step holds its address)
        if self.config.compile:  # a graph's output buffers are overwritten by its next replay
            logits = logits.clone()
            hidden = hidden.clone() if hidden is not None else None
        return logits[: self.loaded.vocab_size].float(), hidden

    def warm_up(self, capacity: int, want_hidden: Sequence[bool] = (False,), progress: Any = None) -> None:
        """Run every bucket (twice: compile, then record a CUDA graph) on a pooled cache of ``capacity``."""
        cache = self.pool.take(capacity)
        try:
            with torch.inference_mode():
                for hidden in want_hidden:
                    for bucket in self.config.buckets:
                        if bucket + 1 > capacity:
                            break
                        for _ in range(2):
                            cache.reset()
                            self.run([0] * bucket, cache, 0, hidden)  # a catch-up of this bucket ...
                            self.run([0], cache, bucket, hidden)  # ... and a decode after it
                        self.warmed_up.append(bucket)
                        if progress is not None:
                            progress.update(1)
        finally:
            self.pool.give_back(cache)


class StaticCachePool:
    """Preallocated static caches of one model, handed out by capacity and reused (see the module docstring)."""

    def __init__(self, loaded: RunnableModel, config: ExecutionConfig) -> None:
        self.loaded = loaded
        self.config = config
        self._free: list[StaticCache] = []
        self._lock = threading.Lock()
        self.allocated = 0
        """Caches created so far (a steady workload stops raising this)."""

    @property
    def free(self) -> int:
        with self._lock:
            return len(self._free)

    def take(self, capacity: int) -> StaticCache:
        """A reset cache of exactly ``capacity`` tokens: a free one when there is one, else a new one."""
        with self._lock:
            cache = next((c for c in self._free if static_capacity(c) == capacity), None)
            if cache is not None:
                self._free.remove(cache)
        if cache is None:
            return self._allocate(capacity)
        cache.reset()
        return cache

    def give_back(self, cache: StaticCache) -> None:
        with self._lock:
            if len(self._free) < POOL_KEEP and all(c is not cache for c in self._free):
                self._free.append(cache)

    @torch.inference_mode()
    def _allocate(self, capacity: int) -> StaticCache:
        """A new cache, its tensors made by one eager pass (never inside a compiled step), then reset."""
        model = self.loaded.model
        cache = StaticCache(config=model.config, max_cache_len=capacity)
        if not all(type(layer) is StaticLayer and hasattr(layer, "cumulative_length") for layer in cache.layers):
            raise InvalidSettingError(
                f"kv_cache='static' supports full-attention models with a transformers StaticLayer that tracks its "
                f"fill count; {self.loaded.name or type(model).__name__} has other layers "
                f"({sorted({type(layer).__name__ for layer in cache.layers})}): use kv_cache='dynamic'"
            )
        _step_function(self.loaded)(torch.zeros((1, 1), dtype=torch.long, device=self.loaded.device),
                                    torch.zeros((1, 1), dtype=torch.long, device=self.loaded.device),
                                    torch.zeros(1, dtype=torch.long, device=self.loaded.device), cache, False)
        cache.reset()
        with self._lock:
            self.allocated += 1
        return cache


def static_capacity(cache: StaticCache) -> int:
    """Tokens a static cache holds (read off its layers: the cache's own accessor changed between versions)."""
    return int(cache.layers[0].max_cache_len)


def _step_function(loaded: RunnableModel) -> StepFunction:
    """The padded pass: ids and positions [1, b], ``last`` [1] the column whose logits are kept."""
    model, keyword = loaded.model, loaded.cache_keyword

    def step(ids: torch.Tensor, positions: torch.Tensor, last: torch.Tensor, cache: Any, want_hidden: bool
             ) -> tuple[torch.Tensor, Any]:
        output = model(input_ids=ids, position_ids=positions, **{keyword: cache}, use_cache=True,
                       logits_to_keep=last, output_hidden_states=want_hidden)
        logits = output.logits[0, -1]  # [V_out]
        hidden = output.hidden_states[-1][0].index_select(0, last)[0] if want_hidden else None  # [d]
        return logits, hidden

    return step


def _compiled(step: StepFunction, device: torch.device, backend: str) -> StepFunction:
    """``step`` under torch.compile: CUDA graphs on CUDA (mode 'reduce-overhead'), plain code elsewhere."""
    dynamo_config = torch._dynamo.config
    # one graph per (shape class, want_hidden) and model: far fewer than the recompile limit, but the
    # default limit (8) counts every model's graphs of one Python function together
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 64))
    mode = "reduce-overhead" if device.type == "cuda" and backend == "inductor" else None
    return torch.compile(step, backend=backend, mode=mode, fullgraph=False)

