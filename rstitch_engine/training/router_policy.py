"""R-Stitch+ in training: the trainable router network and the policy that samples decisions.

``RouterNet`` is the torch twin of ``LearnedRouter``'s NumPy forward pass (same weights, same
features, ``rstitch_engine.decoding.learned_router``); ``SamplingRouter`` draws each decision from
P(LLM) and records it for the policy gradient in ``train_router``. Inference never imports this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from rstitch_engine.decoding.learned_router import (
    _WEIGHT_NAMES,
    RouterConfig,
    _check_weights,
    _logit,
    _sigmoid,
    router_features,
)
from rstitch_engine.decoding.routing import RouterBase, RouterState


class RouterNet(torch.nn.Module):
    """The trainable network: features [N, d + 2] -> logit of P(LLM) [N]."""

    def __init__(self, config: RouterConfig, seed: int = 0, initial_probability: float = 0.5,
                 initial_threshold: float | None = None, initial_sharpness: float = 20.0) -> None:
        """Small random MLP weights; the output starts at P(LLM) = ``initial_probability`` everywhere or,
        with ``initial_threshold`` = t, at sigmoid(sharpness * (H - t)): an entropy router at t whose
        sampled decisions still explore."""
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.hidden = torch.nn.Linear(config.n_features, config.width)
        self.out = torch.nn.Linear(config.width, 1)
        self.skip = torch.nn.Linear(2, 1, bias=False)  # on (entropy, context)
        with torch.no_grad():
            bound = 1 / math.sqrt(config.n_features)
            self.hidden.weight.uniform_(-bound, bound, generator=generator)
            self.hidden.bias.zero_()
            self.out.weight.uniform_(-0.1, 0.1, generator=generator)
            self.skip.weight.zero_()
            if initial_threshold is None:
                p = min(max(initial_probability, 1e-4), 1 - 1e-4)
                self.out.bias.fill_(math.log(p / (1 - p)))
            else:  # MLP output zeroed: exactly the entropy rule until training moves it
                self.out.weight.zero_()
                self.skip.weight[0, 0] = initial_sharpness
                self.out.bias.fill_(-initial_sharpness * initial_threshold)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mlp = self.out(torch.tanh(self.hidden(features)))  # [N, 1]
        return (mlp + self.skip(features[..., -2:])).squeeze(-1)  # [N]

    def weights(self) -> dict[str, np.ndarray]:
        """The weights as float32 NumPy arrays (copies), named as in ``router.safetensors``."""
        tensors = (self.hidden.weight, self.hidden.bias, self.out.weight.reshape(-1), self.out.bias,
                   self.skip.weight.reshape(-1))
        return {name: t.detach().cpu().float().numpy().copy() for name, t in zip(_WEIGHT_NAMES, tensors)}

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            self.hidden.weight.copy_(torch.from_numpy(weights["w1"]))
            self.hidden.bias.copy_(torch.from_numpy(weights["b1"]))
            self.out.weight.copy_(torch.from_numpy(weights["w2"]).reshape(1, -1))
            self.out.bias.copy_(torch.from_numpy(weights["b2"]))
            self.skip.weight.copy_(torch.from_numpy(weights["skip"]).reshape(1, -1))



@dataclass(frozen=True)
class Decision:
    """One sampled routing decision of a training rollout."""

    features: np.ndarray
    """[d + 2] the network's input."""
    action: int
    """1: the LLM decodes the position; 0: the SLM's token is kept."""
    logprob: float
    """log pi_old(action | features) under the policy that sampled it."""


class SamplingRouter(RouterBase):
    """R-Stitch+ in training: samples each decision from P(LLM) and records it.

    ``decisions`` collects every call in order; read and clear it per rollout (one router per
    rollout keeps it simple). Its weights are a snapshot: later updates of the net do not change it.
    """

    needs_hidden_state = True

    def __init__(self, config: RouterConfig, weights: dict[str, np.ndarray], seed: int) -> None:
        _check_weights(config, weights)
        self.config = config
        self._weights = {name: np.asarray(weights[name], dtype=np.float32) for name in _WEIGHT_NAMES}
        self._rng = np.random.default_rng(seed)
        self.decisions: list[Decision] = []

    @property
    def threshold(self) -> float:
        return self.config.threshold

    def wants_llm(self, state: RouterState) -> bool:
        features = router_features(state, self.config)
        logit = float(_logit(self._weights, features))
        p_llm = _sigmoid(logit)
        action = int(self._rng.random() < p_llm)
        # log sigmoid(z) = -log(1 + e^-z), log(1 - sigmoid(z)) = -log(1 + e^z); stable forms
        logprob = -_softplus(-logit) if action else -_softplus(logit)
        self.decisions.append(Decision(features, action, logprob))
        return bool(action)


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))
