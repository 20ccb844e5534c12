"""HTTP to an engine: one client per engine, streamed answers that another thread can end.

A completion streams (docs/engines.md: llama-server stops generating when a *streamed*
request's client goes away, and runs a non-streamed one to its end). Ending one must be
possible while its thread is blocked in a read: before the first piece (llama-server
sends its status line only with the first token, after the whole prompt is evaluated)
or between pieces. ``socket.close`` from another thread does not wake a blocked
``recv`` and keeps the connection open until the read returns; ``shutdown`` does both.
So the client's network backend remembers the socket each thread reads from, and a
``Watch`` shuts it down on a cancel, or when the engine stays silent past its deadline:
the first piece may take ``first_token_timeout_s`` (a cold load on the engine can take a
minute), each later one ``token_timeout_s``.

The key goes in the ``Authorization`` header of requests to the engine's own URL only:
redirects are not followed (a 3xx is an error) and the environment's proxies and .netrc
are not read (``trust_env=False``), so no other host ever sees it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal
from urllib.parse import urlsplit

import httpcore
import httpx
import msgspec

from ..config import EngineSettings
from ..errors import (
    EngineError,
    EngineKeyRefusedError,
    EngineUnreachableError,
    ModelNotServedError,
    VibrantError,
)
from ..inference.model import CompletionRequest
from ..inference.text_stream import TextStream
from ..redact import redact
from ..states import FinishReason
from .events import sse_events

# How often a watch looks at its cancel event and deadline: what it adds to a cancel that
# arrives while the thread is blocked in a read (between pieces the reader itself checks,
# and llama-server stops only at its next token anyway: 20-30 ms apart here). Each look
# wakes a thread that, when the engine runs on the same cores, takes a slice from it.
WATCH_POLL_S = 0.02

log = logging.getLogger(__name__)


class _Stream(httpcore.NetworkStream):
    """httpcore's stream, noting before each read which socket this thread reads."""

    def __init__(self, inner: httpcore.NetworkStream, backend: ReadingBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._backend.reading(self._inner.get_extra_info("socket"))
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout), self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class ReadingBackend(httpcore.NetworkBackend):
    """Connects as httpcore does; ``interrupt(thread)`` ends that thread's read."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._lock = threading.Lock()
        self._reads: dict[int, socket.socket] = {}
        self._shut: set[int] = set()  # threads whose read ``interrupt`` ended

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _Stream(inner, self)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:  # pragma: no cover - engines are reached over TCP
        raise NotImplementedError("engines are reached over TCP")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def reading(self, sock: socket.socket | None) -> None:
        if sock is not None:
            with self._lock:
                self._reads[threading.get_ident()] = sock

    def interrupt(self, thread: int) -> None:
        with self._lock:
            sock = self._reads.pop(thread, None)
            if sock is not None:
                self._shut.add(thread)
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked recv; the peer sees EOF

    def was_interrupted(self, thread: int) -> bool:
        """Whether ``interrupt`` ended this thread's read (a cancel, a deadline), not the
        engine."""
        with self._lock:
            return thread in self._shut

    def forget(self, thread: int) -> None:
        with self._lock:
            self._reads.pop(thread, None)
            self._shut.discard(thread)


# Failures of a request on a connection the engine had already closed: nothing was read.
_STALE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class _Transport(httpx.HTTPTransport):
    """httpx's transport over a ``ReadingBackend`` (httpx takes no backend of its own).

    A request that meets a kept connection the engine closed as it went out (an idle
    timeout; llama-server after each streamed answer) fails before any answer came back:
    the engine never saw it, so it goes again, once, on a new connection, as urllib3 and
    Go's net/http do. Not one whose read this process ended itself (a cancel, a
    deadline). Every request to an engine (probes, health, completions) goes through
    here, so each gets the same rule."""

    def __init__(self, backend: ReadingBackend, limits: httpx.Limits) -> None:
        super().__init__(trust_env=False, limits=limits)
        self._backend = backend
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return super().handle_request(request)
        except _STALE as err:
            if self._backend.was_interrupted(threading.get_ident()):
                raise
            log.debug("%s: a kept connection was closed (%s); sending again", request.url, err)
            return super().handle_request(request)


def host_port(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


class EngineClient:
    """One engine's HTTP client: its URL, its key, its timeouts."""

    def __init__(self, name: str, settings: EngineSettings, key: str | None) -> None:
        self.name = name
        self.settings = settings
        self.url = settings.url.rstrip("/")
        self.where = host_port(self.url)
        self.backend = ReadingBackend()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # The read timeout is a backstop only: a Watch enforces the first-token and
        # between-token deadlines, which one httpx timeout can't tell apart.
        backstop = max(settings.first_token_timeout_s, settings.token_timeout_s) + 5.0
        self.http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(backstop, connect=settings.connect_timeout_s),
            transport=_Transport(self.backend, httpx.Limits(max_keepalive_connections=8)),
            follow_redirects=False,
            trust_env=False,
        )

    def close(self) -> None:
        self.http.close()

    def get_json(self, path: str, timeout_s: float | None = None) -> Any:
        """GET ``path``'s JSON; the engine's errors as vibrant's."""
        timeout = httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s
        try:
            response = self.http.get(path, timeout=timeout)
        except httpx.TransportError as err:
            raise self.unreachable(err) from None
        if response.status_code >= 300:
            raise self.refusal(response.status_code, response.content, path)
        try:
            return msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            raise EngineError(
                f"The engine {self.name!r} at {self.where} answered {path} with something "
                "that is not JSON: is the url that of an inference server?",
                engine=self.name,
            ) from None

    def unreachable(self, err: Exception, *, mid_answer: bool = False) -> EngineUnreachableError:
        what = describe(err)
        if mid_answer:
            message = f"The engine {self.name!r} at {self.where} stopped in the middle of an "
            message += f"answer ({what})."
        else:
            message = f"The engine {self.name!r} at {self.where} can't be reached ({what})."
        return EngineUnreachableError(
            message,
            hint="Is it running, and is the url in its [engines] setting right? With "
            'fallback = "local" the local model answers meanwhile.',
            engine=self.name,
            address=self.where,
        )

    def refusal(self, status: int, body: bytes, path: str) -> VibrantError:
        """The error an answer with ``status`` (not 2xx) means."""
        said = engine_message(body)
        if status in (401, 403):
            source = self.settings.api_key_env or self.settings.api_key_file
            hint = (
                f"Check the key in {source} (the [engines.{self.name}] setting names it)."
                if source
                else f"The engine wants a key: name one with api_key_env or api_key_file in "
                f"[engines.{self.name}]."
            )
            return EngineKeyRefusedError(
                f"The engine {self.name!r} at {self.where} refused the key ({status}: {said}).",
                hint=hint,
                engine=self.name,
                status=status,
            )
        if status == 404 and "model" in said.lower():
            return ModelNotServedError(
                f"The engine {self.name!r} at {self.where} does not serve that model ({said}).",
                hint=f"Leave `model` out of [engines.{self.name}] to use the one it serves.",
                engine=self.name,
            )
        if 300 <= status < 400:
            said = "a redirect, not followed: the key goes to the engine's own url only"
        return EngineError(
            f"The engine {self.name!r} at {self.where} answered {path} with {status}: {said}",
            engine=self.name,
            status=status,
        )


