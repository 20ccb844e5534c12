"""A full disk, on a real small filesystem (a tmpfs mounted here, as root): the CLI and the
server answer with the DiskFull error (folder, bytes needed and free, what to do), never a
traceback or -32603; the partial download is kept and resumes; the cache stays whole."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.support.gguf_fixtures import tiny_fim_path
from tests.support.helpers import tiny_model, write_registry
from tests.support.hub_stub import HubStub
from tests.support.rpc_client import (
    call,
    call_error,
    model_entry,
    server_env,
    start_server,
    stop_server,
)
from tests.unit.download.test_download import MB, _cli, _config, blob, sha
from vibrant_rpc.cache.manifest import Manifest
from vibrant_rpc.cache.partials import read_state
from vibrant_rpc.paths import Paths

pytestmark = pytest.mark.hub

DISK_FULL_CODE = -31011


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"can't mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 120 MiB filesystem of its own: room for a small download plus vibrant's margin."""
    with mounted_tmpfs(tmp_path / "small", "120m") as mnt:
        yield mnt


def fill(disk: Path, name: str = "filler") -> Path:
    """Take every free byte of ``disk``; what is left is not enough even for state.json."""
    path = disk / name
    chunk = b"\0" * (1024 * 1024)
    with open(path, "ab", buffering=0) as f:
        for size in (len(chunk), 4096, 1):
            while True:
                try:
                    f.write(chunk[:size])
                except OSError as err:
                    assert err.errno == errno.ENOSPC
                    break
    assert shutil.disk_usage(disk).free < 4096
    return path


def env_for(paths: Paths, hub: HubStub) -> dict[str, str]:
    return {**os.environ, "VIBRANT_HOME": str(paths.home), "HF_ENDPOINT": hub.endpoint}


def cli(paths: Paths, hub: HubStub, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cli(*args), env=env_for(paths, hub), capture_output=True, text=True, timeout=120
    )


def manifest_of(paths: Paths) -> Manifest:
    """The manifest as it is on disk; decoding fails the test if it is torn."""
    return msgspec.json.decode(paths.manifest.read_bytes(), type=Manifest)


def assert_disk_full_message(text: str, folder: Path) -> None:
    assert "Traceback" not in text, text
    assert ("is full" in text or "Not enough disk space" in text) and str(folder) in text, text
    assert "need" in text and "is free" in text, text
    assert "vibrant model remove" in text, text  # what to do


def partials(paths: Paths, hub: HubStub) -> list[dict[str, Any]]:
    r = cli(paths, hub, "model", "cache", "--json")
    assert r.returncode == 0, r.stderr
    found: list[dict[str, Any]] = json.loads(r.stdout)["partials"]
    return found


def setup_cache(disk: Path, hub: HubStub, big: int) -> tuple[Paths, bytes, bytes]:
    """A cache on ``disk`` that holds model "b" already; model "a" (``big`` bytes) to fetch."""
    paths = Paths(disk / "home")
    data_a, data_b = blob(big, 1), blob(MB, 2)
    hub.add_repo("test/tiny", {"a.gguf": data_a, "b.gguf": data_b})
    write_registry(paths, [tiny_model("a"), tiny_model("b")])
    _config(paths, download_connections=1)
    r = cli(paths, hub, "model", "download", "b")
    assert r.returncode == 0, r.stderr
    return paths, data_a, data_b


def assert_b_intact(paths: Paths, data_b: bytes) -> None:
    entry = manifest_of(paths).models["b"]
    assert entry.checksum == f"sha256:{sha(data_b)}"
    assert (paths.models / "b.gguf").read_bytes() == data_b


@pytest.fixture
def hub() -> Iterator[HubStub]:
    with HubStub() as stub:
        yield stub


