"""Draft SLMs cut from an LLM: a subset of its decoder layers on its own embeddings, norm and head.

A draft is stored as a folder with two files, and only what distillation trained is in them:

* ``rstitch_draft.json``: which LLM layers it started from, the LLM it was trained against
  (name and a fingerprint of its shapes and output head), the storage dtype and training facts;
* ``draft.safetensors``: the kept layers' weights, keys ``layers.{i}.{parameter}``.

Loading a draft takes the already-loaded LLM and the draft file: the draft shares the LLM's
embedding, final norm and output head tensors (no copy), so it adds only its layers to memory.
Supported LLMs are the usual Hugging Face decoder layout (``model.layers``, ``model.embed_tokens``,
``model.norm``, ``lm_head``: Llama, Mistral, Qwen2, Gemma, SmolLM and kin).
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedModel

from ..errors import InvalidSettingError, ModelLoadError

DRAFT_CONFIG = "rstitch_draft.json"
DRAFT_WEIGHTS = "draft.safetensors"
FORMAT = "rstitch-draft/1"
_STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class DraftConfig:
    """What ``rstitch_draft.json`` records."""

    base_model: str
    """The LLM the draft was distilled from, as it was named (alias, hub id or folder)."""
    layers: tuple[int, ...]
    """Indices of the LLM decoder layers the draft's layers started from, in order."""
    fingerprint: dict[str, Any]
    """Shapes of the LLM and a checksum of its output head (see ``llm_fingerprint``)."""
    dtype: str = "bfloat16"
    """Storage dtype of ``draft.safetensors``; loading casts to the LLM's dtype."""
    training: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def save(self, folder: Path) -> None:
        (folder / DRAFT_CONFIG).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, folder: Path) -> "DraftConfig":
        raw = json.loads((folder / DRAFT_CONFIG).read_text())
        if raw.get("format") != FORMAT:
            raise ModelLoadError(f"{folder} is not an {FORMAT} draft (format {raw.get('format')!r})")
        raw["layers"] = tuple(raw["layers"])
        return cls(**raw)


def is_draft_folder(source: str | Path) -> bool:
    """Whether ``source`` is a folder holding a draft made by ``rstitch distill``."""
    return (Path(source).expanduser() / DRAFT_CONFIG).is_file()


def default_layers(num_llm_layers: int, num_draft_layers: int) -> tuple[int, ...]:
    """The first ``n - 1`` layers and the last: token features and the early copying circuitry in, and
    the layer that speaks to the head.

    Measured on SmolLM2-135M (4 of 30 layers, 150 training steps of batch 16 on the same pool; held-out
    distillation loss / top-1 agreement with the LLM on its answers to the quality suite's held-out
    part): (0, 1, 2, 29) 1.99 / 57.6%, (0, 1, 16, 29) 2.03 / 54.9%, (0, 2, 18, 29) 2.07 / 53.5%,
    (0, 27, 28, 29) 2.10 / 52.3%, (0, 11, 16, 29) 2.12 / 53.9%. Skipping any of layers 0-2 alone breaks
    the full model's copying of a repeated sequence (76% -> 0-12% of tokens).
    """
    if not 1 <= num_draft_layers <= num_llm_layers:
        raise InvalidSettingError(f"a draft needs 1..{num_llm_layers} layers, got {num_draft_layers}")
    if num_draft_layers == num_llm_layers:
        return tuple(range(num_llm_layers))
    return (*range(num_draft_layers - 1), num_llm_layers - 1)


def build_draft(llm: PreTrainedModel, layers: Sequence[int]) -> PreTrainedModel:
    """A model of the LLM's class with copies of ``layers``, sharing the LLM's embeddings, norm and head.

    The copies start equal to the LLM's layers and are the only parameters of the draft that are
    not the LLM's own tensors. The draft is in eval mode, on the LLM's device and dtype.
    """
    decoder = _decoder_layers(llm)
    bad = [i for i in layers if not 0 <= i < len(decoder)]
    if not layers or bad:
        raise InvalidSettingError(f"draft layers must be indices in [0, {len(decoder)}), got {list(layers)}")
    config = copy.deepcopy(llm.config)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None) is not None:  # per-layer attention kinds (sliding/full)
        config.layer_types = [config.layer_types[i] for i in layers]
    parameter = next(llm.parameters())
    with torch.device("meta"):
        draft = AutoModelForCausalLM.from_config(config, dtype=parameter.dtype)
    # Shared tensors: the draft's embeddings, final norm, rotary tables and head are the LLM's.
    base, llm_base = draft.get_decoder(), llm.get_decoder()
    for name, module in llm_base.named_children():
        if name != "layers":
            setattr(base, name, module)
    draft.set_output_embeddings(llm.get_output_embeddings())
    # Own tensors: copies of the kept layers. Each keeps the draft's own layer_idx (cache slot).
    for new_index, old_index in enumerate(layers):
        own = base.layers[new_index].to_empty(device=parameter.device)
        own.load_state_dict(decoder[old_index].state_dict())
    draft.generation_config = copy.deepcopy(llm.generation_config)
    return draft.eval()


