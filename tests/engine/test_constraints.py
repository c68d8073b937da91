"""Grammar-constrained stitched decoding on the tiny pairs (float64, exact).

The rules under test (``rstitch_engine/decoding/constraints.py``): logits are masked before entropy
and choice, the grammar advances on kept tokens only, a forced position has H = 0 and never
consults the router or the LLM, and tau extremes reproduce each model's constrained greedy decoding.
"""

from __future__ import annotations

import json
import warnings

import pytest
from helpers import RecordingRouter
from tiny import byte_level_tokenizer, tiny_model, tiny_pair

from rstitch_engine import (
    AlwaysLLMRouter,
    AlwaysSLMRouter,
    EntropyRouter,
    GenerationSettings,
    Grammar,
    InvalidSettingError,
    ModelPair,
    StitchEngine,
)

SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no", "maybe"]},
                                           "count": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["answer", "count"], "additionalProperties": False}
PROMPTS = ["The quick brown", "What is 3 + 4?", "def add(a, b):", "Café 東京"]


@pytest.fixture(scope="module", params=[1, 8], ids=["serial", "batched"])
def engine(request) -> StitchEngine:
    return StitchEngine(tiny_pair(), EntropyRouter(0.6), max_batch_size=request.param)


def settings(grammar: Grammar, tokens: int = 64) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=tokens, grammar=grammar)


def test_json_schema_output_is_valid_json_of_the_schema(engine):
    for prompt in PROMPTS:
        result = engine.generate(prompt, settings(Grammar.json_schema(SCHEMA)))
        assert result.finish_reason == "stop"
        value = json.loads(result.text)
        assert value["answer"] in ("yes", "no", "maybe") and 0 <= value["count"] <= 99
        assert set(value) == {"answer", "count"}


def test_regex_and_lark_grammars_are_followed(engine):
    regex = engine.generate(PROMPTS[0], settings(Grammar.regex(r"[0-9]{3}-[a-z]{2}")))
    assert regex.finish_reason == "stop"
    assert len(regex.text) == 6 and regex.text[:3].isdigit() and regex.text[3] == "-" and regex.text[4:].isalpha()
    lark = engine.generate(PROMPTS[1], settings(Grammar.lark('start: "It is " NUMBER\nNUMBER: /[0-9]+/')))
    assert lark.text.startswith("It is ") and lark.text[6:].isdigit()


@pytest.mark.parametrize("required", [True, False])
def test_tagged_json_segments_match_their_schema(engine, required):
    call = {"type": "object", "properties": {"name": {"const": "add"}, "arguments": SCHEMA},
            "required": ["name", "arguments"], "additionalProperties": False}
    grammar = Grammar.tagged_json("<tool_call>\n", call, "\n</tool_call>", required=required)
    result = engine.generate(PROMPTS[2], settings(grammar, tokens=96))
    if required:
        assert result.text.startswith("<tool_call>\n") and result.text.endswith("\n</tool_call>")
    for block in result.text.split("<tool_call>\n")[1:]:
        assert json.loads(block.split("\n</tool_call>")[0])["name"] == "add"


def test_tau_extremes_reproduce_each_model_s_constrained_greedy_decoding(engine):
    grammar = Grammar.json_schema(SCHEMA)
    for prompt in PROMPTS:
        slm_alone = engine.decode_alone("slm", prompt, settings(grammar)).token_ids
        llm_alone = engine.decode_alone("llm", prompt, settings(grammar)).token_ids
        assert engine.generate(prompt, settings(grammar), AlwaysSLMRouter()).token_ids == slm_alone
        assert engine.generate(prompt, settings(grammar), AlwaysLLMRouter()).token_ids == llm_alone
        assert engine.generate(prompt, settings(grammar), EntropyRouter(1.0)).token_ids == slm_alone
        assert engine.generate(prompt, settings(grammar), EntropyRouter(-0.5)).token_ids == llm_alone


def test_a_self_pair_gives_the_model_s_constrained_output_at_every_tau():
    engine = StitchEngine(tiny_pair(same_model=True), max_batch_size=1)
    grammar = Grammar.json_schema(SCHEMA)
    for prompt in PROMPTS[:2]:
        alone = engine.decode_alone("llm", prompt, settings(grammar)).token_ids
        for tau in (0.0, 0.3, 0.6, 0.9):
            assert engine.generate(prompt, settings(grammar), EntropyRouter(tau)).token_ids == alone


def test_forced_positions_have_zero_entropy_and_never_consult_the_router_or_the_llm(engine):
    """tau 0 and a router that always wants the LLM: every SLM position with H > 0 goes to the LLM, so
    the SLM keeps exactly the forced positions it reaches. A forced position is written by whichever
    model is active there (the LLM keeps one it was already decoding, and hands back after it)."""
    grammar = Grammar.json_schema(SCHEMA)
    router = RecordingRouter(EntropyRouter(0.0))
    result = engine.generate(PROMPTS[0], settings(grammar), router)
    state = engine._grammar_tokenizer.start(grammar)  # replay the grammar along the kept tokens
    forced_positions = []
    for event in result.events:
        if int(state.allowed().sum()) == 1:
            forced_positions.append(event.index)
            assert event.entropy == 0.0 and not event.took_over
            assert event.source == "slm" or event.hands_back
        state.consume(event.token_id)
    assert len(forced_positions) >= 5  # '{"', key names, '":' ...
    consulted_at = {call.context_length for call, _ in router.calls}
    prompt_length = result.stats.prompt_tokens
    assert not consulted_at & {prompt_length + i for i in forced_positions}
    slm_positions = {e.index for e in result.events if e.source == "slm"}
    assert slm_positions and slm_positions <= set(forced_positions)


