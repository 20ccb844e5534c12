"""A read-only VIBRANT_HOME (a shared model folder, mounted read-only): list, info, fit,
select, verify and completions from the cached models work, through the CLI and the
server; what must write (download, import, remove, prune, clean) says the folder is
read-only, naming it; no traceback, no -32603, and the cache is left exactly as it was.

The folder is made read-only by a real read-only bind mount, private to the command: each
command runs under ``unshare -rm`` (a mount namespace of its own), where the home is bound
onto itself and remounted ``ro``. As root, permissions alone can't make a folder
read-only (root writes through them); the mount can, and it vanishes with the command.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import rpc_client
from tests.support.gguf_fixtures import GEMMA_SHA256, gemma_path, tiny_fim_path
from tests.support.rpc_client import (
    call,
    call_error,
    home_env,
    model_entry,
    server_env,
    serving,
)

GEMMA, TINY, ABSENT = "gemma-270m", "tiny-fim", "absent"
# sh -c SCRIPT HOME CMD...: $0 is the home, "$@" the command
BIND_READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
READ_ONLY_MOUNT = ["unshare", "-rm", "sh", "-c", BIND_READ_ONLY]


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*READ_ONLY_MOUNT, "/tmp", "true"], capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _can_mount(), reason="no private mount namespace here (unshare -rm) to mount read-only"
)


def read_only(home: Path, *cmd: str) -> list[str]:
    return [*READ_ONLY_MOUNT, str(home), *cmd]


def state_of(models: Path) -> dict[str, str]:
    """Every file under the models folder, by its SHA-256: the cache, to the byte."""
    return {
        str(p.relative_to(models)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(models.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A home with two cached models (hashed once, while it could be written) and one
    that isn't downloaded."""
    root = tmp_path / "shared"
    env = home_env(
        root,
        [
            (
                model_entry(GEMMA, sha256=GEMMA_SHA256, ram_required_mb=300, recommended=True),
                gemma_path(),
            ),
            (model_entry(TINY, ram_required_mb=50), tiny_fim_path()),
            (model_entry(ABSENT, ram_required_mb=50), None),
        ],
        registry=root / ".vibrant" / "registry.json",
    )
    exe = str(Path(sys.executable).parent / "vibrant")
    for args in (["list"], ["verify", GEMMA], ["verify", TINY]):
        subprocess.run([exe, "model", *args], env=env, check=True, capture_output=True)
    yield root / ".vibrant"


def test_the_cli_reads_a_read_only_home_and_refuses_to_write_it(home: Path) -> None:
    env = server_env(home.parent, home / "registry.json")
    exe = str(Path(sys.executable).parent / "vibrant")
    models = home / "models"
    before = state_of(models)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            read_only(home, exe, "model", *args), env=env, capture_output=True, text=True
        )
        print(f"$ vibrant model {' '.join(args)}  -> exit {r.returncode}\n{r.stdout}{r.stderr}")
        assert "Traceback" not in r.stderr
        return r

    for args in (["list"], ["info", GEMMA], ["fit", GEMMA], ["select"], ["cache"]):
        r = run(*args)
        assert r.returncode == 0, r.stderr
    assert GEMMA in run("list", "--cached").stdout
    r = run("verify", GEMMA)
    assert r.returncode == 0 and f"{GEMMA}: OK (sha256:{GEMMA_SHA256})" in r.stdout
    for args, doing in (
        (["download", ABSENT], f"download {ABSENT}"),
        (["import", str(tiny_fim_path()), "--model", ABSENT], f"import {ABSENT}"),
        (["remove", TINY], f"remove {TINY}"),
        (["cache", "prune", "--max-size", "1B"], "prune models"),
        (["cache", "clean"], "clean the cache"),
    ):
        r = run(*args)
        said = " ".join(r.stderr.split())
        assert r.returncode == 1
        assert f"error: The model folder {models} is read-only" in said
        assert f"vibrant can't {doing} there" in said
    assert state_of(models) == before  # nothing written, nothing removed


@pytest.mark.asyncio
async def test_the_server_completes_from_a_read_only_home(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = home / "models"
    before = state_of(models)
    monkeypatch.setattr(rpc_client, "SERVER_CMD", read_only(home, *rpc_client.SERVER_CMD))
    env = server_env(home.parent, home / "registry.json")
    async with serving(env, exit_code=None) as (client, _):
        listed = await call(client, "vibrant/listModels", {"scope": "cached"})
        assert sorted(m["id"] for m in listed["models"]) == [GEMMA, TINY]
        info = await call(client, "vibrant/modelInfo", {"modelId": GEMMA})
        assert info["cached"] is True
        fit = await call(client, "vibrant/fitModel", {"modelId": GEMMA})
        assert fit["fits"] is True and fit["headerSource"] == "file"
        result = await call(
            client,
            "vibrant/complete",
            {"prompt": "def fibonacci(n):", "maxTokens": 8, "temperature": 0, "modelId": GEMMA},
        )
        assert result["modelId"] == GEMMA and result["text"].strip()
        for method, params, doing in (
            ("vibrant/downloadModel", {"modelId": ABSENT}, f"download {ABSENT}"),
            ("vibrant/removeModel", {"modelId": TINY}, f"remove {TINY}"),
            ("vibrant/pruneCache", {"maxBytes": 1}, "prune models"),
        ):
            code, message, data = await call_error(client, method, params)
            print(method, code, message, data)
            assert code == -31000 and data["kind"] == "VibrantError" and data["readOnly"] is True
            assert message.startswith(f"The model folder {models} is read-only")
            assert f"vibrant can't {doing} there" in message
        status = await call(client, "vibrant/status")
        assert status["state"] == "ready" and status["modelId"] == GEMMA
    assert state_of(models) == before
