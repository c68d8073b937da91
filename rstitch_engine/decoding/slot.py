"""One request's KV cache for one model of the pair (``Slot``).

``LoadedModel`` (``rstitch_engine.models.loaded``) is shared by every request; a ``Slot`` belongs to
one request and holds that request's cache, of the model's backend (``models.execution``):

* dynamic: a transformers ``DynamicCache`` (built from the model's config, so sliding-window and
  hybrid layer types come out right), made with the slot;
* static: a ``StaticCache`` from the model's pool, taken at the slot's first pass (a model that never
  runs for a request holds none) and given back by ``release``.

The cache only ever grows: a discarded SLM token is never fed to the SLM (see ``Slot.catch_up``), so
rolling it back costs nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import Cache, DynamicCache

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
    needed_tokens: int = 0
    """Tokens the request may reach (prompt + max_new_tokens): sizes a static cache."""
    cache: Cache | None = field(init=False, default=None)
    """The request's cache; None for a static slot before its first pass and after ``release``."""
    n_cached: int = 0
    records: list[ForwardRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.loaded.static_steps is None:
            self.cache = DynamicCache(config=self.loaded.model.config)

    def release(self) -> None:
        """Give a static cache back to its pool (the request is over); a no-op for a dynamic cache."""
        steps = self.loaded.static_steps
        if steps is not None and self.cache is not None:
            cache, self.cache = self.cache, None
            steps.pool.give_back(cache)  # type: ignore[arg-type]

    @torch.inference_mode()
    def catch_up(self, tokens: list[int], kind: ForwardKind, want_hidden: bool) -> NextToken:
        """Feed exactly the unseen tokens ``tokens[n_cached:]`` in one forward pass.

        Afterwards the cache covers all of ``tokens`` and the result predicts position
        ``len(tokens)``. There is always at least one unseen token: a model only becomes active
        after a token it did not write was appended, or after appending its own token.
        """
        unseen = tokens[self.n_cached:]
        assert unseen, "a slot is only run when it has unseen tokens"
        device, steps = self.loaded.device, self.loaded.static_steps
        start = time.perf_counter()
        if steps is not None:
            if self.cache is None:
                if self.n_cached:
                    raise RuntimeError("this slot's static cache was released: its request is over")
                self.cache = steps.pool.take(steps.capacity_for(max(self.needed_tokens, len(tokens))))
            logits, hidden = steps.run(unseen, self.cache, self.n_cached, want_hidden)  # type: ignore[arg-type]
        else:
            input_ids = torch.tensor([unseen], dtype=torch.long, device=device)  # [1, n_new]
            output = self.loaded.forward(input_ids, self.cache, self.n_cached, want_hidden)  # type: ignore[arg-type]
            logits = output.logits[0, -1, : self.loaded.vocab_size].float()  # [V]
            hidden = output.hidden_states[-1][0, -1] if want_hidden else None  # [hidden_size]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        self.records.append(ForwardRecord(self.loaded.role, kind, len(unseen), self.n_cached, seconds))
        self.n_cached = len(tokens)
        return NextToken(logits=logits, hidden=hidden)
