"""The cache manifest as it is on disk: reconciled with the model files each read (an
entry whose file is gone is dropped, a registry model's file found on disk is adopted),
read again only when the manifest or the models folder changed, and read without the
lock (repairs kept in memory) where the folder is read-only."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from ..fsutil import has_gguf_magic, is_regular
from ..paths import Paths
from ..registry import ModelInfo, Registry
from .manifest import DiskKey, Manifest, ManifestEntry, ManifestFile, ManifestStore, Unreadable
from .readonly import is_read_only, read_only_error

log = logging.getLogger(__name__)


class ReconciledManifest:
    """The manifest of one models folder, for one registry; ``Cache`` builds on it."""

    def __init__(self, paths: Paths, registry: Registry) -> None:
        self.paths = paths
        self.registry = registry
        self.store = ManifestStore(paths.manifest, paths.locks / "manifest.lock")
        self.warnings: list[str] = []
        self._memo: tuple[DiskKey, Manifest] | None = None  # see ``_current``
        self._models_text = str(paths.models)

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        if message not in self.warnings:  # a read-only folder's repairs recur each read
            self.warnings.append(message)

    def read_only(self) -> bool:
        """The models folder can't be written here (a shared, read-only mount)."""
        return is_read_only(self.paths.models)

    def writable(self, doing: str) -> None:
        """Raise the read-only error, saying what couldn't be done, unless writable."""
        if self.read_only():
            raise read_only_error(self.paths.models, doing)

    @contextmanager
    def transaction(
        self, recording: str | None = None, *, read_only: bool = False
    ) -> Iterator[Manifest]:
        """Read, let the caller change, and write the manifest under the cross-process lock.
        ``read_only``: written only if it had to be repaired (no fsync for a mere look). In
        a read-only folder a look reads without the lock and repairs in memory only."""
        if self.read_only():
            if not read_only:
                raise read_only_error(self.paths.models, "change its manifest")
            yield self._read(recording, writable=False)[0]
            return
        self.paths.models.mkdir(parents=True, exist_ok=True)
        with self.store.locked():
            manifest, repaired = self._read(recording, writable=True)
            yield manifest
            if repaired or not read_only:
                self.store.write(manifest)

    def _read(self, recording: str | None, *, writable: bool) -> tuple[Manifest, bool]:
        """The manifest reconciled with the files on disk, and whether that changed it."""
        try:
            manifest = self.store.read()
            repaired = False
        except Unreadable as err:
            repaired = True
            manifest = Manifest()
            name = self.paths.manifest
            if not writable:
                self._warn(
                    f"The cache manifest {name} is unreadable ({err}); the folder is read-only, "
                    "so it was left as it is and the models were read from the files."
                )
            else:
                aside, whole = self.store.set_aside()
                kept = aside.name if whole else f"its first MiB as {aside.name}"
                self._warn(
                    f"The cache manifest {name} was unreadable ({err}); {kept} was kept, and "
                    "the manifest was rebuilt from the model files on disk."
                )
        return manifest, self._reconcile(manifest, recording) or repaired

    def _reconcile(self, manifest: Manifest, recording: str | None = None) -> bool:
        """Drop entries whose files are gone, adopt known models found on disk; True if any.
        The folder is listed once: a lookup per file would make a registry of n models cost
        n stat calls on every read."""
        changed = self._rename_aliases(manifest)
        try:
            names = set(os.listdir(self.paths.models))
        except OSError:
            names = set()

        def present(name: str) -> bool:
            return name in names and (self.paths.models / name).is_file()

        for model_id, entry in list(manifest.models.items()):
            missing = [f.path for f in entry.files if not present(f.path)]
            if missing:
                del manifest.models[model_id]
                changed = True
                self._warn(f"{model_id}: file {missing[0]} is gone; dropped from the manifest.")
        for model in self.registry:
            if model.id in manifest.models or model.id == recording:
                continue
            found = self._files_on_disk(model, present)
            if found is not None:
                files = [self.paths.models / name for name in found]
                if foreign := [f.name for f in files if not _adoptable(f)]:
                    # A link, or a file that is no GGUF: never trusted with a model's id.
                    log.info("%s: not adopting %s (a link or not GGUF)", model.id, foreign[0])
                    continue
                manifest.models[model.id] = self._adopt(model, files)
                changed = True
                self._warn(f"{model.id}: found on disk and adopted into the manifest.")
        return changed

    def _adopt(self, model: ModelInfo, files: list[Path]) -> ManifestEntry:
        stats = [f.stat() for f in files]
        return ManifestEntry(
            id=model.id,
            files=[
                ManifestFile(
                    path=f.name,
                    size_bytes=st.st_size,
                    sha256=None,  # verified on first use rather than hashing GBs now
                    mtime_ns=st.st_mtime_ns,
                    remote_filename=remote.filename,
                )
                for f, st, remote in zip(files, stats, model.files, strict=True)
            ],
            size_bytes=sum(st.st_size for st in stats),
            checksum=None,
            downloaded_at=datetime.fromtimestamp(max(st.st_mtime for st in stats), tz=UTC),
            hf_repo=model.hf_repo,
            revision=None,
        )

    def snapshot(self) -> Manifest:
        """The manifest as it is now. Read again only when the manifest or the models
        folder changed since the last read (``ManifestStore.disk_key``): a selection asks
        for every registry model's entry, and 10,000 reads of it cost minutes."""
        current = self._current()
        return msgspec.structs.replace(current, models=dict(current.models))

    def _current(self) -> Manifest:
        """The last snapshot if nothing changed since (shared: never to be changed)."""
        key = self.store.disk_key(self._models_text)  # before the read: later changes show
        memo = self._memo
        if memo is not None and key is not None and memo[0] == key:
            return memo[1]
        with self.transaction(read_only=True) as manifest:
            fresh = msgspec.structs.replace(manifest, models=dict(manifest.models))
        self._memo = None if key is None else (key, fresh)
        return fresh

    # -- aliases: a renamed model's earlier ids (issue 10) --------------------------------

    def _rename_aliases(self, manifest: Manifest) -> bool:
        """Entries written under an alias move to the id (their files keep their names);
        a second entry for the same files is dropped. True if the manifest changed."""
        changed = False
        for key, entry in list(manifest.models.items()):
            model_id = self.registry.canonical_id(key)
            if model_id == key:
                continue
            current = manifest.models.get(model_id)
            if current is None:
                entry.id = model_id
                manifest.models[model_id] = entry
            elif current.paths == entry.paths:
                current.use_count = max(current.use_count, entry.use_count)
                used = [t for t in (current.last_used, entry.last_used) if t is not None]
                current.last_used = max(used, default=None)
            else:
                continue  # another copy: kept under the alias until the id's copy is removed
            del manifest.models[key]
            changed = True
            log.info("%s: cache entry renamed to %s, the model's id now", key, model_id)
        return changed

    def _files_on_disk(self, model: ModelInfo, present: Callable[[str], bool]) -> list[str] | None:
        """The names of the model's files under its id or, failing that, under an alias
        (named before the rename); None when neither is complete."""
        for name in [model.id, *reversed(model.aliases)]:
            files = model.local_filenames(name)
            if all(present(f) for f in files):
                return files
        return None

    def entries(self) -> list[ManifestEntry]:
        return list(self._current().models.values())

    def get(self, model_id: str) -> ManifestEntry | None:
        return self._current().models.get(self.registry.canonical_id(model_id))


def _adoptable(path: Path) -> bool:
    return is_regular(path) and has_gguf_magic(path)
