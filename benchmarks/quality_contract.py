"""The quality contract, measured: every preset beside the LLM alone on prompts the LLM alone mostly gets right.

Suites (``--suite``, comma-separated):

* ``everyday``: the everyday suite's held-out part (``rstitch_engine.measure.everyday``: capitals, sums,
  opposites, short and long retrieval, multi-turn recall, a forced tool call, a JSON extraction; held-out
  forms and entities, nothing tuned on it). Tool and JSON items run through the adapters' constrained
  decoding (``rstitch_integrations.core.prepare_call``), as a LangChain or LlamaIndex call would.
* ``gsm8k``: the first ``--gsm8k`` GSM8K test questions (``../shared/data/gsm8k/test.jsonl``) with a
  chain-of-thought answer of up to ``--gsm8k-tokens`` tokens; "agreement" is the same final number as
  the LLM alone's, "accuracy" the GSM8K answer.

Configurations (``--configs``): ``LLM alone`` (the plain cached greedy loop: the reference and the
speed baseline), ``default`` (what a caller who names nothing gets: ``Routing()``, the pair's
calibration profile), the presets ``exact``, ``balanced``, ``fast``, R-Stitch at ``tau=X``, and
``SLM alone``. All greedy. For each item every configuration runs back to back in an order rotated
per item (the machine's load hits all alike); a warm-up item runs each once, untimed.

Per configuration and suite: accuracy, agreement with the LLM alone (same extracted answer), SLM
share, and speedup (the LLM alone's total seconds over the configuration's, same items, one run).
Where stitched answers go wrong: for items the LLM alone gets right and a configuration gets wrong,
the position of the first token that differs from the LLM alone's answer, and which model wrote it.

    python benchmarks/quality_contract.py --json benchmarks/results/quality_contract.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from rstitch_engine import GenerationSettings, Routing, StitchEngine
from rstitch_engine.measure.everyday import everyday_suite
from rstitch_engine.models.hardware import processor_name

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
DEFAULT_CONFIGS = "LLM alone,default,exact,balanced,fast,tau=0.02,SLM alone"
POSITION_BUCKETS = ((0, 0, "first token"), (1, 3, "tokens 2-4"), (4, 11, "tokens 5-12"), (12, 10**9, "later"))


@dataclass(frozen=True)
class Item:
    """One prompt of either suite: encoded ids, settings (grammar included), and how to read its answer."""

    id: str
    skill: str
    prompt_ids: list[int]
    settings: GenerationSettings
    prefix: str
    """Answer text an adapter puts in the model's mouth (a forced tool call's opening); part of the answer."""
    extract: Callable[[str], str | None]
    is_correct: Callable[[str], bool]


@dataclass(frozen=True)
class Answer:
    text: str
    token_ids: tuple[int, ...]
    sources: tuple[str, ...]
    seconds: float


def everyday_items(engine: StitchEngine, part: str, max_new_tokens: int, skills: Sequence[str] | None = None,
                   per_skill: int | None = None) -> list[Item]:
    """The part's items (only ``skills``, and the first ``per_skill`` of each, where given)."""
    from rstitch_integrations.core import StitchOptions, prepare_call

    options = StitchOptions(max_tokens=max_new_tokens)
    chosen = [item for item in everyday_suite(part) if not skills or item.skill in skills]  # type: ignore[arg-type]
    if per_skill is not None:  # the suite lists its items skill by skill
        groups = itertools.groupby(chosen, key=lambda item: item.skill)
        chosen = [item for _, group in groups for item in list(group)[:per_skill]]
    items = []
    for item in chosen:
        call = prepare_call(engine, options, item.messages(), item.call)
        items.append(Item(item.id, item.skill, call.prompt_ids, call.settings.replace(prompt_lookup_tokens=None),
                          call.prefix, item.extract, item.is_correct))
    return items


def gsm8k_items(engine: StitchEngine, count: int, max_new_tokens: int) -> list[Item]:
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    items = []
    for number, line in enumerate(GSM8K.read_text().splitlines()[:count]):
        row = json.loads(line)
        expected = row["answer"].split("####")[-1].strip().replace(",", "")
        messages = [{"role": "user", "content": row["question"] + " Think step by step, then give the final number."}]
        items.append(Item(f"gsm8k-{number}", "gsm8k", engine.encode(messages), settings, "", final_number,
                          lambda text, expected=expected: final_number(text) == expected))
    return items


def final_number(text: str) -> str | None:
    """The last number in a reply (commas and a trailing period dropped)."""
    numbers = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    return numbers[-1].rstrip(".") if numbers else None


def runner(engine: StitchEngine, name: str) -> Callable[[Item], Answer]:
    """How one configuration answers an item (timed around the call)."""
    if name in ("LLM alone", "SLM alone"):
        role = "llm" if name == "LLM alone" else "slm"

        def alone(item: Item) -> Answer:
            start = time.perf_counter()
            result = engine.decode_alone(role, item.prompt_ids, item.settings)  # type: ignore[arg-type]
            seconds = time.perf_counter() - start
            return Answer(item.prefix + result.text, tuple(result.token_ids), (role,) * len(result.token_ids), seconds)
        return alone
    routing = (Routing() if name == "default" else Routing(threshold=float(name.removeprefix("tau=")))
               if name.startswith("tau=") else Routing(quality=name))  # type: ignore[arg-type]
    engine.policy(routing)  # resolved (and validated) before any timing

    def stitched(item: Item) -> Answer:
        start = time.perf_counter()
        result = engine.generate(item.prompt_ids, item.settings, routing)
        seconds = time.perf_counter() - start
        return Answer(item.prefix + result.text, result.token_ids, tuple(e.source for e in result.events), seconds)
    return stitched


