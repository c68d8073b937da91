"""MkDocs hooks: the site's pages that live outside docs/, and the option tables generated from the code.

* ``README.md`` becomes the site's home page (``index.md``), ``benchmarks/RESULTS.md`` its results
  page (``results.md``, with the plots under ``benchmarks/results/`` beside it) and ``CHANGELOG.md``
  its changelog, so each text has one source and reads the same on GitHub and on the site.
* A relative link is resolved against the file's real place in the repository and rewritten to the
  page that file became; a link to any other repository file is left alone, so the strict build
  reports it as broken (the site would not have it).
* ``<!-- cli-help -->`` in a page is replaced by the ``rstitch`` command's help and each
  subcommand's, from the parser itself.
* ``<!-- options: package.module.Class -->`` in a page is replaced by a table of that class's
  options, read from the class itself: a pydantic model's fields (type, default, description) or a
  dataclass's fields with the docstrings under them. The tables cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import posixpath
import re
from pathlib import Path
from typing import Any

import griffe
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE_DOCS = {"README.md": "index.md", "benchmarks/RESULTS.md": "results.md", "CHANGELOG.md": "changelog.md"}
"""Repository path -> site page, for the pages whose source is outside docs/."""
PLOTS = "benchmarks/results"
LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?(\))")
OPTIONS = re.compile(r"<!-- options: ([\w.]+) -->")
CLI_HELP = "<!-- cli-help -->"
HELP_WIDTH = "100"


def on_files(files: Files, config: Any) -> Files:
    for source, page in OUTSIDE_DOCS.items():
        files.append(File.generated(config, page, abs_src_path=str(ROOT / source)))
    for plot in sorted((ROOT / PLOTS).glob("*.png")):
        files.append(File.generated(config, f"results/{plot.name}", abs_src_path=str(plot)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    source = repository_path(page.file)
    markdown = LINK.sub(lambda m: rewrite_link(m, source, page.file.src_uri), markdown)
    if CLI_HELP in markdown:
        markdown = markdown.replace(CLI_HELP, cli_reference())
    return OPTIONS.sub(lambda m: options_table(m.group(1)), markdown)


def repository_path(file: File) -> str:
    """Where a page's text lives in the repository (``docs/x.md``, ``README.md``, ...)."""
    for source, page in OUTSIDE_DOCS.items():
        if file.src_uri == page:
            return source
    return f"docs/{file.src_uri}"


def site_path(target: str) -> str | None:
    """The site page (relative to docs/) a repository file became, or None if it is not on the site."""
    if target in OUTSIDE_DOCS:
        return OUTSIDE_DOCS[target]
    if target.startswith("docs/"):
        return target.removeprefix("docs/")
    if target.startswith(f"{PLOTS}/") and target.endswith(".png"):
        return f"results/{posixpath.basename(target)}"
    return None


def rewrite_link(match: re.Match[str], source: str, page_uri: str) -> str:
    target = match.group(2)
    if "://" in target or target.startswith(("mailto:", "/")):
        return match.group(0)
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(source), target))
    mapped = site_path(resolved)
    if mapped is None:
        return match.group(0)
    relative = posixpath.relpath(mapped, posixpath.dirname(page_uri) or ".")
    return f"{match.group(1)}{relative}{match.group(3) or ''}{match.group(4)}"


def cli_reference() -> str:
    """The help of ``rstitch`` and of each of its subcommands, as the parser prints it."""
    from rstitch_engine.cli import _parser

    os.environ["COLUMNS"] = HELP_WIDTH  # argparse wraps help to the terminal's width
    parser = _parser()
    sections = [fenced(parser.format_help())]
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for name, command in action.choices.items():
            sections.append(f"## `rstitch {name}`\n\n{fenced(command.format_help())}")
    return "\n\n".join(sections)


def fenced(text: str) -> str:
    return f"```text\n{text.rstrip()}\n```"


def options_table(dotted: str) -> str:
    module_name, _, class_name = dotted.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    rows = pydantic_rows(cls) if hasattr(cls, "model_fields") else dataclass_rows(cls)
    lines = ["| option | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{name}` | `{kind}` | `{default}` | {cell(text)} |" for name, kind, default, text in rows]
    return "\n".join(lines)


def pydantic_rows(cls: Any) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, field in cls.model_fields.items():
        label = f"{name}` / `{field.alias}" if field.alias and field.alias != name else name
        rows.append((label, type_name(field.annotation), repr(field.get_default(call_default_factory=True)),
                     field.description or ""))
    return rows


def dataclass_rows(cls: Any) -> list[tuple[str, str, str, str]]:
    """A dataclass's fields, each with the docstring under it in the class body (read by griffe)."""
    documented = griffe.load(cls.__module__, search_paths=[str(ROOT)])[cls.__name__].attributes
    rows = []
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        docstring = documented[field.name].docstring if field.name in documented else None
        rows.append((field.name, type_name(field.type), repr(default), docstring.value if docstring else ""))
    return rows


def type_name(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "")


def cell(text: str) -> str:
    """One table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")
