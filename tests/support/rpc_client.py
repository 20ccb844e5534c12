"""Helpers for the server tests: start the real server process over stdio, talk to it.

``start_server`` gives a pytest-lsp ``LanguageClient`` that records our custom
notifications and ``$/progress`` partial results (``serving`` does the same in an
``async with``, and stops it at the end); ``home_env`` makes a home with models cached.
``RawLsp`` speaks the framing by hand, for input no well-behaved client would send.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import LanguageClient, client_capabilities
from pytest_lsp.client import make_test_lsp_client

SERVER_CMD = [sys.executable, "-m", "vibrant_rpc", "--stdio"]
REPO = Path(__file__).resolve().parents[2]


def plain(value: Any) -> Any:
    """pygls hands custom results over as nested namedtuples: make them dicts and lists."""
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def server_env(home: Path, registry: Path | None = None, **extra: str) -> dict[str, str]:
    """The child's whole environment (pytest-lsp replaces it): ours plus a private home."""
    env = dict(os.environ)
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "VIBRANT_REGISTRY"):
        env.pop(var, None)
    env.update(HOME=str(home), VIBRANT_HOME=str(home / ".vibrant"), PYTHONPATH=str(REPO))
    # Traffic stays on loopback: without a stand-in, the Hub is a refused port, never the real one.
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    if registry is not None:
        env["VIBRANT_REGISTRY"] = str(registry)
    env.update(extra)
    return env


def write_registry(path: Path, models: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"models": models}))
    return path


def put_model_file(home: Path, model_id: str, source: Path) -> Path:
    """Place a model file in the cache folder by its cache name, as a hard link (the cache
    adopts it on first look; it adopts no symlink); saves copying 250 MB per test."""
    models = home / ".vibrant" / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = models / f"{model_id}.gguf"
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:  # another filesystem
        shutil.copyfile(source, target)
    return target


# A registry entry (model_entry) and the file the cache holds for it; None: not downloaded.
Model = tuple[dict[str, Any], Path | None]


def home_env(
    home: Path, models: Sequence[Model], *, registry: Path | None = None, **extra: str
) -> dict[str, str]:
    """A home whose registry (``home/registry.json`` unless named) lists ``models``, each
    file in the cache under its model's id; the server's environment for it (server_env)."""
    path = write_registry(registry or home / "registry.json", [entry for entry, _ in models])
    for entry, file in models:
        if file is not None:
            put_model_file(home, entry["id"], file)
    return server_env(home, path, **extra)


def copy_model_file(home: Path, name: str, source: Path) -> Path:
    models = home / ".vibrant" / "models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, models / name)
    return models / name


