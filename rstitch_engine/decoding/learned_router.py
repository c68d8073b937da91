"""R-Stitch+: a learned router that decides, at an uncertain SLM position, whether the LLM decodes it.

The router is a tiny MLP over three things the engine hands it (``RouterState``):

* the SLM's last-layer hidden state at the position (layer-normalised, no affine: [d]),
* the normalised entropy H of the SLM's next-token distribution,
* the context length, as log(1 + n) / log(1 + ``context_scale``),

giving P(LLM) = sigmoid(w2 . tanh(W1 x + b1) + b2 + s . (H, context)): an MLP plus a linear skip
term on the two scalar features, so that a fresh router can start as an entropy threshold
(``initial_threshold``) and training refines it. It is consulted only where H > tau (the engine's
guarantee, Algorithm 1), so tau sets where the router is asked at all and the network decides
among those positions.

Two modes, one network:

* ``LearnedRouter`` (inference): deterministic, the LLM is called when P(LLM) > ``decision_threshold``.
  Runs in single-threaded NumPy (torch's small ops stall on a busy CPU; see ``sampling.py``): about
  a 580 x 32 matrix-vector product per consulted position.
* ``SamplingRouter`` (training, in ``rstitch_engine.training.router_policy`` with the trainable
  ``RouterNet``): samples each decision from P(LLM) with its own seeded generator and records
  (features, action, log-prob) per call, for the policy gradient in ``training.train_router``.

Stored as a folder: ``router.json`` (``RouterConfig``) + ``router.safetensors`` (the weights).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from ..errors import InvalidSettingError, ModelLoadError
from .routing import RouterBase, RouterState

ROUTER_CONFIG = "router.json"
ROUTER_WEIGHTS = "router.safetensors"
FORMAT = "rstitch-router/1"
SHIPPED_ROUTERS = Path(__file__).parents[1] / "routers"
"""Package folder of the routers shipped for built-in pairs, one sub-folder per LLM alias."""
DEFAULT_ROUTER = SHIPPED_ROUTERS / "smollm2-135m-instruct"
"""The shipped router of the default pair (distilled draft + SmolLM2-135M-Instruct)."""
_WEIGHT_NAMES = ("w1", "b1", "w2", "b2", "skip")


@dataclass(frozen=True)
class RouterConfig:
    """What ``router.json`` records: the network's shape, its thresholds and how it was trained."""

    hidden_size: int
    """d: size of the SLM hidden state the router reads."""
    width: int = 32
    """Units of the MLP's one hidden layer."""
    threshold: float = 0.02
    """tau: the router is consulted only where the SLM's normalised entropy is above it."""
    decision_threshold: float = 0.5
    """Inference calls the LLM where P(LLM) is above this."""
    context_scale: float = 2048.0
    """Context length feature: log(1 + n) / log(1 + context_scale)."""
    pair: str = ""
    """The pair it was trained for (e.g. 'draft+smollm2-135m-instruct'): informational."""
    training: dict[str, Any] = field(default_factory=dict)
    """Training facts (lambda, steps, reward, ...), informational."""
    format: str = FORMAT

    @property
    def n_features(self) -> int:
        return self.hidden_size + 2


def router_features(state: RouterState, config: RouterConfig) -> np.ndarray:
    """The network's input for one consulted position: [d + 2] float32."""
    if state.slm_hidden is None:
        raise InvalidSettingError("a learned router needs the SLM hidden state (needs_hidden_state=True)")
    hidden = state.slm_hidden.detach().to(device="cpu", dtype=torch.float32).numpy().reshape(-1)  # [d]
    if hidden.shape[0] != config.hidden_size:
        raise InvalidSettingError(
            f"this router reads SLM hidden states of size {config.hidden_size} (trained for pair "
            f"{config.pair or '?'}), but the SLM gives {hidden.shape[0]}: train a router for this pair"
        )
    centred = hidden - hidden.mean()
    normed = centred / np.sqrt(np.mean(centred * centred) + 1e-5)  # layer norm without affine
    context = math.log1p(state.context_length) / math.log1p(config.context_scale)
    return np.concatenate([normed, np.array([state.entropy, context], dtype=np.float32)]).astype(np.float32)


