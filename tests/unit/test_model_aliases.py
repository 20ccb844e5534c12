"""The seed's ids are the ids; the ``_k_m`` ids they replaced stay as aliases (issue 10).

Caches written under an old id keep working: the registry answers to the alias, a
manifest entry under it is found (and reported) under the id, and files named after it
are adopted and still load. Each CLI check runs the real ``vibrant`` command on a real
cache folder and ends with the cache whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.support.gguf_fixtures import tiny_fim_path
from tests.support.helpers import tiny_model, write_registry
from vibrant_rpc.app import Vibrant
from vibrant_rpc.cache.manifest import Manifest, ManifestEntry, ManifestFile
from vibrant_rpc.cache.store import Cache
from vibrant_rpc.errors import ModelNotFoundError
from vibrant_rpc.paths import Paths
from vibrant_rpc.registry import Registry

RENAMED = {
    "qwen2.5-coder-3b-q4_k_m": "qwen2.5-coder-3b-q4",
    "qwen2.5-coder-7b-q5_k_m": "qwen2.5-coder-7b-q5",
    "qwen2.5-coder-14b-q5_k_m": "qwen2.5-coder-14b-q5",
    "qwen2.5-coder-14b-q8_0": "qwen2.5-coder-14b-q8",
}
OLD_3B, NEW_3B = "qwen2.5-coder-3b-q4_k_m", "qwen2.5-coder-3b-q4"
OLD_7B, NEW_7B = "qwen2.5-coder-7b-q5_k_m", "qwen2.5-coder-7b-q5"


def vibrant(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("vibrant", path=str(Path(sys.executable).parent))
    assert exe, "the console script is installed with the package"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def old_manifest_entry(paths: Paths, key: str, names: list[str], **extra: Any) -> ManifestEntry:
    """An entry as a vibrant that knew the model as ``key`` wrote it."""
    files = []
    for name in names:
        path = paths.models / name
        files.append(
            ManifestFile(
                path=name,
                size_bytes=path.stat().st_size,
                sha256=sha256(path),
                mtime_ns=path.stat().st_mtime_ns,
                remote_filename=name,
            )
        )
    return ManifestEntry(
        id=key,
        files=files,
        size_bytes=sum(f.size_bytes for f in files),
        checksum=f"sha256:{files[0].sha256}",
        downloaded_at=datetime(2026, 11, 1, tzinfo=UTC),
        hf_repo="Qwen/Qwen2.5-Coder-3B-Instruct-GGUF",
        **extra,
    )


def write_manifest(paths: Paths, entries: list[ManifestEntry]) -> None:
    manifest = Manifest(models={e.id: e for e in entries})
    paths.manifest.write_bytes(msgspec.json.encode(manifest))


def read_manifest(paths: Paths) -> dict[str, Any]:
    models: dict[str, Any] = json.loads(paths.manifest.read_text())["models"]
    return models


def gguf_shards(paths: Paths, names: list[str]) -> dict[str, str]:
    """Small files that start like GGUF files; their hashes, to check they stay whole."""
    paths.models.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(names):
        path = paths.models / name
        path.write_bytes(b"GGUF" + bytes([3, 0, 0, 0]) + bytes([i + 1]) * 4096)
        out[name] = sha256(path)
    return out


# -- the registry ----------------------------------------------------------------------


def test_the_seed_ids_are_the_ids_and_the_old_ones_aliases() -> None:
    r = Registry.embedded()
    assert [m.id for m in r] == list(RENAMED.values())
    for old, new in RENAMED.items():
        model = r.get(old)
        assert model.id == new and model.aliases == [old]
        assert r.find(old) is model and r.get(new) is model
        assert old in r and new in r
        assert r.canonical_id(old) == new and r.canonical_id(new) == new
    assert r.canonical_id("not-a-model") == "not-a-model"
    seven = r.get(OLD_7B)
    assert seven.local_filenames() == [
        f"{NEW_7B}-00001-of-00002.gguf",
        f"{NEW_7B}-00002-of-00002.gguf",
    ]
    assert seven.local_filenames(OLD_7B)[1] == f"{OLD_7B}-00002-of-00002.gguf"
    assert r.get(OLD_3B).local_filenames(OLD_3B) == [f"{OLD_3B}.gguf"]


def test_a_user_entry_under_an_old_id_replaces_the_model_it_names(paths: Paths) -> None:
    write_registry(
        paths,
        [{"id": OLD_3B, "hf_repo": "me/fork", "filename": "x.gguf", "ram_required_mb": 1}],
    )
    r = Registry.load(paths.user_registry)
    assert not r.problems and len(r) == 4
    model = r.get(NEW_3B)
    assert model.hf_repo == "me/fork" and model.id == NEW_3B and model.aliases == [OLD_3B]
    assert r.get(OLD_3B) is model


def test_a_user_override_by_id_keeps_the_old_ids(paths: Paths) -> None:
    write_registry(
        paths,
        [{"id": NEW_7B, "hf_repo": "me/fork", "filename": "x.gguf", "ram_required_mb": 1}],
    )
    r = Registry.load(paths.user_registry)
    assert r.get(OLD_7B).hf_repo == "me/fork" and r.get(NEW_7B).aliases == [OLD_7B]


def test_user_aliases_find_a_user_model_but_never_take_another_models_name(
    paths: Paths,
) -> None:
    write_registry(paths, [tiny_model("mine", aliases=["my-old-name", NEW_7B, OLD_3B, "mine"])])
    r = Registry.load(paths.user_registry)
    assert r.get("my-old-name").id == "mine" and r.get("mine").aliases == ["my-old-name"]
    assert r.get(NEW_7B).id == NEW_7B and r.get(OLD_3B).id == NEW_3B
    messages = [p.message for p in r.problems]
    assert len(messages) == 2, messages
    assert all(str(paths.user_registry) in m and "'mine'" in m for m in messages)
    assert f"alias {NEW_7B!r} already names {NEW_7B!r}" in messages[0]
    assert f"alias {OLD_3B!r} already names {NEW_3B!r}" in messages[1]


def test_an_alias_that_could_escape_the_cache_folder_is_refused(paths: Paths) -> None:
    write_registry(paths, [tiny_model("fine"), tiny_model("bad", aliases=["../../x"])])
    r = Registry.load(paths.user_registry)
    assert len(r.problems) == 1
    assert "field 'aliases[0]'" in r.problems[0].message and "bad" not in r
    assert "fine" in r


def test_a_near_miss_suggests_the_id_not_the_alias() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        Registry.embedded().get("qwen2.5-coder-7b-q5_k")
    suggestions = info.value.details["suggestions"]
    assert suggestions[0] == NEW_7B and OLD_7B not in suggestions


# -- the cache, in-process -------------------------------------------------------------


def test_two_entries_for_the_same_files_become_one(paths: Paths) -> None:
    hashes = gguf_shards(paths, [f"{OLD_3B}.gguf"])
    used = datetime(2026, 11, 20, tzinfo=UTC)
    old = old_manifest_entry(paths, OLD_3B, [f"{OLD_3B}.gguf"], use_count=7, last_used=used)
    new = msgspec.structs.replace(old, id=NEW_3B, use_count=2, last_used=None)
    write_manifest(paths, [old, new])
    entries = Cache(paths, Registry.embedded()).entries()
    assert [(e.id, e.use_count, e.last_used) for e in entries] == [(NEW_3B, 7, used)]
    assert list(read_manifest(paths)) == [NEW_3B]
    assert {n: sha256(paths.models / n) for n in hashes} == hashes


def test_another_copy_under_the_old_id_is_kept_until_the_first_is_removed(
    paths: Paths,
) -> None:
    hashes = gguf_shards(paths, [f"{OLD_3B}.gguf", f"{NEW_3B}.gguf"])
    old = old_manifest_entry(paths, OLD_3B, [f"{OLD_3B}.gguf"])
    new = old_manifest_entry(paths, NEW_3B, [f"{NEW_3B}.gguf"])
    write_manifest(paths, [old, new])
    cache = Cache(paths, Registry.embedded())
    assert sorted(e.id for e in cache.entries()) == sorted([OLD_3B, NEW_3B])
    assert cache.stats().total_bytes == old.size_bytes + new.size_bytes
    assert cache.remove(NEW_3B) == new.size_bytes
    assert not (paths.models / f"{NEW_3B}.gguf").exists()
    # the other copy is now the model's
    entry = cache.require(OLD_3B)
    assert entry.id == NEW_3B and entry.paths == [f"{OLD_3B}.gguf"]
    assert sha256(paths.models / f"{OLD_3B}.gguf") == hashes[f"{OLD_3B}.gguf"]


# -- the real CLI ------------------------------------------------------------------------


def test_info_by_id_and_by_old_id() -> None:
    r = vibrant("model", "info", NEW_7B)
    assert r.returncode == 0, r.stderr
    assert "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF" in r.stdout
    r = vibrant("model", "info", OLD_7B, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["model"]["id"] == NEW_7B and data["model"]["aliases"] == [OLD_7B]


def test_a_manifest_entry_under_an_old_id_is_found_and_reported_under_the_id(
    paths: Paths,
) -> None:
    paths.models.mkdir(parents=True)
    name = f"{OLD_3B}.gguf"
    shutil.copyfile(tiny_fim_path(), paths.models / name)
    digest = sha256(paths.models / name)
    used = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    write_manifest(paths, [old_manifest_entry(paths, OLD_3B, [name], use_count=3, last_used=used)])

    r = vibrant("model", "list", "--cached", "--json")
    assert r.returncode == 0, r.stderr
    [listed] = json.loads(r.stdout)
    assert listed["model"]["id"] == NEW_3B and listed["cached"] is True
    assert listed["use_count"] == 3 and listed["size_bytes"] == (paths.models / name).stat().st_size
    assert "warning" not in r.stderr, r.stderr  # nothing was dropped or re-adopted

    for model_id in (OLD_3B, NEW_3B):
        info = json.loads(vibrant("model", "info", model_id, "--json").stdout)
        assert info["model"]["id"] == NEW_3B and info["cached"] is True
    r = vibrant("model", "verify", OLD_3B)
    assert r.returncode == 0, r.stderr
    assert f"{NEW_3B}: OK (sha256:{digest})" in r.stdout
    cache = json.loads(vibrant("model", "cache", "--json").stdout)
    assert [m["id"] for m in cache["models"]] == [NEW_3B]

    # The cache is whole: one entry under the id, the file under its old name, unchanged.
    manifest = read_manifest(paths)
    assert list(manifest) == [NEW_3B] and manifest[NEW_3B]["id"] == NEW_3B
    assert manifest[NEW_3B]["files"][0]["path"] == name
    assert manifest[NEW_3B]["files"][0]["sha256"] == digest == sha256(paths.models / name)
    on_disk = sorted(n for n in os.listdir(paths.models) if not n.startswith("."))
    assert on_disk == sorted([name, "manifest.json"])


def test_files_named_after_an_old_id_are_adopted_under_the_id(paths: Paths) -> None:
    names = [f"{OLD_7B}-00001-of-00002.gguf", f"{OLD_7B}-00002-of-00002.gguf"]
    hashes = gguf_shards(paths, names)
    r = vibrant("model", "list", "--cached", "--json")
    assert r.returncode == 0, r.stderr
    [listed] = json.loads(r.stdout)
    assert listed["model"]["id"] == NEW_7B
    assert listed["size_bytes"] == sum((paths.models / n).stat().st_size for n in names)
    manifest = read_manifest(paths)
    assert list(manifest) == [NEW_7B]
    assert [f["path"] for f in manifest[NEW_7B]["files"]] == names
    assert {n: sha256(paths.models / n) for n in names} == hashes


def test_remove_by_the_old_id(paths: Paths) -> None:
    name = f"{OLD_3B}.gguf"
    gguf_shards(paths, [name])
    write_manifest(paths, [old_manifest_entry(paths, OLD_3B, [name])])
    size = (paths.models / name).stat().st_size
    r = vibrant("model", "remove", OLD_3B, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["freed_bytes"] == size
    assert not (paths.models / name).exists() and read_manifest(paths) == {}


def test_update_check_by_the_old_id(paths: Paths) -> None:
    paths.models.mkdir(parents=True)
    shutil.copyfile(tiny_fim_path(), paths.models / f"{OLD_3B}.gguf")
    r = vibrant("model", "update", OLD_3B, "--check", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pinned"] == [NEW_3B]  # the 3B model is pinned to a commit


def test_the_servers_update_check_by_the_old_id(paths: Paths) -> None:
    paths.models.mkdir(parents=True)
    shutil.copyfile(tiny_fim_path(), paths.models / f"{OLD_3B}.gguf")
    assert Vibrant(paths).check_updates([OLD_3B]).pinned == [NEW_3B]
