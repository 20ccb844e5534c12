"""The layers ARCHITECTURE.md describes, checked on the source: dependencies point one
way, no import cycles, pygls stays in the transport, the CLI starts without the network
or llama.cpp, and no module grows past one concept's worth of lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vibrant_rpc"

# The packages, lowest first, as import-linter's ``layers`` contract writes them: a unit may
# import its own modules and any unit in a lower layer; units in one layer ("a | b") are
# independent siblings and never import each other. A unit is a package of vibrant_rpc or
# a flat module; the primitives are one unit.
PRIMITIVES = {"errors", "states", "units", "paths", "fsutil", "redact", "offline", "config", "lazy",
              "__init__"}  # fmt: skip
LAYERS: list[str] = [
    "primitives",
    "gguf",
    "registry",
    "cache",
    "inference",
    "fit",
    "completion | download | engines",
    "protocol",
    "app",
    "service",
    "server | cli",
    "__main__",
]
# Siblings that are independent although not in one layer: the header store (fit) is
# handed the Hub, and the completion path never reaches the network.
INDEPENDENT = [("fit", "download")]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, *, top_level_only: bool, name: str | None = None) -> set[str]:
    """vibrant_rpc modules that ``path`` imports: at run time, in functions and under
    TYPE_CHECKING alike (a type-only import still ties the packages together)."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt], top: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                if target.startswith("vibrant_rpc"):
                    found.add(target)
                    for alias in node.names:  # `from . import protocol`
                        found.add(f"{target}.{alias.name}")
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("vibrant_rpc"))
            if top_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], ast.AST):
                    visit(inner, False)

    visit(ast.parse(path.read_text()).body, True)
    return found


def _unit(module: str) -> str:
    first = module.split(".")[1] if "." in module else "__init__"
    return "primitives" if first in PRIMITIVES else first


def _layer(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer.split(" | "):
            return i
    raise AssertionError(f"{unit} is in no layer: add it to LAYERS and ARCHITECTURE.md")


def upward_imports(modules: dict[str, Path]) -> list[str]:
    """Every import that points up the layers or across independent siblings."""
    wrong = []
    for name, path in modules.items():
        here = _unit(name)
        for target in _imports(path, top_level_only=False, name=name):
            there = _unit(target)
            if target not in modules or there == here:
                continue
            if _layer(there) > _layer(here):
                wrong.append(f"{name} ({here}) imports {target} ({there}), a higher layer")
            elif _layer(there) == _layer(here) or {here, there} in map(set, INDEPENDENT):
                wrong.append(f"{name} ({here}) imports {target} ({there}), an independent sibling")
    return wrong


def test_dependencies_point_one_way() -> None:
    wrong = upward_imports(_modules())
    assert not wrong, "\n".join(wrong)


def test_an_import_that_points_up_is_caught(tmp_path: Path) -> None:
    """The check fails on a planted import: a cache module reaching up into downloads (the
    one that ran back up a layer before), fit reaching up from a function, a type-only
    import from gguf up into the registry, and downloads reaching across into fit."""
    modules = _modules()
    planted = {
        "vibrant_rpc.cache.planted": "from ..download.hub import HubClient\n",
        "vibrant_rpc.fit.planted": (
            "if True:\n    def f() -> None:\n        from ..download import jobs\n"
        ),
        "vibrant_rpc.gguf.planted": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from ..registry import ModelInfo\n",
        "vibrant_rpc.download.planted": "from ..fit.plan import Fit\n",
    }
    for name, text in planted.items():
        fake = tmp_path / f"{name}.py"
        fake.write_text(text)
        modules[name] = fake
    wrong = upward_imports(modules)
    flagged = {w.split()[0]: w.rpartition(", ")[2] for w in wrong}
    assert flagged == {
        "vibrant_rpc.cache.planted": "a higher layer",
        "vibrant_rpc.fit.planted": "a higher layer",
        "vibrant_rpc.gguf.planted": "a higher layer",
        "vibrant_rpc.download.planted": "an independent sibling",
    }, wrong


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {
        name: {t for t in _imports(path, top_level_only=False) if t in modules and t != name}
        for name, path in modules.items()
    }
    # A package's __init__ is imported with each of its modules: not an edge back.
    for name in graph:
        graph[name] -= {p for p in graph if name.startswith(p + ".")}
    seen: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles: list[list[str]] = []

    def walk(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in seen:
                walk(nxt, [*stack, nxt])
        seen[node] = 2

    for start in sorted(graph):
        if start not in seen:
            walk(start, [start])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_pygls_only_in_the_transport() -> None:
    outside = []
    for name, path in _modules().items():
        if name.startswith("vibrant_rpc.server"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            outside += [f"{name}: {n}" for n in names if n.split(".")[0] in {"pygls", "lsprotocol"}]
    assert not outside, outside


def test_no_module_holds_more_than_one_concept() -> None:
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > 500
    }
    assert not long, long


def test_the_cli_starts_without_network_or_llama_code() -> None:
    code = (
        "import sys, vibrant_rpc.cli.commands; "
        "print(sorted(m for m in ('httpx', 'llama_cpp', 'pygls') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
