"""The wire: LSP framing on stdio, malformed input, and error replies.

pygls parses well-formed LSP; editors and hostile clients send more than that. Every
message body passes ``VibrantProtocol.handle_body``, which never raises: whatever is
wrong gets an error reply (when it has an id to answer) and the server reads on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from typing import Any

from pygls.exceptions import JsonRpcException
from pygls.protocol import LanguageServerProtocol

from .. import protocol as p
from ..errors import InvalidParams, VibrantException
from ..redact import redact

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # bigger bodies are skipped unread, with an error reply


# Not in errors.py: a pygls exception, and pygls is the transport's alone. It carries a
# VibrantException (or a wire-level code) the last step to the reply.
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
        redact(f"Internal error: {type(err).__name__}: {err}"),
        p.INTERNAL_ERROR,
        {"kind": "InternalError", "type": type(err).__name__},
    )


class DropExpectedErrors(logging.Filter):
    """pygls logs a traceback for every error reply; ours are expected and logged briefly."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, RpcError)


# Request methods a notification must not run (LSP's own, and every vibrant/* method).
_LSP_REQUESTS = {"initialize", "shutdown"}


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

    def _knows(self, method: str) -> bool:
        try:
            self._get_handler(method)
        except JsonRpcException:
            return False
        return True

    def reply_error(
        self, msg_id: Any, code: int, message: str, data: dict[str, Any] | None = None
    ) -> None:
        """An error reply written as JSON-RPC 2.0 has it: with ``"id": null`` when the
        request's id is unknown (pygls' serialiser would leave the member out)."""
        kind = next((e.kind for e in p.ERROR_CODES if e.code == code), "Error")
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": msg_id,
                "error": {"code": code, "message": message, "data": data or {"kind": kind}},
            }
        ).encode()
        if self.writer is not None:
            self.writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def handle_body(self, body: bytes) -> None:
        """One message body: parse, check the envelope, dispatch; never raises."""
        try:
            data = json.loads(body)
        except UnicodeDecodeError as err:
            self._not_utf8(body, err)
            return
        except RecursionError:
            self._too_deep(body)
            return
        except ValueError as err:
            self.reply_error(None, p.PARSE_ERROR, f"Parse error: {err}")
            return
        if isinstance(data, list):
            self.reply_error(None, p.INVALID_REQUEST, "Batches are not supported.")
            return
        if not isinstance(data, dict):
            self.reply_error(None, p.INVALID_REQUEST, "A message must be a JSON object.")
            return
        msg_id = data.get("id")
        if msg_id is not None and (not isinstance(msg_id, int | str) or isinstance(msg_id, bool)):
            self.reply_error(None, p.INVALID_REQUEST, "`id` must be a string or an integer.")
            return
        problem = _envelope_problem(data)
        if problem is not None:
            if "result" not in data and "error" not in data:  # never answer a response
                self.reply_error(msg_id, p.INVALID_REQUEST, problem)
            return
        method = data.get("method")
        if method is None:  # a response to one of our requests
            self._dispatch(data, None, False)
            return
        is_request = "id" in data
        if is_request and self._shutdown and method != "exit":
            self.reply_error(msg_id, p.INVALID_REQUEST, "The server is shutting down.")
            return
        # pygls answers `$/cancelRequest` (and ignores other `$/` notifications) itself,
        # without a registered handler: pass them on.
        if not method.startswith("$/") and not self._knows(method):
            if is_request:
                self.reply_error(
                    msg_id,
                    p.METHOD_NOT_FOUND,
                    f"Unhandled method {method}",
                    {"kind": "MethodNotFound", "method": method},
                )
            else:
                log.info("ignoring notification of unknown method %s", method)
            return
        if not is_request and (method in p.METHOD_TABLE or method in _LSP_REQUESTS):
            log.warning("%s is a request, sent as a notification: ignored", method)
            return
        self._dispatch(data, method, is_request)

    def _dispatch(self, data: dict[str, Any], method: str | None, is_request: bool) -> None:
        msg_id = data.get("id")
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
            log.exception("failed to handle %s", method or "a response")
            if is_request:
                self.reply_error(msg_id, p.INTERNAL_ERROR, f"Internal error in {method}.")

    def _too_deep(self, body: bytes) -> None:
        """Valid JSON nested deeper than the parser recurses (about 980 levels): answer the
        request by its id, read from the top level alone, or the editor waits forever."""
        reason = (
            "nested too deeply to parse (arrays and objects about 980 levels inside each other)"
        )
        top = _top_level_scalars(body)
        msg_id, method = top.get("id"), top.get("method")
        if isinstance(msg_id, int | str) and not isinstance(msg_id, bool):
            where = f" for {method}" if isinstance(method, str) else ""
            self.reply_error(
                msg_id,
                InvalidParams.code,
                f"Invalid params{where}: {reason}.",
                {"kind": InvalidParams.kind, "field": "", "reason": reason},
            )
        else:
            self.reply_error(None, p.PARSE_ERROR, f"Parse error: the message is {reason}.")

    def _not_utf8(self, body: bytes, err: UnicodeDecodeError) -> None:
        """A body that is not UTF-8 is a parse error; but when the rest parses, answer the
        request by its id, so that the editor's request does not wait forever."""
        reason = f"The message is not valid UTF-8 (byte {err.start} is {body[err.start]:#04x})."
        try:
            data = json.loads(body.decode("utf-8", errors="replace"))
        except (ValueError, RecursionError):
            data = None
        msg_id = data.get("id") if isinstance(data, dict) else None
        if isinstance(msg_id, int | str) and not isinstance(msg_id, bool):
            self.reply_error(
                msg_id,
                InvalidParams.code,
                f"Invalid params: {reason} Send text as UTF-8.",
                {"kind": InvalidParams.kind, "field": "", "reason": reason},
            )
        else:
            self.reply_error(None, p.PARSE_ERROR, f"Parse error: {reason}")


