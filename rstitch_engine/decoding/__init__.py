"""The stitched decoding core: Algorithm 1 of R-Stitch and what one step of it needs.

``engine`` runs the loop (``StitchEngine.stream`` -> ``TokenEvent``) through the ``scheduler``;
``request`` is one request's step (plan -> the models' runners run it -> apply); ``routing`` is the router protocol, ``routers`` and ``learned_router`` its
implementations (R-Stitch's entropy rule, the baselines, R-Stitch+ inference); ``sampling``,
``detokenize``, ``settings`` and ``stats`` are the per-step pieces; ``alone`` is the one-model loop
that speedups are measured against; ``speedup`` estimates the LLM alone from a request's own passes.

Invariants: this package imports nothing from ``rstitch_engine.training`` or
``rstitch_engine.measure`` (a test walks the imports), and never LangChain or LlamaIndex. It may
import ``rstitch_engine.models`` (loading, the pair, the runners, the cost model) and
``rstitch_engine.errors``; nothing here depends on the inference library a runner wraps.
"""
