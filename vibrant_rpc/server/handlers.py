"""One thin handler per method: decode params into the method table's type, call the
service (blocking calls on the worker pool), encode the result.

Errors need no mapping here: vibrant's errors carry their own code and kind
(``errors.py``), and ``wire.to_rpc_error`` turns anything else into -32603.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from lsprotocol import types

from .. import protocol as p
from ..errors import Cancelled
from . import codec
from .language_server import VibrantServer
from .wire import to_rpc_error
from .work_done import WorkDone

if TYPE_CHECKING:
    from ..completion.lifecycle import StateChange
    from ..download.jobs import Ticket
    from ..download.progress import Progress
    from ..service import Service

log = logging.getLogger(__name__)

P = TypeVar("P", bound=p.Params)
R = TypeVar("R", bound=msgspec.Struct)
Handler = Callable[[VibrantServer, Any], Awaitable[Any]]
HANDLERS: dict[str, Handler] = {}


def rpc(method: str) -> Callable[[Callable[[VibrantServer, P], Awaitable[R]]], Handler]:
    """Register a handler: raw params → the method table's params type → handler →
    camelCase JSON."""
    params_type = p.METHOD_TABLE[method].params

    def register(fn: Callable[[VibrantServer, P], Awaitable[R]]) -> Handler:
        @functools.wraps(fn)
        async def handler(ls: VibrantServer, raw: Any) -> Any:
            try:
                params: Any = codec.decode_params(method, raw, params_type)
                result = await fn(ls, params)
            except asyncio.CancelledError:
                # $/cancelRequest: the work has stopped (see `stoppable`); answer -32800
                # with a kind, as every other error.
                raise to_rpc_error(Cancelled()) from None
            except Exception as err:
                rpc_err = to_rpc_error(err)
                log.info("%s: error %s: %s", method, rpc_err.code, rpc_err.message)
                raise rpc_err from None
            return codec.encode(result)

        HANDLERS[method] = handler
        return handler

    return register


# -- models and the cache: one blocking call each --------------------------------------


@rpc("vibrant/listModels")
async def list_models(ls: VibrantServer, params: p.ListModelsParams) -> p.ListModelsResult:
    svc = await ls.service()
    return await ls.blocking(lambda: svc.list_models(params))


@rpc("vibrant/modelInfo")
async def model_info(ls: VibrantServer, params: p.ModelInfoParams) -> p.ModelEntry:
    svc = await ls.service()
    return await ls.blocking(lambda: svc.model_info(params))


@rpc("vibrant/selectModel")
async def select_model(ls: VibrantServer, params: p.SelectModelParams) -> p.SelectModelResult:
    svc = await ls.service()
    return await ls.blocking(lambda: svc.select_model(params))


@rpc("vibrant/fitModel")
async def fit_model(ls: VibrantServer, params: p.FitModelParams) -> p.FitResult:
    svc = await ls.service()
    return await ls.blocking(lambda: svc.fit_model(params))


@rpc("vibrant/removeModel")
async def remove_model(ls: VibrantServer, params: p.RemoveModelParams) -> p.RemoveModelResult:
    svc = await ls.service()
    return await ls.blocking(lambda: svc.remove_model(params))


@rpc("vibrant/cacheStats")
async def cache_stats(ls: VibrantServer, params: p.NoParams) -> p.CacheStatsResult:
    svc = await ls.service()
    return await ls.blocking(lambda: svc.cache_stats(params))


@rpc("vibrant/cleanCache")
async def clean_cache(ls: VibrantServer, params: p.CleanCacheParams) -> p.RemovalResult:
    svc = await ls.service()
    return await ls.blocking(lambda: svc.clean_cache(params))


@rpc("vibrant/pruneCache")
async def prune_cache(ls: VibrantServer, params: p.PruneCacheParams) -> p.RemovalResult:
    svc = await ls.service()
    return await ls.blocking(lambda: svc.prune_cache(params))


@rpc("vibrant/unloadModel")
async def unload_model(ls: VibrantServer, params: p.NoParams) -> p.UnloadModelResult:
    svc = await ls.service()
    return await ls.blocking(lambda: svc.unload_model(params))


@rpc("vibrant/cancelDownload")
async def cancel_download(
    ls: VibrantServer, params: p.CancelDownloadParams
) -> p.CancelDownloadResult:
    svc = await ls.service()
    return await ls.blocking(lambda: svc.cancel_download(params))


@rpc("vibrant/checkUpdates")
async def check_updates(ls: VibrantServer, params: p.CheckUpdatesParams) -> p.CheckUpdatesResult:
    svc = await ls.service()
    return await ls.blocking(lambda: svc.check_updates(params))


@rpc("vibrant/status")
async def status(ls: VibrantServer, params: p.NoParams) -> p.StatusResult:
    # Memory reads only: answered on the loop at once, whatever else is running.
    svc = await ls.service()
    return svc.status(params)


# -- downloads and updates: shared jobs, $/progress ------------------------------------


async def _wait_for_download(
    ls: VibrantServer,
    token_given: p.ProgressToken | None,
    titles: tuple[str, str],  # (while running, when done)
    join: Callable[[Callable[[Progress], None]], Ticket],
) -> p.DownloadModelResult:
    """Wait on a download or update job, reported on $/progress; a cancel (of the request
    or of its progress) leaves the job, which stops when nobody else waits for it."""
    from ..service import download_progress, download_result

    token = await ls.progress_token(token_given)
    ticket: Ticket | None = None

    def leave() -> None:
        if ticket is not None:
            ticket.leave()

    work = WorkDone(ls, token, leave) if token is not None else None

    def on_progress(progress: Progress) -> None:  # a download thread
        if work is not None:
            ls.soon(work.download, download_progress(progress))

    ticket = await ls.blocking(lambda: join(on_progress))
    if work is not None:
        work.begin(f"{titles[0]} {ticket.model_id}", percentage=0)
    waiting = asyncio.wrap_future(ticket.future)
    try:
        try:
            result = await asyncio.shield(waiting)
        except asyncio.CancelledError:
            ticket.leave()  # ends at once, or once the transfer stopped if we were the last
            with contextlib.suppress(BaseException):
                await waiting
            raise
    except (asyncio.CancelledError, Cancelled):
        if work is not None:
            work.end("Cancelled; the partial download is kept")
        raise
    except Exception as err:
        if work is not None:
            work.end(f"Failed: {getattr(err, 'message', err)}")
        raise
    if work is not None:
        work.end(f"{titles[1]} {result.model_id}")
    return download_result(result)


@rpc("vibrant/downloadModel")
async def download_model(ls: VibrantServer, params: p.DownloadModelParams) -> p.DownloadModelResult:
    svc = await ls.service()
    return await _wait_for_download(
        ls,
        params.work_done_token,
        ("Downloading", "Downloaded"),
        lambda listener: svc.start_download(params, listener),
    )


@rpc("vibrant/updateModel")
async def update_model(ls: VibrantServer, params: p.UpdateModelParams) -> p.DownloadModelResult:
    svc = await ls.service()
    return await _wait_for_download(
        ls,
        params.work_done_token,
        ("Updating", "Updated"),
        lambda listener: svc.start_update(params, listener),
    )


# -- the loaded model ------------------------------------------------------------------


def _load_listener(
    ls: VibrantServer, work: WorkDone | None
) -> Callable[[StateChange], None] | None:
    if work is None:
        return None
    from ..service import model_state

    return lambda change: ls.soon(work.model_state, model_state(change))


@rpc("vibrant/loadModel")
async def load_model(ls: VibrantServer, params: p.LoadModelParams) -> p.LoadModelResult:
    svc = await ls.service()
    cancel = threading.Event()
    token = await ls.progress_token(params.work_done_token)
    work = WorkDone(ls, token, cancel.set) if token is not None else None
    listener = _load_listener(ls, work)
    try:
        result: p.LoadModelResult = await ls.blocking(
            lambda: svc.load_model(params, cancel, listener), cancel
        )
    finally:
        if work is not None:
            ls.soon(work.end, None)  # after any report the worker queued
    if cancel.is_set():  # cancelled from the progress UI: the load itself can't stop
        raise Cancelled()
    return result


@rpc("vibrant/complete")
async def complete(ls: VibrantServer, params: p.CompleteParams) -> p.CompleteResult:
    svc = await ls.service()
    cancel = threading.Event()
    work = None
    if params.work_done_token is not None or svc.lifecycle.snapshot().state != "ready":
        # A load may come first: say so on a progress token.
        token = await ls.progress_token(params.work_done_token)
        work = WorkDone(ls, token, cancel.set) if token is not None else None
    on_text = None
    if (partial := params.partial_result_token) is not None:

        def on_text(text: str) -> None:  # the completion thread, once per piece
            value = codec.encode(p.CompletionChunk(text=text))
            ls.soon(ls.protocol.notify, types.PROGRESS, types.ProgressParams(partial, value))

    try:
        return await ls.blocking(
            lambda: svc.complete(params, on_text, cancel, _load_listener(ls, work)),
            cancel,
        )
    finally:
        if work is not None:
            ls.soon(work.end, None)


# -- the server's own lifecycle ----------------------------------------------------------


class _Notifications:
    """The service's events as notifications to the editor (from any thread)."""

    def __init__(self, ls: VibrantServer) -> None:
        self.ls = ls

    def model_state_changed(self, change: p.ModelStateChanged) -> None:
        self.ls.soon(self.ls.notify, "vibrant/modelStateChanged", change)

    def download_progress(self, progress: p.DownloadProgress) -> None:
        self.ls.soon(self.ls.notify, "vibrant/downloadProgress", progress)

    def update_available(self, update: p.UpdateAvailable) -> None:
        self.ls.soon(self.ls.notify, "vibrant/updateAvailable", update)


