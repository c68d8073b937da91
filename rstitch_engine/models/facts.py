"""What a pair is, read without loading any weights: context window, vocabulary, chat-template support.

Frameworks ask these questions when they are configured, long before the first call (LlamaIndex
reads ``LLM.metadata`` when a query engine or ``Settings`` is built; LangChain reads a chat model's
``profile``). Answering them by loading both models would stall that set-up for seconds and allocate
their memory. Facts come from ``config.json`` and the tokenizer's files (a folder or a hub id: only
those small files are fetched), or from a GGUF file's header; each answer is cached per source.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError
from .defaults import DEFAULT_LLM, DEFAULT_SLM, converted_default_folder, default_gguf_path, resolve_alias
from .draft import DraftConfig, is_draft_folder


@dataclass(frozen=True)
class ModelFacts:
    """One model's facts, from its configuration files."""

    context_window: int | None
    """``max_position_embeddings`` (None when the config does not say)."""
    vocab_size: int | None
    """Rows of the output layer, from the config."""
    chat_template: str | None
    """The tokenizer's chat template source (None: no template)."""


@dataclass(frozen=True)
class PairFacts:
    """A pair's facts: what a request may use of both models."""

    slm: ModelFacts
    llm: ModelFacts

    @property
    def context_window(self) -> int | None:
        """The smaller model's window: a stitched request must fit both."""
        windows = [w for w in (self.slm.context_window, self.llm.context_window) if w is not None]
        return min(windows) if windows else None


def pair_facts(llm: str = DEFAULT_LLM, slm: str | None = None) -> PairFacts:
    """Facts of the pair ``StitchEngine.from_pretrained(llm, slm)`` would load (the default LLM's draft when None)."""
    return PairFacts(slm=model_facts(slm if slm is not None else DEFAULT_SLM), llm=model_facts(llm))


@functools.lru_cache(maxsize=64)
def model_facts(source: str) -> ModelFacts:
    """Facts of one model (hub id, folder, .gguf file or built-in alias), from its configuration only."""
    path = Path(_config_source(source)).expanduser()
    if path.suffix == ".gguf":
        return _gguf_facts(path)
    if is_draft_folder(path):  # a draft shares its LLM's tokenizer, positions and vocabulary
        return model_facts(DraftConfig.read(path).base_model)
    from transformers import AutoConfig, AutoTokenizer  # the config and tokenizer files only, never weights

    try:
        config = AutoConfig.from_pretrained(str(path)).get_text_config(decoder=True)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not read the configuration of {source!r}: {error}") from error
    template = _template_in(path) if path.is_dir() else None
    if template is None and not path.is_dir():
        try:
            template = getattr(AutoTokenizer.from_pretrained(str(path)), "chat_template", None)
        except (OSError, ValueError):
            template = None
    return ModelFacts(getattr(config, "max_position_embeddings", None), getattr(config, "vocab_size", None), template)


def _config_source(source: str) -> str:
    """Where the configuration of ``source`` is: the default LLM's converted folder once it exists, else
    its cached GGUF file (no conversion, which would load the weights), else what loading would use."""
    if source == DEFAULT_LLM:
        folder = converted_default_folder()
        if (folder / "config.json").is_file():
            return str(folder)
        if default_gguf_path().is_file():
            return str(default_gguf_path())
    return resolve_alias(source)


def _template_in(folder: Path) -> str | None:
    """The chat template of a tokenizer folder (``chat_template.jinja`` or ``tokenizer_config.json``)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def _gguf_facts(path: Path) -> ModelFacts:
    """Facts from a GGUF header (memory-mapped; the tensors are not read)."""
    from gguf import GGUFReader

    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    fields = GGUFReader(str(path)).fields

    def value(key: str) -> object:
        field = fields.get(key)
        return None if field is None else field.contents()

    architecture = value("general.architecture")
    window = value(f"{architecture}.context_length")
    tokens = fields.get("tokenizer.ggml.tokens")  # an array field: its element count, without decoding 49k strings
    template = value("tokenizer.chat_template")
    return ModelFacts(int(window) if window is not None else None, len(tokens.data) if tokens is not None else None,
                      template if isinstance(template, str) else None)
