"""What the rules know of the cursor's place, worked out once before generating.

Pure: built from the request's text alone (the window before and after the cursor)
and the language, if any. ``multiline`` is the "one line or several" decision: in
mid-line (right of the cursor there is more than closing brackets, quotes and
punctuation) or inside a line comment, one line; at the end of a line or on an empty
one, several (Continue's ``shouldCompleteMultiline``, Tabby's ``^\\W*$`` end of line).
"""

from __future__ import annotations

import re

import msgspec

from .languages import Language

TAB_WIDTH = 4
CLOSERS = ")]}"
OPENERS = "([{"
QUOTES = "\"'`"
# How many non-blank lines below the cursor the rules look at.
BELOW_LINES = 8

# Right of the cursor, text with a word character or an opening bracket is "more than
# closing brackets, quotes and punctuation".
_CONTENT = re.compile(r"[\w([{]")


def indentation(line: str) -> int:
    """Columns of the line's leading whitespace (a tab counts TAB_WIDTH)."""
    stripped = line.lstrip(" \t")
    return len(line[: len(line) - len(stripped)].expandtabs(TAB_WIDTH))


def is_blank(line: str) -> bool:
    return not line.strip()


def string_quote_at_end(text: str) -> str | None:
    """The quote of a string literal still open at the end of ``text`` (one line), if any."""
    quote: str | None = None
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quote is not None:
            if ch == quote:
                quote = None
        elif ch in QUOTES:
            quote = ch
    return quote


class Cursor(msgspec.Struct, frozen=True, kw_only=True):
    language: Language | None
    line_prefix: str  # the cursor's line up to the cursor
    line_suffix: str  # the rest of the cursor's line, without its newline
    above: str | None  # the nearest non-blank line above the cursor's line
    below: list[str]  # the non-blank lines after the cursor's line, nearest first
    multiline: bool  # several lines may be suggested, else one
    stops: list[str] = []  # the request's stop strings
    # After the first line, generation stops at a line end once this is spent (0: never).
    time_budget_ms: float = 0.0
    # The indentation of the cursor's block: a line indented less leaves it.
    indent: int
    # The cursor is inside a string literal opened with this quote (on its line).
    in_string: str | None

    @property
    def rest(self) -> str:
        """The rest of the line, stripped: what a suggestion must not double."""
        return self.line_suffix.strip()

    @property
    def mid_line(self) -> bool:
        """Right of the cursor there is more than closing brackets, quotes and punctuation."""
        return _CONTENT.search(self.line_suffix) is not None


def in_line_comment(line_prefix: str, language: Language | None) -> bool:
    if language is None or not language.line_comment:
        return False
    at = line_prefix.find(language.line_comment)
    # A comment marker inside a string literal is text, not a comment.
    return at >= 0 and string_quote_at_end(line_prefix[:at]) is None


def cursor_at(
    prefix: str,
    suffix: str | None,
    language: Language | None = None,
    multiline: bool | None = None,
    *,
    stops: list[str] | None = None,
    time_budget_ms: float = 0.0,
) -> Cursor:
    """The cursor's facts for a request; ``multiline`` None lets the rule above decide."""
    before_lines = prefix.split("\n")
    line_prefix = before_lines[-1]
    after_lines = (suffix or "").split("\n")
    line_suffix = after_lines[0].rstrip("\r")
    above = next((ln for ln in reversed(before_lines[:-1]) if not is_blank(ln)), None)
    below = [ln.rstrip("\r") for ln in after_lines[1:] if not is_blank(ln)][:BELOW_LINES]
    decided = _CONTENT.search(line_suffix) is None and not in_line_comment(line_prefix, language)
    if is_blank(line_prefix) and not line_prefix and above is not None:
        # At column 0 of an empty line the block is the line above's (its body, if the
        # line opens one: the completion's first line says, see scope).
        indent = indentation(above)
    else:
        indent = indentation(line_prefix)
    return Cursor(
        language=language,
        line_prefix=line_prefix,
        line_suffix=line_suffix,
        above=above,
        below=below,
        multiline=decided if multiline is None else multiline,
        stops=[s for s in stops or [] if s],
        time_budget_ms=time_budget_ms,
        indent=indent,
        in_string=string_quote_at_end(line_prefix),
    )