class Recorder:
    """Custom notifications and partial results, in arrival order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []  # (method or "$/progress:<token>", params)

    def of(self, method: str) -> list[dict[str, Any]]:
        return [p for m, p in self.events if m == method]

    def partials(self, token: str) -> list[dict[str, Any]]:
        return self.of(f"$/progress:{token}")

    async def wait_for(
        self, method: str, pred: Any = lambda p: True, timeout: float = 30
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.of(method):
                if pred(p):
                    return p
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no {method} matching within {timeout} s: {self.of(method)}")


async def start_server(
    env: dict[str, str],
    init_options: dict[str, Any] | None = None,
    *,
    work_done_progress: bool = True,
) -> tuple[LanguageClient, Recorder]:
    client = make_test_lsp_client()
    rec = Recorder()
    for method in (
        "vibrant/downloadProgress",
        "vibrant/modelStateChanged",
        "vibrant/updateAvailable",
    ):

        def record(ls: LanguageClient, params: Any, method: str = method) -> None:
            rec.events.append((method, plain(params)))

        client.feature(method)(record)

    # pytest-lsp's own $/progress handler knows only work-done values; partial results
    # ({text}) are ours.
    fm = client.protocol.fm
    default_progress = fm.features[types.PROGRESS]

    def progress(params: types.ProgressParams) -> None:
        value = params.value
        if isinstance(value, dict) and "kind" not in value:
            rec.events.append((f"$/progress:{params.token}", value))
            return
        rec.events.append((types.PROGRESS, {"token": params.token, **(value or {})}))
        default_progress(params)

    fm.features[types.PROGRESS] = progress

    await client.start_io(*SERVER_CMD, env=env)
    caps = client_capabilities("visual-studio-code")
    if caps.window is not None:
        caps.window.work_done_progress = work_done_progress
    await client.initialize_session(
        types.InitializeParams(capabilities=caps, initialization_options=init_options)
    )
    return client, rec


async def stop_server(client: LanguageClient) -> int | None:
    await asyncio.wait_for(client.shutdown_session(), 30)
    rc = client._server.returncode if client._server else None
    await client.stop()  # type: ignore[no-untyped-call]
    return rc


@asynccontextmanager
async def serving(
    env: dict[str, str], init_options: dict[str, Any] | None = None, *, exit_code: int | None = 0
) -> AsyncIterator[tuple[LanguageClient, Recorder]]:
    """The server started and initialized (start_server), shut down when the block ends;
    when it ends without an error, the server's exit status must be ``exit_code`` (None:
    any)."""
    client, rec = await start_server(env, init_options)
    try:
        yield client, rec
    finally:
        rc = await stop_server(client)
    if exit_code is not None:
        assert rc == exit_code, f"the server exited with {rc}"


async def call(client: LanguageClient, method: str, params: Any = None) -> Any:
    # pygls and pytest-lsp leave these methods unannotated.
    result = await client.protocol.send_request_async(method, params)  # type: ignore[no-untyped-call]
    return plain(result)


async def call_error(
    client: LanguageClient, method: str, params: Any = None
) -> tuple[int, str, dict[str, Any]]:
    """(code, message, data) of the error a request must answer with."""
    try:
        result = await client.protocol.send_request_async(method, params)  # type: ignore[no-untyped-call]
    except JsonRpcException as err:
        return err.code, err.message, plain(err.data) or {}
    raise AssertionError(f"{method} succeeded: {plain(result)}")


def pid(client: LanguageClient) -> int:
    assert client._server is not None
    return client._server.pid


def model_entry(model_id: str, filename: str | None = None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": model_id,
        "hf_repo": f"test/{model_id}",
        "filename": filename or f"{model_id}.gguf",
        "ram_required_mb": 400,
    }
    entry.update(extra)
    return entry


class RawLsp:
    """The server process driven byte by byte: for malformed input."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: list[dict[str, Any]] = []  # every message received, in order

    @classmethod
    async def start(cls, env: dict[str, str], args: Iterable[str] = ()) -> RawLsp:
        proc = await asyncio.create_subprocess_exec(
            *SERVER_CMD,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
        return cls(proc)

    async def send_bytes(self, body: bytes, header: bytes | None = None) -> None:
        assert self.proc.stdin is not None
        head = header if header is not None else b"Content-Length: %d\r\n\r\n" % len(body)
        self.proc.stdin.write(head + body)
        await self.proc.stdin.drain()

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_bytes(json.dumps(message).encode())

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        assert self.proc.stdout is not None
        length = None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                raise EOFError("server closed stdout")
            if not line.strip():
                break
            key, _, value = line.decode().partition(":")
            if key.strip().lower() == "content-length":
                length = int(value)
        assert length is not None
        data = await asyncio.wait_for(self.proc.stdout.readexactly(length), timeout)
        message: dict[str, Any] = json.loads(data)
        self.seen.append(message)
        return message

    async def reply_to(self, msg_id: Any, timeout: float = 10) -> dict[str, Any]:
        """The response to ``msg_id`` (``None``: an error reply without id)."""
        while True:
            message = await self.recv(timeout)
            if "method" in message:
                continue  # a notification (logMessage, ...)
            if message.get("id") == msg_id:
                return message

    async def close(self) -> int:
        if self.proc.returncode is None:
            self.proc.kill()
        return await self.proc.wait()
