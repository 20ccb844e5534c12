"""The code below: a line equal to the next non-blank line below the cursor ends the
completion there (Continue's "exact match of the next non-blank line below"); a
completion that only repeats code already below is dropped (llama.vim's
``s:fim_render`` drops one whose lines equal the buffer's next lines)."""

from __future__ import annotations

from .cursor import Cursor, is_blank
from .rule import Rule, Seen, lines_of


def _full(cur: Cursor, i: int, line: str) -> str:
    """A completion line as the file would have it (the first continues the cursor's)."""
    return (cur.line_prefix + line if i == 0 else line).strip()


def cut(cur: Cursor, seen: Seen) -> int | None:
    if not cur.below:
        return None
    nxt = cur.below[0].strip()
    lines = lines_of(seen.text)
    for i, (start, line) in enumerate(lines):
        whole = i < len(lines) - 1 or seen.final
        if whole and not is_blank(line) and _full(cur, i, line) == nxt:
            return max(start - 1, 0)
    if seen.final:
        written = [_full(cur, i, ln) for i, (_, ln) in enumerate(lines) if not is_blank(ln)]
        below = [ln.strip() for ln in cur.below[: len(written)]]
        if written and written == below:
            return 0
    return None


def settled(cur: Cursor, text: str) -> int:
    if not cur.below:
        return len(text)
    lines = lines_of(text)
    i = len(lines) - 1
    start, line = lines[i]
    full = (cur.line_prefix + line if i == 0 else line).lstrip()
    if cur.below[0].strip().startswith(full.rstrip()):
        return max(start - 1, 0)  # it may become the line below
    return len(text)


RULE = Rule("codeBelow", cut, settled)
