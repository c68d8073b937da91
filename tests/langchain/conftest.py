"""Fixtures for the LangChain adapter tests.

Everything runs the real default pair, except ``scripted_chat``: a chat model whose engine
replays a given answer text as token events through the real tokenizer, chat template and the
adapter's real parsing path. It exists only to show what free generation (``constrained=False``)
does with text a 135M model does not write reliably (malformed or unknown tool calls, ``<think>``
spans); grammar-constrained answers are tested on the real pair.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest

from rstitch_engine import GenerationSettings, ModelUsage, StitchEngine, StitchStats, StitchStream, TokenEvent
from rstitch_engine.decoding.engine import StitchRequest
from rstitch_integrations.langchain import ChatRStitch


class ScriptedEngine(StitchEngine):
    """The real pair's tokenizer and template; answers are ``scripts`` in turn (the last one repeats).

    An answer is cut at the request's stop strings and max tokens, as the real engine cuts it.

    Tokens alternate between the SLM and the LLM in runs of ``slm_run``/``llm_run`` so that
    attribution is predictable.
    """

    def __init__(self, real: StitchEngine, scripts: str | list[str], slm_run: int = 2, llm_run: int = 1) -> None:
        super().__init__(real.pair, real.router, real.settings)
        self.scripts = [scripts] if isinstance(scripts, str) else list(scripts)
        self.slm_run, self.llm_run = slm_run, llm_run
        self.prompts: list[list[int]] = []
        """Prompt ids of every request, in order."""

    def prompt_text(self, request: int = -1) -> str:
        """A request's prompt as text (special tokens kept)."""
        return self.pair.tokenizer.decode(self.prompts[request])

    def stream(self, prompt: Any, settings: GenerationSettings | None = None, router: Any = None) -> StitchStream:
        settings = settings or self.settings
        assert settings.grammar is None, "a script is free text: scripted adapters run with constrained=False"
        prompt_ids = self.encode(prompt)
        self.prompts.append(prompt_ids)
        script = self.scripts[min(len(self.prompts), len(self.scripts)) - 1]
        return StitchStream(self._replay(prompt_ids, script, settings), StitchRequest.start(self.pair, prompt_ids),
                            self.policy())

    def source_of(self, index: int) -> str:
        return "slm" if index % (self.slm_run + self.llm_run) < self.slm_run else "llm"

    def _replay(
        self, prompt_ids: list[int], text: str, settings: GenerationSettings
    ) -> Generator[TokenEvent, None, StitchStats]:
        cuts = [text.find(s) for s in settings.stop if s in text]
        if cuts:
            text = text[: min(cuts)]
        ids = self.pair.tokenizer.encode(text, add_special_tokens=False)
        finish = "stop"  # the script ends like an EOS would end it
        if len(ids) > settings.max_new_tokens:
            ids, finish = ids[: settings.max_new_tokens], "length"
        written = {"slm": 0, "llm": 0}
        for index, token in enumerate(ids):
            source = self.source_of(index)
            written[source] += 1
            yield TokenEvent(index, token, self.pair.tokenizer.decode([token]), source, 0.05 if source == "slm" else 0.5,
                             took_over=False, hands_back=False, seconds=0.01 * (index + 1))
        usage = {role: ModelUsage(written[role], written[role], written[role], 0.01 * written[role], 0, 0, 0.0)
                 for role in ("slm", "llm")}
        return StitchStats(
            prompt_tokens=len(prompt_ids), output_tokens=len(ids), slm=usage["slm"], llm=usage["llm"],
            discarded_slm_tokens=0, switches_to_llm=0, switches_to_slm=0, wall_seconds=0.01 * len(ids), idle_seconds=0.0,
            finish_reason=finish, router="EntropyRouter", threshold=0.1, llm_alone_seconds=None,  # type: ignore[arg-type]
            speedup_basis="unavailable",
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the standard tests a test class lists in ``xfail_tests`` (name -> reason) as strict xfails."""
    for item in items:
        reasons = getattr(getattr(item, "cls", None), "xfail_tests", {})
        name = item.name if item.name in reasons else getattr(item, "originalname", item.name)
        if name in reasons:  # a key names one parametrisation ('test_x[p]') or all of them ('test_x')
            item.add_marker(pytest.mark.xfail(reason=reasons[name], strict=True))


@pytest.fixture
def scripted_chat(real_engine: StitchEngine) -> Callable[..., tuple[ChatRStitch, ScriptedEngine]]:
    """``scripted_chat(answers, **fields)`` -> (a ChatRStitch giving those answers in turn, its engine)."""

    def make(scripts: str | list[str], **fields: Any) -> tuple[ChatRStitch, ScriptedEngine]:
        engine = ScriptedEngine(real_engine, scripts)
        return ChatRStitch(engine=engine, **{"constrained": False, **fields}), engine

    return make
