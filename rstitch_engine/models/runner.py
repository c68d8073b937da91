"""The seam between a request's step and an inference library: one ``ModelRunner`` per loaded model.

A request's step says what its active model must be fed: a ``RowPlan`` (the request's cache on that
model, its tokens x + y, and prompt lookup's proposal). The model's runner takes every row plan of
a step and returns one ``RowResult`` per row, in order. The runner alone decides how the rows run
(one pass for all of them, padded or packed; bucketed static passes; row by row), times and syncs
its passes, appends one ``ForwardRecord`` per row and pass, advances each row's ``n_cached``, and
later drops the entries of proposed tokens the request did not keep (``rewind``). Decoding code
sees only the names defined here, so a runner over another inference library is a new subclass of
``ModelRunner`` and changes nothing in ``decoding``.

Invariants of a row (``CacheSlot`` s, ``RowPlan`` p):

* before a pass, ``s`` covers ``p.tokens[:s.n_cached]`` and ``p.tokens[s.n_cached:]`` is non-empty;
* after it, ``s.n_cached == len(p.tokens)``; with a proposal the cache also holds the proposal's
  entries beyond that until ``rewind`` cuts it back to the tokens the request kept;
* the result's ``logits`` predict position ``len(p.tokens)``, row j of ``proposal_logits`` the
  position after ``p.proposal[j]``; a row that failed has ``error`` set and no logits, and its cache
  is unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

ModelRole = Literal["slm", "llm"]
ForwardKind = Literal["decode", "catchup"]


@dataclass(frozen=True)
class ForwardRecord:
    """What one forward pass of one model did for one request."""

    role: ModelRole
    kind: ForwardKind
    """'decode': fed only the token this model wrote itself on the step before.
    'catchup': fed tokens it had not seen yet (the prompt, or tokens the other model wrote)."""
    new_tokens: int
    cached_tokens: int
    """Tokens the cache covered before this pass."""
    seconds: float
    """Wall time of the pass; in a batched pass, of the whole pass (shared by its rows)."""
    batch_size: int = 1
    """Requests that shared this pass (1: the request ran alone)."""
    proposed_tokens: int = 0
    """Of ``new_tokens``, those proposed by prompt lookup (``decoding.lookup``) after the unseen ones."""


class CacheSlot:
    """One request's cache on one model. Invariant: it covers the request's ``tokens[:n_cached]``.

    A runner subclasses it with its own cache handle; ``records`` are the passes run for it.
    """

    def __init__(self, role: ModelRole, needed_tokens: int = 0) -> None:
        self.role: ModelRole = role
        self.needed_tokens = needed_tokens
        """Tokens the request may reach (prompt + max_new_tokens): sizes a preallocated cache."""
        self.n_cached = 0
        self.records: list[ForwardRecord] = []


@dataclass(slots=True)
class RowPlan:
    """One row of a pass: feed ``tokens[slot.n_cached:]``, then ``proposal``, into ``slot``."""

    slot: CacheSlot
    tokens: list[int]
    """The request's x + y (the runner feeds the part the slot has not seen)."""
    kind: ForwardKind
    want_hidden: bool = False
    """Also return the last-layer hidden state at the last unseen token."""
    proposal: tuple[int, ...] = ()
    """Tokens prompt lookup proposes after the unseen ones, fed in the same pass; () for a plain pass."""

    @property
    def role(self) -> ModelRole:
        return self.slot.role

    @property
    def new_tokens(self) -> int:
        """Tokens the pass feeds: the unseen ones and the proposal."""
        return len(self.tokens) - self.slot.n_cached + len(self.proposal)


@dataclass(slots=True)
class RowResult:
    """A model's view of the positions after a row's fed tokens, or the error that row's pass raised."""

    logits: torch.Tensor | None
    """[V] float32 over the shared real vocabulary, predicting position ``len(plan.tokens)``."""
    hidden: torch.Tensor | None = None
    """[hidden_size] last-layer hidden state at the last unseen token, when asked for."""
    proposal: tuple[int, ...] = ()
    """The proposed tokens the pass fed after the unseen ones; () for a plain pass."""
    proposal_logits: torch.Tensor | None = None
    """[len(proposal), V] float32: row j predicts the position after ``proposal[j]``; None for a plain pass."""
    error: BaseException | None = None
    """Set when this row's pass raised (the row's cache is then unchanged)."""


class ModelRunner(ABC):
    """Runs one loaded model's passes for every request (see the module docstring)."""

    role: ModelRole

    @abstractmethod
    def new_slot(self, needed_tokens: int = 0) -> CacheSlot:
        """An empty cache for one request that may reach ``needed_tokens`` tokens."""

    @abstractmethod
    def run(self, plans: Sequence[RowPlan]) -> list[RowResult]:
        """Run every row (all on this model), one result per row in order; a row whose pass fails gets
        its ``error`` and the others go on."""

    @abstractmethod
    def takes_proposals(self, slot: CacheSlot) -> bool:
        """Whether ``slot`` can be fed a proposal and later ``rewind`` its unkept entries."""

    @abstractmethod
    def rewind(self, slot: CacheSlot, n_tokens: int) -> None:
        """Keep only the cache's first ``n_tokens`` entries (drop proposed tokens the request did not keep)."""

    @abstractmethod
    def release(self, slot: CacheSlot) -> None:
        """The request is over: give the slot's cache back (a no-op where the collector frees it)."""

    @property
    @abstractmethod
    def pools_caches(self) -> bool:
        """Whether ``release`` gives caches back to a pool (so a finished request must be released)."""

    def run_one(self, plan: RowPlan) -> RowResult:
        """One row alone; its error, if any, is raised here."""
        (result,) = self.run([plan])
        if result.error is not None:
            raise result.error
        return result
