"""The draft exported to GGUF is the same model: transformers' GGUF loader gives the draft's own logits.

The tiny LLM's GGUF is written here with the gguf package the way llama.cpp's converter writes a
Llama (GGUF names, Q/K rows in the interleaved rotary order, an untied output head), so the export
is checked against an independent reader: transformers' GGUF loader, which undoes that order.
"""

from __future__ import annotations

import copy
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from rstitch_engine.cli import main
from rstitch_engine.errors import InvalidSettingError, ModelLoadError
from rstitch_engine.models.draft import DraftConfig, build_draft, llm_fingerprint, save_draft
from rstitch_engine.models.gguf_export import export_draft_gguf, export_float32_gguf, permute_for_gguf_rope
from tiny import CHAT_TEMPLATE, byte_level_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RMS_EPS = 2.0**-20
"""GGUF stores the norm epsilon as float32: a value float32 holds exactly keeps both models' configs equal."""
DRAFT_LAYERS = (0, 2, 3)
PROMPTS = [[5, 17, 42, 99, 3], [1, 200, 201, 7, 7, 7, 150, 11], [64]]


def tiny_llama(hidden: int = 64, seed: int = 3) -> LlamaForCausalLM:
    """A 4-layer random Llama in float32 (GQA: 4 heads, 2 KV heads), rows a multiple of Q8_0's block of 32."""
    config = LlamaConfig(vocab_size=len(byte_level_tokenizer()), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=RMS_EPS,
                         max_position_embeddings=256, initializer_range=0.3, tie_word_embeddings=False,
                         eos_token_id=0, bos_token_id=1, pad_token_id=2)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(torch.float32).eval()


