"""Speed and quality of the default pair on the held-out quality suite, every decoder side by side.

Configurations, all greedy with the same ``max_new_tokens`` and the chat template (``item.messages()``):

* ``SLM alone`` / ``LLM alone``: the engine's plain cached decode loop (``engine.decode_alone``);
* ``assisted``: Hugging Face assisted generation (speculative decoding) with the SLM as
  ``assistant_model`` of the LLM (transformers' defaults for the assistant);
* ``R-Stitch tau=...``: the engine with ``EntropyRouter(tau)`` for each tau; with ``--hand-back``,
  also ``R-Stitch tau=... back=...``: ``EntropyRouter(tau, hand_back_threshold=back)`` for each
  hand-back threshold above tau (the LLM returns control once its own entropy is <= back);
* with ``--lookup K[,K...]``: ``exact (LLM + lookup K)`` for each K, what ``quality='exact'`` runs
  (the engine with ``AlwaysLLMRouter`` and prompt lookup of K tokens, ``decoding.lookup``); with
  ``--stitch-lookup`` also each tau again with prompt lookup (``R-Stitch tau=... lookup=K``);
* with ``--auto``: ``quality='auto'``, the default preset (what the pair's calibration profile proves
  faithful to the LLM alone, else the LLM alone with prompt lookup: ``decoding.policy``).

Fairness on a shared, noisy machine: for each item every configuration runs back to back, in an
order rotated by one per item, so load drifts hit all of them alike. Each answer is timed with
the wall clock around one call that takes the already-encoded prompt ids (the chat template is
applied once per item, outside the timings; decoding the output text is inside them). A warm-up
item runs every configuration once, untimed.

Per configuration: exact-match accuracy (``item.is_correct``), agreement with the LLM-alone answer
(identical text; same extracted answer ``item.extract``), mean per-token negative log-likelihood
of the output under the LLM (one LLM forward over prompt + output, averaged per answer, then over
answers; computed outside the timings and cached by output), mean latency per answer, tokens per
answer, share of tokens written by the SLM (for assisted generation: accepted draft tokens, i.e.
tokens minus LLM verification passes), switches to the LLM per answer, and the speedup against the
LLM alone: total LLM-alone seconds / total seconds over all items, and the mean per-item ratio.

    python benchmarks/default_pair.py --json results/default_pair.json --plot results/default_pair.png

Ctrl-C (SIGINT) ends the run early and reports the items finished so far (``items`` in the JSON,
next to ``items_planned``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from rstitch_engine import EntropyRouter, GenerationSettings, Routing, StitchEngine
from rstitch_engine.decoding.routers import AlwaysLLMRouter
from rstitch_engine.decoding.routing import Router
from rstitch_engine.measure.generalisation import generalisation_suite
from rstitch_engine.measure.quality import QualityItem, quality_suite
from rstitch_engine.models.defaults import DEFAULT_LLM
from rstitch_engine.models.hardware import processor_name

DEFAULT_TAUS = (0.001, 0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
"""The six thresholds of the paper's range, and the higher ones where this pair's LLM hands back to the draft
(SmolLM2-135M's own normalised entropy is above 0.1 at about half of its tokens)."""
Kind = Literal["slm", "llm", "assisted", "stitch", "exact", "auto"]
STITCHING_KINDS = ("stitch", "auto")
"""Configurations that stitch (``auto`` on short prompts): they have switches and a cost breakdown."""


@dataclass(frozen=True)
class Config:
    """One decoder under test."""

    name: str
    kind: Kind
    tau: float | None = None
    hand_back: float | None = None
    """Stitched configs: ``EntropyRouter``'s ``hand_back_threshold`` (None: tau, Algorithm 1)."""
    lookup: int | None = 0
    """Stitched, exact and auto configs: ``GenerationSettings.prompt_lookup_tokens`` (0: off; None: the router's default)."""


@dataclass(frozen=True)
class Answer:
    """One configuration's answer to one item, and what it cost."""

    token_ids: tuple[int, ...]
    text: str
    seconds: float
    slm_tokens: int
    switches: int | None
    """Switches SLM -> LLM (R-Stitch only)."""
    llm_passes: int | None = None
    """LLM forward passes (assisted generation only: prefill + verifications)."""
    detail: dict[str, float] = field(default_factory=dict)
    """Engine accounting of a stitched answer: decode and catch-up passes and seconds per model."""


def comma_floats(text: str) -> list[float]:
    """The numbers of a comma-separated command-line list ('' gives none)."""
    return [float(part) for part in text.split(",") if part.strip()]


def comma_ints(text: str) -> list[int]:
    """The whole numbers of a comma-separated command-line list ('' gives none)."""
    return [int(part) for part in text.split(",") if part.strip()]


def configs_for(taus: Sequence[float], baselines: Sequence[str] = ("slm", "llm", "assisted"),
                hand_backs: Sequence[float] = (), lookups: Sequence[int] = (), stitch_lookup: bool = False,
                auto: bool = False) -> list[Config]:
    """The baselines (SLM alone, LLM alone, assisted generation; the LLM alone always, as the
    reference), then R-Stitch at each tau (``stitched_configs``); for each of ``lookups`` also the
    exact preset with prompt lookup of that many tokens, and with ``stitch_lookup`` each tau with it too;
    with ``auto`` the 'auto' preset."""
    fixed = [Config("SLM alone", "slm"), Config("LLM alone", "llm"), Config("assisted (HF)", "assisted")]
    chosen = [c for c in fixed if c.kind in baselines or c.kind == "llm"]
    exact = [Config(f"exact (LLM + lookup {k})", "exact", lookup=k) for k in lookups]
    with_lookup = [Config(f"R-Stitch tau={tau:g} lookup={k}", "stitch", tau, lookup=k)
                   for k in lookups for tau in taus] if stitch_lookup else []
    presets = [Config("auto (the default preset)", "auto", None, lookup=None)] if auto else []
    return chosen + exact + presets + stitched_configs(taus, hand_backs) + with_lookup


def stitched_configs(taus: Sequence[float], hand_backs: Sequence[float] = ()) -> list[Config]:
    """R-Stitch at each tau, each followed by its variants with the LLM handing back at each looser threshold."""
    return [config for tau in taus for config in
            [Config(f"R-Stitch tau={tau:g}", "stitch", tau)]
            + [Config(f"R-Stitch tau={tau:g} back={back:g}", "stitch", tau, back) for back in hand_backs if back > tau]]


# ----------------------------------------------------------------------------- loading


def load_engine(llm: str, slm: str | None, device: str, dtype: str) -> StitchEngine:
    """The pair under test; a draft folder (``rstitch distill``) is built on the loaded LLM."""
    return StitchEngine.from_pretrained(llm, slm, device=device, dtype=dtype)


# ----------------------------------------------------------------------------- running one answer


def run_config(engine: StitchEngine, config: Config, prompt_ids: list[int], settings: GenerationSettings) -> Answer:
    """Decode one answer with ``config``, timed with the wall clock around the call."""
    if config.kind in ("slm", "llm"):
        start = time.perf_counter()
        alone = engine.decode_alone(config.kind, prompt_ids, settings)
        seconds = time.perf_counter() - start
        slm_tokens = len(alone.token_ids) if config.kind == "slm" else 0
        return Answer(alone.token_ids, alone.text, seconds, slm_tokens, None)
    if config.kind == "assisted":
        return _assisted(engine, prompt_ids, settings)
    if config.kind == "exact":
        router: Router | Routing = AlwaysLLMRouter()
    elif config.kind == "auto":
        router = Routing(quality="auto")
    else:
        router = EntropyRouter(config.tau, hand_back_threshold=config.hand_back)  # type: ignore[arg-type]
    settings = settings.replace(prompt_lookup_tokens=config.lookup)
    start = time.perf_counter()
    result = engine.generate(prompt_ids, settings, router)
    seconds = time.perf_counter() - start
    stats = result.stats
    detail = {
        "slm_decode_passes": stats.slm.decode_passes, "slm_decode_seconds": stats.slm.decode_seconds,
        "llm_decode_passes": stats.llm.decode_passes, "llm_decode_seconds": stats.llm.decode_seconds,
        "slm_catchup_seconds": stats.slm.catchup_seconds, "llm_catchup_seconds": stats.llm.catchup_seconds,
        "slm_catchup_passes": stats.slm.catchup_passes, "llm_catchup_passes": stats.llm.catchup_passes,
        "discarded_slm_tokens": stats.discarded_slm_tokens,
        "proposed_tokens": stats.proposed_tokens, "confirmed_tokens": stats.confirmed_tokens,
    }
    return Answer(result.token_ids, result.text, seconds, stats.slm_tokens, stats.switches_to_llm, detail=detail)


@torch.inference_mode()
def _assisted(engine: StitchEngine, prompt_ids: list[int], settings: GenerationSettings) -> Answer:
    """Transformers' assisted generation, greedy; counts the LLM's forward passes with a hook."""
    llm, slm = engine.pair.llm.model, engine.pair.slm.model
    eos = sorted(engine.pair.eos_token_ids)
    passes = [0]
    hook = llm.register_forward_pre_hook(lambda module, args: passes.__setitem__(0, passes[0] + 1))
    try:
        start = time.perf_counter()
        ids = torch.tensor([prompt_ids], device=engine.pair.llm.device)  # [1, P]
        out = llm.generate(
            ids, attention_mask=torch.ones_like(ids), assistant_model=slm, max_new_tokens=settings.max_new_tokens,
            do_sample=False, top_p=None, top_k=None, temperature=None, eos_token_id=eos, pad_token_id=eos[0],
        )
        output = tuple(out[0, len(prompt_ids):].tolist())
        output = _through_first_eos(output, set(eos))
        text = engine.pair.tokenizer.decode(list(output), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        seconds = time.perf_counter() - start
    finally:
        hook.remove()
    # Each LLM pass (the prefill with the first verification, then one per round) keeps exactly one
    # token of its own (the correction or the bonus token); every other kept token is the draft's.
    slm_tokens = max(len(output) - passes[0], 0)
    return Answer(output, text, seconds, slm_tokens, None, llm_passes=passes[0])


def _through_first_eos(output: tuple[int, ...], eos: set[int]) -> tuple[int, ...]:
    for position, token in enumerate(output):
        if token in eos:
            return output[:position + 1]
    return output


# ----------------------------------------------------------------------------- quality under the LLM


class LlmNll:
    """Mean per-token NLL of an output under the LLM, cached by (item, output ids)."""

    def __init__(self, engine: StitchEngine) -> None:
        self._loaded = engine.pair.llm
        self._cache: dict[tuple[str, tuple[int, ...]], float] = {}

    @torch.inference_mode()
    def __call__(self, item_id: str, prompt_ids: list[int], output: tuple[int, ...]) -> float:
        key = (item_id, output)
        if key not in self._cache:
            self._cache[key] = self._compute(prompt_ids, output)
        return self._cache[key]

    def _compute(self, prompt_ids: list[int], output: tuple[int, ...]) -> float:
        if not output:
            return 0.0
        predicting, _ = self._loaded.answer_logits(prompt_ids, list(output))  # [R, V]
        logprobs = torch.log_softmax(predicting, dim=-1)
        targets = torch.tensor(output, device=logprobs.device)
        return float(-logprobs.gather(-1, targets[:, None]).mean())


# ----------------------------------------------------------------------------- the run


def benchmark(
    engine: StitchEngine,
    items: Sequence[QualityItem],
    configs: Sequence[Config],
    settings: GenerationSettings,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Every configuration on every item, rotated per item; one record per (item, configuration).

    Ctrl-C (SIGINT) stops at once and returns the items finished so far (every configuration ran on
    each of them, so they still compare side by side); an interrupted item leaves no records.
    """
    nll = LlmNll(engine)
    encoded = [engine.encode(item.messages()) for item in items]
    for config in configs:  # warm-up, untimed: first calls pay for lazy initialisation
        run_config(engine, config, encoded[0], settings)
    records: list[dict[str, Any]] = []
    try:
        for index, (item, prompt_ids) in enumerate(tqdm(list(zip(items, encoded)), desc="items", unit="item",
                                                         disable=not progress)):
            shift = index % len(configs)
            order = list(configs[shift:]) + list(configs[:shift])
            answers = {config.name: run_config(engine, config, prompt_ids, settings) for config in order}
            records += _item_records(item, prompt_ids, configs, answers, nll)
    except KeyboardInterrupt:
        if not records:
            raise
        print(f"\ninterrupted: reporting the {len(records) // len(configs)} items finished")
    return records


def _item_records(item: QualityItem, prompt_ids: list[int], configs: Sequence[Config], answers: dict[str, Answer],
                  nll: LlmNll) -> list[dict[str, Any]]:
    """One record per configuration (in the fixed config order) for one item."""
    reference = answers["LLM alone"]
    records = []
    for config in configs:
        answer = answers[config.name]
        records.append({
            "item": item.id, "skill": item.skill, "config": config.name, "kind": config.kind, "tau": config.tau,
            "prompt_tokens": len(prompt_ids),
            "text": answer.text, "token_ids": list(answer.token_ids), "tokens": len(answer.token_ids),
            "seconds": answer.seconds, "slm_tokens": answer.slm_tokens, "switches": answer.switches,
            "llm_passes": answer.llm_passes, "correct": item.is_correct(answer.text),
            "same_text_as_llm": answer.text == reference.text,
            "same_answer_as_llm": item.extract(answer.text) == item.extract(reference.text),
            "nll": nll(item.id, prompt_ids, answer.token_ids), "llm_alone_seconds": reference.seconds,
            **answer.detail,
        })
    return records


def suite_items(suite: str, part: str) -> Sequence[Any]:
    """The items of one part of a suite (both kinds have messages(), is_correct, extract, id, skill)."""
    if suite == "quality":
        if part == "pool":
            raise SystemExit("the quality suite has no pool part (use --suite generalisation)")
        return quality_suite(part)  # type: ignore[arg-type]
    if part == "all":
        raise SystemExit("the generalisation suite is reported per part: pool, tuning or heldout")
    return generalisation_suite(part)  # type: ignore[arg-type]


def skill_rows(records: Sequence[dict[str, Any]], configs: Sequence[Config]) -> dict[str, dict[str, Any]]:
    """Per skill and configuration: accuracy, speedup over the LLM alone (same items, side by side) and SLM
    share; for R-Stitch also its switch rate and catch-up costs (``_stitch_costs``)."""
    out: dict[str, dict[str, Any]] = {}
    for skill in sorted({r["skill"] for r in records}):
        out[skill] = {}
        for config in configs:
            mine = [r for r in records if r["skill"] == skill and r["config"] == config.name]
            tokens = sum(r["tokens"] for r in mine)
            cell = {"items": len(mine), "accuracy": sum(r["correct"] for r in mine) / len(mine),
                    "speedup": sum(r["llm_alone_seconds"] for r in mine) / sum(r["seconds"] for r in mine),
                    "slm_share": sum(r["slm_tokens"] for r in mine) / tokens if tokens else 0.0}
            if config.kind == "stitch":
                cell.update(_stitch_costs(mine), switches_per_100_tokens=100 * sum(r["switches"] for r in mine) / tokens
                            if tokens else None, prompt_tokens=statistics.fmean(r["prompt_tokens"] for r in mine))
            out[skill][config.name] = cell
    return out


def repeats_table(per_run: Sequence[Sequence[dict[str, Any]]]) -> str:
    """Accuracy and speedup of every configuration in each run, and their spread (max - min)."""
    lines = ["| config | " + " | ".join(f"run {i + 1}: acc / speedup" for i in range(len(per_run)))
             + " | spread: acc / speedup |", "|" + "---|" * (len(per_run) + 2)]
    for same in zip(*per_run):
        accuracies, speedups = [r["accuracy"] for r in same], [r["speedup"] for r in same]
        cells = [f"{100 * r['accuracy']:.1f}% / {r['speedup']:.2f}x" for r in same]
        spread = f"{100 * (max(accuracies) - min(accuracies)):.1f} pt / {max(speedups) - min(speedups):.2f}x"
        lines.append(f"| {same[0]['config']} | " + " | ".join(cells) + f" | {spread} |")
    return "\n".join(lines)


def skill_table(per_skill: dict[str, dict[str, Any]]) -> str:
    names = list(next(iter(per_skill.values())))
    lines = ["| skill | items | " + " | ".join(f"{n}: acc / speedup" for n in names) + " |",
             "|" + "---|" * (len(names) + 2)]
    for skill, cells in per_skill.items():
        first = next(iter(cells.values()))
        lines.append(f"| {skill} | {first['items']} | " + " | ".join(
            f"{100 * c['accuracy']:.1f}% / {c['speedup']:.2f}x" for c in cells.values()) + " |")
    return "\n".join(lines)


def summarise(records: Sequence[dict[str, Any]], configs: Sequence[Config]) -> list[dict[str, Any]]:
    """One row per configuration (in ``configs`` order)."""
    rows = []
    for config in configs:
        mine = [r for r in records if r["config"] == config.name]
        n = len(mine)
        seconds = sum(r["seconds"] for r in mine)
        llm_seconds = sum(r["llm_alone_seconds"] for r in mine)
        tokens = sum(r["tokens"] for r in mine)
        row: dict[str, Any] = {
            "config": config.name, "kind": config.kind, "tau": config.tau, "hand_back": config.hand_back, "items": n,
            "accuracy": sum(r["correct"] for r in mine) / n,
            "agree_text": sum(r["same_text_as_llm"] for r in mine) / n,
            "agree_answer": sum(r["same_answer_as_llm"] for r in mine) / n,
            "nll": statistics.fmean(r["nll"] for r in mine),
            "latency_s": seconds / n,
            "tokens": tokens / n,
            "slm_share": sum(r["slm_tokens"] for r in mine) / tokens if tokens else 0.0,
            "switches": statistics.fmean(r["switches"] for r in mine) if config.kind in STITCHING_KINDS else None,
            "speedup": llm_seconds / seconds,
            "speedup_mean_per_item": statistics.fmean(r["llm_alone_seconds"] / r["seconds"] for r in mine),
            "ms_per_token": 1000 * seconds / tokens if tokens else None,
        }
        if config.kind == "assisted":
            row["llm_passes"] = statistics.fmean(r["llm_passes"] for r in mine)
        if config.kind in STITCHING_KINDS:
            row.update(_stitch_costs(mine))
        rows.append(row)
    return rows


def _stitch_costs(mine: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Where a stitched answer's time goes: per-pass decode cost of each model, and catch-up time."""
    def total(key: str) -> float:
        return sum(r[key] for r in mine)

    def per_pass_ms(role: str) -> float | None:
        passes = total(f"{role}_decode_passes")
        return 1000 * total(f"{role}_decode_seconds") / passes if passes else None

    return {
        "slm_decode_ms": per_pass_ms("slm"),
        "llm_decode_ms": per_pass_ms("llm"),
        "slm_catchup_s": total("slm_catchup_seconds") / len(mine),
        "llm_catchup_s": total("llm_catchup_seconds") / len(mine),
        "discarded_slm_tokens": total("discarded_slm_tokens") / len(mine),
    }


def cost_ratio(rows: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """The SLM's per-token cost against the LLM's: alone (whole answers, prefill included), and per
    decode pass inside stitched answers (all taus pooled)."""
    by_kind = {row["kind"]: row for row in rows}
    alone = None
    if by_kind.get("slm") and by_kind.get("llm") and by_kind["llm"]["ms_per_token"]:
        alone = by_kind["slm"]["ms_per_token"] / by_kind["llm"]["ms_per_token"]
    stitched = [r for r in records if r["kind"] == "stitch"]
    costs = _stitch_costs(stitched) if stitched else {}
    slm_ms, llm_ms = costs.get("slm_decode_ms"), costs.get("llm_decode_ms")
    return {
        "alone_ms_per_token_ratio": alone,
        "stitched_decode_pass_ratio": slm_ms / llm_ms if slm_ms and llm_ms else None,
        "stitched_slm_decode_ms": slm_ms,
        "stitched_llm_decode_ms": llm_ms,
    }


# ----------------------------------------------------------------------------- output


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary as a Markdown table."""
    header = ("| config | accuracy | same text as LLM | same answer as LLM | NLL under LLM | latency s | tokens "
              "| SLM share | switches | speedup (total) | speedup (mean/item) |")
    lines = [header, "|" + "---|" * 11]
    for row in rows:
        switches = f"{row['switches']:.2f}" if row["switches"] is not None else "-"
        lines.append(
            f"| {row['config']} | {100 * row['accuracy']:.1f}% | {100 * row['agree_text']:.1f}% "
            f"| {100 * row['agree_answer']:.1f}% | {row['nll']:.3f} | {row['latency_s']:.3f} | {row['tokens']:.1f} "
            f"| {100 * row['slm_share']:.1f}% | {switches} | {row['speedup']:.2f}x | {row['speedup_mean_per_item']:.2f}x |"
        )
    return "\n".join(lines)


def cost_table(rows: Sequence[dict[str, Any]]) -> str:
    """Where stitched time goes: per-pass decode cost of each model and catch-up seconds per answer."""
    header = ("| config | SLM decode ms/pass | LLM decode ms/pass | SLM catch-up s/answer | LLM catch-up s/answer "
              "| discarded SLM tokens/answer | switches per 100 tokens |")
    lines = [header, "|" + "---|" * 7]
    for row in rows:
        if row["kind"] not in STITCHING_KINDS:
            continue
        slm_ms = f"{row['slm_decode_ms']:.1f}" if row["slm_decode_ms"] is not None else "-"
        llm_ms = f"{row['llm_decode_ms']:.1f}" if row["llm_decode_ms"] is not None else "-"
        per_100 = 100 * row["switches"] / row["tokens"] if row["tokens"] else 0.0
        lines.append(f"| {row['config']} | {slm_ms} | {llm_ms} | {row['slm_catchup_s']:.3f} "
                     f"| {row['llm_catchup_s']:.3f} | {row['discarded_slm_tokens']:.2f} | {per_100:.1f} |")
    return "\n".join(lines) if len(lines) > 2 else "(no stitching configuration ran: no cost breakdown)"


def label_groups(rows: Sequence[dict[str, Any]], dx: float = 0.06, dy: float = 1.5
                 ) -> list[tuple[tuple[float, float], list[str]]]:
    """Plot labels, one per cluster of points closer than (dx speedup, dy accuracy points) to the
    cluster's first point, so that coinciding configurations (tiny tau, the LLM alone) stay legible."""
    groups: list[tuple[tuple[float, float], list[str]]] = []
    for row in rows:
        x, y = row["speedup"], 100 * row["accuracy"]
        label = f"tau={row['tau']:g}" if row["kind"] == "stitch" else row["config"]
        near = next((g for g in groups if abs(g[0][0] - x) < dx and abs(g[0][1] - y) < dy), None)
        if near is None:
            groups.append(((x, y), [label]))
        else:
            near[1].append(label)
    return groups


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Speedup against the LLM alone (x) and accuracy (y), one labelled point per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"slm": "tab:orange", "llm": "tab:red", "assisted": "tab:purple", "stitch": "tab:blue",
               "exact": "tab:brown", "auto": "tab:green"}
    figure, axes = plt.subplots(figsize=(7, 4.5))
    stitched = [row for row in rows if row["kind"] == "stitch"]
    axes.plot([r["speedup"] for r in stitched], [100 * r["accuracy"] for r in stitched], color="tab:blue", alpha=0.4)
    for row in rows:
        axes.scatter(row["speedup"], 100 * row["accuracy"], color=colours[row["kind"]], zorder=3)
    for (x, y), labels in label_groups(rows):
        axes.annotate(", ".join(labels), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    axes.set_xlabel("speedup against the LLM alone (total latency ratio)")
    axes.set_ylabel("exact-match accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    plt.close(figure)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slm", default=None, help="SLM: a draft folder, hub id or folder (default: the engine's default SLM)")
    parser.add_argument("--llm", default=DEFAULT_LLM, help="LLM (default: %(default)s)")
    parser.add_argument("--suite", default="quality", choices=["quality", "generalisation"],
                        help="quality: the first suite (hash split); generalisation: forms and entities split "
                             "(rstitch_engine.measure.generalisation; parts pool/tuning/heldout)")
    parser.add_argument("--part", default="heldout", choices=["heldout", "tuning", "all", "pool"], help="suite part")
    parser.add_argument("--limit", type=int, default=None, help="only the first N items of the part")
    parser.add_argument("--every", type=int, default=1,
                        help="only every N-th item of the part (the suite is ordered by skill, so all skills stay in)")
    parser.add_argument("--taus", default=",".join(f"{t:g}" for t in DEFAULT_TAUS), help="comma-separated thresholds")
    parser.add_argument("--hand-back", default="",
                        help="comma-separated hand-back thresholds: each tau also runs with the LLM handing back "
                             "once its entropy is <= each one above tau")
    parser.add_argument("--baselines", default="slm,llm,assisted",
                        help="comma-separated baselines among slm, llm, assisted (the LLM alone always runs)")
    parser.add_argument("--lookup", default="", metavar="K[,K...]",
                        help="also run quality='exact' (the LLM through the engine) with prompt lookup of K tokens, "
                             "for each K (default: none)")
    parser.add_argument("--auto", action="store_true",
                        help="also run quality='auto', the default preset (decoding.policy)")
    parser.add_argument("--stitch-lookup", action="store_true",
                        help="with --lookup: also run every tau with prompt lookup")
    parser.add_argument("--skills", default="",
                        help="comma-separated skills to keep (default: all; the generalisation suite's skills "
                             "include rag and multiturn)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run everything this many times; the table pools the runs, a second table gives each run")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="write the summary and every answer as JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write a speedup-vs-accuracy plot (PNG) here")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def run(engine: StitchEngine, args: argparse.Namespace) -> dict[str, Any]:
    """Benchmark ``engine``'s pair as ``args`` say; prints the tables, writes the JSON and plot; returns the report."""
    taus = comma_floats(args.taus)
    skills = {s.strip() for s in args.skills.split(",") if s.strip()}
    items = [item for item in suite_items(args.suite, args.part) if not skills or item.skill in skills]
    if not items:
        raise SystemExit(f"no item of the {args.part} part has a skill among {sorted(skills)}")
    items = items[:: args.every][: args.limit]
    configs = configs_for(taus, [b.strip() for b in args.baselines.split(",")], comma_floats(args.hand_back),
                          comma_ints(args.lookup), args.stitch_lookup, args.auto)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, prompt_lookup_tokens=0)
    started = time.perf_counter()
    runs = []
    for repeat in range(args.repeats):
        runs.append([{**r, "run": repeat} for r in benchmark(engine, items, configs, settings, progress=not args.no_progress)])
    report = make_report(engine, args, configs, runs, planned=len(items), seconds=time.perf_counter() - started)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot(report["rows"], args.plot, f"{report['pair']['slm']} + {report['pair']['llm']}: {report['items']} "
             f"{args.part} items\n{report['ran_on']}")
    return report


def make_report(engine: StitchEngine, args: argparse.Namespace, configs: Sequence[Config],
                runs: Sequence[Sequence[dict[str, Any]]], planned: int, seconds: float) -> dict[str, Any]:
    """The JSON report of ``runs`` (one list of records per repeat): summary rows pooled over the runs,
    each run's rows, per-skill rows, cost ratios, and what ran where."""
    records = [r for one in runs for r in one]
    rows = summarise(records, configs)
    processor = processor_name(engine.pair.llm.device)
    assistant = engine.pair.slm.model.generation_config
    return {
        "benchmark": "default_pair",
        "pair": {"slm": engine.pair.slm.name, "llm": engine.pair.llm.name},
        "suite": args.suite,
        "part": args.part,
        "items": len(runs[0]) // len(configs),
        "repeats": len(runs),
        "runs": [{"rows": summarise(one, configs)} for one in runs],
        "per_skill": skill_rows(records, configs),
        "items_planned": planned,
        "every": args.every,
        "max_new_tokens": args.max_new_tokens,
        "taus": list(dict.fromkeys(c.tau for c in configs if c.kind == "stitch")),
        "hand_backs": sorted({c.hand_back for c in configs if c.hand_back is not None}),
        "lookups": comma_ints(args.lookup),
        "skills": sorted({r["skill"] for r in records}),
        "configs": [asdict(c) for c in configs],
        "assistant": {key: getattr(assistant, key, None) for key in
                      ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")},
        "device": str(engine.pair.llm.device),
        "dtype": str(next(engine.pair.llm.model.parameters()).dtype),
        "ran_on": f"{str(engine.pair.llm.dtype).removeprefix('torch.')} on {processor}",
        "machine": platform.platform(),
        "processor": processor,
        "torch_threads": torch.get_num_threads(),
        "seconds": round(seconds, 1),
        "cost_ratio": cost_ratio(rows, records),
        "rows": rows,
        "table": markdown_table(rows),
        "cost_table": cost_table(rows),
        "answers": records,
    }


def print_report(report: dict[str, Any]) -> None:
    """The summary, per-skill, cost and (with repeats) per-run tables of ``make_report``'s report."""
    pair = report["pair"]
    print(f"\n{report['items']} items of the {report['part']} part, max_new_tokens={report['max_new_tokens']}, "
          f"pair {pair['slm']} + {pair['llm']}, {report['ran_on']}\n")
    print(report["table"])
    print("\n" + skill_table(report["per_skill"]))
    print("\n" + report["cost_table"])
    if report["repeats"] > 1:
        print("\n" + repeats_table([one["rows"] for one in report["runs"]]))
    print("\nSLM/LLM cost: " + ", ".join(
        f"{name} {value:.3f}" for name, value in report["cost_ratio"].items() if value is not None))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run(load_engine(args.llm, args.slm, args.device, args.dtype), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
