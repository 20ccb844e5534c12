"""The real llama-server, on loopback, for the engine tests (marker ``engine``).

Built once per machine from the llama.cpp vendored in the llama-cpp-python 0.3.36 sdist
(``bench.bench_typing.build_llama_server``: about 20 minutes on 2 cores) into
``~/.cache/vibrant-bench/llama-server``, a folder that survives between CI runs on one
machine; ``scripts/test.sh`` builds it before pytest when it is missing, and
``llama_server_bin`` does when a test is run alone.

    python -m tests.support.llama_server   # build it now (prints its path)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

# The real home: tests run with HOME pointed at a temporary folder.
REAL_HOME = Path(pwd.getpwuid(os.getuid()).pw_dir)
CACHE = REAL_HOME / ".cache" / "vibrant-bench" / "llama-server"
LLAMA_SERVER = CACHE / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp" / "build" / "bin"
LLAMA_SERVER = LLAMA_SERVER / "llama-server"
KEY = "test-key-5b1f0c9e2d7a4c61"  # long enough for redact's secrets


def build() -> Path:
    """The llama-server binary, built first when missing (the same recipe as the typing
    benchmark's, into the same folder)."""
    if LLAMA_SERVER.exists():
        return LLAMA_SERVER
    saved = os.environ.get("HOME")
    os.environ["HOME"] = str(REAL_HOME)  # the recipe's cache folder is under the home
    try:
        from bench import bench_typing

        built = bench_typing.build_llama_server()
    finally:
        if saved is not None:
            os.environ["HOME"] = saved
    assert built == LLAMA_SERVER, (built, LLAMA_SERVER)
    return built


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def no_repack() -> list[str]:
    from vibrant_rpc.inference.llama_setup import cpu_has_amx

    # As the runtime does on AMX CPUs: repacked weights crash in this VM's AMX matmul.
    return ["--no-repack"] if cpu_has_amx() else []


class LlamaServer:
    """One llama-server process on 127.0.0.1, its output in ``log``."""

    def __init__(
        self,
        model: Path,
        tmp: Path,
        *,
        key: str | None = KEY,
        alias: str | None = None,
        parallel: int = 1,
        context: int = 4096,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = key
        tmp.mkdir(parents=True, exist_ok=True)
        self.log = tmp / f"llama-server-{self.port}.log"
        args = [str(build()), "-m", str(model), "-c", str(context * parallel), "-t", "2",
                "--host", "127.0.0.1", "--port", str(self.port), "-np", str(parallel),
                "--cache-reuse", "256", "--no-webui", *no_repack()]  # fmt: skip
        if key is not None:
            key_file = tmp / f"key-{self.port}"
            key_file.write_text(key + "\n")
            args += ["--api-key-file", str(key_file)]
        if alias is not None:
            args += ["--alias", alias]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.wait_ready()

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"llama-server not ready in {timeout_s} s: {self.log.read_text()}")

    def slots(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/slots", headers=self.headers(), timeout=5)
        response.raise_for_status()
        slots: list[dict[str, Any]] = response.json()
        return slots

    def held(self, slot: int = 0) -> int:
        """Tokens the slot's cache holds: its last prompt and what it generated after it
        (so, less the prompt, how far a cancelled completion went on)."""
        (found,) = [s for s in self.slots() if s["id"] == slot]
        return int(found["n_prompt_tokens"])

    def prompt_tokens(self, prompt: str) -> int:
        """How many tokens ``/completion`` evaluates for ``prompt`` (BOS included)."""
        response = httpx.post(f"{self.url}/tokenize", headers=self.headers(), timeout=10,
                              json={"content": prompt, "add_special": True})  # fmt: skip
        response.raise_for_status()
        return len(response.json()["tokens"])

    def busy(self) -> bool:
        return any(s.get("is_processing") for s in self.slots())

    def idle_within(self, seconds: float) -> float | None:
        """Seconds until every slot is idle; None if not within ``seconds``."""
        started = time.perf_counter()
        while True:
            if not self.busy():
                return time.perf_counter() - started
            if time.perf_counter() - started > seconds:
                return None
            time.sleep(0.005)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    return build()


@contextlib.contextmanager
def running(model: Path, tmp: Path, **kwargs: Any) -> Iterator[LlamaServer]:
    server = LlamaServer(model, tmp, **kwargs)
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    print(build())
