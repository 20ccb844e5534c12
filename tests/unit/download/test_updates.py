"""Updates against the loopback Hub stand-in publishing new commits."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.support.helpers import tiny_model, write_registry
from tests.support.hub_stub import HubStub
from tests.unit.download.test_download import blob, sha
from vibrant_rpc.app import Vibrant
from vibrant_rpc.cache.manifest import utcnow
from vibrant_rpc.config import load_settings
from vibrant_rpc.download.updates import UpdateSchedule, read_update_state
from vibrant_rpc.errors import Cancelled, OfflineError, VibrantError
from vibrant_rpc.paths import Paths

pytestmark = pytest.mark.hub

MB = 1_000_000


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStub]:
    with HubStub() as stub:
        monkeypatch.setenv("HF_ENDPOINT", stub.endpoint)
        yield stub


def app_for(paths: Paths, *models: dict[str, object]) -> Vibrant:
    write_registry(paths, list(models))
    return Vibrant(paths, load_settings(None, {"download_retry_base_s": 0.01}))


def vibrant_cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "vibrant")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def test_changed_file_is_an_update_swapped_after_verification(hub: HubStub, paths: Paths) -> None:
    old, new = blob(MB, 1), blob(MB + 5, 2)
    first = hub.add_repo("test/tiny", {"a.gguf": old, "README.md": b"hi"})
    app = app_for(paths, tiny_model("a"))
    app.download("a")
    assert app.check_updates().updates == []
    second = hub.publish("test/tiny", {"a.gguf": new})
    check = app.check_updates()
    [update] = check.updates
    assert (update.model_id, update.current_revision, update.latest_revision) == (
        "a",
        first,
        second,
    )
    assert update.size_bytes == len(new) and update.changed_files == ["a.gguf"]
    r = vibrant_cli("model", "update", "--check")
    assert r.returncode == 0 and "a" in r.stdout and first[:8] in r.stdout
    assert second[:8] in r.stdout and "976.6 KiB" in r.stdout
    assert (paths.models / "a.gguf").read_bytes() == old  # checking downloads nothing
    result = app.update_model("a")
    assert result.revision == second and result.sha256 == sha(new)
    assert (paths.models / "a.gguf").read_bytes() == new
    entry = app.cache.get("a")
    assert entry is not None and entry.revision == second
    assert [v.revision for v in entry.versions] == [first, second]
    assert read_update_state(app.paths.state).available == []
    assert app.check_updates().updates == []


def test_new_commit_without_change_only_moves_the_recorded_commit(
    hub: HubStub, paths: Paths
) -> None:
    hub.add_repo("test/tiny", {"a.gguf": blob(MB), "b.gguf": blob(MB, 3)})
    app = app_for(paths, tiny_model("a"))
    app.download("a")
    second = hub.publish("test/tiny", {"b.gguf": blob(MB, 4)})
    hub.reset_stats()
    check = app.check_updates()
    assert check.updates == [] and check.moved == ["a"]
    entry = app.cache.get("a")
    assert entry is not None and entry.revision == second
    assert not [r for r in hub.requests if r.host == "cdn"]  # nothing downloaded


def test_pinned_entries_never_update(hub: HubStub, paths: Paths) -> None:
    first = hub.add_repo("test/tiny", {"a.gguf": blob(MB)})
    app = app_for(paths, tiny_model("a", revision=first), tiny_model("b", filename="a.gguf"))
    app.download("a")
    hub.publish("test/tiny", {"a.gguf": blob(MB, 9)})
    hub.reset_stats()
    check = app.check_updates(["a"])
    assert check.updates == [] and check.pinned == ["a"]
    assert hub.requests == []
    with pytest.raises(VibrantError, match="pinned"):
        app.update_model("a")


def test_interrupted_update_keeps_the_old_model_and_resumes(hub: HubStub, paths: Paths) -> None:
    old, new = blob(2 * MB, 1), blob(4 * MB, 2)
    hub.add_repo("test/tiny", {"a.gguf": old})
    app = app_for(paths, tiny_model("a"))
    app.download("a")
    path = paths.models / "a.gguf"
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as loaded:
        hub.publish("test/tiny", {"a.gguf": new})
        hub.faults.throttle_bps = 2 * MB
        cancel = threading.Event()
        with pytest.raises(Cancelled):
            app.update_model(
                "a",
                progress=lambda p: cancel.set() if p.downloaded_bytes > MB else None,
                cancel=cancel,
            )
        assert path.read_bytes() == old  # the old model still works
        assert app.cache.verify("a").checksum == f"sha256:{sha(old)}"
        partial = app.cache.partials()[0]
        assert partial.downloaded_bytes >= MB
        hub.faults.throttle_bps = None
        result = app.update_model("a")
        assert path.read_bytes() == new
        assert result.sha256 == sha(new)
        # a model loaded (mapped) before the swap keeps its old bytes until its next load
        assert loaded[:100] == old[:100] and len(loaded) == len(old)
    new_blob = [r for r in hub.requests if r.path.startswith(f"/blobs/{sha(new)}")]
    spans = [
        tuple(int(x) for x in (r.range or "").removeprefix("bytes=").split("-")) for r in new_blob
    ]
    resumed = [s for s in spans if s[0] > 0]
    assert resumed, "the second attempt resumed instead of starting over"


def test_weekly_schedule_with_an_injected_clock(hub: HubStub, paths: Paths) -> None:
    hub.add_repo("test/tiny", {"a.gguf": blob(1000)})
    app = app_for(paths, tiny_model("a"))
    app.download("a")
    now = utcnow()
    clock = [now]
    schedule = UpdateSchedule(app.updates, clock=lambda: clock[0])
    assert schedule.due()
    assert schedule.run_if_due() is not None
    assert read_update_state(app.paths.state).last_update_check == now
    clock[0] = now + timedelta(days=6, hours=23)
    assert not schedule.due() and schedule.run_if_due() is None
    clock[0] = now + timedelta(days=7)
    assert schedule.due()
    hub.publish("test/tiny", {"a.gguf": blob(2000, 5)})
    check = schedule.run_if_due()
    assert check is not None and [u.model_id for u in check.updates] == ["a"]
    assert [u.model_id for u in read_update_state(app.paths.state).available] == ["a"]


def test_offline_makes_no_request_at_all(
    hub: HubStub, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("test/tiny", {"a.gguf": blob(1000)})
    app = app_for(paths, tiny_model("a"))
    app.download("a")
    hub.reset_stats()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not UpdateSchedule(app.updates).due()
    assert UpdateSchedule(app.updates).run_if_due() is None
    with pytest.raises(OfflineError):
        app.check_updates()
    r = vibrant_cli("model", "update", "--check")
    assert r.returncode == 1 and "HF_HUB_OFFLINE" in r.stderr
    assert hub.requests == []


def test_cli_update_all_and_json(hub: HubStub, paths: Paths) -> None:
    hub.add_repo("test/tiny", {"a.gguf": blob(1000)})
    write_registry(paths, [tiny_model("a")])
    assert vibrant_cli("model", "download", "a").returncode == 0
    assert "up to date" in vibrant_cli("model", "update").stdout
    hub.publish("test/tiny", {"a.gguf": blob(3000, 6)})
    r = vibrant_cli("model", "update")
    assert "Run `vibrant model update --all`" in r.stdout
    r = vibrant_cli("model", "update", "--all", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["sha256"] == sha(blob(3000, 6))
    r = vibrant_cli("model", "info", "a")
    assert "version 2" in r.stdout
    r = vibrant_cli("model", "update", "nope")
    assert r.returncode == 1 and "Unknown model" in r.stderr
    assert os.path.getsize(paths.models / "a.gguf") == 3000
