"""``vibrant-rpc``: the JSON-RPC server editors spawn, on stdio with LSP framing (pygls 2)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from .. import __version__
from ..redact import RedactingFilter
from .handlers import register
from .language_server import ClientLogHandler, VibrantServer
from .wire import DropExpectedErrors

log = logging.getLogger(__name__)

# What the server says as it dies of SIGBUS: llama.cpp maps a model file into memory, and
# a read of a page the file no longer has (truncated, or overwritten in place, by another
# program) is a bus error. The server can't go on (the faulting read would only repeat),
# but the editor's log can say why it stopped.
SIGBUS_LINE = (
    b"vibrant-rpc: stopped by SIGBUS (bus error): a model file mapped into memory shrank "
    b"while it was loaded (truncated or overwritten in place by another program). Replace "
    b"model files by renaming them; the server can be started again.\n"
)
SIGBUS_EXIT = 128 + signal.SIGBUS  # as a shell reports a death by that signal


def say_why_on_sigbus() -> None:
    """Write ``SIGBUS_LINE`` to stderr and exit on a bus error, whichever thread faults.
    Python's own C handler only notes the signal and returns, so the faulting read
    repeats; the note reaches a thread of ours through the wakeup fd (a pipe), and that
    thread, which never touches a model's pages, says why and exits. (Every llama.cpp
    call runs on the compute thread with the GIL released, so this thread can run.)
    Must be called from the main thread."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)

    def stop(*_: object) -> None:
        os.write(2, SIGBUS_LINE)
        os._exit(SIGBUS_EXIT)

    def watch() -> None:
        while True:
            if signal.SIGBUS in os.read(read_end, 64):  # one byte per signal noted
                stop()

    signal.signal(signal.SIGBUS, stop)  # the main thread, if it gets there first
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    threading.Thread(target=watch, name="vibrant-sigbus", daemon=True).start()


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
    say_why_on_sigbus()
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
