"""A draft as a GGUF file that llama.cpp loads: the LLM's GGUF with the draft's layers in place of its own.

The draft shares the LLM's embeddings, final norm and output head, so its GGUF is built from two
sources and nothing else:

* the LLM's GGUF: every metadata field (hyperparameters, tokenizer, chat template) is copied, with
  ``{arch}.block_count`` set to the draft's layer count, ``general.name`` naming the draft and
  ``general.file_type`` the layers' type; every tensor outside the blocks (``token_embd``,
  ``output_norm``, ``output`` when the head is not tied, ``rope_freqs``...) is copied byte for byte
  in its own quantisation type;
* ``draft.safetensors``: the draft's layers, renamed from Hugging Face names to GGUF names by
  gguf's ``TensorNameMap`` and written as ``f32``, ``f16`` or ``q8_0`` (1-D norm weights stay f32).

llama.cpp's rotary embedding pairs neighbouring dimensions of a head where Hugging Face Llama pairs
dimension ``i`` with ``i + head_dim / 2``; its converter therefore reorders the rows of every
``q_proj`` and ``k_proj`` weight within each head, and readers of GGUF files (transformers'
loader among them) undo that. The export applies the same reordering, so the file reads like any
converted Llama. Only the ``llama`` GGUF architecture (Llama, Mistral, SmolLM) is supported.

For exactness checks against transformers, ``export_float32_gguf`` writes a whole model's GGUF with
every tensor dequantised to f32, and the draft export can dequantise the shared tensors too
(``shared_float32``); ``float32_pair_ggufs`` keeps such a pair of the default models in the cache.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidSettingError, ModelLoadError
from .defaults import DEFAULT_SLM, SHIPPED_DRAFTS, cache_dir, default_gguf_path, fetch_default_gguf
from .draft import DRAFT_CONFIG, DRAFT_WEIGHTS, DraftConfig

TENSOR_TYPES = ("q8_0", "f16", "f32")
"""Types the draft's layer weights can be written in; ``q8_0`` is the default (small, fast in llama.cpp)."""
SUPPORTED_ARCHITECTURES = ("llama",)
_HEADER_FIELDS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")
"""Fields the reader reports from the file header; the writer writes its own."""
_SOURCE_KEY = "rstitch.draft.source_sha256"
"""Metadata key holding a digest of the draft's files and the LLM GGUF's name and size (provenance)."""


def export_draft_gguf(draft_folder: str | Path, llm_gguf: str | Path, out_path: str | Path,
                      tensor_type: str = "q8_0", shared_float32: bool = False) -> Path:
    """Write the draft in ``draft_folder`` on the LLM in ``llm_gguf`` as one GGUF file at ``out_path``.

    With ``shared_float32`` the tensors shared with the LLM (embeddings, head) are dequantised to f32
    instead of copied in their own type (with ``tensor_type='f32'``: a file of f32 tensors only).
    The file is written beside ``out_path`` under a temporary ``.partial`` name and renamed when
    complete, so a reader never sees half a file. Raises ``ModelLoadError`` when a file is missing or
    the draft was distilled from an LLM of another shape, and ``InvalidSettingError`` for an unknown
    ``tensor_type``; nothing is written then.
    """
    import gguf

    if tensor_type not in TENSOR_TYPES:
        raise InvalidSettingError(f"tensor_type must be one of {', '.join(TENSOR_TYPES)}, got {tensor_type!r}")
    draft_folder, llm_gguf, out_path = (Path(p).expanduser() for p in (draft_folder, llm_gguf, out_path))
    config, weights = _read_draft(draft_folder)
    reader = _read_gguf(llm_gguf)
    architecture = _check_llm(reader, config, draft_folder, llm_gguf)
    writer = gguf.GGUFWriter(None, architecture)
    _copy_metadata(reader, writer, architecture, config, tensor_type)
    writer.add_string(_SOURCE_KEY, source_digest(draft_folder, llm_gguf))
    _copy_shared_tensors(reader, writer, float32=shared_float32)
    _add_draft_layers(writer, weights, reader, architecture, len(config.layers), tensor_type)
    return _write(writer, out_path)


