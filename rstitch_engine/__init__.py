"""rstitch_engine: R-Stitch stitched decoding of a small and a large causal LM.

The SLM decodes; where its next-token distribution is uncertain (normalised entropy above tau) its
token is discarded and the LLM decodes until it is confident again. No LangChain or LlamaIndex
import anywhere in this package.
"""

from .decoding.constraints import Grammar
from .decoding.engine import GenerationResult, StitchEngine, StitchRequest, StitchStream
from .decoding.policy import (
    DEFAULT_AGREEMENT_TARGET,
    DEFAULT_QUALITY,
    QUALITY_THRESHOLDS,
    Policy,
    Quality,
    Routing,
    resolve_policy,
)
from .decoding.profile import MeasuredConfig, PairProfile, find_profile
from .decoding.registry import shared_engine
from .decoding.routers import AlwaysLLMRouter, AlwaysSLMRouter, EntropyRouter, RouterName, router_named
from .decoding.routing import Router, RouterBase, RouterState
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
    "AlwaysLLMRouter",
    "AlwaysSLMRouter",
    "DEFAULT_AGREEMENT_TARGET",
    "DEFAULT_LLM",
    "DEFAULT_QUALITY",
    "DEFAULT_SLM",
    "DEFAULT_THRESHOLD",
    "EmptyPromptError",
    "EntropyRouter",
    "ExecutionConfig",
    "GenerationResult",
    "GenerationSettings",
    "Grammar",
    "InvalidSettingError",
    "MeasuredConfig",
    "ModelLoadError",
    "ModelPair",
    "ModelSpec",
    "ModelUsage",
    "PairProfile",
    "Policy",
    "PromptTooLongError",
    "QUALITY_THRESHOLDS",
    "Quality",
    "RStitchError",
    "Router",
    "RouterBase",
    "RouterName",
    "RouterState",
    "Routing",
    "StitchEngine",
    "StitchRequest",
    "StitchStats",
    "StitchStream",
    "TokenEvent",
    "TokenizerMismatchError",
    "find_profile",
    "load_pair",
    "normalised_entropy",
    "release_openmp_team",
    "resolve_policy",
    "router_named",
    "shared_engine",
]
