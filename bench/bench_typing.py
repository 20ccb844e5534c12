"""Typing benchmark: completions per keystroke through real source files (issue 11).

Replays typing through files of the Python standard library (not this repository)
against the real ``vibrant-rpc`` server over stdio with Gemma 3 270M, and in the
same run against llama-server built from the llama.cpp vendored in the
llama-cpp-python 0.3.36 sdist (``--cache-reuse 256``, one slot, ``/completion``
with ``cache_prompt``), interleaved keystroke by keystroke. A third row replays the
same requests through ``LoadedModel`` in this process ("runtime"): what the server
path adds; a fourth, "runtime-no-draft", the runtime greedy one token at a time
without the drafts looked up in the prompt (``greedy_decode``): what those gain.

The request window is the shims' (editors/nvim/lua/vibrant/window.lua): whole lines,
``PREFIX_LINES`` = 256 before the cursor line (llama.vim's n_prefix), ``SUFFIX_LINES`` =
64 after it (n_suffix), the window's start at ``max(0, row - 256)`` rounded down to a
multiple of ``WINDOW_STEP`` = 32 lines. prompt = the window's lines before the cursor
plus the cursor line up to the cursor, suffix = the rest (Gemma has no FIM tokens, so
both servers continue the prompt), maxTokens 16, temperature 0.

Scenarios, per file: ``near_top`` (typing a line near the top), ``deep`` (typing a
line past any window), ``next_line`` (the cursor moving down line by line, deep, over
a window step), ``typed_through`` (typing the first characters of the suggestion just
shown). The first request of each scenario fills the cache and is not counted.
vibrant answers a keystroke that types the start of its last suggestion from that
suggestion (``typed_through``, ``cached: true``), in every scenario: the table gives
its p50 over all keystrokes and over those the model answered.
Also: how long a superseded request takes to stop, in the server (a new
``vibrant/complete`` arriving while one evaluates its prompt or generates, and
``$/cancelRequest``) and in the runtime (its cancel event), and the in-process cost
of a typed-through lookup.

    .venv/bin/python bench/bench_typing.py   # builds llama-server first when missing
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_server import MODEL, THREADS, Server, setup_home  # noqa: E402
from bench.results import write_section  # noqa: E402
from tests.support.gguf_fixtures import gemma_path  # noqa: E402
from vibrant_rpc.inference.llama_setup import cpu_has_amx as _cpu_has_amx  # noqa: E402

PY = sys.executable
STDLIB = Path("/root/.pyenv/versions/3.11.7/lib/python3.11")
FILES = [STDLIB / "argparse.py", STDLIB / "tarfile.py"]
PREFIX_LINES, SUFFIX_LINES, WINDOW_STEP = 256, 64, 32
MAX_TOKENS, KEYS = 16, 10
CONTEXT = 4096  # bench_server's config.toml: context 4096, batch 512, THREADS threads
CACHE = Path.home() / ".cache" / "vibrant-bench" / "llama-server"
SDIST = "llama_cpp_python-0.3.36"
LLAMA_SERVER = CACHE / SDIST / "vendor" / "llama.cpp" / "build" / "bin" / "llama-server"
PORT = 18411
# As the runtime does on AMX CPUs (llama_setup._without_repacking): repacked weights take
# the AMX matmul, which dies of a protection fault in this VM on the first decode.
NO_REPACK = ["--no-repack"] if _cpu_has_amx() else []


def build_llama_server() -> Path:
    """llama-server from the sdist's vendored llama.cpp, built once into CACHE."""
    if LLAMA_SERVER.exists():
        return LLAMA_SERVER
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"{SDIST}.tar.gz"
    if not tarball.exists():
        subprocess.run(
            [PY, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "llama-cpp-python==0.3.36", "-d", str(CACHE)],
            check=True,
        )  # fmt: skip
    if not (CACHE / SDIST).exists():
        with tarfile.open(tarball) as tar:
            tar.extractall(CACHE, filter="data")
    src = CACHE / SDIST / "vendor" / "llama.cpp"
    nice = ["nice", "-n", "15"]
    subprocess.run(
        [*nice, "cmake", "-B", "build", "-DCMAKE_BUILD_TYPE=Release",
         "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_CURL=OFF",
         "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"],
        cwd=src, check=True,
    )  # fmt: skip
    subprocess.run(
        [*nice, "cmake", "--build", "build", "--target", "llama-server", "-j2"],
        cwd=src,
        check=True,
    )
    return LLAMA_SERVER


