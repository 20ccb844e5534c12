"""Files other tools already downloaded, used instead of downloading: through the real CLI,
with an HF cache made by the real huggingface_hub from the loopback hub."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import tiny_model, write_registry
from tests.support.hub_stub import HubStub
from vibrant_rpc.paths import Paths

pytestmark = pytest.mark.hub

REPO = "test/reuse"
FILE = "reuse-q4_k_m.gguf"
DATA = b"GGUF" + hashlib.shake_256(b"reuse").digest(3_000_000)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStub]:
    with HubStub() as stub:
        monkeypatch.setenv("HF_ENDPOINT", stub.endpoint)
        stub.add_repo(REPO, {FILE: DATA})
        yield stub


def setup_home(paths: Paths, **settings: object) -> None:
    write_registry(paths, [tiny_model("reuse", hf_repo=REPO, filename=FILE)])
    lines = {"download_idle_timeout_s": 5.0, "download_retry_base_s": 0.05, **settings}
    paths.config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in lines.items()))


def hf_cache_blob(hub: HubStub) -> Path:
    """The real huggingface_hub downloads the file into the user's HF cache (HOME is the
    test's own): what a developer who tried the model with transformers or llama.cpp has."""
    from huggingface_hub import hf_hub_download

    cache = Path.home() / ".cache" / "huggingface" / "hub"
    snapshot = Path(hf_hub_download(REPO, FILE, cache_dir=cache, endpoint=hub.endpoint))
    assert snapshot.is_symlink()
    hub.reset_stats()
    return snapshot.resolve()


def vibrant(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "vibrant"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_a_model_in_the_hf_cache_downloads_zero_bytes(hub: HubStub, paths: Paths) -> None:
    blob = hf_cache_blob(hub)
    before = blob.stat()
    setup_home(paths)
    r = vibrant("model", "download", "reuse", "--json")
    assert r.returncode == 0, r.stderr
    assert hub.bytes_served == 0  # not one byte of the file came from the hub
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["verified"] is True and result["sha256"] == SHA
    (adopted,) = result["adopted"]
    assert adopted["tool"] == "huggingface_hub" and adopted["path"] == str(blob)
    assert adopted["copied_bytes"] == 0 and adopted["method"] in ("reflink", "hardlink")
    assert (paths.models / "reuse.gguf").read_bytes() == DATA
    after = blob.stat()  # huggingface_hub's file is as it was
    assert (after.st_mtime_ns, after.st_mode, after.st_size) == (
        before.st_mtime_ns,
        before.st_mode,
        before.st_size,
    )
    assert not paths.partial_dir("reuse").exists()
    assert vibrant("model", "verify", "reuse").returncode == 0
    # said to a person too
    assert vibrant("model", "remove", "reuse").returncode == 0
    r = vibrant("model", "download", "reuse")
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stdout.split())  # rich wraps long lines
    assert f"taken from {blob} (huggingface_hub" in said and "Installed reuse" in said
    assert hub.bytes_served == 0


def test_a_tampered_file_in_the_hf_cache_is_refused_and_downloaded(
    hub: HubStub, paths: Paths
) -> None:
    blob = hf_cache_blob(hub)
    tampered = bytearray(DATA)
    tampered[1000] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(tampered))  # same size, one byte off
    setup_home(paths)
    r = vibrant("model", "download", "reuse", "--json")
    assert r.returncode == 0, r.stderr
    assert "is not the file vibrant needs" in r.stderr  # refused, and said
    assert hub.bytes_served == len(DATA)  # downloaded normally instead
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["verified"] is True and result["adopted"] == []
    assert (paths.models / "reuse.gguf").read_bytes() == DATA
    assert blob.read_bytes() == bytes(tampered)  # the other tool's file is left as it is


def test_use_other_caches_off(hub: HubStub, paths: Paths) -> None:
    hf_cache_blob(hub)
    setup_home(paths, use_other_caches=False)
    r = vibrant("model", "download", "reuse", "--json")
    assert r.returncode == 0, r.stderr
    assert hub.bytes_served == len(DATA)
    assert json.loads(r.stdout.splitlines()[-1])["adopted"] == []


def test_import_a_file_by_path(hub: HubStub, paths: Paths, tmp_path: Path) -> None:
    setup_home(paths, use_other_caches=False)
    wrong = tmp_path / "wrong.gguf"
    wrong.write_bytes(DATA[:-1] + b"x")
    r = vibrant("model", "import", str(wrong), "--model", "reuse")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "is not a file of reuse" in r.stderr
    assert not paths.partial_dir("reuse").exists() and not (paths.models / "reuse.gguf").exists()
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(DATA)
    r = vibrant("model", "import", str(mine), "--model", "reuse", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["verified"] is True and result["adopted"][0]["tool"] == "file"
    assert hub.bytes_served == 0
    assert (paths.models / "reuse.gguf").read_bytes() == DATA == mine.read_bytes()
    assert vibrant("model", "import", "--model", "reuse").returncode == 2  # no path: usage


def test_scan_lists_what_it_found_and_the_bytes_saved(hub: HubStub, paths: Paths) -> None:
    blob = hf_cache_blob(hub)
    setup_home(paths)
    r = vibrant("model", "import", "--scan", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    (found,) = [f for f in out["found"] if f["model_id"] == "reuse"]
    assert found["candidate"]["path"] == str(blob) and found["saves_bytes"] == len(DATA)
    assert out["saves_bytes"] >= len(DATA)
    r = vibrant("model", "import", "--scan")
    assert r.returncode == 0 and "huggingface_hub" in r.stdout and str(blob) in r.stdout
    assert hub.bytes_served == 0  # a scan never downloads


def test_an_ollama_blob_with_the_reference_sha_is_taken(hub: HubStub, paths: Paths) -> None:
    # Ollama keeps a pulled GGUF at blobs/sha256-<hex>, named by its digest
    blob = Path.home() / ".ollama" / "models" / "blobs" / f"sha256-{SHA}"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(DATA)
    setup_home(paths)
    r = vibrant("model", "download", "reuse", "--json")
    assert r.returncode == 0, r.stderr
    assert hub.bytes_served == 0
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["verified"] is True and result["served_by"] == {}
    assert [(a["tool"], a["path"]) for a in result["adopted"]] == [("ollama", str(blob))]
    assert blob.read_bytes() == DATA and (paths.models / "reuse.gguf").read_bytes() == DATA
