"""Sources that lie (issue 22): a mirror serving other bytes under its own hash, a mirror
serving a damaged copy, a captive portal answering every request with a login page. The
reference is the Hub's (a real loopback Hub stub behind them), so each falls through to
the next source, the Hub last; the result says whose reference it was; `verify` and
`list` afterwards show a whole cache and no phantom partial. Every error says its cause
and leaves the cache as it was."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.helpers import tiny_model, write_registry
from tests.support.hub_stub import HubStub
from vibrant_rpc.paths import Paths

MB = 1_000_000
REPO, FILE = "test/tiny", "x-q4_k_m.gguf"
# the Hub's file, and the other bytes a lying mirror serves under the same name
TRUE = b"GGUF" + hashlib.shake_256(b"the hub's").digest(3 * MB - 4)
OTHER = b"GGUF" + hashlib.shake_256(b"the mirror's").digest(3 * MB - 4)
PAGE = b"<!DOCTYPE html><html><body><form>Sign in to Hotel WiFi</form></body></html>"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Portal(ThreadingHTTPServer):
    """A captive portal on loopback: every request is answered with its login page (or,
    ``redirect``, sent there with a 302), whatever was asked."""

    def __init__(self, redirect: bool = False) -> None:
        self.redirect, self.hits = redirect, 0
        super().__init__(("127.0.0.1", 0), _PortalHandler)
        self.daemon_threads = True

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _PortalHandler(BaseHTTPRequestHandler):
    server: Portal

    def _answer(self) -> None:
        self.server.hits += 1
        if self.server.redirect and not self.path.startswith("/login"):
            self.send_response(302)
            self.send_header("Location", f"{self.server.endpoint}/login?from={self.path}")
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(PAGE)

    do_GET = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def portal() -> Iterator[Portal]:
    server = Portal()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def hub() -> Iterator[HubStub]:
    """The Hub: its SHA-256 is the reference."""
    with HubStub() as stub:
        stub.add_repo(REPO, {FILE: TRUE})
        yield stub


def setup_home(paths: Paths, sources: list[str], **settings: object) -> None:
    write_registry(
        paths,
        [tiny_model("x", filename=FILE, hf_repo=REPO), tiny_model("kept", filename="kept.gguf")],
    )
    lines = {
        "download_idle_timeout_s": 5.0,
        "download_retry_base_s": 0.05,
        "use_other_caches": False,
        "sources": sources,
        **settings,
    }
    paths.config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in lines.items()))
    # another model already cached: every failure below must leave it as it is
    paths.models.mkdir(parents=True, exist_ok=True)
    (paths.models / "kept.gguf").write_bytes(b"GGUF" + b"k" * 1000)


def vibrant(hub_endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "vibrant"
    env = {**os.environ, "HF_ENDPOINT": hub_endpoint}
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, env=env)
    print(f"$ vibrant {' '.join(args)} -> {r.returncode}\n{r.stdout}{r.stderr}")
    assert "Traceback" not in r.stderr
    return r


def downloaded(r: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert r.returncode == 0, r.stderr
    result: dict[str, object] = json.loads(r.stdout.splitlines()[-1])
    return result


def cache_is_whole(paths: Paths, hub: HubStub) -> None:
    """`verify` agrees with the Hub, `list` shows the model cached and nothing partial."""
    r = vibrant(hub.endpoint, "model", "verify", "x")
    assert r.returncode == 0 and f"x: OK (sha256:{sha(TRUE)})" in r.stdout
    r = vibrant(hub.endpoint, "model", "list", "--cached")
    assert "partial" not in r.stdout
    assert {line.split()[0] for line in r.stdout.splitlines()[1:3]} == {"x", "kept"}
    assert not paths.downloading.exists() or not any(paths.downloading.iterdir())
    assert (paths.models / "kept.gguf").read_bytes() == b"GGUF" + b"k" * 1000


def test_a_mirror_serving_other_bytes_under_its_own_hash_falls_through_to_the_hub(
    hub: HubStub, paths: Paths
) -> None:
    with HubStub() as mirror:
        mirror.add_repo(REPO, {FILE: OTHER})  # other bytes, and its hash for them
        setup_home(paths, [mirror.endpoint, hub.endpoint])
        result = downloaded(vibrant(hub.endpoint, "model", "download", "x", "--json"))
        host = hub.endpoint.removeprefix("http://")
        assert result["verified"] is True and result["sha256"] == sha(TRUE)
        assert result["reference_by"] == {FILE: host}  # the Hub's, not the mirror's
        assert result["served_by"] == {FILE: host}
        # the mirror said other bytes: none of them was fetched
        assert mirror.bytes_served == 0 and hub.bytes_served == len(TRUE)
    assert (paths.models / "x.gguf").read_bytes() == TRUE
    cache_is_whole(paths, hub)


def test_a_mirror_serving_a_damaged_copy_falls_through_to_the_hub(
    hub: HubStub, paths: Paths
) -> None:
    with HubStub() as mirror:
        mirror.add_repo(REPO, {FILE: TRUE})  # it says the right hash, and sends other bytes
        mirror.faults.update({"corrupt_offset": 2 * MB, "corrupt_count": 1000})
        setup_home(paths, [mirror.endpoint, hub.endpoint])
        r = vibrant(hub.endpoint, "model", "download", "x", "--json")
        result = downloaded(r)
        assert "failed its checksum" in r.stderr  # said, with the source, in the log
        assert result["verified"] is True and result["sha256"] == sha(TRUE)
        assert result["served_by"] == {FILE: hub.endpoint.removeprefix("http://")}
        assert mirror.bytes_served == len(TRUE) and hub.bytes_served == len(TRUE)
    cache_is_whole(paths, hub)


@pytest.mark.parametrize("redirect", [False, True], ids=["login-page", "302-to-login"])
def test_a_captive_portal_source_falls_through_to_the_hub(
    hub: HubStub, paths: Paths, portal: Portal, redirect: bool
) -> None:
    portal.redirect = redirect
    setup_home(paths, [portal.endpoint, hub.endpoint])
    r = vibrant(hub.endpoint, "model", "download", "x", "--json")
    result = downloaded(r)
    assert portal.hits > 0
    said = " ".join(r.stderr.split())
    assert f"{portal.endpoint.removeprefix('http://')} answered" in said and "web page" in said
    assert result["verified"] is True and result["sha256"] == sha(TRUE)
    assert result["served_by"] == {FILE: hub.endpoint.removeprefix("http://")}
    cache_is_whole(paths, hub)


def test_a_captive_portal_as_the_hub_is_named_and_leaves_nothing(
    paths: Paths, portal: Portal
) -> None:
    setup_home(paths, [])  # one endpoint, HF_ENDPOINT: the portal answers it
    r = vibrant(portal.endpoint, "model", "download", "x")
    said = " ".join(r.stderr.split())
    assert r.returncode == 1
    host = portal.endpoint.removeprefix("http://")
    assert f"error: {host} answered {FILE} with a web page (200, text/html" in said
    assert "captive portal" in said
    assert not paths.partial_dir("x").exists() and not (paths.models / "x.gguf").exists()
    assert (paths.models / "kept.gguf").read_bytes() == b"GGUF" + b"k" * 1000
    r = vibrant(portal.endpoint, "model", "list")
    assert r.returncode == 0 and "partial" not in r.stdout
    r = vibrant(portal.endpoint, "model", "fit", "x")  # its header: the same cause
    assert r.returncode == 1 and "web page" in " ".join(r.stderr.split())


def test_bytes_that_fail_at_every_source_name_them_all_and_leave_no_partial(
    hub: HubStub, paths: Paths
) -> None:
    with HubStub() as mirror:
        mirror.add_repo(REPO, {FILE: TRUE})
        for stub in (mirror, hub):
            stub.faults.update({"corrupt_offset": MB, "corrupt_count": 1000})
        setup_home(paths, [mirror.endpoint, hub.endpoint])
        r = vibrant(hub.endpoint, "model", "download", "x")
        mirror_host = mirror.endpoint.removeprefix("http://")
    said = " ".join(r.stderr.split())
    assert r.returncode == 1
    assert f"x: {FILE} arrived damaged from every source" in said
    assert f"the reference {sha(TRUE)} (from {hub.endpoint.removeprefix('http://')})" in said
    assert f"{mirror_host} sent" in said
    r = vibrant(hub.endpoint, "model", "list")
    assert "partial" not in r.stdout  # was "partial 0 % (0 B of 8.0 MiB)"
    assert not paths.partial_dir("x").exists() and not (paths.models / "x.gguf").exists()
    assert (paths.models / "kept.gguf").read_bytes() == b"GGUF" + b"k" * 1000


def test_a_mirrors_own_hash_stands_only_for_a_trusted_mirror(paths: Paths) -> None:
    dead_hub = "http://127.0.0.1:9"  # the Hub can't be reached (an air-gapped network)
    with HubStub() as mirror:
        mirror.add_repo(REPO, {FILE: OTHER})
        setup_home(paths, [mirror.endpoint])
        r = vibrant(dead_hub, "model", "download", "x")
        said = " ".join(r.stderr.split())
        host = mirror.endpoint.removeprefix("http://")
        assert r.returncode == 1
        assert f"only {host} vouches for the SHA-256 of {FILE}, and it is not a trusted" in said
        assert "the Hub (127.0.0.1:9) was asked" in said and "trusted_sources" in said
        assert mirror.bytes_served == 0 and not paths.partial_dir("x").exists()
        setup_home(paths, [mirror.endpoint], trusted_sources=[mirror.endpoint])
        result = downloaded(vibrant(dead_hub, "model", "download", "x", "--json"))
        assert result["verified"] is True and result["reference_by"] == {FILE: host}
        r = vibrant(dead_hub, "model", "download", "x")
        assert "already downloaded" in r.stdout
