"""The server process over stdio: LSP lifecycle, every method that needs no model in
memory (happy paths and errors), settings, and malformed input. No model is loaded here.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from pytest_lsp import LanguageClient

from tests.support.helpers import put_cached, tiny_model
from tests.support.helpers import write_registry as write_user_registry
from tests.support.rpc_client import (
    RawLsp,
    Recorder,
    call,
    call_error,
    server_env,
    start_server,
    stop_server,
)
from vibrant_rpc.app import Vibrant
from vibrant_rpc.cache.manifest import utcnow
from vibrant_rpc.paths import Paths


@pytest.fixture
def home(paths: Paths) -> Path:
    """A cache with two small fake models, one partial download, and the user registry."""
    write_user_registry(paths, [tiny_model("tiny-a", 100), tiny_model("tiny-b", 200)])
    app = Vibrant(paths)
    put_cached(app.cache, "tiny-a", size=1000, last_used=utcnow())
    put_cached(app.cache, "tiny-b", size=3000, downloaded_at=utcnow() - timedelta(days=3))
    partial = paths.partial_dir("tiny-c")
    partial.mkdir(parents=True)
    (partial / "x.part").write_bytes(b"x" * 500)
    # A partial download nobody touched for two days: the server removes it at start-up.
    stale = paths.partial_dir("tiny-d")
    stale.mkdir(parents=True)
    (stale / "x.part").write_bytes(b"x" * 700)
    old = time.time() - 2 * 86400
    for path in (stale / "x.part", stale):
        os.utime(path, (old, old))
    return paths.home.parent


@pytest_asyncio.fixture
async def server(home: Path) -> AsyncIterator[tuple[LanguageClient, Recorder]]:
    client, rec = await start_server(server_env(home), {"keepAliveS": 60, "contextSize": 2048})
    yield client, rec
    assert await stop_server(client) == 0


async def test_lifecycle_initialize_shutdown_exit(server: tuple[LanguageClient, Recorder]) -> None:
    client, _ = server
    status = await call(client, "vibrant/status")
    assert status == {
        "state": "unloaded",
        "modelId": None,
        "loadedAt": None,
        "lastUsed": None,
        "busy": False,
        "error": None,
        "downloads": [],
        "plan": None,
        "engine": None,  # completions are the local model's: no team engine set
    }
    # Nothing but protocol on stdout: pytest-lsp fails the test on any stray byte there.


async def test_list_and_info(server: tuple[LanguageClient, Recorder]) -> None:
    client, _ = server
    result = await call(client, "vibrant/listModels", {"scope": "all"})
    models = {m["id"]: m for m in result["models"]}
    assert {"tiny-a", "tiny-b", "qwen2.5-coder-3b-q4"} <= set(models)
    a = models["tiny-a"]
    assert a["cached"] is True and a["sizeBytes"] == 1000 and a["lastUsed"] is not None
    assert a["hfRepo"] == "test/tiny" and a["ramRequiredMb"] == 100 and a["loaded"] is False
    assert models["qwen2.5-coder-3b-q4"]["cached"] is False
    assert result["recommended"] in models
    cached = await call(client, "vibrant/listModels", {"scope": "cached"})
    assert sorted(m["id"] for m in cached["models"]) == ["tiny-a", "tiny-b"]
    default = await call(client, "vibrant/listModels")
    assert len(default["models"]) >= 2

    info = await call(client, "vibrant/modelInfo", {"modelId": "tiny-b"})
    assert info["id"] == "tiny-b" and info["cached"] and info["useCount"] == 0
    code, message, data = await call_error(client, "vibrant/modelInfo", {"modelId": "tiny-x"})
    assert code == -31001 and data["kind"] == "ModelNotFound" and "tiny-x" in message
    assert "tiny-a" in data["suggestions"]


async def test_select(server: tuple[LanguageClient, Recorder]) -> None:
    client, _ = server
    result = await call(client, "vibrant/selectModel", {"ramBytes": 16 * 2**30})
    assert result["modelId"] and result["reason"] and result["fits"]
    assert result["usableRamBytes"] == 14 * 2**30
    here = await call(client, "vibrant/selectModel")
    assert here["totalRamBytes"] > 0
    code, _, data = await call_error(client, "vibrant/selectModel", {"ramBytes": 2**20})
    assert code == -31002 and data["kind"] == "InsufficientRam"


async def test_cache_methods(server: tuple[LanguageClient, Recorder], paths: Paths) -> None:
    client, _ = server
    stats = await call(client, "vibrant/cacheStats")
    assert stats["models"] == 2 and stats["totalBytes"] == 4000
    assert stats["partialBytes"] >= 500 and stats["cacheDir"] == str(paths.models)
    # The stale partial is cleaned in the background at start-up; the fresh one stays.
    deadline = time.monotonic() + 10
    while paths.partial_dir("tiny-d").exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not paths.partial_dir("tiny-d").exists()
    assert paths.partial_dir("tiny-c").exists()
    assert stats["maxCacheBytes"] is None

    cleaned = await call(client, "vibrant/cleanCache", {})
    assert cleaned["removed"] == ["tiny-c (partial)"] and cleaned["freedBytes"] >= 500

    pruned = await call(client, "vibrant/pruneCache", {"maxBytes": 1500})
    assert pruned == {"removed": ["tiny-b"], "freedBytes": 3000}  # least recently used

    old = await call(client, "vibrant/cleanCache", {"olderThanDays": 0})
    assert old["removed"] == ["tiny-a"]

    code, _, data = await call_error(client, "vibrant/removeModel", {"modelId": "tiny-a"})
    assert code == -31007 and data["kind"] == "NotCached"


async def test_remove(server: tuple[LanguageClient, Recorder], paths: Paths) -> None:
    client, _ = server
    assert await call(client, "vibrant/removeModel", {"modelId": "tiny-b"}) == {
        "modelId": "tiny-b",
        "freedBytes": 3000,
    }
    assert not (paths.models / "tiny-b.gguf").exists()
    code, _, data = await call_error(client, "vibrant/removeModel", {"modelId": "nope"})
    assert code == -31001 and data["kind"] == "ModelNotFound"


async def test_model_errors_without_loading(server: tuple[LanguageClient, Recorder]) -> None:
    client, rec = server
    # Not downloaded: NotCached names the model and its size; nothing downloads.
    code, message, data = await call_error(
        client, "vibrant/complete", {"prompt": "x", "modelId": "qwen2.5-coder-3b-q4"}
    )
    assert code == -31007 and data["modelId"] == "qwen2.5-coder-3b-q4"
    assert data["downloadBytes"] > 0 and "qwen2.5-coder-3b-q4" in message
    code, _, data = await call_error(client, "vibrant/loadModel", {"modelId": "nope"})
    assert code == -31001
    assert await call(client, "vibrant/unloadModel") == {"modelId": None, "unloaded": False}
    assert await call(client, "vibrant/cancelDownload", {"modelId": "tiny-a"}) == {
        "modelId": "tiny-a",
        "cancelled": False,
    }
    assert rec.of("vibrant/downloadProgress") == []


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("vibrant/complete", {"prompt": 5}, "prompt"),
        ("vibrant/complete", {"prompt": "x", "maxTokens": 10**30}, "maxTokens"),
        ("vibrant/complete", {"prompt": "x", "temperature": -1}, "temperature"),
        ("vibrant/complete", {"prompt": "x", "stop": ["a"] * 100}, "stop"),
        ("vibrant/complete", {"suffix": "x"}, ""),
        ("vibrant/complete", {"prompt": "x", "colour": "red"}, "colour"),
        ("vibrant/modelInfo", {}, ""),
        ("vibrant/loadModel", {"options": {"contextSize": "big"}}, "options.contextSize"),
        ("vibrant/selectModel", {"ramBytes": -1}, "ramBytes"),
        ("vibrant/listModels", {"scope": "everything"}, "scope"),
        ("vibrant/listModels", [1, 2], ""),
    ],
)
async def test_bad_params_name_the_field(
    server: tuple[LanguageClient, Recorder], method: str, params: object, field: str
) -> None:
    client, _ = server
    code, message, data = await call_error(client, method, params)
    assert code == -32602 and data["kind"] == "InvalidParams"
    assert data["field"] == field and data["reason"]
    assert method in message
    # The server carries on.
    assert (await call(client, "vibrant/status"))["state"] == "unloaded"


async def test_unknown_method(server: tuple[LanguageClient, Recorder]) -> None:
    client, _ = server
    code, _, data = await call_error(client, "vibrant/frobnicate", {})
    assert code == -32601 and data["kind"] == "MethodNotFound"


async def test_settings_from_initialization_options(home: Path) -> None:
    config = home / ".vibrant" / "config.toml"
    config.write_text('cache_size_limit = "5GiB"\ncontext_size = 1024\n')
    options = {"bogusSetting": 1, "cacheSizeLimit": "1GiB", "keepAliveS": 5}
    client, _ = await start_server(server_env(home), options)
    try:
        # initializationOptions win over config.toml ...
        assert (await call(client, "vibrant/cacheStats"))["maxCacheBytes"] == 2**30
        # ... and the bad option is dropped with a warning shown to the user (sent from
        # the worker that built the backend: it may trail the first answer a little).
        for _ in range(100):
            if any("bogusSetting" in m.message for m in client.messages):
                break
            await asyncio.sleep(0.05)
        assert any("bogusSetting" in m.message for m in client.messages)
    finally:
        await stop_server(client)
    client, _ = await start_server(server_env(home))
    try:
        assert (await call(client, "vibrant/cacheStats"))["maxCacheBytes"] == 5 * 2**30
    finally:
        await stop_server(client)


async def test_start_up_is_quick_and_imports_no_llama(home: Path) -> None:
    env = server_env(home)
    raw = await RawLsp.start(env, ["--stdio"])
    try:
        t0 = time.monotonic()
        await raw.send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "processId": None, "rootUri": None, "capabilities": {}}})  # fmt: skip
        reply = await raw.reply_to(1)
        assert reply["result"]["serverInfo"]["name"] == "vibrant-rpc"
        assert time.monotonic() - t0 < 10
        await raw.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        # A module list request would be protocol creep; ask the OS instead.
        maps = Path(f"/proc/{raw.proc.pid}/maps").read_text()
        assert "libllama" not in maps
    finally:
        await raw.close()


async def test_malformed_input_gets_error_replies(home: Path) -> None:
    raw = await RawLsp.start(server_env(home))
    try:
        await raw.send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                        "params": {"capabilities": {}}})  # fmt: skip
        await raw.reply_to(1)
        await raw.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})

        await raw.send_bytes(b"{not json")
        assert (await raw.reply_to(None))["error"]["code"] == -32700
        await raw.send_bytes(b"\xff\xfe garbage")
        assert (await raw.reply_to(None))["error"]["code"] == -32700
        await raw.send_bytes(b"[" * 100_000 + b"]" * 100_000)  # deeper than any parser goes
        assert (await raw.reply_to(None))["error"]["code"] in (-32700, -32600)
        await raw.send_bytes(b"[1, 2]")
        assert (await raw.reply_to(None))["error"]["code"] == -32600
        await raw.send_bytes(b'"just a string"')
        assert (await raw.reply_to(None))["error"]["code"] == -32600
        await raw.send({"jsonrpc": "1.0", "id": 2, "method": "vibrant/status"})
        assert (await raw.reply_to(2))["error"]["code"] == -32600
        await raw.send({"jsonrpc": "2.0", "id": 3, "method": 42})
        assert (await raw.reply_to(3))["error"]["code"] == -32600
        await raw.send({"jsonrpc": "2.0", "id": {"x": 1}, "method": "vibrant/status"})
        assert (await raw.reply_to(None))["error"]["code"] == -32600
        await raw.send({"jsonrpc": "2.0", "id": 4, "method": "vibrant/complete",
                        "params": {"prompt": "x", "maxTokens": int("9" * 4000)}})  # fmt: skip
        assert (await raw.reply_to(4))["error"]["code"] == -32602
        await raw.send_bytes(
            b'{"jsonrpc": "2.0", "id": 5, "method": "vibrant/complete", '
            b'"params": {"prompt": "x", "maxTokens": 1' + b"0" * 5000 + b"}}"
        )
        assert (await raw.reply_to(None))["error"]["code"] == -32700  # too many digits
        await raw.send({"jsonrpc": "2.0", "id": 6, "method": "vibrant/status", "params": 7})
        assert (await raw.reply_to(6))["error"]["code"] == -32602
        await raw.send({"jsonrpc": "2.0", "id": 7, "method": "textDocument/hover",
                        "params": {"textDocument": 5}})  # fmt: skip
        assert (await raw.reply_to(7))["error"]["code"] in (-32602, -32601)
        # A body announced bigger than the limit is skipped without being held in memory.
        big = b" " * (64 * 1024 * 1024 + 1)
        await raw.send_bytes(big)
        assert (await raw.reply_to(None, timeout=60))["error"]["code"] == -32600
        # A header the framing doesn't know is ignored.
        await raw.send_bytes(
            b'{"jsonrpc": "2.0", "id": 8, "method": "vibrant/status"}',
            header=b"X-Odd: 1\r\nContent-Length: 55\r\n\r\n",
        )
        # And through all that the server carries on.
        reply = await raw.reply_to(8)
        assert reply["result"]["state"] == "unloaded"
        assert raw.proc.returncode is None
        await raw.send({"jsonrpc": "2.0", "id": 9, "method": "shutdown"})
        await raw.reply_to(9)
        await raw.send({"jsonrpc": "2.0", "method": "exit"})
        assert await asyncio.wait_for(raw.proc.wait(), 10) == 0
    finally:
        await raw.close()


async def test_exit_without_shutdown_and_eof(home: Path) -> None:
    raw = await RawLsp.start(server_env(home))
    await raw.send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                    "params": {"capabilities": {}}})  # fmt: skip
    await raw.reply_to(1)
    await raw.send({"jsonrpc": "2.0", "method": "exit"})
    assert await asyncio.wait_for(raw.proc.wait(), 10) == 1  # LSP: exit without shutdown
    raw = await RawLsp.start(server_env(home))
    assert raw.proc.stdin is not None
    raw.proc.stdin.close()  # the editor died
    assert await asyncio.wait_for(raw.proc.wait(), 10) in (0, 1)
