"""A model file truncated under a loaded server (issue 22's last rule). llama.cpp maps the
file into memory; the next read of a page the file no longer has is a bus error, which
no program survives (README: "Files"). The server can at least say why it stopped: one
line on stderr, then exit 135 (128 + SIGBUS), instead of vanishing without a word.

Real parts: the real server over stdio, the real llama.cpp, a real file truncated with
os.truncate while the model is loaded (a copy: the fixture stays whole)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.support.gguf_fixtures import tiny_fim_path
from tests.support.rpc_client import SERVER_CMD, RawLsp, model_entry, server_env, write_registry
from vibrant_rpc.server.main import SIGBUS_EXIT, SIGBUS_LINE

pytestmark = pytest.mark.asyncio

MODEL = "tiny-fim"


async def request(lsp: RawLsp, msg_id: int, method: str, params: object) -> dict[str, object]:
    await lsp.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
    return await lsp.reply_to(msg_id, timeout=120)


async def test_a_model_truncated_under_the_server_ends_it_with_one_line_saying_why(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    registry = write_registry(home / "registry.json", [model_entry(MODEL, ram_required_mb=50)])
    models = home / ".vibrant" / "models"
    models.mkdir(parents=True)
    model = models / f"{MODEL}.gguf"
    shutil.copyfile(tiny_fim_path(), model)  # a copy: truncating a link would hurt the fixture
    proc = await asyncio.create_subprocess_exec(
        *SERVER_CMD,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=server_env(home, registry),
    )
    lsp = RawLsp(proc)
    try:
        await request(lsp, 1, "initialize", {"processId": None, "capabilities": {}})
        await lsp.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        params = {"prompt": "def add(a, b):", "maxTokens": 4, "temperature": 0, "modelId": MODEL}
        first = await request(lsp, 2, "vibrant/complete", params)
        assert "result" in first, first  # loaded, mapped, answering

        os.truncate(model, 4096)  # another program truncates it in place
        t0 = time.monotonic()
        await lsp.send({"jsonrpc": "2.0", "id": 3, "method": "vibrant/complete", "params": params})
        code = await asyncio.wait_for(proc.wait(), 60)
        took = time.monotonic() - t0
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode(errors="replace")
        print(f"exit {code} {took:.2f} s after the truncation; stderr ends:\n{err[-600:]}")
        assert code == SIGBUS_EXIT
        assert SIGBUS_LINE.decode().strip() in err
        assert err.count("stopped by SIGBUS") == 1  # one line, however often the read faulted
    finally:
        await lsp.close()
