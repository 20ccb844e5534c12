"""The manifest read bounded (issue 22): a 1 GB manifest.json is not read whole on every
command nor kept as a second copy; a FIFO at its name hangs nothing; a snapshot is reused
only while nothing changed; `cache clean` removes a link planted as a partial folder,
never what it points to."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.helpers import put_cached, tiny_model, write_registry
from vibrant_rpc.cache.manifest import KEPT_OF_UNREADABLE, MAX_MANIFEST_BYTES
from vibrant_rpc.cache.store import Cache
from vibrant_rpc.paths import Paths
from vibrant_rpc.registry import Registry

GiB = 1 << 30


@pytest.fixture
def cache(paths: Paths) -> Cache:
    write_registry(paths, [tiny_model(i) for i in ("m1", "m2")])
    return Cache(paths, Registry.load(paths.user_registry))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("vibrant", path=str(Path(sys.executable).parent))
    assert exe
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


# The CLI run in a child that says its own peak (VmHWM, /proc/self/status) on the way out.
# Not the child's rusage: Linux keeps a process's ru_maxrss across fork and exec, so a
# child of a pytest that has grown to 240 MB reports 240 MB whatever the CLI took.
_PEAK = (
    "import atexit, sys\n"
    "def peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            sys.stderr.write('\\nPEAK ' + line.split()[1] + '\\n')\n"
    "atexit.register(peak)\n"
    "from vibrant_rpc.cli import main\n"
    "sys.argv = ['vibrant', *sys.argv[1:]]\n"
    "sys.exit(main())\n"
)


def max_rss_kib(*args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """The CLI, and the most memory it held (KiB)."""
    r = subprocess.run(
        [sys.executable, "-c", _PEAK, *args], capture_output=True, text=True, timeout=60
    )
    err, _, peak = r.stderr.rpartition("\nPEAK ")
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout, err), int(peak)


def test_a_1_gb_manifest_is_refused_unread_and_not_copied(cache: Cache, paths: Paths) -> None:
    put_cached(cache, "m1", 4096)
    model = (paths.models / "m1.gguf").read_bytes()
    with paths.manifest.open("r+b") as f:
        f.truncate(GiB)  # sparse: a real 1 GB file, taking no disk
    r, rss = max_rss_kib("model", "list")
    print(f"vibrant model list over a 1 GiB manifest: exit {r.returncode}, max RSS {rss} KiB")
    print(r.stderr)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    said = " ".join(r.stderr.split())
    assert "is 1.0 GiB, more than the 64.0 MiB a manifest can be" in said
    assert "its first MiB as manifest.json.corrupt-" in said
    assert rss < 200 * 1024  # not the 1 GB it claims
    aside = list(paths.models.glob("manifest.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == KEPT_OF_UNREADABLE
    # rebuilt from the files: the model is still there, whole, and listed as cached
    assert paths.manifest.stat().st_size < MAX_MANIFEST_BYTES
    assert (paths.models / "m1.gguf").read_bytes() == model
    fresh = Cache(paths, cache.registry)
    assert [e.id for e in fresh.entries()] == ["m1"]
    assert "m1" in r.stdout and "cached" in r.stdout


def test_only_the_newest_unreadable_manifest_is_kept(cache: Cache, paths: Paths) -> None:
    put_cached(cache, "m1", 100)
    for i in range(3):
        paths.manifest.write_text('{"version": 1, "models": {"m1": {"id": ' + str(i))
        fresh = Cache(paths, cache.registry)
        assert [e.id for e in fresh.entries()] == ["m1"]
        time.sleep(1.1)  # a new stamp
    aside = list(paths.models.glob("manifest.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text().endswith("2")


def test_a_fifo_at_the_manifests_name_hangs_nothing(cache: Cache, paths: Paths) -> None:
    put_cached(cache, "m1", 100)
    paths.manifest.unlink()
    os.mkfifo(paths.manifest)
    r = run("model", "list")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert "is not a plain file" in " ".join(r.stderr.split())
    assert paths.manifest.is_file() and (paths.models / "m1.gguf").is_file()


def test_a_snapshot_is_reused_only_while_nothing_changed(cache: Cache, paths: Paths) -> None:
    put_cached(cache, "m1", 100)
    time.sleep(0.2)
    first = cache.entries()
    assert cache.entries()[0] is first[0]  # nothing changed: the same read
    other = Cache(paths, cache.registry)  # another process's write
    put_cached(other, "m2", 100)
    assert sorted(e.id for e in cache.entries()) == ["m1", "m2"]
    time.sleep(0.2)
    cache.entries()
    (paths.models / "m2.gguf").unlink()  # a file removed by hand
    assert [e.id for e in cache.entries()] == ["m1"]


def test_clean_removes_a_linked_partial_folder_not_its_target(
    cache: Cache, paths: Paths, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("8 bytes!")
    paths.downloading.mkdir(parents=True)
    paths.partial_dir("m1").symlink_to(elsewhere, target_is_directory=True)
    partials = cache.partials()
    assert [(p.model_id, p.downloaded_bytes) for p in partials] == [("m1", 0)]
    r = run("model", "cache", "clean")
    assert r.returncode == 0, r.stderr
    assert "m1 (partial)" in r.stdout and "8 B" not in r.stdout
    assert not paths.partial_dir("m1").is_symlink()
    assert (elsewhere / "precious.txt").read_text() == "8 bytes!"
