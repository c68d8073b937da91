"""Running the app under uvicorn, with a bounded drain on SIGTERM.

The first SIGTERM (or Ctrl-C) sets the app to draining: new ``/v1`` requests get 503, the requests
in flight run to their end; once none is left, or ``drain_seconds`` have passed, uvicorn shuts
down (and closes what is still open). A second signal stops at once.
"""

from __future__ import annotations

import time
from types import FrameType

import uvicorn
from fastapi import FastAPI
from rich.console import Console

from .app import create_app
from .config import ServeConfig, load_service
from .service import StitchService


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` whose first exit signal drains the app instead of closing connections."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, service: StitchService, drain_seconds: float) -> None:
        super().__init__(config)
        self.app, self.service, self.drain_seconds = app, service, drain_seconds
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_deadline is not None:  # a second signal: stop now
            self.should_exit = self.force_exit = True
            return
        self.app.state.draining = True
        self.drain_deadline = time.monotonic() + self.drain_seconds

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and (self.service.in_flight == 0 or time.monotonic() > self.drain_deadline):
            self.should_exit = True
        return await super().on_tick(counter)


def run_server(config: ServeConfig, service: StitchService | None = None, log_level: str = "info") -> None:
    """Serve until SIGTERM/Ctrl-C (then drain). ``service``: an already loaded one (else loaded from ``config``)."""
    service = service or load_service(config)
    app = create_app(service, config.api_key)
    uv_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                               timeout_graceful_shutdown=5, lifespan="off")
    server = DrainingServer(uv_config, app, service, config.drain_seconds)
    try:
        server.run()
    finally:
        service.shutdown()




def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The ``ServeConfig`` of ``rstitch serve``'s parsed flags (only the router options given are set, so that
    the default preset applies when none is)."""
    defaults: dict[str, Any] = {"max_tokens": args.max_tokens}
    for name in ("threshold", "router", "router_path", "quality", "agreement_target", "prompt_lookup_tokens"):
        if getattr(args, name) is not None:
            defaults[name] = getattr(args, name)
    return ServeConfig(llm=args.llm, slm=args.slm, slm_layers=args.slm_layers, device=args.device, dtype=args.dtype,
                       device_map=args.device_map, trust_remote_code=args.trust_remote_code, backend=args.backend,
                       request_defaults=defaults, max_batch_size=args.max_batch_size, host=args.host, port=args.port,
                       api_key=args.api_key, drain_seconds=args.drain_seconds)


def serve_from_args(args: argparse.Namespace, console: Console) -> int:
    """``rstitch serve``: load the pair and serve it here, or deploy it on Ray Serve (``--ray``)."""
    config = config_from_args(args)
    config.options()  # a bad option fails before any weights load
    if args.ray:
        from .ray_serve import run_on_ray

        run_on_ray(config, replicas=args.replicas, address=args.ray_address, gpus_per_replica=args.gpus_per_replica,
                   cpus_per_replica=args.cpus_per_replica, log=console.print)
        return 0
    with console.status(f"loading {config.model_id}", spinner="dots"):
        service = load_service(config)
    auth = "API key required" if config.api_key else "no API key"
    console.print(f"serving {config.model_id} on http://{config.host}:{config.port}/v1 ({auth})")
    run_server(config, service)
    return 0
