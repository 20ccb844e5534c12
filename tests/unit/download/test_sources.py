"""Sources with fallback: a team mirror first, the Hub last. Against the real olah (A),
the loopback hub and a port nobody listens on."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import tiny_model, write_registry
from tests.support.hub_stub import HubStub
from tests.support.olah_mirror import MirrorFile, OlahPair, free_port, olah_pair
from vibrant_rpc.app import Vibrant
from vibrant_rpc.config import load_settings
from vibrant_rpc.download.downloader import Downloader, transfer_config
from vibrant_rpc.download.progress import Progress
from vibrant_rpc.download.sources import Sources
from vibrant_rpc.paths import Paths

pytestmark = pytest.mark.hub

MB = 1_000_000
MIRRORED = "team/mirrored"  # on the team mirror (olah A) only
HUB_ONLY = "test/hub-only"  # on the hub only


def blob(n: int, seed: str) -> bytes:
    return b"GGUF" + hashlib.shake_256(seed.encode()).digest(n - 4)


ON_MIRROR = MirrorFile("team-q4_k_m.gguf", blob(2 * MB, "team"))
ON_HUB = blob(2 * MB, "hub")


@pytest.fixture(scope="module")
def olah(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OlahPair]:
    with olah_pair(tmp_path_factory.mktemp("olah"), MIRRORED, [ON_MIRROR]) as pair:
        yield pair


@pytest.fixture
def hub() -> Iterator[HubStub]:
    with HubStub() as stub:
        stub.add_repo(HUB_ONLY, {"hub-q4_k_m.gguf": ON_HUB})
        yield stub


def setup_home(paths: Paths, sources: list[str], **settings: object) -> None:
    write_registry(
        paths,
        [
            tiny_model("mirrored", hf_repo=MIRRORED, filename=ON_MIRROR.name),
            tiny_model("hubonly", hf_repo=HUB_ONLY, filename="hub-q4_k_m.gguf"),
            tiny_model("nowhere", hf_repo=HUB_ONLY, filename="not-anywhere.gguf"),
        ],
    )
    lines = {
        "download_idle_timeout_s": 5.0,
        "download_retry_base_s": 0.05,
        "use_other_caches": False,
        "sources": sources,
        **settings,
    }
    paths.config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in lines.items()))


def vibrant(*args: str, hub: HubStub | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI; ``hub``: the stub that stands for the Hub (HF_ENDPOINT names the Hub whose
    SHA-256 is the reference), else huggingface.co, which tests never reach."""
    exe = Path(sys.executable).parent / "vibrant"
    env = {**os.environ, "HF_TOKEN": "hf_secret_token"}
    env.pop("HF_ENDPOINT", None)
    if hub is not None:
        env["HF_ENDPOINT"] = hub.endpoint
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=180, env=env)


