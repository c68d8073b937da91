"""A plain cached decode loop of one model: the LLM-alone and SLM-alone baselines."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from ..models.loaded import LoadedModel
from .constraints import GrammarState
from .detokenize import TextAssembler
from .sampling import RequestRandomness, choose_token
from .settings import GenerationSettings


@dataclass(frozen=True)
class AloneResult:
    """Output and wall time of one model decoding alone."""

    text: str
    token_ids: tuple[int, ...]
    seconds: float
    """Wall time from the prompt prefill to the last token."""


@torch.inference_mode()
def decode_alone(
    loaded: LoadedModel,
    prompt_ids: list[int],
    settings: GenerationSettings,
    tokenizer: Any,
    eos_ids: frozenset[int],
    grammar: GrammarState | None = None,
) -> AloneResult:
    """Prefill the prompt, then feed one token per forward pass until EOS, a stop string or the limit.

    With a grammar, each step's logits are masked to the allowed tokens as in the stitched loop, and a
    position with no allowed token ends the output."""
    model, device = loaded.model, loaded.device
    cache = DynamicCache(config=model.config)
    randomness = RequestRandomness(settings.seed)
    text = TextAssembler(tokenizer, settings.stop)
    output: list[int] = []
    start = time.perf_counter()
    next_input = torch.tensor([prompt_ids], device=device)  # [1, P], then [1, 1]
    fed = 0  # tokens the cache covers
    while len(output) < settings.max_new_tokens:
        logits = loaded.forward(next_input, cache, fed).logits
        fed += next_input.shape[1]
        scores = logits[0, -1, : loaded.vocab_size].float()  # [V]
        if grammar is not None:
            if grammar.dead_end:
                break
            scores = grammar.mask(scores)
        token = choose_token(scores, settings, randomness.generator_for(scores.device))
        output.append(token)
        if grammar is not None:
            grammar.consume(token)
        text.push(token, is_last=token in eos_ids or len(output) == settings.max_new_tokens)
        if token in eos_ids or text.stopped:
            break
        next_input = torch.tensor([[token]], device=device)
    return AloneResult(text=text.text, token_ids=tuple(output), seconds=time.perf_counter() - start)
