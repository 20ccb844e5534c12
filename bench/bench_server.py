"""Server benchmark: start-up, memory before the first load, and load + first completion.

- Spawn to ``initialize`` answered, median of 10, against ``python -c "import
  pygls.lsp.server"`` (pygls and lsprotocol's import: the floor) in the same run,
  interleaved. Bar: at most 1.25 times the floor.
- Resident memory of the server after ``initialize`` and a ``vibrant/status``,
  before any load. Bar: at most 80 MB.
- Load plus the first 32-token completion of Gemma 3 270M through the server (from
  sending ``vibrant/complete`` to its answer, a fresh server each time) against the
  same with ``llama_cpp.Llama`` directly in one fresh process, with the same
  settings. Bar: at most 1.10 times as long. The server imports llama_cpp lazily at
  its first load (so that start-up doesn't pay for it), so the direct figure counts
  ``import llama_cpp`` too; the figure without it is shown beside.

Figures go to bench/RESULTS.md, section "Server".

    .venv/bin/python bench/bench_server.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import write_section  # noqa: E402
from tests.support.gguf_fixtures import GEMMA_SHA256, gemma_path  # noqa: E402

PY = sys.executable
SERVER = [PY, "-m", "vibrant_rpc", "--stdio"]
MODEL = "gemma-bench"
PROMPT = "Once upon a time, in a small village by the sea,"
CONTEXT, BATCH = 4096, 512
THREADS = psutil.cpu_count(logical=False) or 1
MB = 1024 * 1024
ROUNDS = 7  # load + complete rounds; this machine is shared, so medians of several


class Server:
    """The server process, spoken to over its stdio with LSP framing."""

    def __init__(self, env: dict[str, str]) -> None:
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(
            SERVER,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._id = 0

    def send(self, method: str, params: Any = None, notify: bool = False) -> int:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        if not notify:
            self._id += 1
            msg["id"] = self._id
        body = json.dumps(msg).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.proc.stdin.flush()
        return self._id

    def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        length = 0
        while line := self.proc.stdout.readline():
            if not line.strip():
                break
            key, _, value = line.decode().partition(":")
            if key.lower() == "content-length":
                length = int(value)
        message: dict[str, Any] = json.loads(self.proc.stdout.read(length))
        return message

    def request(self, method: str, params: Any = None) -> dict[str, Any]:
        msg_id = self.send(method, params)
        while True:
            reply = self.recv()
            if reply.get("id") == msg_id and "method" not in reply:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    def initialize(self) -> float:
        """Seconds from spawning to the answer of ``initialize``."""
        self.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
        elapsed = time.perf_counter() - self.t_spawn
        self.send("initialized", {}, notify=True)
        return elapsed

    def close(self) -> None:
        try:
            self.request("shutdown")
            self.send("exit", notify=True)
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def setup_home() -> dict[str, str]:
    home = Path(tempfile.mkdtemp(prefix="vibrant-bench-server-"))
    registry = home / "registry.json"
    entry = {"id": MODEL, "hf_repo": "bench/gemma", "filename": "gemma.gguf",
             "ram_required_mb": 400, "sha256": GEMMA_SHA256, "recommended": True}  # fmt: skip
    registry.write_text(json.dumps({"models": [entry]}))
    models = home / ".vibrant" / "models"
    models.mkdir(parents=True)
    (models / f"{MODEL}.gguf").symlink_to(gemma_path())
    env = dict(os.environ, HOME=str(home), VIBRANT_HOME=str(home / ".vibrant"))
    env["VIBRANT_REGISTRY"] = str(registry)
    env.pop("HF_ENDPOINT", None)
    # Nothing here downloads: offline keeps the server's weekly update check off the network.
    env["HF_HUB_OFFLINE"] = "1"
    config = home / ".vibrant" / "config.toml"
    config.write_text(f"context_size = {CONTEXT}\nbatch_size = {BATCH}\nthreads = {THREADS}\n")
    return env


def floor_import() -> float:
    t0 = time.perf_counter()
    subprocess.run([PY, "-c", "import pygls.lsp.server"], check=True)
    return time.perf_counter() - t0


def through_server(env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    server = Server(env)
    try:
        server.initialize()
        t0 = time.perf_counter()
        result = server.request(
            "vibrant/complete", {"prompt": PROMPT, "maxTokens": 32, "temperature": 0}
        )
        return time.perf_counter() - t0, result
    finally:
        server.close()


DIRECT = f"""
import json, time
t0 = time.perf_counter()
import llama_cpp
t1 = time.perf_counter()
llm = llama_cpp.Llama(model_path={str(gemma_path())!r}, n_ctx={CONTEXT}, n_batch={BATCH},
                      n_threads={THREADS}, n_threads_batch={THREADS}, verbose=False)
