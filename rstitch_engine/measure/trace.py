"""Traces of stitched runs: which model ran at each step, and what it did with its token.

A trace is the routing of one request, independent of the weights that produced it, so it can be
replayed on any pair of the same tokenizer, at any model size (random weights in the right shape
cost the same per token). A step is one forward pass of the active model, coded by one letter:

* ``s``: the SLM ran and its token was kept;
* ``x``: the SLM ran and its token was discarded: the LLM decodes that position next (a switch);
* ``l``: the LLM ran, its token was kept and the LLM stays active;
* ``h``: the LLM ran, its token was kept and control returns to the SLM (a hand-back).

Given the prompt length, the steps fix every pass of Algorithm 1 exactly: who ran, how many tokens
it fed (1 for a decode, more for a catch-up) and how many its cache held (``Trace.passes``).

Recording costs nothing extra: a trace is read off the token events (``took_over``, ``source``,
``hands_back``) and forward records the engine produces anyway (``record_trace``). Replaying uses
``ReplayRouter``: it is consulted at every step (threshold -inf for the SLM, the ``hands_back``
hook for the LLM) and answers from the trace, checking that the run stays aligned with it.
``synthetic_trace`` builds traces from an SLM share and a run-length distribution, seeded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np

from ..decoding.engine import GenerationResult, PromptLike, StitchEngine, StitchStream
from ..decoding.routing import Router, RouterBase, RouterState
from ..decoding.settings import GenerationSettings
from ..decoding.stats import TokenEvent
from ..errors import RStitchError
from ..models.loaded import ForwardKind, ForwardRecord, ModelRole
from ..models.pair import ModelPair

FORMAT = "rstitch-trace/1"
STEP_CODES = "sxlh"
STEP_ROLE: dict[str, ModelRole] = {"s": "slm", "x": "slm", "l": "llm", "h": "llm"}
RunLengths = Literal["geometric", "fixed"]


class TraceMismatchError(RStitchError):
    """A run left its trace: wrong model active, wrong context length, or the trace ran out."""


@dataclass(frozen=True)
class TracePass:
    """One forward pass that a trace implies."""

    role: ModelRole
    kind: ForwardKind
    new_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class Trace:
    """The routing of one request: prompt length and one step code per forward pass."""

    prompt_tokens: int
    steps: str
    """One of ``s x l h`` per forward pass (see the module docstring)."""
    prompt_ids: tuple[int, ...] = ()
    """The recorded prompt, when known (replaying on the recording pair reproduces its tokens)."""
    pass_seconds: tuple[float, ...] = ()
    """Measured seconds of each step's forward pass, when recorded."""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    """Free-form provenance: pair, threshold, prompt id, generator settings."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_ids", tuple(self.prompt_ids))
        object.__setattr__(self, "pass_seconds", tuple(self.pass_seconds))
        if self.prompt_tokens < 1:
            raise ValueError(f"a trace needs a prompt of at least one token, got {self.prompt_tokens}")
        if self.prompt_ids and len(self.prompt_ids) != self.prompt_tokens:
            raise ValueError(f"{len(self.prompt_ids)} prompt ids for a {self.prompt_tokens}-token prompt")
        if self.pass_seconds and len(self.pass_seconds) != len(self.steps):
            raise ValueError(f"{len(self.pass_seconds)} pass times for {len(self.steps)} steps")
        _check_steps(self.steps)

    # ------------------------------------------------------------------ counts

    @property
    def output_tokens(self) -> int:
        """Kept output tokens (every step but a discard writes one)."""
        return len(self.steps) - self.steps.count("x")

    @property
    def slm_tokens(self) -> int:
        return self.steps.count("s")

    @property
    def llm_tokens(self) -> int:
        return self.steps.count("l") + self.steps.count("h")

    @property
    def slm_share(self) -> float:
        return self.slm_tokens / self.output_tokens if self.output_tokens else 0.0

    @property
    def discarded_slm_tokens(self) -> int:
        """Equals the number of SLM -> LLM switches."""
        return self.steps.count("x")

    @property
    def switches_to_slm(self) -> int:
        """LLM -> SLM hand-backs (as the engine counts them: one on the last token included)."""
        return self.steps.count("h")

    def llm_runs(self) -> list[int]:
        """Lengths of the LLM's runs of kept tokens, in order."""
        runs, current = [], 0
        for code in self.steps:
            if code in "lh":
                current += 1
            if code == "h" and current:
                runs.append(current)
                current = 0
        return runs + ([current] if current else [])

    # ------------------------------------------------------------------ passes

    def passes(self) -> list[TracePass]:
        """Every forward pass Algorithm 1 makes under this routing, in order."""
        length = self.prompt_tokens  # |x + y|
        cached: dict[ModelRole, int] = {"slm": 0, "llm": 0}
        last_writer: ModelRole | None = None
        out = []
        for code in self.steps:
            role = STEP_ROLE[code]
            kind: ForwardKind = "decode" if last_writer == role else "catchup"
            out.append(TracePass(role, kind, length - cached[role], cached[role]))
            cached[role] = length
            if code != "x":
                length += 1
                last_writer = role
        return out

    def records(self) -> list[ForwardRecord]:
        """The passes as forward records, with the measured seconds when recorded (else 0)."""
        seconds = self.pass_seconds or (0.0,) * len(self.steps)
        return [ForwardRecord(p.role, p.kind, p.new_tokens, p.cached_tokens, s)
                for p, s in zip(self.passes(), seconds)]

    # ------------------------------------------------------------------ building

    @classmethod
    def from_events(
        cls,
        prompt_ids: Sequence[int],
        events: Iterable[TokenEvent],
        records: Sequence[ForwardRecord] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> "Trace":
        """The trace of a finished request from its token events; ``records`` (the request's
        forward records, any order across models) add measured pass times and are checked against it."""
        steps = []
        for event in events:
            if event.took_over:
                steps.append("x")
            steps.append("s" if event.source == "slm" else ("h" if event.hands_back else "l"))
        trace = cls(len(prompt_ids), "".join(steps), tuple(prompt_ids), meta=dict(meta or {}))
        if records is None:
            return trace
        return trace.with_pass_seconds(records)

    def with_pass_seconds(self, records: Sequence[ForwardRecord]) -> "Trace":
        """This trace with each step's measured time taken from the matching record.

        ``records`` may list the SLM's passes before the LLM's (``StitchRequest.records``): each
        model's passes are in order, which is enough to put them back in step order.
        """
        queues = {role: [r for r in records if r.role == role] for role in ("slm", "llm")}
        planned = self.passes()
        for role, queue in queues.items():
            expected = [p for p in planned if p.role == role]
            got = [TracePass(r.role, r.kind, r.new_tokens, r.cached_tokens) for r in queue]
            if got != expected:
                raise TraceMismatchError(f"the {role.upper()}'s forward records do not match the trace's passes")
        cursor = {"slm": 0, "llm": 0}
        seconds = []
        for p in planned:
            seconds.append(queues[p.role][cursor[p.role]].seconds)
            cursor[p.role] += 1
        return Trace(self.prompt_tokens, self.steps, self.prompt_ids, tuple(seconds), dict(self.meta))

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "slm_share": self.slm_share,
            "steps": self.steps,
            "prompt_ids": list(self.prompt_ids),
            "pass_seconds": list(self.pass_seconds),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Trace":
        if raw.get("format") != FORMAT:
            raise ValueError(f"not an {FORMAT} trace (format {raw.get('format')!r})")
        return cls(int(raw["prompt_tokens"]), str(raw["steps"]), tuple(raw.get("prompt_ids", ())),
                   tuple(raw.get("pass_seconds", ())), dict(raw.get("meta", {})))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Trace":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _check_steps(steps: str) -> None:
    """Steps must follow Algorithm 1: the SLM starts; ``x`` hands to the LLM, ``h`` back to the SLM."""
    active: ModelRole = "slm"
    for i, code in enumerate(steps):
        if code not in STEP_CODES:
            raise ValueError(f"step {i}: unknown code {code!r} (expected one of {STEP_CODES})")
        if STEP_ROLE[code] != active:
            raise ValueError(f"step {i}: {code!r} is a {STEP_ROLE[code].upper()} step but the {active.upper()} is active")
        if code == "x":
            active = "llm"
        elif code == "h":
            active = "slm"
    if steps.endswith("x"):
        raise ValueError("a trace cannot end with a discard: the LLM re-decodes that position")


# ---------------------------------------------------------------------------- replay


class ReplayRouter(RouterBase):
    """A router that follows a trace exactly (one request at a time; ``reset`` to reuse it).

    Its threshold is -inf, so the engine consults it at every SLM step (``wants_llm``); its
    ``hands_back`` hook is consulted at every LLM step. Each answer checks that the step's model
    and context length are those the trace expects, and raises ``TraceMismatchError`` otherwise.
    """

    threshold: float = -math.inf
    needs_hidden_state: bool = False

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.reset()

    def reset(self) -> None:
        self._cursor = 0
        self._context = self.trace.prompt_tokens

    @property
    def finished(self) -> bool:
        """Every step of the trace has been replayed."""
        return self._cursor == len(self.trace.steps)

    def wants_llm(self, state: RouterState) -> bool:
        return self._advance("slm", state) == "x"

    def hands_back(self, state: RouterState) -> bool:
        return self._advance("llm", state) == "h"

    def _advance(self, role: ModelRole, state: RouterState) -> str:
        if self._cursor >= len(self.trace.steps):
            raise TraceMismatchError(f"the run went past the trace's {len(self.trace.steps)} steps")
        code = self.trace.steps[self._cursor]
        if STEP_ROLE[code] != role or state.context_length != self._context:
            raise TraceMismatchError(
                f"step {self._cursor}: the trace expects the {STEP_ROLE[code].upper()} at context {self._context}, "
                f"the run has the {role.upper()} at context {state.context_length}"
            )
        self._cursor += 1
        if code != "x":
            self._context += 1
        return code


def replay_settings(trace: Trace) -> GenerationSettings:
    """Greedy, exactly the trace's output length, no stop strings, no prompt lookup (one pass per position)."""
    return GenerationSettings(max_new_tokens=trace.output_tokens, temperature=0.0, prompt_lookup_tokens=0)


def replay(engine: StitchEngine, trace: Trace, prompt: PromptLike | None = None) -> GenerationResult:
    """Run ``engine`` along ``trace`` (its recorded prompt unless ``prompt`` is given).

    The run must not stop early: use the recording pair (same tokens, same EOS) or a pair without
    EOS (``pair_without_eos``). Raises ``TraceMismatchError`` if the run leaves the trace.
    """
    router = ReplayRouter(trace)
    result = engine.generate(_replay_prompt(trace, prompt), replay_settings(trace), router)
    if not router.finished:
        raise TraceMismatchError(
            f"the run stopped after {router._cursor} of {len(trace.steps)} steps "
            f"({result.finish_reason}); replay on a pair without EOS (pair_without_eos)"
        )
    return result


def replay_stream(engine: StitchEngine, trace: Trace, prompt: PromptLike | None = None) -> StitchStream:
    """A stream along ``trace``, for callers that time token by token."""
    return engine.stream(_replay_prompt(trace, prompt), replay_settings(trace), ReplayRouter(trace))


def _replay_prompt(trace: Trace, prompt: PromptLike | None) -> PromptLike:
    if prompt is None:
        if not trace.prompt_ids:
            raise ValueError("this trace has no recorded prompt: give prompt ids of its length")
        return list(trace.prompt_ids)
    return prompt


def record_trace(
    engine: StitchEngine,
    prompt: PromptLike,
    settings: GenerationSettings | None = None,
    router: Router | None = None,
    meta: dict[str, Any] | None = None,
) -> tuple[GenerationResult, Trace]:
    """Run a request and return its result and its trace (with measured pass times).

    Prompt lookup is off for the recording: a trace has one pass per decided position."""
    settings = (settings if settings is not None else engine.settings).replace(prompt_lookup_tokens=0)
    stream = engine.stream(prompt, settings, router)
    events = tuple(stream)
    request = stream.request
    result = GenerationResult(text="".join(e.text for e in events), token_ids=tuple(e.token_id for e in events),
                              events=events, stats=stream.stats)
    provenance = {"slm": engine.pair.slm.name, "llm": engine.pair.llm.name,
                  "threshold": stream.stats.threshold, "router": stream.stats.router,
                  "finish_reason": stream.stats.finish_reason, **(meta or {})}
    trace = Trace.from_events(request.tokens[: request.prompt_tokens], events, request.records(), provenance)
    return result, trace


@dataclass(frozen=True)
class _PairWithoutEos(ModelPair):
    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset()


def pair_without_eos(pair: ModelPair) -> ModelPair:
    """The same models and tokenizer with no end-of-sequence id: runs always reach max_new_tokens."""
    return _PairWithoutEos(pair.slm, pair.llm, pair.tokenizer)


# ---------------------------------------------------------------------------- synthetic traces


def synthetic_trace(
    prompt_tokens: int,
    output_tokens: int,
    slm_share: float,
    mean_llm_run: float = 4.0,
    run_lengths: RunLengths = "geometric",
    seed: int = 0,
) -> Trace:
    """A trace with exactly ``round(slm_share * output_tokens)`` SLM tokens, seeded.

    The LLM's tokens come in runs drawn from ``run_lengths`` ('geometric' with mean
    ``mean_llm_run``, or 'fixed' runs of ``round(mean_llm_run)``); the last run is cut to fit. Each
    run starts with a discarded SLM token and ends with a hand-back. The SLM's tokens fill the gaps
    before, between (at least one each) and after the runs, split uniformly at random.
    """
    if not 0.0 <= slm_share <= 1.0:
        raise ValueError(f"slm_share must be in [0, 1], got {slm_share}")
    if output_tokens < 1 or mean_llm_run < 1:
        raise ValueError("output_tokens and mean_llm_run must be at least 1")
    rng = np.random.default_rng(seed)
    n_slm = round(slm_share * output_tokens)
    runs = _llm_runs(output_tokens - n_slm, mean_llm_run, run_lengths, rng)
    while len(runs) > 1 and len(runs) - 1 > n_slm:  # too few SLM tokens to separate the runs: merge
        runs[-2:] = [runs[-2] + runs[-1]]
    if not runs:
        return Trace(prompt_tokens, "s" * n_slm, meta=_synthetic_meta(slm_share, mean_llm_run, run_lengths, seed))
    gaps = [0] + [1] * (len(runs) - 1) + [0]  # before, between and after the runs
    extra = n_slm - sum(gaps)
    gaps = [g + int(k) for g, k in zip(gaps, rng.multinomial(extra, [1 / len(gaps)] * len(gaps)))]
    steps = []
    for i, run in enumerate(runs):
        steps.append("s" * gaps[i])
        last_of_output = i == len(runs) - 1 and gaps[-1] == 0
        steps.append("x" + "l" * (run - 1) + ("l" if last_of_output else "h"))
    steps.append("s" * gaps[-1])
    return Trace(prompt_tokens, "".join(steps), meta=_synthetic_meta(slm_share, mean_llm_run, run_lengths, seed))


def _synthetic_meta(slm_share: float, mean_llm_run: float, run_lengths: str, seed: int) -> dict[str, Any]:
    return {"source": "synthetic", "slm_share": slm_share, "mean_llm_run": mean_llm_run,
            "run_lengths": run_lengths, "seed": seed}


def _llm_runs(total: int, mean: float, kind: RunLengths, rng: np.random.Generator) -> list[int]:
    runs: list[int] = []
    while sum(runs) < total:
        if kind == "geometric":
            runs.append(int(rng.geometric(1.0 / mean)))  # support 1, 2, ...; mean ``mean``
        elif kind == "fixed":
            runs.append(max(1, round(mean)))
        else:
            raise ValueError(f"run_lengths must be 'geometric' or 'fixed', got {kind!r}")
    if runs:
        runs[-1] -= sum(runs) - total
    return runs
