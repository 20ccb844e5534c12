"""Small durable-filesystem helpers: atomic writes, directory fsync, SHA-256 of files,
and the few checks that keep the cache from trusting or writing through foreign files."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
from pathlib import Path

from .errors import DiskFullError
from .units import format_bytes

HASH_CHUNK = 4 * 1024 * 1024
GGUF_MAGIC = b"GGUF"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_sha256(text: str) -> bool:
    """A SHA-256 as the Hub and the registry write it: 64 lowercase hex digits."""
    return _SHA256_HEX.match(text) is not None


def is_no_space(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in _NO_SPACE


def free_bytes(folder: Path) -> int:
    """Free bytes on the filesystem holding ``folder`` (its nearest existing parent)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def disk_full(folder: Path, needed: int, what: str, *, kept: str | None = None) -> DiskFullError:
    """The DiskFull error for ``folder``: how much was needed, how much is free, what to do."""
    free = free_bytes(folder)
    hint = (
        "Free some space (remove models with `vibrant model remove <id>`, or partial "
        "downloads with `vibrant model cache clean`), or move the cache with VIBRANT_HOME"
    )
    hint += f"; {kept}." if kept else "."
    return DiskFullError(
        f"The disk holding {folder} is full: {what} needs {format_bytes(needed)}, but only "
        f"{format_bytes(free)} is free.",
        hint=hint,
        path=str(folder),
        neededBytes=needed,
        freeBytes=free,
    )


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` so that readers see either the old file or the new one, never half.
    A full disk is the DiskFull error (the old file is left as it was)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # O_EXCL below: a link planted at this name is never followed
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        fsync_dir(path.parent)
    except OSError as err:
        if is_no_space(err):
            raise disk_full(path.parent, len(data), f"writing {path.name}") from None
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def is_regular(path: Path) -> bool:
    """A plain file here, not a link to one (``Path.is_file`` follows links)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def has_gguf_magic(path: Path) -> bool:
    """``path`` is a plain file that starts with GGUF's magic (every shard of a split model
    does too). Opened without following a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.pread(fd, 4, 0) == GGUF_MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


def freed_by_unlink(path: Path) -> int:
    """The bytes deleting ``path`` really gives back: a link, or a file with another hard
    link, frees (about) nothing; a sparse file frees only its written blocks."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        return 0
    return min(st.st_size, st.st_blocks * 512)


def dir_size(path: Path) -> int:
    """Bytes the files below ``path`` really occupy (sparse partial files count as written;
    links count as nothing)."""
    total = 0
    # os.walk, not Path.rglob: a folder removed while it is read (a download finishing
    # moves its partial folder away as `cacheStats` adds it up) is skipped, where rglob's
    # scandir raised FileNotFoundError out of the request.
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                if stat.S_ISREG(st.st_mode):
                    total += min(st.st_size, st.st_blocks * 512)
    return total
