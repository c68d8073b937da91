"""Every fenced Python block of README.md and docs/*.md runs, so the documentation cannot rot silently.

The blocks of one file run in order in one fresh interpreter and one namespace (later blocks use
names that earlier ones define), on the real default pair: that part is slow. A block that must not
run says so on the line above it, with the reason: ``<!-- not run: why -->``. The fast test checks
that every block parses and that each skip gives a reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- not run: (?P<reason>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", re.S)


def blocks(doc: Path) -> list[tuple[int, str, str | None]]:
    """(line, code, skip reason) of each fenced Python block."""
    text = doc.read_text()
    return [(text[: m.start("code")].count("\n") + 1, m.group("code"), m.group("reason")) for m in BLOCK.finditer(text)]


def test_every_block_parses_and_every_skip_says_why():
    found = 0
    for doc in DOCS:
        for line, code, reason in blocks(doc):
            found += 1
            compile(code, f"{doc.name}:{line}", "exec")
            assert reason is None or reason.strip(), f"{doc.name}:{line}: a skipped block needs a reason"
    assert found >= 9


RUNNER = """
import sys
namespace = {"__name__": "__main__"}
for line, code in BLOCKS:
    try:
        exec(compile(code, f"{DOC}:{line}", "exec"), namespace)
    except Exception:
        print(f"the block at {DOC}:{line} failed", file=sys.stderr)
        raise
"""


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("doc", DOCS, ids=[doc.name for doc in DOCS])
def test_the_python_blocks_run(doc: Path):
    runnable = [(line, code) for line, code, reason in blocks(doc) if reason is None]
    if not runnable:
        pytest.skip(f"{doc.name} has no runnable block")
    script = f"BLOCKS = {runnable!r}\nDOC = {doc.name!r}\n{RUNNER}"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
