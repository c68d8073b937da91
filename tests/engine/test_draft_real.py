"""The draft shipped for SmolLM2-135M-Instruct: small, loads on the default LLM, stable output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rstitch_engine import EntropyRouter, GenerationSettings, ModelSpec, StitchEngine, load_pair
from rstitch_engine.models.defaults import DEFAULT_LLM, DEFAULT_SLM, SHIPPED_DRAFTS, resolve_alias
from rstitch_engine.models.draft import DRAFT_CONFIG, DRAFT_WEIGHTS, DraftConfig, draft_layer_parameters

pytestmark = [pytest.mark.real_model, pytest.mark.usefixtures("one_torch_thread")]

DRAFT = SHIPPED_DRAFTS[DEFAULT_SLM]
# Greedy output (16 tokens at most) of the shipped draft alone and of the stitched pair at tau = 0.1
# (float32, CPU), recorded once; a change means the draft, its loading or the engine changed.
EXPECTED = {
    "What is the capital of France?": (
        # "The capital of the French-speaking city of France is Paris." + <|im_end|>
        [504, 3575, 282, 260, 3432, 29, 17752, 2240, 282, 4649, 314, 7042, 30, 2],
        [504, 3575, 282, 4649, 314, 7042, 30, 2],  # "The capital of France is Paris." + <|im_end|>
    ),
    "Explain gravity in one sentence.": (
        # "Gravity is a fundamental concept in physics that describes the force that causes objects to"
        [22007, 6463, 314, 253, 4959, 1909, 281, 6944, 338, 6601, 260, 3075, 338, 2981, 3401, 288],
        # "Gravity is a fundamental concept in physics that describes the force of gravity, which"
        [22007, 6463, 314, 253, 4959, 1909, 281, 6944, 338, 6601, 260, 3075, 282, 9354, 28, 527],
    ),
}


@pytest.fixture(scope="module")
def pair():
    return load_pair(ModelSpec(str(DRAFT), device="cpu", dtype="float32"),
                     ModelSpec(DEFAULT_LLM, device="cpu", dtype="float32"))


def test_the_shipped_draft_is_small_and_holds_only_its_layers():
    assert Path(resolve_alias(DEFAULT_SLM)) == DRAFT
    assert {p.name for p in DRAFT.iterdir()} == {DRAFT_CONFIG, DRAFT_WEIGHTS}
    assert (DRAFT / DRAFT_WEIGHTS).stat().st_size <= 40 * 2**20
    config = DraftConfig.read(DRAFT)
    assert config.base_model == DEFAULT_LLM and config.fingerprint["num_hidden_layers"] == 30
    assert all(key.startswith("layers.") for key in load_file(str(DRAFT / DRAFT_WEIGHTS)))


def test_the_draft_adds_only_its_layers_to_the_llm(pair):
    slm, llm = pair.slm.model, pair.llm.model
    assert slm.lm_head.weight is llm.lm_head.weight
    assert slm.model.embed_tokens.weight is llm.model.embed_tokens.weight
    assert slm.model.norm.weight is llm.model.norm.weight
    llm_tensors = {p.data_ptr() for p in llm.parameters()}
    own = draft_layer_parameters(slm)
    assert {p.data_ptr() for p in slm.parameters()} - llm_tensors == {p.data_ptr() for p in own.values()}
    saved = load_file(str(DRAFT / DRAFT_WEIGHTS))
    assert saved.keys() == own.keys()
    for name, p in own.items():
        assert torch.equal(p, saved[name].to(p.dtype)), name


@pytest.mark.parametrize("question", list(EXPECTED))
def test_the_draft_gives_stable_output_on_a_fixed_prompt(pair, question):
    engine = StitchEngine(pair)
    prompt = [{"role": "user", "content": question}]
    settings = GenerationSettings(max_new_tokens=16)
    alone = engine.decode_alone("slm", prompt, settings)
    stitched = engine.generate(prompt, settings, EntropyRouter(0.1))
    draft_ids, stitched_ids = EXPECTED[question]
    assert list(alone.token_ids) == draft_ids, (list(alone.token_ids), alone.text)
    assert list(stitched.token_ids) == stitched_ids, (list(stitched.token_ids), stitched.text)
    assert engine.decode_alone("slm", prompt, settings).token_ids == alone.token_ids
