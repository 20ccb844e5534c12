"""Download benchmark: vibrant vs huggingface_hub on the 253 MB Gemma file, whole processes.

The loopback Hub stand-in runs as its own process; each client runs as a fresh
process with a fresh cache. Figures go to bench/RESULTS.md (section "Downloads").

    .venv/bin/python bench/bench_download.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import write_section  # noqa: E402
from tests.support.gguf_fixtures import GEMMA_SHA256, GEMMA_SIZE, gemma_path  # noqa: E402

PY = sys.executable
VIBRANT = str(Path(PY).parent / "vibrant")
REPO = "bench/gemma"
FILE = "gemma-3-270m-q4_k_m.gguf"
CAP = 20_000_000  # bytes/s per connection, as CDNs cap one connection
ROUNDS = 5


class Stub:
    def __init__(self, model: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vibrant-bench-"))
        ready = self.dir / "ready.json"
        self.proc = subprocess.Popen(
            [
                PY,
                str(ROOT / "tests" / "support" / "hub_stub.py"),
                "--repo",
                f"{REPO}:{FILE}={model}",
                "--ready-file",
                str(ready),
            ],
            stdout=subprocess.DEVNULL,
        )
        while not ready.exists():
            time.sleep(0.05)
        self.endpoint = json.loads(ready.read_text())["endpoint"]

    def control(self, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
        data = json.dumps(body or {}).encode() if body is not None else None
        req = urllib.request.Request(
            self.endpoint + path, data=data, method="POST" if data else "GET"
        )
        with urllib.request.urlopen(req) as r:
            out: dict[str, object] = json.loads(r.read())
            return out

    def throttle(self, bps: int | None) -> None:
        self.control("/_stub/faults", {"throttle_bps": bps})

    def served(self) -> int:
        served = self.control("/_stub/stats")["bytes_served"]
        assert isinstance(served, int)
        return served

    def reset(self) -> None:
        self.control("/_stub/reset", {})

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def fresh_home(connections: int | None = None) -> tuple[Path, dict[str, str]]:
    home = Path(tempfile.mkdtemp(prefix="vibrant-home-"))
    (home / "registry.json").write_text(
        json.dumps(
            {
                "models": [
                    {
                        "id": "gemma",
                        "hf_repo": REPO,
                        "filename": FILE,
                        "ram_required_mb": 600,
                        "sha256": GEMMA_SHA256,
                    }
                ]
            }
        )
    )
    if connections is not None:
        (home / "config.toml").write_text(f"download_connections = {connections}\n")
    return home, {"VIBRANT_HOME": str(home)}


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def run_vibrant(stub: Stub, connections: int | None = None) -> float:
    home, env = fresh_home(connections)
    try:
        t = timed(
            [VIBRANT, "model", "download", "gemma", "--json"], {**env, "HF_ENDPOINT": stub.endpoint}
        )
        got = home / "models" / "gemma.gguf"
        assert got.stat().st_size == GEMMA_SIZE
        return t
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run_hf(stub: Stub) -> float:
    cache = Path(tempfile.mkdtemp(prefix="hf-cache-"))
    code = (
        "from huggingface_hub import hf_hub_download; import sys; "
        f"hf_hub_download({REPO!r}, {FILE!r}, cache_dir=sys.argv[1])"
    )
    env = {
        "HF_ENDPOINT": stub.endpoint,
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ENABLE_HF_TRANSFER": "0",
        "HF_XET_DISABLE": "1",
    }
    try:
        return timed([PY, "-c", code, str(cache)], env)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run_curl(stub: Stub) -> float:
    out = Path(tempfile.mkdtemp()) / "f"
    try:
        return timed(
            ["curl", "-sSfL", "-o", str(out), f"{stub.endpoint}/{REPO}/resolve/main/{FILE}"], {}
        )
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def kill_at_half(stub: Stub) -> tuple[float, float]:
    """Kill vibrant at ~50% (SIGKILL), restart; return (fraction at kill, fraction re-sent)."""
    home, env = fresh_home()
    try:
        proc = subprocess.Popen(
            [VIBRANT, "model", "download", "gemma", "--json"],
            env={**os.environ, **env, "HF_ENDPOINT": stub.endpoint},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        at = 0.0
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("event") == "progress" and event["downloaded_bytes"] >= GEMMA_SIZE // 2:
                at = event["downloaded_bytes"] / GEMMA_SIZE
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
        time.sleep(0.5)  # let the stub finish counting the cut connections
        stub.reset()
        timed(
            [VIBRANT, "model", "download", "gemma", "--json"], {**env, "HF_ENDPOINT": stub.endpoint}
        )
        return at, stub.served() / GEMMA_SIZE
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    model = gemma_path()
    stub = Stub(model)
    try:
        # Warm the page cache, then interleave the clients, each starting after a `sync` so
        # that none pays for the disk writes another one left behind.
        run_curl(stub)
        times: dict[str, list[float]] = {"curl": [], "hf": [], "vibrant": []}
        for _ in range(ROUNDS):
            for name, run in (("curl", run_curl), ("hf", run_hf), ("vibrant", run_vibrant)):
                os.sync()
                times[name].append(run(stub))
        curl, hf, vib = (statistics.median(times[k]) for k in ("curl", "hf", "vibrant"))

        stub.throttle(CAP)
        os.sync()
        hf_capped = run_hf(stub)
        vib_capped = run_vibrant(stub)
        one_conn = run_vibrant(stub, connections=1)
        at, resent = kill_at_half(stub)
        stub.throttle(None)
    finally:
        stub.close()

    mb = GEMMA_SIZE / 1e6
    ratio = vib_capped / hf_capped
    speedup = one_conn / vib_capped

    def yes(ok: bool) -> str:
        return "yes" if ok else "NO"

    def row(*cells: str) -> str:
        return "| " + " | ".join(cells) + " |"

    rows = [
        row("measurement", "figure", "bar", "met"),
        row("---", "---", "---", "---"),
        row("unthrottled: `curl -o` (floor)", f"{curl:.2f} s", "", ""),
        row("unthrottled: huggingface_hub.hf_hub_download", f"{hf:.2f} s", "", ""),
        row(
            "unthrottled: vibrant model download (SHA-256 + fsync)",
            f"{vib:.2f} s",
            f"≤ {hf:.2f} s",
            yes(vib <= hf),
        ),
        row(
            "20 MB/s per connection: huggingface_hub",
            f"{hf_capped:.2f} s ({mb / hf_capped:.0f} MB/s)",
            "",
            "",
        ),
        row(
            "20 MB/s per connection: vibrant, defaults (4 connections)",
            f"{vib_capped:.2f} s ({mb / vib_capped:.0f} MB/s)",
            f"≤ 0.3 × hf = {0.3 * hf_capped:.2f} s",
            f"{yes(ratio <= 0.3)} ({ratio:.2f}×)",
        ),
        row(
            "20 MB/s per connection: vibrant, 1 connection",
            f"{one_conn:.2f} s ({mb / one_conn:.0f} MB/s)",
            "4 connections ≥ 3.5 × 1",
            f"{yes(speedup >= 3.5)} ({speedup:.2f}×)",
        ),
        row(
            f"killed (SIGKILL) at {at:.0%}, restarted: bytes sent again",
            f"{resent:.1%} of the file",
            "≤ 55%",
            yes(resent <= 0.55),
        ),
    ]
    text = (
        f"Gemma 3 270M Q4_K_M ({GEMMA_SIZE:,} bytes) from the loopback Hub stand-in (endpoint "
        "127.0.0.1, CDN 127.0.0.2), whole processes, fresh cache each run, `sync` before each; "
        f"unthrottled figures are medians of {ROUNDS} interleaved rounds. "
        "Run: `.venv/bin/python bench/bench_download.py`.\n\n" + "\n".join(rows)
    )
    write_section("Downloads", text)
    print(text)


if __name__ == "__main__":
    main()