def start_llama_server(port: int, context: int) -> subprocess.Popen[bytes]:
    """llama-server (built once) serving Gemma on 127.0.0.1:``port`` with a ``context``
    of tokens, as an editor's own would run (one slot, prompt cache reuse), once its
    ``/health`` says it is ready."""
    proc = subprocess.Popen(
        [str(build_llama_server()), "-m", str(gemma_path()), "-c", str(context),
         "-t", str(THREADS), "--host", "127.0.0.1", "--port", str(port),
         "--cache-reuse", "256", "-np", "1", "--no-webui", *NO_REPACK],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("llama-server did not start")
        time.sleep(0.2)


def start_vibrant() -> Server:
    """vibrant's server over stdio, initialized, on a fresh bench home (bench_server's) with
    Gemma cached; no model loaded yet."""
    env = setup_home()
    # The cache adopts no symlink: a hard link to the fixture (same filesystem here).
    link = Path(env["VIBRANT_HOME"]) / "models" / f"{MODEL}.gguf"
    link.unlink()
    os.link(gemma_path(), link)
    server = Server(env)
    server.initialize()
    return server


class Request:
    def __init__(self, prompt: str, suffix: str) -> None:
        self.prompt, self.suffix = prompt, suffix


def window(lines: list[str], row: int, col: int) -> Request:
    start = max(0, row - PREFIX_LINES)
    start -= start % WINDOW_STEP
    line = lines[row]
    prompt = "".join(lines[start:row]) + line[:col]
    suffix = line[col:] + "".join(lines[row + 1 : row + 1 + SUFFIX_LINES])
    return Request(prompt, suffix)


def typing_at(lines: list[str], row: int) -> list[Request]:
    """The cursor at the start of ``row`` with the line's text typed one key at a time."""
    lines = list(lines)
    text = lines[row]
    indent = len(text) - len(text.lstrip())
    out = []
    for k in range(KEYS + 1):
        lines[row] = text[: indent + k] + "\n"
        out.append(window(lines, row, indent + k))
    return out


class Sample:
    def __init__(self, ms: float, evaluated: int | None, text: str, cached: bool = False) -> None:
        self.ms, self.evaluated, self.text, self.cached = ms, evaluated, text, cached


class Vibrant:
    name = "vibrant"

    def __init__(self) -> None:
        self.server = start_vibrant()
        self.complete(Request("def f():\n", ""))  # load the model

    def complete(self, req: Request) -> Sample:
        params = {"prompt": req.prompt, "suffix": req.suffix, "maxTokens": MAX_TOKENS,
                  "temperature": 0}  # fmt: skip
        t0 = time.perf_counter()
        r = self.server.request("vibrant/complete", params)
        ms = (time.perf_counter() - t0) * 1000
        return Sample(ms, r["usage"]["promptEvaluated"], r["text"], bool(r.get("cached")))

    def _reply(self, msg_id: int) -> dict[str, Any]:
        while True:
            reply = self.server.recv()
            if reply.get("id") == msg_id and "method" not in reply:
                return reply

    def supersede_ms(self, running: Request, delay_s: float, new: Request) -> tuple[float, float]:
        """A new completion ``delay_s`` into a running one: (from sending the new one to
        the running one's -32800, to the new one's answer), in ms."""
        # raw: the completion pipeline would end the running one at its first line, before
        # the new one arrives; this measures a long one being superseded.
        params = {"prompt": running.prompt, "suffix": running.suffix, "maxTokens": 200,
                  "temperature": 0, "raw": True}  # fmt: skip
        first = self.server.send("vibrant/complete", params)
        time.sleep(delay_s)
        t0 = time.perf_counter()
        params = {"prompt": new.prompt, "suffix": new.suffix, "maxTokens": MAX_TOKENS,
                  "temperature": 0}  # fmt: skip
        second = self.server.send("vibrant/complete", params)
        code = self._reply(first).get("error", {}).get("code")
        stopped = (time.perf_counter() - t0) * 1000
        assert code == -32800, f"the running completion was not superseded: {code}"
        assert "result" in self._reply(second)
        return stopped, (time.perf_counter() - t0) * 1000

    def superseded_ms(self, req: Request) -> float:
        """From $/cancelRequest to the reply, the request cancelled mid-prompt."""
        params = {"prompt": req.prompt, "suffix": req.suffix, "maxTokens": 200,
                  "temperature": 0, "raw": True}  # fmt: skip
        msg_id = self.server.send("vibrant/complete", params)
        time.sleep(0.5)
        t0 = time.perf_counter()
        self.server.send("$/cancelRequest", {"id": msg_id}, notify=True)
        self._reply(msg_id)
        return (time.perf_counter() - t0) * 1000

    def close(self) -> None:
        self.server.close()


class Runtime:
    """The same runtime in this process: what the server adds, and evaluated tokens."""

    name = "runtime"

    def __init__(self) -> None:
        from vibrant_rpc.inference.model import LoadedModel, LoadOptions

        opts = LoadOptions(context_size=CONTEXT, threads=THREADS, batch_size=512)
        self.model = LoadedModel.load("g", gemma_path(), opts)

    def complete(self, req: Request) -> Sample:
        from vibrant_rpc.inference.model import CompletionRequest

        creq = CompletionRequest(
            prompt=req.prompt, suffix=req.suffix, max_tokens=MAX_TOKENS, temperature=0.0
        )
        t0 = time.perf_counter()
        r = self.model.complete(creq)
        return Sample((time.perf_counter() - t0) * 1000, r.prompt_evaluated, r.text)

    def close(self) -> None:
        self.model.close()


class RuntimeNoDraft(Runtime):
    """The runtime greedy one token at a time, without drafts from the prompt: what the
    drafts (``greedy_decode``) gain."""

    name = "runtime-no-draft"

    def __init__(self) -> None:
        super().__init__()
        self.model.draft_max = 0


class LlamaServer:
    name = "llama-server"

    def __init__(self) -> None:
        self.proc = start_llama_server(PORT, CONTEXT)
        self.complete(Request("def f():\n", ""))

    def complete(self, req: Request) -> Sample:
        body = json.dumps({"prompt": req.prompt, "n_predict": MAX_TOKENS, "temperature": 0,
                           "cache_prompt": True}).encode()  # fmt: skip
        http = urllib.request.Request(
            f"http://127.0.0.1:{PORT}/completion",
            body,
            {"Content-Type": "application/json"},
        )
        t0 = time.perf_counter()
        with urllib.request.urlopen(http, timeout=600) as resp:
            r = json.loads(resp.read())
        ms = (time.perf_counter() - t0) * 1000
        return Sample(ms, int(r["timings"]["prompt_n"]), r["content"])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def scenarios(lines: list[str]) -> dict[str, list[Request]]:
    n = len(lines)
    deep = n * 2 // 3
    # A row whose window start moves during the next_line replay.
    down = next(r for r in range(deep, n) if (r - PREFIX_LINES) % WINDOW_STEP == WINDOW_STEP - 4)
    near = next(r for r in range(30, 200) if lines[r].strip())
    deep_row = next(r for r in range(deep, n) if len(lines[r].strip()) > KEYS)
    return {
        "near_top": typing_at(lines, near),
        "deep": typing_at(lines, deep_row),
        "next_line": [window(lines, r, 0) for r in range(down, down + KEYS + 1)],
    }


def typed_through(base: Request, first: Sample) -> list[Request]:
    """The suggestion's first characters typed one by one (at most KEYS)."""
    text = first.text
    return [Request(base.prompt + text[:k], base.suffix) for k in range(1, min(KEYS, len(text)))]


def same_text(stats: dict[tuple[str, str], list[Sample]], a: str, b: str) -> str:
    pairs = [
        (x.text, y.text)
        for scen in ("near_top", "deep", "next_line", "typed_through")
        for x, y in zip(stats.get((a, scen), []), stats.get((b, scen), []), strict=True)
    ]
    return f"{sum(x == y for x, y in pairs)} of {len(pairs)} completions"


def pct(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def runtime_cancel_ms(lines: list[str]) -> list[float]:
    """In process: from setting the cancel event to complete() returning."""
    from vibrant_rpc.inference.model import CompletionRequest, LoadedModel, LoadOptions

    model = LoadedModel.load("g", gemma_path(), LoadOptions(context_size=CONTEXT, threads=THREADS))
    out = []
    try:
        for row, delay in ((1000, 0.3), (1500, 0.8), (2000, 2.5)):
            req = window(lines, row, 0)
            cancel = threading.Event()
            set_at: list[float] = []

            def stop(cancel: threading.Event = cancel, set_at: list[float] = set_at) -> None:
                set_at.append(time.perf_counter())
                cancel.set()

            timer = threading.Timer(delay, stop)
            timer.start()
            r = model.complete(
                CompletionRequest(prompt=req.prompt, max_tokens=300, temperature=0.0),
                cancel=cancel,
            )
            done = time.perf_counter()
            timer.join()
            if r.finish_reason == "cancelled":
                out.append((done - set_at[0]) * 1000)
    finally:
        model.close()
    return out


def typed_through_lookup_us() -> float:
    """Microseconds per lookup that hits, with a prompt of 12,000 characters."""
    from vibrant_rpc.completion.typed_through import TypedThrough

    tt = TypedThrough()
    prompt = "x = 1\n" * 2000
    tt.remember("g", prompt, "", "    return value\n", "length")
    t0 = time.perf_counter()
    for _ in range(1000):
        hit = tt.lookup("g", prompt + "    re", "")
    assert hit is not None and hit.text == "turn value\n"
    return (time.perf_counter() - t0) * 1e6 / 1000


def main() -> int:
    engines: list[Vibrant | Runtime | LlamaServer] = [
        Vibrant(),
        Runtime(),
        RuntimeNoDraft(),
        LlamaServer(),
    ]
    stats: dict[tuple[str, str], list[Sample]] = {}
    try:
        for path in FILES:
            lines = path.read_text().splitlines(keepends=True)
            for scen, reqs in scenarios(lines).items():
                # Keystroke by keystroke, each engine in turn (each keeps its own cache), so
                # that other work on the machine weighs on all three alike.
                firsts = [eng.complete(reqs[0]) for eng in engines]
                runs: list[list[Sample]] = [[] for _ in engines]
                for r in reqs[1:]:
                    for eng, run in zip(engines, runs, strict=True):
                        run.append(eng.complete(r))
                for eng, first, run in zip(engines, firsts, runs, strict=True):
                    stats.setdefault((eng.name, scen), []).extend(run)
                    print(f"{path.name} {eng.name} {scen}: first {first.ms:.0f} ms, "
                          + " ".join(f"{s.ms:.0f}/{s.evaluated}" for s in run),
                          flush=True)  # fmt: skip
                if scen != "near_top":
                    continue
                # Typing through the suggestion shown at the last near-top keystroke.
                base = reqs[-1]
                throughs = [typed_through(base, eng.complete(base)) for eng in engines]
                runs = [[] for _ in engines]
                for k in range(max(len(t) for t in throughs)):
                    for eng, through, run in zip(engines, throughs, runs, strict=True):
                        if k < len(through):
                            run.append(eng.complete(through[k]))
                for eng, run in zip(engines, runs, strict=True):
                    stats.setdefault((eng.name, "typed_through"), []).extend(run)
                    print(f"{path.name} {eng.name} typed_through: "
                          + " ".join(f"{s.ms:.0f}/{s.evaluated}" for s in run),
                          flush=True)  # fmt: skip
        vib = engines[0]
        assert isinstance(vib, Vibrant)
        for eng in engines[1:3]:  # their memory and threads out of the cancel figures' way
            eng.close()
        del engines[1:3]
        lines = FILES[0].read_text().splitlines(keepends=True)
        server_stop = [vib.superseded_ms(window(lines, r, 0)) for r in (900, 1300, 1700)]
        # Superseded inside a prompt (a window the cache doesn't hold: seconds of prompt),
        # then while generating (the same window again: its prompt is cached).
        in_prompt, generating = [], []
        for row in (1000, 1400, 1800):
            in_prompt.append(vib.supersede_ms(window(lines, row, 0), 0.5, window(lines, row, 4)))
            generating.append(vib.supersede_ms(window(lines, row, 0), 1.0, window(lines, row, 8)))
    finally:
        for eng in engines:
            eng.close()
    runtime_stop = runtime_cancel_ms(FILES[1].read_text().splitlines(keepends=True))
    lookup_us = typed_through_lookup_us()

    rows = []
    p50: dict[tuple[str, str], float] = {}  # over the keystrokes the model answered
    p50_all: dict[tuple[str, str], float] = {}
    for scen in ("near_top", "deep", "next_line", "typed_through"):
        for name in ("vibrant", "runtime", "runtime-no-draft", "llama-server"):
            samples = stats.get((name, scen), [])
            if not samples:
                continue
            ms = [s.ms for s in samples]
            model = [s for s in samples if not s.cached]
            p50_all[(name, scen)] = statistics.median(ms)
            if model:
                p50[(name, scen)] = statistics.median(s.ms for s in model)
            ev = [s.evaluated for s in model if s.evaluated is not None]
            ev_text = f"{statistics.median(ev):.0f} (max {max(ev)})" if ev else "-"
            model_text = f"{p50[(name, scen)]:.0f}" if model else "-"
            rows.append(f"| {scen} | {name} | {len(ms)} | {len(ms) - len(model)} | "
                        f"{statistics.median(ms):.0f} | {pct(ms, 95):.0f} | {model_text} | "
                        f"{ev_text} |")  # fmt: skip
    v, rt, nd, ls = "vibrant", "runtime", "runtime-no-draft", "llama-server"

    def ratio(a: tuple[str, str], b: tuple[str, str], table: dict[tuple[str, str], float]) -> str:
        return f"{table[a] / table[b]:.2f}×" if a in table and b in table else "n/a"

    def ms_list(values: list[float]) -> str:
        return ", ".join(f"{x:.0f}" for x in values)

    bars = [
        f"- deep p50 / near-top p50, vibrant: {ratio((v, 'deep'), (v, 'near_top'), p50)} "
        f"(bar ≤ 1.3×); llama-server: {ratio((ls, 'deep'), (ls, 'near_top'), p50)}",
        f"- near top, vibrant / llama-server p50: "
        f"{ratio((v, 'near_top'), (ls, 'near_top'), p50)} over the keystrokes the model "
        f"answered (bar ≤ 1.05×), {ratio((v, 'near_top'), (ls, 'near_top'), p50_all)} over "
        f"all; the runtime in process: {ratio((rt, 'near_top'), (ls, 'near_top'), p50)}",
        f"- deep, vibrant / llama-server p50: {ratio((v, 'deep'), (ls, 'deep'), p50)} "
        f"model-answered (bar < 1), {ratio((v, 'deep'), (ls, 'deep'), p50_all)} over all; "
        f"next line: {ratio((v, 'next_line'), (ls, 'next_line'), p50)}",
        f"- the runtime in process, deep / llama-server deep: "
        f"{ratio((rt, 'deep'), (ls, 'deep'), p50)}; next line / llama-server: "
        f"{ratio((rt, 'next_line'), (ls, 'next_line'), p50)} (p95 "
        f"{pct([s.ms for s in stats[(rt, 'next_line')]], 95):.0f} vs "
        f"{pct([s.ms for s in stats[(ls, 'next_line')]], 95):.0f} ms)",
        f"- drafts from the prompt, the runtime with / without them: near top "
        f"{ratio((rt, 'near_top'), (nd, 'near_top'), p50)}, deep "
        f"{ratio((rt, 'deep'), (nd, 'deep'), p50)}, next line "
        f"{ratio((rt, 'next_line'), (nd, 'next_line'), p50)}; same text in "
        f"{same_text(stats, rt, nd)}",
        f"- typed through, vibrant p50 {p50_all[(v, 'typed_through')]:.1f} ms through the "
        f"server (bar ≤ 30 ms), "
        f"{sum(s.cached for s in stats[(v, 'typed_through')])} of "
        f"{len(stats[(v, 'typed_through')])} answered from the last suggestion; the lookup "
        f"itself costs {lookup_us:.1f} µs",
        f"- superseded by a new completion, from sending it to the running one's -32800: "
        f"inside a prompt {ms_list([a for a, _ in in_prompt])} ms, while generating "
        f"{ms_list([a for a, _ in generating])} ms (bar ≤ 100 ms); the new one answered "
        f"{ms_list([b for _, b in in_prompt + generating])} ms after it was sent",
        f"- `$/cancelRequest` to the reply {ms_list(server_stop)} ms; the runtime's cancel "
        f"event to its return {ms_list(runtime_stop)} ms",
    ]
    body = "\n".join(
        [
            f"Gemma 3 270M Q4_K_M, context {CONTEXT}, {THREADS} threads, files "
            + ", ".join(f"`{p.name}` ({len(p.read_text().splitlines())} lines)" for p in FILES)
            + f" from {STDLIB}. Window: {PREFIX_LINES} lines before the cursor, "
            f"{SUFFIX_LINES} after, start in steps of {WINDOW_STEP} lines; maxTokens "
            f"{MAX_TOKENS}, temperature 0; {KEYS} keystrokes per scenario and file after a "
            "first request that is not counted. llama-server: `--cache-reuse 256 -np 1`, "
            "`/completion` with `cache_prompt`. Milliseconds per keystroke, from sending "
            "the request to its answer. The machine's 2 cores are shared with other work.",
            "",
            "| scenario | server | requests | from the last suggestion | p50 ms | p95 ms "
            "| p50 ms, model-answered | prompt tokens evaluated, p50 |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            *bars,
        ]
    )
    print(body)
    write_section("Typing (issue 11)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
