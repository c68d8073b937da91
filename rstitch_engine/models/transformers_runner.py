"""The ``ModelRunner`` of a transformers model (``loaded.LoadedModel``): every pass the engine runs on it.

A request's cache on the model is a ``Slot``: a transformers ``DynamicCache`` (grown by
concatenation; the default) or a ``StaticCache`` taken from the model's pool at the slot's first
pass and given back by ``release`` (``execution``). ``run`` takes a step's rows and chooses:

* **one pass for all rows** while their caches are plain dynamic ones, the model's attention takes
  a block mask (``LoadedModel.packs_rows``) and their cached plus new tokens are at most
  ``PACKED_KEYS_LIMIT`` (a packed pass's attention grows with the product of new tokens and all keys);
* otherwise **one pass per group of similar numbers of new tokens** (decodes and short catch-ups
  together, a long prefill apart, so a decode row never pays for a prefill's padding), each
  packed or padded (``should_pack``);
* **row by row** for static caches, sliding-window caches, a group of one, and every row of a
  batched pass that raised (so that only the rows that fail again get the error).

Batched layouts (row r: its cache covers c_r tokens and it is fed n_r >= 1 tokens; each row's
tokens sit at its own positions c_r .. c_r + n_r - 1 and see exactly the keys they see alone, so
logits differ from the lone pass only by floating-point summation order):

* **padded**: past keys/values left-padded to P = max c_r, new tokens right-padded to N = max n_r;
  the pass computes B x N token columns;
* **packed**: all rows' new tokens in one sequence of T = sum n_r, the rows' caches one after
  another, and an additive 4D block mask (``LoadedModel.forward_rows``); T columns.

Each row keeps its own cache: its new keys/values are appended to it after the pass, so a request
can leave or join between any two steps and runs alone with the same cache.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from transformers import Cache, DynamicCache
from transformers.cache_utils import DynamicLayer

from .runner import CacheSlot, ForwardRecord, ModelRunner, RowPlan, RowResult

LoadedModel = Any
"""A ``loaded.LoadedModel`` (not imported: it builds its runner, and the layers have no cycles)."""

PACKING_WASTE = 2
"""A pass is packed when padding would run at least this many times the rows' real tokens."""
LENGTH_SPREAD = 8
"""Rows that cannot be packed share a pass while the longest feeds at most 2x + this many tokens more than the shortest."""
PACKED_KEYS_LIMIT = 2048
"""All of a step's rows share one pass while their cached plus new tokens are at most this many."""


class Slot(CacheSlot):
    """One request's transformers cache on one model. Invariant: it covers ``tokens[:n_cached]``."""

    def __init__(self, loaded: LoadedModel, needed_tokens: int = 0) -> None:
        super().__init__(loaded.role, needed_tokens)
        self.loaded = loaded
        self.cache: Cache | None = None
        """The request's cache; None for a static slot before its first pass and after ``release``."""
        if loaded.static_steps is None:
            self.cache = DynamicCache(config=loaded.model.config)

    @property
    def has_plain_cache(self) -> bool:
        """Whether the cache is plain growing per-layer key/value tensors (dynamic; no sliding windows,
        not static): what a batched pass and ``rewind`` work on."""
        return self.cache is not None and all(type(layer) is DynamicLayer for layer in self.cache.layers)


def should_pack(loaded: LoadedModel, new_counts: Sequence[int]) -> bool:
    """Whether to pack a pass's rows (mostly decodes beside a few catch-ups) rather than pad them."""
    padded_columns = len(new_counts) * max(new_counts)
    return loaded.packs_rows and padded_columns >= PACKING_WASTE * sum(new_counts)