def export_float32_gguf(gguf_path: str | Path, out_path: str | Path) -> Path:
    """Write the model in ``gguf_path`` to ``out_path`` with every tensor dequantised to f32.

    Metadata is copied, ``general.file_type`` set to all-f32. Transformers dequantises a GGUF to these
    same values when it loads one, so llama.cpp and transformers then compute with the same weights.
    """
    import gguf

    gguf_path, out_path = Path(gguf_path).expanduser(), Path(out_path).expanduser()
    reader = _read_gguf(gguf_path)
    writer = gguf.GGUFWriter(None, _field(reader, "general.architecture"))
    _copy_fields(reader, writer, {"general.file_type": (int(gguf.LlamaFileType.ALL_F32), gguf.GGUFValueType.UINT32)})
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, _as_float32(tensor))
    return _write(writer, out_path)


def _write(writer: Any, out_path: Path) -> Path:
    """The writer's file at ``out_path``, written under a temporary name and renamed when complete."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # A file of its own per export (two processes may export the same model at once).
    partial = out_path.with_name(f"{out_path.name}.{uuid.uuid4().hex}.partial")
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as to any file
    try:
        writer.write_header_to_file(partial)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        partial.replace(out_path)  # atomic: a concurrent reader never sees half a file
    finally:
        partial.unlink(missing_ok=True)
    return out_path


def default_draft_gguf(tensor_type: str = "q8_0") -> Path:
    """The shipped draft on the default LLM's GGUF, exported once to ``cache_dir()/gguf/<alias>.<type>.gguf``.

    The export is redone when the cached file was made from other draft weights or another LLM GGUF.
    The LLM's GGUF is fetched on first use (see ``defaults``).
    """
    draft_folder, llm_gguf = SHIPPED_DRAFTS[DEFAULT_SLM], default_llm_gguf()
    target = cache_dir() / "gguf" / f"{DEFAULT_SLM}.{tensor_type}.gguf"
    # The digest is also kept beside the file: reading it back from the GGUF would parse its whole
    # header (the tokenizer's ~100k strings, seconds).
    record = target.with_name(target.name + ".source")
    digest = source_digest(draft_folder, llm_gguf)
    if target.is_file() and record.is_file() and record.read_text().strip() == digest:
        return target
    export_draft_gguf(draft_folder, llm_gguf, target, tensor_type)
    record.write_text(digest + "\n")
    return target


def float32_pair_ggufs() -> tuple[Path, Path]:
    """(SLM, LLM): the shipped draft and the default LLM as GGUFs of f32 tensors only, made once into
    ``cache_dir()/gguf`` (the LLM's weights are its Q4_1 file's, dequantised; for exactness checks)."""
    draft_folder, llm_gguf = SHIPPED_DRAFTS[DEFAULT_SLM], default_llm_gguf()
    llm_target = cache_dir() / "gguf" / f"{llm_gguf.stem}.all-f32.gguf"
    slm_target = cache_dir() / "gguf" / f"{DEFAULT_SLM}.all-f32.gguf"
    record = slm_target.with_name(slm_target.name + ".source")
    digest = source_digest(draft_folder, llm_gguf)
    if not (llm_target.is_file() and slm_target.is_file() and record.is_file()
            and record.read_text().strip() == digest):
        export_float32_gguf(llm_gguf, llm_target)
        export_draft_gguf(draft_folder, llm_gguf, slm_target, tensor_type="f32", shared_float32=True)
        record.write_text(digest + "\n")
    return slm_target, llm_target


def default_llm_gguf() -> Path:
    """The default LLM's GGUF file, fetched on first use (``ModelLoadError`` if it cannot be)."""
    llm_gguf = fetch_default_gguf()
    if llm_gguf is None:
        raise ModelLoadError(f"the default LLM's GGUF could not be fetched to {default_gguf_path()}")
    return llm_gguf


