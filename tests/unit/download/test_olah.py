"""The downloader, through the real CLI, against olah: a mirror that the project didn't write.

A is olah serving a local git mirror offline; B is olah's caching proxy in front of A
(tests/support/olah_mirror.py, ../shared/MIRROR.md). Each case uses its own file, because B keeps
what it fetched and that would change what the next case sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import tiny_model, write_registry
from tests.support.olah_mirror import MirrorFile, OlahPair, Relay, olah_pair
from vibrant_rpc.fsutil import dir_size
from vibrant_rpc.paths import Paths

pytestmark = pytest.mark.hub

MB = 1_000_000
REPO = "test/olah-tiny"


def blob(n: int, seed: str) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(n)


FILES = [
    MirrorFile("plain.gguf", blob(3 * MB, "plain")),
    MirrorFile("resume.gguf", blob(24 * MB, "resume")),
    MirrorFile("norange.gguf", blob(12 * MB, "norange")),
    # small files git keeps as they are (no LFS pointer): the ETag is a git SHA-1
    MirrorFile("small-a.gguf", b"GGUF tiny non-LFS file\n" * 40, lfs=False),
    MirrorFile("small-b.gguf", b"GGUF other non-LFS file\n" * 40, lfs=False),
]


@pytest.fixture(scope="module")
def olah(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OlahPair]:
    with olah_pair(tmp_path_factory.mktemp("olah"), REPO, FILES) as pair:
        yield pair


def model(model_id: str, filename: str) -> dict[str, object]:
    return tiny_model(model_id, hf_repo=REPO, filename=filename)


def setup_home(paths: Paths, *models: dict[str, object], block: str = "1MiB") -> None:
    write_registry(paths, list(models))
    lines = {
        "download_idle_timeout_s": 10.0,
        "download_retry_base_s": 0.05,
        "download_block_size": block,
    }
    paths.config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in lines.items()))


def cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "vibrant"), *args]


def vibrant(endpoint: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_ENDPOINT": endpoint}
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout, env=env)


def kill_half_way(endpoint: str, paths: Paths, model_id: str, at_bytes: int) -> None:
    """Start a download and SIGKILL it once ``at_bytes`` are on disk in its partial folder."""
    env = {**os.environ, "HF_ENDPOINT": endpoint}
    proc = subprocess.Popen(
        cli("model", "download", model_id, "--json"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    partial = paths.partial_dir(model_id)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if partial.exists() and dir_size(partial) >= at_bytes:
                break
            time.sleep(0.05)
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            pytest.fail(f"the download ended ({proc.returncode}) before the kill: {err}")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def test_download_from_the_mirror_and_verify(olah: OlahPair, paths: Paths) -> None:
    f = olah.files["plain.gguf"]
    setup_home(paths, model("plain", f.name))
    r = vibrant(olah.a.endpoint, "model", "download", "plain", "--json")
    assert r.returncode == 0, r.stderr
    assert (paths.models / "plain.gguf").read_bytes() == f.data
    last = json.loads(r.stdout.splitlines()[-1])
    assert last["sha256"] == f.sha256  # olah's unquoted ETag is the SHA-256 of an LFS file
    r = vibrant(olah.a.endpoint, "model", "verify", "plain")
    assert r.returncode == 0, r.stderr
    # verify re-hashes: one flipped byte is found
    with open(paths.models / "plain.gguf", "r+b") as fh:
        fh.seek(MB)
        byte = fh.read(1)
        fh.seek(MB)
        fh.write(bytes([byte[0] ^ 0xFF]))
    r = vibrant(olah.a.endpoint, "model", "verify", "plain")
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_killed_download_resumes_through_the_caching_proxy(olah: OlahPair, paths: Paths) -> None:
    f = olah.files["resume.gguf"]
    setup_home(paths, model("resume", f.name))
    relay = Relay(olah.b.port, bytes_per_s=1 * MB).start()
    try:
        kill_half_way(relay.endpoint, paths, "resume", at_bytes=12 * MB)
        before = relay.down_bytes
        relay.bytes_per_s = None
        r = vibrant(relay.endpoint, "model", "download", "resume", "--json")
        assert r.returncode == 0, r.stderr
        resumed = relay.down_bytes - before
    finally:
        relay.close()
    assert (paths.models / "resume.gguf").read_bytes() == f.data
    assert json.loads(r.stdout.splitlines()[-1])["sha256"] == f.sha256
    # B answers Range with 206: the second run fetched the rest, not the whole file again
    # (the 4 connections' blocks in flight at the kill are fetched once more, 1 MiB each)
    assert resumed < len(f.data) - 6 * MB, f"{resumed} bytes moved after the kill"
    assert not paths.partial_dir("resume").exists()


def test_mirror_ignoring_range_restarts_the_file(olah: OlahPair, paths: Paths) -> None:
    f = olah.files["norange.gguf"]
    setup_home(paths, model("norange", f.name))
    relay = Relay(olah.a.port, bytes_per_s=1 * MB).start()
    try:
        kill_half_way(relay.endpoint, paths, "norange", at_bytes=2 * MB)
        before = relay.down_bytes
        relay.bytes_per_s = None
        r = vibrant(relay.endpoint, "model", "download", "norange", "--json")
        moved = relay.down_bytes - before
    finally:
        relay.close()
    assert r.returncode == 0, r.stderr
    assert "ignored Range" in r.stderr  # said, not silent
    assert (paths.models / "norange.gguf").read_bytes() == f.data
    assert json.loads(r.stdout.splitlines()[-1])["sha256"] == f.sha256
    # A sends whole files whatever the Range: nothing of the old partial was spliced in
    assert moved >= len(f.data)


def test_small_non_lfs_file_from_the_mirror(olah: OlahPair, paths: Paths) -> None:
    f = olah.files["small-a.gguf"]
    setup_home(paths, model("small", f.name))
    r = vibrant(olah.a.endpoint, "model", "download", "small", "--json")
    assert r.returncode == 0, r.stderr
    assert (paths.models / "small.gguf").read_bytes() == f.data
    # the mirror gives no SHA-256 for a git file: the one computed is recorded
    assert json.loads(r.stdout.splitlines()[-1])["sha256"] == f.sha256
    assert vibrant(olah.a.endpoint, "model", "verify", "small").returncode == 0


def test_small_non_lfs_file_through_the_caching_proxy(olah: OlahPair, paths: Paths) -> None:
    f = olah.files["small-b.gguf"]
    setup_home(paths, model("small-b", f.name))
    r = vibrant(olah.b.endpoint, "model", "download", "small-b", "--json")
    assert r.returncode == 0, r.stderr
    assert (paths.models / "small-b.gguf").read_bytes() == f.data
    # B's revision API refuses (401): no reference, so the hash is recorded, never "verified"
    last = json.loads(r.stdout.splitlines()[-1])
    assert last["sha256"] == f.sha256 and last["verified"] is False
    r = vibrant(olah.b.endpoint, "model", "download", "small-b")
    assert r.returncode == 0 and "already downloaded" in r.stdout


@pytest.mark.parametrize("server", ["a", "b"])
def test_missing_repository_and_revision_on_that_mirror(
    olah: OlahPair, paths: Paths, server: str
) -> None:
    endpoint = olah.a.endpoint if server == "a" else olah.b.endpoint
    where = endpoint.removeprefix("http://")
    f = olah.files["plain.gguf"]
    setup_home(
        paths,
        tiny_model("norepo", hf_repo="test/not-mirrored", filename=f.name),
        tiny_model("norev", hf_repo=REPO, filename=f.name, revision="no-such-branch"),
    )
    r = vibrant(endpoint, "model", "download", "norepo")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"repository test/not-mirrored does not exist on {where}" in r.stderr
    r = vibrant(endpoint, "model", "download", "norev")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"revision 'no-such-branch' does not exist in {REPO} on {where}" in r.stderr


@pytest.mark.parametrize("server", ["a", "b"])
def test_missing_file_is_named_as_missing_on_that_mirror(
    olah: OlahPair, paths: Paths, server: str
) -> None:
    endpoint = olah.a.endpoint if server == "a" else olah.b.endpoint
    setup_home(paths, model("gone", "not-on-the-mirror.gguf"))
    r = vibrant(endpoint, "model", "download", "gone")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "not-on-the-mirror.gguf" in r.stderr
    assert endpoint.removeprefix("http://") in r.stderr
    assert "repository" not in r.stderr.lower().split("not-on-the-mirror.gguf")[0]
