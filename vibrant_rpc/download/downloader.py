"""Download a model from the Hub into the cache: resumable, verified, safe across processes.

A model's files land in ``.downloading/<id>/`` beside a state file; each is
hashed while it arrives, checked against the registry's or the Hub's SHA-256,
fsynced, and only then renamed into the models folder and recorded in the
manifest. One process transfers a model at a time; others wait and share the
result. ``Downloader`` is the entry point; each download is a ``_Download`` that
owns its Hub client, its state, its progress reporter and its cancel event.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import msgspec
from filelock import FileLock, Timeout

from ..cache.locks import download_lock
from ..cache.manifest import ManifestEntry, utcnow
from ..cache.partials import FileProgress, PartialState, read_state, same_file, write_state
from ..cache.store import MODIFIED, Cache
from ..config import Settings
from ..errors import (
    Cancelled,
    ChecksumMismatchError,
    DownloadFailedError,
    GatedRepoError,
    HubUnreachableError,
    OfflineError,
)
from ..fsutil import is_regular
from ..offline import is_offline
from ..paths import Paths
from ..registry import ModelInfo
from ..units import format_bytes
from .checked import Fetch
from .hub import HubClient, Resolved, RevisionInfo, TransientError
from .install import check_disk, install
from .progress import Progress, ProgressCallback, Reporter
from .reuse import Adopted, Reuse, check_imported, take
from .sources import Reference, Sources, fail_over, reference
from .transfer import TransferConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

MiB = 1024 * 1024


class DownloadResult(msgspec.Struct, kw_only=True):
    model_id: str
    paths: list[str]  # absolute paths; the first is what llama.cpp loads
    size_bytes: int
    sha256: str  # of the first (or only) file
    revision: str | None
    pruned: list[str] = []  # models removed to make room under the size limit
    # Every file's SHA-256 matched a reference known in advance (the registry's or the
    # Hub's LFS oid); False: the hash was only recorded, or (cached) not read now.
    verified: bool = False
    cached: bool = False  # answered from the cache: nothing was downloaded
    repaired: list[str] = []  # what was wrong with the cached files this download replaced
    adopted: list[Adopted] = []  # files taken from other tools' caches, not downloaded
    served_by: dict[str, str] = {}  # Hub file name -> the source (host:port) that sent it
    # Hub file name -> who vouched for its SHA-256: "registry", or the source (host:port)
    # whose word it is (the Hub, or a mirror in trusted_sources); absent: nobody did.
    reference_by: dict[str, str] = {}


def transfer_config(
    settings: Settings, sleep: Callable[[float], None] = time.sleep
) -> TransferConfig:
    return TransferConfig(
        connections=max(1, settings.download_connections),
        block_size=max(64 * 1024, settings.download_block_size),
        idle_timeout=settings.download_idle_timeout_s,
        backoff_base=settings.download_retry_base_s,
        sleep=sleep,
    )


class Downloader:
    """Downloads models into one cache, one transfer per model across processes."""

    def __init__(
        self,
        paths: Paths,
        cache: Cache,
        config: TransferConfig,
        *,
        hub_factory: Callable[[], HubClient] = HubClient,
        reuse: Reuse | None = None,
    ) -> None:
        self.reuse = reuse or Reuse()  # the default looks nowhere
        self.paths = paths
        self.cache = cache
        self.config = config
        self.hub_factory = hub_factory

    def download(
        self,
        model: ModelInfo,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        *,
        latest: bool = False,
        reuse: Reuse | None = None,
    ) -> DownloadResult:
        """Download ``model`` unless cached. With ``latest`` (an update), fetch the files the
        revision points to now, beside the cached ones, and swap only once verified."""
        cancel = cancel or threading.Event()
        problems: list[str] = []
        if not latest and (done := self.cached(model, problems)) is not None:
            return done
        if is_offline():
            raise OfflineError(
                f"{model.id} is not downloaded, and HF_HUB_OFFLINE is set: vibrant makes no "
                "network requests.",
                hint="Unset HF_HUB_OFFLINE to download it; downloaded models keep working.",
                modelId=model.id,
            )
        # A shared folder mounted read-only: cached models work, nothing can be added.
        doing = "import" if (reuse or self.reuse).only else "download"
        self.cache.writable(f"{doing} {model.id}")
        lock = download_lock(self.paths.locks, model.id)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            self._wait_for_other(lock, model, progress, cancel)
        try:
            if not latest and (done := self.cached(model, problems)) is not None:
                return done  # another process finished it while we waited
            result = _Download(self, model, progress, cancel, latest, reuse or self.reuse).run()
            result.repaired = problems
            return result
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
                raise Cancelled(
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
                        state="waiting",
                        downloaded_bytes=state.downloaded_bytes if state else 0,
                        total_bytes=state.total_bytes if state else None,
                    )
                )

    def cached(self, model: ModelInfo, problems: list[str] | None = None) -> DownloadResult | None:
        """The cached model, if its files are whole: the size and mtime recorded, GGUF's
        magic, plain files, not marked damaged (checks that read 4 bytes a file, not GBs).
        What is wrong goes into ``problems`` and the model downloads again, renamed over."""
        entry = self.cache.get(model.id)
        if entry is None:
            return None
        wrong = self.cache.problems(entry)
        if wrong and all(w.endswith(MODIFIED) for w in wrong):
            # Only the mtime moved (a copy, a touch): hashing tells, not a download.
            try:
                entry = self.cache.verify(model.id, force=False)
                wrong = []
            except ChecksumMismatchError as err:
                wrong = [err.message]
        if wrong:
            log.warning("%s: %s; downloading it again", model.id, "; ".join(wrong))
            if problems is not None:
                problems[:] = wrong
            return None
        return DownloadResult(
            model_id=model.id,
            paths=[str(p) for p in self.cache.file_paths(entry)],
            size_bytes=entry.size_bytes,
            sha256=entry.files[0].sha256 or "",
            revision=entry.revision,
            cached=True,
        )


class _Download:
    """One model's download, from resolving its files to installing them in the cache."""

    def __init__(
        self,
        downloader: Downloader,
        model: ModelInfo,
        progress: ProgressCallback | None,
        cancel: threading.Event,
        latest: bool,
        reuse: Reuse,
    ) -> None:
        self.owner, self.reuse, self.adopted = downloader, reuse, list[Adopted]()
        self.served_by: dict[str, str] = {}
        self.paths, self.cache, self.config = downloader.paths, downloader.cache, downloader.config
        self.model = model
        self.progress = progress
        self.cancel = cancel
        self.latest = latest
        self.folder = self.paths.partial_dir(model.id)
        self.hub = downloader.hub_factory()
        self._revision_info: RevisionInfo | None = None
        self.reporter = Reporter(model.id, None, 0, progress)

    def run(self) -> DownloadResult:
        model = self.model
        try:
            if self.progress:
                self.progress(
                    Progress(model_id=model.id, state="resolving", file=model.files[0].filename)
                )
            state, resolved = self._prepare()
            if self.latest and (same := self._unchanged(state)) is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
                return same
            total = state.total_bytes or 0
            remaining = total - state.downloaded_bytes
            check_disk(self.paths.models, model.id, remaining)
            pruned = self.cache.make_room(model, total).removed
            if pruned:
                log.warning("removed %s to make room for %s", ", ".join(pruned), model.id)
            # Only now, once there is room: a download refused for space leaves no state
            # file behind (it would be listed as a 0 % partial).
            self.folder.mkdir(parents=True, exist_ok=True)
            write_state(self.folder, state)
            self.reporter = Reporter(model.id, total, state.downloaded_bytes, self.progress)
            for fp, res in zip(state.files, resolved, strict=True):
                if fp.complete:
                    continue
                self.reporter.file = fp.remote_filename
                self.reporter.source = None
                part = self.folder / f"{fp.name}.part"
                if got := take(self.reuse, model.hf_repo, fp, part, self.reporter.add):
                    self.adopted.append(got)
                    write_state(self.folder, state)
                elif not self.reuse.only:
                    self.reporter.source = lambda: self.hub.source
                    fetch = Fetch(
                        self.hub, model, self.folder, state, self.config, self.cancel,
                        self.reporter, self._retry,
                    )  # fmt: skip
                    fetch.run(fp, res)
                    self.served_by[fp.remote_filename] = self.hub.source
            if self.reuse.only:
                check_imported(model.id, state, self.reuse, len(self.adopted), self.folder)
            self.reporter.emit("verifying")
            entry = self._install(state)
            self.reporter.emit("done")
            return DownloadResult(
                model_id=model.id,
                paths=[str(self.paths.models / f.path) for f in entry.files],
                size_bytes=entry.size_bytes,
                sha256=entry.files[0].sha256 or "",
                revision=entry.revision,
                pruned=pruned,
                verified=all(fp.verified for fp in state.files),
                adopted=self.adopted,
                served_by=self.served_by,
                reference_by={
                    fp.remote_filename: fp.reference_by for fp in state.files if fp.reference_by
                },
            )
        except Cancelled:
            st = read_state(self.folder)
            kept = st.downloaded_bytes if st else 0
            self._drop_if_empty()
            raise Cancelled(
                f"Download of {model.id} cancelled; {format_bytes(kept)} downloaded so far is "
                "kept, and the next download resumes there.",
                modelId=model.id,
                keptBytes=kept,
            ) from None
        except BaseException:
            self._drop_if_empty()
            raise
        finally:
            self.hub.close()

    def _drop_if_empty(self) -> None:
        """A download that failed with no byte kept leaves no folder: it would be listed
        as a "partial 0 %" of a download that got nowhere (bytes that failed their
        checksum are dropped as they fail)."""
        state = read_state(self.folder)
        if state is not None and state.downloaded_bytes == 0 and not self.folder.is_symlink():
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- resolving ------------------------------------------------------------------------

    def _retry(self, what: Callable[[], T]) -> T:
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
                if self.cancel.is_set():
                    raise Cancelled() from None
                self.config.sleep(self.config.backoff(attempt, err.retry_after))

    def _api(self) -> RevisionInfo:
        """The revision API's file list, asked once. A non-gated 4xx (olah's proxy: 401
        RepoNotFound) is no reference: what arrives is hashed and recorded, not checked."""
        if self._revision_info is None:
            revision = self.model.revision or "main"
            try:
                self._revision_info = self._retry(
                    lambda: self.hub.revision_info(self.model.hf_repo, revision)
                )
            except DownloadFailedError as err:
                status = err.details.get("status")
                if isinstance(err, GatedRepoError) or not (
                    isinstance(status, int) and 400 <= status < 500
                ):
                    raise
                log.info("%s gave no file list (%s); no reference hash", self.hub.source, status)
                self._revision_info = RevisionInfo()
        return self._revision_info

    def _reference(self, index: int, resolved: Resolved, commit: str | None) -> Reference:
        """What the file's bytes must be: the registry's pinned SHA-256, else the Hub's
        (``sources.reference``); a mirror's word alone stands only for a trusted mirror."""
        model = self.model
        registry_sha = model.files[index].sha256
        if registry_sha:
            # The Hub's own word against the registry's: the entry is out of date.
            hub_sha = None
            if not isinstance(self.hub, Sources) or self.hub.source == self.hub.hub.source:
                hub_sha = resolved.sha256 or self._api().file_sha256(resolved.filename)[0]
            if hub_sha and registry_sha != hub_sha:
                raise ChecksumMismatchError(
                    f"{model.id}: the registry says {resolved.filename} has SHA-256 "
                    f"{registry_sha}, but the Hub says {hub_sha}.",
                    hint="The registry entry is out of date with the Hub (or the revision "
                    "moved); fix the sha256 in the registry or pin the revision.",
                    modelId=model.id,
                    file=resolved.filename,
                    expected=registry_sha,
                    actual=hub_sha,
                )
            return Reference(sha256=registry_sha, by="registry")
        revisions = [commit or "", model.revision or "main"]
        ref = reference(self.hub, model.hf_repo, revisions, resolved, self._api)
        if ref.sha256 is None and resolved.sha256 is not None:
            source = self.hub.source
            raise DownloadFailedError(
                f"{model.id}: only {source} vouches for the SHA-256 of {resolved.filename}, "
                f"and it is not a trusted source; {ref.why_none}.",
                hint="Try again when the Hub can be reached, or add that source to "
                "`trusted_sources` in config.toml (or pin the file's sha256 in the registry).",
                modelId=model.id,
                file=resolved.filename,
                source=source,
            )
        return ref

    def _prepare(self) -> tuple[PartialState, list[Resolved]]:
        """Resolve every file (pinned to one commit) and line up any earlier partial data."""
        model, folder = self.model, self.folder
        revision = model.revision or "main"
        resolved: list[Resolved] = []
        commit: str | None = None
        for mf in model.files:
            rev = commit or revision
            res = self._retry(partial(self.hub.resolve, model.hf_repo, rev, mf.filename))
            commit = commit or res.commit
            resolved.append(res)

        old = read_state(folder)
        now = utcnow()
        files: list[FileProgress] = []
        references = [self._reference(i, res, commit) for i, res in enumerate(resolved)]
        # The Hub's commit where it vouched: a mirror's own commit may be unknown to it.
        commit = references[0].commit or commit
        for i, (mf, res, name) in enumerate(
            zip(model.files, resolved, model.local_filenames(), strict=True)
        ):
            ref = references[i]
            size = next((n for n in (ref.size, res.size, mf.size_bytes) if n is not None), None)
            if size is None:
                size = self._api().file_sha256(mf.filename)[1]
            if size is None:
                raise DownloadFailedError(
                    f"The Hub did not say the size of {mf.filename} in {model.hf_repo}.",
                    modelId=model.id,
                )
            fp = FileProgress(
                name=name,
                remote_filename=mf.filename,
                size_bytes=size,
                sha256=ref.sha256,
                etag=res.etag,
                reference_by=ref.by,
            )
            if res.sha256 not in (None, ref.sha256) or res.size not in (None, size):
                # This source has other bytes under the name: the next that has these.
                revisions = [commit or "", model.revision or "main"]
                if (other := fail_over(self.hub, model.hf_repo, revisions, fp)) is not None:
                    log.warning("%s: %s has other bytes than the reference; using %s",
                                mf.filename, res.url, other.url)  # fmt: skip
                    resolved[i] = res = other
            prev = old.files[i] if old and i < len(old.files) else None
            part = folder / f"{name}.part"
            if part.is_symlink() or (part.exists() and not part.is_dir() and not is_regular(part)):
                # Planted, not ours: never written through (only the link itself goes).
                log.warning("%s is not a plain file; removed, not followed", part)
                part.unlink()
                prev = None
            if prev is not None and same_file(prev, fp):
                fp.done, fp.complete = prev.done, prev.complete
                if fp.complete:
                    fp.sha256, fp.verified = fp.sha256 or prev.sha256, prev.verified
                    fp.reference_by = fp.reference_by or prev.reference_by
                if (fp.complete or fp.done) and not part.is_file():
                    fp.done, fp.complete, fp.verified = [], False, False
            elif prev is not None and prev.done:
                log.warning("%s changed upstream; starting it over", mf.filename)
                with contextlib.suppress(FileNotFoundError):
                    (folder / f"{name}.part").unlink()
            files.append(fp)
        state = PartialState(
            model_id=model.id,
            hf_repo=model.hf_repo,
            commit=commit,
            files=files,
            started_at=old.started_at if old else now,
            updated_at=now,
        )
        return state, resolved

    # -- installing ---------------------------------------------------------------------

    def _unchanged(self, state: PartialState) -> DownloadResult | None:
        """An update whose files are the ones cached: only the recorded commit moves."""
        model_id = self.model.id
        entry = self.cache.get(model_id)
        if entry is None or [f.sha256 for f in entry.files] != [f.sha256 for f in state.files]:
            return None
        if self.cache.problems(entry):
            return None  # the same files upstream, but ours are damaged: fetch them again
        with self.cache.transaction() as manifest:
            current = manifest.models.get(model_id)
            if current is not None and current.revision != state.commit:
                current.revision = state.commit
        result = self.owner.cached(self.model)
        assert result is not None
        return result

    def _install(self, state: PartialState) -> ManifestEntry:
        sources = {a.filename: f"{a.tool} cache ({a.path})" for a in self.adopted}
        sources.update(self.served_by)
        return install(self.cache, self.paths.models, self.model, self.folder, state, sources)
