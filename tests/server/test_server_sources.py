"""Sources that lie, through the real server (issue 22): `vibrant/downloadModel` from a
mirror that serves other bytes under its own hash, in front of the Hub (a loopback stub)
whose SHA-256 is the reference, says whose reference it was (`referenceBy`); a captive
portal in the Hub's place is a DownloadFailed error naming it, never -32603."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.hub_stub import HubStub
from tests.support.rpc_client import (
    call,
    call_error,
    model_entry,
    server_env,
    start_server,
    stop_server,
    write_registry,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.hub]

REPO, FILE = "test/lying", "lying.gguf"
TRUE = b"GGUF" + hashlib.shake_256(b"the hub's bytes").digest(2_000_000)
OTHER = b"GGUF" + hashlib.shake_256(b"the mirror's bytes").digest(2_000_000)


class _Page(BaseHTTPRequestHandler):
    """A captive portal: a login page for every request."""

    def _answer(self) -> None:
        page = b"<html><body>Please sign in</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(page)

    do_GET = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def portal() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def home_with(tmp: Path, sources: list[str]) -> tuple[Path, Path]:
    home = tmp / "home"
    registry = write_registry(
        home / "registry.json", [model_entry("lying", hf_repo=REPO, filename=FILE)]
    )
    config = home / ".vibrant" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"sources = {json.dumps(sources)}\nuse_other_caches = false\n")
    return home, registry


async def test_download_through_a_lying_mirror_says_the_hub_vouched(tmp_path: Path) -> None:
    with HubStub() as hub, HubStub() as mirror:
        hub.add_repo(REPO, {FILE: TRUE})
        mirror.add_repo(REPO, {FILE: OTHER})
        home, registry = home_with(tmp_path, [mirror.endpoint, hub.endpoint])
        client, _ = await start_server(server_env(home, registry, HF_ENDPOINT=hub.endpoint))
        try:
            result = await call(client, "vibrant/downloadModel", {"modelId": "lying"})
        finally:
            await stop_server(client)
        host = hub.endpoint.removeprefix("http://")
        assert result["verified"] is True
        assert result["sha256"] == hashlib.sha256(TRUE).hexdigest()
        # (the test client turns a file name used as a key into "_0": the values say it)
        assert list(result["referenceBy"].values()) == [host]
        assert list(result["servedBy"].values()) == [host]
        assert mirror.bytes_served == 0
    assert (home / ".vibrant" / "models" / "lying.gguf").read_bytes() == TRUE


async def test_a_portal_in_the_hubs_place_is_named(tmp_path: Path, portal: str) -> None:
    home, registry = home_with(tmp_path, [])
    client, _ = await start_server(server_env(home, registry, HF_ENDPOINT=portal))
    try:
        code, message, data = await call_error(
            client, "vibrant/downloadModel", {"modelId": "lying"}
        )
        status = await call(client, "vibrant/status")
    finally:
        await stop_server(client)
    print(code, message, data)
    assert code == -31003 and data["kind"] == "DownloadFailed"
    host = portal.removeprefix("http://")
    assert message.startswith(f"{host} answered {FILE} with a web page (200, text/html)")
    assert data["source"] == host
    assert status["downloads"] == []
    assert not (home / ".vibrant" / "models" / ".downloading" / "lying").exists()
