"""The pipeline: the rules in order over the text as it streams.

Each new piece of text runs the chain on the whole completion so far (a few hundred
characters: microseconds). The first rule that cuts ends the completion, and so
generation; the text it kept runs the chain again as final (an end of line another
rule waited for is whole now) until nothing changes. Only text every rule has
settled is streamed, so the pieces sent always begin the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ...states import FinishReason, StopReason
from . import (
    brackets,
    code_below,
    line_suffix,
    one_line,
    repetition,
    scope,
    stops,
    time_budget,
)
from .cursor import Cursor, cursor_at
from .languages import language_for
from .rule import Rule, Seen

RULES: tuple[Rule, ...] = (
    stops.RULE,
    one_line.RULE,
    scope.RULE,
    brackets.RULE,
    line_suffix.RULE,
    code_below.RULE,
    repetition.RULE,
    time_budget.RULE,
)

_FINISHED: dict[FinishReason, StopReason] = {
    "stop": "end",
    "length": "length",
    "cancelled": "cancelled",
}


def _first_cut(cur: Cursor, seen: Seen) -> tuple[int, StopReason] | None:
    for rule in RULES:
        at = rule.cut(cur, seen)
        if at is not None and at <= len(seen.text):
            return at, rule.reason
    return None


def _kept_end(cur: Cursor, text: str) -> int:
    """Where the completion's text ends once trailing blanks go: blank lines always,
    spaces unless the rest of the line follows them (``f(a, |b)``)."""
    end = len(text.rstrip())
    return len(text) if cur.mid_line and "\n" not in text[end:] else end


def _trimmed(cur: Cursor, text: str) -> str:
    """Trailing blanks gone (``_kept_end``); nothing but blanks is nothing."""
    return text[: _kept_end(cur, text)] if text.strip() else ""


def settle(cur: Cursor, text: str) -> tuple[str, StopReason | None]:
    """The completion ``text`` comes to when generation is over, and the rule that
    cut it (None: none did)."""
    reason: StopReason | None = None
    while True:
        found = _first_cut(cur, Seen(text, final=True))
        if found is None or found[0] >= len(text):
            return _trimmed(cur, text), reason
        text, reason = text[: found[0]], reason or found[1]


def apply(cur: Cursor, raw: str) -> tuple[str, StopReason | None]:
    """The whole chain on a completion already generated (golden tests, benchmarks): as
    if it streamed token by token with no time spent."""
    for end in range(1, len(raw) + 1):
        found = _first_cut(cur, Seen(raw[:end]))
        if found is not None:
            return settle(cur, raw[: found[0]])[0], found[1]
    return settle(cur, raw)


class Pipeline:
    """One completion's pass through the rules; the model's generation loop feeds it
    (``inference.text_stream.TextFilter``)."""

    def __init__(self, cursor: Cursor, clock: Callable[[], float] = time.monotonic) -> None:
        self.cursor = cursor
        self._clock = clock
        self._started: float | None = None
        self._reason: StopReason | None = None
        self._final_reason: StopReason | None = None

    @classmethod
    def for_request(
        cls,
        prompt: str,
        suffix: str | None,
        *,
        language_id: str | None = None,
        filename: str | None = None,
        multiline: bool | None = None,
        stops: list[str] | None = None,
        time_budget_ms: float = 0.0,
    ) -> Pipeline:
        language = language_for(language_id, filename)
        cursor = cursor_at(
            prompt, suffix, language, multiline, stops=stops, time_budget_ms=time_budget_ms
        )
        return cls(cursor)

    @property
    def line_comment(self) -> str | None:
        lang = self.cursor.language
        return lang.line_comment if lang is not None else None

    def check(self, text: str) -> tuple[int, bool]:
        """(how much of ``text`` may be sent now, whether the completion ends; then
        ``text[:n]`` is all of it)."""
        now = self._clock()
        if self._started is None:
            self._started = now
        seen = Seen(text, elapsed_ms=(now - self._started) * 1000)
        found = _first_cut(self.cursor, seen)
        if found is not None:
            self._reason = found[1]
            final, _ = settle(self.cursor, text[: found[0]])
            return len(final), True
        cur = self.cursor
        held = min(rule.settled(cur, text) for rule in RULES)
        return min(held, _kept_end(cur, text)), False  # trailing blanks wait: they may go

    def final(self, text: str) -> str:
        """The completion when generation ended without a rule (end of text, length)."""
        final, reason = settle(self.cursor, text)
        self._final_reason = reason
        return final

    def stop_reason(self, finish: FinishReason) -> StopReason:
        """Why the completion ended: the rule that ended it, else the rule that cut it
        once generation was over, else why generation ended."""
        if finish == "cancelled":
            return "cancelled"
        return self._reason or self._final_reason or _FINISHED[finish]
