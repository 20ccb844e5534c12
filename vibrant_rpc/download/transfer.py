"""One file's bytes, fetched over several ranged connections and hashed in order.

The file is cut into blocks; each connection takes the next block (never further
ahead of the hashed prefix than a small window), writes it in place, and the
SHA-256 advances over the contiguous prefix as it completes. Blocks ahead of the
prefix wait in memory, so parallelism costs no second read of the file. Only on
resume are the bytes already on disk read once to bring the hash up to date.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..cache.partials import FileProgress
from ..errors import Cancelled, DownloadFailedError, HubUnreachableError, VibrantError
from ..fsutil import disk_full, is_no_space
from .blocks import OrderedHasher, add_range, batched, gaps
from .hub import HubClient, TransientError, not_the_hub, retry_after_seconds, web_page
from .priority import run_in_background

log = logging.getLogger(__name__)
MiB = 1024 * 1024


class RangeIgnored(Exception):
    """The server answered a range request with the whole file (200)."""


class RemoteChanged(Exception):
    """The file upstream is not the one the partial data came from."""


class UrlExpired(Exception):
    """The signed CDN URL was refused; resolve again for a fresh one."""


@dataclass
class TransferConfig:
    connections: int = 4
    block_size: int = 16 * MiB
    window_blocks_per_connection: int = 2
    idle_timeout: float = 30.0
    max_attempts_without_progress: int = 3
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep)

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.backoff_cap, self.backoff_base * 2.0 ** (attempt - 1))
        delay *= 0.5 + random.random()  # jitter: parallel clients don't retry in lockstep
        if retry_after is not None:
            delay = max(delay, min(retry_after, 300.0))
        return delay


@dataclass(eq=False)
class _Block:
    """A range one connection fetches; ``end`` shrinks when an idle connection takes over
    the second half of what is left (so that connections finish together)."""

    start: int
    end: int
    pos: int  # the next byte this block's connection writes


MIN_STEAL = 2 * MiB
# After SHED_AFTER_S of transfer, if each connection moves FAST_CONNECTION_BPS or more, the
# link isn't capping connections: extra ones only compete for the CPU, so they stop.
SHED_AFTER_S = 0.25
FAST_CONNECTION_BPS = 60e6  # a block with less left than twice this is not split


class FileTransfer:
    """Fetch the missing ranges of ``fp`` into ``part`` and return the file's SHA-256."""

    def __init__(
        self,
        hub: HubClient,
        url: Callable[[bool], str],  # url(refresh): the CDN URL, re-resolved when refresh
        part: Path,
        fp: FileProgress,
        size: int,
        config: TransferConfig,
        cancel: threading.Event,
        on_bytes: Callable[[int], None],
        on_checkpoint: Callable[[], None],
    ) -> None:
        self.hub, self._url, self.part, self.fp, self.size = hub, url, part, fp, size
        self.cfg, self.cancel = config, cancel
        self._on_bytes, self._on_checkpoint = on_bytes, on_checkpoint
        self._lock = threading.Condition()
        self._hasher: OrderedHasher | None = None
        self._hpos = 0
        self._ready: dict[int, tuple[int, bytes | None]] = {}  # start -> (end, data or on disk)
        self._blocks: list[_Block] = []
        self._active: set[_Block] = set()
        self._shed = False  # a fast link: extra connections stop taking blocks
        self._received = 0
        self._next = 0
        self._error: BaseException | None = None
        self._fd = -1
        self._last_checkpoint = 0.0
        self._url_cache: str | None = None

    # -- hashing the contiguous prefix -------------------------------------------------

    def _hash(self, data: bytes) -> None:
        assert self._hasher is not None
        self._hasher.feed(data)

    def _advance(self) -> None:
        """Hash every finished segment at the frontier. Called with the lock held."""
        assert self._hasher is not None
        while (seg := self._ready.pop(self._hpos, None)) is not None:
            end, data = seg
            if data is None:  # finished in an earlier run: read it once
                self._hasher.feed_from_disk(self._hpos, end)
            else:
                self._hasher.feed(data)
            self._hpos = end
        self._lock.notify_all()

    # -- scheduling ----------------------------------------------------------------------

    def _plan(self, connections: int) -> list[_Block]:
        missing = gaps(self.fp.done, self.size)
        if connections == 1:  # one long request per gap: no per-block round trips
            return [_Block(s, e, s) for s, e in missing]
        blocks = []
        for s, e in missing:
            # Equal blocks, a multiple of the connections in number, so that the connections
            # finish together instead of one fetching a short last block while others idle.
            n = -(-(e - s) // self.cfg.block_size)
            n = -(-n // connections) * connections
            step = -(-(e - s) // n)
            for b in range(s, e, step):
                blocks.append(_Block(b, min(e, b + step), b))
        return blocks

    def _take_block(self, window: int, first: bool) -> _Block | None:
        with self._lock:
            while True:
                if self._error is not None or self.cancel.is_set() or (self._shed and not first):
                    return None
                if self._next < len(self._blocks):
                    block = self._blocks[self._next]
                    if block.start < self._hpos + window:
                        self._next += 1
                        self._active.add(block)
                        return block
                    self._lock.wait(0.2)
                    continue
                victim = max(self._active, key=lambda b: b.end - b.pos, default=None)
                if victim is None or victim.end - victim.pos < 2 * MIN_STEAL:
                    return None
                mid = victim.pos + (victim.end - victim.pos) // 2
                block = _Block(mid, victim.end, mid)
                victim.end = mid
                self._active.add(block)
                return block

    def _checkpoint(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_checkpoint > 0.1:
            self._last_checkpoint = now
            self._on_checkpoint()

    # -- one block -------------------------------------------------------------------------

    def _current_url(self, refresh: bool = False) -> str:
        if refresh or self._url_cache is None:
            self._url_cache = self._url(refresh)
        return self._url_cache

    def _fetch_block(self, block: _Block) -> None:
        pos = block.start
        recorded = pos  # fp.done covers [block.start, recorded): bytes already on disk
        pending: list[bytes] = []  # received but not hashed yet: [pending_start, pos)
        pending_start = pos
        failures = 0
        refresh = False
        while pos < block.end:
            moved = False
            try:
                url = self._current_url(refresh)
                refresh = False
                end = block.end
                response = self.hub.stream(url, pos, end, idle_timeout=self.cfg.idle_timeout)
                try:
                    self._check_response(response, pos, end)
                    for chunk in batched(response.iter_raw(), MiB):
                        if self._error is not None:
                            return
                        if self.cancel.is_set():
                            raise Cancelled()
                        with self._lock:
                            # block.end may have shrunk: its tail went to another connection
                            chunk = chunk[: block.end - pos]
                            if not chunk:
                                break
                            self._write(chunk, pos)
                            moved = True
                            if not pending and self._hpos == pos:
                                self._hash(chunk)  # at the frontier: hash it now
                                self._hpos = pending_start = pos + len(chunk)
                                self._lock.notify_all()
                            else:
                                pending.append(chunk)
                                if self._hpos == pending_start:
                                    for c in pending:
                                        self._hash(c)
                                    self._hpos = pending_start = pos + len(chunk)
                                    pending.clear()
                                    self._lock.notify_all()
                            pos = block.pos = pos + len(chunk)
                            self._received += len(chunk)
                            # the state file is told in 1 MiB steps: fewer merges, same safety
                            if pos - recorded >= MiB or pos >= block.end:
                                add_range(self.fp.done, recorded, pos)
                                recorded = pos
                                self._checkpoint()
                        self._on_bytes(len(chunk))
                        if pos >= block.end:
                            break
                finally:
                    response.close()
                    if recorded < pos:
                        with self._lock:
                            add_range(self.fp.done, recorded, pos)
                            recorded = pos
                if pos < block.end:
                    raise TransientError("the connection closed before the range was complete")
            except (httpx.TransportError, httpx.TimeoutException, httpx.StreamError) as err:
                failures = self._failed(failures, moved, TransientError(f"{type(err).__name__}"))
            except TransientError as err:
                failures = self._failed(failures, moved, err)
            except UrlExpired:
                failures = self._failed(failures, moved, TransientError("signed URL refused"))
                refresh = True
        with self._lock:
            self._active.discard(block)
            if pending:
                self._ready[pending_start] = (pos, b"".join(pending))
            self._advance()

    def _failed(self, failures: int, moved: bool, err: TransientError) -> int:
        failures = 0 if moved else failures + 1  # an attempt that moved bytes resets the count
        if failures >= self.cfg.max_attempts_without_progress:
            raise HubUnreachableError(
                f"The download stopped making progress after {failures} attempts ({err}).",
                hint="The partial download is kept; run the download again to resume.",
            )
        self.cfg.sleep(self.cfg.backoff(max(1, failures), err.retry_after))
        return failures

    def _check_response(self, r: httpx.Response, start: int, end: int) -> None:
        if web_page(r):  # checked before a byte is written: a portal's page never lands
            host = f"{r.url.host}:{r.url.port}" if r.url.port else r.url.host
            raise not_the_hub(host, self.fp.remote_filename, r)
        if r.status_code == 206:
            cr = r.headers.get("content-range", "")
            try:
                unit_range, total = cr.split("/", 1)
                first = int(unit_range.split()[1].split("-")[0])
            except (ValueError, IndexError):
                raise TransientError(f"bad Content-Range {cr!r}") from None
            if first != start or (total != "*" and int(total) != self.size):
                raise RemoteChanged(f"the server sent {cr} for bytes {start}-{end - 1}")
            return
        if r.status_code == 200:
            if start == 0 and end == self.size:
                return  # asked for everything: a 200 is the whole file, as wanted
            raise RangeIgnored()
        if r.status_code == 416:
            raise RemoteChanged("416 Range Not Satisfiable")
        if r.status_code in (401, 403):
            raise UrlExpired()
        if r.status_code == 429 or r.status_code >= 500:
            raise TransientError(f"HTTP {r.status_code}", retry_after_seconds(r.headers))
        raise DownloadFailedError(f"The download server answered {r.status_code}.")

    def _write(self, chunk: bytes, pos: int) -> None:
        try:
            written = os.pwrite(self._fd, chunk, pos)
            while written < len(chunk):
                written += os.pwrite(self._fd, chunk[written:], pos + written)
        except OSError as err:
            if is_no_space(err):
                raise disk_full(
                    self.part.parent,
                    self.size - self.fp.done_bytes,
                    f"the rest of {self.fp.remote_filename}",
                    kept="then download again: the partial download is kept and resumes",
                ) from None
            raise

    def _final_checkpoint(self) -> None:
        """Record what arrived. If the transfer already failed (a full disk, most often, which
        fails this write too), that first error is the one reported; the state file on disk
        then still holds the last checkpoint, which resumes safely (it only lags)."""
        try:
            self._checkpoint(force=True)
        except (OSError, VibrantError) as err:
            if self._error is None and not self.cancel.is_set():
                raise
            log.warning("could not record the progress of %s: %s", self.part.name, err)

    # -- the whole file ----------------------------------------------------------------------

    def _worker(self, window: int, first: bool) -> None:
        run_in_background()
        try:
            while (block := self._take_block(window, first)) is not None:
                self._fetch_block(block)
        except BaseException as err:  # handed to run(), which raises it in the caller
            with self._lock:
                if self._error is None:
                    self._error = err
                self._lock.notify_all()

    def _watch(self, threads: list[threading.Thread]) -> None:
        """Wait for the connections; shed the extra ones early on if the link is fast."""
        first_byte: tuple[float, int] | None = None
        decided = len(threads) == 1
        while alive := [t for t in threads if t.is_alive()]:
            alive[0].join(0.05)
            if decided:
                continue
            now, received = time.monotonic(), self._received
            if first_byte is None:
                if received:
                    first_byte = (now, received)
            elif now - first_byte[0] >= SHED_AFTER_S:
                decided = True
                rate = (received - first_byte[1]) / (now - first_byte[0]) / len(threads)
                if rate >= FAST_CONNECTION_BPS:
                    self._shed = True

    def run(self) -> str:
        self.part.parent.mkdir(parents=True, exist_ok=True)
        try:
            # O_NOFOLLOW: a link planted at the partial's name is never written through.
            self._fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            if err.errno != errno.ELOOP:
                raise
            raise DownloadFailedError(
                f"{self.part} is a symbolic link; vibrant never writes through one.",
                hint=f"Remove it (`rm {self.part}`) and download again.",
                path=str(self.part),
            ) from None
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            raise DownloadFailedError(
                f"{self.part} is not a plain file.", hint="Remove it and download again."
            )
        self._hasher = OrderedHasher(self._fd)
        try:
            if os.fstat(self._fd).st_size != self.size:
                os.ftruncate(self._fd, self.size)
            with self._lock:
                for s, e in self.fp.done:
                    self._ready[s] = (e, None)
                self._advance()  # resume: the bytes already here are hashed once
            connections = max(1, self.cfg.connections)
            if self.size - self.fp.done_bytes < 2 * self.cfg.block_size:
                connections = 1
            self._blocks = self._plan(connections)
            connections = min(connections, len(self._blocks)) or 1
            window = connections * self.cfg.window_blocks_per_connection * self.cfg.block_size
            threads = [
                threading.Thread(
                    target=self._worker,
                    args=(window, i == 0),
                    name=f"vibrant-download-{i}",
                    daemon=True,
                )
                for i in range(connections)
            ]
            for t in threads:
                t.start()
            try:
                self._watch(threads)
            except BaseException:  # Ctrl-C in the main thread: stop the workers, keep the data
                self.cancel.set()
                for t in threads:
                    t.join(10)
                raise
            finally:
                self._final_checkpoint()
            if self._error is not None:
                raise self._error
            if self.cancel.is_set():
                raise Cancelled()
            if self._hpos != self.size:
                raise DownloadFailedError(
                    f"Internal error: hashed {self._hpos} of {self.size} bytes of {self.part.name}."
                )
            try:
                digest = self._hasher.finish()
                os.fsync(self._fd)  # a filesystem that allocates late says ENOSPC only here
            except OSError as err:
                if not is_no_space(err):
                    raise
                raise disk_full(
                    self.part.parent,
                    self.size,
                    f"{self.fp.remote_filename}",
                    kept="then download again: the partial download is kept and resumes",
                ) from None
            return digest
        finally:
            self._hasher.stop()
            os.close(self._fd)
