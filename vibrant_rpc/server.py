"""``vibrant-rpc``: the JSON-RPC server editors spawn, on stdio with LSP framing (pygls 2).

Handlers are thin: decode params into ``protocol`` Structs, call ``Service`` (plain
Python) on this server's own worker pool, encode the result. The event loop only
reads, writes and bookkeeps, so ``vibrant/status`` answers while a download and a
completion run. Nothing but protocol goes to stdout; logs go to stderr and, once
initialized, to ``window/logMessage``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import re
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.io_ import StdinAsyncReader
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol

from . import __version__
from . import protocol as p
from .errors import ConfigError, DownloadCancelledError, VibrantError

if TYPE_CHECKING:
    # The backend is imported after `initialize` is answered (see `build_backend`): an
    # editor waits for that answer, and these imports cost a tenth of a second.
    from .app import Vibrant
    from .config import Settings
    from .lifecycle import StateChange
    from .progress import Progress
    from .service import Service

log = logging.getLogger(__name__)

T = TypeVar("T")
P = TypeVar("P", bound=p.Params)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # bigger bodies are skipped unread, with an error reply
WORKERS = 8  # downloads, completions, loads and cache work; never the event loop
WORKER_NICE = 5


def _background_priority() -> None:
    """Run a worker thread (and the threads it starts: llama.cpp's, a download's) at a
    lower priority than the event loop, so that on a machine whose cores llama.cpp keeps
    busy the loop still gets a core within milliseconds."""
    with contextlib.suppress(OSError, AttributeError):
        # Linux: PRIO_PROCESS with a thread id sets that thread's nice value; raising it
        # needs no privilege.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)


class RpcError(JsonRpcException):
    """An error reply we mean to send (not a server bug): logged in one line, no traceback."""


def to_rpc_error(err: BaseException) -> JsonRpcException:
    if isinstance(err, JsonRpcException):
        return err
    if isinstance(err, p.InvalidParams):
        return RpcError(str(err), p.INVALID_PARAMS, err.data())
    if isinstance(err, DownloadCancelledError):
        return RpcError(err.message, p.REQUEST_CANCELLED, err.data())
    from .lifecycle import Cancelled  # loaded with the backend, before any request runs

    if isinstance(err, Cancelled):
        return RpcError("Cancelled.", p.REQUEST_CANCELLED, {"kind": "Cancelled"})
    if isinstance(err, VibrantError):
        return RpcError(err.message, err.code, err.data())
    log.error("internal error", exc_info=(type(err), err, err.__traceback__))
    return RpcError(
        f"Internal error: {type(err).__name__}: {err}",
        p.INTERNAL_ERROR,
        {"kind": "InternalError", "type": type(err).__name__},
    )


# -- the wire: framing and malformed input -----------------------------------------------


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
                self.reply_error(msg_id, p.INVALID_PARAMS, f"Invalid params for {method}: {cause}")
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


class _Writer:
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


# -- progress ---------------------------------------------------------------------------


class WorkDone:
    """``$/progress`` begin/report/end on one token; the client's cancel sets ``cancel``.

    Call on the event loop only (``VibrantServer.soon`` from worker threads).
    """

    def __init__(self, ls: VibrantServer, token: p.ProgressToken, cancel: threading.Event):
        self.ls, self.token, self.cancel = ls, token, cancel
        self.begun = self.ended = False

    def begin(self, title: str, message: str | None = None, percentage: int | None = None) -> None:
        if self.begun:
            return
        self.begun = True
        wdp = self.ls.work_done_progress
        wdp.begin(
            self.token,
            types.WorkDoneProgressBegin(
                title=title, cancellable=True, message=message, percentage=percentage
            ),
        )
        fut = wdp.tokens.get(self.token)
        if fut is not None:  # cancelled on window/workDoneProgress/cancel
            fut.add_done_callback(lambda f: self.cancel.set() if f.cancelled() else None)

    def report(self, message: str | None, percentage: int | None = None) -> None:
        if self.begun and not self.ended:
            self.ls.work_done_progress.report(
                self.token, types.WorkDoneProgressReport(message=message, percentage=percentage)
            )

    def end(self, message: str | None) -> None:
        if self.begun and not self.ended:
            self.ended = True
            self.ls.work_done_progress.end(self.token, types.WorkDoneProgressEnd(message=message))
            self.ls.work_done_progress.tokens.pop(self.token, None)

    def download(self, progress: p.DownloadProgress) -> None:
        total = progress.total_bytes
        pct = min(100, progress.downloaded_bytes * 100 // total) if total else None
        mb = progress.downloaded_bytes / 1e6
        text = f"{progress.state}: {mb:.1f} MB" + (f" of {total / 1e6:.1f} MB" if total else "")
        if progress.bytes_per_second > 0 and progress.state == "downloading":
            text += f", {progress.bytes_per_second / 1e6:.1f} MB/s"
        self.report(text, pct)

    def model_state(self, change: p.ModelStateChanged) -> None:
        if change.state == "loading":
            self.begin(f"Loading {change.model_id}", change.reason)
            self.report(f"loading {change.model_id}")
        elif change.state == "failed":
            self.report(change.reason)
        elif change.state == "ready":
            self.end(f"{change.model_id} ready")


# -- the server -------------------------------------------------------------------------


class VibrantServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__(
            "vibrant-rpc",
            __version__,
            text_document_sync_kind=types.TextDocumentSyncKind.None_,
            protocol_cls=VibrantProtocol,
        )
        self.protocol: VibrantProtocol
        # Our own pool: pygls' thread_pool reads stdin, and starving it would stall the
        # whole server.
        self.pool = concurrent.futures.ThreadPoolExecutor(
            WORKERS, thread_name_prefix="vibrant", initializer=_background_priority
        )
        self._service: Service | None = None  # built in the background after initialize
        self._service_ready: concurrent.futures.Future[Service] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.initialized = False
        self.exit_code = 1  # 0 once `shutdown` was answered, as LSP asks
        self.cancels: set[threading.Event] = set()  # of the requests running now

    async def backend(self) -> Service:
        """The service, once built; requests that come before it wait for it."""
        if self._service is not None:
            return self._service
        if self._service_ready is None:
            raise RpcError("The server is not initialized.", -32002, {"kind": "NotInitialized"})
        return await asyncio.wrap_future(self._service_ready)

    # -- running ---------------------------------------------------------------------

    def start_io(self, stdin: Any = None, stdout: Any = None) -> None:
        """Like pygls' own, with our framing loop (error replies for malformed input)."""
        reader = StdinAsyncReader(stdin or sys.stdin.buffer, self.thread_pool)
        self.protocol.set_writer(_Writer(stdout or sys.stdout.buffer))

        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await read_messages(reader, self.protocol)

        with contextlib.suppress(KeyboardInterrupt, SystemExit, BrokenPipeError):
            asyncio.run(serve())

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the event loop, from any thread."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(fn, *args)

    def notify(self, method: str, params: msgspec.Struct) -> None:
        self.protocol.notify(method, p.encode(params))

    async def blocking(self, fn: Callable[[], T], cancel: threading.Event | None = None) -> T:
        """Run ``fn`` on the worker pool; see ``stoppable``."""
        assert self.loop is not None
        return await self.stoppable(self.loop.run_in_executor(self.pool, fn), cancel)

    async def stoppable(self, fut: Awaitable[T], cancel: threading.Event | None) -> T:
        """Await work running elsewhere. When the request is cancelled, set ``cancel`` and
        wait for the work to stop, so that a -32800 means it really stopped."""
        inner = asyncio.ensure_future(fut)
        if cancel is not None:
            self.cancels.add(cancel)
        try:
            return await asyncio.shield(inner)
        except asyncio.CancelledError:
            if cancel is not None:
                cancel.set()
            with contextlib.suppress(BaseException):
                await inner
            raise
        finally:
            if cancel is not None:
                self.cancels.discard(cancel)

    async def progress_token(self, given: p.ProgressToken | None) -> p.ProgressToken | None:
        """The client's token, else one we create when the client supports that."""
        if given is not None:
            return given
        caps = self.client_capabilities
        if not (caps and caps.window and caps.window.work_done_progress):
            return None
        token = f"vibrant-{uuid.uuid4()}"
        try:
            await asyncio.wait_for(self.work_done_progress.create_async(token), 5)
        except Exception as err:  # the client refused or never answered: go without
            log.info("no progress token: %s", err)
            return None
        return token

    def shutdown_work(self, wait_s: float = 5.0) -> bool:
        """Stop downloads, unload the model, let the workers finish (bounded); True when
        they did."""
        for cancel in list(self.cancels):
            cancel.set()
        if self._service_ready is not None:
            with contextlib.suppress(Exception):
                self._service_ready.result(timeout=wait_s)
        service = self._service
        if service is not None:
            service.downloads.cancel_all()
            service.lifecycle.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        # Wait for the workers, but not forever: a load in llama.cpp can't be interrupted.
        waiter = threading.Thread(target=self.pool.shutdown, daemon=True)
        waiter.start()
        waiter.join(wait_s)
        return not waiter.is_alive()


