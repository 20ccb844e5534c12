"""What every rule is: two pure functions of the cursor's facts and the text so far.

``cut`` says where the completion ends (the index of the first character it drops), or
None to go on; a cut ends generation too. ``settled`` says how much of the text the rule
can no longer cut: the pipeline streams only text every rule has settled, so what the
editor was sent is never taken back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import msgspec

from ...states import StopReason
from .cursor import Cursor


class Seen(msgspec.Struct, frozen=True):
    text: str  # the completion so far
    # Generation is over (end of text, length, or another rule's cut): the last line is
    # whole, and rules that judge the completion as a whole judge it now.
    final: bool = False
    elapsed_ms: float = 0.0  # since the first token


class Rule(NamedTuple):
    reason: StopReason
    cut: Callable[[Cursor, Seen], int | None]
    settled: Callable[[Cursor, str], int]


def lines_of(text: str) -> list[tuple[int, str]]:
    """Each line of ``text`` with its start index; the first continues the cursor's line."""
    out, start = [], 0
    for line in text.split("\n"):
        out.append((start, line))
        start += len(line) + 1
    return out


def last_line_start(text: str) -> int:
    return text.rfind("\n") + 1


def held_prefix(tail: str, candidates: list[str]) -> int:
    """Length of the longest end of ``tail`` that begins one of ``candidates``."""
    for n in range(min(len(tail), max((len(c) for c in candidates), default=0)), 0, -1):
        if any(c.startswith(tail[-n:]) for c in candidates):
            return n
    return 0
