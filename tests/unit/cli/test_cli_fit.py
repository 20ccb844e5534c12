"""``vibrant model fit`` and ``vibrant model info``'s memory lines: the real console script
in a subprocess, a real Gemma file in the cache, the real Hub stub on loopback.

conftest points VIBRANT_HOME at a temporary folder and HF_ENDPOINT at a refused port.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gguf_fixtures import GEMMA_SHA256, gemma_path
from tests.support.helpers import write_registry
from tests.support.hub_stub import HubStub
from tests.support.rpc_client import model_entry, put_model_file
from vibrant_rpc.app import Vibrant
from vibrant_rpc.fit.gpu import detect_gpus
from vibrant_rpc.fit.ram import read_memory
from vibrant_rpc.gguf.header import read_header
from vibrant_rpc.paths import Paths

GEMMA = "gemma-270m"
QWEN = "qwen2.5-coder-7b-q5"
HUB_REPO = "test/gemma-on-the-hub"


def vibrant(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("vibrant", path=str(Path(sys.executable).parent))
    assert exe, "the console script is installed with the package"
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )


def ok_json(*args: str, **env: str) -> dict[str, Any]:
    r = vibrant(*args, "--json", **env)
    assert r.returncode == 0, r.stderr
    data: dict[str, Any] = json.loads(r.stdout)
    return data


def words(text: str) -> str:
    """The output with its table wrapping undone."""
    return " ".join(text.split())


@pytest.fixture
def gemma_cached(paths: Paths) -> Paths:
    write_registry(paths, [model_entry(GEMMA, sha256=GEMMA_SHA256, ram_required_mb=300)])
    put_model_file(paths.home.parent, GEMMA, gemma_path())
    return paths


def test_fit_of_a_cached_model_reads_its_file(gemma_cached: Paths) -> None:
    r = vibrant("model", "fit", GEMMA)
    assert r.returncode == 0, r.stderr
    out = words(r.stdout)
    assert "model gemma-270m (gemma-270m)" in out
    assert "context 4,096 tokens" in out  # the setting's default
    assert "weights 235.2 MiB, mapped from the file" in out  # the file's tensors
    assert "KV cache 72.0 MiB" in out  # 18 layers × 256 × 2 × f16 × 4096
    assert "estimated from the downloaded file's GGUF header" in out
    assert "GPU layers 0" in out and "less 2 GiB for the system" in out
    assert (
        "gemma-270m fits: gemma-270m at 4096 tokens: 0.23 GiB weights + 0.07 GiB KV cache "
        "+ 0.09 GiB buffers = 0.39 GiB; " in out
    ), out
    data = ok_json("model", "fit", GEMMA)
    assert data["model_id"] == GEMMA and data["fits"] is True
    assert data["header_source"] == "file" and data["note"] is None
    assert data["context"] == 4096 and data["gpu_layers"] == 0
    assert data["estimate"]["weights_bytes"] == read_header(gemma_path()).weight_bytes
    assert data["estimate"]["kv_cache_bytes"] == 18 * 256 * 2 * 2 * 4096
    assert data["verdict"].startswith("fits: ") and data["breakdown"] in data["verdict"]
    assert data["usable_ram_bytes"] == data["total_ram_bytes"] - 2 * 2**30
    assert data["ram_needed_bytes"] == data["estimate"]["cpu_bytes"]


def test_context_auto_is_the_largest_that_fits_here(gemma_cached: Paths) -> None:
    data = ok_json("model", "fit", GEMMA, "--context", "auto")
    app = Vibrant(gemma_cached)
    here = app.fit(GEMMA, app.load_request(context_size="auto"), fetch=False)
    assert data["context"] == here.context and data["fits"] == here.fits
    assert data["context"] % 256 == 0 and 2048 <= data["context"] <= 32768
    r = vibrant("model", "fit", GEMMA, "--context", "auto")
    assert f"context {here.context:,} tokens" in words(r.stdout)
    own = ok_json("model", "fit", GEMMA, "--context", "0")
    assert own["context"] == 32768 and own["estimate"]["kv_cache_bytes"] == 18 * 256 * 4 * 32768


def test_gpu_layers_auto_without_a_gpu(gemma_cached: Paths) -> None:
    if detect_gpus(read_memory()):
        pytest.skip("this machine has a GPU")
    data = ok_json("model", "fit", GEMMA, "--gpu-layers", "auto")
    assert data["gpu_layers"] == 0 and data["estimate"]["gpu_bytes"] == 0
    assert data["gpu"]["reason"] == "no GPU: every layer runs on the CPU"
    r = vibrant("model", "fit", GEMMA, "--gpu-layers", "auto")
    assert "GPU layers 0 (no GPU: every layer runs on the CPU)" in words(r.stdout)


def test_a_model_not_cached_is_estimated_from_the_registry_and_says_why() -> None:
    r = vibrant("model", "fit", QWEN)
    assert r.returncode == 0, r.stderr
    out = words(r.stdout)
    assert "model qwen2.5-coder-7b-q5 (7B Q5_K_M)" in out
    # conftest's HF_ENDPOINT refuses the connection
    assert "estimated from the Hub was unreachable (ConnectError" in out, out
    assert "): estimated from the registry's architecture numbers" in out, out
    assert "qwen2.5-coder-7b-q5 fits: 7B Q5_K_M at 4096 tokens: 5.3 GiB weights" in out or (
        "qwen2.5-coder-7b-q5 does not fit: 7B Q5_K_M at 4096 tokens: 5.3 GiB weights" in out
    )
    data = ok_json("model", "fit", QWEN)
    assert data["header_source"] == "registry"
    assert data["note"].startswith("the Hub was unreachable (ConnectError"), data["note"]
    offline = ok_json("model", "fit", QWEN, HF_HUB_OFFLINE="1")
    assert offline["header_source"] == "registry"
    assert offline["note"] == (
        "offline (HF_HUB_OFFLINE is set): estimated from the registry's architecture numbers"
    )
    # the same numbers, whatever the reason
    assert offline["estimate"] == data["estimate"]
    r = vibrant("model", "fit", QWEN, HF_HUB_OFFLINE="1")
    assert "estimated from offline (HF_HUB_OFFLINE is set): estimated from" in words(r.stdout)


def test_fit_without_an_id_is_this_machines_model() -> None:
    chosen = ok_json("model", "select")["model_id"]
    assert ok_json("model", "fit")["model_id"] == chosen


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [
        ("--context", "abc", "argument --context: 'abc' is not a number or 'auto'"),
        ("--gpu-layers", "-2", "argument --gpu-layers: -2 is below -1"),
    ],
)
def test_a_bad_option_is_usage_exit_2(flag: str, value: str, said: str) -> None:
    r = vibrant("model", "fit", flag, value)
    assert r.returncode == 2 and "usage: vibrant model fit" in r.stderr
    assert said in r.stderr and r.stdout == ""


def tree(folder: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every file under ``folder``: size, modification time, and a small file's bytes."""
    return {
        str(p.relative_to(folder)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            p.read_bytes() if p.stat().st_size < 1_000_000 else None,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_an_unknown_model_exits_1_and_changes_nothing(gemma_cached: Paths) -> None:
    assert vibrant("model", "fit", GEMMA).returncode == 0  # the file adopted, its header kept
    before = tree(gemma_cached.models)
    assert "manifest.json" in before and f"{GEMMA}.gguf" in before
    r = vibrant("model", "fit", "qwen2.5-coder-7b")
    assert r.returncode == 1 and r.stdout == ""
    assert "error: Unknown model 'qwen2.5-coder-7b'" in r.stderr
    assert "Did you mean 'qwen2.5-coder-7b-q5'" in r.stderr
    assert "Traceback" not in r.stderr
    assert tree(gemma_cached.models) == before


def test_model_info_shows_the_memory_it_needs(gemma_cached: Paths) -> None:
    r = vibrant("model", "info", GEMMA)
    assert r.returncode == 0, r.stderr
    out = words(r.stdout)
    assert (
        "memory gemma-270m at 4096 tokens: 0.23 GiB weights + 0.07 GiB KV cache + "
        "0.09 GiB buffers = 0.39 GiB" in out
    ), out
    assert "here fits: needs 400.7 MiB of RAM, " in out
    assert "estimated from the downloaded file's GGUF header" in out
    data = ok_json("model", "info", GEMMA)
    assert data["fit"]["header_source"] == "file" and data["fit"]["context"] == 4096


@pytest.fixture
def hub(paths: Paths) -> Iterator[HubStub]:
    with HubStub() as stub:
        stub.add_repo(HUB_REPO, {"gemma.gguf": gemma_path()})
        write_registry(paths, [model_entry("gemma-hub", "gemma.gguf", hf_repo=HUB_REPO)])
        yield stub


@pytest.mark.hub
def test_a_model_not_cached_is_read_from_the_hub_then_kept(paths: Paths, hub: HubStub) -> None:
    endpoint = hub.endpoint
    data = ok_json("model", "fit", "gemma-hub", HF_ENDPOINT=endpoint)
    assert data["header_source"] == "hub" and data["note"] is None
    assert data["estimate"]["weights_bytes"] == read_header(gemma_path()).weight_bytes
    assert hub.requests, "the Hub was asked"
    kept = paths.models / ".headers" / "gemma-hub.json"
    assert kept.is_file()
    assert not (paths.models / "gemma.gguf").exists()  # the header only, not the file
    # The Hub gone: the header kept in models/.headers answers, with the same numbers.
    hub.stop()
    again = ok_json("model", "fit", "gemma-hub", HF_ENDPOINT=endpoint)
    assert again["header_source"] == "hub" and again["estimate"] == data["estimate"]
    r = vibrant("model", "fit", "gemma-hub", HF_ENDPOINT=endpoint)
    assert r.returncode == 0, r.stderr
    assert (
        "estimated from the GGUF header on the Hub (read by Range, kept in models/.headers)"
        in words(r.stdout)
    )
