"""The VS Code extension (editors/vscode), tested in a real VS Code.

One test runs the whole thing: ``scripts/setup-vscode.sh`` (code-server 4.100.3,
playwright-core, Debian's Chromium, the extension's node_modules), ``tsc --noEmit``
against ``@types/vscode`` 1.100, the build, the offline ``.vsix`` packaging, and then the
in-editor suite (``editors/vscode/test/suite``) in code-server driven by Playwright, against
the real ``vibrant-rpc`` and the loopback Hub stand-in serving the Gemma 3 270M model.

Artifacts (git-ignored) land in ``editors/vscode/test-artifacts/``: the screenshot of the
download notification, a final screenshot, code-server's log and the suite's log.
Set ``VIBRANT_SKIP_VSCODE=1`` to skip it (for a quick local run without Node).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.editors.received import check_models_request, completes, lsp_messages
from tests.editors.ring_cases import HELPERS, MODELS, SCENARIOS
from tests.editors.ring_cases import check as check_ring
from tests.editors.window_cases import DEFAULTS, MIX, check_cuts, cut_cases, cut_document
from tests.support.editor_window import (
    check_window,
    natural_start,
    to_units,
    utf16_starts,
    well_formed_units,
)
from tests.support.gguf_fixtures import GEMMA_SIZE, gemma_path
from tests.support.llama_server import KEY, LlamaServer

ROOT = Path(__file__).resolve().parents[2]
EXT = ROOT / "editors" / "vscode"
ARTIFACTS = EXT / "test-artifacts"
MODEL_ID = "gemma-270m"
SERVED = "team-gemma"  # the alias the team's llama-server serves Gemma under
CANCEL_MODEL_ID = "gemma-270m-b"
# conftest gives each test a temporary HOME; npm's cache (~/.npm) must stay the real one, or
# every run would download code-server again.
TOOLS_ENV = dict(os.environ)

pytestmark = [
    pytest.mark.editor,
    # A fresh machine installs code-server and Chromium first (a few minutes); after that the
    # whole test takes about a minute.
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        os.environ.get("VIBRANT_SKIP_VSCODE") == "1", reason="VIBRANT_SKIP_VSCODE=1"
    ),
]


def _run(cmd: list[str], cwd: Path, timeout: float) -> str:
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=TOOLS_ENV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    took = time.monotonic() - started
    print(f"$ {' '.join(cmd)}  ({took:.1f} s)")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout[-8000:]}")
    return proc.stdout


def _start_hub(tmp_path: Path, gemma: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    ready = tmp_path / "hub-ready.json"
    hub = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "support" / "hub_stub.py"),
            "--repo",
            f"test/gemma:gemma.gguf={gemma}",
            "--ready-file",
            str(ready),
            # Slow enough (about 4 s for 253 MB) for a person, and the screenshot, to see
            # the notification's progress.
            "--throttle-bps",
            "20000000",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60  # it hashes the 253 MB file first
    while not ready.exists():
        if hub.poll() is not None or time.monotonic() > deadline:
            hub.kill()
            pytest.fail("the Hub stand-in did not start")
        time.sleep(0.05)
    return hub, json.loads(ready.read_text())


@pytest.mark.llama
@pytest.mark.hub
@pytest.mark.engine
def test_vscode_extension(tmp_path: Path) -> None:
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.fail("Node.js and npm are needed for the VS Code extension's tests")
    started = time.monotonic()
    _run(["bash", str(ROOT / "scripts" / "setup-vscode.sh")], ROOT, timeout=1500)
    setup_s = time.monotonic() - started

    # Types against @types/vscode 1.100 (the engine), then the build and an offline .vsix.
    _run(["npm", "run", "--silent", "typecheck"], EXT, timeout=300)
    _run(["npm", "run", "--silent", "compile"], EXT, timeout=300)
    vsix = tmp_path / "vibrant.vsix"
    _run(
        [
            "npx",
            "--no-install",
            "vsce",
            "package",
            "--allow-missing-repository",
            "--skip-license",
            "-o",
            str(vsix),
        ],
        EXT,
        timeout=300,
    )
    with zipfile.ZipFile(vsix) as z:
        names = set(z.namelist())
    assert "extension/package.json" in names
    assert "extension/out/src/extension.js" in names
    assert "extension/node_modules/vscode-languageclient/package.json" in names
    assert not any(n.startswith("extension/src/") or "/test/suite/" in n for n in names)

    # The Hub stand-in serving Gemma, and a registry that names it.
    gemma = gemma_path()
    # For the update test: the Hub's next commit changes the file (1 MiB more).
    update_file = tmp_path / "gemma-v2.gguf"
    shutil.copyfile(gemma, update_file)
    with update_file.open("ab") as f:
        f.write(b"\0" * (1 << 20))
    hub, hub_info = _start_hub(tmp_path, gemma)
    # The team's engine: the real llama-server on loopback serving Gemma (the suite points the
    # server at it through config.toml, and kills it to see the local model take over).
    team_engine = LlamaServer(gemma, tmp_path / "engine", alias=SERVED)
    registry = tmp_path / "registry.json"
    registry.write_text(
        json.dumps(
            {
                "models": [
                    {
                        "id": MODEL_ID,
                        "hf_repo": "test/gemma",
                        "filename": "gemma.gguf",
                        "ram_required_mb": 600,
                        "recommended": True,
                    },
                    # The same file under another id: the download the suite cancels.
                    {
                        "id": CANCEL_MODEL_ID,
                        "hf_repo": "test/gemma",
                        "filename": "gemma.gguf",
                        "ram_required_mb": 700,
                    },
                ]
            }
        )
    )
    # The workspace the suite opens, with the files of its context test.
    workspace = tmp_path / "workspace"
    (workspace / "pkg").mkdir(parents=True)
    (workspace / "pkg" / "helpers.py").write_text("\n".join(HELPERS) + "\n")
    (workspace / "pkg" / "models.py").write_text("\n".join(MODELS) + "\n")
    # The server behind tests/support/stdio_tee.py, which keeps the bytes it received: a file
    # for each server started (the suite restarts it), named in the order they started.
    received = tmp_path / "received"
    received.mkdir()
    server = tmp_path / "vibrant-rpc-tee"
    server.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "tests" / "support" / "stdio_tee.py"}" '
        f'"{received}/$(date +%s%N).bin" -- "{Path(sys.executable).parent / "vibrant-rpc"}" "$@"\n'
    )
    server.chmod(0o755)
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    suite_log = ARTIFACTS / "suite.log"
    env = dict(os.environ)
    env.update(
        {
            # conftest's isolated_home set HOME and VIBRANT_HOME to this test's folder.
            "VIBRANT_REGISTRY": str(registry),
            "HF_ENDPOINT": hub_info["endpoint"],
            "VIBRANT_TEST_LOG": str(suite_log),
            "VIBRANT_TEST_MODEL": MODEL_ID,
            "VIBRANT_TEST_CANCEL_MODEL": CANCEL_MODEL_ID,
            "VIBRANT_TEST_MODEL_BYTES": str(GEMMA_SIZE),
            "VIBRANT_TEST_UPDATE_FILE": str(update_file),
            "VIBRANT_LOG_LEVEL": "info",
            "VIBRANT_TEST_ENGINE_URL": team_engine.url,
            "VIBRANT_TEST_ENGINE_MODEL": SERVED,
            "VIBRANT_TEST_ENGINE_PID": str(team_engine.proc.pid),
            "TEAM_KEY": KEY,
        }
    )
    env.pop("HF_HUB_OFFLINE", None)
    settings = {
        "vibrant.serverPath": str(server),
        "vibrant.contextSize": 1024,
        "vibrant.threads": 2,
        "vibrant.inlineCompletions.maxTokens": 24,
    }
    runner = subprocess.Popen(
        [
            "node",
            str(EXT / "test" / "runner.mjs"),
            "--env",
            os.environ.get("VIBRANT_VSCODE_ENV", str(ROOT / ".cache" / "vscode-test-env")),
            "--workspace",
            str(workspace),
            "--state",
            str(tmp_path / "code-server"),
            "--artifacts",
            str(ARTIFACTS),
            "--settings",
            json.dumps(settings),
            "--timeout",
            "330",
        ],
        cwd=EXT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    suite_started = time.monotonic()
    try:
        output, _ = runner.communicate(timeout=390)
    except subprocess.TimeoutExpired:
        runner.send_signal(signal.SIGTERM)
        output, _ = runner.communicate(timeout=30)
    finally:
        hub.terminate()
        hub.wait(timeout=10)
        team_engine.stop()
    suite_s = time.monotonic() - suite_started
    suite = suite_log.read_text() if suite_log.exists() else "(the suite wrote no log)\n"
    report = f"{output}\n--- suite log ---\n{suite}"
    print(report)
    print(f"setup {setup_s:.1f} s, in-editor suite {suite_s:.1f} s")
    assert runner.returncode == 0, f"the VS Code suite failed (exit {runner.returncode}):\n{report}"
    assert "PASS the server is not running before the first command" in suite
    assert "all " in suite and " tests passed" in suite
    # The status bar with the team engine, healthy (its model), gone (a warning naming its
    # host:port, the local model answering), and without one (tests/suite/index.ts).
    for name in (
        "the status bar shows the team engine, healthy, and the model it serves",
        "an engine gone: the local model answers and the status bar warns, naming host:port",
        "without an engine the status bar shows the local model",
    ):
        assert f"PASS {name}" in suite, name
    assert team_engine.proc.returncode == -signal.SIGKILL, "the suite did not stop the engine"
    assert KEY not in suite and KEY not in output
    shot = ARTIFACTS / "download-notification.png"
    assert shot.is_file() and shot.stat().st_size > 10_000, "no screenshot of the download"

    # What the server received: each completion names its language and file; the one from
    # pkg/models.py carries the chunks of pkg/helpers.py the ring kept (the suite entered,
    # changed and saved it, copied lines of it, and left it), not the multiline decision.
    starts = sorted(received.iterdir())
    assert len(starts) >= 4, starts  # the first server, and the suite's restarts
    received_by = [lsp_messages(f.read_bytes()) for f in starts]  # each server started
    sent = [p for messages in received_by for p in completes(messages)]
    assert sent and all(p["languageId"] and p["filename"] for p in sent), sent[:1]
    assert {p["languageId"] for p in sent} >= {"python", "plaintext"}
    check_models_request(sent)
    assert all("multiline" not in p for p in sent)
    # The settings the user set, and no others: package.json's defaults left out, so that
    # config.toml and the server's own (gpu_layers "auto") apply. The engine's were set as
    # a VS Code user sets them (vibrant.engine, vibrant.engines), its key by name only.
    options = [
        m["params"].get("initializationOptions")
        for messages in received_by
        for m in messages
        if m.get("method") == "initialize"
    ]
    assert options[0] == {"contextSize": 1024, "threads": 2}, options[0]
    team = {"url": team_engine.url, "kind": "llama-server", "apiKeyEnv": "TEAM_KEY",
            "fallback": "local"}  # fmt: skip
    assert any(o.get("engine") == "team" and o.get("engines") == {"team": team}
               for o in options), options  # fmt: skip


# The request's window (editors/vscode/src/window.ts) under Node, on cases judged here ----

TS_NAMES = {
    "prefix_lines": "prefixLines",
    "suffix_lines": "suffixLines",
    "window_step": "windowStep",
    "max_prefix_chars": "maxPrefixChars",
    "max_suffix_chars": "maxSuffixChars",
}


def run_window_cases(
    tmp_path: Path, docs: list[list[str]], cases: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Cases in code units (tests.support.editor_window.to_units); results likewise."""
    if not (EXT / "node_modules" / "typescript").is_dir():
        _run(["npm", "ci", "--loglevel=error"], EXT, timeout=600)
    _run(["npx", "--no-install", "tsc", "-p", "."], EXT, timeout=300)
    cases_file, result = tmp_path / "cases.json", tmp_path / "window.json"
    ts_cases = [
        {
            "doc": c["doc"],
            "line": c["row"],
            "character": c["col"],
            "opts": {TS_NAMES[k]: v for k, v in c["opts"].items()},
        }
        for c in cases
    ]
    # ensure_ascii: code units travel as \\uXXXX, so JavaScript gets exactly these units.
    cases_file.write_text(json.dumps({"docs": docs, "cases": ts_cases}, ensure_ascii=True))
    _run(["node", "out/test/window-cases.js", str(cases_file), str(result)], EXT, timeout=120)
    out: list[dict[str, Any]] = json.loads(result.read_text(encoding="utf-8"))["results"]
    assert len(out) == len(cases)
    return [
        {
            "prompt": to_units(r["prompt"]),
            "suffix": to_units(r["suffix"]),
            "start_row": r["startLine"],
            "end_row": r["endLine"],
            "prompt_cut": r["promptCut"],
            "suffix_cut": r["suffixCut"],
        }
        for r in out
    ]