class ClientLogHandler(logging.Handler):
    """Forwards our log records to the editor as ``window/logMessage``."""

    LEVELS = (
        (logging.ERROR, types.MessageType.Error),
        (logging.WARNING, types.MessageType.Warning),
        (logging.INFO, types.MessageType.Info),
    )

    def __init__(self, ls: VibrantServer) -> None:
        super().__init__(logging.INFO)
        self.ls = ls

    def emit(self, record: logging.LogRecord) -> None:
        if not self.ls.initialized:
            return
        kind = next((t for lv, t in self.LEVELS if record.levelno >= lv), types.MessageType.Log)
        params = types.LogMessageParams(type=kind, message=self.format(record))
        self.ls.soon(self.ls.window_log_message, params)


class _DropExpectedErrors(logging.Filter):
    """pygls logs a traceback for every error reply; ours are expected and logged briefly."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, RpcError)


# -- handlers ---------------------------------------------------------------------------

Handler = Callable[[VibrantServer, Any], Awaitable[msgspec.Struct]]
HANDLERS: dict[str, Handler] = {}


def rpc(
    method: str, params_type: type[P]
) -> Callable[[Callable[[VibrantServer, P], Awaitable[msgspec.Struct]]], Handler]:
    """Register a handler: raw params → ``params_type`` → handler → camelCase JSON."""

    def register(fn: Callable[[VibrantServer, P], Awaitable[msgspec.Struct]]) -> Handler:
        @functools.wraps(fn)
        async def handler(ls: VibrantServer, raw: Any) -> Any:
            try:
                params = p.decode_params(method, raw, params_type)
                result = await fn(ls, params)
            except asyncio.CancelledError:
                # $/cancelRequest: the work has stopped (see `stoppable`); answer -32800
                # with a kind, as every other error.
                raise RpcError("Cancelled.", p.REQUEST_CANCELLED, {"kind": "Cancelled"}) from None
            except Exception as err:
                rpc_err = to_rpc_error(err)
                log.info("%s: error %s: %s", method, rpc_err.code, rpc_err.message)
                raise rpc_err from None
            return p.encode(result)

        HANDLERS[method] = handler
        return handler

    return register


def _on_worker(method: str, params_type: type[p.Params], operation: str) -> None:
    """A method that is one blocking call of ``Service.<operation>`` on the worker pool."""

    async def handler(ls: VibrantServer, params: p.Params) -> msgspec.Struct:
        svc = await ls.backend()
        result: msgspec.Struct = await ls.blocking(lambda: getattr(svc, operation)(params))
        return result

    rpc(method, params_type)(handler)


_WORKER_METHODS: list[tuple[str, type[p.Params], str]] = [
    ("vibrant/listModels", p.ListModelsParams, "list_models"),
    ("vibrant/modelInfo", p.ModelInfoParams, "model_info"),
    ("vibrant/selectModel", p.SelectModelParams, "select_model"),
    ("vibrant/removeModel", p.RemoveModelParams, "remove_model"),
    ("vibrant/cacheStats", p.NoParams, "cache_stats"),
    ("vibrant/cleanCache", p.CleanCacheParams, "clean_cache"),
    ("vibrant/pruneCache", p.PruneCacheParams, "prune_cache"),
    ("vibrant/unloadModel", p.NoParams, "unload_model"),
    ("vibrant/cancelDownload", p.CancelDownloadParams, "cancel_download"),
    ("vibrant/checkUpdates", p.CheckUpdatesParams, "check_updates"),
]
for _method, _params, _operation in _WORKER_METHODS:
    _on_worker(_method, _params, _operation)


@rpc("vibrant/status", p.NoParams)
async def status(ls: VibrantServer, params: p.NoParams) -> msgspec.Struct:
    # Memory reads only: answered on the loop at once, whatever else is running.
    svc = await ls.backend()
    return svc.status(params)


async def _run_download_job(
    ls: VibrantServer,
    token_given: p.ProgressToken | None,
    titles: tuple[str, str],  # (while running, when done)
    start: Any,
) -> msgspec.Struct:
    """A download or update job, reported on $/progress, cancellable from the editor."""
    from .service import download_progress, download_result

    token = await ls.progress_token(token_given)
    work = WorkDone(ls, token, threading.Event()) if token is not None else None

    def on_progress(progress: Progress) -> None:  # a download thread
        if work is not None:
            ls.soon(work.download, download_progress(progress))

    job = await ls.blocking(lambda: start(on_progress))
    if work is not None:
        work.cancel = job.cancel_event  # the client's cancel of our progress stops the job
        work.begin(f"{titles[0]} {job.model_id}", percentage=0)
    try:
        result = await ls.stoppable(asyncio.wrap_future(job.future), job.cancel_event)
    except (asyncio.CancelledError, DownloadCancelledError):
        if work is not None:
            work.end("Cancelled; the partial download is kept")
        raise
    except Exception as err:
        if work is not None:
            work.end(f"Failed: {getattr(err, 'message', err)}")
        raise
    finally:
        job.unsubscribe(on_progress)
    if work is not None:
        work.end(f"{titles[1]} {result.model_id}")
    return download_result(result)


@rpc("vibrant/downloadModel", p.DownloadModelParams)
async def download_model(ls: VibrantServer, params: p.DownloadModelParams) -> msgspec.Struct:
    svc = await ls.backend()
    return await _run_download_job(
        ls,
        params.work_done_token,
        ("Downloading", "Downloaded"),
        lambda listener: svc.start_download(params, listener),
    )


@rpc("vibrant/updateModel", p.UpdateModelParams)
async def update_model(ls: VibrantServer, params: p.UpdateModelParams) -> msgspec.Struct:
    svc = await ls.backend()
    return await _run_download_job(
        ls,
        params.work_done_token,
        ("Updating", "Updated"),
        lambda listener: svc.start_update(params, listener),
    )


def _load_listener(
    ls: VibrantServer, work: WorkDone | None
) -> Callable[[StateChange], None] | None:
    if work is None:
        return None
    from .service import model_state

    return lambda change: ls.soon(work.model_state, model_state(change))


@rpc("vibrant/loadModel", p.LoadModelParams)
async def load_model(ls: VibrantServer, params: p.LoadModelParams) -> msgspec.Struct:
    svc = await ls.backend()
    cancel = threading.Event()
    token = await ls.progress_token(params.work_done_token)
    work = WorkDone(ls, token, cancel) if token is not None else None
    listener = _load_listener(ls, work)
    try:
        result: p.LoadModelResult = await ls.blocking(
            lambda: svc.load_model(params, cancel, listener), cancel
        )
    finally:
        if work is not None:
            ls.soon(work.end, None)  # after any report the worker queued
    if cancel.is_set():  # cancelled from the progress UI: the load itself can't stop
        raise RpcError("Cancelled.", p.REQUEST_CANCELLED, {"kind": "Cancelled"})
    return result


@rpc("vibrant/complete", p.CompleteParams)
async def complete(ls: VibrantServer, params: p.CompleteParams) -> msgspec.Struct:
    svc = await ls.backend()
    cancel = threading.Event()
    work = None
    if params.work_done_token is not None or svc.lifecycle.snapshot().state != "ready":
        # A load may come first: say so on a progress token.
        token = await ls.progress_token(params.work_done_token)
        work = WorkDone(ls, token, cancel) if token is not None else None
    on_text = None
    if (partial := params.partial_result_token) is not None:

        def on_text(text: str) -> None:  # the completion thread, once per piece
            value = p.encode(p.CompletionChunk(text=text))
            ls.soon(ls.protocol.notify, types.PROGRESS, types.ProgressParams(partial, value))

    try:
        return await ls.blocking(
            lambda: svc.complete(params, on_text, cancel, _load_listener(ls, work)),
            cancel,
        )
    finally:
        if work is not None:
            ls.soon(work.end, None)


# -- lifecycle of the server itself -------------------------------------------------------


def _settings(ls: VibrantServer, options: Any) -> Settings:
    """initializationOptions, then config.toml, then defaults; a bad option is dropped
    with a warning rather than leaving the editor without a server."""
    from .config import Settings, load_settings
    from .paths import Paths

    paths = Paths.from_env()
    overrides = dict(options) if isinstance(options, dict) else {}
    if options is not None and not isinstance(options, dict):
        _warn_user(ls, "initializationOptions must be an object; ignored.")
    for _ in range(len(overrides) + 1):
        try:
            return load_settings(paths.config, overrides)
        except ConfigError as err:
            _warn_user(ls, str(err))
            bad = err.details.get("setting")
            if bad in overrides:
                del overrides[bad]
            elif overrides:
                overrides = {}
            else:
                break
    return Settings()


def _warn_user(ls: VibrantServer, message: str) -> None:
    """From any thread: a warning in the log and in the editor's UI."""
    log.warning("%s", message)
    params = types.ShowMessageParams(type=types.MessageType.Warning, message=f"vibrant: {message}")
    ls.soon(ls.window_show_message, params)


