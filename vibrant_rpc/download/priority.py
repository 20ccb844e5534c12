"""Bulk work (a download's connections, its hashing) yields the CPU to the user's.

A 10 GB download hashes at a core's full speed; on a laptop that core is one llama.cpp
needs for the completion the user is waiting for. The threads that move and hash bytes
lower their own priority; the event loop and llama.cpp's thread keep theirs.
"""

from __future__ import annotations

import contextlib
import os
import threading

BACKGROUND_NICE = 10


def run_in_background() -> None:
    """Lower the calling thread's priority (Linux: per thread; elsewhere a no-op)."""
    # PRIO_PROCESS with a thread id sets that thread's nice value on Linux; raising it
    # needs no privilege. macOS and Windows lack per-thread nice: left as it is.
    with contextlib.suppress(OSError, AttributeError):
        here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), max(here, BACKGROUND_NICE))
