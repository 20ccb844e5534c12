"""Which cached tokens a new prompt keeps, and where they move: plans on token lists."""

from __future__ import annotations

import random

import pytest

from vibrant_rpc.inference.kv_reuse import (
    Move,
    ReusePlan,
    apply_to_tokens,
    plan_prefix,
    plan_reuse,
    removed_ranges,
    shift_order,
)


def simulate(cache: list[int], plan: ReusePlan) -> dict[int, int]:
    """Positions -> tokens after removing and shifting, in shift_order, as llama.cpp would.

    Cells are (pos, token); a seq_add selects cells by their position at that moment,
    so applying moves in a bad order would drag cells twice: that shows up here.
    """
    cells = list(enumerate(cache))
    for start, end in removed_ranges(plan.prefix, plan.moves):
        cells = [(p, t) for p, t in cells if not (p >= start and (end < 0 or p < end))]
    for m in shift_order(plan.moves):
        delta = m.dst - m.src
        cells = [(p + delta if m.src <= p < m.src + m.length else p, t) for p, t in cells]
    positions = [p for p, _ in cells]
    assert len(positions) == len(set(positions)), "two cells at one position"
    return dict(cells)


def check(cache: list[int], prompt: list[int], plan: ReusePlan) -> None:
    assert apply_to_tokens(cache, prompt, plan) == prompt
    kept = simulate(cache, plan)
    for pos, tok in kept.items():
        assert prompt[pos] == tok
    assert len(kept) == plan.cached
    assert plan.cached + plan.evaluated == len(prompt)
    assert plan.evaluate and plan.evaluate[-1][1] == len(prompt)


def test_window_slide_moves_the_rest_back() -> None:
    cache = [1, *range(100, 200)]
    prompt = [1, *range(140, 200), *range(500, 510)]
    plan = plan_reuse(cache, prompt, min_chunk=8)
    assert plan.prefix == 1
    assert plan.moves == [Move(src=41, dst=1, length=60)]
    assert plan.evaluate == [(61, 71)]
    check(cache, prompt, plan)


def test_insertion_before_the_suffix_moves_the_suffix_forward() -> None:
    # FIM: <pre> P <suf> S <mid>, then one token typed at the end of P.
    pre, suf, mid = 900, 901, 902
    p, s = list(range(100, 150)), list(range(300, 340))
    cache = [1, pre, *p, suf, *s, mid]
    prompt = [1, pre, *p, 7, suf, *s, mid]
    plan = plan_reuse(cache, prompt, min_chunk=16)
    assert plan.prefix == 52
    assert plan.moves == [Move(src=52, dst=53, length=41)]
    # The typed token and <mid> (always evaluated last).
    assert plan.evaluate == [(52, 53), (94, 95)]
    check(cache, prompt, plan)


def test_llama_server_would_evaluate_that_suffix_again() -> None:
    """The contiguous rule alone (no skipped prompt token) reuses nothing after a typed token."""
    p, s = list(range(100, 150)), list(range(300, 340))
    cache = [1, *p, 901, *s, 902]
    prompt = [1, *p, 7, 901, *s, 902]
    assert plan_prefix(cache, prompt).evaluated == len(s) + 3


def test_moves_back_and_forward_in_one_plan() -> None:
    a, b, c = list(range(100, 120)), list(range(200, 220)), list(range(300, 320))
    cache = [1, 5, 5, 5, *a, *b, *c]
    prompt = [1, *a, 6, 6, 6, 6, 6, *b, 6, *c, 9]
    plan = plan_reuse(cache, prompt, min_chunk=8)
    deltas = sorted(m.dst - m.src for m in plan.moves)
    assert deltas[0] < 0 < deltas[-1]
    check(cache, prompt, plan)


def test_same_prompt_again_keeps_all_but_the_last_token() -> None:
    cache = list(range(50))
    plan = plan_reuse(cache, cache, min_chunk=4)
    assert plan.prefix == 49 and not plan.moves and plan.evaluate == [(49, 50)]


def test_short_chunks_are_evaluated() -> None:
    cache = [1, *range(100, 110)]
    prompt = [1, *range(103, 110), 5]
    plan = plan_reuse(cache, prompt, min_chunk=8)
    assert not plan.moves and plan.evaluated == len(prompt) - 1


def test_empty_cache_and_tiny_prompts() -> None:
    assert plan_reuse([], [3, 4], min_chunk=1).evaluate == [(0, 2)]
    assert plan_reuse([3], [3], min_chunk=1).evaluate == [(0, 1)]
    with pytest.raises(ValueError):
        plan_reuse([1], [1], min_chunk=0)


@pytest.mark.parametrize("seed", range(30))
def test_random_edits_give_valid_plans(seed: int) -> None:
    rng = random.Random(seed)
    vocab = 12  # a small vocabulary repeats chunks, which is where bad plans hide
    cache = [rng.randrange(vocab) for _ in range(rng.randrange(0, 300))]
    prompt = list(cache)
    for _ in range(rng.randrange(0, 6)):
        at = rng.randrange(len(prompt) + 1)
        if rng.random() < 0.5 and prompt:
            del prompt[at : at + rng.randrange(1, 40)]
        else:
            prompt[at:at] = [rng.randrange(vocab) for _ in range(rng.randrange(1, 20))]
    if not prompt:
        prompt = [0]
    for min_chunk in (1, 4, 16):
        check(cache, prompt, plan_reuse(cache, prompt, min_chunk))
    check(cache, prompt, plan_prefix(cache, prompt))