out = llm.create_completion({PROMPT!r}, max_tokens=32, temperature=0)
t2 = time.perf_counter()
print(json.dumps({{"with_import": t2 - t0, "without_import": t2 - t1,
                  "tokens": out["usage"]["completion_tokens"], "text": out["choices"][0]["text"]}}))
"""


def direct() -> dict[str, Any]:
    out = subprocess.run([PY, "-c", DIRECT], check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    env = setup_home()
    # Warm up: page cache, .pyc files, and the first load's one-time hash of the file.
    through_server(env)
    direct()
    floor_import()

    spawn, floor = [], []
    for _ in range(10):
        floor.append(floor_import())
        server = Server(env)
        spawn.append(server.initialize())
        server.close()
    server = Server(env)
    server.initialize()
    server.request("vibrant/status")
    time.sleep(2.0)  # a model is downloaded: let the background import of llama.cpp finish
    rss = psutil.Process(server.proc.pid).memory_info().rss
    server.close()

    via_server, via_direct, direct_no_import = [], [], []
    tokens: tuple[int, int] = (0, 0)
    for _ in range(ROUNDS):
        elapsed, result = through_server(env)
        via_server.append(elapsed)
        d = direct()
        via_direct.append(d["with_import"])
        direct_no_import.append(d["without_import"])
        tokens = (result["usage"]["completionTokens"], d["tokens"])

    s_spawn, s_floor = statistics.median(spawn), statistics.median(floor)
    s_server, s_direct = statistics.median(via_server), statistics.median(via_direct)
    s_direct_ni = statistics.median(direct_no_import)
    ratio_spawn, ratio_load = s_spawn / s_floor, s_server / s_direct

    def yes(ok: bool) -> str:
        return "yes" if ok else "**no**"

    body = f"""
Whole processes on this machine; Gemma 3 270M Q4_K_M, context {CONTEXT}, batch {BATCH},
{THREADS} threads, temperature 0, page cache warm. Run: `.venv/bin/python bench/bench_server.py`.
The floor is timed to the import process's exit (its interpreter teardown included), the
server to the answer of `initialize`, which is why the ratio can come out under 1. The
machine has 2 cores; the lists below show the spread of the runs. With a model
downloaded, the server imports llama.cpp on a worker right after `initialize` is
answered (the direct figure "with the import" is the like-for-like one; the RSS row
includes that import).

| measurement | figure | bar | met |
| --- | --- | --- | --- |
| `python -c "import pygls.lsp.server"` (floor), median of 10 | {s_floor:.3f} s | | |
| spawn to `initialize` answered, median of 10 | {s_spawn:.3f} s | ≤ 1.25 × floor = {1.25 * s_floor:.3f} s | {yes(ratio_spawn <= 1.25)} ({ratio_spawn:.2f}×) |
| RSS after `initialize`, a `vibrant/status` and the background import of llama.cpp, before any load | {rss / MB:.1f} MB | ≤ 80 MB | {yes(rss <= 80 * MB)} |
| `llama_cpp.Llama` directly, one process: import + load + 32 tokens, median of {ROUNDS} | {s_direct:.3f} s ({s_direct_ni:.3f} s without the import) | | |
| through the server: `vibrant/complete` sent to answered, first load + 32 tokens, median of {ROUNDS} | {s_server:.3f} s | ≤ 1.10 × direct = {1.10 * s_direct:.3f} s | {yes(ratio_load <= 1.10)} ({ratio_load:.2f}×; {s_server / s_direct_ni:.2f}× of the figure without import) |

Fastest of the {ROUNDS} load + complete rounds: server {min(via_server):.3f} s, direct {min(via_direct):.3f} s ({min(via_server) / min(via_direct):.2f}×). Tokens generated (server, direct): {tokens[0]}, {tokens[1]}. Spawn times: {", ".join(f"{t:.2f}" for t in spawn)} s; floor: {", ".join(f"{t:.2f}" for t in floor)} s. Load + complete through the server: {", ".join(f"{t:.2f}" for t in via_server)} s; direct: {", ".join(f"{t:.2f}" for t in via_direct)} s.
"""  # noqa: E501
    print(body)
    write_section("Server", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
