"""``rstitch calibrate``: measure a pair's configurations against the LLM alone and write its profile.

For every calibration prompt, side by side in one run (the order rotated per prompt, so the
machine's load hits all alike), the LLM alone decodes with a plain cached loop (the reference and the
speed baseline) and every candidate configuration decodes through the engine. A candidate's
``agreement`` is the share of prompts whose answer equals the LLM alone's (the item's extracted
answer where the prompt has a checker and the LLM's answer passes it, else the whitespace-normalised
text); its ``speedup`` is the LLM alone's total seconds over the candidate's. The result is a
``PairProfile`` (``decoding.profile``), which ``quality='auto'`` chooses from (``decoding.policy``).
"""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tqdm.auto import tqdm

from ..decoding.engine import PromptLike, StitchEngine
from ..decoding.lookup import LLM_ALONE_LOOKUP_TOKENS
from ..decoding.policy import Routing
from ..decoding.profile import MeasuredConfig, PairProfile, router_from_spec
from ..decoding.settings import GenerationSettings
from ..errors import InvalidSettingError
from ..models.cost_model import device_name, pair_name
from .everyday import everyday_suite

DEFAULT_TAUS = (0.02, 0.05, 0.1)
"""Thresholds calibration tries by default (R-Stitch's paper used 0.001 to 0.03 on 7B-32B pairs)."""
DEFAULT_MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class CalibrationPrompt:
    """One calibration prompt, and how to read its answer (None: the whole text)."""

    prompt: PromptLike
    extract: Callable[[str], str | None] | None = None
    """The answer a reply gives, or None when it gives no acceptable one (built-in items' checkers)."""

    def answer_key(self, text: str, reference: str) -> str:
        """What must be equal for an answer to agree with the LLM alone's ``reference``."""
        if self.extract is not None and self.extract(reference) is not None:
            return str(self.extract(text))
        return " ".join(text.split())


@dataclass(frozen=True)
class Candidate:
    """A configuration to measure: a router spec (``MeasuredConfig.router_spec``) and prompt lookup."""

    name: str
    router_spec: dict[str, Any]
    prompt_lookup_tokens: int = 0

    def routing(self) -> Routing:
        return Routing(router=router_from_spec(self.router_spec))


LLM_WITH_LOOKUP = Candidate("LLM alone + lookup", {"kind": "llm"}, LLM_ALONE_LOOKUP_TOKENS)


def default_candidates(taus: Sequence[float] = DEFAULT_TAUS, hand_backs: Sequence[float] = (),
                       learned: str | None | bool = False, openings: Sequence[int] = ()) -> list[Candidate]:
    """The LLM alone with lookup, R-Stitch at each tau (and with each stricter hand-back, and with the LLM
    writing each number of opening tokens), and a learned router (``learned``: True for the shipped one, a
    folder for another, False for none)."""
    candidates = [LLM_WITH_LOOKUP]
    for tau in taus:
        candidates.append(Candidate(f"tau={tau:g}", {"kind": "entropy", "threshold": tau}))
        candidates += [Candidate(f"tau={tau:g} back={back:g}",
                                 {"kind": "entropy", "threshold": tau, "hand_back_threshold": back})
                       for back in hand_backs]
        candidates += [Candidate(f"tau={tau:g} LLM opens {k}",
                                 {"kind": "entropy", "threshold": tau, "llm_opening_tokens": k})
                       for k in openings]
    if learned is not False:
        path = None if learned is True else str(learned)
        candidates.append(Candidate("learned", {"kind": "learned", "path": path}))
    return candidates


def builtin_prompts(limit: int | None = None) -> list[CalibrationPrompt]:
    """The everyday suite's tuning part (``measure.everyday``; its plain chat items): prompts the LLM alone
    mostly gets right. ``limit``: that many, spread evenly over the part (every skill keeps its share)."""
    items = [item for item in everyday_suite("tuning") if not item.call]
    if limit is not None and limit < len(items):
        items = [items[i * len(items) // limit] for i in range(limit)]
    return [CalibrationPrompt(item.messages(), item.extract) for item in items]


def read_prompts(path: str | Path, limit: int | None = None) -> list[CalibrationPrompt]:
    """A user's prompts, one JSON value a line: a list of chat messages, {"messages": [...]}, or {"prompt": "text"}."""
    prompts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidSettingError(f"{path}:{number}: not JSON ({error.msg})") from error
        if isinstance(value, dict):
            value = value.get("messages", value.get("prompt"))
        if not (isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(m, dict) for m in value))):
            raise InvalidSettingError(f"{path}:{number}: expected chat messages, {{\"messages\": [...]}} or {{\"prompt\": \"...\"}}")
        prompts.append(CalibrationPrompt(value))
    if not prompts:
        raise InvalidSettingError(f"{path} holds no prompts")
    return prompts[:limit]


