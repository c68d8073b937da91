"""The routers shipped with the engine, and ``router_named`` to pick one by name.

The protocol they implement and the rules of Algorithm 1 it serves are in ``routing``;
R-Stitch+'s learned router is in ``learned_router``; which router a request gets (presets, the
pair's calibration profile) is decided in ``policy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..errors import InvalidSettingError, require_int_at_least
from ..models.defaults import DEFAULT_THRESHOLD
from .learned_router import load_learned_router
from .routing import Router, RouterBase, RouterState
from .settings import validate_threshold


@dataclass(frozen=True)
class EntropyRouter(RouterBase):
    """R-Stitch: every SLM token above the threshold goes to the LLM.

    ``hand_back_threshold``: the LLM returns control to the SLM after a token whose entropy is <=
    this (None: <= ``threshold``, Algorithm 1 exactly). A looser one (above tau) hands back sooner,
    while the LLM is still somewhat unsure; a stricter one (below tau) keeps the LLM in control until
    it is surer. The SLM's next token is kept only if the SLM itself is confident (entropy <= tau), as always.
    """

    threshold: float = DEFAULT_THRESHOLD
    needs_hidden_state: bool = False
    hand_back_threshold: float | None = None
    llm_opening_tokens: int = 0
    """The LLM writes this many opening tokens first (``Router.llm_opening_tokens``): the answer's form."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", validate_threshold(self.threshold))
        require_int_at_least("llm_opening_tokens", self.llm_opening_tokens, 0)
        if self.hand_back_threshold is not None:
            object.__setattr__(self, "hand_back_threshold", validate_threshold(self.hand_back_threshold))

    def hands_back(self, state: RouterState) -> bool:
        """After each kept LLM token (``state.entropy`` is the LLM's): whether the SLM resumes."""
        back = self.threshold if self.hand_back_threshold is None else self.hand_back_threshold
        return state.entropy <= back


@dataclass(frozen=True)
class AlwaysSLMRouter(RouterBase):
    """Baseline: the SLM alone (the LLM never runs)."""

    threshold: float = math.inf

    def wants_llm(self, state: RouterState) -> bool:
        return False


@dataclass(frozen=True)
class AlwaysLLMRouter(RouterBase):
    """The LLM alone, reached through the loop: ``quality='exact'``. Requests start on the LLM
    (``llm_only``), so the SLM never runs. The policy turns prompt lookup on with it by default
    (``policy``): the LLM then writes every token, and lookup keeps its answer while deciding copied
    spans in fewer passes."""

    threshold: float = -math.inf
    llm_only: bool = True


RouterName = Literal["entropy", "learned", "slm", "llm"]
"""'entropy': R-Stitch at a threshold; 'learned': R-Stitch+ (a trained router, by default the one shipped
for the default pair); 'slm' / 'llm': one model alone (baselines)."""


def router_named(name: RouterName, threshold: float, path: str | None = None) -> Router:
    """The router a configuration names.

    ``threshold`` is used by the entropy router only (a learned router keeps the tau it was trained
    with). ``path`` is a learned router's folder (``rstitch train-router --out``); None with
    'learned' is the router shipped for the default pair.
    """
    if path is not None and name != "learned":
        raise InvalidSettingError(f"a router path is only used with router='learned', not {name!r}")
    if name == "learned":
        return load_learned_router(path)
    if name == "slm":
        return AlwaysSLMRouter()
    if name == "llm":
        return AlwaysLLMRouter()
    if name == "entropy":
        return EntropyRouter(threshold)
    raise InvalidSettingError(f"router must be 'entropy', 'learned', 'slm' or 'llm', got {name!r}")
