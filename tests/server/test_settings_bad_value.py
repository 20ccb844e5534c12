"""One wrongly typed setting drops only itself, with a warning naming where it came from
(issue 10, "Settings"): ``threads = "four"`` in config.toml never stops a CLI command,
and ``{"contextSize": 2048, "threads": "four"}`` from the editor keeps the context size.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lsprotocol import types
from pytest_lsp import LanguageClient

from tests.support.gguf_fixtures import tiny_fim_path
from tests.support.helpers import put_cached, tiny_model, write_registry
from tests.support.rpc_client import call, copy_model_file, server_env, start_server, stop_server
from vibrant_rpc.app import Vibrant
from vibrant_rpc.paths import Paths

TINY = "tiny-fim"
# One byte is one token for the tiny model: far more than a 2048-token context holds.
LONG_PROMPT = "".join(f"v{i} = {i}\n" for i in range(900))


async def warnings_shown(client: LanguageClient, needle: str) -> list[str]:
    """The warnings shown so far, once one containing ``needle`` arrived (they are sent
    right after ``initialize`` answers, so they may trail it)."""
    for _ in range(500):
        shown = [m.message for m in client.messages if m.type == types.MessageType.Warning]
        if any(needle in m for m in shown):
            return shown
        await asyncio.sleep(0.02)
    raise AssertionError(f"no warning with {needle!r}: {[m.message for m in client.messages]}")


def vibrant(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("vibrant", path=str(Path(sys.executable).parent))
    assert exe, "the console script is installed with the package"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def bad_config(paths: Paths) -> Path:
    write_registry(paths, [tiny_model("tiny-a", 100), tiny_model("tiny-b", 200)])
    app = Vibrant(paths)
    put_cached(app.cache, "tiny-a", 1000)
    put_cached(app.cache, "tiny-b", 2000)
    paths.config.write_text(
        'threads = "four"\ncontext_size = 2048\ncache_size_limit = "1GiB"\n'
        "download_retry_base_s = 0.01\n"
    )
    return paths.config


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("model", "list"), 0),
        (("model", "list", "--json"), 0),
        (("model", "list", "--cached"), 0),
        (("model", "info", "tiny-a"), 0),
        (("model", "info", "qwen2.5-coder-7b-q5", "--json"), 0),
        (("model", "select"), 0),
        (("model", "select", "--ram", "16GiB", "--json"), 0),
        (("model", "verify", "tiny-a"), 0),
        (("model", "cache"), 0),
        (("model", "cache", "--usage"), 0),
        (("model", "cache", "clean"), 0),
        (("model", "cache", "prune", "--max-size", "1GiB"), 0),
        (("model", "remove", "tiny-b"), 0),
        (("model", "remove", "qwen2.5-coder-3b-q4"), 1),  # not downloaded
        (("model", "update", "qwen2.5-coder-3b-q4", "--check"), 1),  # not downloaded
        (("model", "download", "qwen2.5-coder-3b-q4"), 1),
    ],
)
def test_every_cli_command_works_and_warns_naming_the_file_and_setting(
    bad_config: Path, args: tuple[str, ...], code: int
) -> None:
    r = vibrant(*args)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert "Invalid setting" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert any(str(bad_config) in w and "'threads'" in w and "'four'" in w for w in warnings), (
        r.stderr
    )
    if "--json" in args:
        json.loads(r.stdout)  # warnings stay off stdout


def test_update_check_with_the_hub_unreachable_is_an_error_not_a_traceback(
    bad_config: Path,
) -> None:
    r = vibrant("model", "update", "--check")  # the Hub is a refused port in tests
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "127.0.0.1:9" in r.stderr


def test_the_other_settings_in_the_file_hold(bad_config: Path) -> None:
    r = vibrant("model", "cache", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stats"]["max_cache_bytes"] == 2**30


@pytest.mark.llama
async def test_the_server_keeps_the_good_editor_options(paths: Paths) -> None:
    write_registry(paths, [tiny_model(TINY, 50)])
    copy_model_file(paths.home.parent, f"{TINY}.gguf", tiny_fim_path())
    options = {"contextSize": 2048, "threads": "four", "keepAliveS": 0}
    client, _ = await start_server(server_env(paths.home.parent), options)
    try:
        shown = await warnings_shown(client, "'threads'")
        assert any("editor settings" in m and "'four'" in m for m in shown), shown
        assert not any("contextSize" in m for m in shown)
        result = await call(
            client,
            "vibrant/complete",
            {"prompt": LONG_PROMPT, "maxTokens": 4, "temperature": 0, "modelId": TINY},
        )
        # The prompt was cut to fit 2048 tokens: contextSize held (the default is 4096).
        assert 1024 < result["usage"]["promptTokens"] <= 2048, result["usage"]
        logs = [m.message for m in client.log_messages]
        assert any(f"loaded {TINY}" in m and "context 2048" in m for m in logs), logs
    finally:
        assert await stop_server(client) == 0


@pytest.mark.llama
async def test_the_server_keeps_the_good_settings_of_config_toml(paths: Paths) -> None:
    write_registry(paths, [tiny_model(TINY, 50)])
    copy_model_file(paths.home.parent, f"{TINY}.gguf", tiny_fim_path())
    paths.config.write_text('threads = "four"\ncontext_size = 2048\n')
    client, _ = await start_server(server_env(paths.home.parent), {"keepAliveS": 0})
    try:
        shown = await warnings_shown(client, "'threads'")
        assert any(str(paths.config) in m and "'threads'" in m for m in shown), shown
        result = await call(
            client,
            "vibrant/complete",
            {"prompt": LONG_PROMPT, "maxTokens": 4, "temperature": 0, "modelId": TINY},
        )
        assert 1024 < result["usage"]["promptTokens"] <= 2048, result["usage"]
    finally:
        assert await stop_server(client) == 0
