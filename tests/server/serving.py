"""Real servers for the server tests (helpers; the fixtures are in conftest.py): uvicorn on 127.0.0.1, a free port, started and stopped per module.

Most tests serve the tiny chat pair (a random-weight float64 LLM and a draft cut from it, with a
chat template: ``tests/tiny.py``) in a uvicorn thread of the test process; the SIGTERM and CLI tests
start ``rstitch serve`` as a subprocess on the same pair saved to a folder.
"""

from __future__ import annotations

from pathlib import Path

from live import free_port, running_server  # noqa: F401  (re-exported for the server tests)

from rstitch_engine import StitchEngine
from rstitch_integrations.core import StitchOptions
from rstitch_server import StitchService
from tiny import CHAT_TEMPLATE, byte_level_tokenizer, tiny_model
from transformers import PreTrainedTokenizerFast

from rstitch_engine import ModelPair

TINY_MODEL_ID = "rstitch:tiny-qwen2+tiny-draft"
API_KEY = "test-key-123"


def tiny_chat_pair(max_positions: int = 2048) -> ModelPair:
    """``tiny.tiny_chat_draft_pair`` with a longer context window (tool schemas in the system message are long
    in the tiny tokenizer)."""
    from rstitch_engine.models.draft import build_draft

    base = byte_level_tokenizer()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, eos_token="<eos>",
                                        bos_token="<bos>", pad_token="<pad>", chat_template=CHAT_TEMPLATE)
    llm = tiny_model("qwen2", len(tokenizer), seed=2, layers=3, hidden=48, max_positions=max_positions)
    return ModelPair.from_models(build_draft(llm, [0, 2]), llm, tokenizer, slm_name="tiny-draft", llm_name="tiny-qwen2")


def tiny_service(**defaults: object) -> StitchService:
    engine = StitchEngine(tiny_chat_pair())
    options = StitchOptions(llm="tiny-qwen2", slm="tiny-draft", **{"threshold": 0.5, "max_tokens": 24, **defaults})
    return StitchService(engine, options, TINY_MODEL_ID)


def save_tiny_pair(root: Path) -> tuple[Path, Path]:
    """A tiny LLM and SLM saved under ``root`` as safetensors folders with a chat-template tokenizer: (llm, slm)."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=byte_level_tokenizer().backend_tokenizer, eos_token="<eos>",
                                        bos_token="<bos>", pad_token="<pad>", chat_template=CHAT_TEMPLATE)
    folders = []
    for name, layers, hidden, seed in (("llm", 3, 48, 2), ("slm", 1, 32, 1)):
        model = tiny_model("llama", len(tokenizer), seed=seed, layers=layers, hidden=hidden, max_positions=2048)
        model.to("cpu").float().save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        folders.append(root / name)
    return folders[0], folders[1]
