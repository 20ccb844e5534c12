"""One line: where one line was decided (mid-line, or inside a line comment: see
``cursor``), the first line end ends the completion."""

from __future__ import annotations

from .cursor import Cursor
from .rule import Rule, Seen


def cut(cur: Cursor, seen: Seen) -> int | None:
    if cur.multiline:
        return None
    at = seen.text.find("\n")
    return at if at >= 0 else None


def settled(cur: Cursor, text: str) -> int:
    return len(text)


RULE = Rule("oneLine", cut, settled)
