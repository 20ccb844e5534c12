"""The cache manifest: what is downloaded, where, with which checksum and how it was used.

Written atomically (temporary file, fsync, rename) and only under the manifest's
cross-process lock, so several processes never lose each other's updates. Read only up to
``MAX_MANIFEST_BYTES``: a bigger file is no manifest vibrant wrote (10,000 models take
about 6 MB), and reading it whole on every command would cost its size in memory.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from filelock import FileLock, Timeout

from ..errors import VibrantError
from ..fsutil import atomic_write
from ..units import format_bytes
from .readonly import READ_ONLY_ERRNOS, read_only_error

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
LOCK_TIMEOUT_S = 60.0
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
# Of an unreadable manifest, what is kept for inspection: enough to see what it was,
# never a second copy of a file that may be huge.
KEPT_OF_UNREADABLE = 1024 * 1024
# A change within this long of a look may share its timestamps (they move a clock tick
# at a time): a snapshot keyed by them is only reused once they are older.
SETTLED_NS = 100_000_000


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

# What ``ManifestStore.disk_key`` compares: the models folder's and the manifest's identity
# and times. Equal keys: neither changed in between.
DiskKey = tuple[int, int, int, tuple[int, int, int, int] | None]


class Unreadable(Exception):
    """The manifest is there but can't be used; the message says why, in plain words."""


class ManifestStore:
    """Reads and writes ``manifest.json``; ``locked()`` serialises writers across processes."""

    def __init__(self, path: Path, lock_path: Path) -> None:
        self.path = path
        self._path_text = str(path)
        self._lock = FileLock(str(lock_path), timeout=LOCK_TIMEOUT_S)
        self.lock_path = lock_path

    @contextmanager
    def locked(self) -> Iterator[None]:
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except Timeout:
            raise VibrantError(
                f"The cache manifest {self.path} stayed locked for {LOCK_TIMEOUT_S:.0f} s.",
                hint="Another vibrant process is busy with the cache; try again in a moment.",
            ) from None
        except OSError as err:
            if err.errno in READ_ONLY_ERRNOS:
                raise read_only_error(self.path.parent, "change its manifest", err) from None
            raise
        try:
            yield
        finally:
            self._lock.release()

    def read(self) -> Manifest:
        """The manifest, or an empty one if there is none; ``Unreadable`` says why not."""
        try:
            # O_NONBLOCK: a FIFO planted at this name must not hang every command.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return Manifest()
        except OSError as err:
            raise Unreadable(f"it can't be read ({err.strerror})") from None
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Unreadable("it is not a plain file")
            if st.st_size > MAX_MANIFEST_BYTES:
                raise Unreadable(_too_big(st.st_size))
            data = f.read(MAX_MANIFEST_BYTES + 1)  # it may grow while read
        if len(data) > MAX_MANIFEST_BYTES:
            raise Unreadable(_too_big(len(data)))
        try:
            manifest = msgspec.json.decode(data, type=Manifest)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            raise Unreadable(f"it is not valid ({err})") from None
        if manifest.version != MANIFEST_VERSION:
            raise Unreadable(f"it has version {manifest.version}, not {MANIFEST_VERSION}")
        return manifest

    def set_aside(self) -> tuple[Path, bool]:
        """Keep an unreadable manifest for inspection rather than deleting it: renamed when
        small, else only its first ``KEPT_OF_UNREADABLE`` bytes (never a second copy of a
        huge file). Earlier set-aside copies go. The path kept, and whether whole."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
        st = self.path.lstat()
        whole = stat.S_ISREG(st.st_mode) and st.st_size <= KEPT_OF_UNREADABLE
        if whole:
            os.replace(self.path, target)
        else:
            head = b""
            if stat.S_ISREG(st.st_mode):
                with self.path.open("rb") as f:
                    head = f.read(KEPT_OF_UNREADABLE)
            atomic_write(target, head)
            self.path.unlink()
        for old in self.path.parent.glob(f"{self.path.name}.corrupt-*"):
            if old != target and not old.name.endswith(".tmp"):
                old.unlink(missing_ok=True)
        return target, whole

    def disk_key(self, folder: str) -> DiskKey | None:
        """What the manifest read now would be read from: ``folder``'s (the models folder)
        identity and times and the manifest's. None when either changed too recently
        for its times to tell a later change apart (or the folder isn't there). Paths as
        strings: this runs once per model in a selection."""
        now = time.time_ns()
        try:
            d = os.stat(folder)
        except OSError:
            return None
        try:
            m: os.stat_result | None = os.stat(self._path_text)
        except FileNotFoundError:
            m = None
        except OSError:
            return None
        times = [d.st_mtime_ns, d.st_ctime_ns, *((m.st_mtime_ns, m.st_ctime_ns) if m else ())]
        if now - max(times) < SETTLED_NS:
            return None
        mine = (m.st_ino, m.st_size, m.st_mtime_ns, m.st_ctime_ns) if m else None
        return (d.st_ino, d.st_mtime_ns, d.st_ctime_ns, mine)

    def write(self, manifest: Manifest) -> None:
        atomic_write(self.path, msgspec.json.format(_encoder.encode(manifest), indent=2))


def _too_big(size: int) -> str:
    return (
        f"it is {format_bytes(size)}, more than the {format_bytes(MAX_MANIFEST_BYTES)} "
        "a manifest can be"
    )