def write_llm_gguf(llm: LlamaForCausalLM, path: Path) -> Path:
    """The LLM as llama.cpp's converter lays out a Llama, with the tiny tokenizer and a chat template."""
    config, tokenizer = llm.config, byte_level_tokenizer()
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for key, tensor in llm.state_dict().items():
        weight = tensor.numpy()
        if key.endswith("q_proj.weight"):
            weight = permute_for_gguf_rope(weight, config.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            weight = permute_for_gguf_rope(weight, config.num_key_value_heads)
        writer.add_tensor(names.get_name(key, try_suffixes=(".weight",)), weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(LLM, its draft, the draft's folder, the LLM's GGUF) in float32, the draft's layers perturbed from the LLM's."""
    root = tmp_path_factory.mktemp("gguf")
    llm = tiny_llama()
    draft = build_draft(llm, DRAFT_LAYERS)
    with torch.no_grad():  # a trained draft's layers differ from the LLM's: make the export's layers its own
        for p in draft.model.layers.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = root / "draft"
    save_draft(draft, folder, DraftConfig(base_model="tiny-llama", layers=DRAFT_LAYERS,
                                          fingerprint=llm_fingerprint(llm), dtype="float32"))
    return llm, draft, folder, write_llm_gguf(llm, root / "llm.gguf")


def load_gguf(path: Path) -> LlamaForCausalLM:
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_the_tiny_llms_gguf_is_the_llm(tiny):
    """The test's own LLM GGUF reads back as the LLM: the layout the export copies from is a real one."""
    llm, _, _, llm_gguf = tiny
    loaded = load_gguf(llm_gguf)
    assert all(torch.equal(logits(loaded, ids), logits(llm, ids)) for ids in PROMPTS)


def test_the_f32_export_gives_the_drafts_logits_exactly(tiny, tmp_path):
    """Exact (torch.equal): f32 holds the float32 weights bit for bit, the Q/K reordering is a permutation that
    the loader undoes, and both sides run the same transformers Llama code on the same config."""
    llm, draft, folder, llm_gguf = tiny
    exported = export_draft_gguf(folder, llm_gguf, tmp_path / "draft.f32.gguf", "f32")
    loaded = load_gguf(exported)
    assert loaded.config.num_hidden_layers == len(DRAFT_LAYERS)
    for ids in PROMPTS:
        assert torch.equal(logits(loaded, ids), logits(draft, ids))
    assert not torch.equal(logits(loaded, PROMPTS[0]), logits(llm, PROMPTS[0]))
    assert not list(tmp_path.glob("*.partial"))


def test_the_export_keeps_the_llms_metadata_and_shared_tensors(tiny, tmp_path):
    _, _, folder, llm_gguf = tiny
    exported = export_draft_gguf(folder, llm_gguf, tmp_path / "draft.q8_0.gguf")  # q8_0 is the default
    source, result = gguf.GGUFReader(llm_gguf), gguf.GGUFReader(exported)
    changed = {"llama.block_count", "general.name", "general.file_type", "rstitch.draft.source_sha256",
               "GGUF.kv_count", "GGUF.tensor_count"}
    for key, field in source.fields.items():
        if key not in changed:
            assert result.fields[key].contents() == field.contents(), key
    assert result.fields["llama.block_count"].contents() == len(DRAFT_LAYERS)
    assert result.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert "draft" in result.fields["general.name"].contents()
    shared = {t.name: t for t in source.tensors if not t.name.startswith("blk.")}
    kept = {t.name: t for t in result.tensors if not t.name.startswith("blk.")}
    assert shared.keys() == kept.keys() == {"token_embd.weight", "output_norm.weight", "output.weight"}
    for name, tensor in shared.items():
        assert kept[name].tensor_type == tensor.tensor_type and np.array_equal(kept[name].data, tensor.data)
    layer_types = {t.name.split(".", 2)[2]: t.tensor_type.name for t in result.tensors if t.name.startswith("blk.0.")}
    assert layer_types == {"attn_norm.weight": "F32", "ffn_norm.weight": "F32", "attn_q.weight": "Q8_0",
                           "attn_k.weight": "Q8_0", "attn_v.weight": "Q8_0", "attn_output.weight": "Q8_0",
                           "ffn_gate.weight": "Q8_0", "ffn_up.weight": "Q8_0", "ffn_down.weight": "Q8_0"}
    assert {t.name.split(".")[1] for t in result.tensors if t.name.startswith("blk.")} == {"0", "1", "2"}


@pytest.mark.parametrize("ggml_type", [gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0],
                         ids=["f16", "q8_0"])
def test_the_smaller_exports_are_the_draft_with_its_matrices_rounded(tiny, tmp_path, ggml_type):
    """Exact (torch.equal) against a copy of the draft whose layer matrices went through the type and back
    (norms stay f32). Q8_0's blocks of 32 lie along a row, so rounding commutes with the Q/K row reordering."""
    _, draft, folder, llm_gguf = tiny
    tensor_type = ggml_type.name.lower()
    loaded = load_gguf(export_draft_gguf(folder, llm_gguf, tmp_path / f"draft.{tensor_type}.gguf", tensor_type))
    rounded = copy.deepcopy(draft)
    with torch.no_grad():
        for p in rounded.model.layers.parameters():
            if p.ndim == 2:
                p.copy_(torch.from_numpy(gguf.dequantize(gguf.quantize(p.numpy(), ggml_type), ggml_type)))
    for ids in PROMPTS:
        assert torch.equal(logits(loaded, ids), logits(rounded, ids))
        assert not torch.equal(logits(loaded, ids), logits(draft, ids))


def test_a_draft_of_another_llm_is_refused_and_nothing_is_written(tiny, tmp_path):
    _, _, _, llm_gguf = tiny
    other = tiny_llama(hidden=96, seed=4)
    folder = tmp_path / "other-draft"
    save_draft(build_draft(other, (0, 3)), folder, DraftConfig(base_model="tiny-llama-96", layers=(0, 3),
                                                               fingerprint=llm_fingerprint(other), dtype="float32"))
    out = tmp_path / "out.gguf"
    refusal = r"distilled from 'tiny-llama-96'.*hidden_size: draft expects 96, GGUF has 64"
    with pytest.raises(ModelLoadError, match=refusal):
        export_draft_gguf(folder, llm_gguf, out)
    assert list(tmp_path.glob("out.gguf*")) == []


def test_a_draft_of_other_weights_of_the_same_shape_exports_with_a_warning(tiny, tmp_path):
    _, _, _, llm_gguf = tiny
    sibling = tiny_llama(seed=5)  # same shapes, other weights: a differing head checksum
    folder = tmp_path / "sibling-draft"
    save_draft(build_draft(sibling, (0, 3)), folder, DraftConfig(base_model="tiny-sibling", layers=(0, 3),
                                                                 fingerprint=llm_fingerprint(sibling), dtype="float32"))
    with pytest.warns(UserWarning, match="distilled from other weights of this architecture"):
        assert export_draft_gguf(folder, llm_gguf, tmp_path / "out.gguf").is_file()


def test_missing_files_and_unknown_types_are_named(tiny, tmp_path):
    _, _, folder, llm_gguf = tiny
    with pytest.raises(ModelLoadError, match="GGUF file not found: .*missing.gguf"):
        export_draft_gguf(folder, tmp_path / "missing.gguf", tmp_path / "out.gguf")
    with pytest.raises(ModelLoadError, match=r"no draft in .*nowhere: rstitch_draft.json is missing"):
        export_draft_gguf(tmp_path / "nowhere", llm_gguf, tmp_path / "out.gguf")
    with pytest.raises(InvalidSettingError, match="tensor_type must be one of q8_0, f16, f32, got 'q4_0'"):
        export_draft_gguf(folder, llm_gguf, tmp_path / "out.gguf", "q4_0")
    assert list(tmp_path.iterdir()) == []


def test_the_command_exports_and_reports_bad_input(tiny, tmp_path, capsys):
    _, _, folder, llm_gguf = tiny
    out = tmp_path / "cli.gguf"
    assert main(["export-gguf", "--draft", str(folder), "--llm-gguf", str(llm_gguf), "--type", "f16",
                 "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    assert main(["export-gguf", "--draft", str(tmp_path / "nowhere"), "--llm-gguf", str(llm_gguf)]) == 2
    assert "rstitch_draft.json is missing" in capsys.readouterr().err


def test_the_rope_reordering_is_the_one_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)  # 8 heads of dim 16
    permuted = permute_for_gguf_rope(weight, 8)
    assert not np.array_equal(permuted, weight)
    assert np.array_equal(permuted[:4, 0], weight[[0, 8, 1, 9], 0])  # head 0: rows j and j + 8 interleaved
    undone = LlamaTensorProcessor()._reverse_permute_weights(permuted, 8, 8)
    assert np.array_equal(undone, weight)


@pytest.mark.real_model
def test_the_shipped_drafts_gguf_decodes_like_the_draft(real_engine_float32):
    """Greedy tokens of the shipped draft's f32 export (transformers' GGUF loader) equal the draft's own."""
    from rstitch_engine.models.gguf_export import default_draft_gguf

    pair = real_engine_float32.pair
    exported = default_draft_gguf("f32")
    written = exported.stat().st_mtime_ns
    assert default_draft_gguf("f32") == exported and exported.stat().st_mtime_ns == written  # exported once
    loaded = load_gguf(exported)
    chats = ["What is the capital of France?", "Explain gravity in one sentence.", "Write a haiku about rain."]
    for chat in chats:
        ids = pair.tokenizer.apply_chat_template([{"role": "user", "content": chat}], add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True)["input_ids"]
        settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=pair.tokenizer.eos_token_id)
        with torch.no_grad():
            expected = pair.slm.model.generate(ids, **settings)
            assert torch.equal(loaded.generate(ids, **settings), expected), chat


def test_the_float32_export_is_every_tensor_dequantised(tiny, tmp_path):
    """A q8_0 draft written all-f32: the same metadata, every tensor the source's dequantised values, and
    transformers (which dequantises a GGUF when it loads one) reads the same model from both files."""
    _, _, folder, llm_gguf = tiny
    quantised = export_draft_gguf(folder, llm_gguf, tmp_path / "draft.q8_0.gguf")
    widened = export_float32_gguf(quantised, tmp_path / "draft.all-f32.gguf")
    source, result = gguf.GGUFReader(quantised), gguf.GGUFReader(widened)
    for key, field in source.fields.items():
        if key not in ("general.file_type", "GGUF.kv_count"):
            assert result.fields[key].contents() == field.contents(), key
    assert result.fields["general.file_type"].contents() == gguf.LlamaFileType.ALL_F32
    assert [t.name for t in result.tensors] == [t.name for t in source.tensors]
    for before, after in zip(source.tensors, result.tensors):
        assert after.tensor_type == gguf.GGMLQuantizationType.F32
        assert np.array_equal(after.data, gguf.dequantize(before.data, before.tensor_type))
    for ids in PROMPTS:
        assert torch.equal(logits(load_gguf(widened), ids), logits(load_gguf(quantised), ids))
    assert not list(tmp_path.glob("*.partial"))
