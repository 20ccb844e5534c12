"""Finding GGUF files other tools downloaded, in trees laid out as those tools lay them."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import tiny_model, write_registry
from tests.support.hub_stub import HubStub
from vibrant_rpc.cache.elsewhere import (
    Candidate,
    Roots,
    adopt,
    default_roots,
    find_candidates,
    scan,
)
from vibrant_rpc.errors import ChecksumMismatchError
from vibrant_rpc.paths import Paths
from vibrant_rpc.registry import Registry

REPO = "test/tiny"
FILE = "tiny-q4_k_m.gguf"


def blob(n: int, seed: str) -> bytes:
    return b"GGUF" + hashlib.shake_256(seed.encode()).digest(n - 4)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


DATA = blob(3_000_000, "tiny")


@pytest.fixture
def hub() -> Iterator[HubStub]:
    with HubStub() as stub:
        yield stub


def hf_download(hub: HubStub, cache: Path, repo: str, filename: str) -> Path:
    """The real huggingface_hub, from the loopback hub, into ``cache``."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, filename, cache_dir=cache, endpoint=hub.endpoint))


def only(roots: Roots, **kw: list[str]) -> Roots:
    """``roots`` with every tool but the named ones emptied."""
    empty: dict[str, list[str]] = {
        "hf_hub": [],
        "llama_cpp_hub": [],
        "llama_cpp_flat": [],
        "lmstudio": [],
        "ollama": [],
    }
    return Roots(**{**empty, **kw})


def roots_in(home: Path) -> Roots:
    return default_roots(home, env={})


# -- where to look ---------------------------------------------------------------------------


def test_default_roots_and_the_tools_own_variables(tmp_path: Path) -> None:
    home = tmp_path
    r = default_roots(home, env={})
    assert r.hf_hub == [str(home / ".cache/huggingface/hub")]
    assert str(home / ".cache/llama.cpp") in r.llama_cpp_flat and r.llama_cpp_hub == []
    assert r.lmstudio == [str(home / ".lmstudio/models"), str(home / ".cache/lm-studio/models")]
    assert r.ollama == [str(home / ".ollama/models")]
    r = default_roots(home, env={"HF_HOME": "/x/hf", "OLLAMA_MODELS": "/x/ollama"})
    assert r.hf_hub == ["/x/hf/hub"] and r.ollama == ["/x/ollama"]
    r = default_roots(home, env={"HF_HOME": "/x/hf", "HF_HUB_CACHE": "/y/hub"})
    assert r.hf_hub == ["/y/hub"]
    r = default_roots(home, env={"LLAMA_CACHE": "/z/llama", "XDG_CACHE_HOME": "/c"})
    # recent llama.cpp keeps the hub layout in LLAMA_CACHE, older versions flat files
    assert r.llama_cpp_hub == ["/z/llama"] and r.llama_cpp_flat == ["/z/llama"]
    assert r.hf_hub == ["/c/huggingface/hub"]


# -- huggingface_hub, for real ---------------------------------------------------------------


@pytest.mark.hub
def test_hf_cache_made_by_huggingface_hub_is_found_and_hard_linked(
    hub: HubStub, tmp_path: Path
) -> None:
    hub.add_repo(REPO, {FILE: DATA})
    home = tmp_path / "home"
    snapshot_file = hf_download(hub, home / ".cache/huggingface/hub", REPO, FILE)
    assert snapshot_file.is_symlink()  # huggingface_hub's own layout, not ours
    blob_path = snapshot_file.resolve()
    before = (blob_path.stat().st_ino, blob_path.stat().st_mtime_ns, blob_path.stat().st_mode)

    found = find_candidates(REPO, FILE, sha(DATA), roots_in(home))
    assert [c.tool for c in found] == ["huggingface_hub"]
    c = found[0]
    assert c.path == str(blob_path) and c.sha256 == sha(DATA) and c.matched_by == "sha256"
    assert c.size == len(DATA)

    seen: list[tuple[int, int]] = []
    target = tmp_path / "vibrant/models/tiny.gguf"
    result = adopt(c, target, sha(DATA), lambda done, total: seen.append((done, total)))
    # same filesystem (tmp_path): a reflink where the filesystem has them, else a hard link
    assert result.method in ("reflink", "hardlink") and result.copied_bytes == 0
    assert target.read_bytes() == DATA and result.sha256 == sha(DATA)
    assert seen and seen[-1] == (len(DATA), len(DATA))  # hashed, with progress
    if result.method == "hardlink":
        assert target.stat().st_ino == blob_path.stat().st_ino
    # the other tool's file: same inode, same time, same mode, still its link
    after = blob_path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_mode) == before
    assert snapshot_file.resolve() == blob_path
    # an update renames a new file over vibrant's name: the shared inode is not written
    new = tmp_path / "vibrant/models/.tiny.gguf.new"
    new.write_bytes(b"GGUF newer")
    os.replace(new, target)
    assert blob_path.read_bytes() == DATA


