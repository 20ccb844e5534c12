"""The pieces a transfer is made of: byte ranges, batched socket reads, and the hasher
that advances over a file's bytes in order on its own thread."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Iterator

from ..errors import DownloadFailedError
from .priority import run_in_background

MiB = 1024 * 1024
FLUSH_EVERY_S = 1.0  # write the file back this often while hashing


def add_range(ranges: list[tuple[int, int]], start: int, end: int) -> None:
    """Insert [start, end) into sorted, merged ranges, in place."""
    out: list[tuple[int, int]] = []
    placed = False
    for s, e in ranges:
        if e < start:
            out.append((s, e))
        elif end < s:
            if not placed:
                out.append((start, end))
                placed = True
            out.append((s, e))
        else:
            start, end = min(s, start), max(e, end)
    if not placed:
        out.append((start, end))
    out.sort()
    ranges[:] = out


def batched(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Join socket reads (64 KiB) into pieces of about ``size``: the bookkeeping per piece
    is then paid 16 times less often. If reading fails, what arrived first is still
    handed over before the error, so a dropped connection loses nothing it delivered."""
    buf: list[bytes] = []
    n = 0
    try:
        for chunk in chunks:
            buf.append(chunk)
            n += len(chunk)
            if n >= size:
                yield b"".join(buf)
                buf.clear()
                n = 0
    except Exception:  # not GeneratorExit: a consumer that stops wants nothing more
        if buf:
            yield b"".join(buf)
        raise
    if buf:
        yield b"".join(buf)


def gaps(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    out, pos = [], 0
    for s, e in ranges:
        if s > pos:
            out.append((pos, s))
        pos = max(pos, e)
    if pos < size:
        out.append((pos, size))
    return out


class OrderedHasher:
    """SHA-256 on a thread of its own, fed in file order, so hashing overlaps the network
    instead of adding to it. Bytes already on disk (a resume) are read here, once."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._sha = hashlib.sha256()
        self._queue: queue.Queue[bytes | tuple[int, int] | None] = queue.Queue(maxsize=256)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vibrant-hash", daemon=True)
        self._thread.start()

    def feed(self, data: bytes) -> None:
        self._queue.put(data)

    def feed_from_disk(self, start: int, end: int) -> None:
        self._queue.put((start, end))

    def _run(self) -> None:
        run_in_background()
        last_flush = time.monotonic()
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so that feeders never block
            try:
                if time.monotonic() - last_flush > FLUSH_EVERY_S:
                    # Write back as we go: the fsync before the rename then waits only for
                    # the last second's bytes rather than the whole file's.
                    os.fdatasync(self._fd)
                    last_flush = time.monotonic()
                if isinstance(item, bytes):
                    self._sha.update(item)
                    continue
                pos, end = item
                while pos < end:
                    chunk = os.pread(self._fd, min(8 * MiB, end - pos), pos)
                    if not chunk:
                        raise DownloadFailedError("The partial file is shorter than recorded.")
                    self._sha.update(chunk)
                    pos += len(chunk)
            except BaseException as err:
                self._error = err

    def finish(self) -> str:
        self.stop()
        if self._error is not None:
            raise self._error
        return self._sha.hexdigest()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
