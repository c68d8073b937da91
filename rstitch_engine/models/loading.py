"""Loading models from a hub id, a local folder (safetensors) or a GGUF file.

Safe by default: ``trust_remote_code`` is off unless a spec turns it on; folders and hub
repositories are read from safetensors when they have them, and any pickle checkpoint is read by
transformers with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as transformers_logging

from ..errors import InvalidSettingError, ModelLoadError
from .defaults import resolve_alias
from .draft import is_draft_folder, load_draft
from .execution import ExecutionConfig
from .hardware import auto_dtype
from .openmp import releasing_openmp_team
from .pair import ModelPair

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
Backend = Literal["transformers", "llama.cpp"]
BACKENDS: tuple[Backend, ...] = ("transformers", "llama.cpp")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and where it runs."""

    source: str
    """Hub id, local folder, path to a .gguf file, a draft folder made by ``rstitch distill`` (SLM only),
    or a built-in alias such as 'smollm2-135m-instruct' or 'smollm2-135m-instruct-draft'."""
    device: str = "auto"
    """'cpu', 'cuda', 'cuda:N', or 'auto' (CUDA when available). Ignored when device_map is set."""
    dtype: DTypeName = "auto"
    """'auto' is bfloat16 where the device computes it natively (CUDA; CPUs with AVX512-BF16 or AMX)
    and float32 elsewhere (``hardware.auto_dtype``)."""
    device_map: str | dict[str, Any] | None = None
    """Passed to accelerate, e.g. 'auto' to shard a large LLM over several GPUs."""
    num_layers: int | None = None
    """Early-exit cut: keep only the first N decoder layers (embeddings, final norm and head kept)."""
    trust_remote_code: bool = False
    revision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Further keyword arguments for ``from_pretrained``."""
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    """How the model's passes run: cache backend ('dynamic' or 'static') and compiled steps."""
    backend: Backend = "transformers"
    """The inference library: 'transformers' (any model; CUDA, CPU), or 'llama.cpp' (GGUF files through
    llama-cpp-python: a .gguf path, the default LLM's alias, or a draft folder, exported to GGUF once).
    With 'llama.cpp', ``extra`` holds ``models.llamacpp.LlamaCppOptions`` (n_ctx, n_threads, ...)."""

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", *_DTYPES):
            raise InvalidSettingError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {self.dtype!r}")
        if self.num_layers is not None and self.num_layers < 1:
            raise InvalidSettingError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.backend not in BACKENDS:
            raise InvalidSettingError(f"backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")
        if self.backend == "llama.cpp":
            unsupported = [name for name, value in (("num_layers", self.num_layers), ("device_map", self.device_map),
                                                    ("revision", self.revision)) if value is not None]
            if self.execution != ExecutionConfig():
                unsupported.append("execution (static caches, compiled steps)")
            if unsupported:
                raise InvalidSettingError(f"the llama.cpp backend does not take {', '.join(unsupported)}: "
                                          "llama.cpp keeps its own cache and runs the GGUF file as it is")

    @property
    def label(self) -> str:
        name = Path(self.source).name if Path(self.source).exists() else self.source
        return f"{name}[:{self.num_layers} layers]" if self.num_layers else name

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        if self.dtype != "auto":
            return _DTYPES[self.dtype]
        if self.device_map is not None:
            return torch.bfloat16 if torch.cuda.is_available() else torch.float32
        return auto_dtype(self.torch_device())


def load_tokenizer(spec: ModelSpec) -> Any:
    folder, gguf_file = _locate(spec.source)
    try:
        return AutoTokenizer.from_pretrained(
            folder, gguf_file=gguf_file, trust_remote_code=spec.trust_remote_code, revision=spec.revision
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load the tokenizer of {spec.source!r}: {error}") from error


def load_model(spec: ModelSpec) -> PreTrainedModel:
    """Load a causal LM in eval mode on its device and dtype."""
    folder, gguf_file = _locate(spec.source)
    kwargs: dict[str, Any] = dict(spec.extra)
    if spec.num_layers is not None:
        kwargs["num_hidden_layers"] = spec.num_layers  # weights of later layers are left unread
    if spec.device_map is not None:
        kwargs["device_map"] = spec.device_map
    quiet = _quiet_transformers() if spec.num_layers is not None else contextlib.nullcontext()
    try:
        with quiet:  # a cut model leaves later layers' weights unread, on purpose
            model = AutoModelForCausalLM.from_pretrained(
                folder,
                gguf_file=gguf_file,
                dtype=spec.torch_dtype(),
                trust_remote_code=spec.trust_remote_code,
                revision=spec.revision,
                **kwargs,
            )
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load the model {spec.source!r}: {error}") from error
    if spec.device_map is None:
        model = model.to(spec.torch_device())  # type: ignore[arg-type]  # transformers types .to oddly
    return model.eval()


@releasing_openmp_team  # loading runs parallel regions on the caller's thread: free its team after
def load_pair(slm: ModelSpec, llm: ModelSpec) -> ModelPair:
    """Load both models and their tokenizers; refuse a pair whose tokenizers differ.

    An SLM that is a draft folder (``rstitch distill``) is built on the loaded LLM: it shares the
    LLM's tokenizer, embeddings, norm and head, and so its device and dtype (``slm.device`` and
    ``slm.dtype`` are not used). Both models run on one backend (``ModelSpec.backend``).
    """
    if slm.backend != llm.backend:
        raise InvalidSettingError(f"both models of a pair run on one backend; got SLM {slm.backend!r}, "
                                  f"LLM {llm.backend!r}")
    if llm.backend == "llama.cpp":
        from .llamacpp_loading import load_llamacpp_pair  # llama-cpp-python is an optional extra

        return load_llamacpp_pair(slm, llm, load_tokenizer(llm))
    llm_tokenizer = load_tokenizer(llm)
    llm_model = load_model(llm)
    if is_draft_folder(resolve_alias(slm.source)):
        slm_model, slm_tokenizer = load_draft(resolve_alias(slm.source), llm_model), None
    else:
        slm_tokenizer = llm_tokenizer if _same_files(slm, llm) else load_tokenizer(slm)
        slm_model = load_model(slm)
    pair = ModelPair.from_models(
        slm=slm_model,
        llm=llm_model,
        tokenizer=llm_tokenizer,
        slm_tokenizer=slm_tokenizer,
        slm_name=slm.label,
        llm_name=llm.label,
    )
    return pair.with_execution(slm=slm.execution, llm=llm.execution)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(previous)


def _same_files(a: ModelSpec, b: ModelSpec) -> bool:
    return (a.source, a.revision) == (b.source, b.revision)


def _locate(source: str) -> tuple[str, str | None]:
    """(folder or hub id, gguf file name or None) for from_pretrained."""
    source = resolve_alias(source)
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return str(path.parent), path.name
    return (str(path) if path.exists() else source), None
