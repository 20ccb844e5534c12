"""The layers ARCHITECTURE.md describes, checked on the source: dependencies point one
way, no import cycles, pygls stays in the transport, the CLI starts without the network
or llama.cpp, and no module grows past one concept's worth of lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vibrant_rpc"

# Lowest first; a module may import its own layer and the ones below it.
LAYERS: list[tuple[str, set[str]]] = [
    ("primitives", {"units", "paths", "fsutil", "locks", "offline", "memory", "states", "priority",
                    "errors", "redact", "__init__"}),
    ("library", {"config", "registry", "manifest", "cache", "selection", "progress",
                 "download", "updates", "runtime", "lifecycle",
                 "gguf_header", "estimate", "architectures", "gpu", "kv_reuse", "lookup_draft",
                 "draft_policy", "greedy_decode",
                 "typed_through", "other_caches", "llama_setup", "text_stream", "headers",
                 "fit", "load_plan"}),
    ("service", {"app", "service", "protocol"}),
    ("front ends", {"server", "cli", "render", "protocol_docs", "protocol_ts", "__main__"}),
]  # fmt: skip


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """vibrant_rpc modules that ``path`` imports at run time (not under TYPE_CHECKING)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt], top: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
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


def _layer(module: str) -> int:
    first = module.split(".")[1] if "." in module else "__init__"
    for i, (_, members) in enumerate(LAYERS):
        if first in members:
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and ARCHITECTURE.md")


def test_dependencies_point_one_way() -> None:
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        for target in _imports(path, top_level_only=False):
            if target in modules and _layer(target) > _layer(name):
                wrong.append(f"{name} ({LAYERS[_layer(name)][0]}) imports {target}")
    assert not wrong, "\n".join(wrong)


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
        "import sys, vibrant_rpc.cli; "
        "print(sorted(m for m in ('httpx', 'llama_cpp', 'pygls') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