def permute_for_gguf_rope(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Reorder the rows of a Hugging Face ``q_proj``/``k_proj`` weight for llama.cpp's rotary layout.

    ``weight`` is (num_heads * head_dim, in_features). Within each head, Hugging Face keeps the rotary
    pairs as two halves (rows ``[0, head_dim/2)`` and ``[head_dim/2, head_dim)``); GGUF interleaves
    them (row ``2j`` is half 0's row ``j``, row ``2j + 1`` half 1's row ``j``).
    """
    rows = weight.shape[0]
    halves = weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:])  # head, half, j, ...
    return halves.swapaxes(1, 2).reshape(weight.shape)  # head, j, half, ...


def _read_draft(folder: Path) -> tuple[DraftConfig, dict[str, np.ndarray]]:
    """The draft's config and its layer weights as float32 arrays, keyed ``layers.{i}.{name}``."""
    from safetensors.torch import load_file

    for name in (DRAFT_CONFIG, DRAFT_WEIGHTS):
        if not (folder / name).is_file():
            raise ModelLoadError(f"no draft in {folder}: {name} is missing (make one with `rstitch distill`)")
    config = DraftConfig.read(folder)
    return config, {key: t.float().numpy() for key, t in load_file(str(folder / DRAFT_WEIGHTS)).items()}


def _read_gguf(path: Path) -> Any:
    from gguf import GGUFReader

    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    try:
        return GGUFReader(str(path))
    except (ValueError, OSError) as error:
        raise ModelLoadError(f"{path} is not a readable GGUF file: {error}") from None


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _head_tensor(reader: Any) -> Any:
    """The output head: ``output.weight``, or the tied embeddings when the file has none."""
    by_name = {t.name: t for t in reader.tensors}
    return by_name.get("output.weight", by_name.get("token_embd.weight"))


def _check_llm(reader: Any, config: DraftConfig, draft_folder: Path, llm_gguf: Path) -> str:
    """The GGUF architecture, after checking the GGUF's LLM has the shapes the draft was distilled against."""
    import warnings

    from gguf import dequantize

    architecture = _field(reader, "general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(f"{llm_gguf} is a {architecture!r} GGUF; draft export supports "
                             f"{', '.join(SUPPORTED_ARCHITECTURES)} models")
    head = _head_tensor(reader)
    found = {"model_type": architecture, "hidden_size": _field(reader, f"{architecture}.embedding_length"),
             "num_hidden_layers": _field(reader, f"{architecture}.block_count"),
             "vocab_rows": None if head is None else int(head.shape[-1])}
    expected = config.fingerprint
    mismatched = [f"{k}: draft expects {expected.get(k)!r}, GGUF has {v!r}" for k, v in found.items()
                  if expected.get(k) != v]
    if mismatched:
        raise ModelLoadError(f"the draft in {draft_folder} was distilled from {config.base_model!r}, which differs "
                             f"from the LLM in {llm_gguf} (" + "; ".join(mismatched) + ")")
    checksum = float(np.abs(dequantize(head.data, head.tensor_type).astype(np.float64)).sum())
    if abs(expected.get("head_checksum", checksum) - checksum) > 1e-3 * checksum:
        warnings.warn(f"the draft in {draft_folder} was distilled from other weights of this architecture "
                      f"({config.base_model!r}) than {llm_gguf}; the export runs, but expect fewer tokens from the "
                      "draft", stacklevel=3)
    return architecture


def _copy_metadata(reader: Any, writer: Any, architecture: str, config: DraftConfig, tensor_type: str) -> None:
    """Every key/value field of the LLM's GGUF, with the draft's block count, name and file type."""
    from gguf import GGUFValueType, LlamaFileType

    file_types = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0}
    llm_name = _field(reader, "general.name") or config.base_model
    replaced = {
        f"{architecture}.block_count": (len(config.layers), GGUFValueType.UINT32),
        "general.name": (f"{llm_name} rstitch draft (layers {','.join(map(str, config.layers))})",
                         GGUFValueType.STRING),
        "general.file_type": (int(file_types[tensor_type]), GGUFValueType.UINT32),
    }
    _copy_fields(reader, writer, replaced)


