"""One request's KV cache for one model of the pair (``Slot``).

``LoadedModel`` (``rstitch_engine.models.loaded``) is shared by every request; a ``Slot`` belongs to
one request and holds that request's cache, of the model's backend (``models.execution``):

* dynamic: a transformers ``DynamicCache`` (built from the model's config, so sliding-window and
  hybrid layer types come out right), made with the slot;
* static: a ``StaticCache`` from the model's pool, taken at the slot's first pass (a model that never
  runs for a request holds none) and given back by ``release``.

The cache only grows from one step to the next: a discarded SLM token is never fed to the SLM
(see ``Slot.catch_up``), so rolling it back costs nothing. The one exception is prompt lookup
(``decoding.lookup``): a pass may also feed proposed tokens, and the request then keeps only those
it confirmed (``Slot.rewind``), so that between steps the invariant holds again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import Cache, DynamicCache
from transformers.cache_utils import DynamicLayer

from ..models.loaded import ForwardKind, ForwardRecord, LoadedModel


@dataclass(frozen=True)
class NextToken:
    """A model's view of the next position."""

    logits: torch.Tensor
    """[V] float32 over the shared real vocabulary."""
    hidden: torch.Tensor | None
    """[hidden_size] last-layer hidden state at the last unseen token, when asked for."""
    proposal: tuple[int, ...] = ()
    """Proposed tokens the same pass fed after the unseen ones (prompt lookup); () for a plain pass."""
    proposal_logits: torch.Tensor | None = None
    """[len(proposal), V] float32: row j predicts the position after ``proposal[j]``; None for a plain pass."""


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

    @property
    def has_plain_cache(self) -> bool:
        """Whether the cache is plain growing per-layer key/value tensors (dynamic; no sliding windows,
        not static): what a padded batched pass (``decoding.batch``) and ``rewind`` work on."""
        return self.cache is not None and all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def rewind(self, n_tokens: int) -> None:
        """Drop the cache's entries after its first ``n_tokens`` (proposed tokens the request did not keep)."""
        assert self.cache is not None and self.has_plain_cache, "only a dynamic cache of plain layers rewinds"
        covered = self.cache.get_seq_length()
        assert n_tokens <= covered, f"cannot rewind a cache of {covered} tokens to {n_tokens}"
        if n_tokens < covered:
            self.cache.crop(n_tokens - covered)  # a negative count removes that many trailing entries
        self.n_cached = n_tokens

    def release(self) -> None:
        """Give a static cache back to its pool (the request is over); a no-op for a dynamic cache."""
        steps = self.loaded.static_steps
        if steps is not None and self.cache is not None:
            cache, self.cache = self.cache, None
            steps.pool.give_back(cache)  # type: ignore[arg-type]

    @torch.inference_mode()
    def catch_up(self, tokens: list[int], kind: ForwardKind, want_hidden: bool,
                 proposal: tuple[int, ...] = ()) -> NextToken:
        """Feed exactly the unseen tokens ``tokens[n_cached:]`` in one forward pass.

        Afterwards the cache covers all of ``tokens`` and the result predicts position
        ``len(tokens)``. There is always at least one unseen token: a model only becomes active
        after a token it did not write was appended, or after appending its own token.

        With a ``proposal`` (prompt lookup; a slot that ``has_plain_cache`` only), the same pass feeds it
        after the unseen tokens: the cache then covers ``tokens + proposal`` until the request keeps
        what it confirmed (``rewind``), and ``proposal_logits`` predict the position after each.
        """
        unseen = tokens[self.n_cached:]
        assert unseen, "a slot is only run when it has unseen tokens"
        assert not proposal or (self.has_plain_cache and not want_hidden), "proposals need a cache that drops them again"
        device, steps = self.loaded.device, self.loaded.static_steps
        start = time.perf_counter()
        views: torch.Tensor | None = None  # [1 + k, V]: after the last unseen token, then after each proposed one
        if steps is not None:
            if self.cache is None:
                if self.n_cached:
                    raise RuntimeError("this slot's static cache was released: its request is over")
                self.cache = steps.pool.take(steps.capacity_for(max(self.needed_tokens, len(tokens))))
            logits, hidden = steps.run(unseen, self.cache, self.n_cached, want_hidden)  # type: ignore[arg-type]
        else:
            input_ids = torch.tensor([unseen + list(proposal)], dtype=torch.long, device=device)  # [1, n_new + k]
            output = self.loaded.forward(input_ids, self.cache, self.n_cached, want_hidden,  # type: ignore[arg-type]
                                         keep=len(proposal) + 1)
            views = output.logits[0, :, : self.loaded.vocab_size].float()
            logits = views[0]  # [V]
            hidden = output.hidden_states[-1][0, len(unseen) - 1] if want_hidden else None  # [hidden_size]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        self.records.append(ForwardRecord(self.loaded.role, kind, len(unseen) + len(proposal), self.n_cached, seconds,
                                          proposed_tokens=len(proposal)))
        self.n_cached = len(tokens)  # a proposal's entries lie beyond it until the request ``rewind``s
        return NextToken(logits=logits, hidden=hidden, proposal=proposal,
                         proposal_logits=views[1:] if proposal and views is not None else None)
