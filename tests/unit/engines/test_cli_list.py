"""`vibrant model list` names the engine completions go to, whether it answers, and the
model it serves (the real CLI; the engine a real HTTP server on loopback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.llama_server import free_port
from tests.unit.engines.stand_in import llama_models, llama_props, stand_in
from vibrant_rpc.paths import Paths

VIBRANT = str(Path(sys.executable).parent / "vibrant")
KEY = "cli-key-5e0f1a2b3c4d"


def listed(paths: Paths, url: str) -> subprocess.CompletedProcess[str]:
    paths.home.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(
        f'engine = "team"\n[engines.team]\nurl = "{url}"\napi_key_env = "TEAM_KEY"\n'
        'fallback = "local"\n'
    )
    env = {**os.environ, "TEAM_KEY": KEY}
    return subprocess.run([VIBRANT, "model", "list"], capture_output=True, text=True,
                          timeout=60, env=env)  # fmt: skip


def test_model_list_shows_the_engine_and_its_model(paths: Paths) -> None:
    with stand_in() as server:
        server.routes["/props"] = llama_props
        server.routes["/v1/models"] = llama_models
        out = listed(paths, server.url)
    assert out.returncode == 0, out.stderr
    assert (
        f"Completions go to the engine 'team' at {server.url} (llama-server): answering, "
        "serving tiny.gguf." in out.stdout
    )
    assert KEY not in out.stdout + out.stderr


def test_model_list_says_when_the_engine_is_down(paths: Paths) -> None:
    port = free_port()
    out = listed(paths, f"http://127.0.0.1:{port}")
    assert out.returncode == 0, out.stderr
    assert (
        f"Completions go to the engine 'team' at http://127.0.0.1:{port}: not answering (The "
        f"engine 'team' at 127.0.0.1:{port} can't be reached (connection refused).); the "
        "local model answers meanwhile. Is it running, and is the url in its [engines] "
        "setting right?" in " ".join(out.stdout.split())
    )
