"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own.

Counters and histograms are updated by ``service.StitchService`` as requests run: one
observation per request (its stats), one per token (inter-token latency), one per first token.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from rstitch_engine import StitchStats

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_SPEEDUP_BUCKETS = (0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4)


class ServerMetrics:
    """The server's metrics; ``render()`` is the Prometheus text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rstitch_requests", "Requests answered, by endpoint and HTTP status",
                                ["endpoint", "status"], registry=r)
        self.tokens = Counter("rstitch_output_tokens", "Output tokens, by the model that wrote them", ["model"],
                              registry=r)
        self.prompt_tokens = Counter("rstitch_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.switches = Counter("rstitch_switches", "Control switches, by direction", ["direction"], registry=r)
        self.running = Gauge("rstitch_requests_running", "Requests decoding now (they share the batch)", registry=r)
        self.queue_depth = Gauge("rstitch_queue_depth",
                                 "Requests accepted that have not produced their first token yet", registry=r)
        self.batch_size = Histogram("rstitch_batch_size",
                                    "Largest batch each request's forward passes were shared with", registry=r,
                                    buckets=_BATCH_BUCKETS)
        self.ttft = Histogram("rstitch_time_to_first_token_seconds", "Time from request to first token",
                              registry=r, buckets=_LATENCY_BUCKETS)
        self.itl = Histogram("rstitch_inter_token_latency_seconds", "Time between two tokens of one request",
                             registry=r, buckets=_LATENCY_BUCKETS)
        self.speedup = Histogram("rstitch_speedup", "Per-request speedup against the LLM alone (where known)",
                                 registry=r, buckets=_SPEEDUP_BUCKETS)
        self.disconnects = Counter("rstitch_client_disconnects", "Streams whose client went away mid-answer",
                                   registry=r)

    def record_stats(self, stats: StitchStats) -> None:
        """One finished request's accounting."""
        self.tokens.labels("slm").inc(stats.slm_tokens)
        self.tokens.labels("llm").inc(stats.llm_tokens)
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.switches.labels("slm_to_llm").inc(stats.switches_to_llm)
        self.switches.labels("llm_to_slm").inc(stats.switches_to_slm)
        self.batch_size.observe(stats.largest_batch)
        if stats.speedup is not None:
            self.speedup.observe(stats.speedup)

    def render(self) -> bytes:
        return generate_latest(self.registry)