class TransformersRunner(ModelRunner):
    """Every pass of one transformers model (see the module docstring)."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.role = loaded.role
        self._device = loaded.device  # read once: a model's ``device`` walks its parameters
        self._sync = self._device.type == "cuda"

    def new_slot(self, needed_tokens: int = 0) -> Slot:
        return Slot(self.loaded, needed_tokens)

    @property
    def pools_caches(self) -> bool:
        return self.loaded.static_steps is not None

    def takes_proposals(self, slot: CacheSlot) -> bool:
        return slot.has_plain_cache  # type: ignore[attr-defined]

    def rewind(self, slot: CacheSlot, n_tokens: int) -> None:
        cache = slot.cache  # type: ignore[attr-defined]
        assert cache is not None and slot.has_plain_cache, "only a dynamic cache of plain layers rewinds"  # type: ignore[attr-defined]
        covered = cache.get_seq_length()
        assert n_tokens <= covered, f"cannot rewind a cache of {covered} tokens to {n_tokens}"
        if n_tokens < covered:
            cache.crop(n_tokens - covered)  # a negative count removes that many trailing entries
        slot.n_cached = n_tokens

    def release(self, slot: CacheSlot) -> None:
        steps = self.loaded.static_steps
        cache = slot.cache  # type: ignore[attr-defined]
        if steps is not None and cache is not None:
            slot.cache = None  # type: ignore[attr-defined]
            steps.pool.give_back(cache)

    @torch.inference_mode()
    def run(self, plans: Sequence[RowPlan]) -> list[RowResult]:
        if len(plans) == 1:
            return [self._lone_or_error(plans[0])]
        results: list[RowResult | None] = [None] * len(plans)
        for group in self.pass_groups(plans):
            rows = [plans[index] for index in group]
            for index, result in zip(group, self._run_group(rows)):
                results[index] = result
        return results  # type: ignore[return-value]

    def pass_groups(self, plans: Sequence[RowPlan]) -> list[list[int]]:
        """Indices of the rows that share a pass: all of them if one packed pass can take them, else rows
        of similar numbers of new tokens (fewest first)."""
        order = sorted(range(len(plans)), key=lambda index: plans[index].new_tokens)
        if self._one_packed_pass(plans):
            return [order]
        groups: list[list[int]] = []
        for index in order:
            if not groups or plans[index].new_tokens > 2 * plans[groups[-1][0]].new_tokens + LENGTH_SPREAD:
                groups.append([index])
            else:
                groups[-1].append(index)
        return groups

    def _one_packed_pass(self, plans: Sequence[RowPlan]) -> bool:
        keys = sum(plan.slot.n_cached + plan.new_tokens for plan in plans)
        return (self.loaded.packs_rows and keys <= PACKED_KEYS_LIMIT
                and all(plan.slot.has_plain_cache for plan in plans))  # type: ignore[attr-defined]

    def _run_group(self, rows: list[RowPlan]) -> list[RowResult]:
        """One batched pass; if it raises (or cannot be batched), each row alone, errors kept per row."""
        if len(rows) > 1 and all(plan.slot.has_plain_cache for plan in rows):  # type: ignore[attr-defined]
            try:
                return self._batched(rows)
            except Exception:  # noqa: BLE001 - find the row at fault; the others go on
                pass
        return [self._lone_or_error(plan) for plan in rows]

    def _lone_or_error(self, plan: RowPlan) -> RowResult:
        try:
            return self._lone(plan)
        except Exception as error:  # noqa: BLE001 - delivered to this row's request
            return RowResult(logits=None, error=error)

    def _lone(self, plan: RowPlan) -> RowResult:
        """Feed one row's unseen tokens (and proposal) in one pass (in chunks for a static cache)."""
        slot: Slot = plan.slot  # type: ignore[assignment]
        cached, proposal = slot.n_cached, plan.proposal
        unseen = plan.tokens[cached:]
        assert unseen, "a slot is only run when it has unseen tokens"
        assert not proposal or (slot.has_plain_cache and not plan.want_hidden), "proposals need a cache that drops them"
        loaded, steps = self.loaded, self.loaded.static_steps
        start = time.perf_counter()
        if steps is not None:
            if slot.cache is None:
                if cached:
                    raise RuntimeError("this slot's static cache was released: its request is over")
                slot.cache = steps.pool.take(steps.capacity_for(max(slot.needed_tokens, len(plan.tokens))))
            logits, hidden = steps.run(unseen, slot.cache, cached, plan.want_hidden)  # type: ignore[arg-type]
            result = RowResult(logits=logits, hidden=hidden)
        else:
            input_ids = torch.tensor([unseen + list(proposal) if proposal else unseen], device=self._device)  # [1, n]
            output = loaded.forward(input_ids, slot.cache, cached, plan.want_hidden,  # type: ignore[arg-type]
                                    keep=len(proposal) + 1)
            views = output.logits[0, :, : loaded.vocab_size].float()  # [1 + k, V]
            hidden = output.hidden_states[-1][0, len(unseen) - 1] if plan.want_hidden else None  # [d]
            result = RowResult(logits=views[0], hidden=hidden, proposal=proposal,
                               proposal_logits=views[1:] if proposal else None)
        self._account([plan], [cached], start)
        return result

    def _batched(self, rows: list[RowPlan]) -> list[RowResult]:
        """One pass over several rows of plain dynamic caches, packed or padded."""
        loaded = self.loaded
        slots: list[Slot] = [plan.slot for plan in rows]  # type: ignore[misc]
        cached = [slot.n_cached for slot in slots]
        new = [plan.tokens[c:] + list(plan.proposal) for plan, c in zip(rows, cached)]
        assert all(len(n) > len(plan.proposal) for n, plan in zip(new, rows)), "a row always has unseen tokens"
        start = time.perf_counter()
        counts = [len(n) for n in new]
        packed = should_pack(loaded, counts)
        batch_cache, past = _packed_cache(loaded, slots) if packed else _padded_cache(loaded, slots)
        keep = [len(plan.proposal) + 1 for plan in rows]
        want_hidden = any(plan.want_hidden for plan in rows)
        # views[r]: [1 + k_r, V], after row r's last unseen token, then after each proposed token
        views, hidden = loaded.forward_rows(new, cached, batch_cache, past, want_hidden, keep, packed)  # hidden: [B, d]
        results = [RowResult(logits=views[r][0], hidden=None if hidden is None else hidden[r], proposal=plan.proposal,
                             proposal_logits=views[r][1:] if plan.proposal else None)
                   for r, plan in enumerate(rows)]
        _append_new_entries(slots, batch_cache, past, counts, packed)
        self._account(rows, cached, start)
        return results

    def _account(self, rows: Sequence[RowPlan], cached: list[int], start: float) -> None:
        """After a pass that began at ``start``: sync, one record per row, each row's cache count advanced."""
        if self._sync:
            torch.cuda.synchronize(self._device)
        seconds = time.perf_counter() - start
        role, batch_size = self.role, len(rows)
        for plan, c in zip(rows, cached):
            slot, fed = plan.slot, len(plan.tokens)
            slot.records.append(ForwardRecord(role, plan.kind, fed - c + len(plan.proposal), c, seconds,
                                              batch_size=batch_size, proposed_tokens=len(plan.proposal)))
            slot.n_cached = fed  # a proposal's entries lie beyond it until the request rewinds


