"""Next-token choice and the routing entropy.

Entropy and temperature: the entropy that drives routing is taken from the *untempered*
distribution (softmax of the raw logits, temperature 1) over the shared real vocabulary, whatever
the sampling settings. A threshold therefore means the same thing for greedy decoding and for any
temperature, and changing the temperature never changes which model is asked to decode.
"""

from __future__ import annotations

import math

import torch

from .settings import GenerationSettings


def normalised_entropy(logits: torch.Tensor) -> float:
    """H = -sum p log p / log |V| of softmax(logits), in [0, 1].

    logits: [V], already sliced to the shared real vocabulary.
    """
    probs = torch.softmax(logits.float(), dim=-1)  # [V]
    entropy = torch.special.entr(probs).sum()  # entr(p) = -p log p, and 0 at p = 0
    return float(entropy) / math.log(logits.shape[-1])


def choose_token(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator | None) -> int:
    """Greedy argmax, or a sample after temperature, top-k and top-p. logits: [V]."""
    if settings.greedy:
        return int(torch.argmax(logits))
    scores = logits.float() / settings.temperature  # [V]
    if settings.top_k > 0 and settings.top_k < scores.shape[-1]:
        kth_best = torch.topk(scores, settings.top_k).values[-1]
        scores = scores.masked_fill(scores < kth_best, -math.inf)
    if settings.top_p < 1.0:
        scores = _nucleus(scores, settings.top_p)
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, num_samples=1, generator=generator))


def _nucleus(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask all but the smallest prefix of tokens (by probability) whose mass reaches top_p."""
    sorted_scores, order = torch.sort(scores, descending=True)
    cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
    # Drop a token when the mass *before* it already reaches top_p; the best token always stays.
    drop_sorted = (cumulative - torch.softmax(sorted_scores, dim=-1)) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
    return scores.masked_fill(drop, -math.inf)


class RequestRandomness:
    """A request's private random generators, one per device, all seeded from one seed.

    Concurrent requests never share random state; equal seeds give equal samples.
    Without a seed, torch's global generator is used.
    """

    def __init__(self, seed: int | None) -> None:
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator_for(self, device: torch.device) -> torch.Generator | None:
        if self._seed is None:
            return None
        if device not in self._generators:
            generator = torch.Generator(device=device)
            generator.manual_seed(self._seed)
            self._generators[device] = generator
        return self._generators[device]
