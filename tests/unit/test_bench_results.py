"""bench/results.py rewrites one section of RESULTS.md and keeps the notes under it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import results


def test_a_rerun_replaces_the_figures_and_keeps_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "RESULTS.md"
    monkeypatch.setattr(results, "RESULTS", path)
    results.write_section("Typing", "| a | 1 |")
    results.write_section("Memory", "memory figures")
    text = path.read_text()
    assert text.startswith("# Benchmark results\n\n## Typing\n")
    notes = f"{results.NOTES_MARK}\nNotes: the figures mean this (é, 中文).\n"
    path.write_text(text.replace("| a | 1 |\n", "| a | 1 |\n\n" + notes))
    results.write_section("Typing", "| a | 2 |")
    text = path.read_text()
    assert "| a | 1 |" not in text and "| a | 2 |" in text
    assert text.count(results.NOTES_MARK) == 1
    typing = text[text.index("## Typing") : text.index("## Memory")]
    assert typing.index("| a | 2 |") < typing.index("Notes: the figures mean this (é, 中文).")
    assert "memory figures" in text
    assert results.cpu_name() in typing
