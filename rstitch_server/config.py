"""What ``rstitch serve`` runs: the pair, the default options of its requests, and where it listens.

``ServeConfig`` is plain data (it travels to every Ray Serve replica, which loads its own engine
from it); ``load_service`` loads the pair and wraps it in a ``StitchService``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rstitch_engine import DEFAULT_LLM, DEFAULT_SLM, InvalidSettingError, ModelSpec, StitchEngine, load_pair
from rstitch_engine.decoding.engine import DEFAULT_LLM_WAIT_STEPS, DEFAULT_MAX_BATCH_SIZE
from rstitch_engine.models.loading import Backend
from rstitch_integrations.core import StitchOptions

from .service import StitchService


class ServeConfig(BaseModel):
    """The options of ``rstitch serve`` (the CLI flags of the same names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    llm: str = DEFAULT_LLM
    slm: str | None = None
    slm_layers: int | None = None
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device_map: str | None = None
    trust_remote_code: bool = False
    backend: Backend = "transformers"
    request_defaults: dict[str, Any] = Field(default_factory=dict)
    """``StitchOptions`` fields every request starts from (threshold, router, quality, max_tokens, ...)."""
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    llm_wait_steps: int = DEFAULT_LLM_WAIT_STEPS
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    drain_seconds: float = 30.0
    """On SIGTERM, how long requests in flight may run on before the server stops anyway."""

    def options(self) -> StitchOptions:
        """The requests' default options (validated: a bad threshold or preset raises before loading)."""
        return StitchOptions(llm=self.llm, slm=self.slm, backend=self.backend, **self.request_defaults)

    @property
    def model_id(self) -> str:
        """The one model id ``GET /v1/models`` lists."""
        return self.options().model_name

    def load_engine(self) -> StitchEngine:
        common: dict[str, Any] = dict(device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code,
                                      backend=self.backend)
        llm = ModelSpec(self.llm, device_map=self.device_map, **common)
        if self.slm is not None or self.slm_layers is not None:
            slm = ModelSpec(self.slm or self.llm, num_layers=self.slm_layers, **common)
        elif self.llm == DEFAULT_LLM:
            slm = ModelSpec(DEFAULT_SLM, **common)
        else:
            raise InvalidSettingError("give --slm (or --slm-layers): only the default LLM has a built-in SLM")
        return StitchEngine(load_pair(slm, llm), max_batch_size=self.max_batch_size,
                            llm_wait_steps=self.llm_wait_steps)


def load_service(config: ServeConfig) -> StitchService:
    """Load the pair and return the service that answers requests with it."""
    options = config.options()  # before loading: a bad option fails fast
    return StitchService(config.load_engine(), options, config.model_id)
