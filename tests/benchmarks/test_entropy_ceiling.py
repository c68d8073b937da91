"""The offline replay of Algorithm 1 (benchmarks/entropy_ceiling.py) against the engine itself, on tiny pairs."""

from __future__ import annotations

import pytest
from helpers import load_benchmark
from tiny import CORPUS, tiny_engine

from rstitch_engine import EntropyRouter, GenerationSettings
from rstitch_engine.models.cost_model import PairCostModel, PassCost

COST = PairCostModel(slm=PassCost(1e-3, 2e-4, 1e-6), llm=PassCost(4e-3, 8e-4, 4e-6), pair="tiny")
PROMPTS = [text[:24] for text in CORPUS[:5]]


@pytest.mark.parametrize("hand_back", [None, 0.9])
@pytest.mark.parametrize("same_model", [False, True])
@pytest.mark.parametrize("tau", [-0.1, 0.6, 0.7, 0.8, 1.0])
def test_the_replay_is_the_engines_run_whenever_it_reproduces_the_llms_answer(same_model, tau, hand_back):
    ceiling = load_benchmark("entropy_ceiling")
    engine = tiny_engine(same_model=same_model)
    settings = GenerationSettings(max_new_tokens=12)
    for prompt in PROMPTS:
        ids = engine.encode(prompt)
        answer = engine.decode_alone("llm", ids, settings).token_ids
        forced = ceiling.forced_answer(engine, ids, answer)
        replayed = ceiling.replay(forced, tau, COST, hand_back=hand_back)
        stream = engine.stream(ids, settings, EntropyRouter(tau, hand_back_threshold=hand_back))
        output = tuple(event.token_id for event in stream)
        assert replayed.reproduced == (output == answer)
        if replayed.reproduced:  # the same forward passes, so the same predicted time and routing
            assert replayed.seconds == pytest.approx(COST.predict(stream.request.records()), rel=1e-12)
            assert replayed.slm_tokens == stream.stats.slm_tokens
            assert replayed.switches == stream.stats.switches_to_llm
        if same_model:  # an SLM identical to the LLM is the oracle
            assert replayed.reproduced and replayed == ceiling.replay(forced, tau, COST, oracle=True, hand_back=hand_back)


def test_the_oracle_always_reproduces_and_the_table_has_a_row_per_tau():
    ceiling = load_benchmark("entropy_ceiling")
    engine = tiny_engine()
    settings = GenerationSettings(max_new_tokens=10)
    answers = []
    for prompt in PROMPTS:
        ids = engine.encode(prompt)
        answers.append(ceiling.forced_answer(engine, ids, engine.decode_alone("llm", ids, settings).token_ids))
    rows = ceiling.summarise(answers, [0.6, 1.0], COST, hand_backs=[0.8])
    assert [row["tau"] for row in rows] == [0.6, 1.0]
    assert all(row["oracle"]["reproduced"] == 1.0 for row in rows)
    assert rows[1]["oracle"]["slm_share"] == 1.0 and rows[1]["oracle"]["switches"] == 0  # tau >= 1: the SLM alone
    table = ceiling.markdown_table(rows).splitlines()
    assert len(table) == 4 and table[2].startswith("| 0.6 |")
    assert [h["at"] for h in rows[0]["hand_back"]] == [0.8] and rows[1]["hand_back"] == []  # only hand-backs looser than tau
    hand_back_lines = ceiling.hand_back_table(rows).splitlines()[2:]  # Algorithm 1's row, then each looser hand-back
    assert [line.split(" | ")[:2] for line in hand_back_lines] == [["| 0.6", "0.6"], ["| 0.6", "0.8"], ["| 1", "1"]]