def build_backend(ls: VibrantServer, options: Any) -> Service:
    """Settings, registry, cache, lifecycle: on a worker thread, after `initialize`."""
    from .app import Vibrant
    from .download_jobs import DownloadJobs
    from .lifecycle import Lifecycle
    from .service import Service, download_progress, model_state

    app = Vibrant(settings=_settings(ls, options))

    def state_changed(change: StateChange) -> None:
        ls.soon(ls.notify, "vibrant/modelStateChanged", model_state(change))
        reason = f" ({change.reason})" if change.reason else ""
        log.info("model %s: %s%s", change.model_id, change.state, reason)

    def download_progressed(progress: Progress) -> None:
        ls.soon(ls.notify, "vibrant/downloadProgress", download_progress(progress))

    lifecycle = Lifecycle(app, on_change=state_changed)
    downloads = DownloadJobs(app, ls.pool, on_progress=download_progressed)
    service = Service(app, lifecycle, downloads)
    ls._service = service
    for warning in app.warnings:
        log.warning("%s", warning)

    def clean() -> None:
        # Partial downloads nobody touched for a day go, as the README promises.
        try:
            removed = app.cache.clean_stale_partials()
        except Exception:
            log.exception("cleaning stale partial downloads failed")
            return
        if removed.removed:
            log.info("removed stale partial downloads: %s", ", ".join(removed.removed))

    ls.pool.submit(clean)  # requests need not wait for it
    ls.pool.submit(warm_up_runtime, app)
    _check_updates_later(ls, service, app.settings.update_check_delay_s)
    return service


