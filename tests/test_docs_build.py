"""The documentation site builds in strict mode, and strict mode catches what it should.

``mkdocs build --strict`` (mkdocs.yml; ``make docs``) fails on a warning: a link to a file the site
does not have, a missing anchor, an unresolved cross-reference, an API object mkdocstrings cannot
find. The first test builds the real site and checks that the generated parts are complete: the
API page documents every name ``rstitch_engine`` exports, the option tables list every field of
the option classes, the CLI page every subcommand. The others plant faults in a copy of the docs
and check that the build fails and names each one. (Warnings are counted only when they are
logged, so the build must not run with ``--quiet``.)
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rstitch_engine
from rstitch_engine import ExecutionConfig, GenerationSettings
from rstitch_integrations.core import StitchOptions

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["rstitch_engine", "rstitch_integrations", "langchain_rstitch", "llama_index"]


def build(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=project,
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_the_site_builds_strictly_with_every_generated_part(tmp_path: Path):
    done = build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    site = tmp_path / "site"

    api = (site / "api" / "engine" / "index.html").read_text()
    undocumented = [name for name in rstitch_engine.__all__ if f'id="rstitch_engine.{name}"' not in api]
    assert undocumented == []

    options = (site / "options" / "index.html").read_text()
    fields = [*StitchOptions.model_fields, *(f.name for f in dataclasses.fields(GenerationSettings)),
              *(f.name for f in dataclasses.fields(ExecutionConfig))]
    assert [name for name in fields if f"<code>{name}</code>" not in options] == []
    assert "<!-- options:" not in options

    cli = (site / "cli" / "index.html").read_text()
    for command in ("generate", "distill", "train-router"):
        assert f"usage: rstitch {command}" in cli

    home = (site / "index.html").read_text()
    assert "Quality presets" in home and 'href="results/' in home  # README is the home page, links rewritten


def project_copy(tmp_path: Path) -> Path:
    """The docs sources in a scratch folder; the packages are links to the real ones."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "docs", project / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("mkdocs.yml", "README.md", "CHANGELOG.md", "benchmarks/RESULTS.md"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "benchmarks" / "results", project / "benchmarks" / "results",
                    ignore=lambda folder, names: [n for n in names if not n.endswith(".png")])
    for name in SOURCES:
        (project / name).symlink_to(ROOT / name)
    return project


WARNINGS = [  # (page, planted text, what the build must report); strict mode reports every warning, then fails
    ("gpu.md", "[code](../rstitch_engine/cli.py)", "'../rstitch_engine/cli.py'"),  # a file the site lacks
    ("gpu.md", "[a section](batching.md#no-such-section)", "#no-such-section"),  # a missing anchor
    ("options.md", "[engine][rstitch_engine.NoSuchThing]", "rstitch_engine.NoSuchThing"),  # no such cross-reference
]
MISSING_OBJECT = [("api/engine.md", "::: rstitch_engine.NoSuchThing", "rstitch_engine.NoSuchThing")]  # an error


@pytest.mark.parametrize("faults", [WARNINGS, MISSING_OBJECT], ids=["broken links and references", "missing API object"])
def test_a_broken_reference_fails_the_build(tmp_path: Path, faults: list[tuple[str, str, str]]):
    project = project_copy(tmp_path)
    for page, text, _ in faults:
        with (project / "docs" / page).open("a") as out:
            out.write(f"\n\n{text}\n")
    done = build(project, tmp_path / "site")
    assert done.returncode != 0, done.stderr[-3000:]
    assert [reported for _, _, reported in faults if reported not in done.stderr] == [], done.stderr[-3000:]
