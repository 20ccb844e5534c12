"""Model updates: does the Hub's revision now point to different files than the cached ones?

A new commit that leaves a model's files as they were is not an update: the
recorded commit just moves. An entry pinned to a commit (or to a SHA-256 in the
registry) never updates. Nothing here downloads unless asked (``update_model``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import msgspec

from ..cache.manifest import ManifestEntry, ModelVersion, utcnow
from ..cache.store import Cache
from ..errors import HubUnreachableError, NotCachedError, VibrantError
from ..fsutil import atomic_write
from ..offline import is_offline
from ..registry import ModelInfo, Registry
from .downloader import Downloader, DownloadResult
from .hub import HubClient, Refs, RevisionInfo, TransientError
from .progress import ProgressCallback

log = logging.getLogger(__name__)

CHECK_INTERVAL = timedelta(days=7)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class UpdateInfo(msgspec.Struct, kw_only=True, frozen=True):
    model_id: str
    current_revision: str | None
    latest_revision: str
    size_bytes: int  # what the update downloads
    changed_files: list[str]


class UpdateCheck(msgspec.Struct, kw_only=True):
    updates: list[UpdateInfo]
    checked_at: datetime
    moved: list[str] = []  # new commit, same files: only the recorded commit moved
    pinned: list[str] = []  # pinned to a commit or a SHA-256: never updates
    errors: list[str] = []  # models whose check failed, with why


class UpdateState(msgspec.Struct, kw_only=True):
    """Persisted in ``<home>/state.json`` so the weekly check survives restarts."""

    last_update_check: datetime | None = None
    available: list[UpdateInfo] = []


def read_update_state(path: Path) -> UpdateState:
    with contextlib.suppress(OSError, msgspec.DecodeError, msgspec.ValidationError):
        return msgspec.json.decode(path.read_bytes(), type=UpdateState)
    return UpdateState()


def write_update_state(path: Path, state: UpdateState) -> None:
    atomic_write(path, msgspec.json.encode(state))


def is_pinned(model: ModelInfo) -> bool:
    if model.revision and _COMMIT.match(model.revision):
        return True
    return all(f.sha256 for f in model.files)


def _branch_commit(refs: Refs, revision: str) -> str | None:
    name = revision.removeprefix("refs/heads/").removeprefix("refs/tags/")
    for ref in [*refs.branches, *refs.tags]:
        if ref.name == name:
            return ref.target_commit
    return None


class _RepoView:
    """One check's view of a repository: refs once, file metadata once per commit."""

    def __init__(self, hub: HubClient, repo: str) -> None:
        self.hub, self.repo = hub, repo
        self._refs: Refs | None = None
        self._infos: dict[str, RevisionInfo] = {}

    def commit_of(self, revision: str, first_file: str) -> str | None:
        if self._refs is None:
            self._refs = self.hub.refs(self.repo)
        commit = _branch_commit(self._refs, revision)
        if commit is None:  # not a branch or tag name the API lists: ask the resolver
            commit = self.hub.resolve(self.repo, revision, first_file).commit
        return commit

    def file(self, commit: str, filename: str) -> tuple[str | None, int | None]:
        res = self.hub.resolve(self.repo, commit, filename)
        if res.sha256 is not None:
            return res.sha256, res.size
        if commit not in self._infos:
            self._infos[commit] = self.hub.revision_info(self.repo, commit)
        sha, size = self._infos[commit].file_sha256(filename)
        return sha, size if size is not None else res.size


