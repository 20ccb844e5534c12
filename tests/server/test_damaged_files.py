"""Damaged and foreign files, through the real CLI (and the real server for load and
complete) against the loopback Hub stand-in: what "verified" means, a damaged model
remembered, refused and repaired by renaming a new file over it, links never followed nor
adopted, and the bytes really freed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.support.gguf_fixtures import tiny_fim_path
from tests.support.helpers import tiny_model, write_registry
from tests.support.hub_stub import HubStub
from tests.support.rpc_client import call, call_error, server_env, start_server, stop_server
from tests.unit.download.test_download import MB, _cli, _config, blob, sha
from vibrant_rpc.cache.manifest import Manifest
from vibrant_rpc.paths import Paths

pytestmark = pytest.mark.hub

CHECKSUM_MISMATCH = -31004


@pytest.fixture
def hub() -> Any:
    with HubStub() as stub:
        yield stub


def cli(paths: Paths, hub: HubStub, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VIBRANT_HOME": str(paths.home), "HF_ENDPOINT": hub.endpoint}
    return subprocess.run(_cli(*args), env=env, capture_output=True, text=True, timeout=120)


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r.stdout


def manifest_of(paths: Paths) -> Manifest:
    return msgspec.json.decode(paths.manifest.read_bytes(), type=Manifest)


def listed(paths: Paths, hub: HubStub) -> dict[str, dict[str, Any]]:
    rows = json.loads(ok(cli(paths, hub, "model", "list", "--json")))
    return {m["model"]["id"]: m for m in rows if m["cached"]}


def one_model(paths: Paths, hub: HubStub, data: bytes, **entry: Any) -> None:
    hub.add_repo("test/tiny", {"a.gguf": data, "b.gguf": blob(MB, 9)}, **entry)
    write_registry(paths, [tiny_model("a"), tiny_model("b")])
    _config(paths)


def test_download_of_a_truncated_cached_model_repairs_it(hub: HubStub, paths: Paths) -> None:
    data = blob(3 * MB)
    one_model(paths, hub, data)
    first = ok(cli(paths, hub, "model", "download", "a"))
    assert "verified sha256:" in first  # the Hub's LFS oid was known in advance
    ok(cli(paths, hub, "model", "download", "b"))
    target = paths.models / "a.gguf"
    before = target.stat().st_ino
    # an intact cached model: nothing is fetched, and nothing claims a fresh verify
    hub.reset_stats()
    again = ok(cli(paths, hub, "model", "download", "a"))
    assert "already downloaded" in again and "verified" not in again
    assert hub.bytes_served == 0
    # another program truncates it: the next download notices and repairs it
    with open(target, "r+b") as f:
        f.truncate(MB)
        keep = os.open(target, os.O_RDONLY)  # as a loaded model keeps its file open
    try:
        out = ok(cli(paths, hub, "model", "download", "a"))
        assert "\nRepaired a (" in out and "not the" in out and "verified sha256:" in out
        assert target.read_bytes() == data
        # renamed over, never rewritten in place: the open file is the old one, untouched
        assert target.stat().st_ino != before
        assert os.fstat(keep).st_size == MB
    finally:
        os.close(keep)
    assert listed(paths, hub)["a"]["size_bytes"] == len(data)
    assert manifest_of(paths).models["a"].checksum == f"sha256:{sha(data)}"
    assert (paths.models / "b.gguf").read_bytes() == blob(MB, 9)


def test_text_where_a_model_should_be_is_repaired_not_trusted(hub: HubStub, paths: Paths) -> None:
    """Same size and date, but no GGUF magic: still damaged."""
    data = blob(2 * MB)
    one_model(paths, hub, data)
    ok(cli(paths, hub, "model", "download", "a"))
    target = paths.models / "a.gguf"
    st = target.stat()
    with open(target, "r+b") as f:
        f.write(b"text")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    out = ok(cli(paths, hub, "model", "download", "a"))
    assert "Repaired a" in out and "magic" in out
    assert target.read_bytes() == data


def test_a_file_without_a_reference_hash_is_recorded_not_verified(
    hub: HubStub, paths: Paths
) -> None:
    data = b"GGUF" + b"\x03\x00\x00\x00" + b"x" * 2000  # a small git file: no LFS oid
    one_model(paths, hub, data, non_lfs=["a.gguf"])
    out = ok(cli(paths, hub, "model", "download", "a"))
    assert "recorded, not checked" in out and "verified" not in out
    assert manifest_of(paths).models["a"].checksum == f"sha256:{sha(data)}"


def test_a_symlink_planted_as_the_partial_is_never_written_through(
    hub: HubStub, paths: Paths, tmp_path: Path
) -> None:
    data = blob(2 * MB)
    one_model(paths, hub, data)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious, and not vibrant's\n")
    folder = paths.partial_dir("a")
    folder.mkdir(parents=True)
    (folder / "a.gguf.part").symlink_to(victim)
    ok(cli(paths, hub, "model", "download", "a"))
    assert victim.read_bytes() == b"precious, and not vibrant's\n"
    target = paths.models / "a.gguf"
    assert not target.is_symlink() and target.read_bytes() == data


def test_links_and_foreign_files_are_not_adopted(
    hub: HubStub, paths: Paths, tmp_path: Path
) -> None:
    one_model(paths, hub, blob(MB))
    paths.models.mkdir(parents=True)
    (paths.models / "a.gguf").write_text("not a model at all\n" * 100)
    real = tmp_path / "elsewhere.gguf"
    real.write_bytes(blob(MB, 9))
    (paths.models / "b.gguf").symlink_to(real)
    assert listed(paths, hub) == {}
    assert not paths.manifest.exists() or manifest_of(paths).models == {}
    # and a download replaces them (the link itself, never its target)
    ok(cli(paths, hub, "model", "download", "b"))
    assert not (paths.models / "b.gguf").is_symlink()
    assert real.read_bytes() == blob(MB, 9)


def test_remove_reports_the_bytes_really_freed(hub: HubStub, paths: Paths, tmp_path: Path) -> None:
    data = blob(2 * MB)
    one_model(paths, hub, data)
    ok(cli(paths, hub, "model", "download", "a"))
    ok(cli(paths, hub, "model", "download", "b"))
    # "a" became a link to a copy elsewhere (as an older vibrant adopted links)
    outside = tmp_path / "copy.gguf"
    outside.write_bytes(data)
    target = paths.models / "a.gguf"
    target.unlink()
    target.symlink_to(outside)
    # "b" has a second hard link: deleting the cache's name frees nothing
    os.link(paths.models / "b.gguf", tmp_path / "b-backup.gguf")
    for model_id in ("a", "b"):
        out = json.loads(ok(cli(paths, hub, "model", "remove", model_id, "--json")))
        assert out["freed_bytes"] < 64 * 1024, out
    assert outside.read_bytes() == data and (tmp_path / "b-backup.gguf").stat().st_size == MB
    # a partial whose .part is a link frees nothing either
    folder = paths.partial_dir("a")
    folder.mkdir(parents=True)
    (folder / "a.gguf.part").symlink_to(outside)
    out = json.loads(ok(cli(paths, hub, "model", "cache", "clean", "--json")))
    assert out["freed_bytes"] < 64 * 1024 and outside.read_bytes() == data


@pytest.mark.llama
@pytest.mark.asyncio
async def test_a_failed_verify_is_remembered_refused_by_the_server_and_repaired(
    hub: HubStub, tmp_path: Path
) -> None:
    source = tiny_fim_path()
    good = source.read_bytes()
    hub.add_repo("test/tiny-fim", {"tiny-fim.gguf": source})
    home = tmp_path / "user"
    paths = Paths(home / ".vibrant")
    write_registry(
        paths,
        [{"id": "tiny-fim", "hf_repo": "test/tiny-fim", "filename": "tiny-fim.gguf",
          "ram_required_mb": 50}],
    )  # fmt: skip
    ok(cli(paths, hub, "model", "download", "tiny-fim"))
    target = paths.models / "tiny-fim.gguf"
    # one flipped byte deep in the weights, size and date kept: only a hash can tell
    st = target.stat()
    with open(target, "r+b") as f:
        f.seek(len(good) - 100)
        f.write(bytes([good[-100] ^ 0xFF]))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = cli(paths, hub, "model", "verify", "tiny-fim")
    assert r.returncode == 1 and "damaged" in r.stderr and "Traceback" not in r.stderr
    assert "vibrant model download tiny-fim" in r.stderr
    assert json.loads(paths.manifest.read_bytes())["models"]["tiny-fim"].get("damaged")

    env = server_env(home, None, HF_ENDPOINT=hub.endpoint)
    client, _ = await start_server(env, {"contextSize": 512, "keepAliveS": 0})
    try:
        for method, params in (
            ("vibrant/loadModel", {"modelId": "tiny-fim"}),
            ("vibrant/complete", {"prompt": "ab", "maxTokens": 2, "modelId": "tiny-fim"}),
        ):
            code, message, data = await call_error(client, method, params)
            assert code == CHECKSUM_MISMATCH and data["kind"] == "ChecksumMismatch", message
            assert "vibrant model download tiny-fim" in data["hint"]
        status = await call(client, "vibrant/status", None)
        assert status["state"] != "ready"
        # the download repairs it; the server then loads and completes
        out = ok(cli(paths, hub, "model", "download", "tiny-fim"))
        assert "\nRepaired tiny-fim (" in out
        assert target.read_bytes() == good
        assert manifest_of(paths).models["tiny-fim"].damaged is None
        done = await call(
            client, "vibrant/complete", {"prompt": "ab", "maxTokens": 2, "modelId": "tiny-fim"}
        )
        assert done["usage"]["completionTokens"] > 0
    finally:
        assert await stop_server(client) == 0
