"""The state file kept beside a partial download in ``.downloading/<model-id>/``.

It records where the bytes came from (commit, validator, size) and which byte
ranges are complete, so that any later process can resume after any interruption.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path

import msgspec

from ..fsutil import atomic_write

STATE_FILE = "state.json"


class FileProgress(msgspec.Struct, kw_only=True):
    name: str  # local file name (what it becomes in the models folder)
    remote_filename: str
    size_bytes: int | None = None
    sha256: str | None = None  # the digest it must have, when known
    etag: str | None = None  # the Hub's validator for this file
    done: list[tuple[int, int]] = []  # complete [start, end) ranges, merged and sorted
    complete: bool = False  # hashed (and checked, where a reference is known) and fsynced
    verified: bool = False  # its SHA-256 matched a reference known before the download
    # Who vouched for ``sha256`` before the download: "registry", or the source (host:port,
    # the Hub or a trusted mirror) whose word it is; None: nobody, the hash is only recorded.
    reference_by: str | None = None

    @property
    def done_bytes(self) -> int:
        return sum(end - start for start, end in self.done)


class PartialState(msgspec.Struct, kw_only=True):
    version: int = 1
    model_id: str
    hf_repo: str
    commit: str | None = None
    files: list[FileProgress] = []
    started_at: datetime
    updated_at: datetime

    @property
    def downloaded_bytes(self) -> int:
        return sum(f.size_bytes or 0 if f.complete else f.done_bytes for f in self.files)

    @property
    def total_bytes(self) -> int | None:
        if any(f.size_bytes is None for f in self.files):
            return None
        return sum(f.size_bytes or 0 for f in self.files)


def read_state(folder: Path) -> PartialState | None:
    with contextlib.suppress(OSError, msgspec.DecodeError, msgspec.ValidationError):
        return msgspec.json.decode((folder / STATE_FILE).read_bytes(), type=PartialState)
    return None


def write_state(folder: Path, state: PartialState) -> None:
    atomic_write(folder / STATE_FILE, msgspec.json.encode(state))


def same_file(prev: FileProgress, new: FileProgress) -> bool:
    """The partial bytes may be kept only if upstream is still the very same file."""
    if prev.remote_filename != new.remote_filename or prev.size_bytes != new.size_bytes:
        return False
    if prev.sha256 and new.sha256:
        return prev.sha256 == new.sha256
    return prev.etag is not None and prev.etag == new.etag
