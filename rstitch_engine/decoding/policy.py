"""Which routing a request runs, and why: one rule for the engine, the CLI and both adapters.

A caller asks for a ``Routing``: a quality preset, or a router (object or name) and/or a threshold,
or nothing (the default preset, ``'auto'``). ``resolve_policy`` turns it, with the pair's calibration
profile (``profile``), into the ``Policy`` that runs: a router, what prompt lookup does when the
request's settings leave it open, and a name and a reason that the stats report.

The quality contract of ``'auto'``: the fastest configuration of the pair's profile whose measured
agreement with the LLM alone meets the target (``DEFAULT_AGREEMENT_TARGET``, settable per engine,
adapter and call); the LLM alone with prompt lookup when none does, and when the pair has no
profile (with a one-time warning saying how to calibrate it). The LLM alone with prompt lookup keeps
the LLM's own answer: the same decisions, fewer passes where the answer copies its context.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Literal

from ..errors import InvalidSettingError
from ..models.defaults import DEFAULT_THRESHOLD
from .lookup import LLM_ALONE_LOOKUP_TOKENS
from .profile import MeasuredConfig, PairProfile
from .routers import AlwaysLLMRouter, EntropyRouter, RouterName, router_named
from .routing import Router, check_router
from .settings import validate_threshold

Quality = Literal["auto", "exact", "balanced", "fast"]
"""A quality preset: 'auto' (the default) what the pair's profile proves faithful, else 'exact';
'exact' the LLM alone (its own answer, sped up by prompt lookup only); 'balanced' and 'fast' R-Stitch at
a fixed tau (``QUALITY_THRESHOLDS``), a measured trade-off of answers for speed (docs/presets.md)."""
QUALITIES: tuple[Quality, ...] = ("auto", "exact", "balanced", "fast")
QUALITY_THRESHOLDS: dict[str, float] = {"balanced": 0.05, "fast": DEFAULT_THRESHOLD}
"""tau of the stitched presets."""
DEFAULT_QUALITY: Quality = "auto"
"""The preset of a request that names no quality, router or threshold (engine, CLI and adapters)."""
DEFAULT_AGREEMENT_TARGET = 0.95
"""'auto' stitches only with a configuration whose answers agreed with the LLM alone's on at least this
share of the pair's calibration prompts."""


@dataclass(frozen=True)
class Routing:
    """What a caller asked for. Either ``quality`` or ``router``/``threshold``/``router_path``; nothing
    at all means ``DEFAULT_QUALITY``. ``router`` is a router object or a name (``RouterName``)."""

    quality: Quality | None = None
    router: Router | RouterName | None = None
    threshold: float | None = None
    router_path: str | None = None
    agreement_target: float | None = None
    """'auto' only: the agreement a stitched configuration must have shown (None: ``DEFAULT_AGREEMENT_TARGET``)."""

    def __post_init__(self) -> None:
        names_router = self.router is not None or self.threshold is not None or self.router_path is not None
        if self.quality is not None and names_router:
            raise InvalidSettingError("give either quality or router/threshold, not both")
        if self.quality is not None and self.quality not in QUALITIES:
            raise InvalidSettingError(f"quality must be one of {', '.join(map(repr, QUALITIES))}, got {self.quality!r}")
        if self.threshold is not None:
            object.__setattr__(self, "threshold", validate_threshold(self.threshold))
        if not isinstance(self.router, (str, type(None))):
            check_router(self.router)
            if self.threshold is not None or self.router_path is not None:
                raise InvalidSettingError("a router object carries its own threshold: give no threshold or router_path")
        if self.agreement_target is not None and not (
                isinstance(self.agreement_target, (int, float)) and 0 <= self.agreement_target <= 1):
            raise InvalidSettingError(f"agreement_target must be a share in [0, 1], got {self.agreement_target!r}")

    @property
    def preset(self) -> Quality | None:
        """The quality preset in force: ``quality``, or ``DEFAULT_QUALITY`` when nothing names a router."""
        if self.quality is not None:
            return self.quality
        return None if self.router is not None or self.threshold is not None or self.router_path else DEFAULT_QUALITY

    def with_call(self, quality: Quality | None = None, threshold: float | None = None,
                  agreement_target: float | None = None) -> Routing:
        """This routing with one call's overrides: a call's quality or threshold replaces the routing's
        (a threshold keeps a named router's kind, the entropy router when a preset was set)."""
        if quality is not None and threshold is not None:
            raise InvalidSettingError("give either quality or router/threshold, not both")
        target = agreement_target if agreement_target is not None else self.agreement_target
        if quality is not None:
            return Routing(quality=quality, agreement_target=target)
        if threshold is not None:
            named = self.router if isinstance(self.router, str) else None
            return Routing(router=named, threshold=threshold, router_path=self.router_path if named else None,
                           agreement_target=target)
        return Routing(self.quality, self.router, self.threshold, self.router_path, target)


