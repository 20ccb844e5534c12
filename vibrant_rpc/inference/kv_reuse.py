"""Which parts of the KV cache a new prompt can keep, and where they move.

Pure token matching, no llama.cpp: the loaded model (``model.py``) applies the plan.
``held`` is always the tokens the KV cache holds now, in their cells' order.

llama-server's ``--cache-reuse N`` keeps the common prefix, then walks the cache
for chunks of at least N tokens that continue the new prompt exactly where it is,
and shifts them into place. Its prompt side never skips a token, so one token
typed before the cursor in a fill-in-the-middle prompt makes it evaluate the
whole suffix again. This plan also lets the prompt skip tokens: a token the cache
doesn't have is a gap to evaluate, and the chunks after it are shifted forward or
back around it. (llama_decode only takes tokens right after a sequence's last
position, so the loaded model decodes a gap there and shifts it into its hole.)
The last prompt token is always evaluated, so that the logits the first sample
reads belong to this prompt.

A shifted chunk keeps the keys and values computed beside its old neighbours,
so the model sees an approximation of the new prompt, as with llama-server.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

# Candidate places a chunk start is looked up at; repetitive code (blank lines,
# closing brackets) would otherwise make the lookup quadratic.
_MAX_CANDIDATES = 8


class Move(msgspec.Struct, frozen=True):
    """KV cells [src, src + length) go to prompt positions [dst, dst + length)."""

    src: int
    dst: int
    length: int


class ReusePlan(msgspec.Struct, frozen=True):
    # ``held`` and the prompt agree on their first ``prefix`` tokens: kept where they are.
    prefix: int
    # In ascending order of both src and dst, disjoint, none covering the last token.
    moves: list[Move]
    # Prompt ranges [start, end) to evaluate, ascending; the last ends at len(prompt).
    evaluate: list[tuple[int, int]]

    @property
    def evaluated(self) -> int:
        return sum(end - start for start, end in self.evaluate)

    @property
    def cached(self) -> int:
        return self.prefix + sum(m.length for m in self.moves)


def common_prefix(held: Sequence[int], prompt: Sequence[int]) -> int:
    n = 0
    for a, b in zip(held, prompt, strict=False):
        if a != b:
            break
        n += 1
    return n


def plan_prefix(held: Sequence[int], prompt: Sequence[int]) -> ReusePlan:
    """Only the common start, for memory that cannot shift."""
    keep = min(common_prefix(held, prompt), max(len(prompt) - 1, 0))
    return ReusePlan(prefix=keep, moves=[], evaluate=_ranges_after(keep, [], len(prompt)))


def plan_reuse(held: Sequence[int], prompt: Sequence[int], min_chunk: int) -> ReusePlan:
    """The common prefix, plus chunks of at least ``min_chunk`` tokens moved into place."""
    if min_chunk < 1:
        raise ValueError("min_chunk must be at least 1")
    n = len(prompt)
    # The last prompt token is never taken from the cache (see the module docstring).
    limit = max(n - 1, 0)
    prefix = min(common_prefix(held, prompt), limit)
    starts: dict[tuple[int, ...], list[int]] = {}
    for i in range(prefix, len(held) - min_chunk + 1):
        starts.setdefault(tuple(held[i : i + min_chunk]), []).append(i)
    moves: list[Move] = []
    head_c, head_p = prefix, prefix
    while head_p + min_chunk <= limit:
        best_src, best_len = -1, 0
        seen = 0
        for src in starts.get(tuple(prompt[head_p : head_p + min_chunk]), ()):
            if src < head_c:
                continue
            length = min_chunk
            while (
                src + length < len(held)
                and head_p + length < limit
                and held[src + length] == prompt[head_p + length]
            ):
                length += 1
            if length > best_len:
                best_src, best_len = src, length
            seen += 1
            if seen >= _MAX_CANDIDATES:
                break
        if best_len == 0:
            head_p += 1  # a token to evaluate
            continue
        moves.append(Move(src=best_src, dst=head_p, length=best_len))
        head_c = best_src + best_len
        head_p += best_len
    return ReusePlan(prefix=prefix, moves=moves, evaluate=_ranges_after(prefix, moves, n))


def _ranges_after(prefix: int, moves: list[Move], n: int) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    at = prefix
    for move in moves:
        if move.dst > at:
            ranges.append((at, move.dst))
        at = move.dst + move.length
    if at < n:
        ranges.append((at, n))
    return ranges


def shift_order(moves: list[Move]) -> list[Move]:
    """The order to apply moves in, so that no move lands on cells still to move.

    Once everything outside the kept ranges is removed, a chunk moving back can only
    meet chunks before it (moved first, in ascending order), and a chunk moving
    forward only chunks after it (moved first, in descending order).
    """
    back = [m for m in moves if m.dst < m.src]
    forward = [m for m in moves if m.dst > m.src]
    return back + forward[::-1]


def removed_ranges(prefix: int, moves: list[Move]) -> list[tuple[int, int]]:
    """Cache ranges [start, end) that no move keeps; the last one is open (end -1)."""
    ranges: list[tuple[int, int]] = []
    at = prefix
    for move in moves:
        if move.src > at:
            ranges.append((at, move.src))
        at = move.src + move.length
    ranges.append((at, -1))
    return ranges


def apply_to_tokens(held: Sequence[int], prompt: Sequence[int], plan: ReusePlan) -> list[int]:
    """The tokens the KV cache holds after the plan, with gaps filled from the prompt.

    Equal to ``prompt`` for every valid plan; tests check plans with it.
    """
    out: list[int | None] = [None] * len(prompt)
    out[: plan.prefix] = held[: plan.prefix]
    for m in plan.moves:
        out[m.dst : m.dst + m.length] = held[m.src : m.src + m.length]
    for start, end in plan.evaluate:
        out[start:end] = prompt[start:end]
    if any(t is None for t in out):
        raise ValueError("plan leaves positions unfilled")
    return [t for t in out if t is not None]
