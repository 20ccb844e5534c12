"""A long prompt costs what a short one does, through the real server with the real Gemma
3 270M: only the text that can reach the context is tokenized (inference.text_window).
Before, the whole prompt was tokenized first: 400 KB of code took 7-8 s on its own, 3.9 MB
got no answer in 400 s, and a completion sent meanwhile waited 6.7 s."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from pygls.exceptions import JsonRpcException
from pytest_lsp import LanguageClient

from tests.support.gguf_fixtures import GEMMA_SHA256, gemma_path
from tests.support.rpc_client import (
    call,
    home_env,
    model_entry,
    plain,
    serving,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.llama]

GEMMA = "gemma-270m"
# A small context keeps the prompt's evaluation short on a busy machine; the tokenizer's
# cost is the text's, whatever the context.
CONTEXT = 1024
SHORT = {"prompt": "def fibonacci(n):\n    ", "maxTokens": 8, "temperature": 0}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LanguageClient]:
    gemma = (model_entry(GEMMA, sha256=GEMMA_SHA256, recommended=True), gemma_path())
    env = home_env(tmp_path_factory.mktemp("long-prompt"), [gemma])
    async with serving(env, {"contextSize": CONTEXT, "keepAliveS": 0}) as (client, _):
        await call(client, "vibrant/loadModel", {"modelId": GEMMA})
        yield client


def code(size: int, seed: int) -> str:
    """``size`` characters of code, different for each seed (so no KV cache is reused)."""
    rng = random.Random(seed)
    lines: list[str] = []
    total = 0
    while total < size:
        line = f"v{seed}_{len(lines)} = compute({rng.randrange(10**6)}, x[{rng.randrange(99)}])\n"
        lines.append(line)
        total += len(line)
    return "".join(lines)[-size:]


def send(client: LanguageClient, params: dict[str, Any], msg_id: str) -> asyncio.Future[Any]:
    return asyncio.wrap_future(
        client.protocol.send_request("vibrant/complete", params, msg_id=msg_id)
    )


SIZES = {"40 KB": 40_000, "400 KB": 400_000, "4 MB": 3_990_000}


async def test_a_long_prompt_is_answered_as_fast_as_a_short_one(client: LanguageClient) -> None:
    took: dict[str, float] = {}
    for seed, (name, size) in enumerate(SIZES.items()):
        params = {"prompt": code(size, seed), "suffix": "\n" + code(size, seed + 100),
                  "maxTokens": 8, "temperature": 0}  # fmt: skip
        start = time.perf_counter()
        result = plain(await asyncio.wait_for(send(client, params, f"long-{seed}"), 120))
        took[name] = time.perf_counter() - start
        print(f"{name} prompt and suffix: answered in {took[name]:.2f} s, "
              f"{result['usage']['promptTokens']} prompt tokens")  # fmt: skip
        assert CONTEXT - 64 < result["usage"]["promptTokens"] <= CONTEXT
    # The same tokens go to the model: the time is the prompt's evaluation, not its length.
    assert took["400 KB"] < 1.5 * took["40 KB"] + 1.0, took
    assert took["4 MB"] < 1.5 * took["40 KB"] + 2.0, took


async def test_a_long_prompt_is_superseded_as_fast_as_a_short_one(client: LanguageClient) -> None:
    for seed, (name, size) in enumerate(SIZES.items(), start=10):
        first = send(client, {"prompt": code(size, seed), "maxTokens": 16, "temperature": 0},
                     f"sup-{seed}")  # fmt: skip
        await asyncio.sleep(0.5)  # inside its prompt by now
        start = time.perf_counter()
        second = send(client, SHORT, f"sup-next-{seed}")
        with pytest.raises(JsonRpcException) as info:
            await asyncio.wait_for(first, 60)
        stopped = time.perf_counter() - start
        result = plain(await asyncio.wait_for(second, 60))
        answered = time.perf_counter() - start
        print(f"{name} prompt superseded: stopped {stopped * 1e3:.0f} ms and the new one "
              f"answered {answered:.2f} s after the new request")  # fmt: skip
        assert info.value.code == -32800
        assert result["text"].strip()
        # Before: 6.7 s for 400 KB (its tokenization could not be stopped).
        assert stopped < 1.0, f"{name}: {stopped:.2f} s"
