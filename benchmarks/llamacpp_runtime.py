"""rstitch on its llama.cpp runner beside llama-cpp-python's own chat completion, on the same GGUF and prompts.

Configurations, all greedy, each answer capped at ``--max-new-tokens``:

* ``llama-cpp-python``: ``Llama(model_path=<the LLM's GGUF>).create_chat_completion(messages, temperature=0)``,
  the call a LangChain ``ChatLlamaCpp`` user runs (its chat template from the GGUF, its own prefix cache), with
  its default threads (half the logical CPUs for a decode);
* ``llama-cpp-python, rstitch's threads``: the same with rstitch's default decode threads (the physical cores,
  llama.cpp's own default), where they differ: the runtimes side by side at equal threads;
* ``rstitch LLM alone``: the engine on ``backend='llama.cpp'`` with ``Routing(router='llm')`` and prompt lookup
  off: the runner's cost over llama.cpp, nothing else;
* ``rstitch default``: what a caller who names nothing gets on that backend (``Routing()``: the pair's
  llama.cpp calibration profile, else the LLM alone with prompt lookup);
* ``rstitch fast``: R-Stitch at the 'fast' preset's tau with the shipped draft (exported to GGUF), for the
  trade-off stitching makes on this runtime.

Each rstitch configuration has a pair of its own (its prefix cache holds only its own earlier prompts, as
llama-cpp-python's holds only its previous call's). Each runtime runs on its own default threads unless
``--threads`` gives every configuration the same count: llama-cpp-python's are fixed (half the logical CPUs
for a decode, all of them for a pass of several tokens), rstitch's follow the cores other processes leave
free (``models.cpu_share``). The prompts are the plain-chat skills of the everyday suite's
held-out part (capitals, sums, opposites, short and long retrieval, multi-turn recall; the tool and JSON items
need rstitch's constrained decoding, which llama-cpp-python's chat call does not share). Every item runs each
configuration back to back in an order rotated per item; a warm-up item runs each once, untimed. With
``--busy``, the whole run is repeated while a second process keeps one core busy.

    python benchmarks/llamacpp_runtime.py --json benchmarks/results/llamacpp_runtime.json --busy
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from rstitch_engine import GenerationSettings, ModelSpec, Routing, StitchEngine, load_pair
from rstitch_engine.measure.everyday import EverydayItem, everyday_suite
from rstitch_engine.models.defaults import DEFAULT_LLM, DEFAULT_SLM
from rstitch_engine.models.hardware import physical_cores, processor_name
from rstitch_engine.models.gguf_export import default_llm_gguf

LLAMA_CPP_PYTHON, SAME_THREADS = "llama-cpp-python", "llama-cpp-python, rstitch's threads"
PLAIN_SKILLS = ("capital", "sum", "opposite", "rag_short", "rag_long", "multiturn")


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int
    seconds: float
    slm_tokens: int = 0


def items(limit: int | None) -> list[EverydayItem]:
    return [item for item in everyday_suite("heldout") if item.skill in PLAIN_SKILLS][:limit]


def runners(args: argparse.Namespace) -> tuple[dict[str, Callable[[EverydayItem], Answer]], dict[str, Any]]:
    """Each configuration's way to answer an item, and facts of the setup."""
    from llama_cpp import Llama

    cpus = os.cpu_count() or 1
    own_threads = args.threads or max(cpus // 2, 1)  # llama-cpp-python's rule
    rstitch_threads = args.threads or physical_cores()
    # rstitch's threads are its defaults (they follow the machine, ``models.cpu_share``) unless --threads fixes them
    options = {"n_ctx": args.n_ctx} | (
        {"n_threads": args.threads, "n_threads_batch": args.threads} if args.threads else {})

    def own_engine() -> StitchEngine:
        """A pair of its own per configuration: its prefix cache holds only its own earlier prompts, as
        llama-cpp-python's ``Llama`` holds only its own previous call's."""
        return StitchEngine(load_pair(ModelSpec(DEFAULT_SLM, backend="llama.cpp", extra=options),
                                      ModelSpec(DEFAULT_LLM, backend="llama.cpp", extra=options)))
    llm_gguf = default_llm_gguf()
    limit = args.max_new_tokens

    def llama_cpp_python(threads: int) -> Callable[[EverydayItem], Answer]:
        own = Llama(model_path=str(llm_gguf), n_ctx=args.n_ctx, n_threads=threads,
                    n_threads_batch=args.threads or cpus, verbose=False)

        def answer(item: EverydayItem) -> Answer:
            start = time.perf_counter()
            reply = own.create_chat_completion(item.messages(), max_tokens=limit, temperature=0.0)
            seconds = time.perf_counter() - start
            return Answer(reply["choices"][0]["message"]["content"] or "", reply["usage"]["completion_tokens"], seconds)
        return answer

    def rstitch(routing: Routing, lookup: int | None) -> Callable[[EverydayItem], Answer]:
        settings = GenerationSettings(max_new_tokens=limit, prompt_lookup_tokens=lookup)
        engine = own_engine()

        def answer(item: EverydayItem) -> Answer:
            start = time.perf_counter()
            result = engine.generate(item.messages(), settings, routing)
            seconds = time.perf_counter() - start
            return Answer(result.text, len(result.token_ids), seconds,
                          sum(event.source == "slm" for event in result.events))
        return answer

    table = {LLAMA_CPP_PYTHON: llama_cpp_python(own_threads)}
    if rstitch_threads != own_threads:
        table[SAME_THREADS] = llama_cpp_python(rstitch_threads)
    table |= {"rstitch LLM alone": rstitch(Routing(router="llm"), 0),
              "rstitch default": rstitch(Routing(), None),
              "rstitch fast": rstitch(Routing(quality="fast"), None)}
    engine = own_engine()
    facts = {"threads": {LLAMA_CPP_PYTHON: own_threads, "rstitch": rstitch_threads},
             "threads_batch": {LLAMA_CPP_PYTHON: args.threads or cpus,
                               "rstitch": args.threads or "the logical CPUs other processes leave free"},
             "llm_gguf": llm_gguf.name,
             "slm_gguf": Path(str(engine.pair.slm.context.weights.path)).name,  # type: ignore[union-attr]
             "default_policy": engine.policy().name, "default_reason": engine.policy().reason}
    return table, facts


def run(table: dict[str, Callable[[EverydayItem], Answer]], suite: Sequence[EverydayItem]) -> list[dict[str, Any]]:
    names = list(table)
    for name in names:  # warm-up, untimed
        table[name](suite[0])
    records = []
    for index, item in enumerate(tqdm(suite, desc="items", unit="item")):
        order = names[index % len(names):] + names[:index % len(names)]
        answers = {name: table[name](item) for name in order}
        for name in names:
            answer = answers[name]
            records.append({"item": item.id, "skill": item.skill, "config": name, "text": answer.text,
                            "tokens": answer.tokens, "slm_tokens": answer.slm_tokens, "seconds": answer.seconds,
                            "correct": item.is_correct(answer.text),
                            "agrees_with_llama_cpp_python": item.extract(answer.text)
                            == item.extract(answers[LLAMA_CPP_PYTHON].text)})
    return records


def summary(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    reference = sum(r["seconds"] for r in records if r["config"] == LLAMA_CPP_PYTHON)
    for name in dict.fromkeys(r["config"] for r in records):
        mine = [r for r in records if r["config"] == name]
        seconds, tokens = sum(r["seconds"] for r in mine), sum(r["tokens"] for r in mine)
        rows.append({"config": name, "items": len(mine), "seconds": round(seconds, 2),
                     "tokens_per_second": round(tokens / seconds, 1),
                     "accuracy": round(sum(r["correct"] for r in mine) / len(mine), 4),
                     "agreement": round(sum(r["agrees_with_llama_cpp_python"] for r in mine) / len(mine), 4),
                     "slm_share": round(sum(r["slm_tokens"] for r in mine) / max(tokens, 1), 4),
                     "speedup_vs_llama_cpp_python": round(reference / seconds, 3)})
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| configuration | seconds | tokens/s | accuracy | same answer as llama-cpp-python | SLM share | speed vs llama-cpp-python |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['seconds']:.1f} | {r['tokens_per_second']:.1f} | {r['accuracy']:.1%} | "
              f"{r['agreement']:.1%} | {r['slm_share']:.0%} | {r['speedup_vs_llama_cpp_python']:.3f}x |" for r in rows]
    return "\n".join(lines)


def _burn() -> None:
    while True:
        pass


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="only the first N items")
    parser.add_argument("--threads", type=int, default=None, help="decode threads of every configuration (default: each runtime's own)")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--busy", action="store_true", help="repeat the run beside a second process keeping a core busy")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    suite = items(args.limit)
    table, facts = runners(args)
    report: dict[str, Any] = {"command": "python benchmarks/llamacpp_runtime.py", "argv": vars(args) | {"json": str(args.json)},
                              "machine": processor_name(), "cpus": os.cpu_count(), "platform": platform.platform(),
                              "date": time.strftime("%Y-%m-%d"), **facts, "runs": {}}
    for label in ("quiet", "busy") if args.busy else ("quiet",):
        burner = multiprocessing.Process(target=_burn, daemon=True) if label == "busy" else None
        if burner is not None:
            burner.start()
        try:
            records = run(table, suite)
        finally:
            if burner is not None:
                burner.terminate()
        rows = summary(records)
        report["runs"][label] = {"items": len(suite), "summary": rows, "records": records}
        print(f"\n## {label}: {len(suite)} items, decode threads {facts['threads']}; default = {facts['default_policy']}"
              f"\n\n{markdown(rows)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
