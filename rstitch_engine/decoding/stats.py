"""What a request produced and what it cost: token events and the final stats record."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Sequence

from ..models.loaded import ForwardRecord, ModelRole
from .alone import AloneResult

FinishReason = Literal["stop", "length", "no_allowed_token"]
"""'no_allowed_token': the request's grammar allowed no token at some position (the text so far is kept)."""
SpeedupBasis = Literal["measured", "estimated", "unavailable"]


@dataclass(frozen=True)
class TokenEvent:
    """One kept output token, as it is streamed."""

    index: int
    """Position in the output (0-based); discarded SLM tokens take no index."""
    token_id: int
    text: str
    """Text delta: concatenating all deltas gives the output text (stop string trimmed)."""
    source: ModelRole
    """The model that wrote this token: 'slm' or 'llm'."""
    entropy: float | None
    """Normalised entropy of the writer's untempered distribution at this position; None where no router
    read it (the LLM alone, ``Router.llm_only``) and ``GenerationSettings.token_entropy`` did not ask."""
    took_over: bool
    """Control switched SLM -> LLM here: the SLM's token at this position was discarded."""
    hands_back: bool
    """Control switches LLM -> SLM after this token (the LLM was confident)."""
    seconds: float
    """Time from the start of the request until this token was chosen."""


@dataclass(frozen=True)
class ModelUsage:
    """Work done by one model in one request."""

    tokens: int
    """Kept output tokens this model wrote."""
    forward_passes: int
    decode_passes: int
    decode_seconds: float
    catchup_passes: int
    """Forward passes over tokens the model had not seen (prompt prefill included)."""
    catchup_tokens: int
    """Tokens the model missed that catch-up passes fed (prompt lookup's proposals not included)."""
    catchup_seconds: float
    pass_share: float = 0.0
    """Sum of 1/batch_size over this model's passes: 1 for each pass the request ran alone, 1/B for
    each pass it shared with B - 1 others. Summed over the requests of a batch: the passes the model ran."""

    @property
    def seconds(self) -> float:
        return self.decode_seconds + self.catchup_seconds

    @classmethod
    def from_records(cls, role: ModelRole, tokens: int, records: Sequence[ForwardRecord]) -> "ModelUsage":
        mine = [r for r in records if r.role == role]
        decodes = [r for r in mine if r.kind == "decode"]
        catchups = [r for r in mine if r.kind == "catchup"]
        return cls(
            tokens=tokens,
            forward_passes=len(mine),
            decode_passes=len(decodes),
            decode_seconds=sum(r.seconds for r in decodes),
            catchup_passes=len(catchups),
            catchup_tokens=sum(r.new_tokens - r.proposed_tokens for r in catchups),
            catchup_seconds=sum(r.seconds for r in catchups),
            pass_share=sum(1 / r.batch_size for r in mine),
        )


@dataclass(frozen=True)
class StitchStats:
    """Accounting for one request. ``speedup`` is against the LLM decoding alone."""

    prompt_tokens: int
    output_tokens: int
    slm: ModelUsage
    llm: ModelUsage
    discarded_slm_tokens: int
    switches_to_llm: int
    switches_to_slm: int
    wall_seconds: float
    """From the start of the request to its end, as the caller saw it."""
    idle_seconds: float
    """Part of the wall time not spent on this request's forward passes: the wall time minus the wall
    time of the passes it took part in (a shared pass counts whole for each of its requests), so
    ``busy_seconds`` is what this request's passes took, at that load. It holds waiting for other
    requests' passes, for the consumer between two tokens, and the engine's own work between passes."""
    finish_reason: FinishReason
    router: str
    threshold: float
    llm_alone_seconds: float | None
    """Measured (an LLM-alone run) or estimated time of the LLM decoding this request alone."""
    speedup_basis: SpeedupBasis
    largest_batch: int = 1
    """The most requests any of this request's forward passes was shared with (1: it always ran alone)."""
    llm_alone_tokens: int | None = None
    """Tokens the LLM wrote alone when measured (it may stop earlier or later than the stitched
    answer: the measured speedup is per request, as in the paper); None when estimated, which
    assumes the same output length."""
    forced_tokens: int = 0
    """Output tokens a grammar forced: kept without a forward pass, counted in the active model's tokens."""
    proposed_tokens: int = 0
    """Tokens prompt lookup proposed from the context and fed to the active model (``decoding.lookup``)."""
    confirmed_tokens: int = 0
    """Of those, the ones kept: each is a token decided without a forward pass of its own."""
    policy: str = ""
    """The routing policy that ran (``decoding.policy``): 'auto: LLM alone + lookup', 'fast: R-Stitch tau=0.1' ..."""
    policy_reason: str = ""
    """Why that policy ran (for 'auto': what the pair's calibration profile showed)."""

    @property
    def slm_tokens(self) -> int:
        return self.slm.tokens

    @property
    def llm_tokens(self) -> int:
        return self.llm.tokens

    @property
    def slm_share(self) -> float:
        return self.slm.tokens / self.output_tokens if self.output_tokens else 0.0

    @property
    def busy_seconds(self) -> float:
        """Wall time minus idle time: what decoding this request cost."""
        return max(self.wall_seconds - self.idle_seconds, 0.0)

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.busy_seconds if self.busy_seconds > 0 else 0.0

    @property
    def speedup(self) -> float | None:
        """LLM-alone seconds / busy seconds: concurrency and slow consumers do not distort it."""
        if self.llm_alone_seconds is None or self.busy_seconds <= 0:
            return None
        return self.llm_alone_seconds / self.busy_seconds

    def with_measured_llm_alone(self, alone: AloneResult) -> "StitchStats":
        """These stats with the speedup measured against an LLM-alone run of the same request."""
        return dataclasses.replace(self, llm_alone_seconds=alone.seconds, llm_alone_tokens=len(alone.token_ids),
                                   speedup_basis="measured")

    def to_dict(self) -> dict[str, object]:
        """Flat, JSON-ready summary (the keys the adapters report)."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "slm_tokens": self.slm_tokens,
            "llm_tokens": self.llm_tokens,
            "slm_share": self.slm_share,
            "discarded_slm_tokens": self.discarded_slm_tokens,
            "switches_to_llm": self.switches_to_llm,
            "switches_to_slm": self.switches_to_slm,
            "slm_catchup_tokens": self.slm.catchup_tokens,
            "llm_catchup_tokens": self.llm.catchup_tokens,
            "slm_catchup_seconds": self.slm.catchup_seconds,
            "llm_catchup_seconds": self.llm.catchup_seconds,
            "slm_decode_seconds": self.slm.decode_seconds,
            "llm_decode_seconds": self.llm.decode_seconds,
            "slm_forward_passes": self.slm.forward_passes,
            "llm_forward_passes": self.llm.forward_passes,
            "wall_seconds": self.wall_seconds,
            "idle_seconds": self.idle_seconds,
            "largest_batch": self.largest_batch,
            "forced_tokens": self.forced_tokens,
            "proposed_tokens": self.proposed_tokens,
            "confirmed_tokens": self.confirmed_tokens,
            "busy_seconds": self.busy_seconds,
            "tokens_per_second": self.tokens_per_second,
            "finish_reason": self.finish_reason,
            "router": self.router,
            "threshold": self.threshold,
            "policy": self.policy,
            "policy_reason": self.policy_reason,
            "llm_alone_seconds": self.llm_alone_seconds,
            "llm_alone_tokens": self.llm_alone_tokens,
            "speedup": self.speedup,
            "speedup_basis": self.speedup_basis,
        }
