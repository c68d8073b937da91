"""accounting: the thread-safe ledger both adapters' cost handlers use (no model, no framework)."""

from __future__ import annotations

import threading

import pytest

from rstitch_engine import InvalidSettingError
from rstitch_integrations.accounting import REQUIRED_STATS_KEYS, ModelPrice, StitchLedger


def stats(**overrides: object) -> dict[str, object]:
    """A stats dict shaped like StitchStats.to_dict(), with easy numbers."""
    base: dict[str, object] = {
        "prompt_tokens": 30, "output_tokens": 10, "slm_tokens": 7, "llm_tokens": 3, "slm_share": 0.7,
        "discarded_slm_tokens": 2, "switches_to_llm": 2, "switches_to_slm": 1,
        "slm_catchup_tokens": 31, "llm_catchup_tokens": 35, "slm_catchup_seconds": 0.25, "llm_catchup_seconds": 0.5,
        "slm_decode_seconds": 0.5, "llm_decode_seconds": 1.0, "wall_seconds": 2.5, "idle_seconds": 0.0, "busy_seconds": 2.5,
        "finish_reason": "stop",
        "llm_alone_seconds": 5.0, "speedup": 2.0, "speedup_basis": "estimated",
    }
    return {**base, **overrides}


def test_totals_add_up_exactly() -> None:
    ledger = StitchLedger({"slm": ModelPrice(per_1k_tokens=1.0), "llm": ModelPrice(per_1k_tokens=10.0, per_second=2.0)})
    ledger.record(stats())
    ledger.record(stats(slm_tokens=0, llm_tokens=4, output_tokens=4, llm_alone_seconds=None, wall_seconds=1.5,
                         busy_seconds=1.5))
    totals = ledger.totals
    assert (totals.requests, totals.prompt_tokens, totals.output_tokens) == (2, 60, 14)
    assert (totals.slm.tokens, totals.llm.tokens) == (7, 7)
    assert (totals.slm.catchup_tokens, totals.llm.catchup_tokens) == (62, 70)
    assert (totals.slm.seconds, totals.llm.seconds) == (1.5, 3.0)
    assert (totals.discarded_slm_tokens, totals.switches_to_llm, totals.switches_to_slm) == (4, 4, 2)
    assert totals.wall_seconds == totals.busy_seconds == 4.0
    # costs: SLM 7 tokens at 1/1k; LLM 7 tokens at 10/1k plus 3 s at 2/s
    assert totals.slm.cost == pytest.approx(0.007, abs=1e-15)
    assert totals.llm.cost == pytest.approx(0.07 + 6.0, abs=1e-12)
    assert totals.cost == pytest.approx(totals.slm.cost + totals.llm.cost, abs=0)
    # speedup only over the request whose LLM-alone time is known: 5.0 s alone / 2.5 s busy
    assert (totals.timed_requests, totals.timed_busy_seconds, totals.llm_alone_seconds) == (1, 2.5, 5.0)
    assert totals.speedup == 2.0
    # LLM alone for that request: 10 tokens at 10/1k + 5 s at 2/s; stitched it cost 0.007 + 0.03 + 3.0
    assert totals.llm_alone_cost == pytest.approx(10.1, abs=1e-12)
    assert totals.savings == pytest.approx(10.1 - 3.037, abs=1e-12)
    assert totals.to_dict()["speedup"] == 2.0


def test_no_timed_requests_means_no_speedup_and_no_savings() -> None:
    ledger = StitchLedger()
    assert ledger.totals.speedup is None
    ledger.record(stats(llm_alone_seconds=None))
    assert (ledger.totals.speedup, ledger.totals.savings, ledger.totals.cost) == (None, None, 0.0)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (stats(output_tokens=-1), "'output_tokens' must be a finite number >= 0"),
        (stats(wall_seconds=float("nan")), "'wall_seconds' must be a finite number >= 0"),
        (stats(slm_tokens="7"), "'slm_tokens' must be a finite number >= 0"),
        ({k: v for k, v in stats().items() if k != "llm_tokens"}, r"lacks \['llm_tokens'\]"),
        ("not a dict", "expected a stitch stats dict"),
    ],
)
def test_bad_stats_raise_and_record_nothing(bad: object, message: str) -> None:
    ledger = StitchLedger()
    ledger.record(stats())
    before = ledger.totals
    with pytest.raises(InvalidSettingError, match=message):
        ledger.record(bad)  # type: ignore[arg-type]
    assert ledger.totals == before


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ModelPrice(per_1k_tokens=-1), "per_1k_tokens must be a finite number >= 0"),
        (lambda: ModelPrice(per_second=float("inf")), "per_second must be a finite number >= 0"),
        (lambda: StitchLedger({"gpt": ModelPrice()}), "keyed by 'slm' and 'llm'"),
        (lambda: StitchLedger({"llm": 0.5}), "must be ModelPrice objects"),  # type: ignore[dict-item]
    ],
)
def test_bad_prices_are_rejected(make, message: str) -> None:
    with pytest.raises(InvalidSettingError, match=message):
        make()


def test_concurrent_records_are_all_counted() -> None:
    ledger = StitchLedger({"llm": ModelPrice(per_1k_tokens=1000.0)})  # 1 per LLM token: exact in floats
    threads = [threading.Thread(target=lambda: [ledger.record(stats()) for _ in range(250)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    totals = ledger.totals
    assert totals.requests == 2000
    assert totals.output_tokens == 20000
    assert totals.llm.cost == 6000.0


def test_reset_returns_the_totals_and_starts_from_zero() -> None:
    ledger = StitchLedger()
    ledger.record(stats())
    assert ledger.reset().requests == 1
    assert ledger.totals.requests == 0


def test_required_keys_are_keys_of_the_engine_stats(real_stats_keys: set[str]) -> None:
    assert set(REQUIRED_STATS_KEYS) <= real_stats_keys


@pytest.fixture
def real_stats_keys() -> set[str]:
    """Keys of a real StitchStats.to_dict(), built without a model."""
    from rstitch_engine import ModelUsage, StitchStats

    usage = ModelUsage(0, 0, 0, 0.0, 0, 0, 0.0)
    record = StitchStats(1, 0, usage, usage, 0, 0, 0, 0.0, 0.0, "stop", "EntropyRouter", 0.1, None, "unavailable")
    return set(record.to_dict())
