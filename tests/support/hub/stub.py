"""The stand-in itself: two loopback HTTP servers (endpoint and CDN) over its repositories,
its faults and the requests it saw."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import socket
import socketserver
import threading
import time
from collections.abc import Iterable, Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.support.hub.content import (
    Blob,
    FileEntry,
    Repo,
    check_filename,
    check_repo_id,
    resolve_rev,
)
from tests.support.hub.faults import BodyPlan, Faults
from tests.support.hub.handler import Handler, RequestRecord

__all__ = ["CDN_HOST", "ENDPOINT_HOST", "HubServer", "HubStub"]

ENDPOINT_HOST = "127.0.0.1"
CDN_HOST = "127.0.0.2"
# How long ``requests`` waits for a request still being answered to be recorded.
SETTLE_S = 2.0


class HubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], stub: HubStub, role: str) -> None:
        self.stub = stub
        self.role = role
        super().__init__(addr, Handler)

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
        self._repos: dict[str, Repo] = {}
        self._blobs: dict[str, Blob] = {}
        self._counter = 0
        self._secret = secrets.token_bytes(32)
        self._requests: list[RequestRecord] = []
        self._bytes_served = 0
        self._conn_counter = 0
        self._conns: set[socket.socket] = set()
        self._stop_event = threading.Event()
        self._servers: list[HubServer] = []
        self._threads: list[threading.Thread] = []

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> HubStub:
        if self._servers:
            return self
        self._stop_event.clear()
        ep = HubServer((ENDPOINT_HOST, self._endpoint_port), self, "endpoint")
        try:
            cdn = HubServer((CDN_HOST, self._cdn_port), self, "cdn")
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
        check_repo_id(repo_id)
        with self._lock:
            if repo_id in self._repos:
                raise ValueError(f"repo {repo_id} already exists")
            self._repos[repo_id] = Repo(repo_id, gated=gated, private=private, token=token)
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
            check_filename(name)
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
            commit = resolve_rev(repo, revision)
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

    def _take_body_plan(self, start: int, end: int) -> BodyPlan:
        """Consume the body faults for a CDN GET serving [start, end]."""
        plan = BodyPlan()
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
