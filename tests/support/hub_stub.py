"""A loopback stand-in for the Hugging Face Hub (endpoint + signed-URL CDN).

Standard library only.  Two real HTTP/1.1 servers:

* the *endpoint* on 127.0.0.1 (resolve URLs, the JSON API, and a control API
  under ``/_stub/``), and
* the *CDN* on 127.0.0.2, which serves blobs by SHA-256 behind signed,
  expiring URLs, with byte ranges.

See ``docs/hub-protocol.md`` for the behaviour this mirrors.  Use it in-process::

    with HubStub() as stub:
        commit = stub.add_repo("Qwen/X-GGUF", {"x.gguf": b"..."})
        os.environ["HF_ENDPOINT"] = stub.endpoint
        stub.faults.drop_after_bytes = 1000
        stub.faults.drop_count = 1

or as a separate process::

    python tests/support/hub_stub.py --repo Qwen/X-GGUF=/abs/x.gguf --ready-file /tmp/r.json
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = [
    "Blob",
    "Faults",
    "FileEntry",
    "HubStub",
    "RequestRecord",
    "main",
]

CHUNK = 1 << 20  # 1 MiB
ENDPOINT_HOST = "127.0.0.1"
CDN_HOST = "127.0.0.2"
# How long ``requests`` waits for a request still being answered to be recorded.
SETTLE_S = 2.0
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)

# --------------------------------------------------------------------------
# Content model
# --------------------------------------------------------------------------

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
class _Repo:
    repo_id: str
    gated: bool
    private: bool
    token: str | None
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, FileEntry]] = field(default_factory=dict)
    commit_times: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------
# Faults and stats
# --------------------------------------------------------------------------


@dataclass
class Faults:
    """Switchable faults.  Counters (``*_count``, ``status_sequence``) are
    consumed by the server as they fire; everything is read live, so a test
    may change a field at any time (also through ``POST /_stub/faults``)."""

    throttle_bps: int | None = None
    """Cap each CDN response at this many body bytes per second (None: no cap)."""
    drop_after_bytes: int | None = None
    drop_count: int = 0
    """The next drop_count CDN GET responses with a body send drop_after_bytes
    body bytes, then close the connection (the client sees a short body)."""
    ignore_range: bool = False
    """CDN answers 200 with the whole file even when a Range is asked."""
    status_sequence: list[int] = field(default_factory=list)
    """The next requests to status_target answer these statuses, in order."""
    status_target: str = "cdn"
    """"cdn", "endpoint" (resolve + API, not /_stub) or "both"."""
    retry_after: int | None = None
    """Adds Retry-After: N (and, on 429, a RateLimit header) to those statuses."""
    stall_after_bytes: int | None = None
    stall_seconds: float = 0.0
    stall_count: int = 0
    """The next stall_count CDN GET responses with a body send stall_after_bytes
    body bytes, then send nothing for stall_seconds, then close."""
    corrupt_offset: int | None = None
    corrupt_count: int = 0
    """The next corrupt_count CDN GET responses whose served range covers the
    absolute file offset corrupt_offset have that byte flipped (xor 0xFF)."""
    redirect_expires_s: int = 3600
    """Lifetime of signed CDN URLs; a negative value yields expired URLs."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def update(self, values: Mapping[str, Any]) -> None:
        """Set the fields given (validated); raises ValueError on unknown ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        for key, value in values.items():
            if key == "status_sequence":
                value = [int(v) for v in (value or [])]
            elif key == "status_target":
                if value not in ("cdn", "endpoint", "both"):
                    raise ValueError("status_target must be cdn, endpoint or both")
            elif key in (
                "throttle_bps",
                "drop_after_bytes",
                "stall_after_bytes",
                "corrupt_offset",
                "retry_after",
            ):
                value = None if value is None else int(value)
            elif key in ("drop_count", "stall_count", "corrupt_count", "redirect_expires_s"):
                value = int(value)
            elif key == "stall_seconds":
                value = float(value)
            elif key == "ignore_range":
                value = bool(value)
            setattr(self, key, value)

    def reset(self) -> None:
        self.update(Faults().to_dict())


@dataclass
class RequestRecord:
    """One request as the stub saw it (control requests under /_stub are not
    recorded).  Header names are lower-cased."""

    host: str  # "endpoint" or "cdn"
    method: str
    path: str  # raw request target, query included
    headers: dict[str, str]
    status: int
    range: str | None
    body_bytes_sent: int
    conn_id: int
    time: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _BodyPlan:
    drop_after: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 0.0
    corrupt_offset: int | None = None
    throttle: bool = False


class _StubError(Exception):
    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# --------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], stub: HubStub, role: str) -> None:
        self.stub = stub
        self.role = role
        super().__init__(addr, _Handler)

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind's getfqdn() (a reverse DNS lookup).
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class HubStub:
    """The Hub stand-in.  ``start()``/``stop()`` or use as a context manager."""

    def __init__(
        self,
        *,
        endpoint_port: int = 0,
        cdn_port: int = 0,
        tree_page_size: int = 50,
    ) -> None:
        self.faults = Faults()
        self.tree_page_size = tree_page_size
        self._endpoint_port = endpoint_port
        self._cdn_port = cdn_port
        self._lock = threading.RLock()
        # Requests being answered and not yet recorded: a client can hold the whole
        # response before its handler has recorded it.
        self._unrecorded = 0
        self._recorded = threading.Condition(self._lock)
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, Blob] = {}
        self._counter = 0
        self._secret = secrets.token_bytes(32)
        self._requests: list[RequestRecord] = []
        self._bytes_served = 0
        self._conn_counter = 0
        self._conns: set[socket.socket] = set()
        self._stop_event = threading.Event()
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> HubStub:
        if self._servers:
            return self
        self._stop_event.clear()
        ep = _Server((ENDPOINT_HOST, self._endpoint_port), self, "endpoint")
        try:
            cdn = _Server((CDN_HOST, self._cdn_port), self, "cdn")
        except BaseException:
            ep.server_close()
            raise
        self._servers = [ep, cdn]
        for srv in self._servers:
            t = threading.Thread(
                target=srv.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"hub-stub-{srv.role}",
                daemon=True,
            )
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop_event.set()
        for srv in self._servers:
            srv.shutdown()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for srv in self._servers:
            srv.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._servers = []
        self._threads = []

    def __enter__(self) -> HubStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` (use as HF_ENDPOINT)."""
        return self._url(0)

    @property
    def cdn(self) -> str:
        """``http://127.0.0.2:PORT``."""
        return self._url(1)

    def _url(self, i: int) -> str:
        if not self._servers:
            raise RuntimeError("HubStub is not started")
        host, port = self._servers[i].server_address[:2]
        return f"http://{host!s}:{port}"

    # ---- content ---------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path],
        *,
        gated: bool = False,
        token: str | None = None,
        private: bool = False,
        non_lfs: Iterable[str] = (),
        branch: str = "main",
    ) -> str:
        """Create a repo whose ``branch`` holds ``files``; returns the commit sha.

        gated/private: requests need ``Authorization: Bearer <token>`` (any
        bearer token when token is None).  Files named in non_lfs are plain
        git files (served by the endpoint itself, 200, ETag = git sha1)."""
        _check_repo_id(repo_id)
        with self._lock:
            if repo_id in self._repos:
                raise ValueError(f"repo {repo_id} already exists")
            self._repos[repo_id] = _Repo(repo_id, gated=gated, private=private, token=token)
        return self.publish(repo_id, files, branch=branch, keep_others=False, non_lfs=non_lfs)

    def publish(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path | None],
        *,
        branch: str = "main",
        keep_others: bool = True,
        non_lfs: Iterable[str] = (),
    ) -> str:
        """Make a new commit on ``branch`` and move the branch to it.

        keep_others: files not named keep their previous content; a value of
        None deletes that file.  A new branch starts from main.  Old commits
        stay resolvable by sha.  Returns the new commit sha."""
        non_lfs_set = set(non_lfs)
        entries: dict[str, FileEntry | None] = {}
        for name, content in files.items():
            _check_filename(name)
            if content is None:
                entries[name] = None
            else:
                entries[name] = FileEntry(Blob.from_content(content), lfs=name not in non_lfs_set)
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                raise KeyError(f"unknown repo {repo_id}")
            base_commit = repo.branches.get(branch) or repo.branches.get("main")
            tree: dict[str, FileEntry] = {}
            if keep_others and base_commit is not None:
                tree.update(repo.commits[base_commit])
            for name, entry in entries.items():
                if entry is None:
                    tree.pop(name, None)
                else:
                    tree[name] = entry
                    self._blobs[entry.blob.sha256] = entry.blob
            self._counter += 1
            h = hashlib.sha1(f"{self._counter}\n{repo_id}\n{branch}\n{base_commit}\n".encode())
            for name in sorted(tree):
                h.update(f"{name}\0{tree[name].blob.sha256}\n".encode())
            commit = h.hexdigest()
            repo.commits[commit] = tree
            repo.commit_times[commit] = time.time()
            repo.branches[branch] = commit
            return commit

    def head(self, repo_id: str, branch: str = "main") -> str:
        """The commit a branch points at."""
        with self._lock:
            return self._repos[repo_id].branches[branch]

    def file_info(self, repo_id: str, filename: str, revision: str = "main") -> tuple[str, int]:
        """(sha256, size) of a file at a revision."""
        with self._lock:
            repo = self._repos[repo_id]
            commit = _resolve_rev(repo, revision)
            if commit is None:
                raise KeyError(revision)
            blob = repo.commits[commit][filename].blob
            return blob.sha256, blob.size

    def resolve_url(self, repo_id: str, filename: str, revision: str = "main") -> str:
        """``{endpoint}/{repo}/resolve/{quoted rev}/{quoted filename}``."""
        return (
            f"{self.endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/"
            f"{quote(filename, safe='/')}"
        )

    def signed_url(self, sha256: str) -> str:
        """A fresh signed CDN URL for a blob (lifetime faults.redirect_expires_s)."""
        expires = int(time.time()) + int(self.faults.redirect_expires_s)
        return f"{self.cdn}/blobs/{sha256}?expires={expires}&sig={self._sign(sha256, expires)}"

    def _sign(self, sha256: str, expires: int | str) -> str:
        msg = f"{sha256}|{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:32]

    # ---- faults / stats --------------------------------------------------

    def set_faults(self, **values: Any) -> None:
        with self._lock:
            self.faults.update(values)

    def reset_faults(self) -> None:
        with self._lock:
            self.faults.reset()

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of the recorded requests (oldest first), once the requests being
        answered are recorded too (waiting at most SETTLE_S for a stalled one)."""
        with self._recorded:
            self._recorded.wait_for(lambda: self._unrecorded == 0, timeout=SETTLE_S)
            return list(self._requests)

    @property
    def bytes_served(self) -> int:
        """Total body bytes the CDN has sent."""
        with self._lock:
            return self._bytes_served

    def reset_stats(self) -> None:
        with self._lock:
            self._requests.clear()
            self._bytes_served = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "bytes_served": self._bytes_served,
                "request_count": len(self._requests),
                "requests": [r.to_dict() for r in self._requests],
                "faults": self.faults.to_dict(),
            }

    # ---- internals used by the handler ----------------------------------

    def _answering(self) -> None:
        with self._lock:
            self._unrecorded += 1

    def _record(self, rec: RequestRecord | None) -> None:
        with self._recorded:
            if rec is not None:
                self._requests.append(rec)
            self._unrecorded -= 1
            self._recorded.notify_all()

    def _add_served(self, n: int) -> None:
        if n:
            with self._lock:
                self._bytes_served += n

    def _take_status(self, role: str) -> int | None:
        with self._lock:
            f = self.faults
            if f.status_sequence and f.status_target in (role, "both"):
                return f.status_sequence.pop(0)
            return None

    def _take_body_plan(self, start: int, end: int) -> _BodyPlan:
        """Consume the body faults for a CDN GET serving [start, end]."""
        plan = _BodyPlan()
        with self._lock:
            f = self.faults
            if f.drop_count > 0 and f.drop_after_bytes is not None:
                f.drop_count -= 1
                plan.drop_after = max(0, f.drop_after_bytes)
            if f.stall_count > 0 and f.stall_after_bytes is not None:
                f.stall_count -= 1
                plan.stall_after = max(0, f.stall_after_bytes)
                plan.stall_seconds = f.stall_seconds
            if (
                f.corrupt_count > 0
                and f.corrupt_offset is not None
                and start <= f.corrupt_offset <= end
            ):
                f.corrupt_count -= 1
                plan.corrupt_offset = f.corrupt_offset
        return plan

    def _conn_opened(self, sock: socket.socket) -> int:
        with self._lock:
            self._conn_counter += 1
            self._conns.add(sock)
            return self._conn_counter

    def _conn_closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)

    def _publish_from_json(self, body: Mapping[str, Any]) -> str:
        files: dict[str, bytes | Path | None] = {}
        for name, spec in dict(body.get("files", {})).items():
            if spec is None:
                files[name] = None
            elif isinstance(spec, str):
                files[name] = Path(spec)
            elif isinstance(spec, dict) and "b64" in spec:
                files[name] = base64.b64decode(spec["b64"])
            elif isinstance(spec, dict) and "text" in spec:
                files[name] = str(spec["text"]).encode()
            else:
                raise ValueError(f"bad file spec for {name}")
        repo_id = str(body["repo_id"])
        with self._lock:
            exists = repo_id in self._repos
        if not exists:
            return self.add_repo(
                repo_id,
                {k: v for k, v in files.items() if v is not None},
                gated=bool(body.get("gated", False)),
                token=body.get("token"),
                non_lfs=body.get("non_lfs", ()),
            )
        return self.publish(
            repo_id,
            files,
            branch=str(body.get("branch", "main")),
            keep_others=bool(body.get("keep_others", True)),
            non_lfs=body.get("non_lfs", ()),
        )


def _check_repo_id(repo_id: str) -> None:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or any(c in repo_id for c in " ?#%"):
        raise ValueError(f"repo id must be OWNER/NAME: {repo_id!r}")


def _check_filename(name: str) -> None:
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in name.split("/")):
        raise ValueError(f"bad filename {name!r}")


def _resolve_rev(repo: _Repo, rev: str) -> str | None:
    if rev.startswith("refs/heads/"):
        rev = rev[len("refs/heads/") :]
    if rev in repo.branches:
        return repo.branches[rev]
    if _HEX40.match(rev) and rev in repo.commits:
        return rev
    return None


def _parse_range(header: str, total: int) -> tuple[int, int] | str | None:
    """(start, end) inclusive, "unsatisfiable", or None (ignore the header)."""
    m = _RANGE.match(header)
    if not m:
        return None
    a, b = m.group(1), m.group(2)
    if not a and not b:
        return None
    if not a:  # suffix range: last N bytes
        n = int(b)
        if n == 0 or total == 0:
            return "unsatisfiable"
        return max(0, total - n), total - 1
    start = int(a)
    if start >= total:
        return "unsatisfiable"
    end = int(b) if b else total - 1
    if end < start:
        return None
    return start, min(end, total - 1)


# --------------------------------------------------------------------------
# Request handler
# --------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hub-stub/1.0"
    sys_version = ""
    timeout = 120

    # per-request state
    _status: int = 0
    _sent: int = 0
    _record_this: bool = True
    conn_id: int = 0

    @property
    def stub(self) -> HubStub:
        return cast(_Server, self.server).stub

    @property
    def role(self) -> str:
        return cast(_Server, self.server).role

    def log_message(self, format: str, *args: Any) -> None:
        return

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn_id = self.stub._conn_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.stub._conn_closed(self.connection)

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # ---- plumbing ------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _start(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        self._status = status
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()

    def _send_simple(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json; charset=utf-8",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        hdrs = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        hdrs.extend(headers)
        self._start(status, hdrs)
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            self._sent += len(body)

    def _send_json(
        self, obj: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self._send_simple(status, json.dumps(obj).encode(), headers=headers)

    def _send_error_json(self, err: _StubError) -> None:
        headers = [("X-Error-Message", err.message)]
        if err.code:
            headers.insert(0, ("X-Error-Code", err.code))
        self._send_json({"error": err.message}, status=err.status, headers=headers)

    def _send_fault_status(self, status: int) -> None:
        f = self.stub.faults
        headers: list[tuple[str, str]] = []
        if f.retry_after is not None:
            headers.append(("Retry-After", str(f.retry_after)))
        if status == 429:
            t = f.retry_after if f.retry_after is not None else 55
            headers.append(("RateLimit", f'"api";r=0;t={t}'))
            headers.append(("RateLimit-Policy", '"fixed window";"api";q=500;w=300'))
        msg = "Too Many Requests" if status == 429 else f"Injected status {status}"
        if self.role == "endpoint":
            headers.append(("X-Error-Message", msg))
            self._send_json({"error": msg}, status=status, headers=headers)
        else:
            self._send_simple(status, msg.encode(), "text/plain; charset=utf-8", headers)

    def _dispatch(self) -> None:
        self._status = 0
        self._sent = 0
        split = urlsplit(self.path)
        self._record_this = not (self.role == "endpoint" and split.path.startswith("/_stub/"))
        self.stub._answering()
        try:
            if not self._record_this:
                self._control(split.path, self._read_body())
                return
            self._read_body()  # keep the connection in sync
            status = self.stub._take_status(self.role)
            if status is not None:
                self._send_fault_status(status)
                return
            if self.role == "cdn":
                self._cdn(split.path, split.query)
            else:
                self._endpoint(split.path, split.query)
        except _StubError as err:
            if self._status == 0:
                self._send_error_json(err)
            else:
                self.close_connection = True
        except (OSError, ValueError) as exc:
            # Client went away (BrokenPipe, reset, timeout) or bad input.
            self.close_connection = True
            if isinstance(exc, ValueError) and self._status == 0:
                with contextlib.suppress(OSError):
                    self._send_json({"error": str(exc)}, status=400)
        except Exception:
            traceback.print_exc()
            self.close_connection = True
            if self._status == 0:
                with contextlib.suppress(OSError):
                    self._send_json({"error": "internal stub error"}, status=500)
        finally:
            self.stub._record(
                None
                if not self._record_this
                else RequestRecord(
                    host=self.role,
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    status=self._status,
                    range=self.headers.get("Range"),
                    body_bytes_sent=self._sent,
                    conn_id=self.conn_id,
                    time=time.time(),
                )
            )

    # ---- control API ---------------------------------------------------

    def _control(self, path: str, body: bytes) -> None:
        stub = self.stub
        try:
            payload = json.loads(body) if body else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"bad JSON: {exc}") from exc
        if path == "/_stub/faults":
            if self.command == "POST":
                if not isinstance(payload, dict):
                    raise ValueError("faults body must be a JSON object")
                stub.set_faults(**payload)
            with stub._lock:
                self._send_json(stub.faults.to_dict())
        elif path == "/_stub/faults/reset" and self.command == "POST":
            stub.reset_faults()
            with stub._lock:
                self._send_json(stub.faults.to_dict())
        elif path == "/_stub/stats":
            self._send_json(stub.stats())
        elif path == "/_stub/reset" and self.command == "POST":
            stub.reset_stats()
            self._send_json({"ok": True})
        elif path == "/_stub/publish" and self.command == "POST":
            commit = stub._publish_from_json(payload)
            self._send_json({"commit": commit})
        else:
            self._send_json({"error": "no such control path"}, status=404)

    # ---- endpoint ------------------------------------------------------

    def _repo_or_error(self, repo_id: str) -> _Repo:
        stub = self.stub
        url = f"{stub.endpoint}{urlsplit(self.path).path}"
        with stub._lock:
            repo = stub._repos.get(repo_id)
        if repo is None:
            raise _StubError(404, "RepoNotFound", f"Repository Not Found for url: {url}.")
        if repo.gated or repo.private:
            auth = self.headers.get("Authorization") or ""
            m = re.match(r"^\s*Bearer\s+(\S+)\s*$", auth, re.IGNORECASE)
            given = m.group(1) if m else None
            ok = given is not None and (
                repo.token is None or hmac.compare_digest(given, repo.token)
            )
            if not ok:
                if repo.private:
                    raise _StubError(
                        401,
                        "RepoNotFound",
                        f"Repository Not Found for url: {url}. Please make sure you specified "
                        "the correct `repo_id` and `repo_type`. If you are trying to access a "
                        "private or gated repo, make sure you are authenticated.",
                    )
                raise _StubError(
                    401 if given is None else 403,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it "
                    "and be authenticated to access it. Please log in.",
                )
        return repo

    def _commit_or_error(self, repo: _Repo, rev: str) -> tuple[str, dict[str, FileEntry]]:
        with self.stub._lock:
            commit = _resolve_rev(repo, rev)
            if commit is None:
                raise _StubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return commit, repo.commits[commit]

    def _endpoint(self, path: str, query: str) -> None:
        if self.command not in ("GET", "HEAD"):
            raise _StubError(405, None, "Method Not Allowed")
        segs = path.split("/")[1:]  # raw (still quoted) segments
        if len(segs) >= 3 and segs[0] == "api" and segs[1] == "models":
            self._api(segs[2:], query)
            return
        if len(segs) >= 5 and segs[2] == "resolve":
            repo_id = f"{unquote(segs[0])}/{unquote(segs[1])}"
            rev = unquote(segs[3])
            filename = unquote("/".join(segs[4:]))
            self._resolve(repo_id, rev, filename)
            return
        raise _StubError(404, None, "Not Found")

    def _resolve(self, repo_id: str, rev: str, filename: str) -> None:
        repo = self._repo_or_error(repo_id)
        commit, tree = self._commit_or_error(repo, rev)
        entry = tree.get(filename)
        if entry is None:
            raise _StubError(404, "EntryNotFound", "Entry not found")
        blob = entry.blob
        if not entry.lfs:
            self._serve_blob(
                blob,
                extra=[("X-Repo-Commit", commit), ("ETag", f'"{entry.git_oid}"')],
                faults=False,
            )
            return
        location = self.stub.signed_url(blob.sha256)
        body = f"Found. Redirecting to {location}".encode()
        self._send_simple(
            302,
            body,
            "text/plain; charset=utf-8",
            [
                ("Location", location),
                ("X-Repo-Commit", commit),
                ("X-Linked-Etag", f'"{blob.sha256}"'),
                ("X-Linked-Size", str(blob.size)),
                ("ETag", f'"{entry.git_oid}"'),
                ("Accept-Ranges", "bytes"),
                ("Vary", "Origin, Accept"),
            ],
        )

    def _api(self, segs: list[str], query: str) -> None:
        # segs: OWNER, NAME, [revision, REV | tree, REV, PATH... | refs]
        if len(segs) < 2:
            raise _StubError(404, None, "Not Found")
        repo_id = f"{unquote(segs[0])}/{unquote(segs[1])}"
        rest = segs[2:]
        params = parse_qs(query)
        repo = self._repo_or_error(repo_id)
        if not rest or (len(rest) == 2 and rest[0] == "revision"):
            rev = unquote(rest[1]) if rest else "main"
            commit, tree = self._commit_or_error(repo, rev)
            self._send_json(self._model_info(repo, commit, tree, _flag(params, "blobs")))
        elif len(rest) >= 2 and rest[0] == "tree":
            rev = unquote(rest[1])
            sub = unquote("/".join(rest[2:])).strip("/")
            commit, tree = self._commit_or_error(repo, rev)
            self._tree(repo_id, rest[1], sub, tree, params)
        elif rest == ["refs"]:
            with self.stub._lock:
                branches = [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                    for b, c in sorted(repo.branches.items())
                ]
            self._send_json({"branches": branches, "tags": [], "converts": []})
        else:
            raise _StubError(404, None, "Not Found")

    def _model_info(
        self, repo: _Repo, commit: str, tree: Mapping[str, FileEntry], blobs: bool
    ) -> dict[str, Any]:
        siblings: list[dict[str, Any]] = []
        for name in sorted(tree):
            entry = tree[name]
            sib: dict[str, Any] = {"rfilename": name}
            if blobs:
                sib["blobId"] = entry.git_oid
                sib["size"] = entry.blob.size
                if entry.lfs:
                    sib["lfs"] = {
                        "sha256": entry.blob.sha256,
                        "size": entry.blob.size,
                        "pointerSize": len(entry.pointer),
                    }
            siblings.append(sib)
        ts = repo.commit_times.get(commit, time.time())
        owner = repo.repo_id.split("/")[0]
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": owner,
            "sha": commit,
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts)),
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": ["gguf"],
            "library_name": "gguf",
            "siblings": siblings,
        }

    def _tree(
        self,
        repo_id: str,
        raw_rev: str,
        sub: str,
        tree: Mapping[str, FileEntry],
        params: dict[str, list[str]],
    ) -> None:
        recursive = _flag(params, "recursive")
        prefix = f"{sub}/" if sub else ""
        items: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for name in sorted(tree):
            if not name.startswith(prefix):
                continue
            rel = name[len(prefix) :]
            parts = rel.split("/")
            # directories on the way to this file
            depth = len(parts) - 1 if recursive else min(1, len(parts) - 1)
            for i in range(1, depth + 1):
                d = prefix + "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    items.append(
                        {
                            "type": "directory",
                            "oid": hashlib.sha1(f"tree:{d}".encode()).hexdigest(),
                            "size": 0,
                            "path": d,
                        }
                    )
            if len(parts) > 1 and not recursive:
                continue
            entry = tree[name]
            item: dict[str, Any] = {
                "type": "file",
                "oid": entry.git_oid,
                "size": entry.blob.size,
                "path": name,
            }
            if entry.lfs:
                item["lfs"] = {
                    "oid": entry.blob.sha256,
                    "size": entry.blob.size,
                    "pointerSize": len(entry.pointer),
                }
            items.append(item)
        if sub and not items:
            raise _StubError(404, "EntryNotFound", f"Entry not found: {sub}")
        try:
            limit = int(params.get("limit", [str(self.stub.tree_page_size)])[0])
            offset = 0
            if "cursor" in params:
                offset = int(base64.urlsafe_b64decode(params["cursor"][0]).decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise _StubError(400, None, f"bad cursor or limit: {exc}") from exc
        limit = max(1, limit)
        page = items[offset : offset + limit]
        headers: list[tuple[str, str]] = []
        if offset + limit < len(items):
            cursor = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
            q = {k: v[0] for k, v in params.items() if k != "cursor"}
            q["cursor"] = cursor
            qs = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in q.items())
            sub_part = f"/{quote(sub, safe='/')}" if sub else ""
            url = f"{self.stub.endpoint}/api/models/{repo_id}/tree/{raw_rev}{sub_part}?{qs}"
            headers.append(("Link", f'<{url}>; rel="next"'))
        self._send_json(page, headers=headers)

    # ---- CDN -----------------------------------------------------------

    def _cdn(self, path: str, query: str) -> None:
        if self.command not in ("GET", "HEAD"):
            raise _StubError(405, None, "Method Not Allowed")
        if not path.startswith("/blobs/"):
            raise _StubError(404, None, "Not Found")
        sha = path[len("/blobs/") :]
        params = parse_qs(query)
        expires = params.get("expires", [""])[0]
        sig = params.get("sig", [""])[0]
        if not expires.isdigit() or not hmac.compare_digest(sig, self.stub._sign(sha, expires)):
            self._send_simple(403, b"AccessDenied: bad signature", "text/plain; charset=utf-8")
            return
        if int(expires) < time.time():
            self._send_simple(
                403, b"AccessDenied: Request has expired", "text/plain; charset=utf-8"
            )
            return
        with self.stub._lock:
            blob = self.stub._blobs.get(sha)
        if blob is None:
            self._send_simple(404, b"NoSuchKey", "text/plain; charset=utf-8")
            return
        self._serve_blob(blob, extra=[("ETag", f'"{blob.sha256}"')], faults=True)

    def _serve_blob(self, blob: Blob, extra: list[tuple[str, str]], faults: bool) -> None:
        total = blob.size
        rng_header = self.headers.get("Range")
        rng: tuple[int, int] | str | None = None
        if rng_header and not (faults and self.stub.faults.ignore_range):
            rng = _parse_range(rng_header, total)
        common = [
            ("Accept-Ranges", "bytes"),
            ("Content-Type", "application/octet-stream"),
            ("Last-Modified", formatdate(usegmt=True)),
            *extra,
        ]
        if rng == "unsatisfiable":
            self._send_simple(
                416,
                b"",
                "text/plain; charset=utf-8",
                [("Content-Range", f"bytes */{total}"), ("Accept-Ranges", "bytes")],
            )
            return
        if isinstance(rng, tuple):
            start, end = rng
            status = 206
            common.append(("Content-Range", f"bytes {start}-{end}/{total}"))
        else:
            start, end = 0, total - 1
            status = 200
        length = end - start + 1
        self._start(status, [("Content-Length", str(length)), *common])
        if self.command == "HEAD" or length <= 0:
            return
        plan = self.stub._take_body_plan(start, end) if faults else _BodyPlan()
        self._send_body(blob, start, length, plan, count_served=faults)

    def _send_body(
        self, blob: Blob, start: int, length: int, plan: _BodyPlan, count_served: bool
    ) -> None:
        cut = length
        action: str | None = None
        if plan.drop_after is not None and plan.drop_after < cut:
            cut, action = plan.drop_after, "drop"
        if plan.stall_after is not None and plan.stall_after < cut:
            cut, action = plan.stall_after, "stall"
        try:
            self._stream(blob, start, cut, plan, count_served)
        finally:
            if action is not None:
                self.close_connection = True
        if action == "stall":
            self.stub._stop_event.wait(plan.stall_seconds)

    def _stream(
        self, blob: Blob, start: int, count: int, plan: _BodyPlan, count_served: bool
    ) -> None:
        stub = self.stub
        slow = plan.corrupt_offset is not None or (count_served and stub.faults.throttle_bps)
        if blob.path is not None:
            with blob.path.open("rb") as f:
                if not slow:
                    self._sendfile(f, start, count, count_served)
                else:
                    f.seek(start)
                    self._paced(lambda n: f.read(n), start, count, plan, count_served)
        else:
            data = memoryview(cast(bytes, blob.data))
            pos = start

            def read(n: int) -> bytes:
                nonlocal pos
                chunk = bytes(data[pos : pos + n])
                pos += len(chunk)
                return chunk

            self._paced(read, start, count, plan, count_served)

    def _sendfile(self, f: BinaryIO, start: int, count: int, count_served: bool) -> None:
        sent = 0
        try:
            sent = self.connection.sendfile(f, start, count)
        except OSError:
            sent = max(0, f.tell() - start)
            raise
        finally:
            self._sent += sent
            if count_served:
                self.stub._add_served(sent)

    def _paced(
        self,
        read: Any,
        start: int,
        count: int,
        plan: _BodyPlan,
        count_served: bool,
    ) -> None:
        stub = self.stub
        sent = 0
        rate_base_t = time.monotonic()
        rate_base_sent = 0
        last_rate: int | None = None
        while sent < count:
            rate = stub.faults.throttle_bps if count_served else None
            if rate is not None and rate <= 0:
                rate = None
            if rate != last_rate:
                rate_base_t, rate_base_sent, last_rate = time.monotonic(), sent, rate
            if rate:
                n = max(1, min(CHUNK, rate // 50, count - sent))
                # Token bucket, one chunk deep: this chunk may go once the
                # bytes already sent (since the rate was set) are paid for.
                due = rate_base_t + (sent - rate_base_sent) / rate
                delay = due - time.monotonic()
                if delay > 0 and stub._stop_event.wait(delay):
                    raise ConnectionAbortedError("stub stopping")
            else:
                n = min(CHUNK, count - sent)
            chunk = read(n)
            if not chunk:
                raise OSError("blob shorter than expected")
            if plan.corrupt_offset is not None:
                rel = plan.corrupt_offset - (start + sent)
                if 0 <= rel < len(chunk):
                    buf = bytearray(chunk)
                    buf[rel] ^= 0xFF
                    chunk = bytes(buf)
            self.wfile.write(chunk)
            sent += len(chunk)
            self._sent += len(chunk)
            if count_served:
                stub._add_served(len(chunk))


def _flag(params: Mapping[str, list[str]], name: str) -> bool:
    v = params.get(name)
    if not v:
        return False
    return v[0].lower() in ("1", "true", "yes", "")


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _parse_repo_spec(spec: str) -> tuple[str, str, Path]:
    """``OWNER/NAME=PATH`` or ``OWNER/NAME:FILENAME=PATH``."""
    left, sep, path = spec.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"bad --repo {spec!r}: want OWNER/NAME[:FILENAME]=PATH")
    repo_id, _, filename = left.partition(":")
    p = Path(path)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"--repo {spec!r}: no such file {path}")
    return repo_id, filename or p.name, p


def _write_ready(path: Path, info: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Loopback Hugging Face Hub stand-in")
    ap.add_argument(
        "--repo",
        action="append",
        default=[],
        type=_parse_repo_spec,
        help="OWNER/NAME[:FILENAME]=PATH (repeatable; same repo = more files)",
    )
    ap.add_argument("--gated-token", default=None, help="make every repo gated with this token")
    ap.add_argument("--throttle-bps", type=int, default=None)
    ap.add_argument("--redirect-expires-s", type=int, default=3600)
    ap.add_argument("--tree-page-size", type=int, default=50)
    ap.add_argument("--endpoint-port", type=int, default=0)
    ap.add_argument("--cdn-port", type=int, default=0)
    ap.add_argument("--ready-file", type=Path, default=None)
    args = ap.parse_args(argv)

    stub = HubStub(
        endpoint_port=args.endpoint_port,
        cdn_port=args.cdn_port,
        tree_page_size=args.tree_page_size,
    )
    stub.faults.throttle_bps = args.throttle_bps
    stub.faults.redirect_expires_s = args.redirect_expires_s
    by_repo: dict[str, dict[str, bytes | Path]] = {}
    for repo_id, filename, path in args.repo:
        by_repo.setdefault(repo_id, {})[filename] = path
    commits: dict[str, str] = {}
    files: dict[str, dict[str, dict[str, Any]]] = {}
    for repo_id, repo_files in by_repo.items():
        commits[repo_id] = stub.add_repo(
            repo_id, repo_files, gated=args.gated_token is not None, token=args.gated_token
        )
        files[repo_id] = {}
        for name in repo_files:
            sha, size = stub.file_info(repo_id, name)
            files[repo_id][name] = {"sha256": sha, "size": size}

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stub.start()
    info = {
        "endpoint": stub.endpoint,
        "cdn": stub.cdn,
        "pid": os.getpid(),
        "repos": commits,
        "files": files,
    }
    if args.ready_file is not None:
        _write_ready(args.ready_file, info)
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    try:
        while not stop.wait(0.2):
            pass
    finally:
        stub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
