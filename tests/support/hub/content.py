"""What the stand-in serves: blobs, the files of a commit, and repositories of commits."""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Blob",
    "FileEntry",
    "Repo",
    "check_filename",
    "check_repo_id",
    "git_blob_sha1",
    "lfs_pointer",
    "resolve_rev",
    "sha256_of_path",
]

_HEX40 = re.compile(r"^[0-9a-f]{40}$")

_path_hash_cache: dict[tuple[str, int, int], str] = {}
_path_hash_lock = threading.Lock()


def sha256_of_path(path: Path) -> str:
    """SHA-256 of a file on disk, cached per (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _path_hash_lock:
        cached = _path_hash_cache.get(key)
    if cached is not None:
        return cached
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    with _path_hash_lock:
        _path_hash_cache[key] = digest
    return digest


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file text that git stores for an LFS file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    ).encode()


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """File content: either bytes in memory or a path on disk (streamed)."""

    sha256: str
    size: int
    data: bytes | None = None
    path: Path | None = None

    @classmethod
    def from_content(cls, content: bytes | Path) -> Blob:
        if isinstance(content, Path):
            p = content.resolve()
            return cls(sha256=sha256_of_path(p), size=p.stat().st_size, path=p)
        data = bytes(content)
        return cls(sha256=hashlib.sha256(data).hexdigest(), size=len(data), data=data)

    def read_all(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()


@dataclass(frozen=True)
class FileEntry:
    """A file in a commit: its blob and whether it is stored with git-lfs."""

    blob: Blob
    lfs: bool = True

    @property
    def pointer(self) -> bytes:
        return lfs_pointer(self.blob.sha256, self.blob.size)

    @property
    def git_oid(self) -> str:
        """Git blob id: of the LFS pointer for LFS files, of the content otherwise."""
        if self.lfs:
            return git_blob_sha1(self.pointer)
        return git_blob_sha1(self.blob.read_all())


@dataclass
class Repo:
    repo_id: str
    gated: bool
    private: bool
    token: str | None
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, FileEntry]] = field(default_factory=dict)
    commit_times: dict[str, float] = field(default_factory=dict)


def check_repo_id(repo_id: str) -> None:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or any(c in repo_id for c in " ?#%"):
        raise ValueError(f"repo id must be OWNER/NAME: {repo_id!r}")


def check_filename(name: str) -> None:
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in name.split("/")):
        raise ValueError(f"bad filename {name!r}")


def resolve_rev(repo: Repo, rev: str) -> str | None:
    if rev.startswith("refs/heads/"):
        rev = rev[len("refs/heads/") :]
    if rev in repo.branches:
        return repo.branches[rev]
    if _HEX40.match(rev) and rev in repo.commits:
        return rev
    return None
