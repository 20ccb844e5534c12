"""The header store: a cached file's header, the Hub's by Range, the registry's numbers."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gguf_fixtures import GEMMA_SIZE, gemma_path, gemma_split_paths, tiny_fim_path
from tests.support.helpers import GEMMA_ARCH, write_registry
from tests.support.hub_stub import HubStub
from vibrant_rpc.app import Vibrant
from vibrant_rpc.config import Settings
from vibrant_rpc.download.sources import HeaderHub
from vibrant_rpc.fit import headers as headers_module
from vibrant_rpc.fit.headers import HUB_RECHECK_S, HeaderStore, header_for
from vibrant_rpc.gguf.header import RANGE_LIMIT_BYTES, read_header
from vibrant_rpc.paths import Paths
from vibrant_rpc.registry import ModelInfo

pytestmark = pytest.mark.hub

REPO = "test/gemma"
SPLIT_REPO = "test/gemma-split"


def entry(model_id: str, repo: str = REPO, files: int = 1, **extra: Any) -> dict[str, Any]:
    names = ["gemma.gguf"] if files == 1 else [p.name for p in gemma_split_paths(files)]
    return {
        "id": model_id,
        "hf_repo": repo,
        "ram_required_mb": 500,
        "files": [{"filename": n} for n in names],
        "file_size_mb": GEMMA_SIZE // 2**20,
        "architecture": GEMMA_ARCH,
        **extra,
    }


def vibrant(paths: Paths, *models: dict[str, Any]) -> Vibrant:
    write_registry(paths, list(models))
    return Vibrant(paths)


def model(v: Vibrant, model_id: str) -> ModelInfo:
    return v.registry.get(model_id)


def place(src: Path, dest: Path) -> None:
    """Put a fixture into the cache folder: a hard link where the disk allows (a
    symbolic link is not adopted), else a copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


@pytest.fixture(scope="module")
def stub() -> Iterator[HubStub]:
    with HubStub() as hub:
        hub.add_repo(REPO, {"gemma.gguf": gemma_path()})
        hub.add_repo(SPLIT_REPO, {p.name: p for p in gemma_split_paths(2)})
        yield hub


@pytest.fixture
def hub(stub: HubStub, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStub]:
    monkeypatch.setenv("HF_ENDPOINT", stub.endpoint)
    stub.reset_faults()
    stub.reset_stats()
    yield stub
    stub.reset_faults()


