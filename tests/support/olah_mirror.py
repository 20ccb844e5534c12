"""olah, a Hugging Face mirror nobody here wrote, on loopback for the tests.

Server A serves a local git mirror offline; server B is olah's caching proxy with A as
its upstream "Hub" (facts in ../shared/MIRROR.md). olah lives in a venv of its own
(scripts/setup-olah.sh): its pinned web stack must not meet the project's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.hub_stub import lfs_pointer

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "setup-olah.sh"
READY_TIMEOUT_S = 90.0  # olah imports fastapi and friends: slow on a loaded 2-core machine


def olah_venv() -> Path:
    """The venv with olah in it, built once per machine; skips the caller if pip can't."""
    env = dict(os.environ, PYTHON=getattr(sys, "_base_executable", sys.executable))
    try:
        r = subprocess.run(
            ["bash", str(SETUP)], capture_output=True, text=True, timeout=900, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.skip("olah could not be installed: scripts/setup-olah.sh took over 15 minutes")
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-5:])
        pytest.skip(f"olah==0.5.4 could not be installed (scripts/setup-olah.sh): {tail}")
    return Path(r.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the git mirror olah reads ---------------------------------------------------------------


@dataclass(frozen=True)
class MirrorFile:
    name: str
    data: bytes
    lfs: bool = True

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def build_git_mirror(mirrors: Path, repo_id: str, files: list[MirrorFile]) -> str:
    """A non-bare git repo on ``main``, LFS files as git-lfs leaves them; returns the commit.

    No git-lfs binary is needed: the pointer is committed and the object copied to
    ``.git/lfs/objects/<oid[0:2]>/<oid[2:4]>/<oid>``, exactly what ``git lfs`` would do.
    """
    repo = mirrors / "models" / repo_id
    repo.mkdir(parents=True)
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="vibrant tests",
        GIT_AUTHOR_EMAIL="tests@127.0.0.1",
        GIT_COMMITTER_NAME="vibrant tests",
        GIT_COMMITTER_EMAIL="tests@127.0.0.1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
    )

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q", "-b", "main")
    attributes = []
    for f in files:
        (repo / f.name).parent.mkdir(parents=True, exist_ok=True)
        if f.lfs:
            (repo / f.name).write_bytes(lfs_pointer(f.sha256, len(f.data)))
            obj = repo / ".git" / "lfs" / "objects" / f.sha256[:2] / f.sha256[2:4] / f.sha256
            obj.parent.mkdir(parents=True, exist_ok=True)
            obj.write_bytes(f.data)
            attributes.append(f"{f.name} filter=lfs diff=lfs merge=lfs -text\n")
        else:
            (repo / f.name).write_bytes(f.data)
    (repo / ".gitattributes").write_text("".join(attributes))
    git("add", "-A")
    git("commit", "-q", "-m", "test model")
    return git("rev-parse", "HEAD")


# -- an olah process -------------------------------------------------------------------------


@dataclass
class OlahServer:
    venv: Path
    workdir: Path
    config: str
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OlahServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        toml = self.workdir / "olah.toml"
        toml.write_text(self.config)
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [str(self.venv / "bin" / "olah-cli"), "-c", str(toml), "--log-path", str(logs)],
            cwd=self.workdir,
            stdout=open(self.workdir / "stdout.log", "wb"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # olah must never reach the real Hub, even if a config line were wrong.
            env={**os.environ, "HF_HUB_OFFLINE": "1", "NO_PROXY": "*", "no_proxy": "*"},
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"olah exited ({self.proc.returncode}): {self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                httpx.get(self.endpoint + "/", timeout=2.0, trust_env=False)
                return
            time.sleep(0.2)
        raise RuntimeError(f"olah on {self.endpoint} not ready in {READY_TIMEOUT_S}s")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "stdout.log").read_text(errors="replace")[-3000:]
        return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def server_a_config(port: int, workdir: Path, mirrors: Path) -> str:
    netloc = f"127.0.0.1:{port}"
    return f"""[basic]
host = "127.0.0.1"
port = {port}
repos-path = "{workdir / "repos"}"
mirrors-path = ["{mirrors}"]
mirror-scheme = "http"
mirror-netloc = "{netloc}"
mirror-lfs-netloc = "{netloc}"

[accessibility]
offline = true
"""


def server_b_config(port: int, workdir: Path, upstream: str, block: int) -> str:
    netloc = f"127.0.0.1:{port}"
    return f"""[basic]
host = "127.0.0.1"
port = {port}
repos-path = "{workdir / "repos"}"
hf-scheme = "http"
hf-netloc = "{upstream}"
hf-lfs-netloc = "{upstream}"
mirror-scheme = "http"
mirror-netloc = "{netloc}"
mirror-lfs-netloc = "{netloc}"
cache-block-size = "{block}"
cache-chunk-size = "1MB"

[accessibility]
offline = false
"""


# -- a slow loopback relay, so that a test can kill a download half-way ----------------------


@dataclass
class Relay:
    """A TCP relay to ``target`` that paces what the server sends back, per connection.

    It speaks no HTTP: it only makes loopback slow enough that a kill lands mid-file.
    """

    target: int
    bytes_per_s: float | None = None
    port: int = 0
    down_bytes: int = 0
    _sock: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closing: bool = False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Relay:
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closing:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        chunk = 64 * 1024
        try:
            while data := src.recv(chunk):
                dst.sendall(data)
                if down:
                    with self._lock:
                        self.down_bytes += len(data)
                    if self.bytes_per_s:
                        time.sleep(len(data) / self.bytes_per_s)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._closing = True
        if self._sock is not None:
            self._sock.close()


# -- the pair the tests use ------------------------------------------------------------------


@dataclass
class OlahPair:
    repo_id: str
    commit: str
    files: dict[str, MirrorFile]
    a: OlahServer
    b: OlahServer
    mirrors: Path


@contextlib.contextmanager
def olah_pair(workdir: Path, repo_id: str, files: list[MirrorFile]) -> Iterator[OlahPair]:
    if shutil.which("git") is None:
        pytest.skip("git is needed to build the mirror olah serves")
    venv = olah_venv()
    mirrors = workdir / "mirrors"
    commit = build_git_mirror(mirrors, repo_id, files)
    port_a, port_b = free_port(), free_port()
    a = OlahServer(venv, workdir / "a", server_a_config(port_a, workdir / "a", mirrors), port_a)
    # B fetches a whole file from A in one block (A ignores Range); olah wants the block
    # a multiple of its 1 MiB chunk.
    chunks = -(-max(len(f.data) for f in files) // (1 << 20))
    b = OlahServer(
        venv,
        workdir / "b",
        server_b_config(port_b, workdir / "b", f"127.0.0.1:{port_a}", max(chunks, 8) << 20),
        port_b,
    )
    try:
        a.start()
        b.start()
        yield OlahPair(repo_id, commit, {f.name: f for f in files}, a, b, mirrors)
    finally:
        b.stop()
        a.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir / "b" / "repos")