def warm_up_runtime(app: Vibrant) -> None:
    """With a model downloaded, a completion may come soon: import llama.cpp now."""
    from .runtime import warm_up

    try:
        if app.cache.entries():
            warm_up()
    except Exception:  # the first load will say what is wrong, with its own error
        log.exception("warming up llama.cpp failed")


def _check_updates_later(ls: VibrantServer, service: Service, delay_s: float) -> None:
    loop = ls.loop
    if loop is None or loop.is_closed():
        return

    def submit() -> None:
        with contextlib.suppress(RuntimeError):  # the server is shutting down
            ls.pool.submit(weekly_update_check, ls, service)

    loop.call_soon_threadsafe(lambda: loop.call_later(delay_s, submit))


UPDATE_POLL_S = 6 * 3600  # how often a long-running server asks whether a week has passed


def weekly_update_check(ls: VibrantServer, service: Service) -> None:
    """At most once a week and never offline: look for updates, tell the editor, and with
    the autoUpdate setting download them in the background."""
    from .offline import is_offline

    if is_offline():  # no network at all, and not even the import of the HTTP client
        return
    from .updates import UpdateSchedule

    try:
        check = UpdateSchedule(service.app).run_if_due()
    except Exception as err:  # the editor has nothing to do about a failed background check
        log.info("background update check failed: %s", getattr(err, "message", err))
        check = None
    for update in check.updates if check else []:
        auto = service.app.settings.auto_update
        ls.soon(ls.notify, "vibrant/updateAvailable", service.update_available(update, auto))
        if auto:
            log.info("auto-update: downloading %s in the background", update.model_id)
            service.downloads.start(update.model_id, update=True)
    _check_updates_later(ls, service, UPDATE_POLL_S)


