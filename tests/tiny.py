"""Tiny real components for unit tests of the engine's mechanics.

Real transformers models built from configs (random weights, float64 so that a multi-token
catch-up and one-token decodes agree to ~1e-15 and greedy choices are exact), and real fast
tokenizers trained in-process on a small corpus: byte-level BPE (GPT-2 style, so multi-byte
characters split across tokens) and Metaspace/Unigram-free BPE (SentencePiece style, where a word
decoded alone loses its leading space).
"""

from __future__ import annotations

import functools
import json

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from rstitch_engine import ModelPair, StitchEngine
from rstitch_engine.decoding.routers import EntropyRouter

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Stitched decoding lets a small model write the easy tokens.",
    "When the small model is unsure, the large model takes over.",
    "Café, naïve, jalapeño, 東京, Größe, 🙂 and ½ are multi-byte characters.",
    "What is 3 + 4? It is 7. What is 12 * 3? It is 36.",
    "def add(a, b):\n    return a + b\n",
] * 4

SPECIALS = ["<eos>", "<bos>", "<pad>"]


@functools.lru_cache(maxsize=None)
def byte_level_tokenizer(vocab_size: int = 300, seed_text: str = "") -> PreTrainedTokenizerFast:
    """GPT-2 style byte-level BPE; ``seed_text`` changes the merges (for mismatch tests)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(CORPUS + ([seed_text] * 50 if seed_text else []), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", bos_token="<bos>", pad_token="<pad>")


@functools.lru_cache(maxsize=None)
def metaspace_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE: spaces become '▁' and are restored by the decoder."""
    core = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size + 256, special_tokens=SPECIALS + ["<unk>"] + byte_tokens)
    core.train_from_iterator(CORPUS, trainer)
    # The trainer registers byte tokens as *special*; in real SentencePiece tokenizers they are
    # ordinary tokens (decode must not skip them), so mark them as such.
    spec = json.loads(core.to_str())
    for added in spec["added_tokens"]:
        added["special"] = added["content"] in SPECIALS + ["<unk>"]
    core = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", bos_token="<bos>", pad_token="<pad>",
                                   unk_token="<unk>")


def tiny_model(arch: str, vocab_size: int, seed: int, layers: int = 2, hidden: int = 32,
               init_range: float = 0.3, max_positions: int = 512) -> torch.nn.Module:
    """A random-weight causal LM of the given architecture ('llama' or 'qwen2'), float64, eval mode."""
    common = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        initializer_range=init_range, tie_word_embeddings=False, eos_token_id=0, bos_token_id=1, pad_token_id=2,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(arch)
    return model.to(torch.float64).eval()


def tiny_pair(slm_arch: str = "llama", llm_arch: str = "qwen2", same_model: bool = False,
              slm_rows: int | None = None, llm_rows: int | None = None, max_positions: int = 512) -> ModelPair:
    """SLM and LLM over the byte-level tokenizer; ``*_rows`` pad the output layers past the vocabulary."""
    tokenizer = byte_level_tokenizer()
    vocab = len(tokenizer)
    slm = tiny_model(slm_arch, slm_rows or vocab, seed=1, layers=1, max_positions=max_positions)
    llm = slm if same_model else tiny_model(llm_arch, llm_rows or vocab, seed=2, layers=3, hidden=48,
                                            max_positions=max_positions)
    return ModelPair.from_models(slm, llm, tokenizer, slm_name=f"tiny-{slm_arch}", llm_name=f"tiny-{llm_arch}")


def tiny_engine(threshold: float = 0.5, **pair_kwargs: object) -> StitchEngine:
    return StitchEngine(tiny_pair(**pair_kwargs), EntropyRouter(threshold))  # type: ignore[arg-type]


CHAT_TEMPLATE = (
    "{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<bos>assistant: {% endif %}"
)


def tiny_chat_draft_pair() -> ModelPair:
    """A tiny LLM and a draft cut from it (its layers 0 and 2), over a tokenizer with a chat template."""
    from rstitch_engine.models.draft import build_draft

    base = byte_level_tokenizer()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, eos_token="<eos>",
                                        bos_token="<bos>", pad_token="<pad>", chat_template=CHAT_TEMPLATE)
    llm = tiny_model("qwen2", len(tokenizer), seed=2, layers=3, hidden=48)
    return ModelPair.from_models(build_draft(llm, [0, 2]), llm, tokenizer, slm_name="tiny-draft", llm_name="tiny-qwen2")