def test_a_mirror_that_is_down_falls_back_and_the_file_verifies(
    olah: OlahPair, hub: HubStub, paths: Paths
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    mirror = olah.a.endpoint.removeprefix("http://")
    setup_home(paths, [dead, olah.a.endpoint, hub.endpoint])

    # the model is on the team mirror only: the Hub can't vouch for its bytes, and the
    # mirror's own word stands only where the user trusts it
    r = vibrant("model", "download", "mirrored", "--json", hub=hub)
    said = " ".join(r.stderr.split())
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"only {mirror} vouches for the SHA-256 of {ON_MIRROR.name}" in said
    assert "trusted_sources" in said
    assert (
        not paths.partial_dir("mirrored").exists() and not (paths.models / "mirrored.gguf").exists()
    )
    setup_home(paths, [dead, olah.a.endpoint, hub.endpoint], trusted_sources=[olah.a.endpoint])
    r = vibrant("model", "download", "mirrored", "--json", hub=hub)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    # the dead source passed the request on; the team mirror served it, checked by its SHA-256
    assert result["verified"] is True and result["sha256"] == ON_MIRROR.sha256
    assert result["reference_by"] == {ON_MIRROR.name: mirror}
    assert (paths.models / "mirrored.gguf").read_bytes() == ON_MIRROR.data
    assert hub.bytes_served == 0
    assert result["served_by"] == {ON_MIRROR.name: mirror}

    # the mirror lacks this repository (olah: 401 RepoNotFound): the hub, last, serves it
    r = vibrant("model", "download", "hubonly", "--json", hub=hub)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["verified"] is True
    assert result["sha256"] == hashlib.sha256(ON_HUB).hexdigest()
    assert hub.bytes_served == len(ON_HUB)
    assert result["served_by"] == {"hub-q4_k_m.gguf": hub.endpoint.removeprefix("http://")}
    assert result["reference_by"] == {"hub-q4_k_m.gguf": hub.endpoint.removeprefix("http://")}
    # the token goes to no source but huggingface.co and the marked ones
    assert all("authorization" not in q.headers for q in hub.requests)

    # missing everywhere: the last source's word, and what the others said
    r = vibrant("model", "download", "nowhere", hub=hub)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    said = " ".join(r.stderr.split())
    assert f"not-anywhere.gguf does not exist in {HUB_ONLY}" in said
    for source in (dead, olah.a.endpoint, hub.endpoint):
        assert source.removeprefix("http://") in said


def test_the_token_goes_to_the_sources_marked_for_it(
    olah: OlahPair, hub: HubStub, paths: Paths
) -> None:
    setup_home(paths, [olah.a.endpoint, hub.endpoint], token_sources=[hub.endpoint])
    r = vibrant("model", "download", "hubonly", hub=hub)
    assert r.returncode == 0, r.stderr
    endpoint = [q for q in hub.requests if q.host == "endpoint"]
    cdn = [q for q in hub.requests if q.host == "cdn"]
    assert endpoint and cdn
    assert all(q.headers.get("authorization") == "Bearer hf_secret_token" for q in endpoint)
    assert all("authorization" not in q.headers for q in cdn)  # the signed URL needs none


def test_a_source_that_fails_mid_file_hands_the_rest_to_the_next(paths: Paths) -> None:
    data = blob(4 * MB, "handover")
    with HubStub() as first, HubStub() as second:
        for stub in (first, second):
            stub.add_repo(HUB_ONLY, {"hub-q4_k_m.gguf": data})
        write_registry(paths, [tiny_model("hubonly", hf_repo=HUB_ONLY, filename="hub-q4_k_m.gguf")])
        settings = load_settings(
            None,
            {
                "download_connections": 1,
                "download_block_size": "256KiB",
                "download_idle_timeout_s": 1.0,
                "use_other_caches": False,
            },
        )
        app = Vibrant(paths, settings)
        config = transfer_config(settings, sleep=lambda s: None)
        downloader = Downloader(
            paths,
            app.cache,
            config,
            hub_factory=lambda: Sources(
                [first.endpoint, second.endpoint], None, hub=second.endpoint
            ),
        )
        # The first source sends 1 MB, then stalls (cut by the idle timeout); from the first
        # bytes on, it answers every request with 503.
        first.faults.update({"stall_after_bytes": MB, "stall_count": 1, "stall_seconds": 20})
        broke = threading.Event()

        def on_progress(p: Progress) -> None:
            if p.downloaded_bytes > 0 and not broke.is_set():
                broke.set()
                first.faults.update({"status_target": "both", "status_sequence": [503] * 1000})

        result = downloader.download(app.registry.get("hubonly"), progress=on_progress)
        assert broke.is_set()
        assert result.verified and (paths.models / "hubonly.gguf").read_bytes() == data
        assert result.served_by == {"hub-q4_k_m.gguf": second.endpoint.removeprefix("http://")}
        assert first.bytes_served == MB and second.bytes_served > 0
        # the second source sent the rest, not the whole file again
        assert second.bytes_served == len(data) - MB