class _ErrorBody(msgspec.Struct):
    error: Any = None
    message: str | None = None
    detail: Any = None


def engine_message(body: bytes) -> str:
    """The engine's own words from an error body (llama-server and OpenAI:
    ``{"error": {"message"}}``; vLLM: ``{"message"}`` or ``{"detail"}``), redacted."""
    try:
        parsed = msgspec.json.decode(body, type=_ErrorBody)
    except msgspec.DecodeError:
        text = body.decode("utf-8", "replace").strip()
        return redact(text[:300]) or "no message"
    said: Any = parsed.error
    if isinstance(said, dict):
        said = said.get("message") or said
    said = said or parsed.message or parsed.detail or "no message"
    return redact(str(said)[:300])


def describe(err: Exception) -> str:
    if isinstance(err, httpx.ConnectTimeout):
        return "no answer to the connection"
    if isinstance(err, httpx.ConnectError):
        text = str(err)
        return "connection refused" if "refused" in text.lower() else text or "can't connect"
    if isinstance(err, httpx.RemoteProtocolError | httpx.ReadError):
        return "connection closed"
    return str(err) or type(err).__name__


class Watch:
    """Ends one streamed answer from outside its thread: on ``cancel``, or when the engine
    is silent past its deadline. ``stop()`` before the answer's connection goes back to
    the pool; nothing is shut down after it."""

    def __init__(self, client: EngineClient, cancel: threading.Event) -> None:
        self.client = client
        self.cancel = cancel
        self.thread = threading.get_ident()
        self.timed_out: str | None = None  # why the watch ended the read
        self._lock = threading.Lock()
        self._active = True
        self._deadline = time.monotonic() + client.settings.first_token_timeout_s
        self._waiting = "first token"
        self._watcher = threading.Thread(target=self._run, name="engine-watch", daemon=True)
        self._watcher.start()

    def piece(self) -> None:
        """A piece arrived: the next may take ``token_timeout_s``."""
        self._deadline = time.monotonic() + self.client.settings.token_timeout_s
        self._waiting = "next token"

    def ending(self, grace_s: float) -> None:
        """The engine's last event arrived: the rest of its answer may take ``grace_s``."""
        self._deadline = time.monotonic() + grace_s
        self._waiting = "end of the answer"

    def stop(self) -> None:
        with self._lock:
            self._active = False
        self.client.backend.forget(self.thread)

    def _run(self) -> None:
        settings = self.client.settings
        while True:
            left = self._deadline - time.monotonic()
            cancelled = self.cancel.wait(max(0.0, min(WATCH_POLL_S, left)))
            with self._lock:
                if not self._active:
                    return
                if not cancelled and time.monotonic() < self._deadline:
                    continue
                if not cancelled:
                    limit = (
                        settings.first_token_timeout_s
                        if self._waiting == "first token"
                        else settings.token_timeout_s
                    )
                    self.timed_out = f"no {self._waiting} within {limit:g} s"
                self._active = False
                self.client.backend.interrupt(self.thread)
                return


