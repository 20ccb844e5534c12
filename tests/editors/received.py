"""What an editor sent its language server, byte for byte (tests/support/stdio_tee.py keeps
it): the JSON-RPC messages, each body decoded as strict UTF-8; and the check both shims'
end-to-end tests make of the completion they ask from pkg/models.py."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.editors.ring_cases import sent_context


def lsp_messages(raw: bytes) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an LSP byte stream; each body must be strict UTF-8."""
    out = []
    while raw:
        header, blank, rest = raw.partition(b"\r\n\r\n")
        found = re.search(rb"Content-Length: (\d+)", header, re.I)
        if not blank or found is None or len(rest) < int(found[1]):
            # The last message cut short: the editor was stopped while it wrote (the suite
            # ends by closing it); what it finished sending is all there is.
            break
        length = int(found[1])
        body, raw = rest[:length], rest[length:]
        out.append(json.loads(body.decode("utf-8")))  # raises on a broken character
    return out


def completes(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The vibrant/complete params among them, in order."""
    return [m["params"] for m in messages if m.get("method") == "vibrant/complete"]


def check_models_request(sent: list[dict[str, Any]]) -> dict[str, Any]:
    """The first completion asked from pkg/models.py (ring_cases' cursor file), checked: it
    names its language, python, and carries the chunks of pkg/helpers.py that the ring kept
    (``ring_cases.sent_context``, in order), and leaves one line or several to the server."""
    mid = next((p for p in sent if p.get("filename") == "pkg/models.py"), None)
    assert mid is not None, [p.get("filename") for p in sent]
    assert mid["languageId"] == "python"
    assert [[c["filename"], c["text"]] for c in mid.get("context", [])] == sent_context()
    assert "multiline" not in mid  # the server decides, by its rule
    return mid
