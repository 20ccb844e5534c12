from __future__ import annotations

import json
import os
import re
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
    assert exe, "the console script is installed with the package"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def cache(paths: Paths) -> Cache:
    write_registry(paths, [tiny_model("tiny-a", 100), tiny_model("tiny-b", 200)])
    return Cache(paths, Registry.load(paths.user_registry))


def test_list_shows_registry_and_the_machine_choice() -> None:
    r = vibrant("model", "list")
    assert r.returncode == 0, r.stderr
    for model_id in ("qwen2.5-coder-3b-q4", "qwen2.5-coder-14b-q8"):
        assert model_id in r.stdout
    assert "This machine:" in r.stdout and "usable" in r.stdout
    assert "* the model this machine gets" in r.stdout


def test_list_json_and_cached(cache: Cache) -> None:
    put_cached(cache, "tiny-a", 2048)
    data = json.loads(vibrant("model", "list", "--json").stdout)
    by_id = {m["model"]["id"]: m for m in data}
    assert by_id["tiny-a"]["cached"] is True and by_id["tiny-a"]["size_bytes"] == 2048
    assert by_id["tiny-b"]["cached"] is False
    cached = json.loads(vibrant("model", "list", "--cached", "--json").stdout)
    assert [m["model"]["id"] for m in cached] == ["tiny-a"]
    text = vibrant("model", "list", "--cached").stdout
    assert "tiny-a" in text and "2.0 KiB" in text and "qwen" not in text


def test_info(cache: Cache) -> None:
    r = vibrant("model", "info", "qwen2.5-coder-7b-q5")
    assert r.returncode == 0
    assert "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF" in r.stdout
    assert "qwen2.5-coder-7b-instruct-q5_k_m-00002-of-00002.gguf" in r.stdout
    assert "8.8 GiB" in r.stdout  # RAM required, human-readable


def test_unknown_model_exit_1_with_suggestion_no_traceback() -> None:
    r = vibrant("model", "info", "qwen2.5-coder-7b")
    assert r.returncode == 1
    assert "Unknown model 'qwen2.5-coder-7b'" in r.stderr
    assert "Did you mean 'qwen2.5-coder-7b-q5'" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ("model",),
        ("model", "frobnicate"),
        ("model", "select", "--ram", "lots"),
        ("model", "cache", "clean", "--older-than", "soon"),
        ("model", "list", "--all", "--cached"),
    ],
)
def test_bad_usage_exit_2(args: tuple[str, ...]) -> None:
    r = vibrant(*args)
    assert r.returncode == 2
    assert "usage:" in r.stderr


def test_select_with_ram() -> None:
    # By the estimate at the default 4096-token context (docs/memory-estimate.md).
    r = vibrant("model", "select", "--ram", "12GiB")
    assert r.returncode == 0
    assert r.stdout.startswith("qwen2.5-coder-7b-q5")
    assert re.search(
        r"12\.0 GiB total, 10\.0 GiB usable; chose 7B Q5_K_M \(7B Q5_K_M at 4096 tokens: "
        r"5\.\d GiB weights \+ 0\.22 GiB KV cache \+ 0\.\d\d GiB buffers = 5\.\d GiB; "
        r"not downloaded and not fetched from the Hub: estimated from the registry's "
        r"architecture numbers\); "
        r"the next, 14B Q5_K_M, needs 11\.\d GiB at 4096 tokens",
        r.stdout,
    ), r.stdout
    data = json.loads(vibrant("model", "select", "--ram", "16GiB", "--json").stdout)
    assert data["model_id"] == "qwen2.5-coder-14b-q5"
    data = json.loads(vibrant("model", "select", "--ram", "24GiB", "--json").stdout)
    assert data["model_id"] == "qwen2.5-coder-14b-q8"
    r = vibrant("model", "select", "--ram", "4GiB")
    assert r.returncode == 1 and "Not enough memory" in r.stderr
    assert "3B Q4_K_M at 4096 tokens" in r.stderr


