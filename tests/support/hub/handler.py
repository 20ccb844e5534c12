"""One request: the control API under /_stub, the injected statuses, then the endpoint's or the
CDN's answer; every request but a control one is recorded."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import traceback
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tests.support.hub.endpoint import Endpoint
from tests.support.hub.replies import StubError

__all__ = ["Handler", "RequestRecord"]


@dataclass
class RequestRecord:
    """One request as the stub saw it (control requests under /_stub are not
    recorded).  Header names are lower-cased."""

    host: str  # "endpoint" or "cdn"
    method: str
    path: str  # raw request target, query included
    headers: dict[str, str]
    status: int
    range: str | None
    body_bytes_sent: int
    conn_id: int
    time: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Handler(Endpoint):
    """The request handler both servers use; ``role`` says which server it answers for."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self._status = 0
        self._sent = 0
        split = urlsplit(self.path)
        self._record_this = not (self.role == "endpoint" and split.path.startswith("/_stub/"))
        self.stub._answering()
        try:
            if not self._record_this:
                self._control(split.path, self._read_body())
                return
            self._read_body()  # keep the connection in sync
            status = self.stub._take_status(self.role)
            if status is not None:
                self._send_fault_status(status)
                return
            if self.role == "cdn":
                self._cdn(split.path, split.query)
            else:
                self._endpoint(split.path, split.query)
        except StubError as err:
            if self._status == 0:
                self._send_error_json(err)
            else:
                self.close_connection = True
        except (OSError, ValueError) as exc:
            # Client went away (BrokenPipe, reset, timeout) or bad input.
            self.close_connection = True
            if isinstance(exc, ValueError) and self._status == 0:
                with contextlib.suppress(OSError):
                    self._send_json({"error": str(exc)}, status=400)
        except Exception:
            traceback.print_exc()
            self.close_connection = True
            if self._status == 0:
                with contextlib.suppress(OSError):
                    self._send_json({"error": "internal stub error"}, status=500)
        finally:
            self.stub._record(
                None
                if not self._record_this
                else RequestRecord(
                    host=self.role,
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    status=self._status,
                    range=self.headers.get("Range"),
                    body_bytes_sent=self._sent,
                    conn_id=self.conn_id,
                    time=time.time(),
                )
            )

    # ---- control API ---------------------------------------------------

    def _control(self, path: str, body: bytes) -> None:
        stub = self.stub
        try:
            payload = json.loads(body) if body else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"bad JSON: {exc}") from exc
        if path == "/_stub/faults":
            if self.command == "POST":
                if not isinstance(payload, dict):
                    raise ValueError("faults body must be a JSON object")
                stub.set_faults(**payload)
            with stub._lock:
                self._send_json(stub.faults.to_dict())
        elif path == "/_stub/faults/reset" and self.command == "POST":
            stub.reset_faults()
            with stub._lock:
                self._send_json(stub.faults.to_dict())
        elif path == "/_stub/stats":
            self._send_json(stub.stats())
        elif path == "/_stub/reset" and self.command == "POST":
            stub.reset_stats()
            self._send_json({"ok": True})
        elif path == "/_stub/publish" and self.command == "POST":
            commit = stub._publish_from_json(payload)
            self._send_json({"commit": commit})
        else:
            self._send_json({"error": "no such control path"}, status=404)