def _logit(weights: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    """NumPy forward pass: features [..., d + 2] -> logits [...]."""
    hidden = np.tanh(features @ weights["w1"].T + weights["b1"])  # [..., width]
    return hidden @ weights["w2"] + weights["b2"][0] + features[..., -2:] @ weights["skip"]


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


class LearnedRouter(RouterBase):
    """R-Stitch+ at inference: deterministic, P(LLM) > ``config.decision_threshold`` calls the LLM."""

    needs_hidden_state = True

    def __init__(self, config: RouterConfig, weights: dict[str, np.ndarray]) -> None:
        _check_weights(config, weights)
        self.config = config
        self._weights = {name: np.ascontiguousarray(weights[name], dtype=np.float32) for name in _WEIGHT_NAMES}

    @property
    def threshold(self) -> float:
        return self.config.threshold

    @property
    def weights(self) -> dict[str, np.ndarray]:
        """Copies of the weights (w1 [width, d+2], b1 [width], w2 [width], b2 [1], skip [2])."""
        return {name: array.copy() for name, array in self._weights.items()}

    def probability(self, state: RouterState) -> float:
        """P(LLM) at this position."""
        return _sigmoid(float(_logit(self._weights, router_features(state, self.config))))

    def wants_llm(self, state: RouterState) -> bool:
        return self.probability(state) > self.config.decision_threshold

    def with_changes(self, **changes: Any) -> LearnedRouter:
        """The same weights with config fields changed (e.g. ``threshold`` or ``decision_threshold``)."""
        return LearnedRouter(RouterConfig(**{**asdict(self.config), **changes}), self._weights)

    def save(self, folder: str | Path) -> Path:
        """Write ``router.json`` and ``router.safetensors`` into ``folder`` (created if needed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.weights, str(folder / ROUTER_WEIGHTS), metadata={"format": FORMAT})
        (folder / ROUTER_CONFIG).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> LearnedRouter:
        """A router saved with ``save`` (or shipped in the package)."""
        folder = Path(folder).expanduser()
        if not (folder / ROUTER_CONFIG).is_file() or not (folder / ROUTER_WEIGHTS).is_file():
            raise ModelLoadError(f"{folder} holds no learned router ({ROUTER_CONFIG} + {ROUTER_WEIGHTS})")
        raw = json.loads((folder / ROUTER_CONFIG).read_text())
        if raw.get("format") != FORMAT:
            raise ModelLoadError(f"{folder} is not an {FORMAT} router (format {raw.get('format')!r})")
        return cls(RouterConfig(**raw), load_file(str(folder / ROUTER_WEIGHTS)))

    def __repr__(self) -> str:
        return (f"LearnedRouter(tau={self.config.threshold}, hidden_size={self.config.hidden_size}, "
                f"width={self.config.width}, pair={self.config.pair!r})")


@functools.lru_cache(maxsize=8)
def _load_cached(folder: str, mtime_ns: int) -> LearnedRouter:
    return LearnedRouter.load(folder)


def load_learned_router(folder: str | Path | None = None) -> LearnedRouter:
    """The router in ``folder`` (default: the shipped router of the default pair), cached per file version."""
    path = Path(folder).expanduser().resolve() if folder is not None else DEFAULT_ROUTER
    config = path / ROUTER_CONFIG
    if not config.is_file():
        where = "the shipped default router" if folder is None else str(path)
        raise ModelLoadError(f"no learned router at {where} ({config} missing); train one with `rstitch train-router`")
    return _load_cached(str(path), (path / ROUTER_WEIGHTS).stat().st_mtime_ns if (path / ROUTER_WEIGHTS).exists()
                        else config.stat().st_mtime_ns)


def _check_weights(config: RouterConfig, weights: dict[str, np.ndarray]) -> None:
    expected = {"w1": (config.width, config.n_features), "b1": (config.width,), "w2": (config.width,), "b2": (1,),
                "skip": (2,)}
    for name, shape in expected.items():
        if name not in weights or tuple(weights[name].shape) != shape:
            got = None if name not in weights else tuple(weights[name].shape)
            raise ModelLoadError(f"router weight {name} should have shape {shape}, got {got}")
