"""The llama.cpp runner (``models.llamacpp``): Algorithm 1's exactness properties where llama.cpp's
numerics allow them, batched rows, prefix reuse, evictions and bad input, on real GGUF models.

The models are the default pair on llama.cpp (SmolLM2-135M-Instruct's Q4_1 GGUF, the shipped draft
exported to q8_0): about 15 ms a token here, fast enough for unit tests. Engines whose outputs are
compared token for token run with ``reuse_prefixes=False``, so that both sides run the same passes
(the same numbers of tokens per ``llama_decode``): llama.cpp's matrix kernels may sum in another order
for another batch shape, so a shared prefix is compared separately (``test_prefix_reuse_...``).
"""

from __future__ import annotations

import threading

import pytest

from rstitch_engine import (
    EntropyRouter,
    GenerationSettings,
    InvalidSettingError,
    ModelLoadError,
    ModelSpec,
    PromptTooLongError,
    Routing,
    StitchEngine,
    load_pair,
)
from rstitch_engine.decoding.engine import read_in_turn
from rstitch_engine.models.defaults import DEFAULT_LLM, DEFAULT_SLM

pytestmark = pytest.mark.real_model

QUESTIONS = [
    "What is the capital of France? Reply with one word.",
    "Name a primary colour.",
    "What is 12 plus 30? Reply with just the number.",
]
PASSAGE = ("Read the notes.\nNote 1: The Orion project ships on 14 March.\nNote 2: Its budget is 42,000 euros.\n"
           "Note 3: The lead engineer is Mira Castell.\nQuestion: Who is the lead engineer of the Orion project?")


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def spec(source: str, **options) -> ModelSpec:
    return ModelSpec(source, backend="llama.cpp", extra=options)


def engine_of(max_batch_size: int = 4, **options) -> StitchEngine:
    pair = load_pair(spec(DEFAULT_SLM, **options), spec(DEFAULT_LLM, **options))
    return StitchEngine(pair, max_batch_size=max_batch_size)


@pytest.fixture(scope="module")
def exact_engine() -> StitchEngine:
    """The default pair on llama.cpp with no prefix reuse: every request runs from an empty cache."""
    return engine_of(reuse_prefixes=False)


def tokens(engine: StitchEngine, prompt, routing=None, max_new_tokens: int = 24) -> list[int]:
    return list(engine.generate(prompt, GenerationSettings(max_new_tokens=max_new_tokens), routing).token_ids)


def alone(engine: StitchEngine, role: str, prompt, max_new_tokens: int = 24) -> list[int]:
    return list(engine.decode_alone(role, prompt, GenerationSettings(max_new_tokens=max_new_tokens)).token_ids)


@pytest.mark.parametrize("question", QUESTIONS)
def test_tau_extremes_are_each_model_alone_on_the_runner(exact_engine, question):
    prompt = chat(question)
    slm_only = exact_engine.stream(prompt, GenerationSettings(max_new_tokens=24), EntropyRouter(1.0))
    assert [e.token_id for e in slm_only] == alone(exact_engine, "slm", prompt)
    assert slm_only.stats.llm.forward_passes == 0
    llm_only = exact_engine.stream(prompt, GenerationSettings(max_new_tokens=24), EntropyRouter(-1.0))
    events = list(llm_only)
    assert [e.token_id for e in events] == alone(exact_engine, "llm", prompt)
    assert {e.source for e in events} == {"llm"}


def test_stitching_switches_both_ways_and_keeps_the_loop_invariants(exact_engine):
    stream = exact_engine.stream(chat(PASSAGE), GenerationSettings(max_new_tokens=40), EntropyRouter(0.1))
    events = list(stream)
    assert {e.source for e in events} == {"slm", "llm"}, "tau 0.1 should use both models on this prompt"
    request = stream.request
    for slot in request.slots.values():  # every cache covers a prefix of x + y (Algorithm 1's invariant)
        assert slot.n_cached <= len(request.tokens)
    llm_records = [r for r in request.slots["llm"].records]
    assert llm_records and all(r.role == "llm" for r in llm_records)


