"""The server and a cache written before the seed's ids became the ids (issue 10): a file
named after ``qwen2.5-coder-3b-q4_k_m`` loads as ``qwen2.5-coder-3b-q4``, asked for by
either name, and a ``model`` setting that names the old id still picks the model.

The tiny generated GGUF stands in for the 3B model's file: what is tested is how the
file is found, named and loaded, not Qwen's weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.support.gguf_fixtures import tiny_fim_path
from tests.support.helpers import tiny_model, write_registry
from tests.support.rpc_client import call, copy_model_file, server_env, start_server, stop_server
from vibrant_rpc.app import Vibrant
from vibrant_rpc.paths import Paths

pytestmark = pytest.mark.llama

OLD, NEW = "qwen2.5-coder-3b-q4_k_m", "qwen2.5-coder-3b-q4"
COMPLETE = {"prompt": "def add(a, b):\n    ", "maxTokens": 4, "temperature": 0}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def old_file(paths: Paths) -> Path:
    """The 3B model's file under the name an earlier vibrant gave it."""
    return copy_model_file(paths.home.parent, f"{OLD}.gguf", tiny_fim_path())


async def test_a_file_named_after_the_old_id_loads_by_either_name(
    paths: Paths, old_file: Path
) -> None:
    digest = sha256(old_file)
    client, _ = await start_server(server_env(paths.home.parent), {"keepAliveS": 0})
    try:
        models = {m["id"]: m for m in (await call(client, "vibrant/listModels"))["models"]}
        assert OLD not in models and models[NEW]["cached"] is True
        result = await call(client, "vibrant/complete", {**COMPLETE, "modelId": OLD})
        assert result["modelId"] == NEW and result["usage"]["completionTokens"] > 0
        status = await call(client, "vibrant/status")
        assert status["state"] == "ready" and status["modelId"] == NEW
        again = await call(client, "vibrant/complete", {**COMPLETE, "modelId": NEW})
        assert again["modelId"] == NEW and again["timings"]["loadMs"] == 0  # the same model
        info = await call(client, "vibrant/modelInfo", {"modelId": OLD})
        assert info["id"] == NEW and info["cached"] is True and info["useCount"] == 1  # one load
    finally:
        assert await stop_server(client) == 0
    # The cache is whole: the file unchanged under its old name, recorded under the id.
    assert sha256(old_file) == digest
    manifest = json.loads(paths.manifest.read_text())["models"]
    assert list(manifest) == [NEW] and manifest[NEW]["files"][0]["path"] == old_file.name


@pytest.mark.parametrize("where", ["config.toml", "initializationOptions"])
async def test_a_model_setting_naming_the_old_id_picks_the_model(
    paths: Paths, old_file: Path, where: str
) -> None:
    # Another cached model, used last: without the setting, it is the one a request gets.
    write_registry(paths, [tiny_model("tiny-b", 50)])
    copy_model_file(paths.home.parent, "tiny-b.gguf", tiny_fim_path())
    Vibrant(paths).cache.touch("tiny-b")
    options: dict[str, object] = {"keepAliveS": 0}
    if where == "config.toml":
        paths.config.write_text(f'model = "{OLD}"\n')
    else:
        options["model"] = OLD
    client, _ = await start_server(server_env(paths.home.parent), options)
    try:
        result = await call(client, "vibrant/complete", COMPLETE)
        assert result["modelId"] == NEW
    finally:
        assert await stop_server(client) == 0
