"""Credentials written into HF_ENDPOINT never reach a person: not in CLI errors, not in
JSON-RPC errors, not in $/progress, not in logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.rpc_client import call_error, server_env, start_server, stop_server
from vibrant_rpc.errors import DownloadFailedError
from vibrant_rpc.paths import Paths
from vibrant_rpc.redact import redact

SECRET = "hf_s3cretT0kenValue1234"
# A mirror that is down (the discard port refuses), reached with credentials in the URL.
ENDPOINT = f"http://alice:{SECRET}@127.0.0.1:9"
MODEL = "qwen2.5-coder-3b-q4"


def test_redact_hides_url_credentials_and_tokens() -> None:
    assert (
        redact(f"GET {ENDPOINT}/x/resolve/main/f") == "GET http://***@127.0.0.1:9/x/resolve/main/f"
    )
    assert SECRET not in redact(f"token {SECRET} and https://u@host/")
    assert redact("https://huggingface.co/Qwen/x") == "https://huggingface.co/Qwen/x"
    err = DownloadFailedError(f"failed at {ENDPOINT}", hint=f"check {ENDPOINT}", url=ENDPOINT)
    assert SECRET not in str(err) and SECRET not in repr(err.data())


def test_cli_errors_and_logs_hide_the_credentials(paths: Paths) -> None:
    paths.home.mkdir(parents=True, exist_ok=True)
    paths.config.write_text("download_retry_base_s = 0.01\n")
    env = {**os.environ, "HF_ENDPOINT": ENDPOINT}
    exe = Path(sys.executable).parent / "vibrant"
    r = subprocess.run(
        [str(exe), "model", "download", MODEL, "--log-level", "debug"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "127.0.0.1:9" in r.stderr  # the error still says where it tried
    assert SECRET not in r.stderr + r.stdout and "alice" not in r.stderr + r.stdout
    assert not paths.manifest.exists() or "alice" not in paths.manifest.read_text()


@pytest.mark.timeout(120)
async def test_server_errors_progress_and_logs_hide_the_credentials(paths: Paths) -> None:
    paths.home.mkdir(parents=True, exist_ok=True)
    paths.config.write_text("download_retry_base_s = 0.01\n")
    env = server_env(paths.home.parent, HF_ENDPOINT=ENDPOINT, VIBRANT_LOG_LEVEL="debug")
    client, rec = await start_server(env)
    try:
        client.progress_reports.setdefault("dl", [])
        _, message, data = await call_error(
            client, "vibrant/downloadModel", {"modelId": MODEL, "workDoneToken": "dl"}
        )
        assert data["kind"] == "HubUnreachable" and "127.0.0.1:9" in message
        seen = [message, repr(data), repr(client.progress_reports["dl"]), repr(rec.events)]
        seen += [m.message for m in client.log_messages]
        seen += [m.message for m in client.messages]
        assert not [s for s in seen if SECRET in s or "alice" in s], seen
        assert any("Failed" in repr(r) for r in client.progress_reports["dl"])
    finally:
        await stop_server(client)
