"""What entropy routing can give a pair at best: Algorithm 1 replayed along the LLM's own greedy answers.

For every item of a part of the quality suite (or, with ``--suite generalisation``, of the suite
split by question form and entity), the LLM's greedy answer A is decoded once; one
teacher-forced pass of each model over prompt + A then gives, at every answer position, each
model's greedy token and normalised entropy. Algorithm 1 is replayed exactly along A for each tau:
the SLM's token is kept where its entropy is <= tau, else the LLM decodes that position (catching
up first) and keeps control until its own entropy is <= tau. While every kept SLM token equals
the LLM's, the stitched answer *is* A, and the replay yields its forward passes exactly; their
time comes from the pair's cost model (``rstitch_engine/models/cost_model.py``), so the figures are free
of machine noise. Two SLMs are replayed:

* **the real SLM**: the share of answers that R-Stitch reproduces token for token, how often a
  kept SLM token differs from the LLM's (and how often it is one the LLM gives < 5% probability),
  and, over the reproduced answers, the SLM share, switches and predicted speedup;
* **an oracle SLM** with the LLM's own next-token distributions at the real SLM's cost per pass:
  it always reproduces A, so its predicted speedup is the ceiling of entropy routing for this pair
  on this device at that tau. It is set by the LLM's own entropy (the LLM keeps control while it
  is uncertain) and by what a switch costs (a discarded SLM pass, an LLM catch-up of several
  tokens, the SLM catching up in turn), not by the draft.

    python benchmarks/entropy_ceiling.py --json results/entropy_ceiling.json
    python benchmarks/entropy_ceiling.py --suite generalisation --part tuning --taus 0.05,0.1 \
        --hand-back 0.15,0.2,0.3,0.5,1 --json benchmarks/results/entropy_ceiling_generalisation_tuning.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parent))

from default_pair import comma_floats, suite_items

from rstitch_engine import GenerationSettings, StitchEngine
from rstitch_engine.models.cost_model import PairCostModel, shipped_cost_model
from rstitch_engine.models.defaults import DEFAULT_LLM
from rstitch_engine.models.hardware import processor_name
from rstitch_engine.models.loaded import LoadedModel, ModelRole

DEFAULT_TAUS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)
RARE = 0.05
"""A kept SLM token the LLM gives less than this probability counts as one the LLM would rarely write."""


@dataclass(frozen=True)
class ForcedAnswer:
    """Both models along the LLM's greedy answer: per answer position j (predicting ``answer[j]``)."""

    prompt_tokens: int
    answer: np.ndarray
    """[R] the LLM's greedy tokens."""
    llm_entropy: np.ndarray
    """[R] normalised entropy of the LLM's distribution."""
    slm_token: np.ndarray
    """[R] the SLM's greedy token."""
    slm_entropy: np.ndarray
    """[R] normalised entropy of the SLM's distribution."""
    llm_probability_of_slm_token: np.ndarray
    """[R] the LLM's probability of the SLM's token."""


@dataclass(frozen=True)
class Replay:
    """Algorithm 1 along one answer at one tau."""

    reproduced: bool
    """Every kept SLM token equals the LLM's: the stitched answer is the LLM's answer."""
    seconds: float
    """Predicted time of the replayed passes (up to the first differing SLM token if not reproduced)."""
    slm_tokens: int
    switches: int


def forced_answer(engine: StitchEngine, prompt: list[int], answer: Sequence[int]) -> ForcedAnswer:
    """One teacher-forced pass of each model over prompt + answer."""

    def logprobs(loaded: LoadedModel) -> torch.Tensor:
        logits, _ = loaded.answer_logits(prompt, list(answer))  # [R, V]
        return torch.log_softmax(logits.double(), dim=-1).cpu()

    def entropy(lp: torch.Tensor) -> np.ndarray:
        return (-(lp.exp() * lp).sum(-1) / math.log(lp.shape[-1])).numpy()

    llm, slm = logprobs(engine.pair.llm), logprobs(engine.pair.slm)
    slm_token = slm.argmax(-1)
    return ForcedAnswer(
        prompt_tokens=len(prompt), answer=np.asarray(answer), llm_entropy=entropy(llm),
        slm_token=slm_token.numpy(), slm_entropy=entropy(slm),
        llm_probability_of_slm_token=llm.gather(-1, slm_token[:, None])[:, 0].exp().numpy(),
    )


