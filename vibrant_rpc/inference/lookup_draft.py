"""Draft tokens for a greedy completion, looked up in the text it continues.

Prompt lookup decoding (as llama.cpp's ``lookup`` example and llama-cpp-python's
``LlamaPromptLookupDecoding``): code repeats itself, so the tokens that followed the
latest earlier occurrence of the last few tokens are a good guess at what comes next.
The model checks a whole draft in one batch and keeps the part its own argmax agrees
with, so a draft changes how fast a greedy completion comes, never what it says.

Pure token matching, no llama.cpp: ``greedy_decode`` runs the model.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

_ITEM = 4  # bytes per token in the search buffer (array typecode "i")
MATCH_MAX = 16  # how far back ``lookup`` measures a match


class LookupDrafter:
    """The history of one completion (its prompt and the tokens generated so far), and
    drafts from it. The search runs on the history's bytes (``bytes.rfind``), so a
    4000-token prompt is searched in microseconds, not a Python loop."""

    def __init__(self, tokens: Iterable[int], *, ngram_max: int = 3, ngram_min: int = 1) -> None:
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError("need 1 <= ngram_min <= ngram_max")
        self._tokens = array("i", tokens)
        self.ngram_max = ngram_max
        self.ngram_min = ngram_min

    def __len__(self) -> int:
        return len(self._tokens)

    def append(self, token: int) -> None:
        self._tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the latest earlier occurrence of the
        history's last n tokens, for the longest n in [ngram_min, ngram_max] that occurs
        earlier; [] when none does."""
        return self.lookup(limit)[0]

    def lookup(self, limit: int) -> tuple[list[int], int]:
        """``draft(limit)`` and how many tokens before it match the history's last ones
        (the n it was found by, extended back, at most ``MATCH_MAX``; 0 with no draft):
        a draft after a long match is right far more often (``draft_policy``)."""
        tokens = self._tokens
        if limit < 1 or len(tokens) < 2:
            return [], 0
        data = tokens.tobytes()
        end = len(tokens)
        for n in range(min(self.ngram_max, end - 1), self.ngram_min - 1, -1):
            start = self._latest(data, end - n, n)
            if start >= 0:
                after = start + n
                match = n
                # start + n <= end - 1, so the earlier copy stays behind the later one.
                while (
                    match < MATCH_MAX
                    and after - match > 0
                    and tokens[after - match - 1] == tokens[end - match - 1]
                ):
                    match += 1
                return tokens[after : after + limit].tolist(), match
        return [], 0

    @staticmethod
    def _latest(data: bytes, at: int, n: int) -> int:
        """The latest token index before ``at`` where the n tokens from ``at`` occur too,
        or -1. (``rfind`` may match across token boundaries; such hits are skipped.)"""
        pattern = data[at * _ITEM : (at + n) * _ITEM]
        # A match must end before the pattern's own last token, so that a token follows.
        end = (at + n - 1) * _ITEM
        while True:
            hit = data.rfind(pattern, 0, end)
            if hit < 0:
                return -1
            if hit % _ITEM == 0:
                return hit // _ITEM
            end = hit + len(pattern) - 1
