"""The part of a long text that can reach the context, tokenized without the rest.

A completion keeps at most the context's room of tokens: the end of the prefix (before the
cursor) and the start of the suffix (after it). llama.cpp's tokenizer grows faster than
linearly on code (Gemma 3: 40 KB 0.16 s, 200 KB 2.0 s, 400 KB 7.0 s, at 1.9 characters a
token), and the schema allows 4,000,000 characters: tokenizing the whole prompt before
cutting it to the room let one request hold the model (and the one superseding it) for
minutes. Here only a window of the text next to the cursor is tokenized, at first 4
characters per token needed (code runs 2 to 4), doubled while it gives too few tokens
(long whitespace tokens), so a 4 MB prompt costs what a 40 KB one does.

The window starts at a line break where one is near, so that it moves by lines, not by
keystrokes. Tokens at the window's cut edge may differ from the whole text's (a word cut
in two): ``MARGIN`` more tokens than needed are taken, and the caller keeps the ones next
to the cursor, which are the whole text's own.
"""

from __future__ import annotations

from collections.abc import Callable

Tokenize = Callable[[str], list[int]]

CHARS_PER_TOKEN = 4  # the first window's guess; doubled while it falls short
MARGIN = 16  # tokens beyond those needed, so the cut edge's tokens are never kept


def tail_tokens(tokenize: Tokenize, text: str, need: int) -> list[int]:
    """The tokens of ``text``'s end: at least ``need`` + ``MARGIN`` (all of them if the
    text has fewer), the last of them as the whole text's last ones."""
    window = (max(need, 0) + MARGIN) * CHARS_PER_TOKEN
    while window < len(text):
        start = len(text) - window
        line = text.find("\n", start, start + window // 2)
        tokens = tokenize(text[line + 1 if line >= 0 else start :])
        if len(tokens) >= need + MARGIN:
            return tokens
        window *= 2
    return tokenize(text)


def head_tokens(tokenize: Tokenize, text: str, need: int) -> list[int]:
    """The tokens of ``text``'s start, as ``tail_tokens`` its end."""
    window = (max(need, 0) + MARGIN) * CHARS_PER_TOKEN
    while window < len(text):
        line = text.rfind("\n", window // 2, window)
        tokens = tokenize(text[: line + 1 if line >= 0 else window])
        if len(tokens) >= need + MARGIN:
            return tokens
        window *= 2
    return tokenize(text)
