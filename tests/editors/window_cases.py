"""Cases for the shims' request window (editors/nvim/lua/vibrant/window.lua and
editors/vscode/src/window.ts), built and judged here for both: each shim's test turns a text
into its own units (Neovim's bytes, VS Code's UTF-16 code units), runs the cases in its
editor's code and hands the results to ``check_cuts``, which holds both to the same rules
(tests/support/editor_window.py says what a window must be)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tests.support.editor_window import natural_start

T = TypeVar("T", bytes, str)

# The shims' window settings by default (snake_case: the Neovim plugin's names).
DEFAULTS = {
    "prefix_lines": 256,
    "suffix_lines": 64,
    "window_step": 32,
    "max_prefix_chars": 16000,
    "max_suffix_chars": 4000,
}
MIX = "é中文😀x"  # characters of 2, 3 and 4 UTF-8 bytes; of 1, 1 and 2 UTF-16 units
LONG_ROW = 150


def cut_document(units: Callable[[str], T]) -> list[T]:
    """400 lines of MIX in the shim's units, LONG_ROW one long line of it."""
    doc = [units(f"l{i} {MIX * (i % 5)}") for i in range(400)]
    doc[LONG_ROW] = units(MIX * 40)
    return doc


def cut_cases(doc: Sequence[T], starts: Callable[[T], list[int]]) -> list[dict[str, Any]]:
    """Every cap from 1 to 60 at every 7th character of the long line (so the caps land
    inside each kind of character somewhere), caps from 10 to 4000 mid-line on rows across
    the document with 64 lines before, and the end of every 13th line by default."""
    cases: list[dict[str, Any]] = []
    for cap in range(1, 61):
        for col in starts(doc[LONG_ROW])[::7]:
            opts = {"max_prefix_chars": cap, "max_suffix_chars": cap}
            cases.append({"doc": 0, "row": LONG_ROW, "col": col, "opts": opts})
    for cap in (10, 50, 100, 333, 1000, 2000, 3000, 4000):
        for row in (0, 1, 31, 32, 149, 151, 257, 300, 399):
            col = min(s for s in starts(doc[row]) if s >= len(doc[row]) // 2)
            opts = {"max_prefix_chars": cap, "max_suffix_chars": cap, "prefix_lines": 64}
            cases.append({"doc": 0, "row": row, "col": col, "opts": opts})
    for row in range(0, 400, 13):
        cases.append({"doc": 0, "row": row, "col": len(doc[row]), "opts": {}})
    return cases


def check_cuts(
    doc: Sequence[T],
    cases: list[dict[str, Any]],
    results: list[dict[str, Any]],
    check: Callable[[Sequence[T], dict[str, Any], dict[str, Any]], None],
) -> None:
    """Each result by the shim's ``check``; the caps did cut inside lines at both ends, and
    over the cap with many lines the start dropped whole steps, not single lines."""
    for case, r in zip(cases, results, strict=True):
        check(doc, case, r)
    assert sum(r["prompt_cut"] for r in results) > 100
    assert sum(r["suffix_cut"] for r in results) > 100
    stepped = [
        r
        for case, r in zip(cases, results, strict=True)
        if r["start_row"] - natural_start(case["row"], {**DEFAULTS, **case["opts"]}) >= 32
        and case["row"] - r["start_row"] >= 32
    ]
    assert len(stepped) >= 3, len(stepped)