def on_initialize(ls: VibrantServer, params: types.InitializeParams) -> None:
    if ls._service_ready is not None:
        log.warning("initialize sent twice; the first one's settings stay")
        return
    options = params.initialization_options
    ready: concurrent.futures.Future[Service] = concurrent.futures.Future()
    ls._service_ready = ready

    def start() -> None:  # on the loop, once the answer to `initialize` is written
        fut = ls.pool.submit(build_backend, ls, options)
        fut.add_done_callback(lambda f: _chain(f, ready))

    assert ls.loop is not None
    ls.loop.call_soon(start)


def _chain(
    src: concurrent.futures.Future[Service], dst: concurrent.futures.Future[Service]
) -> None:
    if (err := src.exception()) is not None:
        log.error("the backend failed to start: %s", err)
        dst.set_exception(err)
    else:
        dst.set_result(src.result())


def on_initialized(ls: VibrantServer, params: types.InitializedParams) -> None:
    ls.initialized = True


async def on_shutdown(ls: VibrantServer, params: None) -> None:
    ls.exit_code = 0
    for cancel in list(ls.cancels):  # running completions and downloads stop now
        cancel.set()
    if ls._service_ready is not None:
        try:
            service = await ls.backend()
        except Exception:
            return  # it never started: nothing to stop
        service.downloads.cancel_all()
        assert ls.loop is not None
        await ls.loop.run_in_executor(ls.pool, service.lifecycle.close)


