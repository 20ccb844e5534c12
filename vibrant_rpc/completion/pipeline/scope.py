"""Scope: a line indented less than the cursor's block ends the completion.

The block is the cursor's: lines of the completion may sit at its indentation or
deeper. Where the cursor's line, completed by the first line of the completion, opens a
block (``def f(x):``, ``function f() {``), the block is that body, and a line back at
the cursor's indentation leaves it too. A closing line of the block (``}``, ``});``,
Lua's ``end``) is kept, and ends the completion, only where the code below doesn't
already have it: below the cursor there is nothing, or a line indented less than the
block that is not the same closing line (Tabby's ``limitScopeByIndentation`` and
``removeDuplicatedBlockClosingLine``; llama-server's ``n_indent``).
"""

from __future__ import annotations

from .cursor import CLOSERS, OPENERS, Cursor, indentation, is_blank
from .languages import Language
from .rule import Rule, Seen, lines_of

_CLOSING_TAIL = CLOSERS + ";,) \t"


def _word_at_end(line: str, word: str) -> bool:
    if not line.endswith(word):
        return False
    before = line[: len(line) - len(word)]
    return not word[0].isalnum() or not before or not (before[-1].isalnum() or before[-1] == "_")


def opens_block(line: str, lang: Language | None) -> bool:
    s = line.rstrip()
    if not s:
        return False
    if s[-1] in OPENERS:
        return True
    if lang is None:
        return False
    if any(_word_at_end(s, e) for e in lang.block_open_endings):
        return True
    head = s.lstrip()
    return any(
        head.startswith(w + " ") and not _word_at_end(s, "end") for w in lang.block_open_words
    )


def _close_words(lang: Language | None) -> list[str]:
    return lang.block_close_words if lang is not None else []


def is_closing(line: str, lang: Language | None) -> bool:
    """Only closes: closing brackets with punctuation, or a language's closing word."""
    s = line.strip()
    if not s:
        return False
    if s[0] in CLOSERS and all(c in _CLOSING_TAIL for c in s):
        return True
    for w in _close_words(lang):
        if s == w or (s.startswith(w) and not (s[len(w)].isalnum() or s[len(w)] == "_")):
            return True
    return False


def _may_close(line: str, lang: Language | None) -> bool:
    """A line still being written that may turn out to close (``en`` of ``end``)."""
    s = line.strip()
    return is_closing(line, lang) or any(w.startswith(s) for w in _close_words(lang))


def _limit(cur: Cursor, first_line: str) -> int:
    """Lines indented less than this leave the cursor's block."""
    if not is_blank(cur.line_prefix):
        opened = opens_block(cur.line_prefix + first_line, cur.language)
        return cur.indent + 1 if opened else cur.indent
    if not cur.line_prefix and cur.above is not None and opens_block(cur.above, cur.language):
        return cur.indent + 1  # column 0 under a line that opens a block: its body
    return cur.indent


def _closing_allowed(cur: Cursor, line: str, limit: int) -> bool:
    if not is_closing(line, cur.language):
        return False
    if not cur.below:
        return True
    below = cur.below[0]
    return indentation(below) < limit and below.strip() != line.strip()


def cut(cur: Cursor, seen: Seen) -> int | None:
    text = seen.text
    lines = lines_of(text)
    if len(lines) < 2:
        return None
    limit = _limit(cur, lines[0][1])
    for i, (start, line) in enumerate(lines[1:], 1):
        if is_blank(line) or indentation(line) >= limit:
            continue
        whole = i < len(lines) - 1 or seen.final
        if _may_close(line, cur.language) and not whole:
            return None  # the line's end says whether it only closes
        if _closing_allowed(cur, line, limit):
            end = start + len(line)
            return end if end < len(text) else None
        return start - 1
    return None


def settled(cur: Cursor, text: str) -> int:
    lines = lines_of(text)
    if len(lines) < 2:
        return len(text)
    start, line = lines[-1]
    if is_blank(line) or indentation(line) >= _limit(cur, lines[0][1]):
        return len(text)
    return start - 1 if _may_close(line, cur.language) else len(text)


RULE = Rule("scope", cut, settled)
