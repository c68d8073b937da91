"""Per-request decoding settings, validated once at construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidSettingError, require_int_at_least
from .constraints import Grammar


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode one request.

    ``temperature == 0`` means greedy decoding; ``top_p``/``top_k``/``seed`` then have no effect.
    The routing entropy never depends on these settings (see ``sampling.normalised_entropy``).
    """

    max_new_tokens: int = 256
    """Upper bound on kept output tokens (discarded SLM tokens do not count)."""
    temperature: float = 0.0
    """Softmax temperature for sampling; 0 selects greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: int = 0
    """Keep only the k most likely tokens before sampling; 0 disables the cut."""
    seed: int | None = None
    """Seed of this request's private random generator; equal seeds give equal samples."""
    stop: tuple[str, ...] = ()
    """Strings that end generation; matched on decoded text and trimmed from the output."""
    grammar: "Grammar | None" = None
    """What the output must match (``constraints.Grammar``: JSON schema, regex, Lark, tool calls); None: free text."""
    prompt_lookup_tokens: int | None = None
    """Prompt lookup (``decoding.lookup``): up to this many tokens copied from the context are checked
    in each pass of the active model, so that copied spans cost fewer passes; 0 turns it off, None
    leaves it to the router (on, 6 tokens, for the LLM alone: ``quality='exact'``; off for stitching). The
    same tokens and sources as without it, up to floating-point summation order. Greedy decoding
    only (otherwise ignored); a grammar may be set."""

    token_entropy: bool = False
    """Compute every kept token's entropy (``TokenEvent.entropy``) also where no router reads it: under a
    router that is ``llm_only`` (the LLM alone) it is otherwise not computed, and the event's entropy is
    None. It costs one pass over the vocabulary's logits per token."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        require_int_at_least("max_new_tokens", self.max_new_tokens, 1)
        _require(_is_finite_number(self.temperature) and self.temperature >= 0,
                 f"temperature must be a finite number >= 0, got {self.temperature!r}")
        _require(_is_finite_number(self.top_p) and 0 < self.top_p <= 1,
                 f"top_p must be in (0, 1], got {self.top_p!r}")
        require_int_at_least("top_k", self.top_k, 0)
        if self.prompt_lookup_tokens is not None:
            require_int_at_least("prompt_lookup_tokens", self.prompt_lookup_tokens, 0)
        _require(self.seed is None or (isinstance(self.seed, int) and not isinstance(self.seed, bool)),
                 f"seed must be an integer or None, got {self.seed!r}")
        _require(all(isinstance(s, str) and s for s in self.stop),
                 f"stop strings must be non-empty strings, got {self.stop!r}")
        _require(isinstance(self.token_entropy, bool), f"token_entropy must be True or False, got {self.token_entropy!r}")
        _require(self.grammar is None or isinstance(self.grammar, Grammar),
                 f"grammar must be a rstitch_engine.Grammar or None, got {type(self.grammar).__name__}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes: Any) -> "GenerationSettings":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def validate_threshold(threshold: object) -> float:
    """Return tau as a float. Any real number is valid: tau >= 1 never switches, tau < 0 always does."""
    if not _is_number(threshold) or math.isnan(float(threshold)):  # type: ignore[arg-type]
        raise InvalidSettingError(
            f"threshold (tau) must be a real number (normalised entropy is in [0, 1]; "
            f">= 1 never calls the LLM, < 0 always does), got {threshold!r}"
        )
    return float(threshold)  # type: ignore[arg-type]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return _is_number(value) and math.isfinite(float(value))  # type: ignore[arg-type]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidSettingError(message)
