"""A real HTTP server on 127.0.0.1 that answers as an engine misbehaving would: the
cases the real llama-server can't be made to show on demand (a vLLM-style 404 for a
model, a redirect, a stall before the first token, a stream cut without its end).
Each request is recorded with its headers, so a test sees what reached which host."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Callable[["Handler"], None]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandIn

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, dict(self.headers), body))
        reply = self.server.routes.get(self.path)
        if reply is None:
            self.send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        reply(self)

    do_GET = do_POST = _handle

    def send_json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def start_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def event(self, value: Any) -> bool:
        """One ``data:`` event; False once the client has gone."""
        return self.chunk(f"data: {json.dumps(value)}\n\n".encode())

    def chunk(self, data: bytes) -> bool:
        """One chunk of a chunked answer; False once the client has gone."""
        try:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        except OSError:
            return False
        return True

    def end_events(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[str, Reply] = {}
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.gone = threading.Event()  # a streaming reply saw its client go

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def stand_in() -> Iterator[StandIn]:
    server = StandIn()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def llama_props(h: Handler) -> None:
    h.send_json(200, {"model_path": "/models/tiny.gguf", "model_alias": "tiny.gguf",
                      "total_slots": 1, "build_info": "b1"})  # fmt: skip


def llama_models(h: Handler) -> None:
    h.send_json(200, {"object": "list", "data": [{"id": "tiny.gguf", "aliases": []}]})


def slow_pieces(pieces: list[str], every_s: float, final: bool = True) -> Reply:
    """Streams ``pieces`` as llama-server does, one every ``every_s``."""

    def reply(h: Handler) -> None:
        h.start_events()
        for piece in pieces:
            time.sleep(every_s)
            if not h.event({"content": piece, "stop": False}):
                h.server.gone.set()
                return
        if final:
            h.event({"content": "", "stop": True, "stop_type": "limit",
                     "tokens_predicted": len(pieces), "tokens_evaluated": 3})  # fmt: skip
            h.end_events()
        else:
            h.close_connection = True

    return reply