def test_prompt_lookup_keeps_the_llm_alone_tokens(exact_engine):
    prompt = chat(PASSAGE + " Answer with the full name and repeat the note.")
    stream = exact_engine.stream(prompt, GenerationSettings(max_new_tokens=32), Routing(quality="exact"))
    assert [e.token_id for e in stream] == alone(exact_engine, "llm", prompt, 32)
    proposed = sum(r.proposed_tokens for r in stream.request.slots["llm"].records)
    assert proposed > 0, "the answer copies the note: lookup should have proposed tokens"


EXTREMES = (EntropyRouter(1.0), EntropyRouter(-1.0), EntropyRouter(1.0))
"""SLM alone, LLM alone, SLM alone: one request per question, so a batched step holds both models' rows."""


def test_batched_rows_give_each_request_its_own_tokens(exact_engine):
    """Rows of one ``llama_decode`` each get exactly their model's own greedy tokens (tau at the extremes).

    Stitched rows are not compared token for token: in a batch, a row's attention reduces over the
    context's shared pool of cells, laid out by the other rows too, so its sums run in another order and
    a near-tie can resolve differently (seen here once in 24 tokens at tau 0.1); the rows' keys are the same.
    """
    prompts = [chat(q) for q in QUESTIONS]
    streams = [exact_engine.stream(p, GenerationSettings(max_new_tokens=24), router)
               for p, router in zip(prompts, EXTREMES)]
    together = [[e.token_id for e in events] for events in read_in_turn(streams)]
    assert any(r.batch_size > 1 for s in streams for slot in s.request.slots.values() for r in slot.records)
    roles = ("slm", "llm", "slm")
    assert together == [alone(exact_engine, role, p) for role, p in zip(roles, prompts)]


def test_prefix_reuse_feeds_only_the_new_tokens_and_answers_the_same():
    reusing = engine_of()
    system = {"role": "system", "content": "You are a careful assistant. Answer in one short sentence."}
    first = [system, *chat(QUESTIONS[0])]
    second = [system, *chat(QUESTIONS[1])]
    tokens(reusing, first, Routing(quality="exact"))
    stream = reusing.stream(second, GenerationSettings(max_new_tokens=24), Routing(quality="exact"))
    answer = [e.token_id for e in stream]
    prefill = stream.request.slots["llm"].records[0]
    shared = len(reusing.encode(first)) - 1
    common = next(i for i, (a, b) in enumerate(zip(reusing.encode(first), reusing.encode(second))) if a != b)
    assert prefill.cached_tokens == min(common, shared) > 0, "the system prompt's cells should be reused"
    assert answer == tokens(engine_of(reuse_prefixes=False), second, Routing(quality="exact"))


def test_more_requests_than_sequences_evict_and_still_answer_right(exact_engine):
    small = engine_of(max_batch_size=1, max_sequences=1, reuse_prefixes=False)
    prompts = [chat(q) for q in QUESTIONS]
    streams = [small.stream(p, GenerationSettings(max_new_tokens=16), EntropyRouter(0.1)) for p in prompts]
    together = [[e.token_id for e in events] for events in read_in_turn(streams)]
    assert together == [tokens(exact_engine, p, EntropyRouter(0.1), 16) for p in prompts]


