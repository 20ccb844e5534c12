"""Where a completion goes: the engine the settings name, with the local model taking
over (``fallback = "local"``) when the engine can't be reached.

The editor may already have been sent the first pieces when an engine goes away in the
middle of an answer; the local model then continues from them (the prompt plus what was
sent), so the text the editor holds stays the start of the result. The result says
which engine answered and why the local one did.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

import msgspec

from ..config import LOCAL_ENGINE
from ..errors import EngineUnreachableError
from ..inference.model import CompletionRequest, CompletionResult
from .engine import Engine

log = logging.getLogger(__name__)


class Answered(Protocol):
    """A local completion as the lifecycle returns it."""

    @property
    def result(self) -> CompletionResult: ...

    @property
    def model_id(self) -> str: ...

    @property
    def load_ms(self) -> float: ...


# The local model's completion of the prompt continued by ``begun`` (what the engine
# already sent), its pieces to the callback.
LocalFn = Callable[[str, Callable[[str], None] | None], Answered]


class Routed(msgspec.Struct, kw_only=True, frozen=True):
    result: CompletionResult
    model_id: str  # the model that wrote it (the engine's served model, or the local one)
    load_ms: float
    engine: str  # which answered: "local" or the engine's name
    fallback_reason: str | None = None


def route(
    engine: Engine,
    req: CompletionRequest,
    on_text: Callable[[str], None] | None,
    cancel: threading.Event,
    local: LocalFn,
) -> Routed:
    sent: list[str] = []

    def relay(piece: str) -> None:
        sent.append(piece)
        if on_text is not None:
            on_text(piece)

    try:
        answer = engine.complete(req, relay, cancel)
    except EngineUnreachableError as err:
        if engine.settings.fallback != LOCAL_ENGINE or cancel.is_set():
            raise
        begun = "".join(sent)
        reason = err.message
        if begun:
            reason += " The local model finished the completion it began."
        log.warning("%s The local model answers.", err.message)
        done = local(begun, on_text)
        result = msgspec.structs.replace(done.result, text=begun + done.result.text)
        return Routed(result=result, model_id=done.model_id, load_ms=done.load_ms,
                      engine=LOCAL_ENGINE, fallback_reason=reason)  # fmt: skip
    return Routed(result=answer.result, model_id=answer.model, load_ms=0.0, engine=engine.name)
