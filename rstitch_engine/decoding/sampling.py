"""Next-token choice and the routing entropy.

Entropy and temperature: the entropy that drives routing is taken from the *untempered*
distribution (softmax of the raw logits, temperature 1) over the shared real vocabulary, whatever
the sampling settings. A threshold therefore means the same thing for greedy decoding and for any
temperature, and changing the temperature never changes which model is asked to decode.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

from .settings import GenerationSettings


def normalised_entropy(logits: torch.Tensor, support: int | None = None) -> float:
    """H = -sum p log p / log N of softmax(logits), in [0, 1]; N = |V|, or ``support`` when given.

    logits: [V], already sliced to the shared real vocabulary. Tokens with logit -inf count as p = 0.
    ``support``: how many tokens could be chosen at all (a grammar's allowed tokens), so that H = 1
    means "uniform over the possible choices" there too; ``support <= 1`` (a forced token) gives 0.
    On CPU the sums run single-threaded in NumPy: torch's intra-op threads can stall on such small
    reductions when the other cores are busy, which would tax every stitched step.
    """
    size = logits.shape[-1] if support is None else support
    if size <= 1:
        return 0.0
    if logits.device.type == "cpu":
        return _normalised(_entropy_numpy(logits.detach().numpy()), size)
    return _normalised(float(_entropy_torch(logits)), size)


def _normalised(entropy: float, size: int) -> float:
    """Unnormalised entropy over ``size`` possible tokens, divided by log ``size`` and clipped to [0, 1]."""
    if size <= 1:
        return 0.0
    return min(max(entropy / math.log(size), 0.0), 1.0)


def entropy_and_choice(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator | None,
                       support: int | None = None) -> tuple[float, int]:
    """``normalised_entropy(logits, support)`` and ``choose_token(logits, ...)``, the same values.

    On an accelerator both stay on the device until one transfer brings them to the host together:
    the router needs the token id and H, so that is the step's one host sync.
    """
    if logits.device.type == "cpu":
        if settings.greedy:  # one NumPy view: the argmax is also the max the entropy subtracts
            array = logits.detach().numpy()
            token = int(array.argmax())  # the first maximum, as torch.argmax
            size = array.shape[-1] if support is None else support
            entropy = _entropy_numpy(array, array[token], masked=support is not None) if size > 1 else 0.0
            return _normalised(entropy, size), token
        return normalised_entropy(logits, support), choose_token(logits, settings, generator)
    size = logits.shape[-1] if support is None else support
    entropy = _entropy_torch(logits) / math.log(size) if size > 1 else logits.new_zeros((), dtype=torch.float32)
    token = _choice_tensor(logits, settings, generator)
    h, t = torch.stack([entropy.double(), token.double()]).tolist()  # exact for ids < 2**53
    return min(max(h, 0.0), 1.0), int(t)


def _entropy_numpy(logits: np.ndarray, top: float | None = None, masked: bool = True) -> float:
    """Unnormalised entropy of softmax(logits) ([V]); ``top``: max(logits), when already known.
    ``masked`` False: no logit is -inf (no grammar mask), so no clamp is needed unless a -inf shows.

    Works in two scratch arrays of the calling thread, reused from call to call: a fresh [V] array
    per operation would be a large allocation each step, which costs page faults between passes.
    """
    # With z = x - max(x), e = exp(z), s = sum(e):  H = log s - sum(e * z) / s.
    z, e = _scratch(logits.shape[0], logits.dtype)
    np.subtract(logits, logits.max() if top is None else top, out=z)
    if not masked:
        entropy = _entropy_of_shifted(z, e)
        if not math.isnan(entropy):  # else a -inf in z made 0 * -inf: clamp, as for a masked row
            return entropy
    np.maximum(z, np.finfo(logits.dtype).min, out=z)  # -inf -> finite, so 0 * z = 0; finite z unchanged
    return _entropy_of_shifted(z, e)


def _entropy_of_shifted(z: np.ndarray, e: np.ndarray) -> float:
    """log s - sum(e * z) / s for z = logits - max(logits), e = exp(z) (written into ``e``), s = sum(e)."""
    np.exp(z, out=e)
    s = e.sum()
    return float(math.log(s) - np.dot(e, z) / s)


_SCRATCH = threading.local()


def _scratch(size: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Two [size] arrays of ``dtype`` owned by the calling thread."""
    arrays = getattr(_SCRATCH, "arrays", None)
    if arrays is None or arrays[0].shape[0] != size or arrays[0].dtype != dtype:
        arrays = _SCRATCH.arrays = (np.empty(size, dtype), np.empty(size, dtype))
    return arrays


def _entropy_torch(logits: torch.Tensor) -> torch.Tensor:
    """Unnormalised entropy as a 0-d float32 tensor on the logits' device."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # [V]
    log_probs = log_probs.clamp(min=torch.finfo(log_probs.dtype).min)  # -inf -> finite, so 0 * lp = 0
    return -torch.dot(log_probs.exp(), log_probs)


def choose_token(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator | None) -> int:
    """Greedy argmax, or a sample after temperature, top-k and top-p. logits: [V].

    A greedy choice on the CPU is NumPy's argmax over a view of the logits (the first maximum, as
    ``torch.argmax``): torch's reduction kernel costs many times more over a vocabulary-sized row."""
    if settings.greedy and logits.is_cpu and logits.dtype is not torch.bfloat16:  # NumPy has no bf16
        return int(logits.detach().numpy().argmax())
    return int(_choice_tensor(logits, settings, generator))


def _choice_tensor(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator | None
                   ) -> torch.Tensor:
    """The chosen token id as a 0-d tensor on the logits' device (no host sync)."""
    if settings.greedy:
        return torch.argmax(logits)
    scores = logits.float() / settings.temperature  # [V]
    if settings.top_k > 0 and settings.top_k < scores.shape[-1]:
        kth_best = torch.topk(scores, settings.top_k).values[-1]
        scores = scores.masked_fill(scores < kth_best, -math.inf)
    if settings.top_p < 1.0:
        scores = _nucleus(scores, settings.top_p)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)[0]


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
