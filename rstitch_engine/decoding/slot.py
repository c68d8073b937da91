"""One request's KV cache for one model of the pair (``Slot``).

``LoadedModel`` (``rstitch_engine.models.loaded``) is shared by every request; a ``Slot`` belongs to
one request and holds that request's cache. Supported caches: transformers' ``DynamicCache`` (built
from the model's config, so sliding-window and hybrid layer types come out right). The cache only
ever grows: a discarded SLM token is never fed to the SLM (see ``Slot.catch_up``), so rolling it back
costs nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ..models.loaded import ForwardKind, ForwardRecord, LoadedModel


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