def check(lines: Sequence[str], case: dict[str, Any], r: dict[str, Any]) -> None:
    """What the server receives: no lone surrogate, and the window editor_window defines."""
    assert well_formed_units(r["prompt"]) and well_formed_units(r["suffix"]), r
    opts = {**DEFAULTS, **case["opts"]}
    check_window(lines, case["row"], case["col"], opts, r, utf16_starts, "\n")


def test_window_cuts_on_lines_and_characters(tmp_path: Path) -> None:
    """Every cap from 1 to 60 lands inside 😀's surrogate pair somewhere: the cut keeps
    the pair whole; where lines fit, it is on line boundaries."""
    doc = cut_document(to_units)
    cases = cut_cases(doc, utf16_starts)
    results = run_window_cases(tmp_path, [doc], cases)
    check_cuts(doc, cases, results, check)
    # The cap fell between the halves of a pair, and the cut moved off it, at both ends.
    pair_cuts = [
        (case, r)
        for case, r in zip(cases, results, strict=True)
        if r["prompt_cut"] and len(r["prompt"]) == case["opts"]["max_prefix_chars"] - 1
    ]
    assert pair_cuts, "no prefix cap landed inside a surrogate pair"
    pair_cuts = [
        (case, r)
        for case, r in zip(cases, results, strict=True)
        if r["suffix_cut"] and len(r["suffix"]) == case["opts"]["max_suffix_chars"] - 1
    ]
    assert pair_cuts, "no suffix cap landed inside a surrogate pair"


