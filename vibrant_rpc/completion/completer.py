"""One editor's completions: the policy over whatever answers them.

A server has one editor, so a new completion cancels the one still running or queued:
the new request means the user typed on (Copilot drops superseded requests the same
way), and the superseded one raises ``Cancelled``. A prompt that types the start of the
last suggestion is answered from it (``typed_through``) without the model, where the
model would give the same again (the caller says where: greedy, nothing to stop on).

Plain Python, blocking, thread-safe; it knows nothing of JSON-RPC. The completion
itself comes from ``answer`` (by default the lifecycle's; the service's may go to an
engine), which also returns the caller's note on it (what the wire says besides the
text: kept with the suggestion, so a typed-through answer says the same).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

from ..errors import Cancelled
from ..inference.model import CompletionRequest, CompletionResult
from .lifecycle import Completion, Lifecycle, StateChange
from .typed_through import TypedThrough

N = TypeVar("N")
OnText = Callable[[str], None]
OnChange = Callable[[StateChange], None]
# (request, on_text, cancel, on_change) -> the completion and the caller's note on it.
AnswerFn = Callable[
    [CompletionRequest, OnText | None, threading.Event, OnChange | None], tuple[Completion, N]
]


class Answer(msgspec.Struct, Generic[N], frozen=True, kw_only=True):
    completion: Completion
    note: N
    # Answered from the last suggestion without the model: the prompt typed its start.
    typed_through: bool = False


class Completer(Generic[N]):
    def __init__(self, lifecycle: Lifecycle, canonical_id: Callable[[str], str]) -> None:
        self.lifecycle = lifecycle
        self._canonical_id = canonical_id  # an alias is the model it names
        self._typed = TypedThrough()  # the editor's last suggestion
        self._typed_answer: Answer[N] | None = None  # and what came with it
        # The cancel of the completion running now: the next one sets it (superseded).
        self._running: threading.Event | None = None
        self._lock = threading.Lock()

    def complete(
        self,
        req: CompletionRequest,
        answer: AnswerFn[N],
        *,
        model_id: str | None = None,
        repeatable: bool,
        on_text: OnText | None = None,
        cancel: threading.Event | None = None,
        on_change: OnChange | None = None,
        typed_model: str | None = None,
    ) -> Answer[N]:
        """Cancel the completion still running, then answer ``req``: from the last
        suggestion when ``repeatable`` and the prompt types its start, else by ``answer``.
        ``typed_model``: whose suggestion a request without ``model_id`` types through
        (None: the loaded model's)."""
        cancel = cancel or threading.Event()
        with self._lock:
            superseded, self._running = self._running, cancel
        if superseded is not None:
            superseded.set()  # the model stops within a token or a prompt batch
        try:
            if repeatable:
                hit = self._typed_through(req, model_id or typed_model)
                if hit is not None:
                    if on_text is not None and hit.completion.result.text:
                        on_text(hit.completion.result.text)
                    return hit
            done, note = answer(req, on_text, cancel, on_change)
            r = done.result
            if r.finish_reason == "cancelled":
                raise Cancelled()
            answered = Answer(completion=done, note=note)
            if repeatable:
                self._typed.remember(done.model_id, req.prompt, req.suffix, r.text, r.finish_reason)
                with self._lock:
                    self._typed_answer = answered
            else:
                self._typed.forget()
            return answered
        finally:
            with self._lock:
                if self._running is cancel:
                    self._running = None

    def cancel_running(self) -> None:
        """Stop the completion running now, if any (the server is closing)."""
        with self._lock:
            running = self._running
        if running is not None:
            running.set()

    def _typed_through(self, req: CompletionRequest, model_id: str | None) -> Answer[N] | None:
        started = time.perf_counter()
        wanted = model_id or self.lifecycle.loaded_model_id
        if wanted is None:
            return None
        canonical = self._canonical_id(wanted)
        hit = self._typed.lookup(canonical, req.prompt, req.suffix)
        with self._lock:
            last = self._typed_answer
        if hit is None or last is None:
            return None
        result = CompletionResult(
            text=hit.text,
            finish_reason=hit.finish_reason,
            prompt_tokens=0,
            completion_tokens=0,
            fim=last.completion.result.fim,
            total_ms=(time.perf_counter() - started) * 1000,
        )
        done = Completion(result=result, model_id=canonical, load_ms=0.0)
        return Answer(completion=done, note=last.note, typed_through=True)