def _warn_user(ls: VibrantServer, message: str) -> None:
    """From any thread: a warning in the log and in the editor's UI."""
    log.warning("%s", message)
    params = types.ShowMessageParams(type=types.MessageType.Warning, message=f"vibrant: {message}")
    ls.soon(ls.window_show_message, params)


def build_service(ls: VibrantServer, options: Any) -> Service:
    """Settings, registry, cache, lifecycle: on a worker thread, after `initialize`.
    initializationOptions, then config.toml, then defaults; a bad option is dropped with
    a warning rather than leaving the editor without a server."""
    from ..config import read_settings
    from ..paths import Paths
    from ..service import Service

    if options is not None and not isinstance(options, dict):
        _warn_user(ls, "initializationOptions must be an object; ignored.")
    overrides = dict(options) if isinstance(options, dict) else {}
    settings, warnings = read_settings(Paths.from_env().config, overrides)
    for warning in warnings:
        _warn_user(ls, warning)
    service = Service.build(settings, ls.pool, _Notifications(ls))
    ls._service = service
    service.start_background()
    return service


def on_initialize(ls: VibrantServer, params: types.InitializeParams) -> None:
    if ls._service_ready is not None:
        log.warning("initialize sent twice; the first one's settings stay")
        return
    options = params.initialization_options
    ready: concurrent.futures.Future[Service] = concurrent.futures.Future()
    ls._service_ready = ready

    def start() -> None:  # on the loop, once the answer to `initialize` is written
        fut = ls.pool.submit(build_service, ls, options)
        fut.add_done_callback(lambda f: _chain(f, ready))

    assert ls.loop is not None
    ls.loop.call_soon(start)


def _chain(
    src: concurrent.futures.Future[Service], dst: concurrent.futures.Future[Service]
) -> None:
    if (err := src.exception()) is not None:
        log.error("the service failed to start: %s", err)
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
            service = await ls.service()
        except Exception:
            return  # it never started: nothing to stop
        assert ls.loop is not None
        await ls.loop.run_in_executor(ls.pool, service.close)


def register(ls: VibrantServer) -> None:
    ls.feature(types.INITIALIZE)(on_initialize)
    ls.feature(types.INITIALIZED)(on_initialized)
    ls.feature(types.SHUTDOWN)(on_shutdown)
    for method, handler in HANDLERS.items():
        ls.feature(method)(handler)
