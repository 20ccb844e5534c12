"""A time budget: once the first line is whole, generation stops at the next line end
after the budget is spent (llama-server's ``t_max_predict_ms``; llama.vim asks 250 ms
for a first suggestion). Pure: the time comes in with what was seen."""

from __future__ import annotations

from .cursor import Cursor, is_blank
from .rule import Rule, Seen

DEFAULT_MS = 250.0


def cut(cur: Cursor, seen: Seen) -> int | None:
    text = seen.text
    if cur.time_budget_ms <= 0 or seen.elapsed_ms < cur.time_budget_ms or seen.final:
        return None
    end = text.rfind("\n")
    # A line just ended (what follows its newline is blank so far), after some text.
    if end < 0 or not is_blank(text[end + 1 :]) or is_blank(text[:end]):
        return None
    return end


def settled(cur: Cursor, text: str) -> int:
    return len(text)


RULE = Rule("timeBudget", cut, settled)