def test_disk_filling_during_a_download_keeps_the_partial_which_resumes(
    hub: HubStub, disk: Path
) -> None:
    paths, data_a, data_b = setup_cache(disk, hub, 16 * MB)
    hub.faults.throttle_bps = 4 * MB  # ~4 s: the disk fills while it runs
    proc = subprocess.Popen(
        _cli("model", "download", "a"),
        env=env_for(paths, hub),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    folder = paths.partial_dir("a")
    deadline = time.monotonic() + 60
    while (state := read_state(folder)) is None or state.downloaded_bytes < 2 * MB:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    filler = fill(disk)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert_disk_full_message(err, folder)
    assert "partial download is kept" in err
    # the partial is kept, its state readable, and the rest of the cache whole
    state = read_state(folder)
    assert state is not None and 0 < state.downloaded_bytes < len(data_a)
    assert [p["model_id"] for p in partials(paths, hub)] == ["a"]
    assert_b_intact(paths, data_b)
    assert "a" not in manifest_of(paths).models
    # space again: the download resumes where it stopped, and checks the whole file
    filler.unlink()
    hub.faults.throttle_bps = None
    hub.reset_stats()
    r = cli(paths, hub, "model", "download", "a")
    assert r.returncode == 0, r.stderr
    assert "verified sha256:" in r.stdout
    assert hub.bytes_served <= len(data_a) - state.downloaded_bytes
    assert (paths.models / "a.gguf").read_bytes() == data_a
    assert manifest_of(paths).models["a"].checksum == f"sha256:{sha(data_a)}"
    assert not folder.exists()
    assert_b_intact(paths, data_b)


def test_a_download_refused_for_space_leaves_nothing_behind(hub: HubStub, disk: Path) -> None:
    paths, _, data_b = setup_cache(disk, hub, 70 * MB)  # 70 MB plus the margin: no room
    hub.reset_stats()
    r = cli(paths, hub, "model", "download", "a")
    assert r.returncode == 1, r.stdout
    assert_disk_full_message(r.stderr, paths.models)
    assert not paths.partial_dir("a").exists()  # no state.json: no "0 %" partial listed
    assert partials(paths, hub) == []
    assert not [q for q in hub.requests if q.host == "cdn"]
    assert_b_intact(paths, data_b)


def test_a_download_on_a_disk_already_full(hub: HubStub, disk: Path) -> None:
    paths, _, data_b = setup_cache(disk, hub, 4 * MB)
    fill(disk)
    r = cli(paths, hub, "model", "download", "a")
    assert r.returncode == 1, r.stdout
    assert_disk_full_message(r.stderr, paths.models)
    assert not paths.partial_dir("a").exists()
    assert_b_intact(paths, data_b)


# -- the server ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_server_download_and_remove_of_a_partial_on_a_full_disk(
    hub: HubStub, disk: Path
) -> None:
    paths, _, data_b = setup_cache(disk, hub, 16 * MB)
    hub.add_repo("test/c", {"c.gguf": blob(2 * MB, 3)})
    write_registry(paths, [tiny_model("a"), tiny_model("b"), tiny_model("c", hf_repo="test/c")])
    # a partial of "a": the disk filled during its download
    hub.faults.throttle_bps = 4 * MB
    proc = subprocess.Popen(
        _cli("model", "download", "a"),
        env=env_for(paths, hub),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    folder = paths.partial_dir("a")
    deadline = time.monotonic() + 60
    while (state := read_state(folder)) is None or state.downloaded_bytes < 2 * MB:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    fill(disk)
    proc.communicate(timeout=60)
    assert proc.returncode == 1
    hub.faults.throttle_bps = None

    home = disk / "user"  # HOME; the cache is VIBRANT_HOME on the full disk
    env = server_env(home, paths.user_registry, HF_ENDPOINT=hub.endpoint)
    env["VIBRANT_HOME"] = str(paths.home)
    client, _ = await start_server(env, {"keepAliveS": 0})
    try:
        code, message, data = await call_error(client, "vibrant/downloadModel", {"modelId": "c"})
        assert code == DISK_FULL_CODE and data["kind"] == "DiskFull", (code, message)
        assert data["neededBytes"] > data["freeBytes"] and str(paths.models) in message
        assert not paths.partial_dir("c").exists()
        # removing the partial works on the full disk, and says what it freed
        result = await call(client, "vibrant/removeModel", {"modelId": "a"})
        assert result["freedBytes"] >= 2 * MB
        assert not folder.exists()
        assert_b_intact(paths, data_b)
    finally:
        assert await stop_server(client) == 0


@pytest.mark.llama
@pytest.mark.asyncio
async def test_server_load_on_a_full_disk_is_ready_and_completes(disk: Path) -> None:
    """Recording the use fails (the manifest can't be written): a warning, not a failed load;
    the state is "ready", completions work, the manifest stays readable."""
    home = disk / "user"
    vhome = home / ".vibrant"
    (vhome / "models").mkdir(parents=True)
    shutil.copyfile(tiny_fim_path(), vhome / "models" / "tiny-fim.gguf")
    registry = disk / "registry.json"
    registry.write_text(json.dumps({"models": [model_entry("tiny-fim", ram_required_mb=50)]}))
    client, _ = await start_server(server_env(home, registry), {"contextSize": 512})
    try:
        await call(client, "vibrant/loadModel", {"modelId": "tiny-fim"})  # hashes and records
        await call(client, "vibrant/unloadModel", {})
        paths = Paths(vhome)
        before = manifest_of(paths).models["tiny-fim"].use_count
        fill(disk)
        loaded = await call(client, "vibrant/loadModel", {"modelId": "tiny-fim"})
        assert loaded["modelId"] == "tiny-fim"
        status = await call(client, "vibrant/status", None)
        assert status["state"] == "ready", status
        done = await call(
            client, "vibrant/complete", {"prompt": "ab", "maxTokens": 4, "modelId": "tiny-fim"}
        )
        assert done["usage"]["completionTokens"] > 0
        assert manifest_of(paths).models["tiny-fim"].use_count == before  # not torn, unchanged
    finally:
        assert await stop_server(client) == 0
