"""The ``rstitch`` command: ``rstitch generate "PROMPT"`` streams a stitched answer.

Each token is coloured by the model that wrote it (SLM green, LLM magenta, underlined where the
LLM took over), then a stats table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .defaults import DEFAULT_LLM, DEFAULT_SLM_LAYERS
from .engine import StitchEngine
from .errors import RStitchError
from .loading import ModelSpec, load_pair
from .routers import EntropyRouter
from .settings import GenerationSettings
from .stats import StitchStats, TokenEvent

STYLES = {"slm": "green", "llm": "bold magenta"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    console = Console(highlight=False)
    try:
        return args.handler(args, console)
    except RStitchError as error:
        Console(stderr=True).print(f"[red]error:[/red] {error}")
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rstitch", description="R-Stitch stitched decoding of an SLM and an LLM.")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="stream an answer, coloured by the model that wrote each token")
    generate.add_argument("prompt", help="the user message (or raw text with --raw)")
    pair = generate.add_argument_group("model pair")
    pair.add_argument("--llm", default=DEFAULT_LLM, help="LLM: hub id, folder, .gguf file or alias (default: %(default)s)")
    pair.add_argument("--slm", default=None, help="SLM: hub id, folder or .gguf (default: early-exit cut of the LLM)")
    pair.add_argument("--slm-layers", type=int, default=None,
                      help=f"keep only the SLM's first N layers (default with no --slm: {DEFAULT_SLM_LAYERS})")
    pair.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    pair.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    pair.add_argument("--device-map", default=None, help="accelerate device_map for the LLM, e.g. auto")
    pair.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    decoding = generate.add_argument_group("decoding")
    decoding.add_argument("--threshold", "--tau", type=float, default=0.1, dest="threshold",
                          help="normalised-entropy threshold tau (default: %(default)s)")
    decoding.add_argument("--max-tokens", type=int, default=256, help="max new tokens (default: %(default)s)")
    decoding.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default: %(default)s)")
    decoding.add_argument("--top-p", type=float, default=1.0)
    decoding.add_argument("--top-k", type=int, default=0)
    decoding.add_argument("--seed", type=int, default=None)
    decoding.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    decoding.add_argument("--system", default=None, help="system message")
    decoding.add_argument("--raw", action="store_true", help="send the prompt as raw text, without the chat template")
    output = generate.add_argument_group("output")
    output.add_argument("--measure-speedup", action="store_true", help="also time the LLM alone on the same prompt")
    output.add_argument("--json", action="store_true", help="print the stats as JSON instead of a table")
    generate.set_defaults(handler=_generate)
    return parser


def _generate(args: argparse.Namespace, console: Console) -> int:
    settings = GenerationSettings(
        max_new_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        seed=args.seed, stop=tuple(args.stop),
    )
    router = EntropyRouter(args.threshold)
    engine = _load_engine(args, console)
    prompt = args.prompt if args.raw else _messages(args.system, args.prompt)
    stream = engine.stream(prompt, settings, router)
    console.print(Text("SLM", style=STYLES["slm"]) + Text(" / ") + Text("LLM", style=STYLES["llm"])
                  + Text(f"  tau={router.threshold}", style="dim"))
    for event in stream:
        console.print(_styled(event), end="")
    console.print()
    stats = stream.stats
    if args.measure_speedup:
        stats = stats.with_measured_llm_alone(engine.decode_alone("llm", prompt, settings))
    if args.json:
        console.print_json(json.dumps(stats.to_dict()))
    else:
        console.print(stats_table(stats))
    return 0


def _load_engine(args: argparse.Namespace, console: Console) -> StitchEngine:
    common = dict(device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    llm = ModelSpec(args.llm, device_map=args.device_map, **common)
    slm_layers = args.slm_layers if args.slm is not None or args.slm_layers else DEFAULT_SLM_LAYERS
    slm = ModelSpec(args.slm or args.llm, num_layers=slm_layers, **common)
    with console.status(f"loading SLM {slm.label} and LLM {llm.label}", spinner="dots"):
        pair = load_pair(slm, llm)
    return StitchEngine(pair)


def _messages(system: str | None, prompt: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": prompt}]


def _styled(event: TokenEvent) -> Text:
    style = STYLES[event.source] + (" underline" if event.took_over else "")
    return Text(event.text, style=style)


def stats_table(stats: StitchStats) -> Table:
    """The stats of one request as a two-column table."""
    table = Table(title="R-Stitch stats", show_header=False, title_justify="left")
    speedup = "n/a" if stats.speedup is None else f"{stats.speedup:.2f}x ({stats.speedup_basis})"
    if stats.llm_alone_tokens is not None:
        speedup += f"; LLM alone: {stats.llm_alone_tokens} tokens in {stats.llm_alone_seconds:.2f} s"
    rows = [
        ("tokens (prompt / output)", f"{stats.prompt_tokens} / {stats.output_tokens}"),
        ("written by SLM / LLM", f"{stats.slm_tokens} / {stats.llm_tokens}  ({stats.slm_share:.0%} SLM)"),
        ("discarded SLM tokens", str(stats.discarded_slm_tokens)),
        ("switches SLM->LLM / LLM->SLM", f"{stats.switches_to_llm} / {stats.switches_to_slm}"),
        ("catch-up tokens SLM / LLM", f"{stats.slm.catchup_tokens} / {stats.llm.catchup_tokens}"),
        ("catch-up time SLM / LLM", f"{stats.slm.catchup_seconds:.2f} s / {stats.llm.catchup_seconds:.2f} s"),
        ("decode time SLM / LLM", f"{stats.slm.decode_seconds:.2f} s / {stats.llm.decode_seconds:.2f} s"),
        ("wall time (busy)", f"{stats.wall_seconds:.2f} s ({stats.busy_seconds:.2f} s, "
                             f"{stats.tokens_per_second:.1f} tokens/s)"),
        ("speedup vs LLM alone", speedup),
        ("finish reason", stats.finish_reason),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


if __name__ == "__main__":
    sys.exit(main())
