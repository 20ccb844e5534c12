"""Downloads running in this process: one job per model, shared by the requests that wait.

Plain Python: a job runs a download (the ``Downloader``) or an update (``Updates``) on a
worker thread and fans its progress out to listeners (the server turns them into
notifications). The caller resolves the model ("auto", an alias) before a job exists;
the job hands that model down, never an id to resolve again. Two requests for the same
model share one job, each holding a ``Ticket``. A request that gives up leaves the job; the
transfer stops only when its last waiter leaves (or on an explicit ``cancel``), so one
editor's cancel never stops a download another request still waits for.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Executor, Future

from ..errors import Cancelled
from ..registry import ModelInfo
from ..states import DownloadState
from .downloader import Downloader, DownloadResult
from .progress import Progress, ProgressCallback
from .updates import Updates

log = logging.getLogger(__name__)


class Ticket:
    """One request's wait on a job. ``future`` ends with the job, or at once on ``leave``
    when others still wait."""

    def __init__(self, job: DownloadJob, listener: ProgressCallback | None) -> None:
        self.job = job
        self.listener = listener
        self.left = False
        self.future: Future[DownloadResult] = Future()

    @property
    def model_id(self) -> str:
        return self.job.model_id

    def leave(self) -> None:
        """Stop waiting; the last waiter to leave stops the transfer (keeping the partial)."""
        self.job.leave(self)


class DownloadJob:
    def __init__(self, model: ModelInfo, *, update: bool = False) -> None:
        self.model = model
        self.model_id = model.id
        self.update = update  # fetch the latest files beside the cached ones
        self.cancel_event = threading.Event()
        self.future: Future[DownloadResult] = Future()
        self._lock = threading.Lock()
        self._listeners: list[ProgressCallback] = []
        self._tickets: list[Ticket] = []
        self._latest: Progress | None = None
        self.future.add_done_callback(self._settle_tickets)

    @property
    def latest(self) -> Progress | None:
        return self._latest

    def subscribe(self, listener: ProgressCallback) -> None:
        with self._lock:
            self._listeners.append(listener)

    def join(self, listener: ProgressCallback | None = None) -> Ticket:
        ticket = Ticket(self, listener)
        with self._lock:
            self._tickets.append(ticket)
            if listener is not None:
                self._listeners.append(listener)
        if self.future.done():  # finished between lookup and join
            self._settle_tickets(self.future)
        return ticket

    def leave(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket not in self._tickets or ticket.left:
                return
            ticket.left = True
            last = all(t.left for t in self._tickets)
            if not last:
                self._tickets.remove(ticket)
                if ticket.listener in self._listeners:
                    self._listeners.remove(ticket.listener)
        if last:
            # The ticket stays, so that its future ends with the job, once the transfer
            # has stopped: a cancelled request answers only when the work really stopped.
            self.cancel()
        else:
            _settle(
                ticket.future,
                Cancelled(
                    f"Stopped waiting for the download of {self.model_id}; it goes on for "
                    "another request.",
                    modelId=self.model_id,
                ),
            )

    def cancel(self) -> None:
        self.cancel_event.set()

    def report(self, progress: Progress) -> None:
        """The downloader's callback (any thread): keep the latest and pass it on. The
        downloader's ``Reporter`` already throttles it."""
        with self._lock:
            self._latest = progress
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(progress)
            except Exception:  # one broken listener must not stop the download
                log.exception("download progress listener failed")

    def finish(self, state: DownloadState, size_bytes: int | None = None) -> None:
        """Make sure the last report says how it ended (done, failed or cancelled)."""
        last = self._latest
        if last is not None and last.state == state:
            return
        done = size_bytes if size_bytes is not None else (last.downloaded_bytes if last else 0)
        total = size_bytes if size_bytes is not None else (last.total_bytes if last else None)
        self.report(
            Progress(
                model_id=self.model_id,
                state=state,
                file=last.file if last else "",
                downloaded_bytes=done,
                total_bytes=total,
                bytes_per_second=last.bytes_per_second if last else 0.0,
                eta_seconds=0.0 if state == "done" else None,
            )
        )

    def _settle_tickets(self, done: Future[DownloadResult]) -> None:
        with self._lock:
            tickets = list(self._tickets)
        err = done.exception()
        for ticket in tickets:
            _settle(ticket.future, err, None if err else done.result())


def _settle(
    fut: Future[DownloadResult], err: BaseException | None, result: DownloadResult | None = None
) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
    elif result is not None:
        fut.set_result(result)


class DownloadJobs:
    def __init__(
        self,
        downloader: Downloader,
        updates: Updates,
        executor: Executor,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self._downloader = downloader
        self._updates = updates
        self._executor = executor
        self._on_progress = on_progress
        self._lock = threading.Lock()
        self._jobs: dict[str, DownloadJob] = {}

    def start(self, model: ModelInfo, *, update: bool = False) -> DownloadJob:
        """Start (or find) the download of ``model``; never blocks on it. With ``update``,
        the model's latest files (the caller has checked that it is cached)."""
        with self._lock:
            job = self._jobs.get(model.id)
            if job is not None:
                return job
            job = DownloadJob(model, update=update)
            if self._on_progress is not None:
                job.subscribe(self._on_progress)
            self._jobs[model.id] = job
        self._executor.submit(self._run, job)
        return job

    def join(
        self, model: ModelInfo, listener: ProgressCallback | None = None, *, update: bool = False
    ) -> Ticket:
        """``start``, then wait on it as one more request."""
        return self.start(model, update=update).join(listener)

    def _fetch(self, job: DownloadJob) -> DownloadResult:
        if job.update:
            return self._updates.update(job.model_id, job.report, job.cancel_event)
        return self._downloader.download(job.model, job.report, job.cancel_event)

    def _run(self, job: DownloadJob) -> None:
        try:
            result = self._fetch(job)
        except BaseException as err:
            job.finish("cancelled" if isinstance(err, Cancelled) else "failed")
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
        """Stop the download for every request that waits on it."""
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
        return [job.latest or Progress(model_id=job.model_id, state="resolving") for job in jobs]