def draft_layer_parameters(draft: PreTrainedModel) -> dict[str, torch.nn.Parameter]:
    """The draft's own (trainable, saved) parameters, keyed ``layers.{i}.{name}``."""
    return {f"layers.{name}": p for name, p in _decoder_layers(draft).named_parameters()}


def llm_fingerprint(llm: PreTrainedModel) -> dict[str, Any]:
    """Shapes that must match, and a head checksum that should (other weights of the same LLM differ)."""
    config = llm.config.get_text_config(decoder=True)
    head = llm.get_output_embeddings().weight
    return {
        "model_type": config.model_type,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "vocab_rows": int(head.shape[0]),
        "head_checksum": round(float(head.detach().double().abs().sum()), 1),
    }


def save_draft(draft: PreTrainedModel, folder: Path, config: DraftConfig) -> None:
    """Write the draft's own layers (in ``config.dtype``) and its config to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    dtype = _storage_dtype(config.dtype)
    tensors = {name: p.detach().to("cpu", dtype).contiguous() for name, p in draft_layer_parameters(draft).items()}
    save_file(tensors, str(folder / DRAFT_WEIGHTS), metadata={"format": FORMAT})
    config.save(folder)


def round_to_storage(draft: PreTrainedModel, dtype: str) -> None:
    """Round the draft's own weights to the storage dtype in place, so the saved draft equals this one."""
    storage = _storage_dtype(dtype)
    with torch.no_grad():
        for p in draft_layer_parameters(draft).values():
            p.copy_(p.to(storage).to(p.dtype))


def load_draft(folder: str | Path, llm: PreTrainedModel) -> PreTrainedModel:
    """The draft in ``folder`` on top of the loaded ``llm`` (shared embeddings, norm and head).

    Raises ``ModelLoadError`` if the LLM's shapes differ from the one the draft was trained against;
    warns if only its head checksum differs (e.g. other quantisation of the same model).
    """
    folder = Path(folder).expanduser()
    config = DraftConfig.read(folder)
    found = llm_fingerprint(llm)
    expected = config.fingerprint
    shape_keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_rows")
    mismatched = [f"{k}: draft expects {expected.get(k)!r}, LLM has {found[k]!r}" for k in shape_keys
                  if expected.get(k) != found[k]]
    if mismatched:
        raise ModelLoadError(
            f"the draft in {folder} was distilled from {config.base_model!r}, which differs from this LLM ("
            + "; ".join(mismatched) + "). Distil a draft for this LLM with `rstitch distill`."
        )
    if abs(expected.get("head_checksum", found["head_checksum"]) - found["head_checksum"]) > 1e-3 * found["head_checksum"]:
        warnings.warn(
            f"the draft in {folder} was distilled from other weights of this architecture ({config.base_model!r}); "
            "it will run, but expect fewer tokens from the draft", stacklevel=2,
        )
    draft = build_draft(llm, config.layers)
    saved = load_file(str(folder / DRAFT_WEIGHTS))
    own = draft_layer_parameters(draft)
    if saved.keys() != own.keys():
        missing, extra = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
        raise ModelLoadError(f"{folder / DRAFT_WEIGHTS} does not match its config: missing {missing[:3]}, extra {extra[:3]}")
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(saved[name].to(p.device, p.dtype))
    return draft


def _decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise InvalidSettingError(
            f"{type(model).__name__} has no decoder 'layers' list: drafts support the usual Hugging Face decoder layout"
        )
    return layers


def _storage_dtype(name: str) -> torch.dtype:
    if name not in _STORAGE_DTYPES:
        raise InvalidSettingError(f"draft dtype must be one of {', '.join(_STORAGE_DTYPES)}, got {name!r}")
    return _STORAGE_DTYPES[name]
