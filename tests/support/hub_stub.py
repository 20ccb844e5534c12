"""The loopback Hub stand-in's old address: it lives in tests/support/hub/ (see its
docstring); this face keeps ``from tests.support.hub_stub import HubStub`` and
``python tests/support/hub_stub.py --repo OWNER/NAME=PATH ...`` working."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, Python puts tests/support/ on sys.path, not the checkout's root.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.hub import Blob, Faults, FileEntry, HubStub, RequestRecord, lfs_pointer, main

__all__ = ["Blob", "Faults", "FileEntry", "HubStub", "RequestRecord", "lfs_pointer", "main"]

if __name__ == "__main__":
    sys.exit(main())
