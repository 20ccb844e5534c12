"""A load that fails falls back to the next smaller cached model; an idle model is
unloaded after the keep-alive and its memory really goes back (RSS of the server)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import pytest_asyncio
from lsprotocol import types
from pytest_lsp import LanguageClient

from tests.support.gguf_fixtures import GEMMA_SHA256, gemma_path
from tests.support.rpc_client import (
    Recorder,
    call,
    call_error,
    home_env,
    model_entry,
    pid,
    serving,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.llama]

GEMMA = "gemma-270m"
BROKEN = "broken-big"
KEEP_ALIVE_S = 3
MB = 1024 * 1024


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[LanguageClient, Recorder, Path]]:
    home = tmp_path_factory.mktemp("idle")
    # Not a GGUF at all: llama.cpp refuses it with its own message.
    broken = home / "broken.bin"
    broken.write_bytes(b"GGUF" + b"\x00" * 4096)
    env = home_env(
        home,
        [
            (model_entry(GEMMA, sha256=GEMMA_SHA256, recommended=True), gemma_path()),
            (model_entry(BROKEN, ram_required_mb=800), broken),
        ],
    )
    async with serving(env, {"keepAliveS": KEEP_ALIVE_S, "contextSize": 1024}) as (client, rec):
        yield client, rec, home


def rss(client: LanguageClient) -> int:
    return psutil.Process(pid(client)).memory_info().rss


async def test_failed_load_falls_back_then_idle_unload_returns_memory(
    server: tuple[LanguageClient, Recorder, Path],
) -> None:
    client, rec, _ = server
    client.progress_reports.setdefault("l1", [])  # a token the client made
    before = rss(client)
    assert before < 80 * MB, f"RSS before the first load: {before / MB:.0f} MB"
    result = await call(client, "vibrant/loadModel", {"modelId": BROKEN, "workDoneToken": "l1"})
    assert result["modelId"] == GEMMA
    assert BROKEN in result["reason"] and result["loadMs"] > 0
    changes = [(e["modelId"], e["state"]) for e in rec.of("vibrant/modelStateChanged")]
    assert changes == [
        (BROKEN, "loading"),
        (BROKEN, "failed"),
        (GEMMA, "loading"),
        (GEMMA, "ready"),
    ]
    failed = rec.of("vibrant/modelStateChanged")[1]
    assert f"trying the next smaller cached model, {GEMMA}" in failed["reason"]
    kinds = [e["kind"] for e in rec.of(types.PROGRESS) if e["token"] == "l1"]
    assert kinds[0] == "begin" and kinds[-1] == "end" and "report" in kinds

    loaded = rss(client)
    assert loaded - before > 150 * MB, (before, loaded)
    t0 = time.monotonic()
    idle = await rec.wait_for(
        "vibrant/modelStateChanged", lambda e: e["state"] == "unloaded", timeout=KEEP_ALIVE_S + 20
    )
    waited = time.monotonic() - t0
    assert "idle" in idle["reason"] and idle["modelId"] == GEMMA
    assert waited < KEEP_ALIVE_S + 5
    assert (await call(client, "vibrant/status"))["state"] == "unloaded"
    after = rss(client)
    assert loaded - after > 150 * MB, (before, loaded, after)


async def test_with_no_model_left_load_failed_carries_llama_cpps_message(
    server: tuple[LanguageClient, Recorder, Path],
) -> None:
    client, _, _ = server
    await call(client, "vibrant/removeModel", {"modelId": GEMMA})
    code, message, data = await call_error(client, "vibrant/loadModel", {"modelId": BROKEN})
    assert code == -31005 and data["kind"] == "ModelLoadFailed"
    assert BROKEN in message and data["llamaErrors"]
    status = await call(client, "vibrant/status")
    assert status["state"] == "failed" and status["error"]
