"""Completions through the real server process with the real Gemma 3 270M model, and FIM
with the tiny generated GGUF that has Qwen's FIM tokens.

One server for the module, so Gemma loads once: the tests run in file order and
share it (Gemma first, then the tiny model).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import LanguageClient

from tests.support.gguf_fixtures import GEMMA_SHA256, gemma_path, tiny_fim_path
from tests.support.rpc_client import (
    Recorder,
    call,
    call_error,
    home_env,
    model_entry,
    plain,
    serving,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.llama]

GEMMA = "gemma-270m"
TINY = "tiny-fim"
PROMPT = "def fibonacci(n):\n    "


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[LanguageClient, Recorder]]:
    env = home_env(
        tmp_path_factory.mktemp("complete"),
        [
            (model_entry(GEMMA, sha256=GEMMA_SHA256, recommended=True), gemma_path()),
            (model_entry(TINY, ram_required_mb=50), tiny_fim_path()),
        ],
    )
    # The pipeline's time budget ends a completion at a line end once spent, so on a busy
    # machine the same request could end a line earlier: these tests compare texts
    # across requests, and the budget has tests of its own.
    options = {"contextSize": 2048, "keepAliveS": 0, "completionTimeBudgetMs": 600_000}
    async with serving(env, options) as server:
        yield server


def check_usage(result: dict[str, Any], max_tokens: int) -> None:
    usage = result["usage"]
    assert usage["promptTokens"] > 0
    assert 0 < usage["completionTokens"] <= max_tokens
    assert result["finishReason"] in ("stop", "length")
    assert result["timings"]["totalMs"] >= result["timings"]["loadMs"] >= 0


async def test_lazy_load_and_complete(server: tuple[LanguageClient, Recorder]) -> None:
    client, rec = server
    assert (await call(client, "vibrant/status"))["state"] == "unloaded"
    result = await call(
        client, "vibrant/complete", {"prompt": PROMPT, "maxTokens": 24, "temperature": 0}
    )
    assert result["modelId"] == GEMMA and result["fim"] is False
    assert result["text"].strip(), result
    check_usage(result, 24)
    assert result["timings"]["loadMs"] > 0  # this request loaded the model
    states = [(e["modelId"], e["state"]) for e in rec.of("vibrant/modelStateChanged")]
    assert states == [(GEMMA, "loading"), (GEMMA, "ready")]
    # The load was reported on a token the server created (the client supports that).
    progress = [e for e in rec.of(types.PROGRESS) if str(e["token"]).startswith("vibrant-")]
    assert progress[0]["kind"] == "begin" and progress[-1]["kind"] == "end"
    status = await call(client, "vibrant/status")
    assert status["state"] == "ready" and status["modelId"] == GEMMA
    assert status["loadedAt"] and status["lastUsed"] and status["busy"] is False
    info = await call(client, "vibrant/modelInfo", {"modelId": GEMMA})
    assert info["loaded"] is True and info["useCount"] == 1 and info["lastUsed"]


async def test_streamed_completion(server: tuple[LanguageClient, Recorder]) -> None:
    client, rec = server
    result = await call(
        client,
        "vibrant/complete",
        {"prompt": PROMPT, "maxTokens": 16, "temperature": 0, "partialResultToken": "s1"},
    )
    pieces = [p["text"] for p in rec.partials("s1")]
    assert len(pieces) > 1 and "".join(pieces) == result["text"]
    assert result["timings"]["loadMs"] == 0  # loaded already
    check_usage(result, 16)
    # Greedy decoding: streamed or not, the same text.
    again = await call(
        client, "vibrant/complete", {"prompt": PROMPT, "maxTokens": 16, "temperature": 0}
    )
    assert again["text"] == result["text"]


async def test_suffix_on_a_model_without_fim_completes_the_prefix(
    server: tuple[LanguageClient, Recorder],
) -> None:
    client, _ = server
    params = {"prompt": PROMPT, "maxTokens": 12, "temperature": 0}
    plain_result = await call(client, "vibrant/complete", params)
    with_suffix = await call(
        client, "vibrant/complete", {**params, "suffix": "\n\nprint(fibonacci(10))\n"}
    )
    assert with_suffix["fim"] is False
    # The suffix was dropped, not fed as garbage: the same text as without it.
    assert with_suffix["text"] == plain_result["text"]


async def test_load_model_when_loaded_is_instant(server: tuple[LanguageClient, Recorder]) -> None:
    client, _ = server
    result = await call(client, "vibrant/loadModel", {"modelId": GEMMA})
    assert result["modelId"] == GEMMA and result["loadMs"] == 0 and result["supportsFim"] is False


async def test_cancel_a_completion(server: tuple[LanguageClient, Recorder]) -> None:
    client, rec = server
    # Greedy counting never reaches an end-of-text: it runs until cancelled.
    params = {"prompt": "1, 2, 3, 4, 5,", "maxTokens": 1500, "temperature": 0,
              "partialResultToken": "c1"}  # fmt: skip
    fut = client.protocol.send_request("vibrant/complete", params, msg_id="cancel-me")
    await rec.wait_for("$/progress:c1", timeout=30)
    # Status while a completion runs: answered at once, busy.
    latencies = []
    for _ in range(5):
        t0 = time.perf_counter()
        status = await call(client, "vibrant/status")
        latencies.append(time.perf_counter() - t0)
        assert status["busy"] is True
    assert statistics.median(latencies) < 0.05, latencies
    before = len(rec.partials("c1"))
    t0 = time.monotonic()
    client.protocol.notify("$/cancelRequest", types.CancelParams(id="cancel-me"))
    with pytest.raises(JsonRpcException) as info:
        await asyncio.wait_for(asyncio.wrap_future(fut), 10)
    assert info.value.code == -32800
    assert time.monotonic() - t0 < 2
    await asyncio.sleep(0.3)
    assert len(rec.partials("c1")) - before < 10  # stopped within a few tokens
    assert (await call(client, "vibrant/status"))["busy"] is False


async def test_a_second_completion_supersedes_the_first(
    server: tuple[LanguageClient, Recorder],
) -> None:
    client, _ = server
    params = {"prompt": PROMPT, "maxTokens": 8, "temperature": 0}
    a, b = await asyncio.gather(
        call_error(client, "vibrant/complete", {**params, "maxTokens": 200}),
        call(client, "vibrant/complete", params),
    )
    assert a[0] == -32800 and a[2]["kind"] == "Cancelled"  # tests/server/test_server_superseded.py
    again = await call(client, "vibrant/complete", params)
    assert again["text"] == b["text"]  # a shared model, no interleaving


async def test_fim_on_a_model_with_fim_tokens(server: tuple[LanguageClient, Recorder]) -> None:
    client, rec = server
    result = await call(
        client,
        "vibrant/complete",
        {"prompt": "abc", "suffix": "xyz", "modelId": TINY, "maxTokens": 5, "temperature": 0},
    )
    # The tiny model writes "a" after a special token and the next letter after a letter:
    # FIM ends the prompt with <|fim_middle|>, so the answer starts over at "a".
    assert result["fim"] is True and result["modelId"] == TINY
    assert result["text"] == "abcde"
    assert result["usage"]["completionTokens"] == 5 and result["finishReason"] == "length"
    # Switching models unloaded Gemma first.
    states = [(e["modelId"], e["state"]) for e in rec.of("vibrant/modelStateChanged")]
    assert states[-3:] == [(GEMMA, "unloaded"), (TINY, "loading"), (TINY, "ready")]
    prefix_only = await call(
        client, "vibrant/complete", {"prompt": "abc", "maxTokens": 3, "temperature": 0}
    )
    assert prefix_only["fim"] is False and prefix_only["text"] == "def"


async def test_typing_through_a_suggestion_is_answered_without_the_model(
    server: tuple[LanguageClient, Recorder],
) -> None:
    client, rec = server
    ask = {"maxTokens": 6, "temperature": 0, "modelId": TINY}
    first = await call(client, "vibrant/complete", {"prompt": "abc", **ask})
    assert first["text"] == "defghi" and first["cached"] is False
    usage = first["usage"]
    assert usage["promptEvaluated"] + usage["promptCached"] == usage["promptTokens"]
    # The user types "de", the start of the suggestion: the rest comes at once.
    typed = await call(
        client, "vibrant/complete", {"prompt": "abcde", "partialResultToken": "tt", **ask}
    )
    assert typed["cached"] is True and typed["text"] == "fghi", typed
    assert typed["usage"]["promptEvaluated"] == 0 and typed["timings"]["totalMs"] < 30
    assert [e["text"] for e in rec.of("$/progress:tt")] == ["fghi"]
    # Something else typed: the model answers, reusing the cache of the shared start.
    other = await call(client, "vibrant/complete", {"prompt": "abcx", **ask})
    assert other["cached"] is False and other["usage"]["promptCached"] >= 1, other
    # Sampling (temperature > 0) never takes the shortcut.
    sampled = await call(client, "vibrant/complete", {**ask, "prompt": "abcxy", "temperature": 1})
    assert sampled["cached"] is False


async def test_greedy_completions_check_drafts_from_the_prompt(
    server: tuple[LanguageClient, Recorder],
) -> None:
    client, _ = server
    # The tiny model writes the next letter after a letter, as the prompt's first line
    # does: each draft looked up there is right, and a draft checked is kept. Drafts
    # don't pay on the tiny model (a 2-token step costs 2 of its 0.07 ms steps), so the
    # policy checks only one refused draft in 16: over 3 completions of 11 lookups at
    # least one. Each prompt is shorter than the last, so none is answered typed-through.
    ask = {"maxTokens": 12, "temperature": 0, "modelId": TINY}
    drafted = 0
    for prompt, text in [("abc", "defghijklmno"), ("ab", "cdefghijklmn"), ("a", "bcdefghijklm")]:
        result = await call(
            client, "vibrant/complete", {"prompt": f"abcdefghijklmnop\n{prompt}", **ask}
        )
        assert result["text"] == text and result["cached"] is False
        usage = result["usage"]
        assert usage["draftAccepted"] == usage["drafted"], usage
        drafted += usage["drafted"]
    assert drafted > 0
    sampled = await call(
        client, "vibrant/complete", {**ask, "prompt": "abcdefghijklmnop\nabd", "temperature": 1}
    )
    assert sampled["usage"]["drafted"] == 0  # only greedy completions draft


async def test_unload(server: tuple[LanguageClient, Recorder]) -> None:
    client, rec = server
    assert await call(client, "vibrant/unloadModel") == {"modelId": TINY, "unloaded": True}
    assert (await call(client, "vibrant/status"))["state"] == "unloaded"
    assert rec.of("vibrant/modelStateChanged")[-1]["state"] == "unloaded"
    listed = plain(await call(client, "vibrant/listModels", {"scope": "cached"}))
    assert not any(m["loaded"] for m in listed["models"])


async def test_complete_with_a_model_that_is_not_cached(
    server: tuple[LanguageClient, Recorder],
) -> None:
    client, _ = server
    code, _, data = await call_error(
        client, "vibrant/complete", {"prompt": "x", "modelId": "qwen2.5-coder-7b-q5"}
    )
    assert code == -31007 and data["kind"] == "NotCached" and data["downloadBytes"] > 0
