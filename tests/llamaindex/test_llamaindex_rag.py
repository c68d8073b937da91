"""A query engine over real documents, real local embeddings and the real pair, through Settings.llm."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.instrumentation.events.llm import LLMChatStartEvent
from llama_index.core.node_parser import SentenceSplitter

from rstitch_integrations.llamaindex import RStitchLLM
from rstitch_integrations.llamaindex_events import RStitchEventHandler

pytestmark = pytest.mark.real_model

ENGINE_DIR = Path(__file__).resolve().parents[2] / "rstitch_engine"


def engine_module_docs() -> list[Document]:
    """The engine's module docstrings: real prose about the method, always present in the repository."""
    documents = []
    for path in sorted(ENGINE_DIR.rglob("*.py")):
        source = path.read_text()
        if source.startswith('"""'):
            documents.append(Document(text=source.split('"""')[1], metadata={"file_name": path.name}))
    return documents


@pytest.fixture
def settings_llm():
    previous_llm, previous_embed = Settings._llm, Settings._embed_model
    yield
    Settings._llm, Settings._embed_model = previous_llm, previous_embed


def test_a_streaming_query_engine_answers_through_settings_llm(embed_model, settings_llm, recorder):
    Settings.embed_model = embed_model
    Settings.llm = RStitchLLM(max_tokens=12)
    index = VectorStoreIndex.from_documents(engine_module_docs(), transformations=[SentenceSplitter(chunk_size=128, chunk_overlap=16)])
    tracker = RStitchEventHandler().attach()
    try:
        response = index.as_query_engine(similarity_top_k=2, streaming=True).query(
            "How does a router decide whether the large model takes over?"
        )
        answer = "".join(response.response_gen)
    finally:
        tracker.detach()

    routing_docs = {"routing.py", "routers.py", "engine.py", "learned_router.py", "trace.py"}  # modules that describe routing
    assert {node.metadata["file_name"] for node in response.source_nodes} & routing_docs
    [call] = tracker.calls  # one LLM call, made by the query engine through Settings.llm
    assert answer == call.text
    assert len(call.token_sources) == call.stats["output_tokens"]
    assert 0 < call.stats["output_tokens"] <= 12
    # the retrieved chunks reached the model, inside the one chat call
    [start] = [e for e in recorder.events if isinstance(e, LLMChatStartEvent)]
    prompt = "\n".join(m.content for m in start.messages)
    assert all(node.get_content() in prompt for node in response.source_nodes)


def test_building_a_query_engine_loads_no_model(embed_model, settings_llm, monkeypatch):
    """LlamaIndex reads ``metadata`` while it builds; that comes from config files, not weights."""
    from rstitch_engine.decoding import engine as engine_module
    from rstitch_engine.models.defaults import DEFAULT_LLM

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded while the query engine was built")

    monkeypatch.setattr(engine_module, "load_pair", no_loading)
    llm = RStitchLLM(model=DEFAULT_LLM, device="cpu", dtype="float32", max_tokens=8)
    Settings.llm, Settings.embed_model = llm, embed_model
    index = VectorStoreIndex.from_documents(engine_module_docs()[:1])
    query_engine = index.as_query_engine(streaming=True)
    assert query_engine is not None and llm._engine is None
    assert llm.metadata.context_window == 8192  # SmolLM2-135M's window, from its config.json


def test_the_exact_preset_in_a_query_engine_copies_from_the_retrieved_chunks(embed_model, settings_llm):
    """quality='exact' (the LLM's own answer) checks tokens copied from the retrieved chunks in its
    passes: fewer LLM passes than tokens, and the same answer as with lookup off (float32)."""
    Settings.embed_model = embed_model
    index = VectorStoreIndex.from_documents(engine_module_docs(), transformations=[SentenceSplitter(chunk_size=128, chunk_overlap=16)])
    answers = {}
    for lookup in (None, 0):
        Settings.llm = RStitchLLM(quality="exact", dtype="float32", max_tokens=24, prompt_lookup_tokens=lookup)
        tracker = RStitchEventHandler().attach()
        try:
            answers[lookup] = str(index.as_query_engine(similarity_top_k=2).query("What does prompt lookup propose?"))
        finally:
            tracker.detach()
        [call] = tracker.calls
        answers[lookup, "stats"] = call.stats
    assert answers[None] == answers[0]
    assert answers[None, "stats"]["confirmed_tokens"] > 0
    assert answers[None, "stats"]["llm_forward_passes"] < answers[0, "stats"]["llm_forward_passes"]
