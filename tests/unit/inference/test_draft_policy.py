"""draft_policy: a draft is checked where its expected tokens per millisecond beat a
plain step's, by the step times and kept rates it was told; one refusal in
EXPLORE_EVERY is checked anyway."""

from __future__ import annotations

import pytest

from vibrant_rpc.inference.draft_policy import EXPLORE_EVERY, MATCH_BUCKETS, DraftPolicy


def taught(plain_ms: float, drafted_ms: float, kept: dict[tuple[int, bool], float]) -> DraftPolicy:
    policy = DraftPolicy()
    for _ in range(200):  # long enough for the moving averages to settle
        policy.step_took(False, plain_ms)
        policy.step_took(True, drafted_ms)
    for (match, after_right), rate in kept.items():
        for i in range(400):
            policy.draft_was(match, after_right, (i * rate) % 1 + rate >= 1)
    return policy


def decisions(policy: DraftPolicy, match: int, after_right: bool, n: int = 160) -> int:
    return sum(policy.wants(match, after_right) for _ in range(n))


def test_not_adaptive_checks_every_draft() -> None:
    policy = DraftPolicy(adaptive=False)
    policy.step_took(False, 10)
    policy.step_took(True, 1000)
    assert decisions(policy, 1, False) == 160


def test_it_measures_both_steps_before_it_judges() -> None:
    policy = DraftPolicy()
    assert policy.wants(1, False)  # no drafted step measured yet
    policy.step_took(True, 30)
    assert not policy.wants(1, False)  # now a plain one
    policy.step_took(False, 17)
    assert policy.snapshot()[:2] == (17, 30)


@pytest.mark.parametrize(
    ("plain", "drafted", "kept", "checked"),
    [
        (23.5, 25.0, 0.3, True),  # the AMX Xeon: 1.06x, drafts pay when a third is kept
        (17.0, 27.0, 0.3, False),  # the AMD EPYC: 1.6x, they don't
        (17.0, 27.0, 0.9, True),  # unless nearly all are kept
    ],
)
def test_drafts_are_checked_where_they_pay(
    plain: float, drafted: float, kept: float, checked: bool
) -> None:
    policy = taught(plain, drafted, {(2, False): kept})
    assert policy.snapshot()[2][(1, False)] == pytest.approx(kept, abs=0.08)  # bucket 1: 2
    expected = 160 if checked else 160 // EXPLORE_EVERY
    assert decisions(policy, 2, False) == expected


def test_kinds_of_draft_are_judged_apart() -> None:
    # After a long match, code is being copied: those pay; after a 1-token match, rarely.
    policy = taught(17.0, 27.0, {(12, True): 0.95, (1, False): 0.2})
    assert decisions(policy, 12, True) == 160
    assert decisions(policy, 16, True) == 160  # the same kind: 9 tokens and more
    assert decisions(policy, 1, False) == 160 // EXPLORE_EVERY
    # A kind never seen starts at even odds: (1 + 0.5) * 17 < 27, refused.
    assert decisions(policy, 12, False) == 160 // EXPLORE_EVERY
    assert set(policy.snapshot()[2]) == {(4, True), (0, False)}


def test_match_buckets() -> None:
    policy = DraftPolicy()
    for match in (1, 2, 3, 4, 5, 8, 9, 16):
        policy.draft_was(match, False, True)
    assert sorted(policy.snapshot()[2]) == [(b, False) for b in range(len(MATCH_BUCKETS) + 1)]


def test_a_new_kind_is_judged_after_a_few_drafts() -> None:
    policy = taught(17.0, 27.0, {})
    assert not policy.wants(3, True)  # even odds: refused
    for _ in range(2):
        policy.draft_was(3, True, True)
    # (1 + 2) / (2 + 2) = 0.75 kept, as a plain mean with the prior: now they pay
    assert policy.snapshot()[2][(2, True)] == pytest.approx(0.75)  # bucket 2: 3-4 tokens
    assert policy.wants(4, True)


def test_it_follows_a_change_of_costs() -> None:
    policy = taught(17.0, 27.0, {(1, False): 0.5})
    assert not policy.wants(1, False)
    for _ in range(100):  # the machine got a wide-batch kernel (or a GPU)
        policy.step_took(True, 18.0)
    assert policy.wants(1, False)
