"""Download progress: what a callback receives, with a smoothed speed and an ETA.

``Reporter`` is the one place progress is throttled: every connection of a download
adds its bytes there, and listeners hear of them at most ten times a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import msgspec

from ..states import DownloadState


class Progress(msgspec.Struct, kw_only=True, frozen=True):
    model_id: str
    state: DownloadState
    file: str = ""  # the Hub file name being transferred
    downloaded_bytes: int = 0  # for the whole model, all files
    total_bytes: int | None = None
    bytes_per_second: float = 0.0
    eta_seconds: float | None = None
    source: str | None = None  # where the bytes come from: a source's host:port, a cache


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


class Reporter:
    """Aggregates the bytes of every connection into at most one call per ``interval_s``
    (state changes are always passed on)."""

    def __init__(
        self,
        model_id: str,
        total: int | None,
        done: int,
        callback: ProgressCallback | None,
        *,
        interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model_id, self.total, self.done, self.callback = model_id, total, done, callback
        self.file = ""
        self.source: Callable[[], str | None] | None = None  # asked at each report
        self.interval_s = interval_s
        self._clock = clock
        self.meter = SpeedMeter(clock=clock)
        self.meter.reset_base(done)
        self._lock = threading.Lock()
        self._last = float("-inf")

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = self._clock()
            if now - self._last < self.interval_s:
                return
            self._last = now
        self.emit("downloading")

    def emit(self, state: DownloadState) -> None:
        if self.callback is None:
            return
        rate = self.meter.update(self.done)
        self.callback(
            Progress(
                model_id=self.model_id,
                state=state,
                file=self.file,
                downloaded_bytes=self.done,
                total_bytes=self.total,
                bytes_per_second=rate,
                eta_seconds=0.0 if state == "done" else self.meter.eta(self.done, self.total),
                source=self.source() if self.source is not None else None,
            )
        )