def test_remove_and_cache(cache: Cache, paths: Paths) -> None:
    put_cached(cache, "tiny-a", 4096)
    r = vibrant("model", "cache")
    assert r.returncode == 0 and "tiny-a" in r.stdout and "4.0 KiB" in r.stdout
    assert str(paths.models) in r.stdout
    r = vibrant("model", "cache", "--usage", "--json")
    assert json.loads(r.stdout)["stats"]["total_bytes"] == 4096
    r = vibrant("model", "remove", "tiny-a")
    assert r.returncode == 0 and "freed 4.0 KiB" in r.stdout
    assert not (paths.models / "tiny-a.gguf").exists()
    r = vibrant("model", "remove", "tiny-a")
    assert r.returncode == 1 and "not downloaded" in r.stderr


def test_cache_clean_older_than(cache: Cache) -> None:
    from datetime import timedelta

    from vibrant_rpc.cache.manifest import utcnow

    put_cached(cache, "tiny-a", 10, last_used=utcnow() - timedelta(days=40))
    put_cached(cache, "tiny-b", 10, last_used=utcnow() - timedelta(days=3))
    r = vibrant("model", "cache", "clean", "--older-than", "30d")
    assert r.returncode == 0 and "Removed tiny-a" in r.stdout
    assert [e.id for e in cache.entries()] == ["tiny-b"]


def test_verify_damaged_file_exit_1_and_cache_whole(cache: Cache, paths: Paths) -> None:
    put_cached(cache, "tiny-a", 1000)
    assert vibrant("model", "verify", "tiny-a").returncode == 0
    path = paths.models / "tiny-a.gguf"
    path.write_bytes(b"\0" * 1000)
    r = vibrant("model", "verify", "tiny-a")
    assert r.returncode == 1
    assert "damaged" in r.stderr and "vibrant model download tiny-a" in r.stderr
    assert path.exists() and cache.get("tiny-a") is not None


def test_broken_user_registry_warns_but_works(paths: Paths) -> None:
    paths.home.mkdir(parents=True)
    paths.user_registry.write_text("{oops")
    r = vibrant("model", "list")
    assert r.returncode == 0
    assert "qwen2.5-coder-3b-q4" in r.stdout
    assert "warning:" in r.stderr and "not a registry file" in r.stderr


def test_stale_partials_go_at_start_up(paths: Paths) -> None:
    import os
    import time

    stale = paths.partial_dir("qwen2.5-coder-3b-q4")
    stale.mkdir(parents=True)
    (stale / "qwen2.5-coder-3b-q4.gguf.part").write_bytes(b"x" * 100)
    old = time.time() - 25 * 3600
    for p in (stale, *stale.iterdir()):
        os.utime(p, (old, old))
    fresh = paths.partial_dir("qwen2.5-coder-7b-q5")
    fresh.mkdir(parents=True)
    (fresh / "x.part").write_bytes(b"y")
    r = vibrant("model", "list")
    assert r.returncode == 0
    assert "Removed a stale partial download of qwen2.5-coder-3b-q4" in r.stderr
    assert not stale.exists() and fresh.exists()


def test_log_level_flag_and_environment(cache: Cache, paths: Paths) -> None:
    # A foreign file where a model's file would be: the cache says so at level info.
    paths.models.mkdir(parents=True, exist_ok=True)
    (paths.models / "tiny-a.gguf").write_text("not a model")
    quiet = vibrant("model", "list")
    assert quiet.returncode == 0 and "not adopting" not in quiet.stderr
    loud = vibrant("model", "list", "--log-level", "info")
    assert loud.returncode == 0 and "not adopting" in loud.stderr, loud.stderr
    env = {**os.environ, "VIBRANT_LOG_LEVEL": "INFO"}
    exe = shutil.which("vibrant", path=str(Path(sys.executable).parent))
    assert exe
    by_env = subprocess.run([exe, "model", "list"], capture_output=True, text=True, env=env)
    assert "not adopting" in by_env.stderr, by_env.stderr
    bad = vibrant("model", "list", "--log-level", "loud")
    assert bad.returncode == 2 and "--log-level" in bad.stderr
