"""The cache manifest: what is downloaded, where, with which checksum and how it was used.

Written atomically (temporary file, fsync, rename) and only under the manifest's
cross-process lock, so several processes never lose each other's updates.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from filelock import FileLock, Timeout

from ..errors import VibrantError
from ..fsutil import atomic_write

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
LOCK_TIMEOUT_S = 60.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class ManifestFile(msgspec.Struct, kw_only=True):
    path: str  # file name inside the models folder
    size_bytes: int
    sha256: str | None  # None: adopted from disk, not yet verified
    mtime_ns: int
    remote_filename: str | None = None
    source: str | None = None  # where it came from: a source's host:port, or another tool's cache


class ModelVersion(msgspec.Struct, kw_only=True):
    revision: str | None
    seen_at: datetime
    size_bytes: int
    sha256: str | None


class ManifestEntry(msgspec.Struct, kw_only=True):
    id: str
    files: list[ManifestFile]
    size_bytes: int
    checksum: str | None  # "sha256:<hex>" of the first (or only) file
    downloaded_at: datetime
    hf_repo: str | None = None
    revision: str | None = None  # the Hub commit the files came from
    last_used: datetime | None = None
    use_count: int = 0
    versions: list[ModelVersion] = []
    # Why a verify found it damaged (None: not known to be); loads refuse it, a download
    # replaces it.
    damaged: str | None = None

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    @property
    def last_touched(self) -> datetime:
        return self.last_used or self.downloaded_at


class Manifest(msgspec.Struct, kw_only=True):
    version: int = MANIFEST_VERSION
    models: dict[str, ManifestEntry] = {}


_encoder = msgspec.json.Encoder()


class ManifestStore:
    """Reads and writes ``manifest.json``; ``locked()`` serialises writers across processes."""

    def __init__(self, path: Path, lock_path: Path) -> None:
        self.path = path
        self._lock = FileLock(str(lock_path), timeout=LOCK_TIMEOUT_S)
        self.lock_path = lock_path

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._lock:
                yield
        except Timeout:
            raise VibrantError(
                f"The cache manifest {self.path} stayed locked for {LOCK_TIMEOUT_S:.0f} s.",
                hint="Another vibrant process is busy with the cache; try again in a moment.",
            ) from None

    def read(self) -> Manifest | None:
        """The manifest, an empty one if there is none, or None if it is unreadable."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Manifest()
        except OSError as err:
            log.warning("cannot read %s: %s", self.path, err)
            return None
        try:
            manifest = msgspec.json.decode(data, type=Manifest)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            log.warning("manifest %s is invalid: %s", self.path, err)
            return None
        if manifest.version != MANIFEST_VERSION:
            log.warning("manifest %s has unknown version %s", self.path, manifest.version)
            return None
        return manifest

    def set_aside(self) -> Path:
        """Keep an unreadable manifest for inspection rather than deleting it."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
        os.replace(self.path, target)
        return target

    def write(self, manifest: Manifest) -> None:
        atomic_write(self.path, msgspec.json.format(_encoder.encode(manifest), indent=2))