def test_window_start_stays_put_while_typing(tmp_path: Path) -> None:
    """Typing on a line only appends to the prompt; moving down moves the start only
    every windowStep lines; a lone surrogate in the document is sent as U+FFFD."""
    base = [to_units(f"line {i} {MIX}") for i in range(300)]
    docs = [base]
    cases: list[dict[str, Any]] = []
    typed = to_units("é中😀 = x")
    row = 200
    starts = utf16_starts(typed)
    for end in starts[1:]:
        doc = [*base[:row], base[row] + typed[:end], *base[row + 1 :]]
        docs.append(doc)
        cases.append({"doc": len(docs) - 1, "row": row, "col": len(doc[row]), "opts": {}})
    for down in range(100, 300):
        cases.append({"doc": 0, "row": down, "col": 0, "opts": {"prefix_lines": 50}})
    lone = [*base[:10], "a\ud83d b", "\ude00 c", *base[12:]]
    docs.append(lone)
    cases.append({"doc": len(docs) - 1, "row": 11, "col": 1, "opts": {}})
    results = run_window_cases(tmp_path, docs, cases)
    typing = results[: len(starts) - 1]
    for case, r in zip(cases[:-1], results[:-1], strict=True):
        check(docs[case["doc"]], case, r)
    assert {r["start_row"] for r in typing} == {natural_start(row, DEFAULTS)}
    for a, b, (i, j) in zip(typing, typing[1:], itertools.pairwise(starts[1:]), strict=False):
        assert b["prompt"] == a["prompt"] + typed[i:j]
    moved = [r["start_row"] for r in results[len(starts) - 1 : -1]]
    assert moved == [max(0, r - 50) // 32 * 32 for r in range(100, 300)]
    last = results[-1]
    assert last["prompt"].endswith("a\ufffd b\n\ufffd"), last["prompt"][-10:]
    assert last["suffix"].startswith(" c\n"), last["suffix"][:10]


def test_ring_drops_near_duplicates_and_what_the_window_holds(tmp_path: Path) -> None:
    """src/ring.ts under Node on tests/editors/ring_cases.py: the answers the Neovim ring
    gives too (near duplicates replaced, chunks mostly in the window evicted, 16 at most,
    oldest first, whole lines within the caps)."""
    if not (EXT / "node_modules" / "typescript").is_dir():
        _run(["npm", "ci", "--loglevel=error"], EXT, timeout=600)
    _run(["npx", "--no-install", "tsc", "-p", "."], EXT, timeout=300)
    cases, result = tmp_path / "cases.json", tmp_path / "ring.json"
    cases.write_text(json.dumps({"scenarios": SCENARIOS}))
    _run(["node", "out/test/ring-cases.js", str(cases), str(result)], EXT, timeout=120)
    check_ring(json.loads(result.read_text())["scenarios"])
