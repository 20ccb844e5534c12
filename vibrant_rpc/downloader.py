"""Download a model from the Hub into the cache: resumable, verified, safe across processes.

A model's files land in ``.downloading/<id>/`` beside a state file; each is
hashed while it arrives, checked against the registry's or the Hub's SHA-256,
fsynced, and only then renamed into the models folder and recorded in the
manifest. One process transfers a model at a time; others wait and share the
result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from filelock import FileLock, Timeout

from .download_state import DownloadState, FileProgress, read_state, write_state
from .errors import (
    ChecksumMismatchError,
    DiskFullError,
    DownloadCancelledError,
    DownloadFailedError,
    HubUnreachableError,
    OfflineError,
)
from .fsutil import fsync_dir
from .hub import HubClient, Resolved, RevisionInfo, TransientError
from .locks import download_lock
from .manifest import ManifestEntry, ManifestFile, ModelVersion, utcnow
from .offline import is_offline
from .progress import Progress, ProgressCallback, ProgressState, SpeedMeter
from .registry import ModelInfo
from .transfer import Cancelled, FileTransfer, RangeIgnored, RemoteChanged, TransferConfig
from .units import format_bytes

if TYPE_CHECKING:
    from .app import DownloadResult, Vibrant

log = logging.getLogger(__name__)
T = TypeVar("T")

MiB = 1024 * 1024
PROGRESS_INTERVAL_S = 0.1


def disk_margin(remaining: int) -> int:
    return max(64 * MiB, remaining // 50)


class _Reporter:
    """Aggregates bytes from every connection into at most ~10 progress calls a second."""

    def __init__(self, model_id: str, total: int, done: int, cb: ProgressCallback | None):
        self.model_id, self.total, self.done, self.cb = model_id, total, done, cb
        self.file = ""
        self.meter = SpeedMeter()
        self.meter.reset_base(done)
        self._lock = threading.Lock()
        self._last = 0.0

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._last < PROGRESS_INTERVAL_S:
                return
            self._last = now
        self.emit("downloading")

    def emit(self, state: ProgressState) -> None:
        if self.cb is None:
            return
        rate = self.meter.update(self.done)
        self.cb(
            Progress(
                model_id=self.model_id,
                file=self.file,
                downloaded_bytes=self.done,
                total_bytes=self.total,
                bytes_per_second=rate,
                eta_seconds=0.0 if state == "done" else self.meter.eta(self.done, self.total),
                state=state,
            )
        )


class Downloader:
    def __init__(
        self,
        app: Vibrant,
        *,
        hub_factory: Callable[[], HubClient] = HubClient,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.app = app
        self.paths = app.paths
        s = app.settings
        self.config = TransferConfig(
            connections=max(1, s.download_connections),
            block_size=max(64 * 1024, s.download_block_size),
            idle_timeout=s.download_idle_timeout_s,
            backoff_base=s.download_retry_base_s,
            sleep=sleep,
        )
        self._hub_factory = hub_factory

    # -- entry point ---------------------------------------------------------------------

    def download(
        self,
        model: ModelInfo,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        *,
        latest: bool = False,
    ) -> DownloadResult:
        """Download ``model`` unless cached. With ``latest`` (an update), fetch the files the
        revision points to now, beside the cached ones, and swap only once verified."""
        cancel = cancel or threading.Event()
        if not latest and (done := self._cached(model)) is not None:
            return done
        if is_offline():
            raise OfflineError(
                f"{model.id} is not downloaded, and HF_HUB_OFFLINE is set: vibrant makes no "
                "network requests.",
                hint="Unset HF_HUB_OFFLINE to download it; downloaded models keep working.",
                modelId=model.id,
            )
        lock = download_lock(self.paths.locks, model.id)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            self._wait_for_other(lock, model, progress, cancel)
        try:
            if not latest and (done := self._cached(model)) is not None:
                return done  # another process finished it while we waited
            return self._download_locked(model, progress, cancel, latest)
        finally:
            lock.release()

    def _wait_for_other(
        self,
        lock: FileLock,
        model: ModelInfo,
        progress: ProgressCallback | None,
        cancel: threading.Event,
    ) -> None:
        """Another process is transferring this model: wait (cancellably) for its lock."""
        last = 0.0
        while True:
            if cancel.is_set():
                raise DownloadCancelledError(
                    f"Stopped waiting for another process's download of {model.id}.",
                    modelId=model.id,
                )
            try:
                lock.acquire(timeout=0.2)
                return
            except Timeout:
                pass
            if progress and time.monotonic() - last > 1.0:
                last = time.monotonic()
                state = read_state(self.paths.partial_dir(model.id))
                progress(
                    Progress(
                        model_id=model.id,
                        file="",
                        downloaded_bytes=state.downloaded_bytes if state else 0,
                        total_bytes=state.total_bytes if state else None,
                        bytes_per_second=0.0,
                        eta_seconds=None,
                        state="waiting",
                    )
                )

    def _cached(self, model: ModelInfo) -> DownloadResult | None:
        from .app import DownloadResult

        entry = self.app.cache.get(model.id)
        if entry is None:
            return None
        paths = self.app.cache.file_paths(entry)
        return DownloadResult(
            model_id=model.id,
            paths=[str(p) for p in paths],
            size_bytes=entry.size_bytes,
            sha256=entry.files[0].sha256 or "",
            revision=entry.revision,
        )

    # -- resolving ------------------------------------------------------------------------

    def _retry(self, what: Callable[[], T], cancel: threading.Event) -> T:
        """Retry transient failures of a metadata call (three attempts, backoff)."""
        attempt = 0
        while True:
            try:
                return what()
            except TransientError as err:
                attempt += 1
                if attempt >= self.config.max_attempts_without_progress:
                    raise HubUnreachableError(
                        f"The Hub could not be reached after {attempt} attempts: {err}",
                        hint="Check your connection (and HF_ENDPOINT or proxy settings), "
                        "then try again.",
                    ) from None
                if cancel.is_set():
                    raise Cancelled() from None
                self.config.sleep(self.config.backoff(attempt, err.retry_after))

    def _expected_sha(
        self,
        hub: HubClient,
        model: ModelInfo,
        index: int,
        resolved: Resolved,
        api: Callable[[], RevisionInfo],
    ) -> str | None:
        registry_sha = model.files[index].sha256
        hub_sha = resolved.sha256
        if hub_sha is None:
            hub_sha, _ = api().file_sha256(resolved.filename)
        if registry_sha and hub_sha and registry_sha != hub_sha:
            raise ChecksumMismatchError(
                f"{model.id}: the registry says {resolved.filename} has SHA-256 {registry_sha}, "
                f"but the Hub says {hub_sha}.",
                hint="The registry entry is out of date with the Hub (or the revision moved); "
                "fix the sha256 in the registry or pin the revision.",
                modelId=model.id,
                file=resolved.filename,
                expected=registry_sha,
                actual=hub_sha,
            )
        return registry_sha or hub_sha

    # -- the transfer -------------------------------------------------------------------

    def _download_locked(
        self,
        model: ModelInfo,
        progress: ProgressCallback | None,
        cancel: threading.Event,
        latest: bool = False,
    ) -> DownloadResult:
        from .app import DownloadResult

        folder = self.paths.partial_dir(model.id)
        hub = self._hub_factory()
        try:
            if progress:
                progress(
                    Progress(
                        model_id=model.id,
                        file=model.files[0].filename,
                        downloaded_bytes=0,
                        total_bytes=None,
                        bytes_per_second=0.0,
                        eta_seconds=None,
                        state="resolving",
                    )
                )
            state, resolved = self._prepare(hub, model, folder, cancel)
            if latest and (same := self._unchanged(model, state)) is not None:
                shutil.rmtree(folder, ignore_errors=True)
                return same
            total = state.total_bytes or 0
            remaining = total - state.downloaded_bytes
            self._check_disk(model, remaining)
            pruned = self.app.cache.make_room(model, total).removed
            if pruned:
                log.warning("removed %s to make room for %s", ", ".join(pruned), model.id)
            reporter = _Reporter(model.id, total, state.downloaded_bytes, progress)
            for fp, res in zip(state.files, resolved, strict=True):
                if fp.complete:
                    continue
                reporter.file = fp.remote_filename
                self._fetch_verified(hub, model, folder, state, fp, res, reporter, cancel)
            reporter.emit("verifying")
            entry = self._install(model, folder, state)
            reporter.emit("done")
            return DownloadResult(
                model_id=model.id,
                paths=[str(self.paths.models / f.path) for f in entry.files],
                size_bytes=entry.size_bytes,
                sha256=entry.files[0].sha256 or "",
                revision=entry.revision,
                pruned=pruned,
            )
        except Cancelled:
            st = read_state(folder)
            kept = st.downloaded_bytes if st else 0
            raise DownloadCancelledError(
                f"Download of {model.id} cancelled; {format_bytes(kept)} downloaded so far is "
                "kept, and the next download resumes there.",
                modelId=model.id,
                keptBytes=kept,
            ) from None
        finally:
            hub.close()

    def _prepare(
        self, hub: HubClient, model: ModelInfo, folder: Path, cancel: threading.Event
    ) -> tuple[DownloadState, list[Resolved]]:
        """Resolve every file (pinned to one commit) and line up any earlier partial data."""
        revision = model.revision or "main"
        api_info: list[RevisionInfo] = []

        def api() -> RevisionInfo:
            if not api_info:
                api_info.append(
                    self._retry(lambda: hub.revision_info(model.hf_repo, revision), cancel)
                )
            return api_info[0]

        resolved: list[Resolved] = []
        commit: str | None = None
        for mf in model.files:
            rev = commit or revision
            res = self._retry(partial(hub.resolve, model.hf_repo, rev, mf.filename), cancel)
            commit = commit or res.commit
            resolved.append(res)

        old = read_state(folder)
        now = utcnow()
        files: list[FileProgress] = []
        for i, (mf, res, name) in enumerate(
            zip(model.files, resolved, model.local_filenames(), strict=True)
        ):
            sha = self._expected_sha(hub, model, i, res, api)
            size = res.size if res.size is not None else mf.size_bytes
            if size is None:
                size = api().file_sha256(mf.filename)[1]
            if size is None:
                raise DownloadFailedError(
                    f"The Hub did not say the size of {mf.filename} in {model.hf_repo}.",
                    modelId=model.id,
                )
            fp = FileProgress(
                name=name, remote_filename=mf.filename, size_bytes=size, sha256=sha, etag=res.etag
            )
            prev = old.files[i] if old and i < len(old.files) else None
            if prev is not None and self._same_file(prev, fp):
                fp.done, fp.complete = prev.done, prev.complete
                if fp.complete and not (folder / f"{name}.part").is_file():
                    fp.done, fp.complete = [], False
            elif prev is not None and prev.done:
                log.warning("%s changed upstream; starting it over", mf.filename)
                with contextlib.suppress(FileNotFoundError):
                    (folder / f"{name}.part").unlink()
            files.append(fp)
        state = DownloadState(
            model_id=model.id,
            hf_repo=model.hf_repo,
            commit=commit,
            files=files,
            started_at=old.started_at if old else now,
            updated_at=now,
        )
        folder.mkdir(parents=True, exist_ok=True)
        write_state(folder, state)
        return state, resolved

    @staticmethod
    def _same_file(prev: FileProgress, new: FileProgress) -> bool:
        """The partial bytes may be kept only if upstream is still the very same file."""
        if prev.remote_filename != new.remote_filename or prev.size_bytes != new.size_bytes:
            return False
        if prev.sha256 and new.sha256:
            return prev.sha256 == new.sha256
        return prev.etag is not None and prev.etag == new.etag

    def _check_disk(self, model: ModelInfo, remaining: int) -> None:
        self.paths.models.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.paths.models).free
        needed = remaining + disk_margin(remaining)
        if free < needed:
            raise DiskFullError(
                f"Not enough disk space for {model.id}: {format_bytes(needed)} is needed in "
                f"{self.paths.models} ({format_bytes(remaining)} left to download plus a margin), "
                f"but only {format_bytes(free)} is free.",
                hint="Free some space, remove models with `vibrant model remove <id>`, or move "
                "the cache with VIBRANT_HOME.",
                modelId=model.id,
                neededBytes=needed,
                freeBytes=free,
                path=str(self.paths.models),
            )

    def _fetch_verified(
        self,
        hub: HubClient,
        model: ModelInfo,
        folder: Path,
        state: DownloadState,
        fp: FileProgress,
        res: Resolved,
        reporter: _Reporter,
        cancel: threading.Event,
    ) -> None:
        part = folder / f"{fp.name}.part"
        size = fp.size_bytes or 0
        mismatches = 0

        def url(refresh: bool) -> str:
            if not refresh:
                return res.url
            fresh = self._retry(
                lambda: hub.resolve(model.hf_repo, state.commit or "main", fp.remote_filename),
                cancel,
            )
            if fresh.etag != res.etag or fresh.size != res.size:
                raise RemoteChanged("the file changed upstream")
            return fresh.url

        def checkpoint() -> None:
            state.updated_at = utcnow()
            write_state(folder, state)

        config = self.config
        while True:
            transfer = FileTransfer(
                hub, url, part, fp, size, config, cancel, reporter.add, checkpoint
            )
            try:
                digest = transfer.run()
            except RangeIgnored:
                log.warning("the server ignored Range for %s; starting it over", fp.name)
                reporter.done -= fp.done_bytes
                fp.done = []
                config = dataclasses.replace(config, connections=1)
                continue
            except RemoteChanged as err:
                raise DownloadFailedError(
                    f"{fp.remote_filename} changed on the Hub during the download ({err}).",
                    hint="Run the download again: it starts that file over.",
                    modelId=model.id,
                ) from None
            if fp.sha256 is None or digest == fp.sha256:
                fp.sha256 = digest
                fp.complete = True
                checkpoint()
                return
            mismatches += 1
            reporter.done -= fp.done_bytes
            fp.done = []
            part.unlink(missing_ok=True)
            checkpoint()
            if mismatches >= 2:
                raise ChecksumMismatchError(
                    f"{model.id}: {fp.remote_filename} arrived damaged twice: its SHA-256 is "
                    f"{digest}, expected {fp.sha256}.",
                    hint="The download server may be serving a bad copy; try again later.",
                    modelId=model.id,
                    file=fp.remote_filename,
                    expected=fp.sha256,
                    actual=digest,
                )
            log.warning("%s failed its checksum; downloading it once more", fp.remote_filename)

    def _unchanged(self, model: ModelInfo, state: DownloadState) -> DownloadResult | None:
        """An update whose files are the ones cached: only the recorded commit moves."""
        entry = self.app.cache.get(model.id)
        if entry is None or [f.sha256 for f in entry.files] != [f.sha256 for f in state.files]:
            return None
        with self.app.cache.transaction() as manifest:
            current = manifest.models.get(model.id)
            if current is not None and current.revision != state.commit:
                current.revision = state.commit
        result = self._cached(model)
        assert result is not None
        return result

    def _install(self, model: ModelInfo, folder: Path, state: DownloadState) -> ManifestEntry:
        """Move the verified files into place, then record them in the manifest."""
        previous = self.app.cache.get(model.id)  # before the files appear, or it adopts them
        files: list[ManifestFile] = []
        for fp in state.files:
            target = self.paths.models / fp.name
            os.replace(folder / f"{fp.name}.part", target)
            files.append(
                ManifestFile(
                    path=fp.name,
                    size_bytes=fp.size_bytes or 0,
                    sha256=fp.sha256,
                    mtime_ns=target.stat().st_mtime_ns,
                    remote_filename=fp.remote_filename,
                )
            )
        if previous is not None:  # an update with fewer or renamed shards: drop the old ones
            for old in set(previous.paths) - {f.path for f in files}:
                (self.paths.models / old).unlink(missing_ok=True)
        fsync_dir(self.paths.models)
        now = utcnow()
        versions = [
            v for v in (previous.versions if previous else []) if v.revision != state.commit
        ]
        size = sum(f.size_bytes for f in files)
        versions.append(
            ModelVersion(
                revision=state.commit, seen_at=now, size_bytes=size, sha256=files[0].sha256
            )
        )
        entry = ManifestEntry(
            id=model.id,
            files=files,
            size_bytes=size,
            checksum=f"sha256:{files[0].sha256}",
            downloaded_at=now,
            hf_repo=model.hf_repo,
            revision=state.commit,
            last_used=previous.last_used if previous else None,
            use_count=previous.use_count if previous else 0,
            versions=versions,
        )
        self.app.cache.record(entry)
        shutil.rmtree(folder, ignore_errors=True)
        return entry
