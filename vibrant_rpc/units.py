"""Human-readable sizes and durations, both ways."""

from __future__ import annotations

import re
from datetime import timedelta

GiB = 1024**3
MiB = 1024**2

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(text: str) -> int:
    """'16GiB', '16 GB', '500M', '1024' -> bytes. Raises ValueError with the accepted forms."""
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size; use e.g. 16GiB, 500MB or a number of bytes")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '2w', '90' (days) -> timedelta."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration; use e.g. 30d, 12h or 2w")
    return timedelta(seconds=float(m.group(1)) * _DURATION_UNITS[m.group(2) or "d"])


def format_bytes(n: int | float | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_gib(n: int | float) -> str:
    return f"{n / GiB:.1f} GiB"
