"""Run a command with this process's stdin copied to a file on its way to the command:
what an editor sent to its language server, byte for byte.

    python tests/support/stdio_tee.py LOG -- COMMAND [ARGS...]
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys


def main() -> int:
    log, sep, *cmd = sys.argv[1:]
    assert sep == "--" and cmd, __doc__
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE)  # its stdout is ours
    assert child.stdin is not None
    stdin = sys.stdin.buffer
    assert isinstance(stdin, io.BufferedReader)  # read1: what has come, without waiting for more
    with open(log, "wb", buffering=0) as out:
        try:
            while chunk := stdin.read1(65536):
                out.write(chunk)
                child.stdin.write(chunk)
                child.stdin.flush()
        except BrokenPipeError:
            pass  # the server exited first
    with contextlib.suppress(BrokenPipeError):
        child.stdin.close()
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
