"""The routers shipped with the engine, and ``router_named`` to pick one by name.

The protocol they implement and the rules of Algorithm 1 it serves are in ``routing``;
R-Stitch+'s learned router is in ``learned_router``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..errors import InvalidSettingError, require_int_at_least
from ..models.defaults import DEFAULT_THRESHOLD
from .learned_router import load_learned_router
from .lookup import LLM_ALONE_LOOKUP_TOKENS
from .routing import Router, RouterState
from .settings import validate_threshold


@dataclass(frozen=True)
class EntropyRouter:
    """R-Stitch: every SLM token above the threshold goes to the LLM.

    ``hand_back_threshold``: the LLM returns control to the SLM after a token whose entropy is <=
    this (None: <= ``threshold``, Algorithm 1 exactly). A looser one (above tau) hands back sooner,
    while the LLM is still somewhat unsure; the SLM's next token is then kept only if the SLM itself
    is confident (entropy <= tau), as always.
    """

    threshold: float = DEFAULT_THRESHOLD
    needs_hidden_state: bool = False
    hand_back_threshold: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", validate_threshold(self.threshold))
        if self.hand_back_threshold is not None:
            object.__setattr__(self, "hand_back_threshold", validate_threshold(self.hand_back_threshold))

    def wants_llm(self, state: RouterState) -> bool:
        return True

    def hands_back(self, state: RouterState) -> bool:
        """After each kept LLM token (``state.entropy`` is the LLM's): whether the SLM resumes."""
        back = self.threshold if self.hand_back_threshold is None else self.hand_back_threshold
        return state.entropy <= back


@dataclass(frozen=True)
class AlwaysSLMRouter:
    """Baseline: the SLM alone (the LLM never runs)."""

    threshold: float = math.inf
    needs_hidden_state: bool = False

    def wants_llm(self, state: RouterState) -> bool:
        return False


@dataclass(frozen=True)
class AlwaysLLMRouter:
    """The LLM alone, reached through the loop: ``quality='exact'``. Requests start on the LLM
    (``llm_only``), so the SLM never runs.

    Prompt lookup is on with it by default (``GenerationSettings.prompt_lookup_tokens=None``): the
    LLM then writes every token, and lookup keeps its answer while deciding copied spans in fewer passes.
    """

    threshold: float = -math.inf
    needs_hidden_state: bool = False
    prompt_lookup_tokens: int = LLM_ALONE_LOOKUP_TOKENS
    """What ``GenerationSettings.prompt_lookup_tokens=None`` means with this router (``lookup``)."""
    llm_only: bool = True
    """The SLM never keeps a token: requests start on the LLM (``routing.starts_on_llm``)."""

    def wants_llm(self, state: RouterState) -> bool:
        return True


LONG_PROMPT_TOKENS = 256
"""``quality='auto'`` stitches prompts up to this many tokens and gives longer ones to the LLM alone."""


@dataclass(frozen=True)
class PromptLengthRouter:
    """``quality='auto'``: R-Stitch with ``short`` for prompts of at most ``max_stitched_prompt_tokens``
    tokens, the LLM alone (with prompt lookup) for longer ones.

    Long prompts are retrieved passages, tool results and long chats: the shipped draft was trained
    on short prompts, and over passages it is confidently wrong (README, "Generalisation"), while the
    LLM's answers copy from them, which prompt lookup decides in fewer passes. The engine asks
    ``for_prompt`` once per request, before any pass; the stats name the router it got.
    """

    short: Router = EntropyRouter()
    max_stitched_prompt_tokens: int = LONG_PROMPT_TOKENS

    def __post_init__(self) -> None:
        require_int_at_least("max_stitched_prompt_tokens", self.max_stitched_prompt_tokens, 1)

    @property
    def threshold(self) -> float:
        return self.short.threshold

    @property
    def needs_hidden_state(self) -> bool:
        return self.short.needs_hidden_state

    def wants_llm(self, state: RouterState) -> bool:
        return self.short.wants_llm(state)

    def for_prompt(self, prompt_tokens: int) -> Router:
        """The router a request with this many prompt tokens decodes with."""
        return self.short if prompt_tokens <= self.max_stitched_prompt_tokens else AlwaysLLMRouter()


def router_for_prompt(router: Router, prompt_tokens: int) -> Router:
    """The router one request uses: ``router.for_prompt(prompt_tokens)`` where it has one (``PromptLengthRouter``)."""
    choose = getattr(router, "for_prompt", None)
    return choose(prompt_tokens) if callable(choose) else router


Quality = Literal["exact", "balanced", "fast", "auto"]
"""A quality preset: 'exact' keeps the LLM's own answer (the LLM alone, sped up by prompt lookup
only), 'balanced' a stricter tau, 'fast' the default tau (``QUALITY_THRESHOLDS``), 'auto' the
default tau for prompts up to ``LONG_PROMPT_TOKENS`` and 'exact' beyond (``PromptLengthRouter``)."""
QUALITY_THRESHOLDS: dict[str, float] = {"balanced": 0.05, "fast": DEFAULT_THRESHOLD, "auto": DEFAULT_THRESHOLD}
"""tau of the stitched presets, chosen on the generalisation suite's tuning part (README, "Quality presets")."""


DEFAULT_QUALITY: Quality = "auto"
"""The preset of a request that names no quality, router or threshold (engine, CLI and adapters):
stitching for short prompts, the LLM alone with prompt lookup for long ones (README, "Quality presets")."""


def default_router() -> Router:
    """The router of ``DEFAULT_QUALITY``."""
    return router_for_quality(DEFAULT_QUALITY)


def router_for_quality(quality: Quality) -> Router:
    """The router of a quality preset (see ``Quality``)."""
    if quality == "exact":
        return AlwaysLLMRouter()
    if quality == "auto":
        return PromptLengthRouter(EntropyRouter(QUALITY_THRESHOLDS["auto"]))
    if quality in QUALITY_THRESHOLDS:
        return EntropyRouter(QUALITY_THRESHOLDS[quality])
    raise InvalidSettingError(f"quality must be 'exact', 'balanced', 'fast' or 'auto', got {quality!r}")


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