@pytest.mark.hub
def test_name_match_without_a_known_sha_is_found_by_repo_and_file(
    hub: HubStub, tmp_path: Path
) -> None:
    hub.add_repo(REPO, {FILE: DATA})
    home = tmp_path / "home"
    hf_download(hub, home / ".cache/huggingface/hub", REPO, FILE)
    found = find_candidates(REPO, FILE, None, roots_in(home))
    assert len(found) == 1 and found[0].matched_by == "name"
    assert found[0].sha256 == sha(DATA)  # the blob's name tells it
    # another repo's file of the same name is not this one
    assert find_candidates("other/repo", FILE, None, roots_in(home)) == []
    # the same bytes under another repo are found by their SHA-256
    again = find_candidates("other/repo", FILE, sha(DATA), roots_in(home))
    assert [c.matched_by for c in again] == ["sha256"]
    # a reference that says otherwise rules the file out without hashing it
    assert find_candidates(REPO, FILE, "0" * 64, roots_in(home)) == []


@pytest.mark.hub
def test_tampered_file_in_the_hf_cache_is_refused_and_left_alone(
    hub: HubStub, tmp_path: Path
) -> None:
    hub.add_repo(REPO, {FILE: DATA})
    home = tmp_path / "home"
    blob_path = hf_download(hub, home / ".cache/huggingface/hub", REPO, FILE).resolve()
    tampered = bytearray(DATA)
    tampered[1_000_000] ^= 0x01
    blob_path.write_bytes(bytes(tampered))  # same name (the old SHA-256), other bytes
    mtime = blob_path.stat().st_mtime_ns
    (c,) = find_candidates(REPO, FILE, sha(DATA), roots_in(home))
    target = tmp_path / "vibrant/models/tiny.gguf"
    for allow_link in (True, False):
        with pytest.raises(ChecksumMismatchError) as err:
            adopt(c, target, sha(DATA), allow_link=allow_link)
        assert err.value.kind == "ChecksumMismatch"
        assert str(blob_path) in err.value.message and sha(bytes(tampered)) in err.value.message
        assert not target.exists()
        assert list(target.parent.iterdir()) == []  # no temporary left behind
    assert blob_path.read_bytes() == bytes(tampered) and blob_path.stat().st_mtime_ns == mtime


def test_copy_with_progress_when_links_are_not_wanted_or_possible(tmp_path: Path) -> None:
    src = tmp_path / "other/file.gguf"
    src.parent.mkdir()
    src.write_bytes(DATA)
    c = Candidate(path=str(src), tool="lmstudio", size=len(DATA), sha256=None, matched_by="name")
    seen: list[int] = []
    target = tmp_path / "vibrant/a.gguf"
    r = adopt(c, target, sha(DATA), lambda done, total: seen.append(done), allow_link=False)
    assert r.method == "copy" and r.copied_bytes == len(DATA)
    assert target.read_bytes() == DATA and target.stat().st_ino != src.stat().st_ino
    assert seen == sorted(seen) and seen[-1] == len(DATA)


def test_another_filesystem_gets_a_copy(tmp_path: Path) -> None:
    other_fs = Path("/dev/shm")
    if not (other_fs.is_dir() and os.access(other_fs, os.W_OK)):
        pytest.skip("no /dev/shm to stand for another filesystem")
    if other_fs.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the temporary folder here")
    src = other_fs / f"vibrant-test-{os.getpid()}.gguf"
    src.write_bytes(DATA)
    try:
        c = Candidate(path=str(src), tool="ollama", size=len(DATA), sha256=None, matched_by="name")
        r = adopt(c, tmp_path / "a.gguf", sha(DATA))
        assert r.method == "copy" and (tmp_path / "a.gguf").read_bytes() == DATA
        assert src.read_bytes() == DATA
    finally:
        src.unlink()


# -- trees laid out as the other tools lay them ----------------------------------------------


def test_ollama_blobs_by_digest_and_hf_pulls_by_tag(tmp_path: Path) -> None:
    models = tmp_path / "ollama-models"
    blobs = models / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"sha256-{sha(DATA)}").write_bytes(DATA)
    config = b'{"model_format":"gguf"}'
    (blobs / f"sha256-{sha(config)}").write_bytes(config)

    def manifest(path: Path, weights: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {
                        "mediaType": "application/vnd.docker.container.image.v1+json",
                        "digest": f"sha256:{sha(config)}",
                        "size": len(config),
                    },
                    "layers": [
                        {
                            "mediaType": "application/vnd.ollama.image.model",
                            "digest": f"sha256:{sha(weights)}",
                            "size": len(weights),
                        },
                        {
                            "mediaType": "application/vnd.ollama.image.template",
                            "digest": f"sha256:{sha(config)}",
                            "size": len(config),
                        },
                    ],
                }
            )
        )

    manifest(models / "manifests/registry.ollama.ai/library/tiny/latest", DATA)
    manifest(models / "manifests/hf.co" / REPO / "Q4_K_M", DATA)
    roots = default_roots(tmp_path, env={"OLLAMA_MODELS": str(models)})

    by_sha = find_candidates("any/repo", "whatever.gguf", sha(DATA), roots)
    assert [(c.tool, c.matched_by) for c in by_sha] == [("ollama", "sha256")]
    # no reference SHA-256: `ollama pull hf.co/test/tiny:Q4_K_M` is this repo's Q4_K_M file
    by_tag = find_candidates(REPO, FILE, None, roots)
    assert [(c.path, c.sha256) for c in by_tag] == [(str(blobs / f"sha256-{sha(DATA)}"), sha(DATA))]
    assert find_candidates(REPO, "tiny-q8_0.gguf", None, roots) == []
    r = adopt(by_sha[0], tmp_path / "v/tiny.gguf", sha(DATA))
    assert (tmp_path / "v/tiny.gguf").read_bytes() == DATA and r.sha256 == sha(DATA)