class Updates:
    """Update checks and updates of the models in one cache."""

    def __init__(
        self,
        registry: Registry,
        cache: Cache,
        downloader: Downloader,
        state_file: Path,
        *,
        hub_factory: Callable[[], HubClient] = HubClient,
    ) -> None:
        self.registry, self.cache, self.downloader = registry, cache, downloader
        self.state_file = state_file
        self.hub_factory = hub_factory

    def _record_seen(
        self, model_id: str, commit: str, files_same: bool, size: int, sha: str | None
    ) -> None:
        now = utcnow()
        with self.cache.transaction() as manifest:
            entry = manifest.models.get(model_id)
            if entry is None:
                return
            if all(v.revision != commit for v in entry.versions):
                entry.versions.append(
                    ModelVersion(revision=commit, seen_at=now, size_bytes=size, sha256=sha)
                )
            if files_same:
                entry.revision = commit

    def check_model(self, entry: ManifestEntry, view: _RepoView) -> UpdateInfo | None:
        """The update for one cached model, or None (recording the commit if only it moved)."""
        model = self.registry.get(entry.id)
        revision = model.revision or "main"
        commit = view.commit_of(revision, model.files[0].filename)
        if commit is None or commit == entry.revision:
            return None
        if any(f.sha256 is None for f in entry.files):
            entry = self.cache.verify(entry.id, force=False)  # adopted files: hash them once
        remote = [view.file(commit, f.filename) for f in model.files]
        current = [f.sha256 for f in entry.files]
        latest = [sha for sha, _ in remote]
        size = sum(s or 0 for _, s in remote)
        same = current == latest
        self._record_seen(entry.id, commit, same, size, latest[0])
        if same:
            return None
        changed = [
            mf.filename
            for i, mf in enumerate(model.files)
            if i >= len(current) or current[i] != latest[i]
        ]
        return UpdateInfo(
            model_id=entry.id,
            current_revision=entry.revision,
            latest_revision=commit,
            size_bytes=size,
            changed_files=changed,
        )

    def check(
        self, model_ids: list[str] | None = None, *, clock: Callable[[], datetime] = utcnow
    ) -> UpdateCheck:
        """Check the cached models (or ``model_ids``) against the Hub; persist what was found."""
        entries = self.cache.entries()
        if model_ids is not None:
            # An old id (an alias) names the model it is now.
            model_ids = [self.registry.canonical_id(m) for m in model_ids]
            for model_id in model_ids:
                self.registry.get(model_id)
                if model_id not in {e.id for e in entries}:
                    raise NotCachedError(
                        f"{model_id} is not downloaded, so there is nothing to update.",
                        hint=f"Download it with `vibrant model download {model_id}`.",
                        modelId=model_id,
                    )
            entries = [e for e in entries if e.id in model_ids]
        result = UpdateCheck(updates=[], checked_at=clock())
        hub = self.hub_factory()  # raises OfflineError under HF_HUB_OFFLINE, before any request
        views: dict[str, _RepoView] = {}
        try:
            for entry in entries:
                model = self.registry.find(entry.id)
                if model is None:
                    continue
                if is_pinned(model):
                    result.pinned.append(entry.id)
                    continue
                view = views.setdefault(model.hf_repo, _RepoView(hub, model.hf_repo))
                try:
                    info = self.check_model(entry, view)
                except TransientError as err:  # no answer: the rest would fare no better
                    raise HubUnreachableError(
                        f"The Hub at {hub.endpoint} could not be reached: {err}",
                        hint="Check your connection (and HF_ENDPOINT or proxy settings), "
                        "then try again.",
                    ) from None
                except VibrantError as err:
                    result.errors.append(f"{entry.id}: {err.message}")
                    continue
                if info is not None:
                    result.updates.append(info)
                elif entry.revision != (self.cache.get(entry.id) or entry).revision:
                    result.moved.append(entry.id)
        finally:
            hub.close()
        state = read_update_state(self.state_file)
        state.last_update_check = result.checked_at
        checked = {e.id for e in entries}
        state.available = [u for u in state.available if u.model_id not in checked] + result.updates
        write_update_state(self.state_file, state)
        return result

    def update(
        self,
        model_id: str,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> DownloadResult:
        """Fetch the model's latest files beside the old ones; swap only once verified."""
        model = self.registry.get(model_id)
        model_id = model.id  # an alias names the model it is now
        self.cache.require(model_id)
        if is_pinned(model):
            raise VibrantError(
                f"{model_id} is pinned to a fixed commit or checksum in the registry, so it "
                "never updates.",
                hint="Change its revision (or sha256) in your registry to move it.",
                modelId=model_id,
            )
        result = self.downloader.download(model, progress, cancel, latest=True)
        state = read_update_state(self.state_file)
        state.available = [u for u in state.available if u.model_id != model_id]
        write_update_state(self.state_file, state)
        return result


class UpdateSchedule:
    """At most one background check a week, never offline; the clock is injectable."""

    def __init__(self, updates: Updates, clock: Callable[[], datetime] = utcnow) -> None:
        self.updates, self.clock = updates, clock

    def due(self) -> bool:
        if is_offline():
            return False
        last = read_update_state(self.updates.state_file).last_update_check
        return last is None or self.clock() - last >= CHECK_INTERVAL

    def run_if_due(self) -> UpdateCheck | None:
        if not self.due() or not self.updates.cache.entries():
            return None
        return self.updates.check(clock=self.clock)
