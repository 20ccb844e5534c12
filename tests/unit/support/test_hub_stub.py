"""Tests for the loopback Hub stand-in (tests/support/hub/, through its face hub_stub.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.hub_stub import Faults, HubStub

pytestmark = pytest.mark.hub

REPO = "acme/tiny-GGUF"
DATA = bytes(range(256)) * 40  # 10240 bytes
SMALL = b"hello world\n" * 10


@pytest.fixture
def stub() -> Iterator[HubStub]:
    with HubStub() as s:
        yield s


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, follow_redirects=False, timeout=10) as c:
        yield c


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _cdn_url(stub: HubStub, client: httpx.Client, repo: str, fname: str, rev: str = "main") -> str:
    r = client.head(stub.resolve_url(repo, fname, rev))
    assert r.status_code == 302, r.headers
    return r.headers["location"]


def _read_until_error(client: httpx.Client, url: str, **kw: object) -> tuple[bytes, Exception]:
    got = bytearray()
    with pytest.raises(httpx.HTTPError) as ei, client.stream("GET", url, **kw) as r:  # type: ignore[arg-type]
        for chunk in r.iter_raw():
            got += chunk
    return bytes(got), ei.value


# ---------------------------------------------------------------------------


def test_resolve_redirect_headers_and_cdn_get(stub: HubStub, client: httpx.Client) -> None:
    commit = stub.add_repo(REPO, {"m.gguf": DATA})
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    url = stub.resolve_url(REPO, "m.gguf")
    assert url.startswith(stub.endpoint + "/")
    for method in ("HEAD", "GET"):
        r = client.request(method, url, headers={"Accept-Encoding": "identity"})
        assert r.status_code == 302
        h = r.headers
        assert h["x-repo-commit"] == commit
        assert h["x-linked-etag"] == f'"{_sha(DATA)}"'
        assert int(h["x-linked-size"]) == len(DATA)
        assert h["etag"].strip('"') != _sha(DATA)
        assert re.fullmatch(r'"[0-9a-f]{40}"', h["etag"])
        assert int(h["content-length"]) != len(DATA)
        assert int(h["content-length"]) < 300
        assert h["accept-ranges"] == "bytes"
        loc = h["location"]
        assert loc.startswith(stub.cdn + "/blobs/" + _sha(DATA) + "?")
        assert stub.cdn.startswith("http://127.0.0.2:")
        if method == "GET":
            assert r.content.startswith(b"Found. Redirecting to")
    r = client.get(loc)
    assert r.status_code == 200
    assert r.content == DATA
    assert r.headers["etag"] == f'"{_sha(DATA)}"'
    assert r.headers["accept-ranges"] == "bytes"
    assert int(r.headers["content-length"]) == len(DATA)
    # commit pinned by sha resolves too
    r = client.head(stub.resolve_url(REPO, "m.gguf", commit))
    assert r.status_code == 302 and r.headers["x-repo-commit"] == commit
    # stats
    cdn_reqs = [q for q in stub.requests if q.host == "cdn"]
    assert len(cdn_reqs) == 1 and cdn_reqs[0].body_bytes_sent == len(DATA)
    assert stub.bytes_served == len(DATA)
    stub.reset_stats()
    assert stub.requests == [] and stub.bytes_served == 0


def test_signed_url_expired_or_tampered(stub: HubStub, client: httpx.Client) -> None:
    stub.add_repo(REPO, {"m.gguf": DATA})
    good = _cdn_url(stub, client, REPO, "m.gguf")
    assert client.get(good.replace("sig=", "sig=0")).status_code == 403
    stub.faults.redirect_expires_s = -5
    expired = _cdn_url(stub, client, REPO, "m.gguf")
    assert client.get(expired).status_code == 403
    assert client.get(good).status_code == 200


def test_ranges_206_and_416(stub: HubStub, client: httpx.Client) -> None:
    stub.add_repo(REPO, {"m.gguf": DATA})
    url = _cdn_url(stub, client, REPO, "m.gguf")
    n = len(DATA)
    r = client.get(url, headers={"Range": "bytes=1000-"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 1000-{n - 1}/{n}"
    assert r.content == DATA[1000:]
    r = client.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == DATA[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{n}"
    r = client.get(url, headers={"Range": "bytes=-5"})
    assert r.status_code == 206 and r.content == DATA[-5:]
    r = client.head(url, headers={"Range": "bytes=100-"})
    assert r.status_code == 206 and int(r.headers["content-length"]) == n - 100
    r = client.get(url, headers={"Range": f"bytes={n}-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{n}"
    assert stub.requests[-1].range == f"bytes={n}-"


def test_ignore_range(stub: HubStub, client: httpx.Client) -> None:
    stub.add_repo(REPO, {"m.gguf": DATA})
    url = _cdn_url(stub, client, REPO, "m.gguf")
    stub.faults.ignore_range = True
    r = client.get(url, headers={"Range": "bytes=1000-"})
    assert r.status_code == 200 and r.content == DATA
    assert "content-range" not in r.headers


def test_path_files_served_from_disk(stub: HubStub, client: httpx.Client, tmp_path: Path) -> None:
    p = tmp_path / "big.gguf"
    payload = os.urandom(3 * 1024 * 1024 + 7)
    p.write_bytes(payload)
    stub.add_repo(REPO, {"big.gguf": p})
    r = client.head(stub.resolve_url(REPO, "big.gguf"))
    assert r.headers["x-linked-etag"] == f'"{_sha(payload)}"'
    url = r.headers["location"]
    assert client.get(url).content == payload
    r = client.get(url, headers={"Range": "bytes=2000000-"})
    assert r.status_code == 206 and r.content == payload[2000000:]
    # faulted path (read+write) gives the same bytes
    stub.faults.corrupt_offset = 5
    stub.faults.corrupt_count = 1
    got = client.get(url).content
    assert got[5] == payload[5] ^ 0xFF and got[:5] + got[6:] == payload[:5] + payload[6:]


def test_drop_after_bytes(stub: HubStub, client: httpx.Client) -> None:
    stub.add_repo(REPO, {"m.gguf": DATA})
    url = _cdn_url(stub, client, REPO, "m.gguf")
    stub.faults.drop_after_bytes = 1234
    stub.faults.drop_count = 1
    got, err = _read_until_error(client, url)
    assert isinstance(err, httpx.RemoteProtocolError)
    assert got == DATA[:1234]
    assert stub.faults.drop_count == 0
    assert stub.requests[-1].body_bytes_sent == 1234
    # next response is whole again; resume from the offset works
    r = client.get(url, headers={"Range": "bytes=1234-"})
    assert r.status_code == 206 and got + r.content == DATA


def test_status_sequence_cdn_with_retry_after(stub: HubStub, client: httpx.Client) -> None:
    stub.add_repo(REPO, {"m.gguf": DATA})
    url = _cdn_url(stub, client, REPO, "m.gguf")
    stub.faults.status_sequence = [503, 429]
    stub.faults.retry_after = 7
    r1, r2, r3 = client.get(url), client.get(url), client.get(url)
    assert r1.status_code == 503 and r1.headers["retry-after"] == "7"
    assert r2.status_code == 429 and r2.headers["retry-after"] == "7"
    assert r2.headers["ratelimit"] == '"api";r=0;t=7'
    assert r3.status_code == 200 and r3.content == DATA
    # the endpoint was not affected (target defaults to cdn)
    assert client.head(stub.resolve_url(REPO, "m.gguf")).status_code == 302


def test_status_sequence_endpoint_and_both(stub: HubStub, client: httpx.Client) -> None:
    stub.add_repo(REPO, {"m.gguf": DATA})
    stub.faults.status_target = "endpoint"
    stub.faults.status_sequence = [503]
    r = client.head(stub.resolve_url(REPO, "m.gguf"))
    assert r.status_code == 503 and "retry-after" not in r.headers
    url = _cdn_url(stub, client, REPO, "m.gguf")
    stub.faults.status_sequence = [500]
    assert client.get(url).status_code == 200  # cdn untouched
    assert client.get(f"{stub.endpoint}/api/models/{REPO}/refs").status_code == 500
    stub.faults.status_target = "both"
    stub.faults.status_sequence = [502, 504]
    assert client.head(stub.resolve_url(REPO, "m.gguf")).status_code == 502
    assert client.get(url).status_code == 504
    assert client.get(url).status_code == 200


def test_stall(stub: HubStub, client: httpx.Client) -> None:
    stub.add_repo(REPO, {"m.gguf": DATA})
    url = _cdn_url(stub, client, REPO, "m.gguf")
    stub.faults.stall_after_bytes = 500
    stub.faults.stall_seconds = 1.0
    stub.faults.stall_count = 1
    t0 = time.monotonic()
    got, err = _read_until_error(client, url, timeout=httpx.Timeout(5, read=0.3))
    assert isinstance(err, httpx.ReadTimeout)
    assert got == DATA[:500]
    assert time.monotonic() - t0 < 1.0
    # without a client timeout the server closes the socket after the stall
    stub.faults.stall_count = 1
    stub.faults.stall_seconds = 0.5
    t0 = time.monotonic()
    got, err = _read_until_error(client, url)
    assert isinstance(err, httpx.RemoteProtocolError)
    assert got == DATA[:500]
    assert 0.45 <= time.monotonic() - t0 < 3
    assert client.get(url).content == DATA


def test_corrupt_offset(stub: HubStub, client: httpx.Client) -> None:
    stub.add_repo(REPO, {"m.gguf": DATA})
    url = _cdn_url(stub, client, REPO, "m.gguf")
    stub.faults.corrupt_offset = 5000
    stub.faults.corrupt_count = 1
    # a range that does not cover the offset is served clean and keeps the count
    r = client.get(url, headers={"Range": "bytes=6000-"})
    assert r.content == DATA[6000:]
    assert stub.faults.corrupt_count == 1
    r = client.get(url, headers={"Range": "bytes=4000-"})
    body = r.content
    assert len(body) == len(DATA) - 4000
    assert body[1000] == DATA[5000] ^ 0xFF
    assert body[:1000] == DATA[4000:5000] and body[1001:] == DATA[5001:]
    assert stub.faults.corrupt_count == 0
    assert client.get(url).content == DATA


def test_throttle(stub: HubStub, client: httpx.Client) -> None:
    stub.add_repo(REPO, {"m.gguf": os.urandom(1_000_000)})
    url = _cdn_url(stub, client, REPO, "m.gguf")
    stub.faults.throttle_bps = 2_000_000
    t0 = time.monotonic()
    r = client.get(url)
    dt = time.monotonic() - t0
    assert len(r.content) == 1_000_000
    assert 0.45 <= dt <= 0.65, dt


def test_gated(stub: HubStub, client: httpx.Client) -> None:
    stub.add_repo(REPO, {"m.gguf": DATA}, gated=True, token="hf_secret")
    url = stub.resolve_url(REPO, "m.gguf")
    r = client.head(url)
    assert r.status_code == 401
    assert r.headers["x-error-code"] == "GatedRepo"
    assert "is restricted" in r.headers["x-error-message"]
    r = client.get(url, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403 and r.headers["x-error-code"] == "GatedRepo"
    assert "restricted" in r.json()["error"]
    api = f"{stub.endpoint}/api/models/{REPO}/revision/main?blobs=true"
    assert client.get(api).status_code == 401
    auth = {"Authorization": "Bearer hf_secret"}
    assert client.get(api, headers=auth).status_code == 200
    r = client.head(url, headers=auth)
    assert r.status_code == 302
    # the CDN URL is signed: it works without Authorization
    assert client.get(r.headers["location"]).content == DATA
    assert all("authorization" not in q.headers for q in stub.requests if q.host == "cdn")


def test_error_codes(stub: HubStub, client: httpx.Client) -> None:
    stub.add_repo(REPO, {"m.gguf": DATA})
    cases = [
        (stub.resolve_url("nobody/none", "m.gguf"), "RepoNotFound"),
        (stub.resolve_url(REPO, "m.gguf", "nobranch"), "RevisionNotFound"),
        (stub.resolve_url(REPO, "m.gguf", "a" * 40), "RevisionNotFound"),
        (stub.resolve_url(REPO, "missing.gguf"), "EntryNotFound"),
        (f"{stub.endpoint}/api/models/nobody/none/refs", "RepoNotFound"),
        (f"{stub.endpoint}/api/models/{REPO}/revision/nobranch", "RevisionNotFound"),
    ]
    for url, code in cases:
        for method in ("HEAD", "GET"):
            r = client.request(method, url)
            assert r.status_code == 404, (url, r.status_code)
            assert r.headers["x-error-code"] == code
            assert r.headers["x-error-message"]
            if method == "GET":
                assert r.json() == {"error": r.headers["x-error-message"]}
    r = client.get(cases[0][0])
    assert r.headers["x-error-message"].startswith("Repository Not Found for url: ")


def test_private_repo(stub: HubStub, client: httpx.Client) -> None:
    stub.add_repo(REPO, {"m.gguf": DATA}, private=True, token="tok")
    r = client.head(stub.resolve_url(REPO, "m.gguf"))
    assert r.status_code == 401 and r.headers["x-error-code"] == "RepoNotFound"
    r = client.head(stub.resolve_url(REPO, "m.gguf"), headers={"Authorization": "Bearer tok"})
    assert r.status_code == 302


def test_api_revision_tree_refs(client: httpx.Client) -> None:
    files = {f"part-{i:05d}-of-00005.gguf": bytes([i]) * (100 + i) for i in range(1, 6)}
    files["sub/dir/extra.gguf"] = SMALL
    files["README.md"] = b"# readme\n"
    with HubStub(tree_page_size=3) as stub:
        commit = stub.add_repo(REPO, files, non_lfs=["README.md"])
        base = f"{stub.endpoint}/api/models/{REPO}"
        info = client.get(f"{base}/revision/main", params={"blobs": "true"}).json()
        assert info["id"] == REPO and info["sha"] == commit
        sib = {s["rfilename"]: s for s in info["siblings"]}
        assert set(sib) == set(files)
        s = sib["part-00001-of-00005.gguf"]
        assert s["size"] == 101 and re.fullmatch(r"[0-9a-f]{40}", s["blobId"])
        assert s["lfs"]["sha256"] == _sha(files["part-00001-of-00005.gguf"])
        assert s["lfs"]["size"] == 101 and s["lfs"]["pointerSize"] > 100
        assert "lfs" not in sib["README.md"]
        # without blobs=true only names
        plain = client.get(f"{base}/revision/{commit}").json()
        assert plain["sha"] == commit and set(plain["siblings"][0]) == {"rfilename"}

        # tree, paginated by Link rel="next"
        url: str | None = f"{base}/tree/main?recursive=true"
        entries: list[dict[str, object]] = []
        pages = 0
        while url:
            r = client.get(url)
            assert r.status_code == 200
            page = r.json()
            assert len(page) <= 3
            entries += page
            pages += 1
            url = r.links.get("next", {}).get("url")
        file_entries = {e["path"]: e for e in entries if e["type"] == "file"}
        assert set(file_entries) == set(files)
        assert pages == (len(entries) + 2) // 3 and pages >= 3
        e = file_entries["sub/dir/extra.gguf"]
        assert e["size"] == len(SMALL)
        assert e["lfs"] == {"oid": _sha(SMALL), "size": len(SMALL), "pointerSize": 128}
        assert "lfs" not in file_entries["README.md"]
        dirs = {e["path"] for e in entries if e["type"] == "directory"}
        assert dirs == {"sub", "sub/dir"}
        # non-recursive listing shows the top level only
        top = client.get(f"{base}/tree/main", params={"limit": "100"}).json()
        assert {e["path"] for e in top} == {*(k for k in files if "/" not in k), "sub"}

        refs = client.get(f"{base}/refs").json()
        assert refs["branches"] == [
            {"name": "main", "ref": "refs/heads/main", "targetCommit": commit}
        ]
        assert refs["tags"] == [] and refs["converts"] == []

        # a non-LFS file is served by the endpoint itself, ETag = git sha1
        r = client.head(stub.resolve_url(REPO, "README.md"))
        assert r.status_code == 200 and "x-linked-etag" not in r.headers
        assert re.fullmatch(r'"[0-9a-f]{40}"', r.headers["etag"])
        assert r.headers["x-repo-commit"] == commit
        assert client.get(stub.resolve_url(REPO, "README.md")).content == b"# readme\n"


def test_publish_moves_main_old_commit_stays(stub: HubStub, client: httpx.Client) -> None:
    c1 = stub.add_repo(REPO, {"a.gguf": b"A1" * 100, "b.gguf": b"B1" * 100})
    c2 = stub.publish(REPO, {"a.gguf": b"A2" * 150})
    assert c1 != c2 and stub.head(REPO) == c2
    r = client.head(stub.resolve_url(REPO, "a.gguf"))
    assert r.headers["x-repo-commit"] == c2
    assert int(r.headers["x-linked-size"]) == 300
    assert client.get(r.headers["location"]).content == b"A2" * 150
    # b.gguf kept
    assert client.head(stub.resolve_url(REPO, "b.gguf")).headers["x-repo-commit"] == c2
    # old commit still resolvable with old content
    r = client.head(stub.resolve_url(REPO, "a.gguf", c1))
    assert r.headers["x-repo-commit"] == c1
    assert client.get(r.headers["location"]).content == b"A1" * 100
    refs = client.get(f"{stub.endpoint}/api/models/{REPO}/refs").json()
    assert refs["branches"][0]["targetCommit"] == c2
    # keep_others=False replaces the whole tree; None deletes
    c3 = stub.publish(REPO, {"c.gguf": b"C"}, keep_others=False)
    assert client.head(stub.resolve_url(REPO, "a.gguf")).status_code == 404
    assert client.head(stub.resolve_url(REPO, "c.gguf")).headers["x-repo-commit"] == c3
    stub.publish(REPO, {"c.gguf": None, "d.gguf": b"D"})
    assert client.head(stub.resolve_url(REPO, "c.gguf")).status_code == 404
    assert stub.file_info(REPO, "d.gguf") == (_sha(b"D"), 1)


def test_keep_alive_reuses_connection(stub: HubStub, client: httpx.Client) -> None:
    stub.add_repo(REPO, {"m.gguf": DATA})
    url = _cdn_url(stub, client, REPO, "m.gguf")
    for _ in range(3):
        assert client.get(url, headers={"Range": "bytes=0-9"}).status_code == 206
    conns = {q.conn_id for q in stub.requests if q.host == "cdn"}
    assert len(conns) == 1


def test_control_endpoint(stub: HubStub, client: httpx.Client) -> None:
    stub.add_repo(REPO, {"m.gguf": DATA})
    r = client.post(
        f"{stub.endpoint}/_stub/faults",
        json={"status_sequence": [503], "retry_after": 2, "drop_after_bytes": 10, "drop_count": 1},
    )
    assert r.status_code == 200
    assert r.json()["status_sequence"] == [503]
    assert stub.faults.status_sequence == [503] and stub.faults.drop_count == 1
    assert client.post(f"{stub.endpoint}/_stub/faults", json={"bogus": 1}).status_code == 400
    url = _cdn_url(stub, client, REPO, "m.gguf")
    assert client.get(url).status_code == 503
    got, _ = _read_until_error(client, url)
    assert got == DATA[:10]
    stats = client.get(f"{stub.endpoint}/_stub/stats").json()
    assert stats["bytes_served"] == 10
    assert [q["host"] for q in stats["requests"]] == ["endpoint", "cdn", "cdn"]
    assert stats["requests"][1]["status"] == 503
    assert set(stats["requests"][0]) >= {
        "host",
        "method",
        "path",
        "headers",
        "status",
        "range",
        "body_bytes_sent",
    }
    client.post(f"{stub.endpoint}/_stub/faults/reset")
    assert stub.faults == Faults()
    client.post(f"{stub.endpoint}/_stub/reset")
    assert stub.requests == []
    # publish through the control API
    r = client.post(
        f"{stub.endpoint}/_stub/publish",
        json={"repo_id": REPO, "files": {"m.gguf": {"text": "new"}}},
    )
    new = r.json()["commit"]
    assert client.head(stub.resolve_url(REPO, "m.gguf")).headers["x-repo-commit"] == new


def test_subprocess_mode(tmp_path: Path, client: httpx.Client) -> None:
    f = tmp_path / "model.gguf"
    f.write_bytes(DATA)
    ready = tmp_path / "ready.json"
    script = Path(__file__).resolve().parents[2] / "support" / "hub_stub.py"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            "--repo",
            f"{REPO}={f}",
            "--repo",
            f"{REPO}:other/name.gguf={f}",
            "--gated-token",
            "T",
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        info = json.loads(line)
        assert json.loads(ready.read_text()) == info
        assert info["endpoint"].startswith("http://127.0.0.1:")
        assert info["cdn"].startswith("http://127.0.0.2:")
        assert info["files"][REPO]["model.gguf"]["sha256"] == _sha(DATA)
        ep = info["endpoint"]
        assert client.head(f"{ep}/{REPO}/resolve/main/model.gguf").status_code == 401
        auth = {"Authorization": "Bearer T"}
        r = client.head(f"{ep}/{REPO}/resolve/main/other/name.gguf", headers=auth)
        assert r.status_code == 302
        assert r.headers["x-repo-commit"] == info["repos"][REPO]
        assert client.get(r.headers["location"]).content == DATA
        client.post(f"{ep}/_stub/faults", json={"status_sequence": [429]})
        assert client.get(r.headers["location"]).status_code == 429
        assert client.get(f"{ep}/_stub/stats").json()["request_count"] == 4
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
        assert proc.stderr is not None
        err = proc.stderr.read()
    assert rc == 0, err
    assert err == b""
