"""The CDN: blobs by SHA-256 behind signed, expiring URLs, with byte ranges and the body
faults (drop, stall, corrupt, throttle). The endpoint serves non-LFS files through
``_serve_blob`` too, without the faults."""

from __future__ import annotations

import hmac
import re
import time
from email.utils import formatdate
from typing import Any, BinaryIO, cast
from urllib.parse import parse_qs

from tests.support.hub.content import Blob
from tests.support.hub.faults import BodyPlan
from tests.support.hub.replies import Replies, StubError

__all__ = ["CHUNK", "Cdn", "parse_range"]

CHUNK = 1 << 20  # 1 MiB
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def parse_range(header: str, total: int) -> tuple[int, int] | str | None:
    """(start, end) inclusive, "unsatisfiable", or None (ignore the header)."""
    m = _RANGE.match(header)
    if not m:
        return None
    a, b = m.group(1), m.group(2)
    if not a and not b:
        return None
    if not a:  # suffix range: last N bytes
        n = int(b)
        if n == 0 or total == 0:
            return "unsatisfiable"
        return max(0, total - n), total - 1
    start = int(a)
    if start >= total:
        return "unsatisfiable"
    end = int(b) if b else total - 1
    if end < start:
        return None
    return start, min(end, total - 1)


class Cdn(Replies):
    """Serves blobs: the CDN's signed URLs, and whole or ranged bodies with faults."""

    def _cdn(self, path: str, query: str) -> None:
        if self.command not in ("GET", "HEAD"):
            raise StubError(405, None, "Method Not Allowed")
        if not path.startswith("/blobs/"):
            raise StubError(404, None, "Not Found")
        sha = path[len("/blobs/") :]
        params = parse_qs(query)
        expires = params.get("expires", [""])[0]
        sig = params.get("sig", [""])[0]
        if not expires.isdigit() or not hmac.compare_digest(sig, self.stub._sign(sha, expires)):
            self._send_simple(403, b"AccessDenied: bad signature", "text/plain; charset=utf-8")
            return
        if int(expires) < time.time():
            self._send_simple(
                403, b"AccessDenied: Request has expired", "text/plain; charset=utf-8"
            )
            return
        with self.stub._lock:
            blob = self.stub._blobs.get(sha)
        if blob is None:
            self._send_simple(404, b"NoSuchKey", "text/plain; charset=utf-8")
            return
        self._serve_blob(blob, extra=[("ETag", f'"{blob.sha256}"')], faults=True)

    def _serve_blob(self, blob: Blob, extra: list[tuple[str, str]], faults: bool) -> None:
        total = blob.size
        rng_header = self.headers.get("Range")
        rng: tuple[int, int] | str | None = None
        if rng_header and not (faults and self.stub.faults.ignore_range):
            rng = parse_range(rng_header, total)
        common = [
            ("Accept-Ranges", "bytes"),
            ("Content-Type", "application/octet-stream"),
            ("Last-Modified", formatdate(usegmt=True)),
            *extra,
        ]
        if rng == "unsatisfiable":
            self._send_simple(
                416,
                b"",
                "text/plain; charset=utf-8",
                [("Content-Range", f"bytes */{total}"), ("Accept-Ranges", "bytes")],
            )
            return
        if isinstance(rng, tuple):
            start, end = rng
            status = 206
            common.append(("Content-Range", f"bytes {start}-{end}/{total}"))
        else:
            start, end = 0, total - 1
            status = 200
        length = end - start + 1
        self._start(status, [("Content-Length", str(length)), *common])
        if self.command == "HEAD" or length <= 0:
            return
        plan = self.stub._take_body_plan(start, end) if faults else BodyPlan()
        self._send_body(blob, start, length, plan, count_served=faults)

    def _send_body(
        self, blob: Blob, start: int, length: int, plan: BodyPlan, count_served: bool
    ) -> None:
        cut = length
        action: str | None = None
        if plan.drop_after is not None and plan.drop_after < cut:
            cut, action = plan.drop_after, "drop"
        if plan.stall_after is not None and plan.stall_after < cut:
            cut, action = plan.stall_after, "stall"
        try:
            self._stream(blob, start, cut, plan, count_served)
        finally:
            if action is not None:
                self.close_connection = True
        if action == "stall":
            self.stub._stop_event.wait(plan.stall_seconds)

    def _stream(
        self, blob: Blob, start: int, count: int, plan: BodyPlan, count_served: bool
    ) -> None:
        stub = self.stub
        slow = plan.corrupt_offset is not None or (count_served and stub.faults.throttle_bps)
        if blob.path is not None:
            with blob.path.open("rb") as f:
                if not slow:
                    self._sendfile(f, start, count, count_served)
                else:
                    f.seek(start)
                    self._paced(lambda n: f.read(n), start, count, plan, count_served)
        else:
            data = memoryview(cast(bytes, blob.data))
            pos = start

            def read(n: int) -> bytes:
                nonlocal pos
                chunk = bytes(data[pos : pos + n])
                pos += len(chunk)
                return chunk

            self._paced(read, start, count, plan, count_served)

    def _sendfile(self, f: BinaryIO, start: int, count: int, count_served: bool) -> None:
        sent = 0
        try:
            sent = self.connection.sendfile(f, start, count)
        except OSError:
            sent = max(0, f.tell() - start)
            raise
        finally:
            self._sent += sent
            if count_served:
                self.stub._add_served(sent)

    def _paced(
        self,
        read: Any,
        start: int,
        count: int,
        plan: BodyPlan,
        count_served: bool,
    ) -> None:
        stub = self.stub
        sent = 0
        rate_base_t = time.monotonic()
        rate_base_sent = 0
        last_rate: int | None = None
        while sent < count:
            rate = stub.faults.throttle_bps if count_served else None
            if rate is not None and rate <= 0:
                rate = None
            if rate != last_rate:
                rate_base_t, rate_base_sent, last_rate = time.monotonic(), sent, rate
            if rate:
                n = max(1, min(CHUNK, rate // 50, count - sent))
                # Token bucket, one chunk deep: this chunk may go once the
                # bytes already sent (since the rate was set) are paid for.
                due = rate_base_t + (sent - rate_base_sent) / rate
                delay = due - time.monotonic()
                if delay > 0 and stub._stop_event.wait(delay):
                    raise ConnectionAbortedError("stub stopping")
            else:
                n = min(CHUNK, count - sent)
            chunk = read(n)
            if not chunk:
                raise OSError("blob shorter than expected")
            if plan.corrupt_offset is not None:
                rel = plan.corrupt_offset - (start + sent)
                if 0 <= rel < len(chunk):
                    buf = bytearray(chunk)
                    buf[rel] ^= 0xFF
                    chunk = bytes(buf)
            self.wfile.write(chunk)
            sent += len(chunk)
            self._sent += len(chunk)
            if count_served:
                stub._add_served(len(chunk))
