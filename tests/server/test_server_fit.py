"""Memory estimates through the real server: ``vibrant/fitModel``, ``modelInfo``'s fit,
the selection's reason, the plan in ``status``, and a load the estimate refuses falling
back to the next smaller cached model, on real GGUF files and the real llama.cpp.

"huge" is a tiny file (Qwen 2.5 Coder 7B's layers and heads, a small embedding) whose
header claims a 16M-token context: at its own context (``contextSize: 0``) its KV cache
alone is about 900 GiB, so no machine fits it, whatever this one has.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from pytest_lsp import LanguageClient

from tests.support.gguf_fixtures import GEMMA_SHA256, gemma_path, tiny_fim_path
from tests.support.qwen2_fixtures import QWEN_7B_LAYOUT, tiny_qwen2_path
from tests.support.rpc_client import (
    Recorder,
    call,
    call_error,
    home_env,
    model_entry,
    serving,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

GEMMA, HUGE, TINY = "gemma-270m", "huge", "tiny-fim"
HUGE_SPEC = msgspec.structs.replace(QWEN_7B_LAYOUT, name="16m-context", context_length=1 << 24)
# Gemma 3 270M: 18 layers, 1 KV head of 256, f16 K and V, every layer the whole context.
GEMMA_KV_32K = 18 * 1 * 256 * 2 * 2 * 32768


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[LanguageClient, Recorder, Path]]:
    home = tmp_path_factory.mktemp("fit")
    env = home_env(
        home,
        [
            (model_entry(HUGE, ram_required_mb=500, recommended=True), tiny_qwen2_path(HUGE_SPEC)),
            (
                model_entry(GEMMA, sha256=GEMMA_SHA256, ram_required_mb=300, recommended=True),
                gemma_path(),
            ),
            (model_entry(TINY, ram_required_mb=50), tiny_fim_path()),
        ],
    )
    # contextSize 0: every model at its own training context.
    async with serving(env, {"contextSize": 0, "keepAliveS": 0}, exit_code=None) as (client, rec):
        yield client, rec, home


def _manifest(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / ".vibrant" / "models" / "manifest.json").read_text())
    return data


async def test_fit_of_a_downloaded_model_reads_its_file(
    server: tuple[LanguageClient, Recorder, Path],
) -> None:
    client, _, _ = server
    fit = await call(client, "vibrant/fitModel", {"modelId": GEMMA})
    assert fit["headerSource"] == "file" and fit["note"] is None
    assert fit["context"] == 32768  # its own, as contextSize 0 asks
    assert fit["estimate"]["kvCacheBytes"] == GEMMA_KV_32K
    assert fit["fits"] is True and fit["verdict"].startswith("fits: ")
    assert re.fullmatch(
        r"gemma-270m at 32768 tokens: 0\.\d\d GiB weights \+ 0\.56 GiB KV cache \+ "
        r"0\.\d\d GiB buffers = \d\.\d+ GiB",
        fit["breakdown"],
    ), fit["breakdown"]
    # gpu_layers "auto" (the default): the plan says where the layers go; here, with no
    # GPU this llama.cpp can use, every one stays in RAM.
    assert fit["gpuLayers"] == 0 == fit["gpu"]["gpuLayers"]
    assert fit["gpu"]["reason"].startswith(("no GPU", "the installed llama.cpp is a CPU build"))
    # A context of its own, and "auto" GPU layers: this machine has no GPU.
    fit = await call(
        client, "vibrant/fitModel", {"modelId": GEMMA, "contextSize": 2048, "gpuLayers": "auto"}
    )
    assert fit["context"] == 2048 and fit["estimate"]["kvCacheBytes"] == GEMMA_KV_32K // 16
    assert fit["gpu"]["reason"] == "no GPU: every layer runs on the CPU"


async def test_a_model_that_cannot_fit_says_why_and_auto_finds_a_context(
    server: tuple[LanguageClient, Recorder, Path],
) -> None:
    client, _, _ = server
    fit = await call(client, "vibrant/fitModel", {"modelId": HUGE})
    assert fit["fits"] is False and fit["context"] == 1 << 24
    assert fit["verdict"].startswith("does not fit: ")
    assert 'A smaller context_size, or "auto", needs less' in fit["verdict"]
    assert fit["ramNeededBytes"] > fit["usableRamBytes"]
    auto = await call(client, "vibrant/fitModel", {"modelId": HUGE, "contextSize": "auto"})
    assert auto["fits"] is True
    assert 2048 <= auto["context"] < 1 << 24 and auto["context"] % 256 == 0
    assert auto["ramNeededBytes"] <= auto["usableRamBytes"]


async def test_bad_fit_params_are_refused_naming_the_field(
    server: tuple[LanguageClient, Recorder, Path],
) -> None:
    client, _, _ = server
    code, message, _ = await call_error(client, "vibrant/fitModel", {"contextSize": "big"})
    assert code == -32602 and "contextSize" in message
    code, message, data = await call_error(client, "vibrant/fitModel", {"modelId": "nope"})
    assert data["kind"] == "ModelNotFound"


async def test_model_info_and_select_carry_the_estimate(
    server: tuple[LanguageClient, Recorder, Path],
) -> None:
    client, _, _ = server
    info = await call(client, "vibrant/modelInfo", {"modelId": GEMMA})
    assert info["fit"]["headerSource"] == "file" and info["fit"]["context"] == 32768
    # Not downloaded, and the Hub is a refused port here: the registry's numbers, said so.
    info = await call(client, "vibrant/modelInfo", {"modelId": "qwen2.5-coder-7b-q5"})
    assert info["fit"]["headerSource"] == "registry"
    assert "registry's architecture numbers" in info["fit"]["note"]
    # huge never fits (the embedded Qwen models are in the running too).
    selection = await call(client, "vibrant/selectModel", {})
    assert HUGE not in selection["fits"] and GEMMA in selection["fits"]
    assert re.search(r"; chose .+ \(.+ at 32768 tokens: .+ GiB weights \+ ", selection["reason"])
    small = await call(client, "vibrant/selectModel", {"ramBytes": 4 * 2**30})
    assert small["modelId"] == GEMMA
    assert "gemma-270m at 32768 tokens:" in small["reason"]


@pytest.mark.llama
async def test_a_load_the_estimate_refuses_falls_back_to_a_smaller_model(
    server: tuple[LanguageClient, Recorder, Path],
) -> None:
    client, rec, home = server
    before = _manifest(home)
    loaded = await call(client, "vibrant/loadModel", {"modelId": HUGE})
    assert loaded["modelId"] == GEMMA
    assert loaded["reason"].startswith(f"{HUGE} failed to load ({HUGE} needs more memory")
    failed = await rec.wait_for(
        "vibrant/modelStateChanged", lambda e: e["state"] == "failed" and e["modelId"] == HUGE
    )
    assert (
        "does not fit" in failed["reason"]
        and f"next smaller cached model, {GEMMA}" in (failed["reason"])
    )
    status = await call(client, "vibrant/status")
    assert status["state"] == "ready" and status["modelId"] == GEMMA
    plan = status["plan"]
    assert plan["modelId"] == GEMMA and plan["context"] == 32768 and plan["gpuLayers"] == 0
    assert plan["headerSource"] == "file" and plan["fits"] is True
    # Nothing in the cache changed but the use of the model that loaded.
    after = _manifest(home)
    assert set(after["models"]) == set(before["models"])
    # The refusal came from the header alone: huge's file wasn't even hashed.
    for model_id in (HUGE, TINY):
        assert after["models"][model_id] == before["models"][model_id]
    assert (home / ".vibrant" / "models" / f"{HUGE}.gguf").is_file()


@pytest.mark.llama
async def test_the_same_model_loads_at_a_context_that_fits(
    server: tuple[LanguageClient, Recorder, Path],
) -> None:
    client, _, _ = server
    loaded = await call(
        client, "vibrant/loadModel", {"modelId": HUGE, "options": {"contextSize": 2048}}
    )
    assert loaded["modelId"] == HUGE and loaded["reason"] is None
    status = await call(client, "vibrant/status")
    assert status["modelId"] == HUGE and status["plan"]["context"] == 2048
    done = await call(client, "vibrant/complete", {"modelId": HUGE, "prompt": "x", "maxTokens": 2})
    assert done["modelId"] == HUGE
    await call(client, "vibrant/unloadModel")
    assert (await call(client, "vibrant/status"))["plan"] is None
