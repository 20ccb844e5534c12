"""The model cache: files in ``<home>/models``, their manifest, pruning and cleaning."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path

import msgspec

from ..errors import (
    CacheFullError,
    ChecksumMismatchError,
    DiskFullError,
    ModelInUseError,
    NotCachedError,
)
from ..fsutil import dir_size, freed_by_unlink, has_gguf_magic, is_regular, sha256_file
from ..paths import Paths
from ..registry import ModelInfo, Registry
from ..units import format_bytes
from .locks import is_download_active, is_in_use
from .manifest import ManifestEntry, ManifestFile, utcnow
from .partials import read_state
from .reconcile import ReconciledManifest

log = logging.getLogger(__name__)

STALE_PARTIAL_AGE = timedelta(hours=24)
MODIFIED = " was modified since it was recorded"  # the one problem a hash can clear


class PartialDownload(msgspec.Struct, kw_only=True):
    model_id: str
    downloaded_bytes: int
    total_bytes: int | None
    updated_at: datetime | None
    active: bool  # a process is transferring it right now


class RemovalResult(msgspec.Struct, kw_only=True):
    removed: list[str] = []
    freed_bytes: int = 0


class CacheStats(msgspec.Struct, kw_only=True):
    cache_dir: str
    total_bytes: int
    max_cache_bytes: int | None
    models: int
    partial_bytes: int


class Cache(ReconciledManifest):
    """Everything that reads or changes the cache folder goes through here."""

    def __init__(
        self,
        paths: Paths,
        registry: Registry,
        *,
        max_bytes: int | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__(paths, registry)
        self.max_bytes = max_bytes
        self.clock = clock

    # -- queries ---------------------------------------------------------------------

    def require(self, model_id: str) -> ManifestEntry:
        model_id = self.registry.canonical_id(model_id)
        entry = self.get(model_id)
        if entry is None:
            model = self.registry.get(model_id)
            size = model.download_bytes
            fetch = f" ({format_bytes(size)} to fetch)" if size else ""
            raise NotCachedError(
                f"{model_id} is not downloaded{fetch}.",
                hint=f"Download it with `vibrant model download {model_id}`.",
                modelId=model_id,
                downloadBytes=model.download_bytes,
            )
        return entry

    def file_paths(self, entry: ManifestEntry) -> list[Path]:
        return [self.paths.models / f.path for f in entry.files]

    def problems(self, entry: ManifestEntry) -> list[str]:
        """What is wrong with a cached model's files, found without hashing them: a mark
        left by a failed verify, a link or other non-plain file, a size or modification
        time other than recorded, no GGUF magic. Empty: as downloaded, as far as this sees."""
        out: list[str] = []
        if entry.damaged:
            out.append(entry.damaged)
        for f, path in zip(entry.files, self.file_paths(entry), strict=True):
            try:
                st = path.lstat()
            except OSError:
                out.append(f"{f.path} is missing")
                continue
            if not is_regular(path):
                out.append(f"{f.path} is not a plain file")
            elif st.st_size != f.size_bytes:
                out.append(f"{f.path} has {st.st_size} bytes, not the {f.size_bytes} recorded")
            elif not has_gguf_magic(path):
                out.append(f"{f.path} does not start with GGUF's magic")
            elif st.st_mtime_ns != f.mtime_ns:
                out.append(f"{f.path}{MODIFIED}")
        return out

    def partials(self) -> list[PartialDownload]:
        out: list[PartialDownload] = []
        if not self.paths.downloading.is_dir():
            return out
        for folder in sorted(self.paths.downloading.iterdir()):
            link = folder.is_symlink()  # listed (clean removes it), never read through
            if not link and not folder.is_dir():
                continue
            state = None if link else read_state(folder)
            out.append(
                PartialDownload(
                    model_id=folder.name,
                    downloaded_bytes=state.downloaded_bytes if state else 0,
                    total_bytes=state.total_bytes if state else None,
                    updated_at=state.updated_at if state else None,
                    active=is_download_active(self.paths.locks, folder.name),
                )
            )
        return out

    def stats(self) -> CacheStats:
        entries = self.entries()
        # blocks really written: a partial file is preallocated (sparse) to its full size
        partial = dir_size(self.paths.downloading) if self.paths.downloading.is_dir() else 0
        return CacheStats(
            cache_dir=str(self.paths.models),
            total_bytes=sum(e.size_bytes for e in entries),
            max_cache_bytes=self.max_bytes,
            models=len(entries),
            partial_bytes=partial,
        )

    def in_use(self, model_id: str) -> bool:
        return is_in_use(self.paths.locks, self.registry.canonical_id(model_id))

    # -- changes ---------------------------------------------------------------------

    def touch(self, model_id: str) -> ManifestEntry:
        """Record a use: last_used now, use_count + 1 (not in a read-only folder: a use
        is bookkeeping, and loading from a shared folder must work)."""
        model_id = self.registry.canonical_id(model_id)
        if self.read_only():
            log.info("%s: use not recorded, %s is read-only", model_id, self.paths.models)
            return self.require(model_id)
        with self.transaction() as manifest:
            entry = manifest.models.get(model_id)
            if entry is None:
                raise NotCachedError(f"{model_id} is not downloaded.", modelId=model_id)
            entry.last_used = self.clock()
            entry.use_count += 1
            return entry

    def record(self, entry: ManifestEntry) -> None:
        with self.transaction(recording=entry.id) as manifest:
            manifest.models[entry.id] = entry

    def _delete_files(self, entry: ManifestEntry) -> int:
        """Delete the entry's files; the bytes really freed (a link frees about nothing)."""
        freed = 0
        for path in self.file_paths(entry):
            with contextlib.suppress(FileNotFoundError):
                size = freed_by_unlink(path)
                path.unlink()
                freed += size
        return freed

    def _delete_partial(self, model_id: str) -> int:
        """Delete a partial download's folder; the bytes freed. A link planted in its place
        goes itself, never what it points to (it freed nothing)."""
        folder = self.paths.partial_dir(model_id)
        if folder.is_symlink():
            folder.unlink()
            return 0
        if not folder.is_dir() or is_download_active(self.paths.locks, model_id):
            return 0
        freed = dir_size(folder)
        shutil.rmtree(folder, ignore_errors=True)
        return freed

    def remove(self, model_id: str) -> int:
        """Delete a model's files (and any partial download of it); return bytes freed."""
        model_id = self.registry.canonical_id(model_id)
        if model_id not in self.registry and self.get(model_id) is None:
            self.registry.get(model_id)  # raises ModelNotFoundError with suggestions
        self.writable(f"remove {model_id}")
        if self.in_use(model_id):
            raise ModelInUseError(
                f"{model_id} is loaded by a running vibrant server and can't be removed now.",
                hint="Unload it in the editor (or stop the server) and try again.",
                modelId=model_id,
            )
        # The partial first: on a full disk, its space is what lets the manifest be written.
        freed = self._delete_partial(model_id)
        cached = self.snapshot().models.get(model_id) is not None
        entry = None
        # read_only when there is no entry: removing only a partial writes nothing more.
        with self.transaction(read_only=not cached) as manifest:
            entry = manifest.models.pop(model_id, None)
            freed += self._delete_files(entry) if entry else 0
        if entry is None and freed == 0:
            raise NotCachedError(
                f"{model_id} is not downloaded; nothing to remove.", modelId=model_id
            )
        return freed

    def prune(self, max_bytes: int | None = None, protect: Iterable[str] = ()) -> RemovalResult:
        """Remove least recently used models until the cache fits ``max_bytes``."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        result = RemovalResult()
        if limit is None:
            return result
        self.writable("prune models")
        keep = set(protect)
        with self.transaction() as manifest:
            total = sum(e.size_bytes for e in manifest.models.values())
            for entry in sorted(manifest.models.values(), key=lambda e: e.last_touched):
                if total <= limit:
                    break
                if entry.id in keep or self.in_use(entry.id):
                    continue
                freed = self._delete_files(entry)
                total -= entry.size_bytes
                result.freed_bytes += freed
                result.removed.append(entry.id)
                del manifest.models[entry.id]
        return result

    def make_room(self, model: ModelInfo, needed_bytes: int) -> RemovalResult:
        """Prune so that ``needed_bytes`` more fit under the size limit, or say what to remove."""
        if self.max_bytes is None:
            return RemovalResult()
        entries = [e for e in self.entries() if e.id != model.id]
        total = sum(e.size_bytes for e in entries)
        if total + needed_bytes <= self.max_bytes:
            return RemovalResult()
        removable = [e for e in entries if not self.in_use(e.id)]
        if total - sum(e.size_bytes for e in removable) + needed_bytes > self.max_bytes:
            kept = ", ".join(e.id for e in entries if e not in removable) or "nothing"
            raise CacheFullError(
                f"{model.id} needs {format_bytes(needed_bytes)}, but the cache limit is "
                f"{format_bytes(self.max_bytes)} and the models in use ({kept}) already take "
                f"{format_bytes(total - sum(e.size_bytes for e in removable))}.",
                hint="Raise the cache size limit, or unload a model and remove it "
                "with `vibrant model remove <id>`.",
                neededBytes=needed_bytes,
                maxCacheBytes=self.max_bytes,
                usedBytes=total,
            )
        return self.prune(self.max_bytes - needed_bytes, protect=[model.id])

    def clean(self, older_than: timedelta | None = None) -> RemovalResult:
        """Remove partial downloads (not active ones) and, with ``older_than``, unused models."""
        self.writable("clean the cache")
        result = RemovalResult()
        for partial in self.partials():
            freed = self._delete_partial(partial.model_id)
            if freed or not partial.active:
                result.removed.append(f"{partial.model_id} (partial)")
                result.freed_bytes += freed
        if older_than is not None:
            cutoff = self.clock() - older_than
            with self.transaction() as manifest:
                for entry in list(manifest.models.values()):
                    if entry.last_touched < cutoff and not self.in_use(entry.id):
                        result.freed_bytes += self._delete_files(entry)
                        result.removed.append(entry.id)
                        del manifest.models[entry.id]
        return result

    def clean_stale_partials(self, max_age: timedelta = STALE_PARTIAL_AGE) -> RemovalResult:
        """At start-up: partial downloads nobody touched for ``max_age`` are removed (none
        from a read-only folder: a start-up chore, not worth an error)."""
        result = RemovalResult()
        if self.read_only():
            return result
        cutoff = self.clock() - max_age
        for partial in self.partials():
            folder = self.paths.partial_dir(partial.model_id)
            updated = partial.updated_at
            if updated is None:
                with contextlib.suppress(OSError):
                    mtime = max(p.stat().st_mtime for p in [folder, *folder.iterdir()])
                    updated = datetime.fromtimestamp(mtime, tz=cutoff.tzinfo)
            if updated is not None and updated < cutoff and not partial.active:
                result.freed_bytes += self._delete_partial(partial.model_id)
                result.removed.append(partial.model_id)
        return result

    # -- trust ------------------------------------------------------------------------

    def _expected_sha(self, model_id: str, index: int, recorded: str | None) -> str | None:
        if recorded:
            return recorded
        model = self.registry.find(model_id)
        return model.files[index].sha256 if model and index < len(model.files) else None

    def verify(self, model_id: str, *, force: bool = True) -> ManifestEntry:
        """Check a cached model's files. Without ``force``, hash only files whose size or
        mtime changed since they were recorded (or that were never verified)."""
        model_id = self.registry.canonical_id(model_id)
        entry = self.require(model_id)
        if entry.damaged and not force:
            raise ChecksumMismatchError(
                f"{model_id} is damaged ({entry.damaged}); it is not loaded.",
                hint=repair_hint(model_id),
                modelId=model_id,
                file=entry.files[0].path,
            )
        updated: list[ManifestFile] = []
        for index, (f, path) in enumerate(zip(entry.files, self.file_paths(entry), strict=True)):
            st = path.stat()
            unchanged = st.st_size == f.size_bytes and st.st_mtime_ns == f.mtime_ns
            if unchanged and f.sha256 and not force:
                updated.append(f)
                continue
            actual = sha256_file(path)
            expected = self._expected_sha(model_id, index, f.sha256)
            if expected and actual != expected:
                self._mark_damaged(model_id, f"{f.path} failed its checksum")
                raise ChecksumMismatchError(
                    f"{model_id}: {f.path} is damaged: its SHA-256 is {actual}, "
                    f"expected {expected}.",
                    hint=repair_hint(model_id),
                    modelId=model_id,
                    file=f.path,
                    expected=expected,
                    actual=actual,
                )
            updated.append(
                msgspec.structs.replace(
                    f, sha256=actual, size_bytes=st.st_size, mtime_ns=st.st_mtime_ns
                )
            )
        if updated == entry.files and not entry.damaged:
            return entry
        if self.read_only():  # the files are fine; a shared folder can't remember it
            log.info("%s: verified, not recorded (%s is read-only)", model_id, self.paths.models)
            return msgspec.structs.replace(entry, files=updated, damaged=None)
        try:
            with self.transaction() as manifest:
                current = manifest.models.get(model_id)
                if current is None:
                    raise NotCachedError(f"{model_id} was removed while it was verified.")
                current.files = updated
                current.size_bytes = sum(f.size_bytes for f in updated)
                current.checksum = f"sha256:{updated[0].sha256}"
                current.damaged = None  # hashed whole now (a file put back by hand)
                return current
        except DiskFullError as err:
            # The files are fine; only remembering their hashes failed: the next use
            # hashes them again.
            self._warn(f"{model_id}: verified, but the result could not be recorded: {err}")
            return msgspec.structs.replace(entry, files=updated, damaged=None)

    def _mark_damaged(self, model_id: str, why: str) -> None:
        """Remember a failed check, so loads refuse the file until a download replaces it."""
        if self.read_only():
            self._warn(f"{model_id}: {why}; {self.paths.models} is read-only, so not recorded")
            return
        try:
            with self.transaction() as manifest:
                current = manifest.models.get(model_id)
                if current is not None:
                    current.damaged = why
        except DiskFullError as err:
            self._warn(f"{model_id}: could not record that it is damaged: {err}")


def repair_hint(model_id: str) -> str:
    return f"Run `vibrant model download {model_id}`: it replaces the damaged file."