# What an event means to the reader (``on_event``'s answer): read on; the text is over on
# vibrant's side (the pipeline or a stop string), so close the connection and the engine
# stops; or the engine's own last event, so read the rest of the answer (its terminator,
# a usage chunk, ``[DONE]``) and the connection goes back to the pool.
Step = Literal["more", "cut", "end"]
# After the engine's last event, how long the rest of its answer may take before the
# connection is closed anyway: it follows in the same write or the next.
END_GRACE_S = 0.5


class Streamed(msgspec.Struct, kw_only=True):
    """What one streamed answer gave: the events' data, or why it ended early."""

    cancelled: bool = False
    started: bool = False  # the engine sent its status and a first piece
    ended: bool = False  # the engine sent its last event
    ms: float = 0.0


def stream_events(
    client: EngineClient,
    path: str,
    body: dict[str, Any],
    cancel: threading.Event,
    on_event: Callable[[bytes], Step],
    events: Callable[[httpx.Response], Iterator[bytes]] = sse_events,
    *,
    keep: bool = True,
) -> Streamed:
    """POST ``body`` to ``path`` with ``"stream": true`` and hand each event's data to
    ``on_event`` (its ``Step`` says what the event means); ``events`` splits the answer
    into events (server-sent events, or ``ndjson_lines`` for Ollama). A cancel or a cut
    ends the read and closes the connection, which is what makes the engine stop
    (docs/engines.md). An answer the engine ends itself is read to its end, so that the
    next keystroke's request reuses the connection: to a team box over a network, a new
    connection (TCP, and TLS behind a proxy) would cost round trips every keystroke."""
    started = time.perf_counter()
    out = Streamed()
    watch = Watch(client, cancel)
    try:
        # keep=False: an engine that closes the connection after every streamed answer
        # (llama-server) says so in its answer, and the connection is not pooled.
        headers = None if keep else {"Connection": "close"}
        with client.http.stream("POST", path, json=body, headers=headers) as response:
            if response.status_code >= 300:
                response.read()
                raise client.refusal(response.status_code, response.content, path)
            out.started = True
            for data in events(response):
                if cancel.is_set():
                    break
                if out.ended:
                    continue  # the rest of an answer the engine has ended
                watch.piece()
                step = "end" if data == b"[DONE]" else on_event(data)
                if step == "cut":
                    break
                if step == "end":
                    out.ended = True
                    watch.ending(END_GRACE_S)
            # Before the connection can go back to the pool: nothing may shut it after.
            watch.stop()
            out.cancelled = cancel.is_set()
    except httpx.TransportError as err:
        watch.stop()
        if cancel.is_set():
            out.cancelled = True
        elif out.ended:
            pass  # the answer was whole; only what follows its end did not come
        elif watch.timed_out is not None:
            raise EngineUnreachableError(
                f"The engine {client.name!r} at {client.where} gave {watch.timed_out}.",
                hint="It may be overloaded or stuck; first_token_timeout_s and "
                f"token_timeout_s in [engines.{client.name}] set how long to wait.",
                engine=client.name,
                address=client.where,
            ) from None
        else:
            raise client.unreachable(err, mid_answer=out.started) from None
    finally:
        watch.stop()
    out.ms = (time.perf_counter() - started) * 1000
    return out


class Pieces:
    """The engine's text pieces through the same ``TextStream`` the local model's tokens
    go through: the request's stop strings (held back while they may begin one) and its
    text filter (the completion pipeline), so an engine's completion ends where a local
    one would. ``feed`` is True once the text is over: the stream is then closed, and
    the engine stops generating."""

    def __init__(
        self, req: CompletionRequest, on_text: Callable[[str], None] | None, stops: list[str]
    ) -> None:
        self.stream = TextStream(list(dict.fromkeys([*req.stop, *stops])), on_text,
                                 req.text_filter)  # fmt: skip
        self.ended = False

    def feed(self, piece: str) -> bool:
        if not self.ended and piece and self.stream.feed(piece.encode("utf-8")):
            self.ended = True
        return self.ended

    def text(self) -> str:
        return self.stream.finish(self.ended)

    def ending(
        self, client: EngineClient, streamed: Streamed, finish: FinishReason | None
    ) -> tuple[str, FinishReason]:
        """The text and why it ended: cancelled, cut by a stop string or the pipeline (the
        stream closed early), or the engine's own ``finish`` (None: the answer broke off
        before the engine said it was done, an error)."""
        if streamed.cancelled:
            return "", "cancelled"
        text = self.text()
        if self.ended:
            return text, "stop"
        if finish is None:
            raise client.unreachable(EOFError("the answer ended early"), mid_answer=True)
        return text, finish
