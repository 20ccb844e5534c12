"""``vibrant model serve <id>``: a team's inference server on this machine.

llama-server (on PATH, or the ``llama_server`` setting) on the cached model, verified
first, with the context and GPU layers the fit chooses for ``--parallel`` slots,
supervised (``engines.supervisor``) until Ctrl-C or SIGTERM. The model is marked in use
meanwhile, so no prune in any process removes it. It prints the lines a laptop puts in
its config.toml.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from ..cache.locks import InUseMark
from ..errors import VibrantError

if TYPE_CHECKING:
    from rich.console import Console

    from ..app import Vibrant


class Context(Protocol):
    """What serve needs of ``commands.Context`` (which imports this module to register it)."""

    args: argparse.Namespace
    out: Console
    err: Console

    @property
    def app(self) -> Vibrant: ...


# Fewer tokens per slot than this and a completion window no longer fits (fit's floor).
MIN_SLOT_CONTEXT = 2048


def add_serve(add: Callable[..., argparse.ArgumentParser]) -> None:
    """``serve``'s arguments, registered by ``commands.build_parser``."""
    p = add("serve", cmd_serve, "run llama-server on a cached model for a team's editors")
    p.add_argument("model_id", help="a cached model's id, or 'auto' for this machine's model")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (127.0.0.1; any other needs a key)")  # fmt: skip
    p.add_argument("--port", type=int, default=None, help="port (default 8012)")
    p.add_argument("--parallel", type=_positive, default=1,
                   help="completions served at once (llama-server's slots; default 1)")  # fmt: skip
    p.add_argument("--api-key-file", type=Path, default=None,
                   help="a file whose first line is the key editors must send")  # fmt: skip
    p.add_argument("--context", type=_positive, default=None,
                   help="tokens per completion (default: the context_size setting)")  # fmt: skip


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def cmd_serve(ctx: Context) -> int:
    from ..engines.keys import read_key_file
    from ..engines.supervisor import (
        DEFAULT_PORT,
        ServeSpec,
        Supervisor,
        check_exposure,
        find_llama_server,
        is_loopback,
        laptop_setting,
        serve_args,
    )

    args, app = ctx.args, ctx.app
    key_file = args.api_key_file.expanduser().resolve() if args.api_key_file else None
    check_exposure(args.host, key_file)
    if key_file is not None:
        read_key_file(key_file, "--api-key-file")  # readable, with a key (never printed)
    binary = find_llama_server(app.settings.llama_server)
    model_id = app.resolve_id(args.model_id)
    entry = app.cache.verify(model_id, force=False)  # hashes only files that changed
    model_path = app.cache.file_paths(entry)[0]
    parallel = args.parallel
    per_slot = args.context or app.settings.context_size
    total = per_slot * parallel if isinstance(per_slot, int) and per_slot else per_slot
    fit = app.fit(model_id, app.load_request(context_size=total))
    if not fit.fits:
        raise VibrantError(f"{model_id} with {parallel} slot(s) {fit.verdict}.",
                           hint="Fewer --parallel slots, or a smaller --context.")  # fmt: skip
    slot_context = fit.context // parallel
    if slot_context < MIN_SLOT_CONTEXT:
        raise VibrantError(
            f"{parallel} slots of {fit.context} tokens leave {slot_context} per completion; "
            f"a completion needs {MIN_SLOT_CONTEXT}.",
            hint="Fewer --parallel slots.",
        )
    spec = ServeSpec(
        llama_server=binary, model_id=model_id, model_path=model_path, context=slot_context,
        gpu_layers=fit.gpu_layers, parallel=parallel, threads=app.settings.threads,
        host=args.host, port=args.port or DEFAULT_PORT, key_file=key_file,
    )  # fmt: skip
    health_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    if ":" in health_host:
        health_host = f"[{health_host}]"
    say = ctx.err.print
    gpu = f"{fit.gpu_layers} layers on the GPU" if fit.gpu_layers else "every layer in RAM"
    say(f"Serving {model_id} on {args.host}:{spec.port}: {parallel} slot(s) of "
        f"{slot_context} tokens, {gpu} ({fit.verdict}).", markup=False)  # fmt: skip
    if not is_loopback(args.host):
        say("Editors on other machines reach it with the key; what they send (the code "
            "around their cursor) crosses the network unencrypted: keep it on a trusted "
            "network, or behind a TLS proxy.", markup=False)  # fmt: skip
    say("A laptop's ~/.vibrant/config.toml:", markup=False)
    ctx.out.print(laptop_setting(spec), markup=False, soft_wrap=True)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    mark = InUseMark(app.paths.locks, model_id)  # no prune removes it while it serves
    supervisor = Supervisor(
        serve_args(spec),
        f"http://{health_host}:{spec.port}/health",
        lambda line: say(line, markup=False),
    )
    try:
        supervisor.run(stop)
    finally:
        mark.release()
        for s, handler in previous.items():
            signal.signal(s, handler)
    say("llama-server stopped.", markup=False)
    return 0