def test_threads_share_one_engine(exact_engine):
    expected = {q: alone(exact_engine, role, chat(q), 16) for q, role in zip(QUESTIONS, ("slm", "llm", "slm"))}
    got: dict[str, list[int]] = {}

    def ask(question: str, router: EntropyRouter) -> None:
        got[question] = tokens(exact_engine, chat(question), router, 16)

    threads = [threading.Thread(target=ask, args=(q, router)) for q, router in zip(QUESTIONS, EXTREMES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == expected


def test_an_abandoned_stream_leaves_the_engine_usable(exact_engine):
    prompt = chat(QUESTIONS[0])
    expected = tokens(exact_engine, prompt, EntropyRouter(0.1))
    stream = exact_engine.stream(prompt, GenerationSettings(max_new_tokens=24), EntropyRouter(0.1))
    next(stream), next(stream)
    stream.close()
    assert tokens(exact_engine, prompt, EntropyRouter(0.1)) == expected


def test_a_prompt_longer_than_the_context_is_refused_before_any_pass():
    engine = engine_of(n_ctx=256, reuse_prefixes=False)
    assert engine.pair.llm.context_window == 256
    with pytest.raises(PromptTooLongError, match="context window of 256"):
        engine.generate(chat("word " * 300), GenerationSettings(max_new_tokens=8))
    assert engine.generate(chat("Hi"), GenerationSettings(max_new_tokens=4)).token_ids


def test_the_learned_router_is_refused_with_a_reason_and_the_engine_goes_on(exact_engine):
    with pytest.raises(InvalidSettingError, match="hidden state"):
        exact_engine.generate(chat(QUESTIONS[0]), GenerationSettings(max_new_tokens=8), Routing(router="learned"))
    assert tokens(exact_engine, chat(QUESTIONS[0]), EntropyRouter(0.1), 8)


def test_bad_specs_are_refused_with_what_to_change(tmp_path):
    with pytest.raises(InvalidSettingError, match="does not take num_layers"):
        ModelSpec(DEFAULT_LLM, backend="llama.cpp", num_layers=2)
    with pytest.raises(InvalidSettingError, match="backend must be one of"):
        ModelSpec(DEFAULT_LLM, backend="vllm")  # type: ignore[arg-type]
    with pytest.raises(InvalidSettingError, match="unknown llama.cpp option"):
        load_pair(spec(DEFAULT_SLM, n_threds=2), spec(DEFAULT_LLM))
    with pytest.raises(ModelLoadError, match="not a .gguf path"):
        load_pair(spec(str(tmp_path)), spec(DEFAULT_LLM))
    with pytest.raises(InvalidSettingError, match="one backend"):
        load_pair(ModelSpec(DEFAULT_SLM), spec(DEFAULT_LLM))
    not_gguf = tmp_path / "broken.gguf"
    not_gguf.write_bytes(b"not a gguf file")
    with pytest.raises(ModelLoadError, match="could not load"):
        load_pair(spec(str(not_gguf)), spec(DEFAULT_LLM))


def test_the_llm_alone_answers_as_llama_cpp_python_does():
    """With the plain attention kernel (``flash_attn=False``, llama-cpp-python's default) the runner's LLM
    alone gives llama-cpp-python's ``create_chat_completion`` answers token for token, prefix reuse and all;
    llama.cpp's flash-attention kernel on a CPU accumulates in f16 and answers differently."""
    from llama_cpp import Llama

    from rstitch_engine.models.gguf_export import default_llm_gguf

    reference = Llama(model_path=str(default_llm_gguf()), n_ctx=4096, verbose=False)
    engine = engine_of(max_batch_size=1, n_ctx=4096)
    llm_alone = Routing(router="llm")
    conversations = [chat(q) for q in QUESTIONS] + [chat(PASSAGE), [
        {"role": "user", "content": "My favourite animal is the otter."},
        {"role": "assistant", "content": "Otters are wonderful!"},
        {"role": "user", "content": "Which animal did I say is my favourite? Reply with one word."}]]
    for messages in conversations:
        theirs = reference.create_chat_completion(messages, max_tokens=32, temperature=0.0)
        ours = engine.generate(messages, GenerationSettings(max_new_tokens=32, prompt_lookup_tokens=0), llm_alone)
        assert ours.text == theirs["choices"][0]["message"]["content"]
        ended = theirs["choices"][0]["finish_reason"] == "stop"  # rstitch counts the end-of-turn token it decoded
        assert len(ours.token_ids) == theirs["usage"]["completion_tokens"] + ended


def test_the_flash_attention_option_is_taken_and_checked():
    from rstitch_engine.models.llamacpp import LlamaCppOptions

    assert LlamaCppOptions().flash_attn is False
    assert LlamaCppOptions.from_extra({"flash_attn": True}).flash_attn is True
    engine = engine_of(max_batch_size=1, flash_attn=True, reuse_prefixes=False)
    assert engine.generate(chat(QUESTIONS[0]), GenerationSettings(max_new_tokens=8), Routing(router="llm")).text
