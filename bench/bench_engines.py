"""Engines benchmark: completions from a team's llama-server (issue 21).

1. **Overhead.** The typing replay of ``bench_typing.py`` (its scenarios near_top, deep,
   next_line over two standard-library files, maxTokens 16, greedy) sent by an editor
   through vibrant (the real server over stdio, ``engine = "team"``) to llama-server,
   and in the same run, keystroke by keystroke, by an editor calling llama-server itself
   as llama.vscode does (one non-streamed POST per keystroke, ``cache_prompt``). Two
   llama-servers with the same flags (``-np 1 --cache-reuse 256``, the key), one per
   path, so that neither finds the other's prompt in its cache. vibrant's requests are
   ``raw`` (no completion pipeline, no typed-through answer): the same work on the
   engine, so the difference is what vibrant adds. Gemma 3 270M has no FIM tokens: both
   paths continue the prompt through ``/completion``. Run twice: **apart**, the engines
   on the first half of the cores (as many threads) and the editor's side (vibrant, the
   direct client) on the rest, as a team box and a laptop are two machines; and
   **shared**, the engines' threads on every core the editor's side also runs on. On a
   small machine shared costs the streamed path more than vibrant's own work: each
   streamed token wakes llama-server's HTTP thread and the reader, which preempt a
   compute thread that the others then wait for at their barrier.
2. **Many editors.** ``vibrant model serve --parallel N`` (the real command) and N
   simulated editors, each typing a line of its own (KEYS keystrokes, THINK_S between a
   completion and the next keystroke, as Tabby's load test sleeps 0.5 s), each through
   its own vibrant engine client (``engines.Engine``, what a laptop's server uses):
   p50 and p95 per keystroke for N = 1, 2, 4, 8, and the largest N whose p95 stays
   under one second.
3. **Bars.** A cancelled and a superseded completion through vibrant: /slots idle how
   soon after; a llama-server killed under ``serve``: serving again how soon after; the
   key in none of serve's output.

    .venv/bin/python bench/bench_engines.py   # builds llama-server first when missing
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_server import MODEL, THREADS, Server, setup_home  # noqa: E402
from bench.bench_typing import (  # noqa: E402
    FILES,
    MAX_TOKENS,
    NO_REPACK,
    Request,
    build_llama_server,
    pct,
    scenarios,
    window,
)
from bench.results import write_section  # noqa: E402
from tests.support.gguf_fixtures import gemma_path  # noqa: E402

KEY = "bench-key-" + os.urandom(12).hex()
CONTEXT = 4096
THINK_S = 0.5
EDITORS = (1, 2, 4, 8)
EDITOR_KEYS = 8  # keystrokes per editor in the load test
VIBRANT_CMD = str(Path(sys.executable).parent / "vibrant")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Box:
    """One llama-server with the key, as a team box runs it (without serve's supervision:
    the overhead run wants two identical ones side by side)."""

    def __init__(self, tmp: Path, cores: set[int] | None = None) -> None:
        self.port = free_port()
        threads = len(cores) if cores else THREADS
        self.url = f"http://127.0.0.1:{self.port}"
        key_file = tmp / f"key-{self.port}"
        key_file.write_text(KEY + "\n")
        self.proc = subprocess.Popen(
            [str(build_llama_server()), "-m", str(gemma_path()), "-c", str(CONTEXT),
             "-t", str(threads), "--host", "127.0.0.1", "--port", str(self.port),
             "--cache-reuse", "256", "-np", "1", "--no-webui", "--api-key-file",
             str(key_file), *NO_REPACK],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
        )  # fmt: skip
        wait_healthy(self.port, 120)
        self.http = httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=600)

    def complete(self, req: Request) -> float:
        """As llama.vscode: one non-streamed request per keystroke; ms."""
        body = {"prompt": req.prompt, "n_predict": MAX_TOKENS, "temperature": 0,
                "cache_prompt": True}  # fmt: skip
        t0 = time.perf_counter()
        r = self.http.post(f"{self.url}/completion", json=body)
        r.raise_for_status()
        return (time.perf_counter() - t0) * 1000

    def slots_idle_ms(self, since: float, timeout_s: float = 5) -> float:
        while True:
            slots = self.http.get(f"{self.url}/slots").json()
            if not any(s.get("is_processing") for s in slots):
                return (time.perf_counter() - since) * 1000
            if time.perf_counter() - since > timeout_s:
                return float("inf")
            time.sleep(0.002)

    def slot(self) -> dict[str, Any]:
        (slot,) = self.http.get(f"{self.url}/slots").json()
        return dict(slot)

    def generating(self, tokens: int = 3, timeout_s: float = 300) -> int:
        """Wait until the running completion has decoded ``tokens``; how many it has."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout_s:
            slot = self.slot()
            decoded = int(slot.get("next_token", [{}])[0].get("n_decoded", 0))
            if slot.get("is_processing") and decoded >= tokens:
                return decoded
            time.sleep(0.002)
        raise RuntimeError("the completion never generated")

    def held(self) -> int:
        """Tokens the slot's cache holds: the last prompt and what was generated after."""
        return int(self.slot()["n_prompt_tokens"])

    def prompt_tokens(self, prompt: str) -> int:
        r = self.http.post(f"{self.url}/tokenize", json={"content": prompt, "add_special": True})
        return len(r.json()["tokens"])

    def task(self) -> int | None:
        """The task the slot runs now (None: idle)."""
        (slot,) = self.http.get(f"{self.url}/slots").json()
        return slot.get("id_task") if slot.get("is_processing") else None

    def task_over_ms(self, task: int | None, since: float, timeout_s: float = 5) -> float:
        while self.task() == task and time.perf_counter() - since < timeout_s:
            time.sleep(0.002)
        return (time.perf_counter() - since) * 1000

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(10)


