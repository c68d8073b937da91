"""The ``rstitch`` command: ``rstitch generate "PROMPT"`` streams a stitched answer.

Each token is coloured by the model that wrote it (SLM green, LLM magenta, underlined where the
LLM took over), then a stats table is printed, naming the policy that ran. ``rstitch calibrate``
measures a pair's configurations and writes the profile that ``quality='auto'`` chooses from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .decoding.engine import DEFAULT_MAX_BATCH_SIZE, StitchEngine
from .decoding.policy import DEFAULT_AGREEMENT_TARGET, QUALITIES, Routing
from .decoding.settings import GenerationSettings
from .decoding.stats import StitchStats, TokenEvent
from .errors import InvalidSettingError, RStitchError
from .models.defaults import DEFAULT_LLM, DEFAULT_SLM, DEFAULT_THRESHOLD, default_slm_for
from .models.loading import BACKENDS, ModelSpec, load_model, load_pair, load_tokenizer
from .training.distill import DistillSettings, distill
from .training.prompt_pool import prompt_pool

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
    add_pair_arguments(generate)
    decoding = generate.add_argument_group("decoding")
    add_routing_arguments(decoding)
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
    _add_serve(commands)
    _add_calibrate(commands)
    _add_distill(commands)
    _add_train_router(commands)
    _add_export_gguf(commands)
    return parser


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """--llm, --slm, --slm-layers, --backend, --device, --dtype, --device-map, --trust-remote-code (read by ``load_engine``)."""
    pair = parser.add_argument_group("model pair")
    pair.add_argument("--llm", default=DEFAULT_LLM, help="LLM: hub id, folder, .gguf file or alias (default: %(default)s)")
    pair.add_argument("--slm", default=None,
                      help=f"SLM: hub id, folder, .gguf or draft folder from `rstitch distill` (default: {DEFAULT_SLM})")
    pair.add_argument("--slm-layers", type=int, default=None,
                      help="keep only the SLM's first N layers (an untrained early-exit cut; with no --slm, of the LLM)")
    pair.add_argument("--backend", default="transformers", choices=list(BACKENDS),
                      help="inference library of both models: transformers, or llama.cpp for GGUF files (the default "
                           "pair as is; needs `pip install 'rstitch[llamacpp]'`) (default: %(default)s)")
    pair.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    pair.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    pair.add_argument("--device-map", default=None, help="accelerate device_map for the LLM, e.g. auto")
    pair.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")


def add_routing_arguments(group: argparse._ArgumentGroup) -> None:
    """--quality, --threshold, --router, --router-path, --agreement-target (read by ``routing_of``)."""
    group.add_argument("--quality", default=None, choices=list(QUALITIES),
                       help="auto (the default) = what the pair's calibration profile proves faithful to the LLM "
                            "alone, else the LLM alone with prompt lookup; exact = the LLM alone (sped up by prompt "
                            "lookup); balanced / fast = R-Stitch at a fixed tau (a measured trade-off)")
    group.add_argument("--threshold", "--tau", type=float, default=None, dest="threshold",
                       help=f"R-Stitch at this normalised-entropy threshold tau instead of a preset "
                            f"(--router entropy's default: {DEFAULT_THRESHOLD})")
    group.add_argument("--router", default=None, choices=["entropy", "learned", "slm", "llm"],
                       help="instead of a preset: entropy = R-Stitch at --threshold; learned = R-Stitch+ (the default "
                            "pair's shipped router, or --router-path; it keeps its trained tau); slm/llm = one model alone")
    group.add_argument("--router-path", default=None, help="a learned router's folder (`rstitch train-router --out`)")
    group.add_argument("--agreement-target", type=float, default=None,
                       help=f"with auto: the agreement with the LLM alone a stitched configuration must have shown "
                            f"in the pair's profile (default: {DEFAULT_AGREEMENT_TARGET})")
    group.add_argument("--prompt-lookup", type=int, default=None, metavar="K", dest="prompt_lookup_tokens",
                       help="check up to K tokens copied from the prompt per pass (same answer, fewer passes; "
                            "greedy only); 0 = off; default: the policy's (on, 6, for the LLM alone; off for stitching)")


def routing_of(args: argparse.Namespace) -> Routing:
    """The routing the command line asks for (validated: one wording of each error, ``policy.Routing``)."""
    return Routing(quality=args.quality, router=args.router, threshold=args.threshold, router_path=args.router_path,
                   agreement_target=args.agreement_target)


def _add_serve(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    serve = commands.add_parser(
        "serve", help="serve the pair over an OpenAI-compatible HTTP API (needs the 'serve' extra)",
        description="An OpenAI-compatible server (POST /v1/chat/completions, /v1/completions; GET /v1/models, "
                    "/health, /metrics) whose requests all share the engine's batching scheduler. The decoding "
                    "options below are the defaults of requests that do not set their own.",
    )
    add_pair_arguments(serve)
    decoding = serve.add_argument_group("request defaults")
    add_routing_arguments(decoding)
    decoding.add_argument("--max-tokens", type=int, default=256, help="max new tokens of a request that sets none "
                                                                      "(default: %(default)s)")
    decoding.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                          help="requests per batched step (default: %(default)s)")
    server = serve.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    server.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    server.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on /v1 routes (default: $RSTITCH_API_KEY, else none)")
    server.add_argument("--drain-seconds", type=float, default=30.0,
                        help="on SIGTERM, how long requests in flight may finish while new ones get 503 "
                             "(default: %(default)s)")
    ray = serve.add_argument_group("scale-out on Ray Serve (needs the 'ray' extra)")
    ray.add_argument("--ray", action="store_true", help="deploy on Ray Serve: --replicas engines behind one ingress")
    ray.add_argument("--replicas", type=int, default=1, help="engine replicas (default: %(default)s)")
    ray.add_argument("--ray-address", default=None, help="a running cluster (e.g. auto or ray://HEAD:10001); default: "
                                                         "start a local Ray instance")
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, help="(default: %(default)s)")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0, help="(default: %(default)s)")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace, console: Console) -> int:
    import os

    try:
        from rstitch_server.launch import serve_from_args  # the engine itself never needs the server's packages
    except ImportError as error:
        raise InvalidSettingError(
            f"rstitch serve needs the 'serve' extra (pip install 'rstitch[serve]'): {error}") from None
    routing_of(args)  # a conflicting or invalid routing fails here, before any weights load
    if args.api_key is None:
        args.api_key = os.environ.get("RSTITCH_API_KEY") or None
    return serve_from_args(args, console)


def _add_calibrate(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from .measure.calibrate import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TAUS

    calibrate = commands.add_parser(
        "calibrate", help="measure a pair's configurations against the LLM alone and write its profile (for --quality auto)",
        description="Runs the LLM alone and each candidate (the LLM alone with prompt lookup, R-Stitch at each tau, "
                    "the learned router where one is given or shipped) side by side on calibration prompts, measures "
                    "agreement with the LLM alone and speed, and writes the pair's profile, which quality='auto' "
                    "then chooses from: the fastest configuration meeting the agreement target, else the LLM alone.")
    add_pair_arguments(calibrate)
    calibrate.add_argument("--prompts", type=Path, default=None,
                           help="your own prompts, JSONL: one chat (a list of messages, or {\"messages\": [...]}, or "
                                "{\"prompt\": \"text\"}) a line (default: the built-in everyday set's tuning part)")
    calibrate.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    calibrate.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                           help="new tokens per answer (default: %(default)s)")
    calibrate.add_argument("--taus", default=",".join(f"{t:g}" for t in DEFAULT_TAUS),
                           help="R-Stitch thresholds to try, comma-separated (default: %(default)s)")
    calibrate.add_argument("--hand-back", default="",
                           help="also try each tau with the LLM handing back only below these entropies (comma-separated)")
    calibrate.add_argument("--llm-opens", default="",
                           help="also try each tau with the LLM writing this many opening tokens first (comma-separated)")
    calibrate.add_argument("--router-path", default=None, help="also try this learned router (`rstitch train-router --out`)")
    calibrate.add_argument("--agreement-target", type=float, default=None,
                           help=f"the target the final table applies (default: {DEFAULT_AGREEMENT_TARGET}); the profile "
                                "keeps every measurement, so any target can be applied later")
    calibrate.add_argument("--out", type=Path, default=None,
                           help="where to write the profile (default: where the engine looks for this pair's profile)")
    calibrate.set_defaults(handler=_calibrate)


def _calibrate(args: argparse.Namespace, console: Console) -> int:
    from .decoding.profile import user_profile_path
    from .measure.calibrate import builtin_prompts, calibrate, default_candidates, profile_rows, read_prompts

    prompts = read_prompts(args.prompts, args.limit) if args.prompts else builtin_prompts(args.limit)
    engine = load_engine(args, console)
    default_pair = engine.pair.llm.name == DEFAULT_LLM and engine.pair.slm.name == DEFAULT_SLM
    taus = [float(t) for t in args.taus.split(",") if t.strip()]
    backs = [float(t) for t in args.hand_back.split(",") if t.strip()]
    openings = [int(k) for k in args.llm_opens.split(",") if k.strip()]
    candidates = default_candidates(taus, backs, learned=args.router_path or default_pair, openings=openings)
    settings = GenerationSettings(max_new_tokens=args.max_tokens)
    profile = calibrate(engine, prompts, candidates, settings,
                        calibration_set=str(args.prompts) if args.prompts else "everyday/tuning")
    path = profile.save(args.out or user_profile_path(engine.pair.slm.name, engine.pair.llm.name))
    target = args.agreement_target if args.agreement_target is not None else DEFAULT_AGREEMENT_TARGET
    table = Table(title=f"{profile.pair} on {profile.device}: {profile.prompts} prompts, agreement target {target:.0%}",
                  title_justify="left")
    for column in ("configuration", "agreement with LLM alone", "speedup", "SLM share", "auto"):
        table.add_column(column)
    for row in profile_rows(profile, target):
        table.add_row(*row)
    console.print(table)
    engine.profile = profile
    console.print(f"profile written to {path}; quality='auto' now runs: "
                  f"{engine.policy(Routing(agreement_target=target)).name}")
    return 0


def _add_distill(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    defaults = DistillSettings()
    distill = commands.add_parser(
        "distill", help="train a draft SLM for an LLM (same tokenizer) by matching its next-token distributions",
        description="Builds a draft from a subset of the LLM's layers (sharing its embeddings, norm and head) and "
                    "trains those layers on the LLM's own answers to a prompt pool. Resumable: rerun the same "
                    "command to continue from the work folder.",
    )
    distill.add_argument("--llm", default=DEFAULT_LLM, help="LLM: hub id, folder, .gguf or alias (default: %(default)s)")
    distill.add_argument("--out", required=True, type=Path, help="folder for the draft (rstitch_draft.json + draft.safetensors)")
    distill.add_argument("--work-dir", type=Path, default=None, help="teacher data and checkpoints (default: OUT/work)")
    distill.add_argument("--layers", type=int, default=defaults.num_layers,
                         help="draft layers: the LLM's first N-1 and its last (default: %(default)s)")
    distill.add_argument("--layer-indices", default=None, help="exact LLM layers to start from, e.g. 0,1,2,29")
    distill.add_argument("--init-from", default=None,
                         help="a draft folder to start from instead of the LLM's layers (fine-tune an existing draft)")
    distill.add_argument("--instructions", type=int, default=1000, help="template chat instructions in the pool (default: %(default)s)")
    distill.add_argument("--gsm8k", type=int, default=300, help="GSM8K questions in the pool (default: %(default)s)")
    distill.add_argument("--gsm8k-path", type=Path, default=_default_gsm8k(), help="GSM8K train.jsonl (default: %(default)s)")
    distill.add_argument("--copies", type=int, default=2000,
                         help="questions about made-up names and random numbers, to learn copying (default: %(default)s)")
    distill.add_argument("--generalisation", type=int, default=100,
                         help="questions per skill in the generalisation suite's pool forms: varied phrasings, "
                              "retrieved passages, multi-turn chats (default: %(default)s)")
    distill.add_argument("--retrieval", type=int, default=0,
                         help="retrieved-passage prompts in LangChain/LlamaIndex-style wrappers, with free-form "
                              "questions too (default: %(default)s)")
    distill.add_argument("--include-quality-tuning", action="store_true",
                         help="add the quality suite's tuning part to the pool (off by default: thresholds and routers "
                              "are tuned on it, so the draft should not have seen it)")
    distill.add_argument("--no-families", action="store_true",
                         help="leave out the short-answer questions in the quality suite's forms (never its items)")
    distill.add_argument("--steps", type=int, default=defaults.steps, help="training steps (default: %(default)s)")
    distill.add_argument("--batch-size", type=int, default=defaults.batch_size)
    distill.add_argument("--lr", type=float, default=defaults.learning_rate)
    distill.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="teacher answer cap")
    distill.add_argument("--top-k", type=int, default=defaults.top_k, help="teacher log-probs kept per position")
    distill.add_argument("--greedy-weight", type=float, default=defaults.greedy_weight,
                         help="weight w in (1-w)*KL + w*CE(LLM's greedy token): 1 makes the draft's confidence "
                              "estimate agreement with the LLM's greedy choice (default: %(default)s)")
    distill.add_argument("--seed", type=int, default=defaults.seed)
    distill.add_argument("--device", default="auto")
    distill.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"],
                         help="training dtype of the LLM and draft (default: %(default)s)")
    distill.add_argument("--save-dtype", default=defaults.storage_dtype, choices=["float32", "bfloat16", "float16"])
    distill.add_argument("--compute-dtype", default=defaults.compute_dtype, choices=["auto", "float32", "bfloat16"],
                         help="matmul precision while training (auto: bfloat16 where the device has it natively)")
    distill.add_argument("--validation-share", type=float, default=defaults.validation_share,
                         help="share of answers held out of training to report a validation loss (default: %(default)s)")
    distill.add_argument("--trust-remote-code", action="store_true")
    distill.set_defaults(handler=_distill)


def _default_gsm8k() -> Path:
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"


def _distill(args: argparse.Namespace, console: Console) -> int:
    layers = tuple(int(i) for i in args.layer_indices.split(",")) if args.layer_indices else None
    settings = DistillSettings(
        num_layers=args.layers, layers=layers, init_from=args.init_from, steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
        max_new_tokens=args.max_new_tokens, top_k=args.top_k, greedy_weight=args.greedy_weight, seed=args.seed, storage_dtype=args.save_dtype,
        compute_dtype=args.compute_dtype, validation_share=args.validation_share,
    )
    spec = ModelSpec(args.llm, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    gsm8k_path = args.gsm8k_path if args.gsm8k and args.gsm8k_path.is_file() else None
    if args.gsm8k and gsm8k_path is None:
        console.print(f"[yellow]no GSM8K file at {args.gsm8k_path}; the pool has instructions only[/yellow]")
    pool_recipe = {"instructions": args.instructions, "gsm8k": args.gsm8k if gsm8k_path else 0, "seed": args.seed,
                   "include_quality_tuning": args.include_quality_tuning, "include_families": not args.no_families,
                   "copies": args.copies, "generalisation": args.generalisation,
                   "retrieval": args.retrieval}
    pool = prompt_pool(gsm8k_path=gsm8k_path, **pool_recipe)
    torch.manual_seed(args.seed)
    with console.status(f"loading {spec.label}", spinner="dots"):
        llm, tokenizer = load_model(spec), load_tokenizer(spec)
    distill(llm, tokenizer, pool, args.out, settings, base_model=args.llm, work_dir=args.work_dir,
            log=lambda line: console.print(line), pool_recipe=pool_recipe)
    return 0


def _generate(args: argparse.Namespace, console: Console) -> int:
    settings = GenerationSettings(
        max_new_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        seed=args.seed, stop=tuple(args.stop), prompt_lookup_tokens=args.prompt_lookup_tokens,
    )
    routing = routing_of(args)
    engine = load_engine(args, console)
    prompt = args.prompt if args.raw else _messages(args.system, args.prompt)
    stream = engine.stream(prompt, settings, routing)
    policy = stream.policy
    console.print(Text("SLM", style=STYLES["slm"]) + Text(" / ") + Text("LLM", style=STYLES["llm"])
                  + Text(f"  policy {policy.name} ({policy.reason})", style="dim"), soft_wrap=True)
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


def load_engine(args: argparse.Namespace, console: Console) -> StitchEngine:
    """The engine of the pair that ``add_pair_arguments``' options name."""
    common = dict(device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code, backend=args.backend)
    llm = ModelSpec(args.llm, device_map=args.device_map, **common)
    if args.slm is not None or args.slm_layers is not None:
        slm = ModelSpec(args.slm or args.llm, num_layers=args.slm_layers, **common)
    else:
        slm = ModelSpec(default_slm_for(args.llm), **common)
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
        ("policy", f"{stats.policy}: {stats.policy_reason}"),
    ]
    if stats.proposed_tokens:
        rows.insert(-2, ("prompt lookup: kept / proposed", f"{stats.confirmed_tokens} / {stats.proposed_tokens}"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _add_train_router(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from pathlib import Path

    from .training.train_router import TrainSettings

    defaults = TrainSettings()
    train = commands.add_parser(
        "train-router", help="train an R-Stitch+ router for a pair with DAPO (reward: accuracy minus lambda x latency)",
        description="Rollouts of the pair on tasks with checkable answers; the router's routing decisions are sampled, "
                    "rewarded with R = r_acc - lambda * r_acc * L_hat (L_hat: latency predicted by the pair's cost "
                    "model, relative to the LLM alone) and improved with DAPO. Resumable: rerun the same command.",
    )
    train.add_argument("--out", required=True, type=Path, help="folder for the router (router.json + router.safetensors)")
    train.add_argument("--work-dir", type=Path, default=None, help="checkpoint, log.jsonl, cost model (default: OUT/work)")
    train.add_argument("--llm", default=DEFAULT_LLM, help="LLM (default: %(default)s)")
    train.add_argument("--slm", default=None, help="SLM or draft folder (default: the default pair's SLM)")
    train.add_argument("--device", default="auto")
    train.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    train.add_argument("--cost-model", type=Path, default=None,
                       help="the pair's PairCostModel JSON (default: fitted from a few runs, kept in the work folder)")
    train.add_argument("--lambda", "--lam", dest="lam", type=float, default=defaults.lam,
                       help="latency weight in the reward (default: %(default)s)")
    train.add_argument("--tau", "--threshold", dest="tau", type=float, default=defaults.threshold,
                       help="the router is consulted only above this normalised entropy (default: %(default)s)")
    train.add_argument("--steps", type=int, default=defaults.steps)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size, help="tasks per step")
    train.add_argument("--group-size", type=int, default=defaults.group_size, help="rollouts per task (G)")
    train.add_argument("--updates-per-step", type=int, default=defaults.updates_per_step)
    train.add_argument("--lr", type=float, default=defaults.learning_rate)
    train.add_argument("--eps-low", type=float, default=defaults.eps_low)
    train.add_argument("--eps-high", type=float, default=defaults.eps_high)
    train.add_argument("--width", type=int, default=defaults.width, help="router MLP width")
    train.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    train.add_argument("--temperature", type=float, default=defaults.temperature,
                       help="0: models decode greedily, routing is the only randomness (default: %(default)s)")
    train.add_argument("--reference", choices=["budget", "llm_greedy", "same_length"], default=defaults.reference,
                       help="latency normaliser, the LLM alone on the prompt writing: max-new-tokens tokens, its own "
                            "answer, or as many tokens as the rollout (default: %(default)s)")
    train.add_argument("--init-tau", type=float, default=defaults.initial_threshold,
                       help="start as an entropy router at this threshold (default: P(LLM) = 0.5 everywhere)")
    train.add_argument("--warm-start-epochs", type=int, default=defaults.warm_start_epochs,
                       help="before DAPO, fit the router to where the SLM errs along the LLM's own answers for this "
                            "many epochs (default: %(default)s, no warm start)")
    train.add_argument("--tasks", choices=["quality", "generalisation", "gsm8k", "both"], default="quality",
                       help="quality: the quality suite's tuning part; generalisation: the generalisation suite's tuning "
                            "part; gsm8k: GSM8K train questions; both: quality and gsm8k (default: %(default)s)")
    train.add_argument("--gsm8k-limit", type=int, default=200)
    train.add_argument("--gsm8k-path", type=Path,
                       default=Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl")
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    train.set_defaults(handler=_train_router)


def _train_router(args: argparse.Namespace, console: Console) -> int:
    import torch

    from .models.cost_model import PairCostModel, shipped_cost_model
    from .training.train_router import (
        TrainSettings,
        calibrate_cost_model,
        generalisation_tasks,
        gsm8k_tasks,
        quality_tasks,
        train_router,
    )

    settings = TrainSettings(
        lam=args.lam, threshold=args.tau, steps=args.steps, batch_size=args.batch_size, group_size=args.group_size,
        updates_per_step=args.updates_per_step, learning_rate=args.lr, eps_low=args.eps_low, eps_high=args.eps_high,
        width=args.width, max_new_tokens=args.max_new_tokens, temperature=args.temperature, reference=args.reference,
        seed=args.seed, checkpoint_every=args.checkpoint_every, initial_threshold=args.init_tau,
        warm_start_epochs=args.warm_start_epochs,
    )
    tasks = quality_tasks("tuning") if args.tasks in ("quality", "both") else []
    tasks += generalisation_tasks() if args.tasks == "generalisation" else []
    if args.tasks in ("gsm8k", "both"):
        tasks += gsm8k_tasks(args.gsm8k_path, args.gsm8k_limit, args.seed)
    work_dir = args.work_dir or args.out / "work"
    if args.threads:
        torch.set_num_threads(args.threads)
    with console.status("loading the pair", spinner="dots"):
        engine = StitchEngine.from_pretrained(args.llm, args.slm, device=args.device, dtype=args.dtype)
    pair_name = f"{engine.pair.slm.name}+{engine.pair.llm.name}"
    fitted = work_dir / "cost_model.json"
    shipped = shipped_cost_model(engine.pair.slm.name, engine.pair.llm.name, engine.pair.llm.device,
                                 engine.pair.llm.dtype)
    if args.cost_model is not None:
        cost = PairCostModel.load(args.cost_model)
    elif shipped is not None:
        cost = shipped
    elif fitted.is_file():
        cost = PairCostModel.load(fitted)
    else:
        with console.status("no calibrated cost model for this pair: timing passes to fit one", spinner="dots"):
            cost = calibrate_cost_model(engine, pair=pair_name)
        cost.save(fitted)
        console.print(f"cost model fitted and saved to {fitted}")
    router = train_router(engine, tasks, cost, args.out, settings, work_dir, pair_name,
                          log=lambda line: console.print(line))
    console.print(f"router saved to {args.out} ({router!r}); log: {work_dir / 'log.jsonl'}")
    return 0


def _add_export_gguf(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from .models.gguf_export import TENSOR_TYPES

    export = commands.add_parser(
        "export-gguf", help="write a draft SLM as a GGUF file that llama.cpp loads (default: the shipped draft)",
        description="Builds the draft's GGUF from the LLM's GGUF (metadata, tokenizer, chat template, embeddings, "
                    "final norm and head, copied as stored) and the draft's own layers. With no options: the shipped "
                    "draft on the default LLM's GGUF, written once to the rstitch cache.")
    export.add_argument("--draft", default=DEFAULT_SLM, help="draft folder from `rstitch distill`, or the shipped "
                                                             "draft's alias (default: %(default)s)")
    export.add_argument("--llm-gguf", type=Path, default=None,
                        help="the LLM's GGUF file the draft was distilled from (default: the default LLM's)")
    export.add_argument("--type", default="q8_0", choices=list(TENSOR_TYPES), dest="tensor_type",
                        help="type of the draft's layer weights; norms stay f32 and the LLM's tensors keep theirs "
                             "(default: %(default)s)")
    export.add_argument("--out", type=Path, default=None,
                        help="where to write (default: the cache for the default pair, else DRAFT/draft.TYPE.gguf)")
    export.set_defaults(handler=_export_gguf)


def _export_gguf(args: argparse.Namespace, console: Console) -> int:
    from .models.defaults import SHIPPED_DRAFTS, resolve_alias
    from .models.gguf_export import default_draft_gguf, default_llm_gguf, export_draft_gguf

    draft = Path(resolve_alias(args.draft)).expanduser()
    default_pair = draft == SHIPPED_DRAFTS[DEFAULT_SLM] and args.llm_gguf is None
    with console.status(f"exporting {args.draft} to GGUF ({args.tensor_type})", spinner="dots"):
        if default_pair and args.out is None:
            path = default_draft_gguf(args.tensor_type)
        else:
            llm_gguf = args.llm_gguf if args.llm_gguf is not None else default_llm_gguf()
            out = args.out if args.out is not None else draft / f"draft.{args.tensor_type}.gguf"
            path = export_draft_gguf(draft, llm_gguf, out, args.tensor_type)
    console.print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