def create_server() -> VibrantServer:
    ls = VibrantServer()
    ls.feature(types.INITIALIZE)(on_initialize)
    ls.feature(types.INITIALIZED)(on_initialized)
    ls.feature(types.SHUTDOWN)(on_shutdown)
    for method, handler in HANDLERS.items():
        ls.feature(method)(handler)
    return ls


def _configure_logging(level: str, ls: VibrantServer) -> None:
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [stderr]
    root.setLevel(logging.WARNING)
    ours = logging.getLogger("vibrant_rpc")
    ours.setLevel(getattr(logging, level.upper(), logging.INFO))
    client = ClientLogHandler(ls)
    client.setFormatter(logging.Formatter("%(message)s"))
    ours.addHandler(client)
    logging.getLogger("pygls.protocol.json_rpc").addFilter(_DropExpectedErrors())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vibrant-rpc", description=__doc__.splitlines()[0])
    parser.add_argument("--stdio", action="store_true", help="ignored: stdio is the transport")
    parser.add_argument("--log-level", default=os.environ.get("VIBRANT_LOG_LEVEL", "info"))
    parser.add_argument("--version", action="version", version=f"vibrant-rpc {__version__}")
    args, unknown = parser.parse_known_args(argv)
    ls = create_server()
    _configure_logging(args.log_level, ls)
    if unknown:
        log.warning("ignoring arguments %s", " ".join(unknown))
    try:
        ls.start_io()
    finally:
        finished = ls.shutdown_work()
    if not finished:
        # A worker is stuck in llama.cpp; the interpreter would wait for it at exit.
        log.warning("exiting with work still running")
        logging.shutdown()
        os._exit(ls.exit_code)
    return ls.exit_code


if __name__ == "__main__":
    sys.exit(main())
