"""What a user can type that used to end in a traceback or a usage error (issue 22):
`vibrant model import` of a link loop or of nothing, and `--log-level` before the command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import put_cached, tiny_model, write_registry
from vibrant_rpc.cache.store import Cache
from vibrant_rpc.paths import Paths
from vibrant_rpc.registry import Registry


def vibrant(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("vibrant", path=str(Path(sys.executable).parent))
    assert exe
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.fixture
def cache(paths: Paths) -> Cache:
    write_registry(paths, [tiny_model("tiny-a", 100)])
    cache = Cache(paths, Registry.load(paths.user_registry))
    put_cached(cache, "tiny-a", 2048)
    return cache


@pytest.mark.parametrize("what", ["loop", "missing", "folder"])
def test_import_of_what_is_no_file_says_why(
    cache: Cache, paths: Paths, tmp_path: Path, what: str
) -> None:
    target = tmp_path / what
    if what == "loop":
        (tmp_path / "other").symlink_to(target)
        target.symlink_to(tmp_path / "other")
    elif what == "folder":
        target.mkdir()
    manifest = paths.manifest.read_bytes()
    r = vibrant("model", "import", str(target), "--model", "tiny-a")
    said = " ".join(r.stderr.split())
    print(said)
    assert r.returncode == 1
    why = {
        "loop": "can't be imported: its symbolic links form a loop.",
        "missing": "can't be imported: No such file or directory.",
        "folder": "is not a file.",
    }[what]
    assert f"error: {target} {why}" in said
    assert paths.manifest.read_bytes() == manifest  # the cache as it was
    assert not paths.downloading.exists()


INFO = "qwen2.5-coder-3b-q4"  # not downloaded: its header is asked of the Hub (refused here)


@pytest.mark.parametrize(
    "args",
    [
        ["--log-level", "info", "model", "info", INFO],
        ["model", "--log-level", "info", "info", INFO],
        ["model", "info", INFO, "--log-level", "info"],
    ],
)
def test_log_level_is_taken_before_the_command_as_after_it(cache: Cache, args: list[str]) -> None:
    r = vibrant(*args)
    assert r.returncode == 0, r.stderr
    # the level took effect, wherever it was given: the header fetch's failure is told
    assert "INFO vibrant_rpc.fit.headers" in r.stderr
    assert "INFO" not in vibrant("model", "info", INFO).stderr  # warning, by default


def test_json_before_the_command_and_a_level_after_it(cache: Cache) -> None:
    r = vibrant("--json", "--log-level", "info", "model", "info", INFO, "--log-level", "error")
    assert r.returncode == 0 and r.stdout.startswith("{")
    assert "INFO" not in r.stderr  # the level given last, after the command
    r = vibrant("--log-level", "debug", "model", "cache", "clean")
    assert r.returncode == 0 and "Nothing to remove." in r.stdout
