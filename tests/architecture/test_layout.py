"""The engine's layout holds: layers import only downwards, no cycles, no framework imports, short functions.

Imports are read from the source (every ``import`` and ``from ... import`` statement, those inside
functions too), so a lazy import cannot hide a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rstitch_engine"
MAX_FUNCTION_LINES = 60
LONG_FUNCTION_MARK = "# long:"
"""A function over MAX_FUNCTION_LINES lines passes only with this comment and a reason on the line above it."""

FORBIDDEN = {
    # subpackage -> subpackages (and top-level modules) it must never import
    "decoding": {"training", "measure", "cli"},
    "models": {"decoding", "training", "measure", "cli"},
    "measure": {"training", "cli"},
    "training": {"cli"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (``from x import y`` counts as x and as x.y)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def internal_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: {m for m in imported_modules(path) if m in modules and m != name} for name, path in modules.items()}


def subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_each_layer_imports_only_the_layers_below_it():
    offences = [
        f"{module} imports {target}"
        for module, targets in internal_graph().items()
        for target in targets
        if subpackage(target) in FORBIDDEN.get(subpackage(module) or "", set())
    ]
    assert offences == []


def test_the_engine_package_has_no_import_cycle():
    graph = internal_graph()
    # Package __init__ modules are run before their submodules; an edge into a package means its __init__.
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_framework_is_imported_by_the_engine():
    frameworks = ("langchain", "langchain_core", "llama_index")
    offences = [f"{name} imports {m}" for name, path in package_modules().items()
                for m in imported_modules(path) if m.split(".")[0] in frameworks]
    assert offences == []


def test_importing_the_decoding_core_loads_no_training_or_measurement_module():
    probe = ("import sys, rstitch_engine.decoding.engine, rstitch_engine.decoding.routers; "
             "print(sorted(m for m in sys.modules if m.startswith(('rstitch_engine.training', "
             "'rstitch_engine.measure', 'rstitch_engine.cli', 'langchain', 'llama_index'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]"


def test_the_public_api_is_importable_from_the_top_level():
    import rstitch_engine

    for name in rstitch_engine.__all__:
        assert getattr(rstitch_engine, name) is not None, name


def long_functions(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                length = node.end_lineno - node.lineno + 1
                above = lines[first - 2].strip() if first >= 2 else ""
                if length > MAX_FUNCTION_LINES and not above.startswith(LONG_FUNCTION_MARK):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return found


@pytest.mark.parametrize("folder", ["rstitch_engine", "rstitch_integrations", "rstitch_server", "benchmarks", "examples"])
def test_functions_are_short_or_say_why_not(folder):
    assert long_functions(sorted((ROOT / folder).rglob("*.py"))) == []


def test_the_module_map_lists_every_subpackage_and_module():
    page = (ROOT / "docs" / "architecture.md").read_text()
    section = page.split("## Module map", 1)[1].split("\n## ", 1)[0]
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__"))
    missing = [f for f in folders if f"{f}/" not in section]
    modules = sorted(p.stem for p in PACKAGE.rglob("*.py") if p.stem != "__init__")
    unnamed = [m for m in modules if f"{m}" not in section]
    assert missing == [] and unnamed == []


def test_every_subpackage_opens_with_a_docstring_stating_its_invariants():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "Invariant" in doc, init


SERVER_PACKAGES = ("rstitch_server", "fastapi", "starlette", "uvicorn", "prometheus_client", "openai", "ray")
"""What only the server (and the adapters' remote mode) may import: the engine runs without the 'serve' extra."""


def test_the_engine_imports_the_server_only_lazily_from_the_cli():
    offences = [f"{name} imports {m}" for name, path in package_modules().items()
                for m in imported_modules(path) if m.split(".")[0] in SERVER_PACKAGES
                and not (name == "rstitch_engine.cli" and m.startswith("rstitch_server"))]
    assert offences == []
    probe = ("import sys, rstitch_engine, rstitch_engine.cli; "
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {SERVER_PACKAGES!r}))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]"


def test_the_server_imports_no_framework():
    frameworks = ("langchain", "langchain_core", "langchain_openai", "llama_index")
    modules = sorted((ROOT / "rstitch_server").rglob("*.py"))
    offences = [f"{path.name} imports {m}" for path in modules for m in imported_modules(path)
                if m.split(".")[0] in frameworks]
    assert modules and offences == []
