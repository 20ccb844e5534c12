"""llama-server's own API: ``/infill`` where the served model has FIM tokens, else
``/completion`` (tools/server/README.md in llama.cpp; docs/engines.md).

``/infill`` builds the FIM prompt on the engine from the model's own tokens, with the
other files' chunks (``input_extra``) ahead of the prefix so they stay in the slot's
cache from keystroke to keystroke. A model without FIM tokens answers ``/infill`` with
501 "Infill is not supported by this model": the adapter then remembers to continue
the prefix through ``/completion``, as the local runtime does for such a model. Every
request streams (a cancel must be able to stop it) and sets ``cache_prompt``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import msgspec

from ..errors import EngineError
from ..inference.model import CompletionRequest, CompletionResult
from ..states import FinishReason
from .fim import commented
from .transport import EngineClient, Pieces, Step, stream_events


class _Timings(msgspec.Struct):
    prompt_n: int = 0
    predicted_n: int = 0
    cache_n: int = 0


class _Event(msgspec.Struct):
    content: str = ""
    stop: bool = False
    stop_type: str = "none"
    tokens_predicted: int = 0
    tokens_evaluated: int = 0
    timings: _Timings | None = None
    error: Any = None


_DECODE = msgspec.json.Decoder(_Event)
_FINISH: dict[str, FinishReason] = {"eos": "stop", "word": "stop", "limit": "length"}


class LlamaServerAdapter:
    kind = "llama-server"

    def __init__(self, client: EngineClient) -> None:
        self.client = client
        # None until the first request with a suffix tells whether /infill works.
        self.infill: bool | None = None

    def complete(
        self,
        req: CompletionRequest,
        on_text: Callable[[str], None] | None,
        cancel: threading.Event,
    ) -> CompletionResult:
        if req.suffix is not None and self.infill is not False:
            try:
                result = self._complete(req, on_text, cancel, fim=True)
            except EngineError as err:
                if err.details.get("status") != 501 or "not supported" not in err.message:
                    raise
                self.infill = False  # no FIM tokens: the prefix is continued
            else:
                self.infill = True
                return result
        return self._complete(req, on_text, cancel, fim=False)

    def _complete(
        self,
        req: CompletionRequest,
        on_text: Callable[[str], None] | None,
        cancel: threading.Event,
        *,
        fim: bool,
    ) -> CompletionResult:
        body: dict[str, Any] = {
            "n_predict": req.max_tokens,
            "temperature": req.temperature,
            "stream": True,
            "cache_prompt": True,
            # Counts and timings on every piece: a completion the pipeline ends before the
            # engine's last event still reports its prompt and cache.
            "timings_per_token": True,
        }
        if req.stop:
            body["stop"] = list(req.stop)
        if fim:
            path = "/infill"
            body["input_prefix"] = req.prompt
            body["input_suffix"] = req.suffix or ""
            # Other files go before the prefix, in the engine's repo-level layout.
            body["input_extra"] = [{"filename": c.filename, "text": c.text} for c in req.context]
        else:
            path = "/completion"
            body["prompt"] = commented(req.context, req.comment) + req.prompt
        pieces = Pieces(req, on_text, [])
        latest: list[_Event] = []

        def on_event(data: bytes) -> Step:
            event = _DECODE.decode(data)
            if event.error is not None:
                raise self.client.refusal(500, data, path)
            latest[:] = [event]
            if pieces.feed(event.content):
                return "cut"  # a stop string or the pipeline: closing stops the engine
            return "end" if event.stop else "more"

        # llama-server closes a streamed answer's connection (docs/engines.md): not pooled.
        streamed = stream_events(self.client, path, body, cancel, on_event, keep=False)
        seen = latest[0] if latest else None
        said = _FINISH.get(seen.stop_type, "stop") if seen is not None and seen.stop else None
        text, why = pieces.ending(self.client, streamed, said)
        return _result(text, why, seen, fim, streamed.ms)


def _result(
    text: str, finish: FinishReason, final: _Event | None, fim: bool, ms: float
) -> CompletionResult:
    timings = final.timings if final is not None and final.timings else _Timings()
    return CompletionResult(
        text=text,
        finish_reason=finish,
        prompt_tokens=final.tokens_evaluated if final is not None else 0,
        completion_tokens=final.tokens_predicted if final is not None else 0,
        fim=fim,
        total_ms=ms,
        prompt_evaluated=timings.prompt_n,
        prompt_cached=timings.cache_n,
    )
