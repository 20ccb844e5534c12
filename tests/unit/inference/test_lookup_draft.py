"""Drafts looked up in the history (``lookup_draft``), checked against a plain search."""

from __future__ import annotations

import random
from array import array

import pytest

from vibrant_rpc.inference.lookup_draft import MATCH_MAX, LookupDrafter


def reference(tokens: list[int], limit: int, ngram_max: int, ngram_min: int) -> list[int]:
    """The same rule as a plain Python search: the longest n, then the latest start."""
    return reference_lookup(tokens, limit, ngram_max, ngram_min)[0]


def reference_lookup(
    tokens: list[int], limit: int, ngram_max: int, ngram_min: int
) -> tuple[list[int], int]:
    """The draft, and the longest m <= MATCH_MAX with the m tokens before the found
    start's draft equal to the history's last m."""
    if limit < 1:
        return [], 0
    for n in range(min(ngram_max, len(tokens) - 1), ngram_min - 1, -1):
        pattern = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == pattern:
                after = start + n
                match = max(
                    m for m in range(n, min(MATCH_MAX, after) + 1)
                    if tokens[after - m : after] == tokens[len(tokens) - m :]
                )  # fmt: skip
                return tokens[after : after + limit], match
    return [], 0


def test_the_tokens_after_the_latest_occurrence() -> None:
    #        0  1  2  3  4  5  6  7  8  9
    tokens = [5, 6, 7, 8, 5, 6, 9, 1, 5, 6]
    # "5 6" occurs at 0 and 4; the latest (4) is followed by 9 1 5 6.
    assert LookupDrafter(tokens).draft(3) == [9, 1, 5]
    assert LookupDrafter(tokens).draft(10) == [9, 1, 5, 6]


def test_a_longer_match_wins_over_a_later_one() -> None:
    #        0  1  2  3  4  5  6  7  8  9  10
    tokens = [1, 2, 3, 4, 9, 2, 3, 7, 1, 2, 3]
    # "2 3" occurs latest at 5 (then 7), but "1 2 3" only at 0 (then 4): the 3-gram wins.
    assert LookupDrafter(tokens, ngram_max=3).draft(2) == [4, 9]
    assert LookupDrafter(tokens, ngram_max=2).draft(2) == [7, 1]


def test_nothing_to_draft() -> None:
    assert LookupDrafter([]).draft(4) == []
    assert LookupDrafter([7]).draft(4) == []
    assert LookupDrafter([1, 2, 3, 4]).draft(4) == []  # 4 never came before
    assert LookupDrafter([1, 2, 1]).draft(0) == []
    # ngram_min 2: a lone repeated token is not enough.
    assert LookupDrafter([1, 2, 3, 1], ngram_min=2).draft(4) == []
    assert LookupDrafter([1, 2, 3, 1]).draft(4) == [2, 3, 1]


def test_append_extends_the_history() -> None:
    drafter = LookupDrafter([10, 11, 12, 13])
    assert drafter.draft(2) == []
    drafter.append(11)
    assert len(drafter) == 5
    assert drafter.draft(2) == [12, 13]


def test_byte_matches_across_token_boundaries_are_not_matches() -> None:
    # As 4-byte little-endian ints, 256 then 0 is 00 01 00 00 00 00 00 00: the bytes of
    # token 1 (01 00 00 00) start at byte 9, inside token 2. rfind finds that first.
    tokens = [1, 7, 256, 0, 1]
    data = array("i", tokens).tobytes()
    assert data.rfind(array("i", [1]).tobytes(), 0, 16) == 9
    assert LookupDrafter(tokens, ngram_max=1).draft(3) == [7, 256, 0]


@pytest.mark.parametrize("seed", range(200))
def test_agrees_with_a_plain_search(seed: int) -> None:
    rng = random.Random(seed)
    # Small values and powers of 256 make byte patterns that cross token boundaries.
    alphabet = [0, 1, 2, 256, 65536, 16777216, 257, rng.randrange(262144)]
    tokens = [
        rng.choice(alphabet[: rng.randint(2, len(alphabet))]) for _ in range(rng.randint(0, 60))
    ]
    ngram_max = rng.randint(1, 5)
    ngram_min = rng.randint(1, ngram_max)
    limit = rng.randint(0, 6)
    drafter = LookupDrafter(tokens, ngram_max=ngram_max, ngram_min=ngram_min)
    assert drafter.draft(limit) == reference(tokens, limit, ngram_max, ngram_min)
    assert drafter.lookup(limit) == reference_lookup(tokens, limit, ngram_max, ngram_min)


def test_lookup_says_how_far_back_the_match_goes() -> None:
    #        0  1  2  3  4  5  6  7  8  9 10 11
    tokens = [8, 1, 2, 3, 4, 5, 9, 7, 1, 2, 3, 4]
    # "2 3 4" found at 2, followed by 5; before it "1" matches too, "8" against "7" not.
    assert LookupDrafter(tokens).lookup(1) == ([5], 4)
    # A repeated block: the match runs back to the history's start, capped at MATCH_MAX.
    block = list(range(100, 140))
    assert LookupDrafter(block + block[:30]).lookup(2) == ([130, 131], MATCH_MAX)
    assert LookupDrafter([1, 2, 3, 4]).lookup(2) == ([], 0)


def test_bad_ngram_bounds() -> None:
    with pytest.raises(ValueError):
        LookupDrafter([1], ngram_max=1, ngram_min=2)
    with pytest.raises(ValueError):
        LookupDrafter([1], ngram_min=0)
