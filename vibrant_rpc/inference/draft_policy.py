"""Whether a greedy step should check a draft: decided by what drafts cost and keep here.

A step that checks a 1-token draft decodes two positions with logits at both, and
gives two tokens when the model keeps the draft, one when not. What that costs against
a plain step is the machine's: with Gemma 3 270M on 2 cores and 2000 tokens cached, an
AMX Xeon took 25 ms for it against 23.5 for a plain step (1.06×), an AMD EPYC 27 ms
against 17 (1.6×; its 1-token kernels are the faster ones). A draft pays where
``p(kept) > cost(drafted) / cost(plain) - 1``: nearly always on the first, only on
drafts likely to be kept on the second (near the top of a file there, drafting every
step made completions 1.13× slower; deep in it, where code repeats, 0.86×).

So both are measured as completions run, per loaded model: the two steps' times
(moving averages) and, per kind of draft (how many tokens before it matched, in
``MATCH_BUCKETS``, and whether the step before had its draft right), how often a
draft's token is the one the model chooses. Over the typing benchmark's requests a
draft after a match of 1-2 tokens was right 31-39 % of the time, 3-4 29-58 %, 5 or
more 88-100 %. That is known for a draft not checked too (the next token is
chosen either way), so the rates follow every lookup. A draft is checked when its
expected tokens per millisecond beat a plain step's; one refused draft in
``EXPLORE_EVERY`` is checked anyway, so that the drafted step's time follows the
machine. Pure Python, no llama.cpp: ``greedy_decode`` reports to it.
"""

from __future__ import annotations

import threading

EXPLORE_EVERY = 16
# Moving averages: a step's time weighs 1/10 against what came before (a few tokens of
# one completion), a kept-or-not 1/20 (a few completions); the first ones weigh as in a
# plain mean, so a new model or kind of draft is judged after a handful.
COST_WEIGHT = 0.1
KEPT_WEIGHT = 0.05
PRIOR_KEPT = 0.5  # before any draft of a kind was checked, worth two drafts
PRIOR_WEIGHT = 2
MATCH_BUCKETS = (1, 2, 4, 8)  # matches of 1, 2, 3-4, 5-8 and more tokens are kinds apart


class DraftPolicy:
    """Decides per step whether to check a draft; ``adaptive=False``: always (tests)."""

    def __init__(self, *, adaptive: bool = True) -> None:
        self.adaptive = adaptive
        self._lock = threading.Lock()  # completions of one model run one at a time; cheap
        self._plain_ms: float | None = None
        self._drafted_ms: float | None = None
        self._steps = {False: 0, True: 0}  # steps timed, plain and drafted
        self._kept: dict[tuple[int, bool], float] = {}  # per (bucket, after_right)
        self._seen: dict[tuple[int, bool], int] = {}  # drafts judged, per kind
        self._refused = 0

    def wants(self, match: int, after_right: bool) -> bool:
        """Check a draft after a ``match``-token match (``LookupDrafter.lookup``), the
        step before having had its draft right (``after_right``) or not?"""
        if not self.adaptive:
            return True
        with self._lock:
            plain, drafted = self._plain_ms, self._drafted_ms
            if drafted is None:
                return True  # not measured yet
            if plain is None:
                return False  # a plain step to measure first
            p = self._kept.get((_bucket(match), after_right), PRIOR_KEPT)
            if (1 + p) * plain > drafted:
                return True
            self._refused += 1
            return self._refused % EXPLORE_EVERY == 0

    def step_took(self, drafted: bool, ms: float) -> None:
        """A step's time, from its decode to the token(s) it gave."""
        with self._lock:
            self._steps[drafted] += 1
            weight = max(1 / self._steps[drafted], COST_WEIGHT)
            if drafted:
                self._drafted_ms = _moving(self._drafted_ms, ms, weight)
            else:
                self._plain_ms = _moving(self._plain_ms, ms, weight)

    def draft_was(self, match: int, after_right: bool, kept: bool) -> None:
        """A draft of that kind had its first token right (``kept``), checked or not."""
        key = (_bucket(match), after_right)
        with self._lock:
            self._seen[key] = seen = self._seen.get(key, 0) + 1
            weight = max(1 / (seen + PRIOR_WEIGHT), KEPT_WEIGHT)
            self._kept[key] = _moving(self._kept.get(key, PRIOR_KEPT), float(kept), weight)

    def snapshot(self) -> tuple[float | None, float | None, dict[tuple[int, bool], float]]:
        """(plain step ms, drafted step ms, right rate per (bucket, after_right)), the
        bucket the index in ``MATCH_BUCKETS`` (4: longer): for tests and benchmarks."""
        with self._lock:
            return self._plain_ms, self._drafted_ms, dict(self._kept)


def _moving(old: float | None, new: float, weight: float) -> float:
    return new if old is None else old + weight * (new - old)


def _bucket(match: int) -> int:
    return next((i for i, top in enumerate(MATCH_BUCKETS) if match <= top), len(MATCH_BUCKETS))
