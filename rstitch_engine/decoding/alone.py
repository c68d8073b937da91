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

    With a grammar, each step's logits are masked to the allowed tokens as in the stitched loop, a
    position with no allowed token ends the output, and a forced position (one allowed token) is
    kept without a pass, as the stitched loop keeps it: the next pass feeds it with the token before."""
    model, device = loaded.model, loaded.device
    cache = DynamicCache(config=model.config)
    randomness = RequestRandomness(settings.seed)
    text = TextAssembler(tokenizer, settings.stop)
    output: list[int] = []
    start = time.perf_counter()
    unfed = list(prompt_ids)  # tokens the cache does not cover yet: the prompt, then the last token(s)
    fed = 0  # tokens the cache covers
    while len(output) < settings.max_new_tokens:
        token = grammar.forced_token() if grammar is not None else None
        if token is None:
            logits = loaded.forward(torch.tensor([unfed], device=device), cache, fed).logits
            fed, unfed = fed + len(unfed), []
            scores = logits[0, -1, : loaded.vocab_size].float()  # [V]
            if grammar is not None:
                if grammar.dead_end:
                    break
                scores = grammar.mask(scores)
            token = choose_token(scores, settings, randomness.generator_for(scores.device))
        output.append(token)
        unfed.append(token)
        if grammar is not None:
            grammar.consume(token)
        text.push(token, is_last=token in eos_ids or len(output) == settings.max_new_tokens)
        if token in eos_ids or text.stopped:
            break
    return AloneResult(text=text.text, token_ids=tuple(output), seconds=time.perf_counter() - start)
