"""rstitch_engine: R-Stitch stitched decoding of a small and a large causal LM.

The SLM decodes; where its next-token distribution is uncertain (normalised entropy above tau) its
token is discarded and the LLM decodes until it is confident again. No LangChain or LlamaIndex
import anywhere in this package.
"""

from .decoding.constraints import Grammar
from .decoding.engine import GenerationResult, StitchEngine, StitchRequest, StitchStream
from .decoding.registry import shared_engine
from .decoding.routers import (
    DEFAULT_QUALITY,
    QUALITY_THRESHOLDS,
    AlwaysLLMRouter,
    AlwaysSLMRouter,
    EntropyRouter,
    PromptLengthRouter,
    Quality,
    RouterName,
    default_router,
    router_for_quality,
    router_named,
)
from .decoding.routing import Router, RouterState
from .decoding.sampling import normalised_entropy
from .decoding.settings import GenerationSettings
from .decoding.stats import ModelUsage, StitchStats, TokenEvent
from .errors import (
    EmptyPromptError,
    InvalidSettingError,
    ModelLoadError,
    PromptTooLongError,
    RStitchError,
    TokenizerMismatchError,
)
from .models.defaults import DEFAULT_LLM, DEFAULT_SLM, DEFAULT_THRESHOLD
from .models.execution import ExecutionConfig
from .models.loading import ModelSpec, load_pair
from .models.openmp import release_openmp_team
from .models.pair import ModelPair

__all__ = [
    "DEFAULT_LLM",
    "DEFAULT_QUALITY",
    "DEFAULT_SLM",
    "DEFAULT_THRESHOLD",
    "AlwaysLLMRouter",
    "AlwaysSLMRouter",
    "EmptyPromptError",
    "EntropyRouter",
    "PromptLengthRouter",
    "ExecutionConfig",
    "GenerationResult",
    "Grammar",
    "GenerationSettings",
    "InvalidSettingError",
    "ModelLoadError",
    "ModelPair",
    "ModelSpec",
    "ModelUsage",
    "PromptTooLongError",
    "RStitchError",
    "Router",
    "Quality",
    "QUALITY_THRESHOLDS",
    "RouterName",
    "RouterState",
    "StitchEngine",
    "StitchRequest",
    "StitchStats",
    "StitchStream",
    "TokenEvent",
    "TokenizerMismatchError",
    "default_router",
    "load_pair",
    "normalised_entropy",
    "release_openmp_team",
    "router_for_quality",
    "router_named",
    "shared_engine",
]
