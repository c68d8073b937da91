"""Measurement: the quality suite, decoding traces and the cost model's calibration.

``quality`` is the deterministic question suite (tuning and held-out parts) that taus, drafts and
routers are judged on; ``trace`` records a stitched run's pass-by-pass schedule and replays it
exactly (the performance harness's input); ``cost_calibration`` times forward passes to fit a
pair's cost model. Benchmarks in ``benchmarks/`` and the training code use these.

Invariant: imports ``decoding`` and ``models`` but is never imported by them.
"""
