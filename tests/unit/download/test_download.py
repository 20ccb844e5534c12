"""Downloads against the loopback Hub stand-in, with its faults switched on."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import put_cached, tiny_model, write_registry
from tests.support.hub_stub import HubStub
from vibrant_rpc.app import Vibrant
from vibrant_rpc.config import load_settings
from vibrant_rpc.download.downloader import Downloader, transfer_config
from vibrant_rpc.download.progress import Progress
from vibrant_rpc.errors import (
    CacheFullError,
    Cancelled,
    ChecksumMismatchError,
    DiskFullError,
    DownloadFailedError,
    GatedRepoError,
    HubUnreachableError,
    OfflineError,
)
from vibrant_rpc.paths import Paths

pytestmark = pytest.mark.hub

MB = 1_000_000
KiB = 1024


def blob(n: int, seed: int = 1) -> bytes:
    """``n`` bytes that start as a GGUF file does (the cache keeps nothing else)."""
    return (b"GGUF" + hashlib.shake_256(f"seed{seed}".encode()).digest(n))[:n]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStub]:
    with HubStub() as stub:
        monkeypatch.setenv("HF_ENDPOINT", stub.endpoint)
        yield stub


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, s: float) -> None:
        self.calls.append(s)


def make_app(paths: Paths, models: list[dict[str, object]], **settings: object) -> Vibrant:
    write_registry(paths, models)
    base: dict[str, object] = {"download_idle_timeout_s": 2.0, "download_retry_base_s": 0.01}
    base.update(settings)
    return Vibrant(paths, load_settings(None, base))


def downloader(app: Vibrant, block: int = 256 * KiB, sleep: Sleeps | None = None) -> Downloader:
    d = Downloader(app.paths, app.cache, transfer_config(app.settings, sleep or Sleeps()))
    d.config.block_size = block
    return d


def get(app: Vibrant, model_id: str, d: Downloader | None = None, **kw: object):  # type: ignore[no-untyped-def]
    d = d or downloader(app)
    return d.download(app.registry.get(model_id), **kw)  # type: ignore[arg-type]


def cdn_bytes(hub: HubStub) -> int:
    return hub.bytes_served


def test_plain_download_verified_and_recorded(hub: HubStub, paths: Paths) -> None:
    data = blob(3 * MB)
    commit = hub.add_repo("test/tiny", {"a.gguf": data})
    app = make_app(paths, [tiny_model("a")])
    seen: list[Progress] = []
    result = get(app, "a", progress=seen.append)
    target = paths.models / "a.gguf"
    assert result.paths == [str(target)]
    assert target.read_bytes() == data
    assert result.sha256 == sha(data) and result.revision == commit
    entry = app.cache.get("a")
    assert entry is not None
    assert entry.checksum == f"sha256:{sha(data)}" and entry.revision == commit
    assert entry.versions[0].sha256 == sha(data)
    assert not paths.partial_dir("a").exists()
    assert seen[0].state == "resolving" and seen[-1].state == "done"
    assert seen[-1].downloaded_bytes == len(data) == seen[-1].total_bytes
    # parallel blocks were used, and every byte crossed the wire exactly once
    gets = [r for r in hub.requests if r.host == "cdn"]
    assert len(gets) > 4 and cdn_bytes(hub) == len(data)
    # a second call is answered from the cache without touching the network
    hub.reset_stats()
    assert get(app, "a").sha256 == sha(data)
    assert hub.requests == []


def test_a_download_moves_and_hashes_bytes_at_a_lower_priority(hub: HubStub, paths: Paths) -> None:
    # The user's completion must not wait on a 10 GB download's hashing for a core.
    import contextlib
    import threading

    from vibrant_rpc.download.priority import BACKGROUND_NICE

    hub.add_repo("test/tiny", {"a.gguf": blob(2 * MB)})
    app = make_app(paths, [tiny_model("a")])
    hub.faults.throttle_bps = 4 * MB
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: dict[str, int] = {}

    def on_progress(p: Progress) -> None:
        for t in threading.enumerate():
            if t.name.startswith(("vibrant-download", "vibrant-hash")) and t.native_id:
                with contextlib.suppress(OSError):  # ended meanwhile
                    seen[t.name] = os.getpriority(os.PRIO_PROCESS, t.native_id)

    result = get(app, "a", progress=on_progress)
    assert result.verified
    assert {"vibrant-hash", "vibrant-download-0"} <= set(seen), seen
    assert all(nice == max(mine, BACKGROUND_NICE) for nice in seen.values()), seen
    # The caller's own thread (the server's worker, the CLI's main thread) is untouched.
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine


def test_split_model_lands_under_llama_cpp_names(hub: HubStub, paths: Paths) -> None:
    parts = [blob(MB, 1), blob(MB + 7, 2)]
    names = ["r-00001-of-00002.gguf", "r-00002-of-00002.gguf"]
    hub.add_repo("test/tiny", dict(zip(names, parts, strict=True)))
    split = {"id": "sp", "hf_repo": "test/tiny", "ram_required_mb": 1}
    app = make_app(paths, [{**split, "files": [{"filename": n} for n in names]}])
    result = get(app, "sp")
    assert [Path(p).name for p in result.paths] == [
        "sp-00001-of-00002.gguf",
        "sp-00002-of-00002.gguf",
    ]
    for p, d in zip(result.paths, parts, strict=True):
        assert Path(p).read_bytes() == d
    entry = app.cache.get("sp")
    assert entry is not None and [f.sha256 for f in entry.files] == [sha(d) for d in parts]


def test_resume_after_connection_drops(hub: HubStub, paths: Paths) -> None:
    data = blob(2 * MB)
    hub.add_repo("test/tiny", {"a.gguf": data})
    app = make_app(paths, [tiny_model("a")], download_connections=1)
    hub.faults.drop_after_bytes = 700_000
    hub.faults.drop_count = 2
    result = get(app, "a")
    assert Path(result.paths[0]).read_bytes() == data
    ranges = [r.range for r in hub.requests if r.host == "cdn"]
    assert ranges[0] == "bytes=0-1999999" and ranges[1] == "bytes=700000-1999999"
    assert cdn_bytes(hub) == len(data)  # nothing fetched twice


def test_cancel_keeps_partial_and_resume_fetches_only_the_rest(hub: HubStub, paths: Paths) -> None:
    import threading

    data = blob(4 * MB)
    hub.add_repo("test/tiny", {"a.gguf": data})
    app = make_app(paths, [tiny_model("a")])
    hub.faults.throttle_bps = 2 * MB
    cancel = threading.Event()

    def on_progress(p: Progress) -> None:
        if p.downloaded_bytes > 1 * MB:
            cancel.set()

    with pytest.raises(Cancelled, match="kept"):
        get(app, "a", progress=on_progress, cancel=cancel)
    partial = app.cache.partials()
    assert len(partial) == 1 and 0 < partial[0].downloaded_bytes < len(data)
    kept = partial[0].downloaded_bytes
    hub.faults.throttle_bps = None
    hub.reset_stats()
    result = get(app, "a")
    assert Path(result.paths[0]).read_bytes() == data
    assert cdn_bytes(hub) <= len(data) - kept + 4 * 256 * KiB


def test_corrupted_byte_is_downloaded_once_more(hub: HubStub, paths: Paths) -> None:
    data = blob(MB)
    hub.add_repo("test/tiny", {"a.gguf": data})
    app = make_app(paths, [tiny_model("a")])
    hub.faults.corrupt_offset = 12345
    hub.faults.corrupt_count = 1
    result = get(app, "a")
    assert Path(result.paths[0]).read_bytes() == data
    assert cdn_bytes(hub) == 2 * len(data)


def test_persistent_corruption_is_the_checksum_error(hub: HubStub, paths: Paths) -> None:
    data = blob(MB)
    hub.add_repo("test/tiny", {"a.gguf": data})
    app = make_app(paths, [tiny_model("a"), tiny_model("b")])
    put_cached(app.cache, "b", 100)
    hub.faults.corrupt_offset = 999_999
    hub.faults.corrupt_count = 5
    with pytest.raises(ChecksumMismatchError) as info:
        get(app, "a")
    err = info.value
    assert err.details["expected"] == sha(data)
    assert err.details["actual"] != sha(data) and err.details["actual"] in err.message
    assert not (paths.models / "a.gguf").exists()
    assert [e.id for e in app.cache.entries()] == ["b"]  # the cache is whole


def test_registry_sha_disagreeing_with_hub_is_a_hard_error(hub: HubStub, paths: Paths) -> None:
    hub.add_repo("test/tiny", {"a.gguf": blob(1000)})
    app = make_app(paths, [tiny_model("a", sha256="b" * 64)])
    with pytest.raises(ChecksumMismatchError) as info:
        get(app, "a")
    assert "b" * 64 in info.value.message and sha(blob(1000)) in info.value.message
    assert not [r for r in hub.requests if r.host == "cdn"]


def test_server_ignoring_range_restarts_cleanly(hub: HubStub, paths: Paths) -> None:
    data = blob(2 * MB)
    hub.add_repo("test/tiny", {"a.gguf": data})
    app = make_app(paths, [tiny_model("a")], download_connections=1)
    hub.faults.drop_after_bytes = 500_000
    hub.faults.drop_count = 1
    hub.faults.ignore_range = True
    result = get(app, "a")
    assert Path(result.paths[0]).read_bytes() == data
    cdn = [r for r in hub.requests if r.host == "cdn"]
    assert [r.status for r in cdn] == [200, 200, 200]
    # the resume asked for a range, got the whole file, and started over from byte 0
    assert [r.range for r in cdn] == ["bytes=0-1999999", "bytes=500000-1999999", "bytes=0-1999999"]


def test_503_and_429_with_retry_after(hub: HubStub, paths: Paths) -> None:
    data = blob(MB)
    hub.add_repo("test/tiny", {"a.gguf": data})
    app = make_app(paths, [tiny_model("a")])
    hub.faults.status_sequence = [503, 429]
    hub.faults.retry_after = 7
    hub.faults.status_target = "both"
    sleeps = Sleeps()
    result = get(app, "a", d=downloader(app, sleep=sleeps))
    assert Path(result.paths[0]).read_bytes() == data
    assert len(sleeps.calls) == 2 and all(s >= 7 for s in sleeps.calls)


def test_persistent_503_fails_keeping_nothing_broken(hub: HubStub, paths: Paths) -> None:
    hub.add_repo("test/tiny", {"a.gguf": blob(MB)})
    app = make_app(paths, [tiny_model("a")])
    hub.faults.status_sequence = [503] * 10
    with pytest.raises(HubUnreachableError, match="3 attempts"):
        get(app, "a")


def test_stalled_connection_is_cut_and_resumed(hub: HubStub, paths: Paths) -> None:
    import time

    data = blob(MB)
    hub.add_repo("test/tiny", {"a.gguf": data})
    app = make_app(paths, [tiny_model("a")], download_idle_timeout_s=0.5)
    hub.faults.stall_after_bytes = 300_000
    hub.faults.stall_seconds = 20
    hub.faults.stall_count = 1
    t0 = time.monotonic()
    result = get(app, "a")
    assert time.monotonic() - t0 < 10
    assert Path(result.paths[0]).read_bytes() == data


def test_gated_repo_needs_the_token_which_never_reaches_the_cdn(
    hub: HubStub, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = blob(MB)
    hub.add_repo("test/tiny", {"a.gguf": data}, gated=True, token="hf_secret")
    app = make_app(paths, [tiny_model("a")])
    with pytest.raises(GatedRepoError) as info:
        get(app, "a")
    assert "HF_TOKEN" in str(info.value) and "restricted" in info.value.message
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(GatedRepoError, match="403"):
        get(app, "a")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    hub.reset_stats()
    assert Path(get(app, "a").paths[0]).read_bytes() == data
    # (records land when a response ends, so the earlier refusals may trail in: skip them)
    endpoint = [r for r in hub.requests if r.host == "endpoint" and r.status == 302]
    cdn = [r for r in hub.requests if r.host == "cdn"]
    assert endpoint and all(r.headers.get("authorization") == "Bearer hf_secret" for r in endpoint)
    assert cdn and all("authorization" not in r.headers for r in cdn)


def test_token_file_from_huggingface_login(
    hub: HubStub, paths: Paths, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hub.add_repo("test/tiny", {"a.gguf": blob(1000)}, gated=True, token="hf_file")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "token").write_text("hf_file\n")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    app = make_app(paths, [tiny_model("a")])
    assert get(app, "a").size_bytes == 1000


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"hf_repo": "test/nope"}, "The repository test/nope does not exist"),
        ({"revision": "v9"}, "The revision 'v9' does not exist in test/tiny"),
        ({"filename": "missing.gguf"}, "missing.gguf does not exist in test/tiny"),
    ],
)
def test_404s_name_what_is_missing(
    hub: HubStub, paths: Paths, entry: dict[str, Any], words: str
) -> None:
    hub.add_repo("test/tiny", {"a.gguf": blob(1000)})
    app = make_app(paths, [tiny_model("a", **entry)])
    with pytest.raises(DownloadFailedError) as info:
        get(app, "a")
    assert words in info.value.message
    assert info.value.details["status"] == 404
    assert not paths.models.joinpath("a.gguf").exists()


def test_full_disk_says_how_much_and_where(hub: HubStub, tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        paths = Paths(mnt / "home")
        hub.add_repo("test/tiny", {"a.gguf": blob(6 * MB)})
        app = make_app(paths, [tiny_model("a")])
        with pytest.raises(DiskFullError) as info:
            get(app, "a")
        msg = info.value.message
        assert str(paths.models) in msg and "is needed" in msg and "free" in msg
        assert not [r for r in hub.requests if r.host == "cdn"]  # refused before fetching
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_cache_limit_prunes_lru_first_and_says_which(hub: HubStub, paths: Paths) -> None:
    from datetime import timedelta

    from vibrant_rpc.cache.manifest import utcnow

    hub.add_repo("test/tiny", {"a.gguf": blob(MB)})
    app = make_app(
        paths, [tiny_model("a"), tiny_model("old"), tiny_model("new")], cache_size_limit=1_600_000
    )
    put_cached(app.cache, "old", 500_000, last_used=utcnow() - timedelta(days=9))
    put_cached(app.cache, "new", 500_000, last_used=utcnow())
    result = get(app, "a")
    assert result.pruned == ["old"]
    assert sorted(e.id for e in app.cache.entries()) == ["a", "new"]
    app.cache.max_bytes = 1_200_000
    hub.add_repo("test/big", {"b.gguf": blob(2 * MB)})
    write_registry(paths, [tiny_model("a"), tiny_model("new"), tiny_model("b", hf_repo="test/big")])
    app2 = make_app(
        paths,
        [tiny_model("a"), tiny_model("new"), tiny_model("b", hf_repo="test/big")],
        cache_size_limit=1_200_000,
    )
    with pytest.raises(CacheFullError):
        get(app2, "b")


def test_offline_mode_makes_no_request(
    hub: HubStub, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("test/tiny", {"a.gguf": blob(1000), "b.gguf": blob(1000, 2)})
    app = make_app(paths, [tiny_model("a"), tiny_model("b")])
    get(app, "a")
    hub.reset_stats()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert get(app, "a").size_bytes == 1000  # cached models work
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE"):
        get(app, "b")
    assert hub.requests == []


def test_changed_upstream_file_restarts_instead_of_splicing(hub: HubStub, paths: Paths) -> None:
    import threading

    old, new = blob(3 * MB, 1), blob(3 * MB, 2)
    hub.add_repo("test/tiny", {"a.gguf": old})
    app = make_app(paths, [tiny_model("a")])
    hub.faults.throttle_bps = 2 * MB
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        get(
            app,
            "a",
            cancel=cancel,
            progress=lambda p: cancel.set() if p.downloaded_bytes > MB else None,
        )
    assert app.cache.partials()[0].downloaded_bytes > 0
    new_commit = hub.publish("test/tiny", {"a.gguf": new})
    hub.faults.throttle_bps = None
    hub.reset_stats()
    result = get(app, "a")
    assert Path(result.paths[0]).read_bytes() == new
    assert result.revision == new_commit
    # the whole new file was asked for again, nothing spliced from the old one
    asked = [r.range or "" for r in hub.requests if r.path.startswith(f"/blobs/{sha(new)}")]
    spans = sorted(tuple(int(x) for x in a.removeprefix("bytes=").split("-")) for a in asked)
    assert spans[0][0] == 0 and sum(e - s + 1 for s, e in spans) == len(new)


def test_cli_download_json_lines(hub: HubStub, paths: Paths) -> None:
    data = blob(2 * MB)
    hub.add_repo("test/tiny", {"a.gguf": data})
    write_registry(paths, [tiny_model("a")])
    exe = Path(os.sys.executable).parent / "vibrant"  # type: ignore[attr-defined]
    r = subprocess.run(
        [str(exe), "model", "download", "a", "--json"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert lines[0]["event"] == "progress" and lines[0]["state"] == "resolving"
    assert lines[-2]["state"] == "done" and lines[-2]["downloaded_bytes"] == len(data)
    assert lines[-1]["sha256"] == sha(data)
    r = subprocess.run([str(exe), "model", "download", "nope"], capture_output=True, text=True)
    assert r.returncode == 1 and "Unknown model" in r.stderr


# -- whole processes -------------------------------------------------------------------------


def _config(paths: Paths, **extra: object) -> None:
    paths.home.mkdir(parents=True, exist_ok=True)
    lines = {"download_idle_timeout_s": 2.0, "download_retry_base_s": 0.05, **extra}
    text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in lines.items())
    paths.config.write_text(text)


def _cli(*args: str) -> list[str]:
    return [str(Path(os.sys.executable).parent / "vibrant"), *args]  # type: ignore[attr-defined]


def test_resume_after_sigkill_at_random_points(hub: HubStub, paths: Paths) -> None:
    import random
    import signal
    import time

    data = blob(12 * MB)
    hub.add_repo("test/tiny", {"a.gguf": data})
    write_registry(paths, [tiny_model("a")])
    _config(paths, download_block_size="512KiB")
    hub.faults.throttle_bps = 1 * MB  # per connection: 4 connections, ~3 s for the file
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(
            _cli("model", "download", "a", "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        time.sleep(rng.uniform(0.5, 1.2))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        partial = Vibrant(paths).cache.partials()
        assert proc.returncode == -signal.SIGKILL or not partial
    assert kills >= 2
    hub.faults.throttle_bps = None
    r = subprocess.run(
        _cli("model", "download", "a", "--json"), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert (paths.models / "a.gguf").read_bytes() == data
    assert json.loads(r.stdout.splitlines()[-1])["sha256"] == sha(data)
    # every kill lost at most what was in flight: far less than a restart each time
    assert hub.bytes_served < len(data) + kills * 4 * 512 * KiB + 2 * MB
    assert not paths.partial_dir("a").exists()


def test_two_processes_one_transfer(hub: HubStub, paths: Paths) -> None:
    data = blob(3 * MB)
    hub.add_repo("test/tiny", {"a.gguf": data})
    write_registry(paths, [tiny_model("a")])
    _config(paths)
    hub.faults.throttle_bps = MB  # one connection, ~3 s: the second process finds it running
    procs = [
        subprocess.Popen(
            _cli("model", "download", "a", "--json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [json.loads(o[0].splitlines()[-1]) for o in outs]
    same = ("paths", "sha256", "revision", "size_bytes")
    assert [{k: r[k] for k in same} for r in results] == [{k: results[0][k] for k in same}] * 2
    assert results[0]["sha256"] == sha(data)
    # one transferred (and verified); the other waited and got the cached result
    assert sorted(r["cached"] for r in results) == [False, True]
    assert hub.bytes_served == len(data)  # exactly one process transferred it
    states = [{json.loads(line).get("state") for line in o[0].splitlines()[:-1]} for o in outs]
    assert any("waiting" in s for s in states)  # the other one waited for it


def test_ctrl_c_says_it_will_resume_and_keeps_the_partial(hub: HubStub, paths: Paths) -> None:
    import signal
    import time

    data = blob(8 * MB)
    hub.add_repo("test/tiny", {"a.gguf": data})
    write_registry(paths, [tiny_model("a")])
    _config(paths)
    hub.faults.throttle_bps = 2 * MB
    proc = subprocess.Popen(
        _cli("model", "download", "a"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "run the same command again to resume" in err and "Traceback" not in err
    partial = Vibrant(paths).cache.partials()
    assert partial and partial[0].downloaded_bytes > MB
    r = subprocess.run(_cli("model", "list"), capture_output=True, text=True)
    assert "partial" in r.stdout and "a" in r.stdout


# -- how the connections share the work ----------------------------------------------------


def test_batched_hands_over_what_arrived_before_an_error() -> None:
    from vibrant_rpc.download.blocks import batched

    def reads() -> Iterator[bytes]:
        yield b"a" * 10
        yield b"b" * 10
        raise ConnectionResetError("dropped")

    got: list[bytes] = []
    with pytest.raises(ConnectionResetError):
        for piece in batched(reads(), 1000):
            got.append(piece)
    assert got == [b"a" * 10 + b"b" * 10]
    assert list(batched(iter([b"x"] * 5), 2)) == [b"xx", b"xx", b"x"]


def test_blocks_are_equal_and_a_multiple_of_the_connections(hub: HubStub, paths: Paths) -> None:
    import threading

    from vibrant_rpc.cache.partials import FileProgress
    from vibrant_rpc.download.transfer import FileTransfer, TransferConfig

    fp = FileProgress(name="x", remote_filename="x", size_bytes=253_113_024)
    t = FileTransfer(
        None,  # type: ignore[arg-type]
        lambda refresh: "",
        paths.home / "x.part",
        fp,
        253_113_024,
        TransferConfig(connections=4, block_size=16 * 1024 * 1024),
        threading.Event(),
        lambda n: None,
        lambda: None,
    )
    blocks = t._plan(4)
    assert len(blocks) == 16 and blocks[0].start == 0 and blocks[-1].end == 253_113_024
    sizes = {b.end - b.start for b in blocks}
    assert max(sizes) - min(sizes) <= 1


def test_an_idle_connection_takes_over_half_of_a_slow_block(hub: HubStub, paths: Paths) -> None:
    data = blob(24 * MB)
    hub.add_repo("test/tiny", {"a.gguf": data})
    app = make_app(paths, [tiny_model("a")], download_connections=3, download_idle_timeout_s=5.0)
    d = downloader(app, block=8 * MB)
    # one response goes silent for a while after 1 MB: the other two connections finish
    # their blocks and split what the silent one has left
    hub.faults.throttle_bps = 8 * MB
    hub.faults.stall_after_bytes = MB
    hub.faults.stall_seconds = 2.5
    hub.faults.stall_count = 1
    result = get(app, "a", d=d)
    assert Path(result.paths[0]).read_bytes() == data
    starts = {
        int(r.range.removeprefix("bytes=").split("-")[0])
        for r in hub.requests
        if r.host == "cdn" and r.range
    }
    planned = {0, 8 * MB, 16 * MB}
    resumed = {p + MB for p in planned}  # where the silent response is picked up again
    assert starts - planned - resumed, f"no block was split: {sorted(starts)}"


def test_a_small_non_lfs_file_served_by_the_endpoint_itself(hub: HubStub, paths: Paths) -> None:
    # Small git files are answered by the Hub directly (200, a git sha1 ETag, no
    # X-Linked-Etag): no SHA-256 from the Hub, so the one computed is recorded.
    data = b'{"tiny": "config"}\n' * 50
    hub.add_repo("test/tiny", {"a.gguf": data}, non_lfs=["a.gguf"])
    app = make_app(paths, [tiny_model("a")])
    result = get(app, "a")
    assert Path(result.paths[0]).read_bytes() == data
    assert result.sha256 == sha(data)
    entry = app.cache.get("a")
    assert entry is not None and entry.checksum == f"sha256:{sha(data)}"
    assert not [r for r in hub.requests if r.host == "cdn"]


class _Proxy:
    """A tiny forwarding HTTP proxy on loopback that records what went through it."""

    def __init__(self) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        seen: list[str] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                url = urlsplit(self.path)
                seen.append(f"{self.command} {url.netloc}")
                assert url.hostname is not None
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
                headers = {
                    k: v for k, v in self.headers.items() if not k.lower().startswith("proxy")
                }
                conn.request(
                    self.command, url.path + (f"?{url.query}" if url.query else ""), headers=headers
                )
                resp = conn.getresponse()
                body = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                conn.close()

            do_GET = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_downloads_go_through_the_proxy_from_the_environment(
    hub: HubStub, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = blob(MB)
    hub.add_repo("test/tiny", {"a.gguf": data})
    proxy = _Proxy()
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "")
        app = make_app(paths, [tiny_model("a")])
        result = get(app, "a")
    finally:
        proxy.close()
    assert Path(result.paths[0]).read_bytes() == data
    endpoint_host = hub.endpoint.removeprefix("http://")
    cdn_host = hub.cdn.removeprefix("http://")
    assert f"HEAD {endpoint_host}" in proxy.seen
    assert f"GET {cdn_host}" in proxy.seen


def test_an_expired_signed_url_is_resolved_again(hub: HubStub, paths: Paths) -> None:
    # Signed CDN URLs expire; a long download must fetch a fresh one, not fail.
    data = blob(4 * MB)
    hub.add_repo("test/tiny", {"a.gguf": data})
    app = make_app(paths, [tiny_model("a")], download_connections=2)
    d = downloader(app, block=MB)
    hub.faults.redirect_expires_s = 1
    hub.faults.throttle_bps = 1 * MB  # 2 MB/s in all: the first URL expires on the way
    result = get(app, "a", d=d)
    assert Path(result.paths[0]).read_bytes() == data
    resolves = [r for r in hub.requests if r.host == "endpoint" and "/resolve/" in r.path]
    refused = [r for r in hub.requests if r.host == "cdn" and r.status == 403]
    assert refused and len(resolves) >= 2
    assert hub.bytes_served == len(data)  # the refusals cost no bytes


def test_cli_download_auto_fetches_the_model_this_machine_gets(hub: HubStub, paths: Paths) -> None:
    from vibrant_rpc.registry import Registry

    data = blob(MB)
    hub.add_repo("test/tiny", {"a.gguf": data})
    # The embedded models are set aside (deprecated: never selected) so that the choice
    # for this machine is the tiny one.
    retired = [
        {"id": m.id, "hf_repo": m.hf_repo, "filename": m.files[0].filename,
         "ram_required_mb": m.ram_required_mb, "deprecated": True}
        for m in Registry.embedded()
    ]  # fmt: skip
    write_registry(paths, [*retired, tiny_model("a", recommended=True)])
    r = subprocess.run(_cli("model", "download", "auto"), capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "This machine gets a:" in r.stdout and "usable" in r.stdout
    assert (paths.models / "a.gguf").read_bytes() == data


def test_progress_and_info_say_which_source_served_a_file(hub: HubStub, paths: Paths) -> None:
    hub.add_repo("test/tiny", {"a.gguf": blob(2 * MB)})
    app = make_app(paths, [tiny_model("a")])
    seen: list[Progress] = []
    get(app, "a", progress=seen.append)
    host = hub.endpoint.split("://", 1)[1]
    assert {p.source for p in seen if p.state == "downloading"} == {host}, seen
    info = Vibrant(paths).model_info("a")
    assert info.sources == {"a.gguf": host}
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "vibrant"), "model", "info", "a"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    line = next(ln for ln in shown.stdout.splitlines() if "from (a.gguf)" in ln)
    assert host in line, shown.stdout
