"""Write one section of bench/RESULTS.md, keeping the others, and keeping the notes
written by hand at the end of the section (from ``NOTES_MARK`` on)."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
NOTES_MARK = "<!-- notes written by hand: kept when the benchmark rewrites the section -->"


def cpu_name() -> str:
    """The CPU's model name where Linux says it: what a figure depends on most."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_section(title: str, body: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    stamp = f"_{time.strftime('%Y-%m-%d %H:%M')}, {cpu_name()}, {os.cpu_count()} cores_"
    section = f"## {title}\n\n{stamp}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    old = pattern.search(text)
    if old is not None and NOTES_MARK in old.group(0):
        section += "\n" + old.group(0)[old.group(0).index(NOTES_MARK) :].rstrip() + "\n"
    text = (
        pattern.sub(lambda _: section + "\n", text)
        if old is not None
        else text.rstrip() + "\n\n" + section
    )
    RESULTS.write_text(text.rstrip() + "\n")
