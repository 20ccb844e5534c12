"""`vibrant/complete` through a team's Ollama, end to end: the real vibrant server over
stdio, and the loopback stand-in that answers as Ollama does
(tests/unit/engines/ollama_stand_in.py; there is no Ollama binary here). The editor
talks only to vibrant: the kind is probed, the completion goes to /api/generate raw
with the rendered FIM prompt and streams back, ``$/cancelRequest`` closes the stream
and Ollama stops, and the key reaches that host only, in no message or log."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import LanguageClient

from tests.support.rpc_client import Recorder, call, server_env, serving
from tests.unit.engines.ollama_stand_in import Ollama
from tests.unit.engines.stand_in import StandIn, stand_in

pytestmark = [pytest.mark.asyncio(loop_scope="module")]

KEY = "team-key-93b1e0a4c7d2"
BASE = "qwen2.5-coder:7b-base"


@pytest.fixture(scope="module")
def ollama() -> Iterator[tuple[StandIn, Ollama]]:
    with stand_in() as server:
        yield server, Ollama(server, [BASE])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def team(
    ollama: tuple[StandIn, Ollama], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[LanguageClient, Recorder]]:
    server, _ = ollama
    env = server_env(tmp_path_factory.mktemp("laptop"), TEAM_KEY=KEY, VIBRANT_LOG_LEVEL="debug")
    options = {"engine": "team", "engines": {"team": {"url": server.url, "apiKeyEnv": "TEAM_KEY"}}}
    async with serving(env, options, exit_code=0) as (client, rec):
        yield client, rec
        seen = [m.message for m in client.log_messages] + [m.message for m in client.messages]
        seen.append(repr(rec.events))
    assert not [s for s in seen if KEY in s]
    assert {h["Authorization"] for _, _, h, _ in server.seen} == {f"Bearer {KEY}"}


async def test_a_completion_from_ollama_streams_and_says_who_answered(
    team: tuple[LanguageClient, Recorder], ollama: tuple[StandIn, Ollama]
) -> None:
    client, rec = team
    server, fake = ollama
    params = {"prompt": "def add(a, b):\n    return ", "suffix": "\n", "maxTokens": 16,
              "temperature": 0, "raw": True, "partialResultToken": "add"}  # fmt: skip
    result = await call(client, "vibrant/complete", params)
    assert (result["engine"], result["modelId"], result["fallbackReason"]) == ("team", BASE, None)
    assert result["text"] == "a + b\n"
    assert "".join(p["text"] for p in rec.partials("add")) == result["text"]
    body = json.loads([b for _, p, _, b in server.seen if p == "/api/generate"][-1])
    assert (body["raw"], body["stream"], "suffix" in body) == (True, True, False)
    assert body["prompt"].startswith("<|fim_prefix|>") and body["prompt"] == fake.runs[-1].seen
    status = await call(client, "vibrant/status")
    info = status["engine"]
    assert (info["kind"], info["model"], info["healthy"], info["slots"]) == (
        "ollama", BASE, True, None)  # fmt: skip
    assert status["state"] == "unloaded"  # the local model was never loaded


async def test_cancel_request_closes_the_stream_and_ollama_stops(
    team: tuple[LanguageClient, Recorder], ollama: tuple[StandIn, Ollama]
) -> None:
    client, rec = team
    _, fake = ollama
    fake.every_s, fake.middle = 0.05, [f" t{i}" for i in range(100)]
    params = {"prompt": "x = ", "suffix": "\n", "maxTokens": 200, "temperature": 0,
              "raw": True, "partialResultToken": "c"}  # fmt: skip
    fut = asyncio.wrap_future(
        client.protocol.send_request("vibrant/complete", params, msg_id="cancel-me")
    )
    deadline = time.monotonic() + 30
    while not rec.partials("c"):
        assert time.monotonic() < deadline, "no piece streamed"
        await asyncio.sleep(0.005)
    since = time.monotonic()
    client.protocol.notify("$/cancelRequest", types.CancelParams(id="cancel-me"))
    with pytest.raises(JsonRpcException) as err:
        await asyncio.wait_for(fut, 10)
    assert err.value.code == -32800
    run = fake.runs[-1]
    assert await asyncio.to_thread(run.done.wait, 5) and run.ended == "disconnect"
    print(f"$/cancelRequest: Ollama stand-in stopped {(run.ended_at - since) * 1000:.0f} ms "
          f"after, {len(run.sent)} of 100 pieces sent")  # fmt: skip
    assert run.ended_at - since < 1.0 and len(run.sent) < 50
