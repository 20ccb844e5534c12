"""Repetition: the same line, or the same block of up to four lines, again ends the
completion before the repeat (Tabby's ``removeRepetitiveLines`` and
``removeRepetitiveBlocks``). The line above an empty cursor line counts as the one
before the first. Lines that only close brackets or blocks repeat legitimately. Within
a line, the same piece three times running (``abspath(abspath(abspath(``) ends it
after the first (Tabby's ``removeLineEndsWithRepetition``)."""

from __future__ import annotations

from .cursor import Cursor, is_blank
from .rule import Rule, Seen, lines_of
from .scope import is_closing

BLOCK = 4
UNIT = (4, 40)  # lengths of a piece repeated within a line


def _periodic_tail(line: str) -> tuple[int, int]:
    """(k, unit): the longest end of ``line``, k long, that repeats what stands ``unit``
    characters before it, for a unit with some text in it."""
    best = (0, 0)
    for unit in range(UNIT[0], min(UNIT[1], len(line) // 2) + 1):
        k = 0
        while k < len(line) - unit and line[-1 - k] == line[-1 - k - unit]:
            k += 1
        if k > best[0] and len(line[len(line) - unit :].strip()) >= 2:
            best = (k, unit)
    return best


def _in_line(text: str) -> int | None:
    start = text.rfind("\n") + 1
    line = text[start:]
    k, unit = _periodic_tail(line)
    return start + len(line) - k if unit and k >= 2 * unit else None


def _counted(cur: Cursor, text: str, final: bool) -> list[tuple[int, str]]:
    """(start, stripped text) of the whole lines that count, the line above first."""
    lines = lines_of(text)
    out: list[tuple[int, str]] = []
    if is_blank(cur.line_prefix) and cur.above is not None:
        out.append((-1, cur.above.strip()))
    for i, (start, line) in enumerate(lines):
        whole = i < len(lines) - 1 or final
        full = cur.line_prefix + line if i == 0 else line
        if whole and not is_blank(full) and not is_closing(full, cur.language):
            out.append((start, full.strip()))
    return out


def cut(cur: Cursor, seen: Seen) -> int | None:
    at = _in_line(seen.text)
    if at is not None:
        return at
    counted = _counted(cur, seen.text, seen.final)
    for j in range(1, len(counted)):
        for k in range(1, BLOCK + 1):
            if j - 2 * k + 1 < 0:
                break
            first = [t for _, t in counted[j - 2 * k + 1 : j - k + 1]]
            second = [t for _, t in counted[j - k + 1 : j + 1]]
            if first == second and counted[j - k + 1][0] >= 0:
                return max(counted[j - k + 1][0] - 1, 0)
    return None


def settled(cur: Cursor, text: str) -> int:
    lines = lines_of(text)
    start, line = lines[-1]
    part = (cur.line_prefix + line if len(lines) == 1 else line).strip()
    counted = _counted(cur, text, final=False)
    texts = [t for _, t in counted]
    k, _ = _periodic_tail(line)
    held = len(text) - k  # a piece that may go on repeating
    if any(t.startswith(part) for t in texts[-BLOCK:]):
        held = max(start - 1, 0)  # it may become a repeat
    # Whole lines that repeat the start of a block just before them may become a
    # repeated block: they wait for the block's end.
    for k in range(2, BLOCK + 1):
        for m in range(1, k):
            if len(texts) >= k + m and texts[-m:] == texts[-k - m : -k]:
                first = counted[-m][0]
                if first >= 0:
                    held = min(held, max(first - 1, 0))
    return held


RULE = Rule("repetition", cut, settled)