def replay(forced: ForcedAnswer, tau: float, cost: PairCostModel, oracle: bool = False,
           hand_back: float | None = None) -> Replay:
    """Algorithm 1 (entropy router) along the LLM's answer, as the engine runs it (``engine._stitch``).

    ``hand_back``: the LLM returns control once its own entropy is <= this (``EntropyRouter``'s
    ``hand_back_threshold``); None: at tau, as in Algorithm 1.
    """
    back = tau if hand_back is None else hand_back
    slm_token = forced.answer if oracle else forced.slm_token
    slm_entropy = forced.llm_entropy if oracle else forced.slm_entropy
    cached: dict[ModelRole, int] = {"slm": 0, "llm": 0}  # each cache covers tokens[:cached[role]]
    active: ModelRole = "slm"
    seconds, slm_tokens, switches, j = 0.0, 0, 0, 0
    while j < len(forced.answer):
        length = forced.prompt_tokens + j  # tokens so far: the pass feeds tokens[cached[active]:length]
        seconds += cost.pass_seconds(active, length - cached[active], cached[active])
        cached[active] = length
        if active == "slm":
            if slm_entropy[j] > tau:  # discard the SLM token; the LLM decodes this position next
                active, switches = "llm", switches + 1
                continue
            if slm_token[j] != forced.answer[j]:
                return Replay(False, seconds, slm_tokens, switches)
            slm_tokens += 1
        elif forced.llm_entropy[j] <= back:  # the LLM's confident token is kept, then the SLM resumes
            active = "slm"
        j += 1
    return Replay(True, seconds, slm_tokens, switches)


def summarise(answers: Sequence[ForcedAnswer], taus: Sequence[float], cost: PairCostModel,
              hand_backs: Sequence[float] = ()) -> list[dict[str, Any]]:
    """One row per tau: the real SLM's and the oracle SLM's replays over all answers, and the real
    SLM's with the LLM handing control back at each of ``hand_backs`` looser than tau (> tau)."""
    alone = [cost.alone_seconds("llm", a.prompt_tokens, len(a.answer)) for a in answers]
    rows = []
    for tau in taus:
        row: dict[str, Any] = {"tau": tau}
        row["llm_positions_above"] = float(np.concatenate([a.llm_entropy > tau for a in answers]).mean())
        kept = np.concatenate([a.slm_entropy <= tau for a in answers])
        differs = np.concatenate([a.slm_token != a.answer for a in answers])
        rare = np.concatenate([a.llm_probability_of_slm_token < RARE for a in answers])
        row["slm_positions_kept"] = float(kept.mean())
        row["kept_token_differs"] = float(differs[kept].mean()) if kept.any() else math.nan
        row["kept_token_rare_for_llm"] = float(rare[kept].mean()) if kept.any() else math.nan
        for name, oracle in (("real", False), ("oracle", True)):
            row[name] = _replayed([replay(a, tau, cost, oracle) for a in answers], answers, alone)
        row["hand_back"] = [{"at": back, **_replayed([replay(a, tau, cost, hand_back=back) for a in answers],
                                                     answers, alone)}
                            for back in hand_backs if back > tau]
        rows.append(row)
    return rows


def _replayed(replays: Sequence[Replay], answers: Sequence[ForcedAnswer], alone: Sequence[float]) -> dict[str, float]:
    """Share of answers reproduced, and over those: SLM share, switches per answer, predicted speedup."""
    same = [(r, a, s) for r, a, s in zip(replays, answers, alone) if r.reproduced]
    tokens = sum(len(a.answer) for _, a, _ in same)
    return {
        "reproduced": len(same) / len(answers),
        "slm_share": sum(r.slm_tokens for r, _, _ in same) / tokens if tokens else math.nan,
        "switches": float(np.mean([r.switches for r, _, _ in same])) if same else math.nan,
        "predicted_speedup": sum(s for _, _, s in same) / sum(r.seconds for r, _, _ in same) if same else math.nan,
    }


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    header = ("| tau | LLM's own entropy > tau | real: answers reproduced | real: kept SLM tokens != LLM's "
              "| ... rare for the LLM "
              "| real: SLM share | real: switches | real: predicted speedup | oracle: SLM share | oracle: switches "
              "| oracle: predicted speedup |")
    lines = [header, "|" + "---|" * 11]
    for row in rows:
        real, oracle = row["real"], row["oracle"]
        lines.append(
            f"| {row['tau']:g} | {row['llm_positions_above']:.1%} | {real['reproduced']:.1%} "
            f"| {row['kept_token_differs']:.1%} "
            f"| {row['kept_token_rare_for_llm']:.1%} | {real['slm_share']:.1%} | {real['switches']:.2f} "
            f"| {real['predicted_speedup']:.2f}x | {oracle['slm_share']:.1%} | {oracle['switches']:.2f} "
            f"| {oracle['predicted_speedup']:.2f}x |")
    return "\n".join(lines)


