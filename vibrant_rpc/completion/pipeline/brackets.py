"""Brackets: a closer the completion didn't open, and that the rest of the line already
has, ends the completion before it (Continue's ``BracketMatchingService``: the first
closing bracket the completion did not open). The same for the quote that ends a string
the cursor is in: the rest of the line closes it already."""

from __future__ import annotations

from .cursor import CLOSERS, OPENERS, QUOTES, Cursor
from .rule import Rule, Seen

_PAIR = dict(zip(CLOSERS, OPENERS, strict=True))


def cut(cur: Cursor, seen: Seen) -> int | None:
    rest = cur.line_suffix
    stack: list[str] = []
    quote = cur.in_string
    opened_here = False  # the string we are in was opened by the completion
    escaped = False
    for i, ch in enumerate(seen.text):
        if escaped:
            escaped = False
            continue
        if quote is not None:
            if ch == "\\":
                escaped = True
            elif ch == quote:
                if not opened_here and ch in rest:
                    return i
                quote, opened_here = None, False
            elif ch == "\n" and quote != "`":
                quote, opened_here = None, False  # an unclosed literal ends with its line
            continue
        if ch in QUOTES:
            quote, opened_here = ch, True
        elif ch in OPENERS:
            stack.append(ch)
        elif ch in CLOSERS:
            if stack and stack[-1] == _PAIR[ch]:
                stack.pop()
            elif ch in rest:
                return i
            else:
                stack.clear()  # it closes something before the cursor; nothing to match
    return None


def settled(cur: Cursor, text: str) -> int:
    return len(text)


RULE = Rule("bracket", cut, settled)
