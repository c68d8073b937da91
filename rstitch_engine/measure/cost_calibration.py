"""Calibrating a pair's cost model: timing forward passes exactly as the engine runs them.

``measure_passes`` times passes of loaded models over a grid of (new, cached) sizes, in shuffled
sweeps so that drifting machine load spreads over every point; ``PairCostModel.fit`` turns the
records into a model, and ``relative_errors`` checks one against held-out passes.
"""

from __future__ import annotations

import copy
import random
import time
from collections import defaultdict
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from transformers import DynamicCache

from rstitch_engine.models.cost_model import PairCostModel
from rstitch_engine.models.loaded import ForwardRecord, LoadedModel


@torch.inference_mode()
def measure_passes(
    loaded: LoadedModel | Sequence[LoadedModel],
    points: Sequence[tuple[int, int]],
    repeats: int = 3,
    seed: int = 0,
    on_pass: Callable[[], None] | None = None,
) -> list[ForwardRecord]:
    """Time one forward pass of ``n`` new tokens on ``c`` cached ones for each (n, c) in ``points``.

    The pass is the engine's (``LoadedModel.forward``: positions, logits_to_keep=1, logits sliced to
    the shared vocabulary, CUDA synchronised). Given several models, each is timed at every point.
    Each of the ``repeats`` sweeps times every (model, n, c) once, in a new random order, so a slow
    spell of a shared machine lands on one sample of many points rather than on every sample of a
    few (which is what biased a fit measured cache size by cache size). A cache of ``c`` tokens is
    prefilled once per model and ``c`` (untimed) and copied for each timed pass. Returns one record
    per model and point, models in the order given, with the median over the sweeps; its kind is
    'decode' for n = 1, else 'catchup'. Token ids are random. ``on_pass`` is called after each pass.
    """
    models = [loaded] if isinstance(loaded, LoadedModel) else list(loaded)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    longest = max(c + n for n, c in points)
    bases: dict[tuple[int, int], DynamicCache] = {}
    ids: list[torch.Tensor] = []  # per model: [1, longest]
    for m, model in enumerate(models):
        ids.append(torch.randint(0, model.vocab_size, (1, longest), generator=generator))
        for c in sorted({c for _, c in points}):
            bases[(m, c)] = _prefilled_cache(model, ids[m][:, :c])
    jobs = [(m, n, c) for m in range(len(models)) for n, c in dict.fromkeys(points)]
    times: dict[tuple[int, int, int], list[float]] = defaultdict(list)
    for _ in range(repeats):
        rng.shuffle(jobs)
        for m, n, c in jobs:
            times[(m, n, c)].append(_timed_pass(models[m], copy.deepcopy(bases[(m, c)]), ids[m][0, c:c + n].tolist(), c))
            if on_pass is not None:
                on_pass()
    return [ForwardRecord(model.role, "decode" if n == 1 else "catchup", n, c, float(np.median(times[(m, n, c)])))
            for m, model in enumerate(models) for n, c in points]


def _prefilled_cache(loaded: LoadedModel, prefix: torch.Tensor) -> DynamicCache:
    """A cache holding ``prefix`` ([1, c] ids), as a prefill of the engine leaves it."""
    cache = DynamicCache(config=loaded.model.config)
    if prefix.shape[1]:
        loaded.forward(prefix.to(loaded.device), cache, 0)
    return cache


def _timed_pass(loaded: LoadedModel, cache: DynamicCache, new_ids: list[int], cached: int) -> float:
    device = loaded.device
    start = time.perf_counter()
    input_ids = torch.tensor([new_ids], dtype=torch.long, device=device)  # [1, n]
    output = loaded.forward(input_ids, cache, cached)
    output.logits[0, -1, : loaded.vocab_size].float()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def relative_errors(model: PairCostModel, records: Iterable[ForwardRecord]) -> list[float]:
    """|predicted - measured| / measured for each record."""
    return [abs(model.pass_seconds(r.role, r.new_tokens, r.cached_tokens) - r.seconds) / r.seconds for r in records]
