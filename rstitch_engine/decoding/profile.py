"""A model pair's calibration profile: measured agreement with the LLM alone and speed of each configuration.

``rstitch calibrate`` (``measure.calibrate``) runs candidate configurations on a calibration set and
writes one ``PairProfile`` per pair (JSON). The engine looks for its pair's profile first under
``cache_dir()/profiles`` (what ``rstitch calibrate`` writes by default), then among the profiles shipped
in the package (the default pair's); ``policy`` chooses ``quality='auto'``'s configuration from it.

A configuration is a router spec (``kind``: 'llm', 'entropy' with ``threshold`` and an optional
``hand_back_threshold``, or 'learned' with an optional ``path``) and prompt lookup's tokens per pass.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import InvalidSettingError
from ..models.cost_model import pair_name
from ..models.defaults import cache_dir
from .routers import AlwaysLLMRouter, EntropyRouter, router_named
from .routing import Router

FORMAT = "rstitch-profile/1"
SHIPPED_PROFILES = Path(__file__).parents[1] / "profiles"
"""Profiles inside the package (the default pair's), by pair name."""


@dataclass(frozen=True)
class MeasuredConfig:
    """One configuration as calibration measured it on the pair."""

    name: str
    """'LLM alone + lookup', 'tau=0.05', 'tau=0.05 back=0.01', 'learned' ..."""
    router_spec: dict[str, Any]
    """{'kind': 'llm' | 'entropy' | 'learned', 'threshold': tau, 'hand_back_threshold': ..., 'path': ...}."""
    prompt_lookup_tokens: int
    agreement: float
    """Share of calibration prompts whose answer equals the LLM alone's."""
    speedup: float
    """The LLM alone's total seconds over this configuration's, on the same prompts, side by side."""
    slm_share: float
    """Share of output tokens the SLM wrote."""

    def router(self) -> Router:
        """The router this configuration runs."""
        return router_from_spec(self.router_spec)

    @property
    def stitched(self) -> bool:
        return self.router_spec.get("kind") != "llm"


def router_from_spec(spec: dict[str, Any]) -> Router:
    """The router a profile's spec names (see the module docstring)."""
    kind = spec.get("kind")
    if kind == "llm":
        return AlwaysLLMRouter()
    if kind == "entropy":
        return EntropyRouter(spec["threshold"], hand_back_threshold=spec.get("hand_back_threshold"),
                             llm_opening_tokens=spec.get("llm_opening_tokens", 0))
    if kind == "learned":
        return router_named("learned", 0.0, spec.get("path"))
    raise InvalidSettingError(f"unknown router kind {kind!r} in a calibration profile")


@dataclass(frozen=True)
class PairProfile:
    """What ``rstitch calibrate`` measured for one pair on one device."""

    pair: str
    """``models.cost_model.pair_name`` of the pair: '<slm>__<llm>'."""
    device: str
    """Where it was measured (``device_name``: 'cpu-bfloat16', ...); speeds are ratios measured there."""
    calibration_set: str
    prompts: int
    max_new_tokens: int
    configs: tuple[MeasuredConfig, ...]
    created: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    def choose(self, target: float) -> tuple[MeasuredConfig | None, MeasuredConfig | None]:
        """(the fastest stitched configuration whose agreement meets ``target`` and that is faster than the
        LLM alone, with or without lookup, as measured here, or None; the stitched configuration with the best
        agreement)."""
        stitched = [c for c in self.configs if c.stitched]
        baseline = max([1.0, *(c.speedup for c in self.configs if not c.stitched)])
        kept = [c for c in stitched if c.agreement >= target and c.speedup > baseline]
        chosen = max(kept, key=lambda c: c.speedup, default=None)
        best = max(stitched, key=lambda c: (c.agreement, c.speedup), default=None)
        return chosen, best

    @property
    def lookup_pays(self) -> bool:
        """Whether the LLM alone with prompt lookup measured faster than the plain LLM alone here (True when
        the profile did not measure it: lookup keeps the LLM's answer either way)."""
        measured = [c.speedup for c in self.configs if not c.stitched and c.prompt_lookup_tokens > 0]
        return not measured or max(measured) > 1.0

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PairProfile:
        if data.get("format") != FORMAT:
            raise InvalidSettingError(f"not a {FORMAT} calibration profile (format {data.get('format')!r})")
        fields = {k: v for k, v in data.items() if k != "format"}
        fields["configs"] = tuple(MeasuredConfig(**c) for c in fields["configs"])
        return cls(**fields)

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON (atomically: a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PairProfile:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise InvalidSettingError(f"cannot read the calibration profile {path}: {error}") from error


def user_profile_path(slm_name: str, llm_name: str) -> Path:
    """Where ``rstitch calibrate`` writes a pair's profile by default (and where the engine looks first)."""
    return cache_dir() / "profiles" / f"{pair_name(slm_name, llm_name)}.json"


def find_profile(slm_name: str, llm_name: str, search: Sequence[Path] | None = None) -> PairProfile | None:
    """The pair's profile: the user's (``user_profile_path``), else the shipped one, else None."""
    name = f"{pair_name(slm_name, llm_name)}.json"
    folders = search if search is not None else (user_profile_path(slm_name, llm_name).parent, SHIPPED_PROFILES)
    for folder in folders:
        if (folder / name).is_file():
            return PairProfile.load(folder / name)
    return None
