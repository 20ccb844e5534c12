"""Stops: the request's stop strings, and the language's stop lines.

A stop string ends the completion where it starts (held back while the text's end may
begin one). A line at column 0 that starts with a top-level keyword or the line
comment of the file's language begins something new at the top level (Tabby's stop
words ``"\\n" + keyword``, ``languages.toml``); the completion ends before it. The
model's own end and file-separator tokens end generation in the model itself.
"""

from __future__ import annotations

from .cursor import Cursor
from .rule import Rule, Seen, held_prefix, lines_of


def _words(cur: Cursor) -> list[str]:
    lang = cur.language
    if lang is None:
        return []
    return [*lang.top_level_keywords, *([lang.line_comment] if lang.line_comment else [])]


def _starts_with_word(line: str, word: str) -> bool:
    if not line.startswith(word):
        return False
    rest = line[len(word) :]
    # A keyword is a whole word; a comment marker needs no boundary.
    return not rest or not word[-1].isalnum() or not (rest[0].isalnum() or rest[0] == "_")


def cut(cur: Cursor, seen: Seen) -> int | None:
    text = seen.text
    found = [i for i in (text.find(s) for s in cur.stops) if i >= 0]
    at = min(found) if found else None
    words = _words(cur)
    lines = lines_of(text)
    for i, (start, line) in enumerate(lines[1:], 1):
        if at is not None and start > at:
            break
        whole = i < len(lines) - 1 or seen.final
        if line[:1].isspace() or not line:
            continue
        # A line still being written may be "cla" of "class"; its end decides.
        if any(_starts_with_word(line, w) for w in words) and (whole or _settled_word(line)):
            return start - 1 if at is None else min(at, start - 1)
    return at


def _settled_word(line: str) -> bool:
    """The line's first word is complete: something follows it."""
    return any(not (c.isalnum() or c == "_") for c in line)


def settled(cur: Cursor, text: str) -> int:
    held = len(text) - held_prefix(text, cur.stops)
    start = text.rfind("\n") + 1
    line = text[start:]
    if start > 0 and line and not line[0].isspace() and not _settled_word(line):
        words = _words(cur)
        if any(w.startswith(line) or _starts_with_word(line, w) for w in words):
            held = min(held, start - 1)
    return held


RULE = Rule("stop", cut, settled)
