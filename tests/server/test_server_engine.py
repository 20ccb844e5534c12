"""`vibrant/complete` through a team's engine, end to end: the real vibrant server over
stdio, the real llama-server on loopback (tests/support/llama_server.py) serving the
real Gemma 3 270M with a key. The editor talks only to vibrant: same streaming, same
``$/cancelRequest`` and superseding (and llama-server's slot really stops: a token or so
past what the editor had; bench/bench_engines.py measures the 100 ms bar), the
completion pipeline applied to the engine's text, the result saying
which engine answered, the local model taking over when the engine dies (fallback), and
the key in no message, log or error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import LanguageClient

from tests.support.gguf_fixtures import GEMMA_SHA256, gemma_path
from tests.support.llama_server import KEY, LlamaServer, running
from tests.support.rpc_client import (
    Recorder,
    call,
    call_error,
    home_env,
    model_entry,
    plain,
    serving,
)
from vibrant_rpc.completion.pipeline import apply, cursor_at, language_for

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.engine, pytest.mark.llama]

GEMMA = "gemma-270m"
SERVED = "team-gemma"  # the alias llama-server serves it under
LONG = {"prompt": "1, 2, 3, 4, 5,", "maxTokens": 400, "temperature": 0, "raw": True}


def engines(url: str, **extra: Any) -> dict[str, Any]:
    team = {"url": url, "apiKeyEnv": "TEAM_KEY", **extra}
    return {"engine": "team", "engines": {"team": team}, "contextSize": 4096, "keepAliveS": 0}


def laptop(
    tmp: Path, options: dict[str, Any], key: str = KEY, exit_code: int | None = None
) -> AbstractAsyncContextManager[tuple[LanguageClient, Recorder]]:
    """vibrant serving with Gemma cached in ``tmp``, its team engine's key in TEAM_KEY."""
    gemma = (model_entry(GEMMA, sha256=GEMMA_SHA256), gemma_path())
    env = home_env(tmp, [gemma], TEAM_KEY=key, VIBRANT_LOG_LEVEL="debug")
    return serving(env, options, exit_code=exit_code)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    tmp = tmp_path_factory.mktemp("engine")
    # Two slots: a superseded completion's slot can be seen stopping while the new one runs.
    with running(gemma_path(), tmp, alias=SERVED, parallel=2) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def team(
    engine: LlamaServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[LanguageClient, Recorder]]:
    tmp = tmp_path_factory.mktemp("laptop")
    async with laptop(tmp, engines(engine.url), exit_code=0) as (client, rec):
        yield client, rec
        seen = [m.message for m in client.log_messages] + [m.message for m in client.messages]
        seen.append(repr(rec.events))
    # Whatever happened in this module's tests, the key never reached the editor.
    assert not [s for s in seen if KEY in s]


def send(client: LanguageClient, params: dict[str, Any], msg_id: str) -> asyncio.Future[Any]:
    return asyncio.wrap_future(
        client.protocol.send_request("vibrant/complete", params, msg_id=msg_id)
    )