def _envelope_problem(data: dict[str, Any]) -> str | None:
    """Why ``data`` is not a JSON-RPC 2.0 request, notification or response (None: it is)."""
    if data.get("jsonrpc") != "2.0":
        return 'Not a JSON-RPC 2.0 message: `jsonrpc` must be "2.0".'
    if "method" in data:
        if not isinstance(data["method"], str):
            return "`method` must be a string."
        return None  # params that are not an object are the handler's -32602
    if "id" in data and ("result" in data) != ("error" in data):
        return None  # a response
    return "A message needs a `method` (or, for a response, an `id` and a result or error)."


# What no bracket count needs: everything but quotes and brackets (one C-speed pass).
_NOT_STRUCTURE = re.compile(rb'[^"\[\]{}]+')
_WHOLE_STRING = re.compile(rb'"[^"]*"')  # in text whose escaped quotes are blanked
_ENVELOPE_KEY = re.compile(rb'"(id|method)"\s*:\s*')
_SCALAR = re.compile(rb'"[^"]*"|-?[0-9][0-9.eE+-]*')
_MAX_KEYS_TRIED = 10_000  # keys named "id" or "method" looked at (a few ms), then give up


def _top_level_scalars(body: bytes) -> dict[str, Any]:
    """``id`` and ``method`` of a JSON object too deep for ``json.loads``, found without
    recursion: a key counts where its brackets are balanced to the top level. Linear, and
    every step a C-speed search or count, since this runs on the event loop (a 10 MB body
    of brackets takes milliseconds, where a loop over characters took seconds).
    Empty when the top level holds neither."""
    # Blank escapes, equal lengths kept: the quotes left delimit strings exactly.
    clean = body.replace(b"\\\\", b"  ").replace(b'\\"', b"  ")
    out: dict[str, Any] = {}
    depth, in_string, done = 0, False, 0
    for tried, m in enumerate(_ENVELOPE_KEY.finditer(clean)):
        if tried == _MAX_KEYS_TRIED:
            break
        depth, in_string = _advance(clean[done : m.start()], depth, in_string)
        done = m.start()
        if in_string or depth != 1:
            continue
        value = _SCALAR.match(clean, m.end())
        if value is not None:
            try:
                out[m.group(1).decode()] = json.loads(body[value.start() : value.end()])
            except ValueError:
                continue
    return out


