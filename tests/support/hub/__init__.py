"""A loopback stand-in for the Hugging Face Hub (endpoint + signed-URL CDN).

Standard library only.  Two real HTTP/1.1 servers:

* the *endpoint* on 127.0.0.1 (resolve URLs, the JSON API, and a control API
  under ``/_stub/``), and
* the *CDN* on 127.0.0.2, which serves blobs by SHA-256 behind signed,
  expiring URLs, with byte ranges.

See ``docs/hub-protocol.md`` for the behaviour this mirrors.  Use it in-process::

    with HubStub() as stub:
        commit = stub.add_repo("Qwen/X-GGUF", {"x.gguf": b"..."})
        os.environ["HF_ENDPOINT"] = stub.endpoint
        stub.faults.drop_after_bytes = 1000
        stub.faults.drop_count = 1

or as a separate process::

    python tests/support/hub_stub.py --repo Qwen/X-GGUF=/abs/x.gguf --ready-file /tmp/r.json

Modules, lowest first: content (blobs, files, repositories), faults, replies (the HTTP
plumbing), cdn, endpoint, handler (one request, recorded), stub (the servers and their
state), cli (the process).
"""

from tests.support.hub.cli import main
from tests.support.hub.content import Blob, FileEntry, lfs_pointer
from tests.support.hub.faults import Faults
from tests.support.hub.handler import RequestRecord
from tests.support.hub.stub import HubStub

__all__ = [
    "Blob",
    "Faults",
    "FileEntry",
    "HubStub",
    "RequestRecord",
    "lfs_pointer",
    "main",
]
