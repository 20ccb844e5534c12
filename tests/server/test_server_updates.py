"""Updates through the server: check, update with progress, the weekly background check
(with autoUpdate) and offline mode, against the loopback Hub stand-in."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lsprotocol import types

from tests.support.hub_stub import HubStub
from tests.support.rpc_client import (
    call,
    call_error,
    server_env,
    start_server,
    stop_server,
    write_registry,
)
from tests.unit.download.test_download import blob, sha

pytestmark = [pytest.mark.asyncio, pytest.mark.hub]

MB = 1_000_000


def entries() -> list[dict[str, object]]:
    return [
        {"id": m, "hf_repo": f"test/{m}", "filename": f"{m}.gguf", "ram_required_mb": 1}
        for m in ("tiny-a", "tiny-b")
    ]


def setup(tmp_path: Path, hub: HubStub) -> tuple[Path, dict[str, str]]:
    hub.add_repo("test/tiny-a", {"tiny-a.gguf": blob(MB, 1)})
    hub.add_repo("test/tiny-b", {"tiny-b.gguf": blob(MB, 2)})
    registry = write_registry(tmp_path / "registry.json", entries())
    return tmp_path, server_env(tmp_path, registry, HF_ENDPOINT=hub.endpoint)


async def test_check_and_update_with_progress(tmp_path: Path) -> None:
    with HubStub() as hub:
        _, env = setup(tmp_path, hub)
        client, rec = await start_server(env)
        try:
            for m in ("tiny-a", "tiny-b"):
                await call(client, "vibrant/downloadModel", {"modelId": m})
            first = hub.head("test/tiny-a")
            result = await call(client, "vibrant/checkUpdates", {})
            assert result["updates"] == [] and result["checkedAt"]
            new = blob(2 * MB, 3)
            latest = hub.publish("test/tiny-a", {"tiny-a.gguf": new})
            result = await call(client, "vibrant/checkUpdates", {"modelIds": ["tiny-a"]})
            assert result["updates"] == [
                {
                    "modelId": "tiny-a",
                    "currentRevision": first,
                    "latestRevision": latest,
                    "sizeBytes": len(new),
                }
            ]
            client.progress_reports.setdefault("u1", [])
            done = await call(
                client, "vibrant/updateModel", {"modelId": "tiny-a", "workDoneToken": "u1"}
            )
            assert done["revision"] == latest and done["sha256"] == sha(new)
            assert Path(done["paths"][0]).read_bytes() == new
            work = [e for e in rec.of(types.PROGRESS) if e["token"] == "u1"]
            assert work[0]["kind"] == "begin" and "Updating tiny-a" in work[0]["title"]
            assert work[-1]["kind"] == "end"
            events = [e for e in rec.of("vibrant/downloadProgress") if e["modelId"] == "tiny-a"]
            assert events[-1]["state"] == "done" and events[-1]["totalBytes"] == len(new)
            code, _, data = await call_error(client, "vibrant/updateModel", {"modelId": "nope"})
            assert code == -31001 and data["kind"] == "ModelNotFound"
            code, _, data = await call_error(client, "vibrant/checkUpdates", {"modelIds": [""]})
            assert code == -32602
        finally:
            assert await stop_server(client) == 0


async def _wait(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.05)


async def test_weekly_check_notifies_and_auto_updates(tmp_path: Path) -> None:
    with HubStub() as hub:
        home, env = setup(tmp_path, hub)
        now = {"updateCheckDelayS": 0}  # the check may run right after start-up
        client, rec = await start_server(env, now)
        await call(client, "vibrant/downloadModel", {"modelId": "tiny-a"})
        await stop_server(client)
        state = home / ".vibrant" / "state.json"
        assert not state.exists()  # nothing was cached at start-up: nothing to check
        client, rec = await start_server(env, now)
        await _wait(state.exists)  # now there is: the start-up check runs, once
        await stop_server(client)
        checked = json.loads(state.read_text())["last_update_check"]

        # Within the week: a restarted server does not ask the Hub again.
        hub.reset_stats()
        new = blob(MB + 11, 4)
        latest = hub.publish("test/tiny-a", {"tiny-a.gguf": new})
        client, rec = await start_server(env, now)
        await call(client, "vibrant/status")
        await asyncio.sleep(0.5)
        assert not [r for r in hub.requests if "/api/" in r.path]
        assert rec.of("vibrant/updateAvailable") == []
        await stop_server(client)

        # A week later (the recorded check moved back), with autoUpdate on.
        old = datetime.fromisoformat(checked) - timedelta(days=8)
        state.write_text(json.dumps({"last_update_check": old.isoformat(), "available": []}))
        client, rec = await start_server(env, {**now, "autoUpdate": True})
        try:
            await _wait(lambda: rec.of("vibrant/updateAvailable"))
            [note] = rec.of("vibrant/updateAvailable")
            assert note["modelId"] == "tiny-a" and note["latestRevision"] == latest
            assert note["sizeBytes"] == len(new) and note["autoUpdate"] is True
            await _wait(
                lambda: any(
                    e["modelId"] == "tiny-a" and e["state"] == "done"
                    for e in rec.of("vibrant/downloadProgress")
                )
            )
            info = await call(client, "vibrant/modelInfo", {"modelId": "tiny-a"})
            assert info["cachedRevision"] == latest
            assert [v["revision"] for v in info["versions"]][-1] == latest
            assert (home / ".vibrant" / "models" / "tiny-a.gguf").read_bytes() == new
            last = json.loads(state.read_text())["last_update_check"]
            assert datetime.fromisoformat(last) > datetime.now(UTC) - timedelta(minutes=5)
        finally:
            await stop_server(client)


async def test_offline_server_never_touches_the_network(tmp_path: Path) -> None:
    with HubStub() as hub:
        home, env = setup(tmp_path, hub)
        client, _ = await start_server(env)
        await call(client, "vibrant/downloadModel", {"modelId": "tiny-a"})
        await stop_server(client)
        (home / ".vibrant" / "state.json").unlink(missing_ok=True)  # a check would be due
        hub.publish("test/tiny-a", {"tiny-a.gguf": blob(MB, 5)})
        hub.reset_stats()
        client, rec = await start_server({**env, "HF_HUB_OFFLINE": "1"}, {"updateCheckDelayS": 0})
        try:
            listing = await call(client, "vibrant/listModels", {"scope": "cached"})
            assert [m["id"] for m in listing["models"]] == ["tiny-a"]
            code, message, _ = await call_error(
                client, "vibrant/downloadModel", {"modelId": "tiny-b"}
            )
            assert code == -31009 and "HF_HUB_OFFLINE" in message
            code, _, _ = await call_error(client, "vibrant/checkUpdates", {})
            assert code == -31009
            await asyncio.sleep(0.5)
        finally:
            await stop_server(client)
        assert hub.requests == [] and rec.of("vibrant/updateAvailable") == []


async def test_the_check_waits_after_start_up(tmp_path: Path) -> None:
    with HubStub() as hub:
        home, env = setup(tmp_path, hub)
        client, _ = await start_server(env)
        await call(client, "vibrant/downloadModel", {"modelId": "tiny-a"})
        await stop_server(client)
        hub.reset_stats()
        state = home / ".vibrant" / "state.json"
        client, _ = await start_server(env, {"updateCheckDelayS": 1.5})
        try:
            await call(client, "vibrant/status")
            await asyncio.sleep(0.5)
            # the editor's first requests don't share the machine with the check
            assert not state.exists() and not [r for r in hub.requests if "/api/" in r.path]
            await _wait(state.exists, timeout=15)
            assert [r for r in hub.requests if r.path.endswith("/refs")]
        finally:
            await stop_server(client)
