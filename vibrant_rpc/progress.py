"""Download progress: what a callback receives, with a smoothed speed and an ETA."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import msgspec

ProgressState = Literal[
    "waiting",  # another process is downloading this model; we wait for it
    "resolving",
    "downloading",
    "verifying",
    "done",
    "failed",
    "cancelled",
]


class Progress(msgspec.Struct, kw_only=True, frozen=True):
    model_id: str
    file: str  # the Hub file name being transferred
    downloaded_bytes: int  # for the whole model, all files
    total_bytes: int | None
    bytes_per_second: float
    eta_seconds: float | None
    state: ProgressState


ProgressCallback = Callable[[Progress], None]


class SpeedMeter:
    """Bytes per second, smoothed over a few seconds so the ETA doesn't jump around."""

    def __init__(self, half_life_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._half_life = half_life_s
        self._last_t = clock()
        self._last_bytes = 0
        self._rate = 0.0
        self._primed = False

    def update(self, total_bytes: int) -> float:
        now = self._clock()
        dt = now - self._last_t
        if dt < 0.05:
            return self._rate
        inst = (total_bytes - self._last_bytes) / dt
        if self._primed:
            alpha = 1 - 0.5 ** (dt / self._half_life)
            self._rate += alpha * (inst - self._rate)
        else:
            self._rate, self._primed = inst, True
        self._last_t, self._last_bytes = now, total_bytes
        return self._rate

    def reset_base(self, total_bytes: int) -> None:
        """Resumed bytes are not speed: start measuring from here."""
        self._last_t, self._last_bytes = self._clock(), total_bytes

    def eta(self, done: int, total: int | None) -> float | None:
        if total is None or self._rate <= 0:
            return None
        return max(0.0, (total - done) / self._rate)
