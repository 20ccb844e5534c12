from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from tests.support.helpers import put_cached, tiny_model, write_registry
from vibrant_rpc.cache.locks import InUseMark, download_lock
from vibrant_rpc.cache.manifest import utcnow
from vibrant_rpc.cache.partials import FileProgress, PartialState, write_state
from vibrant_rpc.cache.store import Cache
from vibrant_rpc.errors import CacheFullError, ChecksumMismatchError, NotCachedError, VibrantError
from vibrant_rpc.paths import Paths
from vibrant_rpc.registry import Registry

IDS = ["m1", "m2", "m3", "m4"]


@pytest.fixture
def cache(paths: Paths) -> Cache:
    write_registry(paths, [tiny_model(i) for i in IDS] + [tiny_model("split", files=3)])
    return Cache(paths, Registry.load(paths.user_registry))


def _fill(cache: Cache) -> None:
    now = utcnow()
    for age, model_id in zip([4, 1, 3, 2], IDS, strict=True):
        put_cached(cache, model_id, 1000, last_used=now - timedelta(days=age))


def test_record_and_list(cache: Cache) -> None:
    put_cached(cache, "split", 10)
    entry = cache.get("split")
    assert entry is not None
    assert entry.paths == [f"split-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    data = json.loads(cache.paths.manifest.read_text())
    assert data["version"] == 1
    assert data["models"]["split"]["checksum"].startswith("sha256:")
    assert data["models"]["split"]["size_bytes"] == 30


def test_prune_removes_least_recently_used_first(cache: Cache) -> None:
    _fill(cache)
    result = cache.prune(2500)
    assert result.removed == ["m1", "m3"]  # 4 days, then 3 days since last use
    assert result.freed_bytes == 2000
    assert sorted(e.id for e in cache.entries()) == ["m2", "m4"]
    assert not (cache.paths.models / "m1.gguf").exists()


def test_prune_never_removes_the_model_in_use(cache: Cache, paths: Paths) -> None:
    _fill(cache)
    # A real second process holds the in-use mark, as a server with m1 loaded would.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from vibrant_rpc.cache.locks import InUseMark
                mark = InUseMark(Path({str(paths.locks)!r}), "m1")
                print("held", flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert cache.in_use("m1")
        result = cache.prune(0)
        assert "m1" not in result.removed
        assert sorted(result.removed) == ["m2", "m3", "m4"]
        assert (cache.paths.models / "m1.gguf").exists()
        with pytest.raises(VibrantError, match="loaded by a running vibrant server"):
            cache.remove("m1")
    finally:
        holder.kill()
        holder.wait()
    assert not cache.in_use("m1")  # the lock died with its process
    assert cache.prune(0).removed == ["m1"]


def test_prune_protect_in_process(cache: Cache) -> None:
    _fill(cache)
    mark = InUseMark(cache.paths.locks, "m1")
    try:
        assert "m1" not in cache.prune(0).removed
    finally:
        mark.release()


def test_make_room_prunes_or_says_what_to_remove(cache: Cache) -> None:
    _fill(cache)
    cache.max_bytes = 4500
    assert cache.make_room(cache.registry.get("split"), 500).removed == []
    result = cache.make_room(cache.registry.get("split"), 1500)
    assert result.removed == ["m1"]
    mark = InUseMark(cache.paths.locks, "m2")
    others = [InUseMark(cache.paths.locks, i) for i in ("m3", "m4")]
    try:
        with pytest.raises(CacheFullError) as info:
            cache.make_room(cache.registry.get("split"), 3000)
        assert "m2, m3, m4" in info.value.message
        assert "vibrant model remove" in (info.value.hint or "")
    finally:
        mark.release()
        for o in others:
            o.release()
    assert len(cache.entries()) == 3  # nothing lost by the refusal


def test_clean_by_age(cache: Cache) -> None:
    _fill(cache)
    result = cache.clean(timedelta(days=2, hours=12))
    assert sorted(result.removed) == ["m1", "m3"]
    assert sorted(e.id for e in cache.entries()) == ["m2", "m4"]


def _partial(paths: Paths, model_id: str, age: timedelta, done: int = 50) -> Path:
    folder = paths.partial_dir(model_id)
    folder.mkdir(parents=True)
    (folder / f"{model_id}.gguf.part").write_bytes(b"x" * done)
    when = utcnow() - age
    write_state(
        folder,
        PartialState(
            model_id=model_id,
            hf_repo="test/tiny",
            files=[
                FileProgress(
                    name=f"{model_id}.gguf", remote_filename="r", size_bytes=100, done=[(0, done)]
                )
            ],
            started_at=when,
            updated_at=when,
        ),
    )
    return folder


def test_clean_removes_partials_but_not_an_active_download(cache: Cache, paths: Paths) -> None:
    _partial(paths, "m1", timedelta(hours=1))
    _partial(paths, "m2", timedelta(hours=1))
    partials = {p.model_id: p for p in cache.partials()}
    assert partials["m1"].downloaded_bytes == 50 and partials["m1"].total_bytes == 100
    lock = download_lock(paths.locks, "m2")
    with lock:
        assert [p.active for p in cache.partials()] == [False, True]
        result = cache.clean()
    assert result.removed == ["m1 (partial)"]
    assert not paths.partial_dir("m1").exists()
    assert paths.partial_dir("m2").exists()


def test_stale_partials_removed_after_24_hours(cache: Cache, paths: Paths) -> None:
    _partial(paths, "m1", timedelta(hours=25))
    _partial(paths, "m2", timedelta(hours=23))
    assert cache.clean_stale_partials().removed == ["m1"]
    assert paths.partial_dir("m2").exists()


def test_corrupted_manifest_is_set_aside_and_rebuilt_with_nothing_lost(
    cache: Cache, paths: Paths
) -> None:
    _fill(cache)
    put_cached(cache, "split", 10)
    paths.manifest.write_text('{"version": 1, "models": {"m1": {"id": ')  # torn write
    fresh = Cache(paths, cache.registry)
    ids = sorted(e.id for e in fresh.entries())
    assert ids == ["m1", "m2", "m3", "m4", "split"]
    assert any("unreadable" in w for w in fresh.warnings)
    aside = list(paths.models.glob("manifest.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text().startswith('{"version": 1')
    for model_id in ids:
        assert all(p.is_file() for p in fresh.file_paths(fresh.require(model_id)))
    # adopted files are verified (hashed) on first use, then trusted
    entry = fresh.verify("m1", force=False)
    assert entry.checksum is not None


def test_entries_whose_files_are_gone_are_dropped(cache: Cache, paths: Paths) -> None:
    _fill(cache)
    (paths.models / "m2.gguf").unlink()
    assert sorted(e.id for e in cache.entries()) == ["m1", "m3", "m4"]
    assert any("m2" in w and "gone" in w for w in cache.warnings)


def test_verify_catches_same_size_corruption_and_keeps_the_cache(
    cache: Cache, paths: Paths
) -> None:
    put_cached(cache, "m1", 1000)
    path = paths.models / "m1.gguf"
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[500] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime
    # trusted without re-hashing when size and mtime match...
    assert cache.file_paths(cache.verify("m1", force=False)) == [path]
    # ...but an explicit verify re-hashes and names both digests
    with pytest.raises(ChecksumMismatchError) as info:
        cache.verify("m1")
    assert info.value.details["expected"] != info.value.details["actual"]
    assert "vibrant model download m1" in (info.value.hint or "")
    # kept (a download renames a new file over it), but remembered as damaged: no load
    entry = cache.get("m1")
    assert entry is not None and path.exists() and entry.damaged
    with pytest.raises(ChecksumMismatchError, match="damaged") as info:
        cache.verify("m1", force=False)
    assert "vibrant model download m1" in (info.value.hint or "")


def test_changed_mtime_triggers_rehash(cache: Cache, paths: Paths) -> None:
    put_cached(cache, "m1", 1000)
    path = paths.models / "m1.gguf"
    path.write_bytes(b"y" * 1000)
    with pytest.raises(ChecksumMismatchError):
        cache.file_paths(cache.verify("m1", force=False))


def test_remove_and_errors(cache: Cache) -> None:
    put_cached(cache, "m1", 1000)
    assert cache.remove("m1") == 1000
    with pytest.raises(NotCachedError, match="not downloaded"):
        cache.remove("m1")
    with pytest.raises(Exception, match="Unknown model"):
        cache.remove("nope")


def test_two_processes_touch_400_times(cache: Cache, paths: Paths) -> None:
    put_cached(cache, "m1", 10)
    code = textwrap.dedent(
        """
        import sys
        from vibrant_rpc.cache.store import Cache
        from vibrant_rpc.paths import Paths
        from vibrant_rpc.registry import Registry
        paths = Paths.from_env()
        cache = Cache(paths, Registry.load(paths.user_registry))
        sys.stdin.readline()  # start together
        for _ in range(200):
            cache.touch("m1")
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        assert p.wait(timeout=120) == 0
    data = json.loads(paths.manifest.read_text())
    assert data["models"]["m1"]["use_count"] == 400