@pytest.mark.parametrize("where", [".lmstudio/models", ".cache/lm-studio/models"])
def test_lm_studio_tree(tmp_path: Path, where: str) -> None:
    f = tmp_path / where / REPO / FILE
    f.parent.mkdir(parents=True)
    f.write_bytes(DATA)
    (c,) = find_candidates(REPO, FILE, sha(DATA), roots_in(tmp_path))
    assert (c.tool, c.path, c.sha256, c.matched_by) == ("lmstudio", str(f), None, "name")
    # a re-upload under LM Studio's community publisher keeps the file's name
    g = tmp_path / where / "lmstudio-community" / "Tiny-GGUF" / FILE.upper()
    g.parent.mkdir(parents=True)
    g.write_bytes(DATA)
    found = find_candidates(REPO, FILE, sha(DATA), roots_in(tmp_path))
    assert {c.path for c in found} == {str(f), str(g)}
    # a known size rules out a file of another size without reading it
    assert find_candidates(REPO, FILE, None, roots_in(tmp_path), size=len(DATA) + 1) == []
    assert adopt(c, tmp_path / "v/t.gguf", sha(DATA)).sha256 == sha(DATA)


def test_llama_cpp_flat_names_old_and_newer(tmp_path: Path) -> None:
    cache = tmp_path / ".cache/llama.cpp"
    cache.mkdir(parents=True)
    newer = cache / "test_tiny_sub_tiny-q4_k_m.gguf"  # <org>_<name>_<path>, / made _
    newer.write_bytes(DATA)
    (cache / "test_tiny_sub_tiny-q4_k_m.gguf.etag").write_text(f'"{sha(DATA)}"')
    (c,) = find_candidates(REPO, "sub/" + FILE, sha(DATA), roots_in(tmp_path))
    assert (c.tool, c.path, c.sha256, c.matched_by) == (
        "llama.cpp",
        str(newer),
        sha(DATA),
        "sha256",
    )
    newer.unlink()
    oldest = cache / FILE  # the first versions kept only the basename
    oldest.write_bytes(DATA)
    (c,) = find_candidates(REPO, "sub/" + FILE, sha(DATA), roots_in(tmp_path))
    assert c.path == str(oldest) and c.matched_by == "name"


@pytest.mark.hub
def test_llama_cpp_hub_layout_in_llama_cache(hub: HubStub, tmp_path: Path) -> None:
    # recent llama.cpp writes huggingface_hub's layout, into $LLAMA_CACHE when it is set
    hub.add_repo(REPO, {FILE: DATA})
    llama_cache = tmp_path / "llama-cache"
    hf_download(hub, llama_cache, REPO, FILE)
    roots = default_roots(tmp_path, env={"LLAMA_CACHE": str(llama_cache)})
    (c,) = find_candidates(REPO, FILE, sha(DATA), roots)
    assert c.tool == "llama.cpp" and c.matched_by == "sha256"


# -- scan ------------------------------------------------------------------------------------


@pytest.mark.hub
def test_scan_lists_what_it_found_and_what_it_would_save(
    hub: HubStub, tmp_path: Path, paths: Paths
) -> None:
    other = blob(1_000_000, "other")
    hub.add_repo(REPO, {FILE: DATA, "b.gguf": other})
    home = tmp_path / "home"
    hf_download(hub, home / ".cache/huggingface/hub", REPO, FILE)
    lms = home / ".lmstudio/models" / REPO / "b.gguf"
    lms.parent.mkdir(parents=True)
    lms.write_bytes(other)
    write_registry(
        paths,
        [
            tiny_model("a", filename=FILE, sha256=sha(DATA)),
            tiny_model("b", filename="b.gguf"),
            tiny_model("c", filename="nowhere.gguf"),
        ],
    )
    registry = Registry.load(paths.user_registry)
    mine = [m for m in registry if m.hf_repo == REPO]
    found = {f.model_id: f for f in scan(mine, roots_in(home))}
    assert set(found) == {"a", "b"}
    assert found["a"].verified_by_name and found["a"].saves_bytes == len(DATA)
    assert found["a"].candidate.tool == "huggingface_hub"
    assert not found["b"].verified_by_name and found["b"].candidate.tool == "lmstudio"
    assert sum(f.saves_bytes for f in found.values()) == len(DATA) + len(other)
    assert [f.model_id for f in scan(mine, roots_in(home), skip=lambda m: m.id == "a")] == ["b"]
