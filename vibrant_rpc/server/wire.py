"""The wire: LSP framing on stdio, malformed input, and error replies.

pygls parses well-formed LSP; editors and hostile clients send more than that. Every
message body passes ``VibrantProtocol.handle_body``, which never raises: whatever is
wrong gets an error reply (when it has an id to answer) and the server reads on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.io_ import StdinAsyncReader
from pygls.protocol import LanguageServerProtocol

from .. import protocol as p
from ..errors import InvalidParams, VibrantException

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # bigger bodies are skipped unread, with an error reply


class RpcError(JsonRpcException):
    """An error reply we mean to send (not a server bug): logged in one line, no traceback."""


def to_rpc_error(err: BaseException) -> JsonRpcException:
    """An exception as the error reply it is: vibrant's errors carry their own code."""
    if isinstance(err, JsonRpcException):
        return err
    if isinstance(err, VibrantException):
        return RpcError(err.message, err.code, err.data())
    log.error("internal error", exc_info=(type(err), err, err.__traceback__))
    return RpcError(
        f"Internal error: {type(err).__name__}: {err}",
        p.INTERNAL_ERROR,
        {"kind": "InternalError", "type": type(err).__name__},
    )


class DropExpectedErrors(logging.Filter):
    """pygls logs a traceback for every error reply; ours are expected and logged briefly."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, RpcError)


class VibrantProtocol(LanguageServerProtocol):
    """pygls' protocol, but params of ``vibrant/*`` stay raw JSON (we decode them with
    msgspec, naming bad fields) and malformed messages get error replies."""

    def structure_message(self, data: dict[str, Any]) -> Any:
        method = data.get("method")
        if isinstance(method, str) and method.startswith("vibrant/"):
            if "id" in data:
                return _RawRequest(data["id"], method, data["jsonrpc"], data.get("params"))
            return _RawNotification(method, data["jsonrpc"], data.get("params"))
        return super().structure_message(data)

    def _get_handler(self, feature_name: str) -> Any:
        try:
            return super()._get_handler(feature_name)
        except JsonRpcException as err:  # unknown method: say so with a kind, like the rest
            err.data = {"kind": "MethodNotFound", "method": feature_name}
            raise

    def reply_error(self, msg_id: Any, code: int, message: str) -> None:
        kind = next((e.kind for e in p.ERROR_CODES if e.code == code), "Error")
        self._send_response(
            msg_id, error=types.ResponseError(code=code, message=message, data={"kind": kind})
        )

    def handle_body(self, body: bytes) -> None:
        """One message body: parse, check the envelope, dispatch; never raises."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as err:
            self.reply_error(None, p.PARSE_ERROR, f"Parse error: {err}")
            return
        if not isinstance(data, dict):
            self.reply_error(None, p.INVALID_REQUEST, "A message must be a JSON object.")
            return
        msg_id = data.get("id")
        if msg_id is not None and (not isinstance(msg_id, int | str) or isinstance(msg_id, bool)):
            self.reply_error(None, p.INVALID_REQUEST, "`id` must be a string or an integer.")
            return
        method = data.get("method")
        is_request = "id" in data and "method" in data
        if data.get("jsonrpc") != "2.0" or ("method" in data and not isinstance(method, str)):
            if "id" in data:
                self.reply_error(msg_id, p.INVALID_REQUEST, "Not a JSON-RPC 2.0 message.")
            return
        try:
            message = self.structure_message(data)
        except Exception as err:  # lsprotocol could not structure an LSP message's params
            cause = err.__cause__ or err
            log.warning("malformed %s message: %s", method or "response", cause)
            if is_request:
                self.reply_error(
                    msg_id, InvalidParams.code, f"Invalid params for {method}: {cause}"
                )
            return
        try:
            self.handle_message(message)
        except SystemExit:
            raise  # the `exit` notification
        except Exception:
            log.exception("failed to handle %s", method)
            if is_request:
                self.reply_error(msg_id, p.INTERNAL_ERROR, f"Internal error in {method}.")


class _RawRequest:
    __slots__ = ("id", "jsonrpc", "method", "params")

    def __init__(self, id: Any, method: str, jsonrpc: str, params: Any) -> None:
        self.id, self.method, self.jsonrpc, self.params = id, method, jsonrpc, params


class _RawNotification:
    __slots__ = ("jsonrpc", "method", "params")

    def __init__(self, method: str, jsonrpc: str, params: Any) -> None:
        self.method, self.jsonrpc, self.params = method, jsonrpc, params


class Writer:
    """stdout for pygls; after ``exit`` closed it, late replies and logs are dropped
    quietly (pygls would report each failed write, which writes again...)."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self._lock = threading.Lock()  # a message is written whole, from any thread
        self.closed = False

    def write(self, data: bytes) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                self._out.write(data)
                self._out.flush()
            except (OSError, ValueError):  # the editor went away
                self.closed = True

    def close(self) -> None:
        with self._lock:
            self.closed = True
            with contextlib.suppress(OSError, ValueError):
                self._out.close()


_CONTENT_LENGTH = re.compile(rb"^content-length:\s*(\d+)\s*$", re.IGNORECASE)


async def read_messages(reader: StdinAsyncReader, protocol: VibrantProtocol) -> None:
    """LSP framing (``Content-Length`` headers, then the body) until EOF or ``exit``."""
    length: int | None = None
    while True:
        line = await reader.readline()
        if not line:
            return  # EOF: the editor went away
        if m := _CONTENT_LENGTH.match(line.strip()):
            length = int(m.group(1))
            continue
        if line.strip():
            continue  # another header (Content-Type): nothing to do
        if length is None:
            continue  # a blank line without a length: skip it
        size, length = length, None
        if size > MAX_MESSAGE_BYTES:
            while size > 0:  # skip it in pieces rather than hold it in memory
                chunk = await reader.readexactly(min(size, 1 << 20))
                if not chunk:
                    return
                size -= len(chunk)
            protocol.reply_error(
                None, p.INVALID_REQUEST, f"Message larger than {MAX_MESSAGE_BYTES} bytes."
            )
            continue
        body = await reader.readexactly(size)
        if len(body) < size:
            return
        protocol.handle_body(body)
