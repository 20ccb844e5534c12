"""Small durable-filesystem helpers: atomic writes, directory fsync, SHA-256 of files."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

HASH_CHUNK = 4 * 1024 * 1024
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def is_sha256(text: str) -> bool:
    """A SHA-256 as the Hub and the registry write it: 64 lowercase hex digits."""
    return _SHA256_HEX.match(text) is not None


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` so that readers see either the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def dir_size(path: Path) -> int:
    """Bytes the files below ``path`` really occupy (sparse partial files count as written)."""
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            st = p.stat()
            if p.is_file():
                total += min(st.st_size, st.st_blocks * 512)
    return total