def test_a_discarded_slm_token_never_advances_the_grammar(engine):
    """With tau 0 the SLM's tokens are discarded at every unforced position; the output still parses."""
    result = engine.generate(PROMPTS[3], settings(Grammar.json_schema(SCHEMA)), EntropyRouter(0.0))
    assert result.stats.discarded_slm_tokens > 0
    assert json.loads(result.text)["answer"] in ("yes", "no", "maybe")


def test_grammars_that_cannot_compile_give_a_clear_error_and_the_engine_stays_usable(engine):
    expected = engine.generate(PROMPTS[0], GenerationSettings(max_new_tokens=8)).token_ids
    for bad, match in ((Grammar.json_schema({"type": "nonsense"}), "cannot"), (Grammar.regex("(unclosed"), "regex"),
                       (Grammar.lark("start: missing_rule"), "lark")):
        with pytest.raises(InvalidSettingError, match=match):
            engine.stream(PROMPTS[0], settings(bad))
    with pytest.raises(InvalidSettingError, match="grammar must be"):
        GenerationSettings(grammar='{"type": "object"}')  # type: ignore[arg-type]
    assert engine.generate(PROMPTS[0], GenerationSettings(max_new_tokens=8)).token_ids == expected


def test_a_grammar_with_no_allowed_token_ends_the_request_with_a_reason_that_says_so():
    """A pair whose models have fewer output rows than the tokenizer cannot write the tokens past them:
    a grammar that needs one of those reaches a position where nothing is allowed."""
    tokenizer = byte_level_tokenizer()
    rows = 60
    assert all(tokenizer.convert_tokens_to_ids(c) < rows for c in "01")  # single-byte tokens: the only spelling
    unreachable = "z"
    assert tokenizer.convert_tokens_to_ids(unreachable) >= rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pair warns that the vocabulary is cut to the output rows
        pair = ModelPair.from_models(tiny_model("llama", rows, seed=1, layers=1), tiny_model("qwen2", rows, seed=2),
                                     tokenizer)
    engine = StitchEngine(pair, EntropyRouter(0.5))
    result = engine.generate("0", settings(Grammar.regex(f"01{unreachable}")))
    assert result.finish_reason == "no_allowed_token"
    assert result.text == "01"
    assert engine.generate("0", GenerationSettings(max_new_tokens=4)).stats.output_tokens == 4


def test_entropy_under_a_grammar_is_normalised_by_the_number_of_allowed_tokens():
    """Uniform over the k allowed tokens reads H = 1 (not log k / log |V|); one allowed token reads 0."""
    import math

    import torch

    from rstitch_engine import normalised_entropy

    logits = torch.full((1000,), float("-inf"), dtype=torch.float64)
    logits[:10] = 0.0  # uniform over 10 tokens
    assert normalised_entropy(logits) == pytest.approx(math.log(10) / math.log(1000), rel=1e-12)
    assert normalised_entropy(logits, support=10) == pytest.approx(1.0, rel=1e-12)
    assert normalised_entropy(logits, support=1) == 0.0


def test_a_step_s_entropy_is_over_the_allowed_tokens(engine):
    """The reported entropy of a constrained step equals H(masked logits) / log |allowed|, recomputed here
    from a fresh forward pass (the engine's logits are float32, so the two agree to float32 precision)."""
    import math

    import torch

    from rstitch_engine import AlwaysLLMRouter

    grammar = Grammar.regex(r"[0-9]{2}")
    result = engine.generate(PROMPTS[1], settings(grammar, tokens=4).replace(token_entropy=True), AlwaysLLMRouter())
    model = engine.pair.llm.model
    prompt = engine.encode(PROMPTS[1])
    state = engine._grammar_tokenizer.start(grammar)
    for event in result.events[:2]:
        ids = torch.tensor([list(prompt) + list(result.token_ids[: event.index])])
        logits = model(ids).logits[0, -1, : engine.pair.vocab_size].float().double()
        allowed = state.allowed()
        p = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)
        h = float(-(p[allowed] * p[allowed].log()).sum())
        assert event.entropy == pytest.approx(h / math.log(int(allowed.sum())), rel=1e-6)
        assert event.entropy > 2 * h / math.log(engine.pair.vocab_size)  # not the log |V| normalisation
        state.consume(event.token_id)


@pytest.mark.parametrize("router", [AlwaysSLMRouter(), EntropyRouter(0.6), AlwaysLLMRouter()], ids=["slm", "tau", "llm"])
def test_forced_positions_run_no_forward_pass(engine, router):
    """Each pass decides exactly one position the grammar leaves open (or discards an SLM token);
    forced tokens are kept without one, and both models catch up on them in their next pass.
    (Prompt lookup, on by default for the LLM alone, lets one pass decide several: off here.)"""
    grammar = Grammar.json_schema(SCHEMA)
    result = engine.generate(PROMPTS[2], settings(grammar).replace(prompt_lookup_tokens=0), router)
    state = engine._grammar_tokenizer.start(grammar)
    open_positions = 0
    for token in result.token_ids:
        open_positions += state.forced_token() is None
        state.consume(token)
    passes = result.stats.slm.forward_passes + result.stats.llm.forward_passes
    assert open_positions < len(result.token_ids)  # the schema forces keys and punctuation
    assert passes == open_positions + result.stats.discarded_slm_tokens
    assert result.stats.forced_tokens == len(result.token_ids) - open_positions
