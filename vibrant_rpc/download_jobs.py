"""Downloads running in this process: one job per model, cancellable, with its progress.

Plain Python: a job runs ``Vibrant.download`` on a worker thread and fans its
progress out to listeners (the server turns them into notifications). Two
requests for the same model share one job; cancelling the job stops it for both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future

from .app import DownloadResult, Vibrant
from .errors import DownloadCancelledError
from .progress import Progress, ProgressState

log = logging.getLogger(__name__)

Listener = Callable[[Progress], None]
MIN_INTERVAL_S = 0.1  # "downloading" updates closer than this are dropped (~10 a second)


class DownloadJob:
    def __init__(
        self, model_id: str, clock: Callable[[], float] = time.monotonic, *, update: bool = False
    ) -> None:
        self.model_id = model_id
        self.update = update  # fetch the latest files beside the cached ones
        self.cancel_event = threading.Event()
        self.future: Future[DownloadResult] = Future()
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._latest: Progress | None = None
        self._last_emit = float("-inf")

    @property
    def latest(self) -> Progress | None:
        return self._latest

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def cancel(self) -> None:
        self.cancel_event.set()

    def report(self, progress: Progress) -> None:
        """The downloader's callback (any thread): keep the latest, pass on at most ~10/s."""
        with self._lock:
            self._latest = progress
            now = self._clock()
            if progress.state == "downloading" and now - self._last_emit < MIN_INTERVAL_S:
                return
            self._last_emit = now
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(progress)
            except Exception:  # one broken listener must not stop the download
                log.exception("download progress listener failed")

    def finish(self, state: ProgressState, size_bytes: int | None = None) -> None:
        """Make sure the last report says how it ended (done, failed or cancelled)."""
        last = self._latest
        if last is not None and last.state == state:
            return
        done = size_bytes if size_bytes is not None else (last.downloaded_bytes if last else 0)
        total = size_bytes if size_bytes is not None else (last.total_bytes if last else None)
        self.report(
            Progress(
                model_id=self.model_id,
                file=last.file if last else "",
                downloaded_bytes=done,
                total_bytes=total,
                bytes_per_second=last.bytes_per_second if last else 0.0,
                eta_seconds=0.0 if state == "done" else None,
                state=state,
            )
        )


class DownloadJobs:
    def __init__(
        self, app: Vibrant, executor: Executor, on_progress: Listener | None = None
    ) -> None:
        self.app = app
        self._executor = executor
        self._on_progress = on_progress
        self._lock = threading.Lock()
        self._jobs: dict[str, DownloadJob] = {}

    def start(
        self, model_id: str, listener: Listener | None = None, *, update: bool = False
    ) -> DownloadJob:
        """Start (or join) the download of ``model_id`` (``auto`` allowed); never blocks on it.
        With ``update``, the model's latest files (it must be cached already).

        Raises ModelNotFound / InsufficientRam (for ``auto``) before any job exists.
        """
        resolved = self.app.resolve_id(model_id)
        if update:
            self.app.cache.require(resolved)
        with self._lock:
            job = self._jobs.get(resolved)
            joined = job is not None
            if job is None:
                job = DownloadJob(resolved, update=update)
                if self._on_progress is not None:
                    job.subscribe(self._on_progress)
                self._jobs[resolved] = job
            if listener is not None:
                job.subscribe(listener)
        if not joined:
            self._executor.submit(self._run, job)
        return job

    def _run(self, job: DownloadJob) -> None:
        try:
            fetch = self.app.update_model if job.update else self.app.download
            result = fetch(job.model_id, progress=job.report, cancel=job.cancel_event)
        except BaseException as err:
            cancelled = isinstance(err, DownloadCancelledError)
            job.finish("cancelled" if cancelled else "failed")
            self._forget(job)
            job.future.set_exception(err)
            if not isinstance(err, Exception):
                raise
            return
        job.finish("done", result.size_bytes)  # also when it was cached already
        self._forget(job)
        job.future.set_result(result)

    def _forget(self, job: DownloadJob) -> None:
        with self._lock:
            if self._jobs.get(job.model_id) is job:
                del self._jobs[job.model_id]

    def cancel(self, model_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(model_id)
        if job is None:
            return False
        job.cancel()
        return True

    def cancel_all(self) -> list[DownloadJob]:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
        return jobs

    def active(self) -> list[Progress]:
        """The latest progress of every running download (no I/O: for ``status``)."""
        with self._lock:
            jobs = list(self._jobs.values())
        out = []
        for job in jobs:
            latest = job.latest
            out.append(
                latest
                if latest is not None
                else Progress(
                    model_id=job.model_id,
                    file="",
                    downloaded_bytes=0,
                    total_bytes=None,
                    bytes_per_second=0.0,
                    eta_seconds=None,
                    state="resolving",
                )
            )
        return out