@dataclass(frozen=True)
class Policy:
    """What one request runs with, and why (reported in ``StitchStats.policy`` / ``policy_reason``)."""

    router: Router
    prompt_lookup_tokens: int
    """Prompt lookup's tokens per pass when the request's settings leave it open (``None``)."""
    name: str
    """Short: 'auto: LLM alone + lookup', 'exact: LLM alone + lookup', 'fast: R-Stitch tau=0.1', 'R-Stitch tau=0.3' ..."""
    reason: str
    """One sentence: why this policy runs."""


def resolve_policy(routing: Routing, profile: PairProfile | None, warn: bool = True) -> Policy:
    """The policy ``routing`` asks for, given the pair's profile (None: the pair has none). ``warn``: say once
    per process that 'auto' fell back for want of a profile (requests do; inspecting a policy need not)."""
    preset = routing.preset
    if preset == "auto":
        return _auto(profile, routing.agreement_target if routing.agreement_target is not None
                     else DEFAULT_AGREEMENT_TARGET, warn)
    if preset == "exact":
        return _llm_alone("exact", "quality='exact' asks for the LLM's own answer")
    if preset is not None:
        tau = QUALITY_THRESHOLDS[preset]
        return Policy(EntropyRouter(tau), 0, f"{preset}: R-Stitch tau={tau:g}",
                      f"quality={preset!r} stitches at a fixed tau (a measured trade-off, not the LLM's answer)")
    if routing.router is not None and not isinstance(routing.router, str):
        router = routing.router
        return Policy(router, LLM_ALONE_LOOKUP_TOKENS if router.llm_only else 0, type(router).__name__,
                      "the caller gave this router")
    name = routing.router or "entropy"
    router = router_named(name, routing.threshold if routing.threshold is not None else DEFAULT_THRESHOLD,
                          routing.router_path)
    label = {"entropy": f"R-Stitch tau={router.threshold:g}", "learned": f"R-Stitch+ (learned) tau={router.threshold:g}",
             "slm": "SLM alone", "llm": "LLM alone + lookup"}[name]
    return Policy(router, LLM_ALONE_LOOKUP_TOKENS if router.llm_only else 0, label,
                  f"the caller asked for router={name!r}" + (f" at tau={router.threshold:g}" if name == "entropy" else ""))


def _auto(profile: PairProfile | None, target: float, warn: bool) -> Policy:
    if profile is None:
        if warn:
            _warn_no_profile()
        return _llm_alone("auto", "this pair has no calibration profile (run `rstitch calibrate`); "
                                  "the safe default is the LLM alone")
    chosen, best_stitched = profile.choose(target)
    if chosen is not None:
        return Policy(chosen.router(), chosen.prompt_lookup_tokens, f"auto: {chosen.name}",
                      f"{chosen.name} agreed with the LLM alone on {chosen.agreement:.0%} of this pair's calibration "
                      f"prompts (target {target:.0%}) at {chosen.speedup:.2f}x")
    if best_stitched is None:
        why = "this pair's profile measured no stitched configuration"
    else:
        why = (f"no stitched configuration kept {target:.0%} agreement in this pair's profile "
               f"(best: {best_stitched.name}, {best_stitched.agreement:.0%})")
    if not profile.lookup_pays:
        return Policy(AlwaysLLMRouter(), 0, "auto: LLM alone",
                      why + "; prompt lookup measured slower than the plain LLM alone on this pair's runtime")
    return _llm_alone("auto", why)


def _llm_alone(preset: str, why: str) -> Policy:
    return Policy(AlwaysLLMRouter(), LLM_ALONE_LOOKUP_TOKENS, f"{preset}: LLM alone + lookup", why)


_warned = threading.Event()


def _warn_no_profile() -> None:
    """Once per process: a pair with no profile decodes with the LLM alone under 'auto'."""
    if not _warned.is_set():
        _warned.set()
        warnings.warn("rstitch: this model pair has no calibration profile, so quality='auto' runs the LLM alone "
                      "(with prompt lookup). Run `rstitch calibrate --llm ... --slm ... [--backend ...]` once to measure which "
                      "stitched configuration keeps the LLM's answers, or choose quality='fast' / a threshold.",
                      stacklevel=3)


__all__ = ["DEFAULT_AGREEMENT_TARGET", "DEFAULT_QUALITY", "MeasuredConfig", "PairProfile", "Policy", "QUALITIES",
           "QUALITY_THRESHOLDS", "Quality", "Routing", "resolve_policy"]
