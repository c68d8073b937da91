"""``rstitch serve --ray``: the same app on Ray Serve, N replicas each holding one engine.

Ray Serve's HTTP proxy is the ingress (``--host``/``--port``) and spreads requests over the
replicas; each replica builds the app of ``app.create_app`` around its own ``StitchService``
(loaded from the ``ServeConfig``, which travels as plain data), so a replica answers exactly as a
single server does, streaming included. A replica whose health check fails or whose process dies is
replaced by Ray Serve while the others keep serving.

On a cluster: ``ray start --head`` on one node, ``ray start --address HEAD:6379`` on the others,
then ``rstitch serve --ray --ray-address auto --replicas N`` on the head (docs/serving.md).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from .app import create_app
from .config import ServeConfig, load_service

APP_NAME = "rstitch"


def deployment(config: ServeConfig, replicas: int, gpus_per_replica: float = 0.0,
               cpus_per_replica: float = 1.0) -> Any:
    """The bound Ray Serve application: ``replicas`` copies of the server, each loading its own engine."""
    from ray import serve

    @serve.deployment(name="rstitch", num_replicas=replicas, max_ongoing_requests=256,
                      ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
                      health_check_period_s=5, health_check_timeout_s=30, graceful_shutdown_timeout_s=30)
    @serve.ingress()
    class StitchReplica:
        """One replica: an engine and the OpenAI-compatible app around it."""

        def __init__(self, config_data: dict[str, Any]) -> None:
            self.config = ServeConfig.model_validate(config_data)
            self.service = load_service(self.config)

        def __serve_build_asgi_app__(self) -> Any:
            app = create_app(self.service, self.config.api_key)
            return app

        def check_health(self) -> None:
            """Ray Serve's probe: a replica whose service has shut down is replaced."""
            if self.service.closed:
                raise RuntimeError("the replica's service has shut down")

    return StitchReplica.bind(config.model_dump())


def run_on_ray(config: ServeConfig, replicas: int, address: str | None = None, gpus_per_replica: float = 0.0,
               cpus_per_replica: float = 1.0, log: Callable[[str], Any] = print) -> None:
    """Deploy on Ray (a running cluster at ``address``, else a local instance) and serve until SIGTERM/Ctrl-C."""
    import ray
    from ray import serve

    ray.init(address=address, include_dashboard=False, logging_level="warning")
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(deployment(config, replicas, gpus_per_replica, cpus_per_replica), name=APP_NAME, route_prefix="/")
    log(f"serving {config.model_id} on http://{config.host}:{config.port}/v1 with {replicas} Ray Serve replicas")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()  # replicas finish their requests (graceful_shutdown_timeout_s), then stop
    ray.shutdown()