def test_a_cached_file_is_read_once(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    v = vibrant(paths, entry("gemma"))
    place(gemma_path(), paths.models / "gemma.gguf")  # adopted into the manifest
    known = v.headers.known(model(v, "gemma"), fetch=False)
    assert known is not None and known.source == "file" and known.note is None
    assert known.header == read_header(gemma_path())
    assert (paths.models / ".headers" / "gemma.json").is_file()

    def no_read(path: Path) -> None:
        raise AssertionError(f"{path} read again")

    # a second look, even from another process's store, reads the record only
    monkeypatch.setattr(headers_module, "read_header", no_read)
    again = HeaderStore(paths, v.cache, None).known(model(v, "gemma"), fetch=False)
    assert again == known
    # a file changed in place (its modification time) is read again
    os.utime(paths.models / "gemma.gguf", ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(AssertionError, match="read again"):
        v.headers.known(model(v, "gemma"), fetch=False)


def test_a_cached_split_model_counts_every_shard(paths: Paths) -> None:
    v = vibrant(paths, entry("gs", SPLIT_REPO, files=2))
    m = model(v, "gs")
    for src, name in zip(gemma_split_paths(2), m.local_filenames(), strict=True):
        place(src, paths.models / name)
    known = v.headers.known(m, fetch=False)
    assert known is not None and known.source == "file"
    whole = read_header(gemma_path())
    assert known.header.tensor_count == whole.tensor_count
    assert known.header.weight_bytes == whole.weight_bytes


def test_fetched_by_range_then_kept(paths: Paths, hub: HubStub) -> None:
    v = vibrant(paths, entry("gemma"))
    started = time.monotonic()
    known = v.headers.known(model(v, "gemma"), fetch=True)
    took = time.monotonic() - started
    assert known is not None and known.source == "hub", known
    assert known.header == read_header(gemma_path())
    assert known.commit == hub.head(REPO)
    # Gemma's 262k-token vocabulary: a 6.5 MB header, out of a 253 MB file
    moved = hub.bytes_served
    assert 6_000_000 < moved <= RANGE_LIMIT_BYTES and moved < GEMMA_SIZE / 20, moved
    ranges = [r.range for r in hub.requests if r.host == "cdn"]
    assert ranges and all(r is not None for r in ranges), ranges
    print(f"header fetched: {moved} bytes in {len(ranges)} ranges, {took:.2f} s")

    # kept in models/.headers: a later look, in a new process, needs no network
    hub.stop()
    try:
        later = Vibrant(paths).headers.known(model(v, "gemma"), fetch=True)
    finally:
        hub.start()
    assert later == known


def test_the_downloads_sources_are_tried_in_order(paths: Paths, hub: HubStub) -> None:
    # a team mirror that is down, then the Hub: as a download would go
    write_registry(paths, [entry("gemma")])
    v = Vibrant(paths, Settings(sources=["http://127.0.0.1:9", hub.endpoint]))
    started = time.monotonic()
    known = v.headers.known(model(v, "gemma"), fetch=True)
    assert known is not None and known.source == "hub", known
    assert known.header == read_header(gemma_path())
    assert time.monotonic() - started < 2


def test_a_split_model_fetches_each_shards_header(paths: Paths, hub: HubStub) -> None:
    v = vibrant(paths, entry("gs", SPLIT_REPO, files=2))
    known = v.headers.known(model(v, "gs"), fetch=True)
    assert known is not None and known.source == "hub", known
    assert known.header == read_header(gemma_split_paths(2)[0])
    assert hub.bytes_served < 2 * RANGE_LIMIT_BYTES


def test_a_cdn_that_ignores_range_still_gives_the_header(paths: Paths, hub: HubStub) -> None:
    hub.set_faults(ignore_range=True)
    v = vibrant(paths, entry("gemma"))
    known = v.headers.known(model(v, "gemma"), fetch=True)
    assert known is not None and known.source == "hub", known
    assert known.header == read_header(gemma_path())


def test_a_damaged_record_is_fetched_again(paths: Paths, hub: HubStub) -> None:
    v = vibrant(paths, entry("gemma"))
    first = v.headers.known(model(v, "gemma"), fetch=True)
    record = paths.models / ".headers" / "gemma.json"
    for damage in (b'{"source": "hub", "key": 3', b"\x00" * 40, b"[]"):
        record.write_bytes(damage)
        hub.reset_stats()
        again = v.headers.known(model(v, "gemma"), fetch=True)
        assert again == first and hub.bytes_served > 0
        assert record.read_bytes() != damage


def test_a_record_for_another_revision_is_not_used(paths: Paths, hub: HubStub) -> None:
    v = vibrant(paths, entry("gemma"))
    assert v.headers.known(model(v, "gemma"), fetch=True) is not None
    pinned = vibrant(paths, entry("gemma", revision=hub.head(REPO)))
    hub.reset_stats()
    known = pinned.headers.known(model(pinned, "gemma"), fetch=True)
    assert known is not None and known.source == "hub" and hub.bytes_served > 0


def age(record: Path, seconds: float) -> None:
    """Make a kept Hub header look checked ``seconds`` ago."""
    data = json.loads(record.read_text())
    data["fetched_at"] -= seconds
    record.write_text(json.dumps(data))


def test_a_hub_header_is_checked_again_after_a_week(paths: Paths, hub: HubStub) -> None:
    repo = "test/gemma-moving"
    first_commit = hub.add_repo(repo, {"gemma.gguf": gemma_path()})
    v = vibrant(paths, entry("moving", repo))
    m = model(v, "moving")
    first = v.headers.known(m, fetch=True)
    assert first is not None and first.commit == first_commit
    record = paths.models / ".headers" / "moving.json"
    # The branch moves to other files under the same name (quantised again).
    new_commit = hub.publish(repo, {"gemma.gguf": tiny_fim_path()})
    hub.reset_stats()
    # Within the week: the kept header, no network.
    assert v.headers.known(m, fetch=True) == first and hub.requests == []
    age(record, HUB_RECHECK_S - 60)
    assert v.headers.known(m, fetch=True) == first and hub.requests == []
    # Due, but the caller asked for no network: the kept header, still no network.
    age(record, 120)
    assert v.headers.known(m, fetch=False) == first and hub.requests == []
    # Due, and the Hub answering 500: the kept header, not the registry's numbers.
    hub.set_faults(status_sequence=[500] * 10, status_target="endpoint")
    assert v.headers.known(m, fetch=True) == first
    hub.reset_faults()
    # Due and checked: the new files' header, and the new commit.
    again = v.headers.known(m, fetch=True)
    assert again is not None and again.source == "hub" and again.commit == new_commit
    assert again.header == read_header(tiny_fim_path()) != first.header
    # Checked again a week later on the same commit: HEADs only, no header bytes moved.
    age(record, HUB_RECHECK_S + 1)
    hub.reset_stats()
    assert v.headers.known(m, fetch=True) == again
    assert hub.requests and not [r for r in hub.requests if r.host == "cdn"]
    assert json.loads(record.read_text())["fetched_at"] > time.time() - 60


def registry_answer(
    v: Vibrant, model_id: str, fetch: bool = True, store: HeaderStore | None = None
) -> tuple[str, float]:
    m = model(v, model_id)
    started = time.monotonic()
    known = (store or v.headers).known(m, fetch=fetch)
    took = time.monotonic() - started
    assert known is not None and known.source == "registry", known
    assert known.header == header_for(m)
    assert known.note is not None and "registry's architecture numbers" in known.note
    return known.note, took


def test_no_fetch_asked_answers_from_the_registry(paths: Paths, hub: HubStub) -> None:
    note, _ = registry_answer(vibrant(paths, entry("gemma")), "gemma", fetch=False)
    assert "not fetched" in note
    assert hub.requests == []


def test_offline_answers_from_the_registry(
    paths: Paths, hub: HubStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    note, _ = registry_answer(vibrant(paths, entry("gemma")), "gemma")
    assert note.startswith("offline (HF_HUB_OFFLINE is set)")
    assert hub.requests == []


def test_a_failing_hub_answers_from_the_registry_at_once(paths: Paths, hub: HubStub) -> None:
    v = vibrant(paths, entry("gemma"), entry("absent", "test/absent"))
    # Each of these is an answer, not the Hub out of reach: the next look asks again.
    hub.set_faults(status_sequence=[500] * 10, status_target="endpoint")
    note, took = registry_answer(v, "gemma")
    assert note.startswith("the Hub was unreachable (the Hub answered 500"), note
    assert took < 2, took
    assert not (paths.models / ".headers" / "gemma.json").exists()
    hub.reset_faults()
    # the CDN refusing, or closing the connection inside a range
    hub.set_faults(status_sequence=[503], status_target="cdn")
    note, took = registry_answer(v, "gemma")
    assert "127.0.0.2" in note and "503" in note and took < 2, note
    hub.reset_faults()
    hub.set_faults(drop_after_bytes=100_000, drop_count=1)
    note, took = registry_answer(v, "gemma")
    assert note.startswith("the Hub was unreachable (RemoteProtocolError") and took < 2, note
    hub.reset_faults()
    note, took = registry_answer(v, "absent")
    assert note.startswith("the Hub gave no header (The repository test/absent does not exist")
    assert took < 2, took


def test_an_unreachable_hub_answers_from_the_registry_at_once(paths: Paths) -> None:
    # conftest's HF_ENDPOINT: the discard port, which refuses the connection
    note, took = registry_answer(vibrant(paths, entry("gemma")), "gemma")
    assert note.startswith("the Hub was unreachable"), note
    assert took < 2, took


@pytest.fixture
def black_hole() -> Iterator[socket.socket]:
    """A listening socket nobody reads: the kernel completes the TCP handshake (the
    backlog), the request is sent, and no answer ever comes, as from a black-holed route."""
    with socket.create_server(("127.0.0.1", 0), backlog=32) as server:
        server.setblocking(False)
        yield server


def connections(server: socket.socket) -> int:
    """How many connections reached ``server`` since the last count."""
    n = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def test_a_hub_that_never_answers_is_not_asked_again_for_a_while(
    paths: Paths, black_hole: socket.socket, stub: HubStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = black_hole.getsockname()
    monkeypatch.setenv("HF_ENDPOINT", f"http://{host}:{port}")
    v = vibrant(paths, entry("gemma"), entry("other", "test/other"))
    store = HeaderStore(
        paths, v.cache, lambda: HeaderHub(v.downloader.hub_factory()), timeout=0.5, retry_after=2
    )
    note, took = registry_answer(v, "gemma", store=store)
    assert note.startswith("the Hub was unreachable (ReadTimeout"), note
    assert 0.45 < took < 2, took
    assert connections(black_hole) == 1
    # Every other look, for any model, skips the network and says why.
    for model_id in ("other", "gemma", "other"):
        note, took = registry_answer(v, model_id, store=store)
        assert took < 0.1, took
        assert note.startswith("the Hub was unreachable (ReadTimeout"), note
        assert re.search(r", \d+ s ago; not asked again for \d+ s: estimated from", note), note
    assert connections(black_hole) == 0
    # Another store (another process) has not seen the failure: it asks.
    other = HeaderStore(paths, v.cache, lambda: HeaderHub(v.downloader.hub_factory()), timeout=0.5)
    _, took = registry_answer(v, "other", store=other)
    assert took > 0.45 and connections(black_hole) == 1
    # Once the wait is over the Hub is asked again: here it answers, and is asked from then on.
    time.sleep(2.1)
    monkeypatch.setenv("HF_ENDPOINT", stub.endpoint)
    known = store.known(model(v, "gemma"), fetch=True)
    assert known is not None and known.source == "hub", known
    hub_note, took = registry_answer(v, "other", store=store)
    assert hub_note.startswith("the Hub gave no header (The repository test/other"), hub_note
    assert connections(black_hole) == 0


def test_sources_none_of_which_answers_are_not_asked_again(paths: Paths) -> None:
    write_registry(paths, [entry("gemma"), entry("other", "test/other")])
    v = Vibrant(paths, Settings(sources=["http://127.0.0.1:9", "http://127.0.0.1:7"]))
    note, _ = registry_answer(v, "gemma")
    assert note.startswith("the Hub was unreachable (no source answered: 127.0.0.1:9"), note
    note, _ = registry_answer(v, "other")
    assert "s ago; not asked again for " in note, note


def test_no_facts_and_not_cached_is_unknown(paths: Paths, hub: HubStub) -> None:
    bare = entry("bare", files=1)
    del bare["architecture"]
    v = vibrant(paths, bare, entry("sizeless", file_size_mb=None))
    assert v.headers.known(model(v, "bare"), fetch=False) is None
    hub.set_faults(status_sequence=[500] * 10, status_target="endpoint")
    assert v.headers.known(model(v, "bare"), fetch=True) is None
    # facts but no size: the weights would count as nothing, so no header either
    assert v.headers.known(model(v, "sizeless"), fetch=False) is None
