"""GGUF models on llama.cpp (through llama-cpp-python's C API): the loaded model and its ``ModelRunner``.

One llama.cpp context per model holds every request's cache: a request's ``LlamaCppSlot`` is one
sequence id of that context (the KV cells of its tokens carry that id), taken at the slot's first
pass and given back by ``release``. ``run`` puts every row's unseen tokens, and prompt lookup's
proposal after them, into one ``llama_batch`` at the row's own positions and sequence id, so a step
of several requests is one ``llama_decode`` (several when the step feeds more than ``n_batch``
tokens), and reads logits back at each row's last unseen token and after each proposed token.
``rewind`` removes a sequence's cells from a position on. Decoding decisions stay the engine's: this
module only feeds tokens and returns logits.

**Prefix reuse.** A finished request's sequence keeps its cells (a *donor*) until its id or cells are
needed. A new request's first pass starts from the longest prefix of its tokens that a donor or a
seated request holds: it takes a donor's sequence over, or has llama.cpp tag the other sequence's
cells with its own id (``llama_memory_seq_cp``: the cells are shared, not copied), and is fed only
the rest. A shared system prompt or the earlier turns of a conversation are then prefilled once.

Invariants (slot s): with ``s.seq`` set, the context holds the cells of exactly ``s.tokens[:s.n_cached]``
under that sequence id, at positions ``0 .. s.n_cached - 1``; with ``s.seq`` None, ``s.n_cached == 0``.
A donor's id holds the cells of exactly the tokens recorded for it. When no id is free, or the
context's cells are full, the least recently used donor, else the least recently run slot outside
the current pass, gives its id up (a slot that loses it catches up in full at its next pass: the
same tokens, at the cost of one prefill).
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from ..errors import InvalidSettingError, ModelLoadError
from .cpu_share import shared_thread_share
from .execution import ExecutionConfig
from .runner import CacheSlot, ForwardRecord, ModelRole, ModelRunner, RowPlan, RowResult

KV_TYPES = {"f16": "GGML_TYPE_F16", "f32": "GGML_TYPE_F32"}
"""``LlamaCppOptions.kv_type`` values and the llama_cpp constants of their GGML types."""
INSTALL_HINT = ("the llama.cpp backend needs llama-cpp-python: `pip install 'rstitch[llamacpp]'` "
                "(the README's install command builds it for any x86-64 CPU)")


def llama_library() -> Any:
    """The ``llama_cpp`` module (llama-cpp-python), with its log quiet below errors; a clear error if absent."""
    try:
        import llama_cpp
    except ImportError as error:
        raise ModelLoadError(INSTALL_HINT) from error
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's load chatter goes to this logger
    return llama_cpp


@dataclass(frozen=True)
class LlamaCppOptions:
    """How a GGUF model's llama.cpp context is made (``ModelSpec.extra`` keys of the same names)."""

    n_ctx: int = 8192
    """KV cells shared by every request's sequence (0: the model's training context)."""
    n_batch: int = 512
    """Most tokens one ``llama_decode`` takes; a longer step is split."""
    n_threads: int | None = None
    """CPU threads of a one-token decode. None: the physical cores this process may use (llama.cpp's own
    default) less the whole cores other processes have kept busy over the last half second
    (``models.cpu_share``): llama.cpp's spinning workers slow every pass down when one of them has no core.
    llama-cpp-python's ``Llama`` takes a fixed half of the logical CPUs instead."""
    n_threads_batch: int | None = None
    """CPU threads of a pass over two tokens or more (prefills, catch-ups, lookup's checks). None: the
    logical CPUs less the cores other processes hold, as for ``n_threads``."""
    n_gpu_layers: int = -1
    """Layers offloaded to a GPU in a CUDA or Metal build (-1: all; a CPU build ignores it)."""
    max_sequences: int = 16
    """Requests whose caches the context keeps at once; more evict the least recently run."""
    reuse_prefixes: bool = True
    """Start a request from the longest cached prefix of its tokens (see ``models.llamacpp``)."""
    flash_attn: bool = False
    """llama.cpp's flash-attention kernel (off: llama-cpp-python's ``Llama`` default). On a CPU it accumulates
    attention over an f16 cache in f16, so its logits differ from the plain kernel's enough to change greedy
    answers; with it off the runner's LLM alone answers as llama-cpp-python does, token for token. Ignored
    with ``kv_type="f32"`` (always off there)."""
    kv_type: Literal["f16", "f32"] = "f16"
    """Type of the KV cache's keys and values: llama.cpp's f16 default, or f32 (twice the memory, and flash
    attention off: llama.cpp casts an f32 cache to f16 for its flash-attention kernel). With f32 the logits of
    an all-f32 GGUF match a float32 transformers run of it to about 1e-4 (see docs/llamacpp.md)."""

    def __post_init__(self) -> None:
        if self.n_ctx < 0 or self.n_batch < 1 or self.max_sequences < 1:
            raise InvalidSettingError("llama.cpp options need n_ctx >= 0, n_batch >= 1 and max_sequences >= 1")
        if self.kv_type not in KV_TYPES:
            raise InvalidSettingError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {self.kv_type!r}")
        for name in ("n_threads", "n_threads_batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidSettingError(f"{name} must be >= 1, got {value}")

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> "LlamaCppOptions":
        """The options in a spec's ``extra``; an unknown key is an error (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise InvalidSettingError(f"unknown llama.cpp option(s) {unknown}; known: {sorted(known)}")
        return cls(**extra)


class LlamaCppWeights:
    """A GGUF file loaded by llama.cpp (the model, not a context); freed with this object."""

    def __init__(self, path: Path, n_gpu_layers: int = -1) -> None:
        lib = llama_library()
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        lib.llama_backend_init()
        params = lib.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        handle = lib.llama_model_load_from_file(str(path).encode("utf-8"), params)
        if not handle:
            raise ModelLoadError(f"llama.cpp could not load {path} (not a GGUF model it supports?)")
        self.path = path
        self.handle = handle
        self.vocab = lib.llama_model_get_vocab(handle)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(handle))
        self._finalizer = weakref.finalize(self, lib.llama_model_free, handle)

    def token_texts(self) -> list[bytes]:
        """The text of every token id, as llama.cpp's vocabulary holds it."""
        lib = llama_library()
        return [lib.llama_vocab_get_text(self.vocab, i) for i in range(self.n_vocab)]

    def eos_ids(self) -> frozenset[int]:
        """End-of-sequence and end-of-turn ids the GGUF declares."""
        lib = llama_library()
        return frozenset(i for i in (lib.llama_vocab_eos(self.vocab), lib.llama_vocab_eot(self.vocab)) if i >= 0)


class LlamaCppContext:
    """One llama.cpp context over loaded weights: the KV cells of every request of one model."""

    def __init__(self, weights: LlamaCppWeights, options: LlamaCppOptions) -> None:
        lib = llama_library()
        params = lib.llama_context_default_params()
        params.n_ctx = options.n_ctx or weights.n_ctx_train
        params.n_batch = options.n_batch
        params.n_ubatch = min(options.n_batch, 512)
        params.n_seq_max = options.max_sequences
        params.kv_unified = True  # one pool of cells: any sequence may use up to n_ctx of them
        params.type_k = params.type_v = getattr(lib, KV_TYPES[options.kv_type])
        # flash attention would cast an f32 cache to f16 (llama-graph.cpp); llama.cpp's own default is "auto"
        flash = options.flash_attn and options.kv_type != "f32"
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._fixed = (options.n_threads, options.n_threads_batch)
        self._share = shared_thread_share() if None in self._fixed else None
        self._threads = self._wanted_threads()
        params.n_threads, params.n_threads_batch = self._threads
        handle = lib.llama_init_from_model(weights.handle, params)
        if not handle:
            raise ModelLoadError(f"llama.cpp could not make a context of {params.n_ctx} cells for {weights.path}")
        self.weights = weights  # the context must be freed before its model: it keeps the weights alive
        self.handle = handle
        self.memory = lib.llama_get_memory(handle)
        self.n_ctx = int(lib.llama_n_ctx(handle))
        self.n_batch = options.n_batch
        self.max_sequences = options.max_sequences
        self.reuse_prefixes = options.reuse_prefixes
        self.batch = lib.llama_batch_init(options.n_batch, 0, 1)  # token ids, one sequence id per token
        self._finalizer = weakref.finalize(self, _free_context, lib, handle, self.batch)

    def follow_the_machine(self) -> None:
        """Before a decode: the thread counts ``models.cpu_share`` gives now, where the options left them open."""
        if self._share is None:
            return
        wanted = self._wanted_threads()
        if wanted != self._threads:
            llama_library().llama_set_n_threads(self.handle, *wanted)
            self._threads = wanted

    def _wanted_threads(self) -> tuple[int, int]:
        """(decode, multi-token pass) threads: the options' where they fix them, else ``cpu_share``'s now."""
        decode, batch = self._fixed
        if self._share is None:
            return decode, batch  # type: ignore[return-value]  # both fixed
        shared = self._share.threads()
        return decode or shared[0], batch or shared[1]


def _free_context(lib: Any, handle: Any, batch: Any) -> None:
    lib.llama_batch_free(batch)
    lib.llama_free(handle)


@dataclass(frozen=True)
class LlamaCppModel:
    """A GGUF model on llama.cpp ready for stitched decoding, shared by all requests.

    It offers the members the engine reads of ``loaded.LoadedModel`` (role, name, vocab_size, device,
    dtype, context_window, execution, static_steps, runner, declared_eos_ids).
    """

    role: ModelRole
    context: LlamaCppContext
    vocab_size: int
    """Size of the shared real vocabulary; logits are sliced to it before any use."""
    name: str = ""
    execution: ExecutionConfig = ExecutionConfig()
    """Always the default: llama.cpp keeps its own cache (``ExecutionConfig`` is the transformers runner's)."""

    device = torch.device("cpu")
    """Where logits are returned (llama.cpp copies them to host memory on any build)."""
    dtype = torch.float32
    """The dtype of the logits; the weights keep their GGUF types."""
    static_steps = None

    @property
    def context_window(self) -> int:
        """Tokens one request may reach: the model's training context, within the context's cells."""
        return min(self.context.weights.n_ctx_train or self.context.n_ctx, self.context.n_ctx)

    @property
    def declared_eos_ids(self) -> frozenset[int]:
        return self.context.weights.eos_ids()

    @functools.cached_property
    def runner(self) -> "LlamaCppRunner":
        return LlamaCppRunner(self)


class LlamaCppSlot(CacheSlot):
    """One request's sequence in a model's llama.cpp context (see the module docstring's invariants)."""

    def __init__(self, role: ModelRole, needed_tokens: int = 0) -> None:
        super().__init__(role, needed_tokens)
        self.seq: int | None = None
        self.tokens: list[int] = []
        """The request's token list (x + y, append-only) as last fed; the cells hold ``tokens[:n_cached]``."""
        self.last_pass = 0
        """The runner's pass counter when this slot last ran (the least recent is evicted first)."""


class DecodeError(RuntimeError):
    """``llama_decode`` refused a batch (``code``: 1 no free cells, -1 invalid batch, others fatal)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class LlamaCppRunner(ModelRunner):
    """Every pass of one llama.cpp model (see the module docstring)."""

    def __init__(self, loaded: LlamaCppModel) -> None:
        self.loaded = loaded
        self.role = loaded.role
        self._lib = llama_library()
        self._context = loaded.context
        self._reuse = loaded.context.reuse_prefixes
        self._free_seqs = list(range(loaded.context.max_sequences - 1, -1, -1))  # pop() gives 0 first
        """Sequence ids holding no cells."""
        self._holders: dict[int, LlamaCppSlot] = {}
        """The slot seated on each taken id (a slot dropped unreleased is evicted in its turn)."""
        self._donors: dict[int, tuple[list[int], int]] = {}
        """Released ids whose cells are kept for prefix reuse: (the tokens they hold, last pass)."""
        self._passes = 0

    def new_slot(self, needed_tokens: int = 0) -> LlamaCppSlot:
        return LlamaCppSlot(self.role, needed_tokens)

    @property
    def pools_caches(self) -> bool:
        return True  # sequence ids are a pool: a finished request gives its id back

    def takes_proposals(self, slot: CacheSlot) -> bool:
        return True

    def rewind(self, slot: CacheSlot, n_tokens: int) -> None:
        assert isinstance(slot, LlamaCppSlot) and slot.seq is not None, "only a seated slot rewinds"
        self._lib.llama_memory_seq_rm(self._context.memory, slot.seq, n_tokens, -1)
        slot.n_cached = n_tokens

    def release(self, slot: CacheSlot) -> None:
        """The request is over: its id becomes a donor of its cells (or free, when it holds none)."""
        assert isinstance(slot, LlamaCppSlot)
        if slot.seq is not None:
            self._holders.pop(slot.seq, None)
            if self._reuse and slot.n_cached:
                self._donors[slot.seq] = (slot.tokens[:slot.n_cached], slot.last_pass)
            else:
                self._clear(slot.seq)
            slot.seq = None
        slot.n_cached = 0

    def _clear(self, seq: int) -> None:
        """Drop every cell of ``seq`` and make the id free."""
        self._lib.llama_memory_seq_rm(self._context.memory, seq, -1, -1)
        self._donors.pop(seq, None)
        self._free_seqs.append(seq)

    def run(self, plans: Sequence[RowPlan]) -> list[RowResult]:
        self._passes += 1
        refused = [_hidden_state_refusal() if plan.want_hidden else None for plan in plans]
        rows = [plan for plan, error in zip(plans, refused) if error is None]
        results = iter(self._run_rows(rows) if rows else [])
        return [RowResult(logits=None, error=error) if error is not None else next(results) for error in refused]

    def _run_rows(self, rows: list[RowPlan]) -> list[RowResult]:
        """All rows in one batch; if that fails, each row alone, so that only the rows at fault get errors."""
        try:
            self._seat(rows)
            return self._feed_retrying(rows)
        except Exception as error:  # noqa: BLE001 - find the row at fault; the others go on
            if len(rows) == 1:
                return [RowResult(logits=None, error=error)]
        return [self._run_rows([plan])[0] for plan in rows]

    def _seat(self, rows: Sequence[RowPlan]) -> None:
        """Give every row's slot a sequence id (starting from the longest cached prefix of its tokens)."""
        busy = {id(plan.slot) for plan in rows}
        for plan in rows:
            slot = plan.slot
            assert isinstance(slot, LlamaCppSlot)
            slot.last_pass = self._passes
            if slot.seq is None:
                self._seat_new(slot, plan.tokens, busy)
            slot.tokens = plan.tokens

    def _seat_new(self, slot: LlamaCppSlot, tokens: list[int], busy: set[int]) -> None:
        """Seat an unseated slot, its cells covering the longest prefix of ``tokens`` held anywhere
        (at most all but the last token: a pass needs one token to return logits after)."""
        source, length = self._longest_prefix(tokens, len(tokens) - 1) if self._reuse else (None, 0)
        memory = self._context.memory
        if source is not None and source in self._donors:  # take the donor's sequence over
            del self._donors[source]
            self._lib.llama_memory_seq_rm(memory, source, length, -1)
            seq = source
        else:
            seq = self._take_id(busy, keep=source)
            if source is not None:
                self._lib.llama_memory_seq_cp(memory, source, seq, 0, length)  # cells [0, length) shared
        slot.seq, slot.n_cached = seq, length
        self._holders[seq] = slot

    def _longest_prefix(self, tokens: list[int], limit: int) -> tuple[int | None, int]:
        """(id, length) of the longest prefix of ``tokens`` (at most ``limit``) a donor or a seated slot holds."""
        best: tuple[int | None, int] = (None, 0)
        held = [(seq, held_tokens) for seq, (held_tokens, _) in self._donors.items()]
        held += [(seq, slot.tokens[:slot.n_cached]) for seq, slot in self._holders.items()]
        for seq, held_tokens in held:
            length = _common_prefix(held_tokens, tokens, limit)
            if length > best[1]:
                best = (seq, length)
        return best

    def _take_id(self, busy: set[int], keep: int | None = None) -> int:
        """A free id: a free one, else the least recently used donor's, else an idle slot's (not ``keep``)."""
        if not self._free_seqs and not self._evict_one(busy, keep):
            raise InvalidSettingError(
                f"a step has more rows than the llama.cpp context's {self._context.max_sequences} sequences; "
                "raise max_sequences or lower the engine's max_batch_size")
        return self._free_seqs.pop()

    def _evict_one(self, busy: set[int], keep: int | None = None) -> bool:
        """Free one id with its cells: the least recently used donor, else the least recently run seated
        slot outside ``busy``; never ``keep``. False when there is none."""
        donors = [(last, seq) for seq, (_, last) in self._donors.items() if seq != keep]
        if donors:
            self._clear(min(donors)[1])
            return True
        idle = [slot for seq, slot in self._holders.items() if id(slot) not in busy and seq != keep]
        if not idle:
            return False
        victim = min(idle, key=lambda slot: slot.last_pass)
        seq = victim.seq
        assert seq is not None
        self._holders.pop(seq)
        victim.seq, victim.n_cached = None, 0
        self._clear(seq)
        return True

    def _feed_retrying(self, rows: list[RowPlan]) -> list[RowResult]:
        """``_feed``; when the context has no free cells, evict idle slots one by one and try again."""
        while True:
            try:
                return self._feed(rows)
            except DecodeError as error:
                if error.code != 1 or not self._evict_one({id(plan.slot) for plan in rows}):
                    raise

    # long: one pass end to end (batch filling, chunked decodes, logits read-back, accounting) reads best whole
    def _feed(self, rows: list[RowPlan]) -> list[RowResult]:
        """One pass over every row: its unseen tokens then its proposal, in ``n_batch`` chunks.

        Outputs (logits) are taken at each row's last unseen token and at each proposed token: row r
        wants 1 + k_r of them. Returns one result per row; on a refused decode, every row's cells beyond
        its ``n_cached`` are removed (the caches are as before) and ``DecodeError`` is raised.
        """
        lib, context, vocab = self._lib, self._context, self.loaded.vocab_size
        cached = [plan.slot.n_cached for plan in rows]
        feeds = [plan.tokens[c:] + list(plan.proposal) for plan, c in zip(rows, cached)]
        wanted = [len(plan.proposal) + 1 for plan in rows]
        # (sequence id, position, token, output wanted) of every fed token, rows one after another
        entries = [(plan.slot.seq, c + j, token, j >= len(feed) - k)  # type: ignore[attr-defined]
                   for plan, c, feed, k in zip(rows, cached, feeds, wanted) for j, token in enumerate(feed)]
        if context.n_ctx < max(c + len(feed) for c, feed in zip(cached, feeds)):
            raise InvalidSettingError(f"a request needs more than the llama.cpp context's {context.n_ctx} cells; "
                                      "raise n_ctx")
        outputs = np.empty((sum(wanted), vocab), dtype=np.float32)  # [sum of 1 + k_r, V]
        start, out, batch = time.perf_counter(), 0, context.batch
        context.follow_the_machine()
        for first in range(0, len(entries), context.n_batch):
            chunk = entries[first:first + context.n_batch]
            for i, (seq, position, token, wants) in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
                batch.seq_id[i][0], batch.logits[i] = seq, wants
            batch.n_tokens = len(chunk)
            code = lib.llama_decode(context.handle, batch)
            if code != 0:
                for plan, c in zip(rows, cached):
                    lib.llama_memory_seq_rm(context.memory, plan.slot.seq, c, -1)  # type: ignore[attr-defined]
                raise DecodeError(code, f"llama_decode returned {code} for {len(entries)} tokens in {len(rows)} rows")
            for i, (_, _, _, wants) in enumerate(chunk):
                if wants:
                    outputs[out] = np.ctypeslib.as_array(lib.llama_get_logits_ith(context.handle, i),
                                                         shape=(self._vocab_rows,))[:vocab]
                    out += 1
        seconds = time.perf_counter() - start
        views = torch.from_numpy(outputs).split(wanted)  # row r: [1 + k_r, V]
        results = []
        for plan, c, view in zip(rows, cached, views):
            plan.slot.records.append(ForwardRecord(self.role, plan.kind, len(plan.tokens) - c + len(plan.proposal), c,
                                                   seconds, batch_size=len(rows), proposed_tokens=len(plan.proposal)))
            plan.slot.n_cached = len(plan.tokens)  # a proposal's cells lie beyond it until the request rewinds
            results.append(RowResult(logits=view[0], proposal=plan.proposal,
                                     proposal_logits=view[1:] if plan.proposal else None))
        return results

    @functools.cached_property
    def _vocab_rows(self) -> int:
        return self._context.weights.n_vocab


def _common_prefix(held: list[int], tokens: list[int], limit: int) -> int:
    """Length of the common prefix of ``held`` and ``tokens``, at most ``limit``."""
    length = min(len(held), len(tokens), limit)
    for index in range(length):
        if held[index] != tokens[index]:
            return index
    return max(length, 0)


def _hidden_state_refusal() -> InvalidSettingError:
    return InvalidSettingError("the llama.cpp runner returns logits only, and this router reads the SLM's hidden "
                               "state (the learned router): use a threshold or a quality preset with llama.cpp")


def gguf_token_texts_match(a: LlamaCppWeights, b: LlamaCppWeights) -> str | None:
    """None when both GGUFs hold the same vocabulary, else what differs (for ``TokenizerMismatchError``)."""
    if a.n_vocab != b.n_vocab:
        return f"vocabulary sizes differ: SLM {a.n_vocab}, LLM {b.n_vocab}"
    differing = [i for i, (x, y) in enumerate(zip(a.token_texts(), b.token_texts())) if x != y]
    if differing:
        return f"{len(differing)} token ids have other texts (first: {differing[:5]})"
    if a.eos_ids() != b.eos_ids():
        return f"end-of-sequence ids differ: SLM {sorted(a.eos_ids())}, LLM {sorted(b.eos_ids())}"
    return None

