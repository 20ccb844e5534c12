"""The HTTP plumbing both servers share: one handler class per connection, with how it writes
replies (JSON, plain text, the Hub's error headers, injected statuses)."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from tests.support.hub.stub import HubServer, HubStub

__all__ = ["Replies", "StubError"]


class StubError(Exception):
    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Replies(BaseHTTPRequestHandler):
    """A connection to the endpoint or the CDN (``role``), and how it replies."""

    protocol_version = "HTTP/1.1"
    server_version = "hub-stub/1.0"
    sys_version = ""
    timeout = 120

    # per-request state
    _status: int = 0
    _sent: int = 0
    _record_this: bool = True
    conn_id: int = 0

    @property
    def stub(self) -> HubStub:
        return cast("HubServer", self.server).stub

    @property
    def role(self) -> str:
        return cast("HubServer", self.server).role

    def log_message(self, format: str, *args: Any) -> None:
        return

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn_id = self.stub._conn_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.stub._conn_closed(self.connection)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _start(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        self._status = status
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()

    def _send_simple(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json; charset=utf-8",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        hdrs = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        hdrs.extend(headers)
        self._start(status, hdrs)
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            self._sent += len(body)

    def _send_json(
        self, obj: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self._send_simple(status, json.dumps(obj).encode(), headers=headers)

    def _send_error_json(self, err: StubError) -> None:
        headers = [("X-Error-Message", err.message)]
        if err.code:
            headers.insert(0, ("X-Error-Code", err.code))
        self._send_json({"error": err.message}, status=err.status, headers=headers)

    def _send_fault_status(self, status: int) -> None:
        f = self.stub.faults
        headers: list[tuple[str, str]] = []
        if f.retry_after is not None:
            headers.append(("Retry-After", str(f.retry_after)))
        if status == 429:
            t = f.retry_after if f.retry_after is not None else 55
            headers.append(("RateLimit", f'"api";r=0;t={t}'))
            headers.append(("RateLimit-Policy", '"fixed window";"api";q=500;w=300'))
        msg = "Too Many Requests" if status == 429 else f"Injected status {status}"
        if self.role == "endpoint":
            headers.append(("X-Error-Message", msg))
            self._send_json({"error": msg}, status=status, headers=headers)
        else:
            self._send_simple(status, msg.encode(), "text/plain; charset=utf-8", headers)
