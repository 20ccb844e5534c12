"""`vibrant model serve`'s half of a team engine: llama-server on a cached model, kept up.

As Tabby's ``crates/llama-cpp-server/src/supervisor.rs`` does (docs/engines.md): start
llama-server, poll ``GET /health`` until it serves, keep its last stderr lines, restart
it when it exits without being asked, and give up after ``MAX_CRASHES`` exits within
``CRASH_WINDOW_S``, printing those lines. It restarts at once (Tabby waits 1 s): a
killed llama-server serves again as soon as it has mapped the model (mmap: the pages
are still in the page cache), well inside the 5 s a laptop's completion may wait.

The key reaches llama-server as ``--api-key-file``, never on its command line, which
any user of the machine can read in ``ps``. Off loopback a key is required.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import msgspec

from ..errors import VibrantError
from ..inference.llama_setup import cpu_has_amx

log = logging.getLogger(__name__)

MAX_CRASHES, CRASH_WINDOW_S = 5, 60.0
KEPT_LINES = 100  # of llama-server's output, for the message when it gives up
HEALTH_POLL_S = 0.1  # until it serves; then every HEALTH_EVERY_S
HEALTH_EVERY_S = 1.0
STOP_GRACE_S = 10.0  # after SIGTERM, before SIGKILL
# llama-server reuses cached chunks of at least this many tokens at other positions
# (--cache-reuse): a keystroke that shifts the window keeps most of its cache.
CACHE_REUSE = 256
DEFAULT_PORT = 8012  # llama.vim's and llama.vscode's default


def _dies_with_parent() -> Callable[[], None] | None:
    """Linux: a ``preexec_fn`` that has the kernel SIGKILL llama-server when serve dies.

    A serve killed with SIGKILL (or OOM) runs no cleanup, and its llama-server would go
    on holding the port, the model's memory and the GPU. ``PR_SET_PDEATHSIG`` fires when
    the *thread* that forked exits: ``Supervisor.run`` starts every llama-server from the
    main thread, which lives as long as serve. Elsewhere (macOS) there is no such call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # serve died between the fork and the prctl
            os._exit(1)

    return preexec


class ServeSpec(msgspec.Struct, kw_only=True, frozen=True):
    """What llama-server runs with: the model and the fit's numbers, per slot."""

    llama_server: Path
    model_id: str
    model_path: Path  # the first shard of a split model: llama.cpp finds the rest
    context: int  # tokens per completion (per slot); llama-server's -c is this × parallel
    gpu_layers: int
    parallel: int = 1
    threads: int | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    key_file: Path | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def find_llama_server(setting: str | None) -> Path:
    """The llama-server the ``llama_server`` setting names, else the one on PATH."""
    found = shutil.which(setting or "llama-server")
    if found is None:
        where = f"The llama_server setting names {setting!r}, which" if setting else (
            "No llama-server is on PATH; it")  # fmt: skip
        raise VibrantError(
            f"{where} can't be run.",
            hint='Build one as the README says ("A team\'s inference server"), or set '
            "llama_server in config.toml to its path.",
        )
    return Path(found)


def check_exposure(host: str, key_file: Path | None) -> None:
    if key_file is None and not is_loopback(host):
        raise VibrantError(
            f"Refusing to serve on {host} without a key: anyone who can reach it could use "
            "it (and read what is sent).",
            hint="Pass --api-key-file FILE (a long random key on its first line), or keep "
            "the default host, 127.0.0.1.",
        )


def serve_args(spec: ServeSpec) -> list[str]:
    args = [
        str(spec.llama_server),
        "--model", str(spec.model_path),
        "--alias", spec.model_id,
        "--ctx-size", str(spec.context * spec.parallel),
        "--n-gpu-layers", str(spec.gpu_layers),
        "--parallel", str(spec.parallel),
        "--cache-reuse", str(CACHE_REUSE),
        # vibrant's fit chose the context and layers: llama.cpp's own fitting (a dry load
        # per try, on by default) would only slow each start, and a restart most of all.
        "--fit", "off",
        "--host", spec.host,
        "--port", str(spec.port),
        "--no-webui",
    ]  # fmt: skip
    if spec.threads:
        args += ["--threads", str(spec.threads)]
    if spec.key_file is not None:
        args += ["--api-key-file", str(spec.key_file)]
    if cpu_has_amx():
        # As the runtime does: repacked weights take the AMX matmul, which dies in VMs.
        args.append("--no-repack")
    return args


def laptop_setting(spec: ServeSpec, name: str = "team") -> str:
    """The lines a laptop puts in its config.toml to use this server."""
    host = spec.host
    if host in ("0.0.0.0", "::"):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    lines = [f'engine = "{name}"', f"[engines.{name}]", f'url = "http://{host}:{spec.port}"',
             'kind = "llama-server"', 'fallback = "local"']  # fmt: skip
    if spec.key_file is not None:
        lines.append('api_key_file = "~/.config/vibrant/team.key"  # a copy of the key file')
    return "\n".join(lines)


class Supervisor:
    """Runs llama-server until ``stop`` is set; restarts it when it exits on its own."""

    def __init__(
        self,
        args: list[str],
        health_url: str,
        say: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.args = args
        self.health_url = health_url
        self.say = say
        self._clock = clock
        self.lines: collections.deque[str] = collections.deque(maxlen=KEPT_LINES)
        self.crashes: collections.deque[float] = collections.deque()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.serving = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Blocks until ``stop`` (then llama-server is stopped), or raises VibrantError when
        llama-server keeps crashing (the message carries its last lines)."""
        try:
            while not stop.is_set():
                self._start()
                code = self._watch(stop)
                if stop.is_set():
                    break
                self._crashed(code)
        finally:
            self._stop()

    def _start(self) -> None:
        self.serving.clear()
        self.starts += 1
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # One prctl between fork and exec: no lock the reader threads could hold.
            preexec_fn=_dies_with_parent(),
        )
        threading.Thread(target=self._keep_lines, args=(self.proc,), daemon=True).start()

    def _keep_lines(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if "/health" not in line:  # its polling would crowd out what matters
                self.lines.append(line)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _watch(self, stop: threading.Event) -> int:
        """Until llama-server exits (its code) or ``stop`` is set (0)."""
        assert self.proc is not None
        started = self._clock()
        next_check = started
        while not stop.is_set():
            code = self.proc.poll()
            if code is not None:
                return code
            if self._clock() >= next_check:
                healthy = self._healthy()
                if healthy and not self.serving.is_set():
                    took = self._clock() - started
                    self.serving.set()
                    again = " again" if self.starts > 1 else ""
                    self.say(f"llama-server is serving{again} ({took:.1f} s after its start).")
                elif not healthy and self.serving.is_set():
                    self.serving.clear()
                    self.say("llama-server stopped answering /health.")
                every = HEALTH_EVERY_S if self.serving.is_set() else HEALTH_POLL_S
                next_check = self._clock() + every
            stop.wait(0.02)
        return 0

    def _crashed(self, code: int) -> None:
        now = self._clock()
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > CRASH_WINDOW_S:
            self.crashes.popleft()
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        if len(self.crashes) >= MAX_CRASHES:
            last = "\n".join(list(self.lines)[-20:])
            raise VibrantError(
                f"llama-server stopped {len(self.crashes)} times within "
                f"{CRASH_WINDOW_S:g} s (last: {how}); giving up. Its last lines:\n{last}"
            )
        self.say(f"llama-server stopped ({how}); restarting it.")

    def _stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_GRACE_S)
