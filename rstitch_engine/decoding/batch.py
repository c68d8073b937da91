"""One forward pass of one model for several requests at once.

Each row r is one request's slot: its cache covers c_r tokens and it is fed the n_r >= 1 tokens it
has not seen. Rows of different c_r and n_r are mixed by padding, with an attention mask and
per-row positions:

* past keys/values are left-padded to P = max c_r: row r's cache sits at the end of [0, P), zeros
  before it, masked out;
* new tokens are right-padded to N = max n_r: row r's tokens sit at [P, P + n_r), pad tokens
  after them are masked out as keys and their outputs are never read;
* positions are per row (row r's tokens at c_r .. c_r + n_r - 1), so rotary embeddings see exactly
  the positions the request would see alone; causality in the padded layout is then the request's
  own causality.

Every query of a real token attends to exactly the keys it attends to when the request runs
alone, so the logits differ from the unbatched pass only by floating-point summation order. A pad
query always has at least one real key before it, so no softmax row is fully masked.

Why padding rather than packing (one ragged row per batch with a block-diagonal mask): padding
keeps the model's own attention kernels and transformers' mask building, works with any
architecture that takes an attention mask and position ids, and the scheduler keeps the padding
small by grouping rows of similar n_r (decodes and short catch-ups together, prompt prefills
apart). The cost is copying each row's cache into the padded batch for the pass and its new part
back out (one read of the cache per step, like ``DynamicCache``'s own concatenation).

Requests keep their own ``DynamicCache``: a row's new keys and values are appended to it after the
pass, so a request can leave or join between any two steps and runs alone with the same cache.
Caches with sliding-window or other non-plain layers, and static caches (``models.execution``: their
passes are padded to buckets and may be compiled for one row), are run row by row instead.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from transformers import DynamicCache

from ..models.loaded import ForwardKind, ForwardRecord, LoadedModel
from .slot import NextToken, Slot


def batchable(slots: Sequence[Slot]) -> bool:
    """Whether these slots' caches are plain growing per-layer key/value tensors (no sliding windows, not static)."""
    return all(slot.has_plain_cache for slot in slots)


@torch.inference_mode()
def catch_up_batch(slots: Sequence[Slot], tokens: Sequence[list[int]], kinds: Sequence[ForwardKind],
                   want_hidden: bool, proposals: Sequence[tuple[int, ...]] | None = None) -> list[NextToken]:
    """Feed each slot ``tokens[r][slot.n_cached:]`` in one pass of their (shared) model.

    Afterwards each slot's cache covers all of its ``tokens[r]``, a ``ForwardRecord`` with the
    pass's wall time and ``batch_size`` is appended to each, and result r predicts position
    ``len(tokens[r])`` of row r, as ``Slot.catch_up`` does for one slot. A row with a proposal
    (``proposals[r]``, prompt lookup) is fed it too, as ``Slot.catch_up`` does: its cache then also
    holds the proposal's entries until the request ``rewind``s it.
    """
    proposals = proposals if proposals is not None else [()] * len(slots)
    if len(slots) == 1 or not batchable(slots):
        return [slot.catch_up(row, kind, want_hidden, proposal)
                for slot, row, kind, proposal in zip(slots, tokens, kinds, proposals)]
    loaded = slots[0].loaded
    cached = [slot.n_cached for slot in slots]
    new = [row[c:] + list(proposal) for row, c, proposal in zip(tokens, cached, proposals)]
    assert all(len(n) > len(p) for n, p in zip(new, proposals)), "a slot is only run when it has unseen tokens"
    start = time.perf_counter()
    batch_cache, past = _padded_cache(loaded, slots)
    keep = [len(proposal) + 1 for proposal in proposals]
    # views[r]: [1 + k_r, V], after row r's last unseen token, then after each proposed token
    views, hidden = loaded.forward_rows(new, cached, batch_cache, past, want_hidden, keep)  # hidden: [B, d] | None
    results = [NextToken(logits=views[r][0], hidden=None if hidden is None else hidden[r], proposal=proposals[r],
                         proposal_logits=views[r][1:] if proposals[r] else None)
               for r in range(len(slots))]
    _append_new_entries(slots, batch_cache, past, [len(n) for n in new])
    if loaded.device.type == "cuda":
        torch.cuda.synchronize(loaded.device)
    seconds = time.perf_counter() - start
    for slot, row, n_new, c, kind, proposal in zip(slots, tokens, new, cached, kinds, proposals):
        slot.records.append(ForwardRecord(loaded.role, kind, len(n_new), c, seconds, batch_size=len(slots),
                                          proposed_tokens=len(proposal)))
        slot.n_cached = len(row)  # a proposal's entries lie beyond it until the request rewinds
    return results


def _padded_cache(loaded: LoadedModel, slots: Sequence[Slot]) -> tuple[DynamicCache, int]:
    """A cache holding every slot's keys/values left-padded to P = max cached tokens: [B, H, P, D] per layer."""
    past = max(slot.n_cached for slot in slots)
    cache = DynamicCache(config=loaded.model.config)
    if past == 0:
        return cache, 0
    reference = next(slot.cache for slot in slots if slot.n_cached)
    for index, ref_layer in enumerate(reference.layers):
        heads, dim = ref_layer.keys.shape[1], ref_layer.keys.shape[3]
        keys = ref_layer.keys.new_zeros((len(slots), heads, past, dim))
        values = ref_layer.values.new_zeros((len(slots), heads, past, ref_layer.values.shape[3]))
        for row, slot in enumerate(slots):
            if slot.n_cached:
                layer = slot.cache.layers[index]
                keys[row, :, past - slot.n_cached:] = layer.keys[0]
                values[row, :, past - slot.n_cached:] = layer.values[0]
        cache.update(keys, values, index)
    return cache, past


def _append_new_entries(slots: Sequence[Slot], batch_cache: DynamicCache, past: int, new_counts: list[int]) -> None:
    """Append row r's new keys/values (padded positions [P, P + n_r)) to its own cache.

    The slices are views of the batch's tensors; ``DynamicLayer.update`` concatenates them into a
    new tensor, so the row's cache never aliases the batch (which is freed after the pass).
    """
    for index, layer in enumerate(batch_cache.layers):
        for row, (slot, n) in enumerate(zip(slots, new_counts)):
            slot.cache.update(layer.keys[row:row + 1, :, past:past + n], layer.values[row:row + 1, :, past:past + n], index)