def _advance(segment: bytes, depth: int, in_string: bool) -> tuple[int, bool]:
    """Depth and whether inside a string, after ``segment`` (escaped quotes blanked)."""
    marks = _NOT_STRUCTURE.sub(b"", segment)
    if in_string:
        close = marks.find(b'"')
        if close < 0:
            return depth, True
        marks = marks[close + 1 :]
    if b'"' in marks:
        marks = _WHOLE_STRING.sub(b"", marks)
    opened = marks.find(b'"')  # a string that goes on past the segment
    if opened >= 0:
        marks, in_string = marks[:opened], True
    depth += marks.count(b"[") + marks.count(b"{") - marks.count(b"]") - marks.count(b"}")
    return depth, in_string


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


_CONTENT_LENGTH = re.compile(rb"content-length:", re.IGNORECASE)
_DIGITS = re.compile(rb"^[0-9]{1,19}$")
MAX_HEADER_LINE = 64 * 1024  # a "header" longer than this is not one: resynchronise
_CHUNK = 1 << 16


class FrameReader:
    """Buffered reads from stdin on a worker thread, with a way to resynchronise on the
    next ``Content-Length`` header after garbage."""

    def __init__(self, stdin: Any, executor: Any) -> None:
        self._stdin, self._executor = stdin, executor
        self._buf = bytearray()
        self._eof = False

    async def _fill(self) -> bool:
        if self._eof:
            return False
        loop = asyncio.get_running_loop()
        read = getattr(self._stdin, "read1", self._stdin.read)
        chunk = await loop.run_in_executor(self._executor, read, _CHUNK)
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    async def readline(self) -> bytes | None:
        """One header line; None at EOF; b"" stands for a line too long to be a header."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                return line
            if len(self._buf) > MAX_HEADER_LINE:
                return b""
            if not await self._fill():
                if self._buf:  # a last line without its newline
                    line = bytes(self._buf)
                    self._buf.clear()
                    return line
                return None

    async def readexactly(self, n: int) -> bytes | None:
        while len(self._buf) < n:
            if not await self._fill():
                return None
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def skip_to_next_header(self) -> bool:
        """Drop bytes up to the next ``Content-Length:``, in bounded memory; False at EOF."""
        keep = len(b"content-length:") - 1
        while True:
            m = _CONTENT_LENGTH.search(self._buf)
            if m is not None:
                del self._buf[: m.start()]
                return True
            if len(self._buf) > keep:
                del self._buf[: len(self._buf) - keep]
            if not await self._fill():
                return False


async def read_messages(reader: FrameReader, protocol: VibrantProtocol) -> None:
    """LSP framing (``Content-Length`` headers, then the body) until EOF or ``exit``.

    A header block without a usable length, or announcing more than MAX_MESSAGE_BYTES, gets
    an error reply; then the reader skips to the next ``Content-Length`` header. It never
    stops reading while the editor is there.
    """
    while True:
        length: bytes | None = None
        seen_header = False
        while True:
            line = await reader.readline()
            if line is None:
                return  # EOF: the editor went away
            stripped = line.strip()
            if not stripped:
                if line == b"":  # a line too long to be a header: garbage
                    seen_header = True
                    length = b"(garbage)"
                    break
                if seen_header:
                    break
                continue  # blank lines between messages
            seen_header = True
            # Anywhere in the line: after a body whose length was wrong, the rest of that
            # body comes first and the next message's header is glued to its end.
            if (m := _CONTENT_LENGTH.search(stripped)) is not None:
                length = stripped[m.end() :].strip()
        if length is None or not _DIGITS.match(length):
            what = "missing" if length is None else f"invalid ({length[:40]!r})"
            protocol.reply_error(None, p.PARSE_ERROR, f"Parse error: Content-Length {what}.")
            if not await reader.skip_to_next_header():
                return
            continue
        size = int(length)
        if size > MAX_MESSAGE_BYTES:
            protocol.reply_error(
                None, p.INVALID_REQUEST, f"Message larger than {MAX_MESSAGE_BYTES} bytes."
            )
            if not await reader.skip_to_next_header():
                return
            continue
        body = await reader.readexactly(size)
        if body is None:
            return
        protocol.handle_body(body)
