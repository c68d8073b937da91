"""``rstitch serve``: an OpenAI-compatible HTTP server over one stitched engine.

Layers, each importing only those above it in this list:

* ``protocol``: request bodies (pydantic) and the OpenAI error shape;
* ``metrics``: the Prometheus registry;
* ``service``: requests -> the adapters' framework-free core (``rstitch_integrations.core``) ->
  steps, read on worker threads; all requests share the engine's batching scheduler;
* ``wire``: steps -> OpenAI chunks and responses, with the ``rstitch`` attribution field;
* ``app``: the FastAPI routes, auth, errors, draining;
* ``config`` and ``launch``: what to serve and running it under uvicorn (drain on SIGTERM);
* ``ray_serve``: the same app as a Ray Serve deployment of N replicas (optional ``ray`` extra).

Invariants: no LangChain or LlamaIndex import; no request can stop the server (a bad one gets a
4xx, a fault a 500); every opened request is closed, whoever ends it (its end, an error, the
client going away).
"""

from .app import create_app
from .config import ServeConfig, load_service
from .service import StitchService

__all__ = ["ServeConfig", "StitchService", "create_app", "load_service"]
