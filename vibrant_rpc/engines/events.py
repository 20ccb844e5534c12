"""An engine's streamed answer split into events as they arrive: server-sent events
(llama-server, OpenAI-compatible servers) or newline-delimited JSON (Ollama)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx


def _lines(response: httpx.Response) -> Iterator[bytes]:
    """The answer's lines as they arrive, without their line ends."""
    pending = b""
    for chunk in response.iter_raw():
        pending += chunk
        while True:
            end = pending.find(b"\n")
            if end < 0:
                break
            line, pending = pending[:end].rstrip(b"\r"), pending[end + 1 :]
            yield line


def sse_events(response: httpx.Response) -> Iterator[bytes]:
    """The ``data:`` payloads of a server-sent event stream, as they arrive (comments,
    such as llama-server's ``:`` pings, and other fields skipped)."""
    for line in _lines(response):
        if line.startswith(b"data:"):
            yield line[5:].lstrip(b" ")


def ndjson_lines(response: httpx.Response) -> Iterator[bytes]:
    """The lines of a newline-delimited JSON stream (Ollama's ``application/x-ndjson``:
    one object a line), as they arrive; blank lines skipped."""
    for line in _lines(response):
        if line := line.strip():
            yield line