def _padded_cache(loaded: LoadedModel, slots: Sequence[Slot]) -> tuple[DynamicCache, int]:
    """A cache holding every slot's keys/values left-padded to P = max cached tokens: [B, H, P, D] per layer."""
    past = max(slot.n_cached for slot in slots)
    cache = DynamicCache(config=loaded.model.config)
    if past == 0:
        return cache, 0
    reference = next(slot.cache for slot in slots if slot.n_cached)
    for index, ref_layer in enumerate(reference.layers):  # type: ignore[union-attr]
        heads, dim = ref_layer.keys.shape[1], ref_layer.keys.shape[3]
        keys = ref_layer.keys.new_zeros((len(slots), heads, past, dim))
        values = ref_layer.values.new_zeros((len(slots), heads, past, ref_layer.values.shape[3]))
        for row, slot in enumerate(slots):
            if slot.n_cached:
                layer = slot.cache.layers[index]  # type: ignore[union-attr]
                keys[row, :, past - slot.n_cached:] = layer.keys[0]
                values[row, :, past - slot.n_cached:] = layer.values[0]
        cache.update(keys, values, index)
    return cache, past


def _packed_cache(loaded: LoadedModel, slots: Sequence[Slot]) -> tuple[DynamicCache, int]:
    """A cache holding every slot's keys/values one after another: [1, H, P, D] per layer, P = total cached tokens."""
    cache = DynamicCache(config=loaded.model.config)
    holding = [slot for slot in slots if slot.n_cached]
    if not holding:
        return cache, 0
    for index in range(len(holding[0].cache.layers)):  # type: ignore[union-attr]
        # each slot's first n_cached entries: the offsets of the packed layout count exactly those
        keys = torch.cat([slot.cache.layers[index].keys[:, :, :slot.n_cached] for slot in holding], dim=2)  # type: ignore[union-attr]
        values = torch.cat([slot.cache.layers[index].values[:, :, :slot.n_cached] for slot in holding], dim=2)  # type: ignore[union-attr]
        cache.update(keys, values, index)
    return cache, sum(slot.n_cached for slot in holding)


def _append_new_entries(slots: Sequence[Slot], batch_cache: DynamicCache, past: int, new_counts: list[int],
                        packed: bool) -> None:
    """Append row r's new keys/values to its own cache: padded, batch row r at [P, P + n_r); packed,
    batch row 0 at [P + s_r, P + s_r + n_r), s_r the new tokens of the rows before it.

    The slices are views of the batch's tensors; ``DynamicLayer.update`` concatenates them into a
    new tensor, so the row's cache never aliases the batch (which is freed after the pass).
    """
    starts = [past + sum(new_counts[:r]) if packed else past for r in range(len(slots))]
    for index, layer in enumerate(batch_cache.layers):
        for row, (slot, n, start) in enumerate(zip(slots, new_counts, starts)):
            at = 0 if packed else row
            slot.cache.update(layer.keys[at:at + 1, :, start:start + n], layer.values[at:at + 1, :, start:start + n], index)  # type: ignore[union-attr]
