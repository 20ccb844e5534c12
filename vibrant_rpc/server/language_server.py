"""The language server object: its worker pool, the loop, progress tokens, the log.

Handlers (``handlers.py``) run on its event loop; blocking work goes to ``pool`` (never
the loop), and the loop only reads, writes and bookkeeps, so ``vibrant/status``
answers while a download and a completion run. Nothing but protocol goes to stdout;
logs go to stderr and, once initialized, to ``window/logMessage``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from lsprotocol import types
from pygls.lsp.server import LanguageServer

from .. import __version__
from .. import protocol as p
from . import codec
from .wire import FrameReader, RpcError, VibrantProtocol, Writer, read_messages

if TYPE_CHECKING:
    # The service is imported after `initialize` is answered: an editor waits for that
    # answer, and these imports cost a tenth of a second.
    from ..service import Service

log = logging.getLogger(__name__)

T = TypeVar("T")
# Downloads, completions, loads and cache work; never the event loop. They run at the
# loop's priority, as does llama.cpp's thread (llama_setup.COMPUTE), which the first load
# starts from a worker (threads inherit nice). A worker at nice +5, as before, was
# starved on a busy machine while that thread ran the next completion, so a superseded
# request's -32800 came seconds late.
WORKERS = 8


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
        self.pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="vibrant")
        self._service: Service | None = None  # built in the background after initialize
        self._service_ready: concurrent.futures.Future[Service] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.initialized = False
        self.exit_code = 1  # 0 once `shutdown` was answered, as LSP asks
        self.cancels: set[threading.Event] = set()  # of the requests running now

    async def service(self) -> Service:
        """The service, once built; requests that come before it wait for it."""
        if self._service is not None:
            return self._service
        if self._service_ready is None:
            raise RpcError(
                "The server is not initialized.",
                p.SERVER_NOT_INITIALIZED,
                {"kind": "NotInitialized"},
            )
        return await asyncio.wrap_future(self._service_ready)

    # -- running ---------------------------------------------------------------------

    def start_io(self, stdin: Any = None, stdout: Any = None) -> None:
        """Like pygls' own, with our framing loop (error replies for malformed input)."""
        reader = FrameReader(stdin or sys.stdin.buffer, self.thread_pool)
        self.protocol.set_writer(Writer(stdout or sys.stdout.buffer))

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
        self.protocol.notify(method, codec.encode(params))

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
        if self._service is not None:
            self._service.close()
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