def _copy_fields(reader: Any, writer: Any, replaced: dict[str, tuple[Any, Any]]) -> None:
    """Every key/value field of ``reader``, with the ``replaced`` ones (key: (value, type)) in their place."""
    from gguf import GGUFValueType

    for key, field in reader.fields.items():
        if key in _HEADER_FIELDS or key == "general.architecture" or key in replaced:
            continue  # the writer adds the architecture itself; replaced keys are added below
        sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)
    for key, (value, value_type) in replaced.items():
        writer.add_key_value(key, value, value_type)


def _copy_shared_tensors(reader: Any, writer: Any, float32: bool = False) -> None:
    """Every tensor outside the decoder blocks, as stored (same bytes, same quantisation type), or dequantised
    to f32 with ``float32``."""
    for tensor in reader.tensors:
        if tensor.name.startswith("blk."):
            continue
        if float32:
            writer.add_tensor(tensor.name, _as_float32(tensor))
        else:
            writer.add_tensor(tensor.name, tensor.data, raw_shape=None, raw_dtype=tensor.tensor_type)


def _as_float32(tensor: Any) -> np.ndarray:
    """A GGUF tensor's values as a float32 array (numpy order: the GGUF shape reversed)."""
    from gguf import dequantize

    return np.ascontiguousarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)


def _add_draft_layers(writer: Any, weights: dict[str, np.ndarray], reader: Any, architecture: str,
                      num_layers: int, tensor_type: str) -> None:
    """The draft's layers under GGUF names, Q/K rows reordered for llama.cpp's rotary layout."""
    import gguf

    arch_enum = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}[architecture]
    names = gguf.get_tensor_name_map(arch_enum, num_layers)
    num_heads = _field(reader, f"{architecture}.attention.head_count")
    num_kv_heads = _field(reader, f"{architecture}.attention.head_count_kv") or num_heads
    for key in sorted(weights):
        gguf_name = names.get_name(f"model.{key}", try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelLoadError(f"the draft weight {key!r} has no GGUF name for a {architecture!r} model")
        weight = weights[key]
        if key.endswith("self_attn.q_proj.weight"):
            weight = permute_for_gguf_rope(weight, num_heads)
        elif key.endswith("self_attn.k_proj.weight"):
            weight = permute_for_gguf_rope(weight, num_kv_heads)
        data, ggml_type = _encode(weight, tensor_type)
        writer.add_tensor(gguf_name, data, raw_dtype=ggml_type)


def _encode(weight: np.ndarray, tensor_type: str) -> tuple[np.ndarray, Any]:
    """``weight`` (float32) in the asked type; 1-D tensors (norms, biases) stay f32, as llama.cpp's converter keeps
    them, and a matrix whose rows do not split into Q8_0's 32-value blocks falls back to f16."""
    from gguf import GGMLQuantizationType, quantize

    if weight.ndim == 1 or tensor_type == "f32":
        return weight.astype(np.float32), GGMLQuantizationType.F32
    if tensor_type == "q8_0" and weight.shape[-1] % 32 == 0:
        return quantize(weight, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return weight.astype(np.float16), GGMLQuantizationType.F16


def source_digest(draft_folder: Path, llm_gguf: Path) -> str:
    """SHA-256 of the draft's files, the LLM GGUF's name and size and this format's version."""
    digest = hashlib.sha256(b"rstitch-draft-gguf/1")
    for name in (DRAFT_CONFIG, DRAFT_WEIGHTS):
        digest.update((draft_folder / name).read_bytes())
    digest.update(f"{llm_gguf.name}:{llm_gguf.stat().st_size}".encode())
    return digest.hexdigest()
