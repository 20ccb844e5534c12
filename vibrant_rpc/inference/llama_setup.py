"""llama_cpp imported once and set up for a server: its log into Python logging (and
captured for load errors), no AMX weight repacking where that crashes, load errors in
words, and the one thread its work runs on (``COMPUTE``). llama_cpp itself is imported
lazily (``llama_cpp_module``): the import takes about 0.12 s and 36 MB (``python -X
importtime -c "import llama_cpp"``, best of 18 runs on 2 cores; over 0.4 s while they are
busy), which the server's start-up must not pay."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from vibrant_rpc.errors import ModelLoadFailedError

T = TypeVar("T")

# llama.cpp's own log; its INFO level is a page per load, so it arrives here as DEBUG.
llama_log = logging.getLogger("vibrant_rpc.llama_cpp")


# ggml's log levels (ggml.h); llama-cpp-python's own logger still uses an older numbering.
_GGML_WARN, _GGML_ERROR, _GGML_CONT = 3, 4, 5


class _LlamaLog:
    """Everything llama.cpp and ggml log: to ``llama_log``, and to the captures open now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._captures: list[list[tuple[int, str]]] = []
        self._last_level = 0
        self._callback: Any = None
        # Set while a decode stops because we asked it to (a cancel): llama.cpp then logs
        # three errors about the failed graph, which are no error of anyone's.
        self.aborting = False

    def install(self, llama_cpp: Any) -> None:
        if self._callback is not None:
            return
        # Kept on self: ctypes callbacks must outlive their use from C.
        self._callback = llama_cpp.llama_log_callback(self._on_log)
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: bytes | None, _user_data: Any) -> None:
        message = (text or b"").decode("utf-8", errors="replace")
        with self._lock:
            if level == _GGML_CONT:
                level = self._last_level
                for records in self._captures:
                    if records:
                        records[-1] = (records[-1][0], records[-1][1] + message)
            else:
                self._last_level = level
                for records in self._captures:
                    records.append((level, message))
        if message.strip():
            py_level = {_GGML_WARN: logging.WARNING, _GGML_ERROR: logging.ERROR}.get(
                level, logging.DEBUG
            )
            if self.aborting:
                py_level = logging.DEBUG
            llama_log.log(py_level, "%s", message.rstrip())

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[tuple[int, str]]]:
        """Collect (level, text) of what llama.cpp logs meanwhile, from any thread."""
        records: list[tuple[int, str]] = []
        with self._lock:
            self._captures.append(records)
        try:
            yield records
        finally:
            with self._lock:
                self._captures.remove(records)


LLAMA_LOG = _LlamaLog()
# Loads take turns: redirect_stderr swaps the process-wide sys.stderr, and two
# overlapping swaps could leave it pointing at a dead buffer.
LOAD_LOCK = threading.Lock()


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        return " amx_tile" in cpuinfo.read_text()
    except OSError:
        return False


def _without_repacking(llama_cpp: Any) -> None:
    """On CPUs with AMX, load weights without llama.cpp's extra buffer types.

    A native build picks the AMX matmul for repacked weights, and in virtual machines
    whose hypervisor doesn't hand the tile state over it dies with SIGSEGV on the first
    decode (seen here with llama-cpp-python 0.3.36 on a Xeon VM). ``Llama()`` doesn't
    expose ``use_extra_bufts``, so its source of default params is wrapped once.
    """
    low = llama_cpp.llama_cpp
    if getattr(low.llama_model_default_params, "_vibrant", False) or not cpu_has_amx():
        return
    original = low.llama_model_default_params

    def default_params() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    default_params._vibrant = True  # type: ignore[attr-defined]
    low.llama_model_default_params = default_params


def llama_cpp_module() -> Any:
    import llama_cpp

    LLAMA_LOG.install(llama_cpp)
    _without_repacking(llama_cpp)
    return llama_cpp


def warm_up() -> None:
    """Import llama.cpp ahead of the first load (its cost: the module's docstring), on a
    worker after start-up has answered, so that the editor's first completion doesn't wait."""
    llama_cpp_module()


# "llama_model_load: error loading model: tensor ..." -> "tensor ..."
_LOG_PREFIX = re.compile(r"^(?:[A-Za-z_][\w.]*: |error loading model: )+")


def load_error(
    model_id: str, path: Path, exc: BaseException, records: list[tuple[int, str]]
) -> ModelLoadFailedError:
    errors = [text.strip() for level, text in records if level == _GGML_ERROR and text.strip()]
    # The first error is the cause; the ones after it are callers saying that they failed.
    reason = _LOG_PREFIX.sub("", errors[0]) if errors else str(exc)
    return ModelLoadFailedError(
        f"Could not load model {model_id!r} from {path}: {reason}",
        hint=f"`vibrant model verify {model_id}` checks the file against its checksum.",
        modelId=model_id,
        path=str(path),
        llamaErrors=errors or [str(exc)],
    )


class ComputeThread:
    """The one thread that runs llama.cpp's work, loads and completions, for all models.

    The CPU backend is built with OpenMP, and every thread that calls llama_decode gets
    an OpenMP team of its own, which lives as long as that thread. Once the process has
    more OpenMP threads than CPUs, libgomp stops spinning at its barriers (hundreds a
    token) and sleeps in the kernel at each: with a second thread that had decoded once,
    a 16-token completion of Gemma 3 270M on 2 cores went from 380 ms to 620 ms, on
    every thread. The server ran each completion on whichever worker was free, so it
    grew a team per worker. ``run`` hands the work to this thread and waits for it.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def start(self) -> None:
        """Start the thread now (else the first ``run`` does). It runs at the priority of
        the thread that starts it (Linux threads inherit nice, and a raised nice can't be
        lowered again without privilege)."""
        with self._start_lock:
            if self._thread is None:
                # A daemon, as llama.cpp can't be interrupted: exit never waits on it.
                self._thread = threading.Thread(target=self._serve, name="llama", daemon=True)
                self._thread.start()

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the compute thread (in turn with other calls); its result or error."""
        if threading.current_thread() is self._thread:
            return fn()  # a call from inside a job (a callback) must not wait on itself
        self.start()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            try:
                done.set_result(fn())
            except BaseException as err:  # every error goes back to the caller
                done.set_exception(err)

        self._jobs.put(job)
        return done.result()

    def _serve(self) -> None:
        while True:
            self._jobs.get()()


COMPUTE = ComputeThread()
