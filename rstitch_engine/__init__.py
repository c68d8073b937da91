"""rstitch_engine: R-Stitch stitched decoding of a small and a large causal LM.

The SLM decodes; where its next-token distribution is uncertain (normalised entropy above tau) its
token is discarded and the LLM decodes until it is confident again. No LangChain or LlamaIndex
import anywhere in this package.
"""

from .defaults import DEFAULT_LLM, DEFAULT_SLM, DEFAULT_THRESHOLD
from .engine import GenerationResult, StitchEngine, StitchRequest, StitchStream
from .errors import (
    EmptyPromptError,
    InvalidSettingError,
    ModelLoadError,
    PromptTooLongError,
    RStitchError,
    TokenizerMismatchError,
)
from .loading import ModelSpec, load_pair
from .pair import ModelPair
from .registry import shared_engine
from .routers import AlwaysLLMRouter, AlwaysSLMRouter, EntropyRouter, Router, RouterName, RouterState, router_named
from .sampling import normalised_entropy
from .settings import GenerationSettings
from .stats import ModelUsage, StitchStats, TokenEvent

__all__ = [
    "DEFAULT_LLM",
    "DEFAULT_SLM",
    "DEFAULT_THRESHOLD",
    "AlwaysLLMRouter",
    "AlwaysSLMRouter",
    "EmptyPromptError",
    "EntropyRouter",
    "GenerationResult",
    "GenerationSettings",
    "InvalidSettingError",
    "ModelLoadError",
    "ModelPair",
    "ModelSpec",
    "ModelUsage",
    "PromptTooLongError",
    "RStitchError",
    "Router",
    "RouterName",
    "RouterState",
    "StitchEngine",
    "StitchRequest",
    "StitchStats",
    "StitchStream",
    "TokenEvent",
    "TokenizerMismatchError",
    "load_pair",
    "normalised_entropy",
    "router_named",
    "shared_engine",
]
