"""The rest of the line: nothing it already holds is doubled.

In mid-line the completion ends where it reaches the start of the rest of the line
(Continue's ``stopAtStartOf(suffix)``); and when it ends, an end of its line that
begins the rest of the line is cut off (at ``def filename(|self):`` the completion
``self`` would make ``selfself):``). A completion that was only that is dropped
(llama.vim's ``s:fim_render`` drops one equal to the line's rest). Only the first line:
the rest of the line follows it.
"""

from __future__ import annotations

import re

from .cursor import Cursor
from .rule import Rule, Seen, held_prefix

NEEDLE = 16  # characters of the rest of the line looked for (Continue looks for 20)
_WORD = re.compile(r"\w")


def _needle(cur: Cursor) -> str:
    return cur.rest[:NEEDLE] if cur.mid_line else ""


def _boundary(before: str, needle: str) -> bool:
    """``needle`` starts a word of its own here, not the end of a longer one."""
    return not before or not _WORD.match(needle[0]) or not _WORD.match(before[-1])


def _doubled_end(first: str, rest: str) -> int:
    """Length of the end of ``first`` that begins ``rest`` and would read twice."""
    for n in range(min(len(first), len(rest)), 0, -1):
        tail = first[-n:]
        if not rest.startswith(tail) or not tail.strip():
            continue
        whole = n == len(rest) or not _WORD.match(rest[n]) or not _WORD.match(tail[-1])
        if (n >= 3 or whole) and _boundary(first[:-n], tail):
            return n
    return 0


def cut(cur: Cursor, seen: Seen) -> int | None:
    needle = _needle(cur)
    if not needle:
        return None
    end = seen.text.find("\n")
    first = seen.text if end < 0 else seen.text[:end]
    at = first.find(needle)
    while at >= 0 and not _boundary(cur.line_prefix + first[:at], needle):
        at = first.find(needle, at + 1)
    if at >= 0:
        return at
    if seen.final or end >= 0:
        n = _doubled_end(first.rstrip(), cur.rest)
        if n:
            return len(first.rstrip()) - n
    return None


def settled(cur: Cursor, text: str) -> int:
    needle = _needle(cur)
    if not needle or "\n" in text:
        return len(text)
    # An end that may still become the rest of the line, or begin it (cut at the end);
    # trailing spaces wait with it.
    first = text.rstrip()
    return len(first) - held_prefix(first, [cur.rest])


RULE = Rule("lineSuffix", cut, settled)
