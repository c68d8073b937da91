"""A plain cached decode loop of one model: the LLM-alone and SLM-alone baselines."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..models.loaded import LoadedModel
from ..models.runner import RowPlan
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
    runner = loaded.runner  # the engine's own passes, cache backend too
    slot = runner.new_slot(len(prompt_ids) + settings.max_new_tokens)
    randomness = RequestRandomness(settings.seed)
    text = TextAssembler(tokenizer, settings.stop)
    tokens = list(prompt_ids)  # x + y; the slot's cache covers tokens[:slot.n_cached]
    start = time.perf_counter()
    try:
        while len(tokens) - len(prompt_ids) < settings.max_new_tokens:
            token = grammar.forced_token() if grammar is not None else None
            if token is None:
                kind = "decode" if len(tokens) - slot.n_cached == 1 and len(tokens) > len(prompt_ids) else "catchup"
                scores = runner.run_one(RowPlan(slot, tokens, kind)).logits  # [V]
                if grammar is not None:
                    if grammar.dead_end:
                        break
                    scores = grammar.mask(scores)
                token = choose_token(scores, settings, randomness.generator_for(scores.device))
            tokens.append(token)
            if grammar is not None:
                grammar.consume(token)
            is_last = token in eos_ids or len(tokens) - len(prompt_ids) == settings.max_new_tokens
            text.push(token, is_last=is_last)
            if token in eos_ids or text.stopped:
                break
    finally:
        runner.release(slot)
    output = tokens[len(prompt_ids):]
    return AloneResult(text=text.text, token_ids=tuple(output), seconds=time.perf_counter() - start)