def wait_healthy(port: int, timeout_s: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"nothing healthy on port {port} in {timeout_s} s")


class Laptop:
    """An editor's vibrant server over stdio, its completions going to ``box``."""

    last_share = 0.0

    def __init__(self, box: Box) -> None:
        env = setup_home()
        env["TEAM_KEY"] = KEY
        config = Path(env["VIBRANT_HOME"]) / "config.toml"
        config.write_text(
            config.read_text() + f'engine = "team"\n[engines.team]\nurl = "{box.url}"\n'
            'api_key_env = "TEAM_KEY"\nkind = "llama-server"\n'
        )
        self.server = Server(env)
        self.server.initialize()

    def params(self, req: Request, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
        return {"prompt": req.prompt, "suffix": req.suffix, "maxTokens": max_tokens,
                "temperature": 0, "raw": True}  # fmt: skip

    def complete(self, req: Request) -> float:
        t0 = time.perf_counter()
        r = self.server.request("vibrant/complete", self.params(req))
        assert r["engine"] == "team", r
        wall = (time.perf_counter() - t0) * 1000
        # What vibrant adds around the engine's answer: the editor's wait less the time
        # vibrant's stream from the engine took (timings.totalMs). Robust to a machine
        # others load, where the engine's own time varies tenfold between keystrokes.
        self.last_share = wall - r["timings"]["totalMs"]
        return wall

    def _reply(self, msg_id: int) -> dict[str, Any]:
        while True:
            reply = self.server.recv()
            if reply.get("id") == msg_id and "method" not in reply:
                return reply

    def cancel_idle(self, box: Box, req: Request) -> tuple[float, int]:
        """$/cancelRequest once the engine generates (a cancel inside the prompt's
        evaluation waits for its batch): ms until the engine is idle, and how many tokens
        it decoded after the cancel was sent."""
        msg_id = self.server.send("vibrant/complete", self.params(req, 300))
        decoded = box.generating()
        t0 = time.perf_counter()
        self.server.send("$/cancelRequest", {"id": msg_id}, notify=True)
        assert self._reply(msg_id).get("error", {}).get("code") == -32800
        idle = box.slots_idle_ms(t0)
        return idle, box.held() - box.prompt_tokens(req.prompt) - decoded

    def supersede_idle(self, box: Box, req: Request) -> float:
        """A new completion while a long one generates: ms from sending it until the
        engine no longer runs the old one (its slot idle, or on to the new task)."""
        first = self.server.send("vibrant/complete", self.params(req, 300))
        box.generating()
        old = box.task()
        t0 = time.perf_counter()
        second = self.server.send("vibrant/complete", self.params(Request("x = ", ""), 4))
        stopped = box.task_over_ms(old, t0)
        assert self._reply(first).get("error", {}).get("code") == -32800
        assert "result" in self._reply(second)
        return stopped

    def close(self) -> None:
        self.server.close()


Stops = list[tuple[float, int]]


def placements() -> dict[str, tuple[set[int] | None, set[int] | None]]:
    """Where the engines and the editor's side run: apart (the engines on the first half
    of this process's cores, the editor's side on the rest) and shared (all on all)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return {"shared": (None, None)}
    half = len(cores) // 2
    return {"apart": (set(cores[:half]), set(cores[half:])), "shared": (None, None)}


def overhead(
    tmp: Path, engine_cores: set[int] | None = None, editor_cores: set[int] | None = None
) -> tuple[dict[str, tuple[float, float, int]], Stops, list[float]]:
    """p50 per keystroke, vibrant and direct, per scenario (and over all of them); the
    cancel and supersede figures."""
    boxes = [Box(tmp, engine_cores), Box(tmp, engine_cores)]
    every_core = os.sched_getaffinity(0)
    if editor_cores:  # this process (the direct editor) and vibrant's server, started now
        os.sched_setaffinity(0, editor_cores)
    laptop = Laptop(boxes[0])
    direct = boxes[1]
    times: dict[str, tuple[list[float], list[float]]] = {}
    shares: list[float] = []
    try:
        warm = Request("def f():\n", "")
        laptop.complete(warm)
        direct.complete(warm)
        for path in FILES:
            lines = path.read_text().splitlines(keepends=True)
            for scen, reqs in scenarios(lines).items():
                laptop.complete(reqs[0])  # the first fills each cache: not counted
                direct.complete(reqs[0])
                vib, dir_ = times.setdefault(scen, ([], []))
                for i, r in enumerate(reqs[1:]):
                    # Alternate which goes first, so a neighbour's load weighs on both.
                    pair = (laptop.complete, direct.complete)
                    first, second = pair if i % 2 == 0 else pair[::-1]
                    a, b = first(r), second(r)
                    vib.append(a if i % 2 == 0 else b)
                    dir_.append(b if i % 2 == 0 else a)
                    shares.append(laptop.last_share)
                print(f"{path.name} {scen}: vibrant {statistics.median(vib):.0f} ms, "
                      f"direct {statistics.median(dir_):.0f} ms", flush=True)  # fmt: skip
        lines = FILES[0].read_text().splitlines(keepends=True)
        cancels = [laptop.cancel_idle(boxes[0], window(lines, r, 0)) for r in (900, 1300, 1700)]
        supersedes = [laptop.supersede_idle(boxes[0], window(lines, r, 0))
                      for r in (1000, 1400, 1800)]  # fmt: skip
    finally:
        laptop.close()
        for box in boxes:
            box.close()
        os.sched_setaffinity(0, every_core)
    out = {}
    every_v: list[float] = []
    every_d: list[float] = []
    for scen, (v, d) in times.items():
        out[scen] = (statistics.median(v), statistics.median(d), len(v))
        every_v += v
        every_d += d
    out["all"] = (statistics.median(every_v), statistics.median(every_d), len(every_v))
    out["vibrant's own share"] = (statistics.median(shares), pct(shares, 95), len(shares))
    return out, cancels, supersedes


class Serve:
    """``vibrant model serve`` on the bench home's Gemma."""

    def __init__(self, env: dict[str, str], parallel: int, key_file: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [VIBRANT_CMD, "model", "serve", MODEL, "--port", str(self.port),
             "--parallel", str(parallel), "--api-key-file", str(key_file)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        wait_healthy(self.port, 120)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def first_start_s(self) -> float:
        """How long llama-server took to serve after serve started it (serve says)."""
        for line in self.lines:
            if m := re.search(r"serving \((\d+\.\d+) s after its start\)", line):
                return float(m[1])
        return float("nan")

    def restart_s(self) -> float:
        """SIGKILL llama-server: seconds until serve has it answering /health again."""
        (child,) = [c for c in psutil.Process(self.proc.pid).children() if "llama" in c.name()]
        t0 = time.perf_counter()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        wait_healthy(self.port, 30)
        return time.perf_counter() - t0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def editor_lines() -> list[list[Request]]:
    """A line of its own to type for each of the 8 editors (deep in the two files)."""
    out = []
    for path in FILES:
        lines = path.read_text().splitlines(keepends=True)
        rows = [r for r in range(300, len(lines)) if len(lines[r].strip()) > EDITOR_KEYS]
        for k in range(4):
            row = rows[(k + 1) * len(rows) // 5]
            text = lines[row]
            indent = len(text) - len(text.lstrip())
            reqs = []
            for key in range(EDITOR_KEYS + 1):
                typed = list(lines)
                typed[row] = text[: indent + key] + "\n"
                reqs.append(window(typed, row, indent + key))
            out.append(reqs)
    return out


def type_a_line(
    client: Any, reqs: list[Request], samples: list[float], lock: threading.Lock
) -> None:
    """One editor: a completion per keystroke, then THINK_S of thought."""
    from vibrant_rpc.inference.model import CompletionRequest

    for r in reqs[1:]:
        t0 = time.perf_counter()
        client.complete(CompletionRequest(prompt=r.prompt, max_tokens=MAX_TOKENS, temperature=0))
        with lock:
            samples.append((time.perf_counter() - t0) * 1000)
        time.sleep(THINK_S)


def many_editors(
    env: dict[str, str], key_file: Path
) -> tuple[dict[int, tuple[float, float]], tuple[float, float], list[str]]:
    from vibrant_rpc.config import EngineSettings
    from vibrant_rpc.engines.engine import Engine
    from vibrant_rpc.inference.model import CompletionRequest

    os.environ["TEAM_KEY"] = KEY
    results: dict[int, tuple[float, float]] = {}
    restart = (float("nan"), float("nan"))
    output: list[str] = []
    work = editor_lines()
    for n in EDITORS:
        serve = Serve(env, n, key_file)
        try:
            url = f"http://127.0.0.1:{serve.port}"
            clients = [Engine("team", EngineSettings(url=url, api_key_env="TEAM_KEY"))
                       for _ in range(n)]  # fmt: skip
            for c, reqs in zip(clients, work, strict=False):  # each fills its slot once
                c.complete(CompletionRequest(prompt=reqs[0].prompt, max_tokens=MAX_TOKENS,
                                             temperature=0))  # fmt: skip
            samples: list[float] = []
            lock = threading.Lock()
            threads = [threading.Thread(target=type_a_line, args=(c, reqs, samples, lock))
                       for c, reqs in zip(clients, work, strict=False)]  # fmt: skip
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            results[n] = (pct(samples, 50), pct(samples, 95))
            print(f"{n} editors: p50 {results[n][0]:.0f} ms, p95 {results[n][1]:.0f} ms "
                  f"({len(samples)} keystrokes)", flush=True)  # fmt: skip
            for c in clients:
                c.close()
            if n == 1:
                restart = (serve.restart_s(), serve.first_start_s())
        finally:
            serve.stop()
            output += serve.lines
    return results, restart, output


def main() -> int:
    build_llama_server()
    load_before = os.getloadavg()[0]  # other work on the machine weighs on every figure
    tmp = Path(setup_home()["HOME"])
    runs = {}
    for name, (engine_cores, editor_cores) in placements().items():
        print(f"overhead, {name}: engines on {engine_cores or 'every core'}", flush=True)
        runs[name] = overhead(tmp, engine_cores, editor_cores)
    placement = next(iter(runs))  # apart where there are two cores or more
    ov, cancels, supersedes = runs[placement]
    env = setup_home()
    config = Path(env["VIBRANT_HOME"]) / "config.toml"
    config.write_text(config.read_text() + f'llama_server = "{build_llama_server()}"\n')
    link = Path(env["VIBRANT_HOME"]) / "models" / f"{MODEL}.gguf"
    link.unlink()
    os.link(gemma_path(), link)  # the cache adopts no symlink
    key_file = Path(env["HOME"]) / "team.key"
    key_file.write_text(KEY + "\n")
    load, restart, output = many_editors(env, key_file)
    assert KEY not in "\n".join(output), "the key in serve's output"
    within = [n for n, (_, p95) in load.items() if p95 < 1000]

    rows = ["| cores | scenario | keystrokes | through vibrant p50 | llama-server direct p50 "
            "| ratio | vibrant's own share p50 / p95 |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    shares = {name: run[0].pop("vibrant's own share") for name, run in runs.items()}
    for name, (figures, _, _) in runs.items():
        for scen, (v, d, n) in figures.items():
            own = shares[name] if scen == "all" else None
            own_cell = f"{own[0]:.1f} / {own[1]:.1f} ms" if own else ""
            rows.append(f"| {name} | {scen} | {n} | {v:.0f} ms | {d:.0f} ms | {v / d:.3f}x "
                        f"| {own_cell} |")  # fmt: skip
    share = shares[placement]
    apart = runs.get("apart")
    where = (
        f"apart: the two llama-servers pinned to cores {sorted(placements()['apart'][0] or [])} "
        f"with as many threads, vibrant's server and the direct editor on the others"
        if apart
        else "one core: shared"
    )
    load_rows = ["| editors (serve --parallel N) | p50 per keystroke | p95 per keystroke |",
                 "|---|---|---|"]  # fmt: skip
    for n, (p50, p95) in load.items():
        load_rows.append(f"| {n} | {p50:.0f} ms | {p95:.0f} ms |")
    body = f"""
Gemma 3 270M Q4_K_M on llama-server (the llama.cpp vendored in llama-cpp-python 0.3.36),
`--cache-reuse 256`, a key; maxTokens {MAX_TOKENS}, greedy.

**Overhead** (`bench_typing`'s replay; each keystroke through vibrant → llama-server
(streamed, `raw`) and from the editor to an identical llama-server directly, as
llama.vscode calls it (non-streamed), alternating which goes first). Twice: *apart*,
the engines on half the cores and the editor's side on the others, as a team box and a
laptop are two machines; *shared*, the engines' {THREADS} threads on every core, where
the editor's side also runs:

{chr(10).join(rows)}

Bar: through vibrant p50 ≤ 1.05x direct ({where}):
**{ov["all"][0] / ov["all"][1]:.3f}x**.
What vibrant adds around the engine's answer (the editor's wait less vibrant's stream
from the engine, per keystroke): p50 {share[0]:.1f} ms, p95 {share[1]:.1f} ms.

**Many editors** (`vibrant model serve --parallel N`; N editors each typing
{EDITOR_KEYS} keystrokes of a line of its own, {THINK_S} s of thought after each answer,
through vibrant's engine client):

{chr(10).join(load_rows)}

Largest N with p95 under one second here: **{max(within) if within else "none"}**.

**Stopping and restarting**: a `$/cancelRequest` through vibrant while the engine
generates left llama-server's slot idle {", ".join(f"{c:.0f}" for c, _ in cancels)} ms
after the cancel was sent, having decoded {", ".join(str(n) for _, n in cancels)}
token(s) after it; a superseding request had the engine off the old completion (its slot
idle or on the new task) {", ".join(f"{s:.0f}" for s in supersedes)} ms after it was
sent (bar: 100 ms). A
llama-server killed with SIGKILL under `vibrant model serve` served again
{restart[0]:.2f} s after the kill (bar: 5 s; its first start took {restart[1]:.2f} s).
The key was in none of serve's {len(output)} output lines.

Load average (1 min) at the start {load_before:.1f}, at the end {os.getloadavg()[0]:.1f},
on {os.cpu_count()} cores: other sessions' work shares them, and a token's time varies
with it far more than anything vibrant adds (its own share above is measured per
keystroke for that reason).
"""
    write_section("Engines: a team's llama-server", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
