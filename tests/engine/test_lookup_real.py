"""Prompt lookup on the real default pair (float32), on retrieval and multi-turn prompts.

A pass over several tokens sums in another order than one-token passes, so float32 logits differ
in the last bits. On the prompts below (the generalisation suite's held-out ``rag`` and
``multiturn`` items, whose answers copy names and numbers from the context) the answers with
lookup are identical to those without; should a change ever make one differ, the test checks that
the run without lookup was on a knife edge there (``assert_same_or_knife_edge``), proving the difference
numeric, and fails otherwise.
"""

from __future__ import annotations

import pytest
from engine.test_batching_real import assert_same_or_knife_edge

from rstitch_engine import EntropyRouter, GenerationSettings, StitchEngine
from rstitch_engine.decoding.routers import AlwaysLLMRouter
from rstitch_engine.measure.generalisation import generalisation_suite

pytestmark = pytest.mark.real_model

SETTINGS = GenerationSettings(max_new_tokens=24, prompt_lookup_tokens=0)
LOOKUP = SETTINGS.replace(prompt_lookup_tokens=4)


def prompts() -> list:
    items = generalisation_suite("heldout")
    return [item.messages() for skill in ("rag", "multiturn") for item in [i for i in items if i.skill == skill][:3]]


@pytest.mark.parametrize("router", [AlwaysLLMRouter(), EntropyRouter(0.05)], ids=["exact", "tau-0.05"])
def test_lookup_gives_the_answers_without_it_and_confirms_copied_tokens(real_engine_float32, router):
    engine = StitchEngine(real_engine_float32.pair, router, SETTINGS)
    asked = prompts()
    plain = engine.generate_batch(asked, SETTINGS)
    looked_up = engine.generate_batch(asked, LOOKUP)
    for prompt, without, with_lookup in zip(asked, plain, looked_up):
        assert_same_or_knife_edge(engine, prompt, without, with_lookup, router.threshold)
    assert sum(r.stats.confirmed_tokens for r in looked_up) >= len(asked)
    if isinstance(router, AlwaysLLMRouter):  # the LLM alone through the loop: what quality='exact' runs
        alone = [engine.decode_alone("llm", p, SETTINGS).token_ids for p in asked]
        assert [r.token_ids for r in plain] == alone


def test_the_cli_reports_prompt_lookup_for_the_exact_preset(real_engine, capsys):
    from rstitch_engine.cli import main

    repeat = "Repeat exactly: the blue whale is the largest animal. The blue whale is the largest animal."
    assert main(["generate", repeat, "--quality", "exact", "--max-tokens", "16"]) == 0
    assert "prompt lookup: kept / proposed" in capsys.readouterr().out
    assert main(["generate", repeat, "--quality", "exact", "--max-tokens", "16", "--prompt-lookup", "0"]) == 0
    assert "prompt lookup" not in capsys.readouterr().out
