"""One model of a pair, loaded and shared by every request; its ``runner`` runs every pass the engine needs.

``LoadedModel.forward`` is the one cached pass that the engine, the LLM-alone baseline, the cost
model's calibration and the benchmark harness all run, so their timings describe the same work.
Logits are always sliced to the pair's shared real vocabulary before any use.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from transformers import DynamicCache, PreTrainedModel

from .execution import ExecutionConfig, StaticSteps
from .runner import ForwardKind, ForwardRecord, ModelRole, ModelRunner
from .transformers_runner import TransformersRunner

__all__ = ["ForwardKind", "ForwardRecord", "LoadedModel", "ModelRole", "cache_keyword"]


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
    execution: ExecutionConfig = ExecutionConfig()
    """Cache backend and compiled steps (``models.execution``); the default is the eager dynamic-cache path."""

    @property
    def device(self) -> torch.device:
        return self.model.device  # where the input ids go (the embeddings, with a device_map too)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def declared_eos_ids(self) -> frozenset[int]:
        """End-of-sequence ids the model's config and generation config declare."""
        ids: set[int] = set()
        for config in (self.model.config, getattr(self.model, "generation_config", None)):
            ids.update(as_id_set(getattr(config, "eos_token_id", None)))
        return frozenset(ids)

    @property
    def context_window(self) -> int | None:
        config = self.model.config.get_text_config(decoder=True)
        return getattr(config, "max_position_embeddings", None)

    def forward(self, input_ids: torch.Tensor, cache: DynamicCache, start: int, want_hidden: bool = False,
                keep: int = 1) -> Any:
        """One cached pass: ``input_ids`` [1, n] at positions ``start .. start + n - 1``, after the
        ``start`` tokens ``cache`` covers (which it then covers too). Logits of the last ``keep`` positions."""
        positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)  # [n]
        return self.model(input_ids=input_ids, **{self._cache_keyword: cache}, cache_position=positions,
                          use_cache=True, logits_to_keep=keep, output_hidden_states=want_hidden)

    def forward_rows(self, new: list[list[int]], cached: list[int], cache: DynamicCache, past: int,
                     want_hidden: bool = False, keep: list[int] | None = None, packed: bool = False
                     ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """One cached pass over several rows, laid out by ``transformers_runner``.

        Padded (``packed`` False): row r's ``new[r]`` tokens at positions ``cached[r] ..``, right-padded
        to N = max len; ``cache`` holds each row's ``cached[r]`` keys/values left-padded to ``past``.
        Packed: all rows' new tokens in one sequence of T = sum of lengths, row after row; ``cache``
        holds the rows' caches one after another (``past`` = sum of ``cached``), and a block mask lets
        each token see only its own row's cache and its own row's earlier new tokens.

        Returns per row r the float32 logits over the shared vocabulary at its last ``keep[r]`` real
        tokens ([keep[r], V]; ``keep`` None: 1 each; more for prompt lookup's proposals) and, when
        asked, the last-layer hidden states at each row's last real token ([B, d]). The output head
        runs on those positions only (not on every padded column).
        """
        keep = keep if keep is not None else [1] * len(new)
        layout = _packed_layout(new, cached, past, self.dtype) if packed else _padded_layout(new, cached, past)
        ids, positions, mask, where = layout  # where[r]: (batch row, column) of row r's real tokens, in order
        device = self.device
        # the (batch row, column) pairs whose logits are needed: row r's last keep[r] real tokens, the last one last
        wanted = [spot for spots, k in zip(where, keep) for spot in spots[len(spots) - k:]]
        rows = torch.tensor([r for r, _ in wanted], device=device)  # [K]
        cols = torch.tensor([col for _, col in wanted], device=device)  # [K]
        inputs = dict(input_ids=ids.to(device), position_ids=positions.to(device), attention_mask=mask.to(device),
                      cache_position=torch.arange(past, past + ids.shape[1], device=device), use_cache=True,
                      output_hidden_states=want_hidden)
        if self._plain_output_head:
            output = self.model.get_decoder()(**inputs, **{self._decoder_cache_keyword: cache})
            logits = self.model.get_output_embeddings()(output.last_hidden_state[rows, cols])  # [K, V_out]
        else:  # a head that scales or caps logits: let the model apply it, on the columns some row needs
            columns = torch.tensor(sorted(set(cols.tolist())), device=device)
            output = self.model(**inputs, **{self._cache_keyword: cache}, logits_to_keep=columns)
            logits = output.logits[rows, torch.searchsorted(columns, cols)]
        views = list(logits[:, : self.vocab_size].float().split(keep))  # row r: [keep[r], V]
        hidden = None
        if want_hidden:
            last_rows = torch.tensor([spots[-1][0] for spots in where], device=device)  # [B]
            last_cols = torch.tensor([spots[-1][1] for spots in where], device=device)  # [B]
            hidden = output.hidden_states[-1][last_rows, last_cols]  # [B, d]
        return views, hidden

    @property
    def packs_rows(self) -> bool:
        """Whether a packed pass's block mask (an additive 4D mask) is honoured by this model's attention."""
        return getattr(self.model.config, "_attn_implementation", None) in ("sdpa", "eager")

    @functools.cached_property
    def static_steps(self) -> StaticSteps | None:
        """The static-cache pass runner (pool, buckets, compiled step); None with the dynamic cache."""
        return StaticSteps(self, self.execution) if self.execution.static else None

    @functools.cached_property
    def runner(self) -> ModelRunner:
        """The one runner of this model's passes (``transformers_runner``)."""
        return TransformersRunner(self)

    @property
    def cache_keyword(self) -> str:
        return self._cache_keyword

    @functools.cached_property
    def _decoder_cache_keyword(self) -> str:
        return cache_keyword(self.model.get_decoder())

    @functools.cached_property
    def _plain_output_head(self) -> bool:
        """Whether logits are just the output embedding applied to the decoder's last hidden state."""
        config = self.model.config.get_text_config(decoder=True)
        scaled = getattr(config, "final_logit_softcapping", None) is not None or getattr(config, "logit_scale", 1.0) != 1.0
        has_parts = callable(getattr(self.model, "get_decoder", None)) and self.model.get_output_embeddings() is not None
        return has_parts and not scaled

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


Layout = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[tuple[int, int]]]]
"""input ids, position ids, attention mask, and per row the (batch row, column) of each of its real tokens."""


