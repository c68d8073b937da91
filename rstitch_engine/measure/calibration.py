"""Is the draft unsure where it would diverge from the LLM? AUROC and calibration of its entropy.

R-Stitch hands a position to the LLM when the SLM's entropy is high, so it keeps the LLM's answer
only if high entropy marks the positions where the SLM's greedy token differs from the LLM's. On
the LLM-alone greedy answer y of each prompt, one teacher-forced SLM pass gives, at every position
j, the SLM's normalised entropy H_j, its greedy token and its top probability. Reported:

* AUROC of H for "the SLM's greedy token differs from y_j" (1: entropy ranks every divergence
  above every agreement; 0.5: no better than chance);
* expected calibration error (ECE, 10 equal-width bins) of the SLM's top probability as the
  chance of agreeing with the LLM;
* the divergence rate, and the share of divergences at or below a threshold (the ones tau lets through).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..decoding.engine import StitchEngine
from ..decoding.sampling import normalised_entropy
from ..decoding.settings import GenerationSettings
from ..models.loaded import LoadedModel


@dataclass(frozen=True)
class PositionScores:
    """One teacher-forced position: the SLM's entropy and top probability, and whether it diverges."""

    entropy: float
    top_probability: float
    diverges: bool


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for ``positives`` (ties count half); None without both classes."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    start = 0
    while start < len(s):  # average ranks over ties
        end = start
        while end + 1 < len(s) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float | None:
    """Sum over equal-width confidence bins of (bin share) x |mean confidence - accuracy|."""
    c, a = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if len(c) == 0:
        return None
    index = np.minimum((c * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            error += mask.mean() * abs(c[mask].mean() - a[mask].mean())
    return float(error)


@torch.inference_mode()
def draft_positions(engine: StitchEngine, prompt: Any, max_new_tokens: int) -> list[PositionScores]:
    """The SLM's scores at every position of the LLM-alone greedy answer to ``prompt``."""
    return drafts_positions(engine, prompt, max_new_tokens, [engine.pair.slm])[0]


def drafts_positions(engine: StitchEngine, prompt: Any, max_new_tokens: int,
                     slms: Sequence[LoadedModel]) -> list[list[PositionScores]]:
    """Per SLM of ``slms`` (each sharing ``engine``'s tokenizer), its scores at every position of one
    LLM-alone greedy answer to ``prompt``: drafts compared on the very same answers."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    answer = list(engine.decode_alone("llm", prompt, settings).token_ids)
    if not answer:
        return [[] for _ in slms]
    prompt_ids = engine.encode(prompt)
    per_slm = []
    for slm in slms:
        logits, _ = slm.answer_logits(prompt_ids, answer)  # [R, V]
        scores = []
        for row, token in zip(logits, answer):
            top = float(torch.softmax(row.double(), dim=-1).max())
            scores.append(PositionScores(normalised_entropy(row), top, int(row.argmax()) != token))
        per_slm.append(scores)
    return per_slm


def summarise(positions: Sequence[PositionScores], taus: Sequence[float] = ()) -> dict[str, Any]:
    """AUROC, ECE, divergence rate, and per tau the share of divergences the threshold lets through."""
    diverges = [p.diverges for p in positions]
    entropies = [p.entropy for p in positions]
    summary: dict[str, Any] = {
        "positions": len(positions),
        "divergence_rate": float(np.mean(diverges)) if positions else None,
        "auroc": auroc(entropies, diverges),
        "ece": expected_calibration_error([p.top_probability for p in positions], [not d for d in diverges]),
    }
    divergent = [p.entropy for p in positions if p.diverges]
    summary["missed_divergences"] = {f"{tau:g}": (float(np.mean([h <= tau for h in divergent])) if divergent else None)
                                     for tau in taus}
    return summary
