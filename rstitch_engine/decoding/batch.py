"""One forward pass of one model for several requests at once.

Each row r is one request's slot: its cache covers c_r tokens and it is fed the n_r >= 1 tokens it
has not seen. Rows of different c_r and n_r share the pass in one of two layouts, with per-row
positions (row r's tokens at c_r .. c_r + n_r - 1, so rotary embeddings see exactly the positions
the request would see alone) and a mask under which every query of a real token attends to exactly
the keys it attends to when the request runs alone. The logits then differ from the unbatched pass
only by floating-point summation order.

* **Padded** (rows of equal or similar n_r, e.g. all decodes): past keys/values are left-padded to
  P = max c_r (row r's cache at the end of [0, P), zeros before it, masked out); new tokens are
  right-padded to N = max n_r (pads after row r's tokens are masked out as keys and their outputs
  never read). transformers builds the mask from a 2D one; a pad query always has a real key
  before it, so no softmax row is fully masked. The pass computes B x N token columns.
* **Packed** (n_r that differ, e.g. decodes beside catch-ups or a prompt prefill): all rows' new
  tokens form one sequence of T = sum n_r, the rows' caches lie one after another, and an additive
  4D block mask lets each token see its own row's cache and its own row's earlier new tokens
  (``LoadedModel.forward_rows``). The weights' matmuls then compute T columns instead of B x N;
  attention computes every query against all rows' keys (masked), which is why the scheduler packs
  only while the keys stay few (``scheduler.PACKED_KEYS_LIMIT``). It needs an attention that takes
  a custom 4D mask (sdpa, eager: ``LoadedModel.packs_rows``); otherwise passes are padded.

``should_pack`` picks packing when padding would compute at least ``PACKING_WASTE`` times the real
tokens. On the default pair (bf16, 2-core Xeon) a pass of 8 LLM rows, six decodes beside a 2- and a
9-token catch-up, took 103 ms padded and 83 ms packed; 6 decodes alone took 63-64 ms either way.
The cost of either layout is copying each row's cache into the pass and its new part back out (one
read of the cache per step, like ``DynamicCache``'s own concatenation).

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


PACKING_WASTE = 2
"""A pass is packed when padding would run at least this many times the rows' real tokens."""


def should_pack(loaded: LoadedModel, new_counts: Sequence[int]) -> bool:
    """Whether to pack this pass's rows (mostly decodes beside a few catch-ups) rather than pad them."""
    padded_columns = len(new_counts) * max(new_counts)
    return loaded.packs_rows and padded_columns >= PACKING_WASTE * sum(new_counts)


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
    packed = should_pack(loaded, [len(n) for n in new])
    batch_cache, past = _packed_cache(loaded, slots) if packed else _padded_cache(loaded, slots)
    keep = [len(proposal) + 1 for proposal in proposals]
    # views[r]: [1 + k_r, V], after row r's last unseen token, then after each proposed token
    views, hidden = loaded.forward_rows(new, cached, batch_cache, past, want_hidden, keep, packed)  # hidden: [B, d] | None
    results = [NextToken(logits=views[r][0], hidden=None if hidden is None else hidden[r], proposal=proposals[r],
                         proposal_logits=views[r][1:] if proposals[r] else None)
               for r in range(len(slots))]
    _append_new_entries(slots, batch_cache, past, [len(n) for n in new], packed)
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


def _packed_cache(loaded: LoadedModel, slots: Sequence[Slot]) -> tuple[DynamicCache, int]:
    """A cache holding every slot's keys/values one after another: [1, H, P, D] per layer, P = total cached tokens."""
    cache = DynamicCache(config=loaded.model.config)
    holding = [slot for slot in slots if slot.n_cached]
    if not holding:
        return cache, 0
    for index in range(len(holding[0].cache.layers)):
        # each slot's first n_cached entries: the offsets of ``_packed_layout`` count exactly those
        keys = torch.cat([slot.cache.layers[index].keys[:, :, :slot.n_cached] for slot in holding], dim=2)
        values = torch.cat([slot.cache.layers[index].values[:, :, :slot.n_cached] for slot in holding], dim=2)
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
            slot.cache.update(layer.keys[at:at + 1, :, start:start + n], layer.values[at:at + 1, :, start:start + n], index)