@dataclass
class _Tally:
    seconds: float = 0.0
    agreed: int = 0
    tokens: int = 0
    slm_tokens: int = 0


def calibrate(engine: StitchEngine, prompts: Sequence[CalibrationPrompt], candidates: Sequence[Candidate],
              settings: GenerationSettings | None = None, calibration_set: str = "custom",
              progress: bool = True) -> PairProfile:
    """Measure every candidate against the LLM alone on ``prompts`` (greedy); the pair's profile."""
    if not prompts or not candidates:
        raise InvalidSettingError("calibration needs at least one prompt and one candidate")
    settings = (settings or GenerationSettings(max_new_tokens=DEFAULT_MAX_NEW_TOKENS)).replace(temperature=0.0)
    encoded = [engine.encode(p.prompt) for p in prompts]  # every prompt validated before any pass
    routings = {c.name: c.routing() for c in candidates}
    runs: list[Callable[[list[int]], tuple[str, int, int]]] = [_llm_alone(engine, settings)]
    runs += [_candidate(engine, settings, c, routings[c.name]) for c in candidates]
    for run in runs:  # warm-up, untimed: first calls pay for lazy initialisation
        run(encoded[0])
    names = ["LLM alone", *(c.name for c in candidates)]
    tallies = {name: _Tally() for name in names}
    for index, (prompt, ids) in enumerate(tqdm(list(zip(prompts, encoded)), desc="calibrating", unit="prompt",
                                               disable=not progress)):
        shift = index % len(runs)
        answers = {}
        for name, run in list(zip(names, runs))[shift:] + list(zip(names, runs))[:shift]:
            start = time.perf_counter()
            text, tokens, slm_tokens = run(ids)
            tally = tallies[name]
            tally.seconds += time.perf_counter() - start
            tally.tokens, tally.slm_tokens = tally.tokens + tokens, tally.slm_tokens + slm_tokens
            answers[name] = text
        reference = answers["LLM alone"]
        expected = prompt.answer_key(reference, reference)
        for name in names:
            tallies[name].agreed += prompt.answer_key(answers[name], reference) == expected
    baseline = tallies["LLM alone"].seconds
    configs = tuple(MeasuredConfig(c.name, c.router_spec, c.prompt_lookup_tokens, tallies[c.name].agreed / len(prompts),
                                   baseline / tallies[c.name].seconds if tallies[c.name].seconds > 0 else 0.0,
                                   tallies[c.name].slm_tokens / max(tallies[c.name].tokens, 1))
                    for c in candidates)
    llm = engine.pair.llm
    return PairProfile(pair=pair_name(engine.pair.slm.name, llm.name), device=device_name(llm.device, llm.dtype),
                       calibration_set=calibration_set, prompts=len(prompts), max_new_tokens=settings.max_new_tokens,
                       configs=configs, created=datetime.date.today().isoformat())


def _llm_alone(engine: StitchEngine, settings: GenerationSettings) -> Callable[[list[int]], tuple[str, int, int]]:
    def run(ids: list[int]) -> tuple[str, int, int]:
        alone = engine.decode_alone("llm", ids, settings)
        return alone.text, len(alone.token_ids), 0
    return run


def _candidate(engine: StitchEngine, settings: GenerationSettings, candidate: Candidate, routing: Routing
               ) -> Callable[[list[int]], tuple[str, int, int]]:
    configured = settings.replace(prompt_lookup_tokens=candidate.prompt_lookup_tokens)

    def run(ids: list[int]) -> tuple[str, int, int]:
        result = engine.generate(ids, configured, routing)
        return result.text, result.stats.output_tokens, result.stats.slm_tokens
    return run


def profile_rows(profile: PairProfile, target: float) -> Iterable[tuple[str, str, str, str, str]]:
    """(configuration, agreement, speedup, SLM share, verdict) per measured configuration, for a table."""
    chosen, _ = profile.choose(target)
    for config in profile.configs:
        verdict = ("auto's choice" if config is chosen else
                   "fallback" if not config.stitched and chosen is None else
                   "" if not config.stitched else
                   "below target" if config.agreement < target else "not faster")
        yield (config.name, f"{config.agreement:.1%}", f"{config.speedup:.2f}x", f"{config.slm_share:.0%}", verdict)
