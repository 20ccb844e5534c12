"""``vibrant-rpc``: the JSON-RPC server editors spawn, on stdio with LSP framing (pygls 2)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import __version__
from ..redact import RedactingFilter
from .handlers import register
from .language_server import ClientLogHandler, VibrantServer
from .wire import DropExpectedErrors

log = logging.getLogger(__name__)


def create_server() -> VibrantServer:
    ls = VibrantServer()
    register(ls)
    return ls


def configure_logging(level: str, ls: VibrantServer) -> None:
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    stderr.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [stderr]
    root.setLevel(logging.WARNING)
    ours = logging.getLogger("vibrant_rpc")
    ours.setLevel(getattr(logging, level.upper(), logging.INFO))
    client = ClientLogHandler(ls)
    client.setFormatter(logging.Formatter("%(message)s"))
    client.addFilter(RedactingFilter())
    ours.addHandler(client)
    logging.getLogger("pygls.protocol.json_rpc").addFilter(DropExpectedErrors())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vibrant-rpc", description=(__doc__ or "").strip())
    parser.add_argument("--stdio", action="store_true", help="ignored: stdio is the transport")
    parser.add_argument("--log-level", default=os.environ.get("VIBRANT_LOG_LEVEL", "info"))
    parser.add_argument("--version", action="version", version=f"vibrant-rpc {__version__}")
    args, unknown = parser.parse_known_args(argv)
    ls = create_server()
    configure_logging(args.log_level, ls)
    if unknown:
        log.warning("ignoring arguments %s", " ".join(unknown))
    try:
        ls.start_io()
    finally:
        finished = ls.shutdown_work()
    if not finished:
        # A worker is stuck in llama.cpp; the interpreter would wait for it at exit.
        log.warning("exiting with work still running")
        logging.shutdown()
        os._exit(ls.exit_code)
    return ls.exit_code


if __name__ == "__main__":
    sys.exit(main())
