"""The R-Stitch+ router shipped for the default pair: the default of router='learned' in the engine, the
CLI and both adapters; consulted only above its tau; stable decisions on fixed prompts."""

from __future__ import annotations

import pytest
from helpers import RecordingRouter

from rstitch_engine import GenerationSettings, router_named
from rstitch_engine.cli import main
from rstitch_engine.decoding.learned_router import (
    DEFAULT_ROUTER,
    ROUTER_CONFIG,
    ROUTER_WEIGHTS,
    LearnedRouter,
    load_learned_router,
)

pytestmark = [pytest.mark.real_model, pytest.mark.usefixtures("one_torch_thread")]

PAIR = "smollm2-135m-instruct-draft+smollm2-135m-instruct"
# Greedy output (24 tokens at most, float32, CPU) of the default pair with the shipped router and
# which model wrote each token, recorded once; a change means the router, its loading, the
# draft or the engine changed.
EXPECTED = {
    # "The capital of France is Paris." + <|im_end|>: asked twice, the router hands both to the LLM
    "What is the capital of France?": (
        [504, 3575, 282, 4649, 314, 7042, 30, 2],
        "ssslslss",
        [True, True],
    ),
    # "To add 7 and 8, we need to combine the numbers in a way that results in a single number with":
    # asked once, the router keeps the draft's token (its cost: no sum yet after 24 tokens)
    "What is 7 + 8?": (
        [2068, 803, 216, 39, 284, 216, 40, 28, 392, 737, 288, 8993, 260, 2966, 281, 253, 970, 338, 1844, 281, 253,
         2244, 1230, 351],
        "ssssssssssssssssssssssss",
        [False],
    ),
}


def test_the_shipped_router_is_the_default_learned_router_and_fits_the_default_pair(real_engine):
    assert {p.name for p in DEFAULT_ROUTER.iterdir()} == {ROUTER_CONFIG, ROUTER_WEIGHTS}
    router = load_learned_router()
    assert isinstance(router_named("learned", 0.9), LearnedRouter)
    assert router_named("learned", 0.9).threshold == router.threshold == 0.1  # its trained tau, not the argument
    assert router.config.pair == PAIR
    assert router.config.hidden_size == real_engine.pair.slm.model.config.hidden_size
    assert router.config.training["lam"] == 0.5 and router.config.training["trained_steps"] == 40


@pytest.mark.parametrize("question", list(EXPECTED))
def test_the_shipped_router_gives_stable_output_and_is_asked_only_above_tau(real_engine_float32, question):
    recorder = RecordingRouter(load_learned_router())
    prompt = [{"role": "user", "content": question}]
    result = real_engine_float32.generate(prompt, GenerationSettings(max_new_tokens=24), recorder)
    ids, sources, answers = EXPECTED[question]
    assert (list(result.token_ids), "".join(e.source[0] for e in result.events)) == (ids, sources), result.text
    assert recorder.calls and all(state.entropy > recorder.threshold for state, _ in recorder.calls)
    assert [answer for _, answer in recorder.calls] == answers  # across the two prompts: both ways


def test_cli_and_both_adapters_use_the_shipped_router_from_one_field(real_engine, capsys):
    assert main(["generate", "What is the capital of France?", "--router", "learned", "--max-tokens", "24"]) == 0
    out = capsys.readouterr().out
    assert "policy R-Stitch+ (learned) tau=0.1" in out and "R-Stitch stats" in out

    pytest.importorskip("langchain_core")
    from rstitch_integrations.langchain import ChatRStitch

    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    expected = real_engine.generate(prompt, GenerationSettings(max_new_tokens=24), load_learned_router()).text
    chat = ChatRStitch(engine=real_engine, router="learned", max_tokens=24)
    assert chat.invoke("What is the capital of France?").content == expected

    pytest.importorskip("llama_index.core")
    from llama_index.core.llms import ChatMessage

    from rstitch_integrations.llamaindex import RStitchLLM

    llm = RStitchLLM(engine=real_engine, router="learned", max_tokens=24)
    assert llm.chat([ChatMessage(role="user", content="What is the capital of France?")]).message.content == expected