def _padded_layout(new: list[list[int]], cached: list[int], past: int) -> Layout:
    """[B, N] ids and positions, right-padded; a [B, P + N] mask of real keys (row r's cache sits at the end of [0, P))."""
    width = max(len(row) for row in new)
    ids = torch.zeros((len(new), width), dtype=torch.long)  # pads are token 0, masked out
    positions = torch.zeros((len(new), width), dtype=torch.long)
    mask = torch.zeros((len(new), past + width), dtype=torch.long)  # 1 = a real key
    for r, (row, c) in enumerate(zip(new, cached)):
        ids[r, : len(row)] = torch.tensor(row)
        positions[r] = torch.arange(c, c + width)
        mask[r, past - c: past + len(row)] = 1
    return ids, positions, mask, [[(r, col) for col in range(len(row))] for r, row in enumerate(new)]


def _packed_layout(new: list[list[int]], cached: list[int], past: int, dtype: torch.dtype) -> Layout:
    """[1, T] ids and positions, rows one after another; an additive [1, 1, T, P + T] block mask.

    Row r's cache occupies keys [o_r, o_r + c_r) (o_r: the cached tokens of the rows before it, P their
    sum) and its new tokens queries and keys at P + s_r .. (s_r: the new tokens before it). Its token j
    sees its cache and its own new tokens up to j: exactly what it sees when the row runs alone.
    """
    total = sum(len(row) for row in new)
    ids = torch.tensor([[token for row in new for token in row]], dtype=torch.long)
    positions = torch.tensor([[c + j for row, c in zip(new, cached) for j in range(len(row))]], dtype=torch.long)
    allowed = torch.zeros((total, past + total), dtype=torch.bool)
    where: list[list[tuple[int, int]]] = []
    cache_start = first = 0
    for row, c in zip(new, cached):
        n = len(row)
        allowed[first:first + n, cache_start:cache_start + c] = True
        allowed[first:first + n, past + first:past + first + n] = torch.ones(n, n, dtype=torch.bool).tril()
        where.append([(0, first + j) for j in range(n)])
        cache_start += c
        first += n
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return ids, positions, mask[None, None], where


def as_id_set(value: int | Iterable[int] | None) -> set[int]:
    """An eos-like config value (one id, a list of ids or None) as a set of ids."""
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}
