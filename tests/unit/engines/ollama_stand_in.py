"""A stand-in for Ollama on loopback (no Ollama binary here, none on PyPI): the routes
vibrant uses, answering as Ollama's docs/api.md and openai/openai.go say it does.

- ``GET /`` "Ollama is running"; ``/api/version``; ``/api/tags`` (the models); anything
  else unknown (``/props``) gin's plain-text "404 page not found".
- ``POST /api/generate``: 404 ``{"error": "model \\"x\\" not found, try pulling it first"}``
  for a model it lacks; else newline-delimited JSON, a ``response`` piece every
  ``every_s``, the last ``{"done": true, "done_reason", "prompt_eval_count",
  "eval_count", ...}``. ``raw: false`` (the default) wraps the prompt in the model's
  template first, Qwen 2.5's chat turn for an instruct tag; the fake model answers a
  chat turn as a chat model does ("Sure! Here is...") and a FIM prompt with its
  middle. ``options.num_predict`` ends it with "length", ``options.stop`` strings are
  cut out and end it with "stop". It checks before each piece whether the client has
  gone (as Go's server cancels the request's context) and stops there.
- ``POST /v1/completions``: Ollama's OpenAI route, which builds the same generate
  request without ``raw`` (``FromCompleteRequest``), streamed as server-sent events.

Each generation is recorded (``runs``): the prompt the model saw, what was sent, why it
ended and when; requests and their headers are in the StandIn's ``seen``.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.unit.engines.stand_in import Handler, StandIn

VERSION = "0.6.5"
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
CHAT_ANSWER = ["Sure", "!", " Here", " is", " the", " completed", " code", ":\n", "```"]


def chat_template(prompt: str) -> str:
    """What Ollama's template for qwen2.5-coder's instruct tags makes of a prompt alone."""
    return (
        f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    )


@dataclass
class Run:
    """One generation: what the model saw and what became of it."""

    model: str
    seen: str  # the prompt after the template (raw: the prompt itself)
    raw: bool
    sent: list[str] = field(default_factory=list)
    ended: str = ""  # "stop", "length", or "disconnect": the client went
    ended_at: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)


class Ollama:
    """Ollama's routes on a StandIn. ``middle`` is what the fake model writes for a FIM
    prompt (then its end of text), one piece a token."""

    def __init__(self, server: StandIn, models: list[str], every_s: float = 0.02) -> None:
        self.server = server
        self.models = list(models)
        self.every_s = every_s
        self.middle = ["a", " +", " b", "\n"]
        self.runs: list[Run] = []
        routes = server.routes
        routes["/"] = lambda h: _plain(h, 200, "Ollama is running")
        routes["/api/version"] = lambda h: h.send_json(200, {"version": VERSION})
        routes["/api/tags"] = self._tags
        routes["/api/generate"] = self._generate
        routes["/v1/models"] = lambda h: h.send_json(
            200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}
        )
        routes["/v1/completions"] = self._openai_completions
        for path in ("/props", "/health", "/infill", "/completion"):
            routes[path] = lambda h: _plain(h, 404, "404 page not found")

    def _tags(self, h: Handler) -> None:
        details = {"format": "gguf", "family": "qwen2"}
        models = [{"name": m, "model": m, "size": 4683087332, "details": details}
                  for m in self.models]  # fmt: skip
        h.send_json(200, {"models": models})

    def _body(self) -> dict[str, Any]:
        return dict(json.loads(self.server.seen[-1][3] or b"{}"))

    def _generate(self, h: Handler) -> None:
        body = self._body()
        model = body.get("model", "")
        if model not in self.models:
            h.send_json(404, {"error": f'model "{model}" not found, try pulling it first'})
            return
        raw = bool(body.get("raw", False))
        prompt = body.get("prompt", "")
        run = Run(model=model, seen=prompt if raw else chat_template(prompt), raw=raw)
        self.runs.append(run)
        h.send_response(200)
        h.send_header("Content-Type", "application/x-ndjson")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for piece, final in self._pieces(h, run, body.get("options") or {}):
            if not final:
                line = {"model": model, "created_at": _now(), "response": piece, "done": False}
                if not _write(h, line):
                    _ended(run, "disconnect", self.server)
                    return
                continue
            done = {"model": model, "created_at": _now(), "response": "", "done": True,
                    "done_reason": piece, "total_duration": 123456789, "load_duration": 1000,
                    "prompt_eval_count": len(run.seen) // 4, "prompt_eval_duration": 1000,
                    "eval_count": len(run.sent), "eval_duration": 1000}  # fmt: skip
            _write(h, done)
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()

    def _openai_completions(self, h: Handler) -> None:
        """Ollama's /v1/completions: a generate request without raw (FromCompleteRequest)."""
        body = self._body()
        model = body.get("model", "")
        if model not in self.models:
            error = {"message": f'model "{model}" not found, try pulling it first',
                     "type": "api_error", "param": None, "code": None}  # fmt: skip
            h.send_json(404, {"error": error})
            return
        run = Run(model=model, seen=chat_template(body.get("prompt", "")), raw=False)
        self.runs.append(run)
        options = {"stop": body.get("stop") or [], "num_predict": body.get("max_tokens")}
        h.start_events()
        for piece, final in self._pieces(h, run, options):
            choice = {"text": "" if final else piece, "index": 0,
                      "finish_reason": piece if final else None}  # fmt: skip
            if not h.event({"id": "cmpl-1", "object": "text_completion", "model": model,
                            "choices": [choice]}):  # fmt: skip
                _ended(run, "disconnect", self.server)
                return
        h.chunk(b"data: [DONE]\n\n")
        h.end_events()

    def _pieces(self, h: Handler, run: Run, options: dict[str, Any]) -> Iterator[tuple[str, bool]]:
        """(piece, False) per token, then (done_reason, True); stops when the client goes."""
        answer = CHAT_ANSWER if run.seen.startswith("<|im_start|>") else self.middle
        limit = options.get("num_predict") or 10_000
        stops = list(options.get("stop") or [])
        text = ""
        for piece in answer:
            time.sleep(self.every_s)
            if _gone(h, run):
                return
            if len(run.sent) >= limit:
                _ended(run, "length", self.server)
                yield "length", True
                return
            cut = _first_stop(text + piece, stops)
            if cut is not None:
                piece = (text + piece)[len(text) : cut]
                if piece:
                    run.sent.append(piece)
                    yield piece, False
                _ended(run, "stop", self.server)
                yield "stop", True
                return
            text += piece
            run.sent.append(piece)
            yield piece, False
        _ended(run, "stop", self.server)  # the model's end of text
        yield "stop", True


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None


def _gone(h: Handler, run: Run) -> bool:
    """Whether the client closed its side (Go's server sees this and cancels the
    request's context; the runner stops at its next token)."""
    conn = h.connection
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        closed = bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        closed = True
    if closed:
        _ended(run, "disconnect", h.server)
    return closed


def _ended(run: Run, why: str, server: StandIn) -> None:
    if not run.ended:
        run.ended, run.ended_at = why, time.monotonic()
        if why == "disconnect":
            server.gone.set()
        run.done.set()


def _write(h: Handler, value: Any) -> bool:
    return h.chunk(json.dumps(value).encode() + b"\n")


def _plain(h: Handler, status: int, text: str) -> None:
    data = text.encode()
    h.send_response(status)
    h.send_header("Content-Type", "text/plain; charset=utf-8")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