async def first_piece(rec: Recorder, token: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not rec.partials(token):
        assert time.monotonic() < deadline, "no piece streamed"
        await asyncio.sleep(0.005)


async def idle_after(engine: LlamaServer, since: float, slot: int | None = None) -> float:
    """Seconds from ``since`` until the engine's slots (or ``slot``) stop processing."""
    while True:
        slots = await asyncio.to_thread(engine.slots)
        busy = [s for s in slots if s.get("is_processing") and (slot is None or s["id"] == slot)]
        if not busy:
            return time.perf_counter() - since
        assert time.perf_counter() - since < 10, slots
        await asyncio.sleep(0.002)


async def went_on(engine: LlamaServer, slot: int, sent: int) -> int:
    """Tokens the engine decoded past the ``sent`` pieces the editor had when it stopped
    the completion: it really stops if that is a few (the token it is computing when it
    finds the connection gone, the one its loop began meanwhile, and pieces on their way
    to the editor), where one that runs on goes to its 400. How soon depends on a
    token's time: 40-60 ms on a quiet 2-core machine (bench/bench_engines.py measures the
    100 ms bar); with other work on the machine one decode took 700 ms here."""
    prompt = await asyncio.to_thread(engine.prompt_tokens, str(LONG["prompt"]))
    held = await asyncio.to_thread(engine.held, slot)
    return held - prompt - sent


async def test_a_completion_from_the_engine_streams_and_says_who_answered(
    team: tuple[LanguageClient, Recorder], engine: LlamaServer
) -> None:
    client, rec = team
    params = {"prompt": "def fibonacci(n):\n    ", "maxTokens": 16, "temperature": 0,
              "raw": True, "partialResultToken": "fib"}  # fmt: skip
    result = await call(client, "vibrant/complete", params)
    assert (result["engine"], result["modelId"], result["fallbackReason"]) == ("team", SERVED, None)
    assert "".join(p["text"] for p in rec.partials("fib")) == result["text"] != ""
    assert result["usage"]["completionTokens"] == 16 and result["usage"]["promptTokens"] > 0
    # What the editor calling llama-server itself gets (greedy: the same text).
    asked = {"prompt": params["prompt"], "n_predict": 16, "temperature": 0}
    direct = await asyncio.to_thread(
        lambda: httpx.post(f"{engine.url}/completion", headers=engine.headers(), json=asked,
                           timeout=60).json()
    )  # fmt: skip
    assert result["text"] == direct["content"]
    status = await call(client, "vibrant/status")
    info = status["engine"]
    assert (info["name"], info["kind"], info["model"], info["healthy"], info["slots"]) == (
        "team", "llama-server", SERVED, True, 2)  # fmt: skip
    assert status["state"] == "unloaded"  # the local model was never loaded
    listed = await call(client, "vibrant/listModels")
    assert listed["engine"]["healthy"] is True and listed["engine"]["model"] == SERVED


async def test_the_completion_pipeline_applies_to_what_the_engine_returns(
    team: tuple[LanguageClient, Recorder],
) -> None:
    client, _ = team
    prompt = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a"
    suffix = " if a else 0\n"
    base = {"prompt": prompt, "suffix": suffix, "maxTokens": 48, "temperature": 0,
            "languageId": "python"}  # fmt: skip
    raw = await call(client, "vibrant/complete", {**base, "raw": True})
    piped = await call(client, "vibrant/complete", {**base, "partialResultToken": "p"})
    # In the middle of a line: one line at most, and the rest of the line not doubled.
    assert "\n" in raw["text"] and "\n" not in piped["text"], (raw, piped)
    cursor = cursor_at(prompt, suffix, language_for("python", None), stops=[], time_budget_ms=0)
    assert piped["text"] == apply(cursor, raw["text"])[0]
    assert piped["stopReason"] not in ("length", "end") and piped["engine"] == "team"


async def test_cancel_request_stops_the_engine(
    team: tuple[LanguageClient, Recorder], engine: LlamaServer
) -> None:
    client, rec = team
    fut = send(client, {**LONG, "partialResultToken": "c"}, "cancel-me")
    await first_piece(rec, "c")
    (slot,) = [s["id"] for s in await asyncio.to_thread(engine.slots) if s["is_processing"]]
    since = time.perf_counter()
    client.protocol.notify("$/cancelRequest", types.CancelParams(id="cancel-me"))
    sent = len(rec.partials("c"))
    with pytest.raises(JsonRpcException) as err:
        await asyncio.wait_for(fut, 10)
    answered = time.perf_counter() - since
    assert err.value.code == -32800
    idle = await idle_after(engine, since, slot)
    more = await went_on(engine, slot, sent)
    print(f"$/cancelRequest: answered -32800 in {answered * 1000:.0f} ms, engine idle "
          f"{idle * 1000:.0f} ms after, {more} token(s) past what the editor had")  # fmt: skip
    assert more <= 5


async def test_a_superseding_request_stops_the_engine(
    team: tuple[LanguageClient, Recorder], engine: LlamaServer
) -> None:
    client, rec = team
    old = send(client, {**LONG, "partialResultToken": "old"}, "old")
    await first_piece(rec, "old")
    (slot,) = [s["id"] for s in await asyncio.to_thread(engine.slots) if s["is_processing"]]
    since = time.perf_counter()
    new = send(client, {"prompt": "import os\n", "maxTokens": 4, "temperature": 0}, "new")
    sent = len(rec.partials("old"))
    with pytest.raises(JsonRpcException) as err:
        await asyncio.wait_for(old, 10)
    assert err.value.code == -32800
    idle = await idle_after(engine, since, slot)
    more = await went_on(engine, slot, sent)
    print(f"superseded: its engine slot idle {idle * 1000:.0f} ms after the new request, "
          f"{more} token(s) past what the editor had")  # fmt: skip
    assert more <= 5
    assert plain(await asyncio.wait_for(new, 30))["engine"] == "team"


async def test_a_wrong_key_is_refused_and_never_shown(engine: LlamaServer, tmp_path: Path) -> None:
    wrong = "wrong-key-" + "7" * 16
    async with laptop(tmp_path, engines(engine.url), key=wrong) as (client, _):
        code, message, data = await call_error(client, "vibrant/complete", {"prompt": "x"})
        assert data["kind"] == "EngineKeyRefused" and code == -31022
        assert message == (
            f"The engine 'team' at 127.0.0.1:{engine.port} refused the key (401: Invalid API Key)."
        )
        assert data["hint"] == "Check the key in TEAM_KEY (the [engines.team] setting names it)."
        status = await call(client, "vibrant/status")
        assert status["engine"]["error"] == message
        # The editor shows what to do from the server's own words, not by matching them.
        assert (status["engine"]["errorKind"], status["engine"]["hint"]) == (
            "EngineKeyRefused", data["hint"])  # fmt: skip
        seen = [message, repr(data), repr(status)] + [m.message for m in client.log_messages]
        assert not [s for s in seen if wrong in s]


async def test_the_engine_killed_mid_stream_falls_back_to_the_local_model(tmp_path: Path) -> None:
    with running(gemma_path(), tmp_path / "box", alias=SERVED) as box:
        async with laptop(tmp_path / "laptop", engines(box.url, fallback="local")) as (client, rec):
            fut = send(client, {**LONG, "maxTokens": 40, "partialResultToken": "k"}, "k")
            await first_piece(rec, "k")
            box.kill()
            result = plain(await asyncio.wait_for(fut, 120))
            pieces = "".join(p["text"] for p in rec.partials("k"))
            # The editor's pieces are the start of the result; the local model wrote the rest.
            assert result["text"] == pieces and result["engine"] == "local"
            assert result["modelId"] == GEMMA
            assert result["fallbackReason"].startswith(
                f"The engine 'team' at 127.0.0.1:{box.port} stopped in the middle of an answer"
            ) and result["fallbackReason"].endswith("finished the completion it began.")
            # Down from the start: the local model answers, and says why.
            again = await call(
                client, "vibrant/complete", {"prompt": "import os\n", "maxTokens": 4}
            )
            assert again["engine"] == "local" and "can't be reached" in again["fallbackReason"]
            status = await call(client, "vibrant/status")
            assert status["engine"]["healthy"] is False and status["modelId"] == GEMMA


async def test_without_fallback_a_dead_engine_is_a_clear_error(tmp_path: Path) -> None:
    with running(gemma_path(), tmp_path / "box", alias=SERVED) as box:
        port = box.port
    async with laptop(tmp_path / "laptop", engines(f"http://127.0.0.1:{port}")) as (client, _):
        code, message, data = await call_error(client, "vibrant/complete", {"prompt": "x"})
        assert (code, data["kind"], data["engine"], data["address"]) == (
            -31021, "EngineUnreachable", "team", f"127.0.0.1:{port}")  # fmt: skip
        assert (
            message
            == f"The engine 'team' at 127.0.0.1:{port} can't be reached (connection refused)."
        )
        # The local model was not touched, and the cache is whole.
        assert (await call(client, "vibrant/status"))["state"] == "unloaded"
        listed = await call(client, "vibrant/listModels", {"scope": "cached"})
        assert [m["id"] for m in listed["models"]] == [GEMMA]
        assert listed["engine"]["healthy"] is False
        assert listed["engine"]["errorKind"] == "EngineUnreachable"
        assert listed["engine"]["hint"].startswith("Is it running, and is the url")