def hand_back_table(rows: Sequence[dict[str, Any]]) -> str:
    """The real SLM with the LLM handing back at a looser threshold than tau (Algorithm 1's row first)."""
    header = ("| tau | LLM hands back at | real: answers reproduced | real: SLM share | real: switches "
              "| real: predicted speedup |")
    lines = [header, "|" + "---|" * 6]
    for row in rows:
        for back, replayed in [(row["tau"], row["real"])] + [(h["at"], h) for h in row["hand_back"]]:
            lines.append(f"| {row['tau']:g} | {back:g} | {replayed['reproduced']:.1%} | {replayed['slm_share']:.1%} "
                         f"| {replayed['switches']:.2f} | {replayed['predicted_speedup']:.2f}x |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slm", default=None, help="SLM or draft folder (default: the default pair's)")
    parser.add_argument("--llm", default=DEFAULT_LLM)
    parser.add_argument("--suite", default="quality", choices=["quality", "generalisation"],
                        help="generalisation: the suite split by question form and entity")
    parser.add_argument("--part", default="heldout", choices=["heldout", "tuning", "all", "pool"])
    parser.add_argument("--every", type=int, default=1, help="only every N-th item of the part")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--taus", default=",".join(f"{t:g}" for t in DEFAULT_TAUS))
    parser.add_argument("--hand-back", default="",
                        help="comma-separated thresholds at which the LLM hands control back (those > tau; "
                             "EntropyRouter's hand_back_threshold): the real SLM's replay with each")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--cost-model", type=Path, default=None,
                        help="PairCostModel JSON (default: the pair's shipped model for this device)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    engine = StitchEngine.from_pretrained(args.llm, args.slm, device=args.device, dtype=args.dtype)
    pair = engine.pair
    cost = (PairCostModel.load(args.cost_model) if args.cost_model is not None
            else shipped_cost_model(pair.slm.name, pair.llm.name, pair.llm.device, pair.llm.dtype))
    if cost is None:
        parser.error("no cost model for this pair, device and dtype: calibrate one with benchmarks/cost_model.py "
                     "and pass it with --cost-model")
    taus = comma_floats(args.taus)
    items = suite_items(args.suite, args.part)[:: args.every][: args.limit]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    started = time.perf_counter()
    answers = []
    for item in tqdm(items, desc="items", file=sys.stderr):
        prompt = engine.encode(item.messages())
        answers.append(forced_answer(engine, prompt, engine.decode_alone("llm", prompt, settings).token_ids))
    hand_backs = comma_floats(args.hand_back)
    rows = summarise(answers, taus, cost, hand_backs)
    table = markdown_table(rows)
    print(f"\n{len(items)} items of the {args.suite} suite's {args.part} part, max_new_tokens={args.max_new_tokens}, pair "
          f"{pair.slm.name} + {pair.llm.name}, cost model {cost.pair or '?'} on {cost.device or '?'}\n")
    print(table)
    if hand_backs:
        table += "\n\n" + hand_back_table(rows)
        print("\n" + hand_back_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "entropy_ceiling", "command": " ".join(sys.argv), "pair": {"slm": pair.slm.name,
            "llm": pair.llm.name}, "suite": args.suite, "part": args.part, "items": len(items), "max_new_tokens": args.max_new_tokens,
            "cost_model": {"pair": cost.pair, "device": cost.device}, "machine": platform.platform(),
            "processor": processor_name(pair.llm.device),
            "seconds": round(time.perf_counter() - started, 1), "rows": rows, "table": table,
            "answers": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(a).items()}
                        for a in answers],
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
