"""OpenAI-compatible engines (vLLM, SGLang, llama-server's own): ``/v1/completions``
with the FIM prompt rendered by vibrant for the served model (``fim.render``), never
``suffix`` (vLLM answers it with 400; docs/engines.md), and the model's end and
file-separator tokens as stop strings. Streamed, with ``stream_options.include_usage``
for the token counts; a stop string that still shows up in the text (an engine that
doesn't cut it) ends the completion there, as the request's own stops and the
completion pipeline do (``transport.Pieces``). Ollama has its own adapter (``ollama``):
its ``/v1/completions`` applies the model's template to the prompt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import msgspec

from ..inference.model import CompletionRequest, CompletionResult
from ..states import FinishReason
from .fim import FimTemplate, template_for, text_prompt
from .transport import EngineClient, Pieces, Step, stream_events


class _Choice(msgspec.Struct):
    text: str = ""
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: Any = None


_DECODE = msgspec.json.Decoder(_Chunk)
PATH = "/v1/completions"


class OpenAIAdapter:
    kind = "openai"

    def __init__(self, client: EngineClient, model: str | None) -> None:
        self.client = client
        self.model = model
        self.template: FimTemplate | None = template_for(model)

    def complete(
        self,
        req: CompletionRequest,
        on_text: Callable[[str], None] | None,
        cancel: threading.Event,
    ) -> CompletionResult:
        sent = text_prompt(self.template, req)
        body: dict[str, Any] = {
            "prompt": sent.prompt,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if sent.stops:
            body["stop"] = sent.stops
        if self.model is not None:
            body["model"] = self.model
        # The stops are checked here too: an engine may leave one in the text.
        pieces = Pieces(req, on_text, sent.model_stops)
        finish: list[str] = []
        usage: list[_Usage] = []

        def on_event(data: bytes) -> Step:
            chunk = _DECODE.decode(data)
            if chunk.error is not None:
                raise self.client.refusal(500, data, PATH)
            if chunk.usage is not None:
                usage[:] = [chunk.usage]
            for choice in chunk.choices[:1]:
                if pieces.feed(choice.text):
                    return "cut"  # the text is over: closing stops the engine
                if choice.finish_reason is not None:
                    finish.append(choice.finish_reason)
            return "more"  # the usage chunk and [DONE] (the end) follow the last choice

        streamed = stream_events(self.client, PATH, body, cancel, on_event)
        said: FinishReason | None = None
        if finish:
            said = "length" if finish[0] == "length" else "stop"
        text, why = pieces.ending(self.client, streamed, said)
        return _result(text, why, usage[0] if usage else None, sent.fim, streamed.ms)


def _result(
    text: str, finish: FinishReason, usage: _Usage | None, fim: bool, ms: float
) -> CompletionResult:
    prompt = usage.prompt_tokens if usage else 0
    return CompletionResult(
        text=text,
        finish_reason=finish,
        prompt_tokens=prompt,
        completion_tokens=usage.completion_tokens if usage else 0,
        fim=fim,
        total_ms=ms,
        prompt_evaluated=prompt,
    )
