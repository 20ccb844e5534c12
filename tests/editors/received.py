"""What an editor sent its language server, byte for byte (tests/support/stdio_tee.py keeps
it): the JSON-RPC messages, each body decoded as strict UTF-8."""

from __future__ import annotations

import json
import re
from typing import Any


def lsp_messages(raw: bytes) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an LSP byte stream; each body must be strict UTF-8."""
    out = []
    while raw:
        header, _, rest = raw.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", header, re.I)[1])  # type: ignore[index]
        body, raw = rest[:length], rest[length:]
        out.append(json.loads(body.decode("utf-8")))  # raises on a broken character
    return out


def completes(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The vibrant/complete params among them, in order."""
    return [m["params"] for m in messages if m.get("method") == "vibrant/complete"]
