"""A Hub that sends a byte a second, through the real server: `fitModel`, `selectModel`
and `modelInfo` answer within the header fetch's deadline from the registry's numbers and
say so, and `listModels` sent meanwhile is answered at once (before: no reply to any)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from pytest_lsp import LanguageClient

from tests.support.gguf_fixtures import tiny_fim_path
from tests.support.helpers import GEMMA_ARCH
from tests.support.hub_stub import HubStub
from tests.support.rpc_client import (
    call,
    model_entry,
    server_env,
    start_server,
    stop_server,
    write_registry,
)
from vibrant_rpc.fit.headers import HUB_DEADLINE_S

pytestmark = [pytest.mark.hub, pytest.mark.asyncio(loop_scope="module")]

TOO_SLOW = f"the Hub was too slow (no header within {HUB_DEADLINE_S:g} s)"


@pytest.fixture(scope="module")
def hub() -> Iterator[HubStub]:
    with HubStub() as stub:
        for name in ("tiny", "other"):
            stub.add_repo(f"test/{name}", {f"{name}.gguf": tiny_fim_path()})
        stub.set_faults(throttle_bps=1)  # each read gets its byte: no read ever times out
        yield stub


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(
    tmp_path_factory: pytest.TempPathFactory, hub: HubStub
) -> AsyncIterator[LanguageClient]:
    home = tmp_path_factory.mktemp("slow-hub")
    facts: dict[str, Any] = {"architecture": GEMMA_ARCH, "file_size_mb": 250, "recommended": True}
    registry = write_registry(
        home / "registry.json", [model_entry("tiny", **facts), model_entry("other", **facts)]
    )
    client, _ = await start_server(server_env(home, registry, HF_ENDPOINT=hub.endpoint))
    yield client
    await stop_server(client)


async def timed(request: Awaitable[Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = await asyncio.wait_for(request, 60)
    return result, time.perf_counter() - start


async def test_a_slow_hub_is_answered_from_the_registry_within_the_deadline(
    client: LanguageClient,
) -> None:
    start = time.perf_counter()
    fitting = asyncio.ensure_future(call(client, "vibrant/fitModel", {"modelId": "tiny"}))
    await asyncio.sleep(1.0)
    listing, list_s = await timed(call(client, "vibrant/listModels", {}))
    print(f"listModels during a fitModel on a byte-a-second Hub: {list_s:.2f} s")
    assert {m["id"] for m in listing["models"]} >= {"tiny", "other"}
    assert list_s < 3, list_s
    fit = await asyncio.wait_for(fitting, 60)
    fit_s = time.perf_counter() - start
    print(f"fitModel: {fit_s:.1f} s (deadline {HUB_DEADLINE_S:g} s): {fit['note']}")
    assert fit["headerSource"] == "registry" and fit["note"].startswith(TOO_SLOW), fit
    assert fit_s < HUB_DEADLINE_S + 5
    # The Hub that slow is not asked again for a while: each of these answers at once.
    selected, select_s = await timed(call(client, "vibrant/selectModel", {}))
    print(f"selectModel: {select_s:.2f} s: {selected['reason']}")
    assert select_s < 3 and TOO_SLOW in selected["reason"]
    info, info_s = await timed(call(client, "vibrant/modelInfo", {"modelId": "other"}))
    print(f"modelInfo: {info_s:.2f} s: {info['fit']['note']}")
    assert info_s < 3 and info["fit"]["note"].startswith(TOO_SLOW)
    assert "not asked again" in info["fit"]["note"]
