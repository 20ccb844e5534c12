"""What the CLI shows a person: one unit system throughout the progress bar."""

from __future__ import annotations

import io
import re

from rich.console import Console

from vibrant_rpc.cli import render
from vibrant_rpc.download.progress import Progress


def test_the_progress_bar_speaks_one_unit_system() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False, color_system=None)
    with render.DownloadBar(console, "qwen2.5-coder-7b-q5") as bar:
        bar.update(
            Progress(
                model_id="qwen2.5-coder-7b-q5",
                state="downloading",
                downloaded_bytes=253_113_024 // 2,
                total_bytes=253_113_024,
                bytes_per_second=63_250_000.0,
            )
        )
    text = out.getvalue()
    units = set(re.findall(r"\b(?:[KMGT]i?B|B)(?=/s|\b)", text))
    assert units and all(u.endswith("iB") for u in units), text
    assert "241.4 MiB" in text and "60.3 MiB/s" in text, text
