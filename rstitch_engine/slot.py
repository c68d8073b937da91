"""One model of the pair and, per request, its KV cache.

``LoadedModel`` is shared by every request; ``Slot`` belongs to one request and holds that
request's cache. Supported caches: transformers' ``DynamicCache`` (built from the model's config,
so sliding-window and hybrid layer types come out right). The cache only ever grows: a discarded
SLM token is never fed to the SLM (see ``Slot.catch_up``), so rolling it back costs nothing.
"""

from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import DynamicCache, PreTrainedModel

ModelRole = Literal["slm", "llm"]
ForwardKind = Literal["decode", "catchup"]


def cache_keyword(model: PreTrainedModel) -> str:
    """The forward argument taking the KV cache: 'cache' in later transformers 5.x, where
    'past_key_values' is deprecated (removed in 5.40), and 'past_key_values' before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM ready for stitched decoding, shared by all requests."""

    role: ModelRole
    model: PreTrainedModel
    vocab_size: int
    """Size of the shared real vocabulary; logits are sliced to it before any use."""
    name: str = ""

    @property
    def device(self) -> torch.device:
        return self.model.device  # where the input ids go (the embeddings, with a device_map too)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def context_window(self) -> int | None:
        config = self.model.config.get_text_config(decoder=True)
        return getattr(config, "max_position_embeddings", None)

    def forward(self, input_ids: torch.Tensor, cache: DynamicCache, start: int, want_hidden: bool = False) -> Any:
        """One cached pass: ``input_ids`` [1, n] at positions ``start .. start + n - 1``, after the
        ``start`` tokens ``cache`` covers (which it then covers too). Logits of the last position only."""
        positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)  # [n]
        return self.model(input_ids=input_ids, **{self._cache_keyword: cache}, cache_position=positions,
                          use_cache=True, logits_to_keep=1, output_hidden_states=want_hidden)

    @torch.inference_mode()
    def answer_logits(self, prompt: list[int], answer: list[int], want_hidden: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: one uncached pass over prompt + answer. Returns the float32 logits over the
        shared vocabulary that predict each answer token ([R, V]: row j predicts ``answer[j]`` from
        everything before it) and, when asked, the last-layer hidden states there ([R, d])."""
        ids = torch.tensor([prompt + answer], device=self.device)  # [1, P + R]
        output = self.model(input_ids=ids, use_cache=False, output_hidden_states=want_hidden)
        span = slice(len(prompt) - 1, len(prompt) - 1 + len(answer))
        hidden = output.hidden_states[-1][0, span] if want_hidden else None
        return output.logits[0, span, : self.vocab_size].float(), hidden

    @functools.cached_property
    def _cache_keyword(self) -> str:
        return cache_keyword(self.model)


@dataclass(frozen=True)
class ForwardRecord:
    """What one forward pass of one model did."""

    role: ModelRole
    kind: ForwardKind
    """'decode': fed only the token this model wrote itself on the step before.
    'catchup': fed tokens it had not seen yet (the prompt, or tokens the other model wrote)."""
    new_tokens: int
    cached_tokens: int
    """Tokens the cache covered before this pass."""
    seconds: float


@dataclass(frozen=True)
class NextToken:
    """A model's view of the next position."""

    logits: torch.Tensor
    """[V] float32 over the shared real vocabulary."""
    hidden: torch.Tensor | None
    """[hidden_size] last-layer hidden state at the last fed position, when asked for."""


@dataclass
class Slot:
    """One request's cache for one model. Invariant: the cache covers ``tokens[:n_cached]``."""

    loaded: LoadedModel
    cache: DynamicCache = field(init=False)
    n_cached: int = 0
    records: list[ForwardRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cache = DynamicCache(config=self.loaded.model.config)

    @torch.inference_mode()
    def catch_up(self, tokens: list[int], kind: ForwardKind, want_hidden: bool) -> NextToken:
        """Feed exactly the unseen tokens ``tokens[n_cached:]`` in one forward pass.

        Afterwards the cache covers all of ``tokens`` and the result predicts position
        ``len(tokens)``. There is always at least one unseen token: a model only becomes active
        after a token it did not write was appended, or after appending its own token.
        """
        unseen = tokens[self.n_cached:]
        assert unseen, "a slot is only run when it has unseen tokens"
        device = self.loaded.device
        start = time.perf_counter()
        input_ids = torch.tensor([unseen], dtype=torch.long, device=device)  # [1, n_new]
        output = self.loaded.forward(input_ids, self.cache, self.n_cached, want_hidden)
        logits = output.logits[0, -1, : self.loaded.vocab_size].float()  # [V]
        hidden = output.hidden_states[-1][0, -1] if want_hidden else None  # [hidden_size]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        self.records.append(ForwardRecord(self.loaded.role, kind, len(unseen), self.n_cached, seconds))
        self.n_cached = len(tokens)
        return NextToken(logits=logits, hidden=hidden)