def run(engine: StitchEngine, items: Sequence[Item], names: Sequence[str]) -> list[dict[str, Any]]:
    """Every configuration on every item, rotated per item; one record per (item, configuration)."""
    runs = {name: runner(engine, name) for name in names}
    for name in names:  # warm-up, untimed
        runs[name](items[0])
    records = []
    for index, item in enumerate(tqdm(items, desc="items", unit="item")):
        order = list(names[index % len(names):]) + list(names[:index % len(names)])
        answers = {name: runs[name](item) for name in order}
        reference = answers["LLM alone"]
        for name in names:
            answer = answers[name]
            records.append({
                "item": item.id, "skill": item.skill, "config": name, "text": answer.text,
                "tokens": len(answer.token_ids), "slm_tokens": answer.sources.count("slm"), "seconds": answer.seconds,
                "correct": item.is_correct(answer.text), "llm_correct": item.is_correct(reference.text),
                "agrees": item.extract(answer.text) == item.extract(reference.text),
                "first_difference": first_difference(answer, reference),
            })
    return records


def first_difference(answer: Answer, reference: Answer) -> dict[str, Any] | None:
    """Where the answer's tokens first differ from the LLM alone's, and which model wrote that token."""
    for position, (mine, theirs) in enumerate(zip(answer.token_ids, reference.token_ids)):
        if mine != theirs:
            return {"position": position, "source": answer.sources[position]}
    if len(answer.token_ids) == len(reference.token_ids):
        return None
    position = min(len(answer.token_ids), len(reference.token_ids))
    return {"position": position, "source": answer.sources[position] if position < len(answer.sources) else "end"}


def summary(records: Sequence[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per configuration: accuracy, agreement, SLM share and speedup (LLM-alone seconds / its seconds)."""
    baseline = sum(r["seconds"] for r in records if r["config"] == "LLM alone")
    rows = []
    for name in names:
        mine = [r for r in records if r["config"] == name]
        rows.append({
            "config": name, "items": len(mine),
            "accuracy": sum(r["correct"] for r in mine) / len(mine),
            "agreement": sum(r["agrees"] for r in mine) / len(mine),
            "slm_share": sum(r["slm_tokens"] for r in mine) / max(sum(r["tokens"] for r in mine), 1),
            "speedup": baseline / sum(r["seconds"] for r in mine),
        })
    return rows


def losses(records: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per configuration, the answers it got wrong where the LLM alone was right, by where they first differ."""
    table: dict[str, dict[str, int]] = {}
    for name in names:
        counts: dict[str, int] = {}
        for record in records:
            if record["config"] != name or not record["llm_correct"] or record["correct"]:
                continue
            difference = record["first_difference"] or {"position": -1, "source": "none"}
            bucket = next((label for low, high, label in POSITION_BUCKETS if low <= difference["position"] <= high),
                          "no difference")
            key = f"{bucket}, {difference['source']}"
            counts[key] = counts.get(key, 0) + 1
        table[name] = dict(sorted(counts.items()))
    return table


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| configuration | accuracy | same answer as LLM alone | SLM share | speedup vs LLM alone |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['accuracy']:.1%} | {r['agreement']:.1%} | {r['slm_share']:.0%} | "
              f"{r['speedup']:.2f}x |" for r in rows]
    return "\n".join(lines)


def per_skill(records: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    skills = sorted({r["skill"] for r in records})
    return {skill: summary([r for r in records if r["skill"] == skill], names) for skill in skills}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="everyday,gsm8k", help="everyday, gsm8k or both (default: %(default)s)")
    parser.add_argument("--part", default="heldout", choices=["tuning", "heldout"], help="everyday suite part")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="everyday answers (default: %(default)s)")
    parser.add_argument("--gsm8k", type=int, default=30, help="GSM8K test questions (default: %(default)s)")
    parser.add_argument("--gsm8k-tokens", type=int, default=160, help="GSM8K answer tokens (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N items of each suite")
    parser.add_argument("--skills", default=None, help="everyday skills to run, comma-separated (default: all)")
    parser.add_argument("--per-skill", type=int, default=None, help="only the first N everyday items of each skill")
    parser.add_argument("--llm", default="smollm2-135m-instruct")
    parser.add_argument("--slm", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="write every record and the tables here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    if "LLM alone" not in names:
        names.insert(0, "LLM alone")
    engine = StitchEngine.from_pretrained(args.llm, args.slm, device="cpu", dtype=args.dtype)
    report: dict[str, Any] = {"command": "python benchmarks/quality_contract.py",
                              "argv": vars(args) | {"json": str(args.json)},
                              "machine": processor_name(), "platform": platform.platform(),
                              "dtype": str(engine.pair.llm.dtype), "date": time.strftime("%Y-%m-%d"),
                              "default_policy": engine.policy().name, "default_reason": engine.policy().reason,
                              "suites": {}}
    for suite in [s.strip() for s in args.suite.split(",") if s.strip()]:
        skills = [s.strip() for s in args.skills.split(",")] if args.skills else None
        items = (everyday_items(engine, args.part, args.max_new_tokens, skills, args.per_skill) if suite == "everyday"
                 else gsm8k_items(engine, args.gsm8k, args.gsm8k_tokens))[:args.limit]
        records = run(engine, items, names)
        rows = summary(records, names)
        report["suites"][suite] = {"items": len(items), "summary": rows, "per_skill": per_skill(records, names),
                                   "losses": losses(records, names), "records": records}
        print(f"\n## {suite} ({len(items)} items; default = {report['default_policy']})\n\n{markdown(rows)}")
        for name, counts in losses(records, names).items():
            if counts:
                print(f"  {name}: right for the LLM alone, wrong here, first difference at: {counts}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
