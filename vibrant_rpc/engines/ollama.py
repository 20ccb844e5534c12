"""Ollama's own API: ``POST /api/generate`` with ``"raw": true`` and the prompt vibrant
renders for the served model (``fim.text_prompt``, as the OpenAI adapter sends it), the
model's end and file-separator tokens as stop strings (docs/engines.md).

Not Ollama's OpenAI route: its ``/v1/completions`` builds a generate request without
``raw`` (``openai/openai.go``, ``FromCompleteRequest``), so Ollama wraps the prompt in the
model's template; for the default (instruct) ``qwen2.5-coder`` tags, a chat turn around
the rendered FIM prompt. With ``raw`` the model sees the prompt as it is (Tabby forces
the template to ``{{ .Prompt }}`` for the same reason).

The answer streams as newline-delimited JSON (``events.ndjson_lines``): a
``response`` piece an object, the last with ``done``, ``done_reason`` and the token
counts; an error mid-stream is an object with ``error``. Ollama stops generating when
the client goes, so a cancel closes the stream as for the other engines.

The served model is the ``model`` setting, else the only model ``GET /api/tags`` lists
(``served_model``); Ollama loads the one a request names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import msgspec

from ..errors import EngineError, ModelNotServedError
from ..inference.model import CompletionRequest, CompletionResult
from ..states import FinishReason
from .events import ndjson_lines
from .fim import FimTemplate, template_for, text_prompt
from .transport import EngineClient, Pieces, Step, engine_message, stream_events

PATH = "/api/generate"
TAGS = "/api/tags"  # the local models: the probe's question
VERSION = "/api/version"  # small: the health check's question
SHOWN = 5  # model names an error lists


class _Event(msgspec.Struct):
    response: str = ""
    done: bool = False
    done_reason: str = ""
    prompt_eval_count: int = 0
    eval_count: int = 0
    error: Any = None


class _Tag(msgspec.Struct):
    name: str = ""
    model: str = ""


class Tags(msgspec.Struct):
    """``GET /api/tags``: the models Ollama has."""

    models: list[_Tag]

    def names(self) -> list[str]:
        return list(dict.fromkeys(t.name or t.model for t in self.models if t.name or t.model))


_DECODE = msgspec.json.Decoder(_Event)


class OllamaAdapter:
    kind = "ollama"

    def __init__(self, client: EngineClient, model: str) -> None:
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
        options: dict[str, Any] = {"num_predict": req.max_tokens, "temperature": req.temperature}
        if sent.stops:
            options["stop"] = sent.stops
        # raw: the prompt as it is, never the model's template around it; never `suffix`.
        body = {"model": self.model, "prompt": sent.prompt, "raw": True, "stream": True,
                "options": options}  # fmt: skip
        pieces = Pieces(req, on_text, sent.model_stops)
        final: list[_Event] = []

        def on_event(data: bytes) -> Step:
            event = _DECODE.decode(data)
            if event.error is not None:
                raise EngineError(
                    f"The engine {self.client.name!r} at {self.client.where} stopped its "
                    f"answer to {PATH}: {engine_message(data)}",
                    engine=self.client.name,
                )
            if event.done:
                final[:] = [event]
            if pieces.feed(event.response):
                return "cut"  # a stop string or the pipeline: closing stops the engine
            return "end" if event.done else "more"

        try:
            streamed = stream_events(self.client, PATH, body, cancel, on_event, ndjson_lines)
        except ModelNotServedError as err:  # 404: model "x" not found, try pulling it first
            raise ModelNotServedError(
                err.message,
                hint=f"Pull it on the engine's machine (`ollama pull {self.model}`), or set "
                f"model in [engines.{self.client.name}] to one `ollama list` shows there.",
                **err.details,
            ) from None
        done = final[0] if final else None
        said: FinishReason | None = None
        if done is not None:
            said = "length" if done.done_reason == "length" else "stop"
        text, why = pieces.ending(self.client, streamed, said)
        return _result(text, why, done, sent.fim, streamed.ms)


def served_model(tags: Tags, wanted: str | None, name: str, where: str) -> str:
    """The model completions ask Ollama for: ``wanted`` as ``/api/tags`` names it (a name
    without a tag means ``:latest``, as Ollama reads it), else the only one it has."""
    names = tags.names()
    if wanted is not None:
        for served in names:
            if _tagged(served) == _tagged(wanted):
                return served
        raise ModelNotServedError(
            f"The engine {name!r} at {where} (Ollama) has no model {wanted!r}; "
            f"it has {_some(names)}.",
            hint=f"Pull it there (`ollama pull {wanted}`), or set model in [engines.{name}] "
            "to one it has.",
            engine=name,
            served=names,
        )
    if len(names) == 1:
        return names[0]
    if not names:
        raise ModelNotServedError(
            f"The engine {name!r} at {where} (Ollama) has no model.",
            hint="Pull one there (`ollama pull qwen2.5-coder:7b-base`): with one model, "
            f'that one is used; with more, name it with model = "..." in [engines.{name}].',
            engine=name,
            served=names,
        )
    raise ModelNotServedError(
        f"The engine {name!r} at {where} (Ollama) has {len(names)} models: {_some(names)}.",
        hint=f'Name the one to complete with: model = "..." in [engines.{name}].',
        engine=name,
        served=names,
    )


def _tagged(model: str) -> str:
    """``name:tag``, with Ollama's default tag where none is given."""
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


def _some(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(repr(n) for n in names[:SHOWN])
    return shown if len(names) <= SHOWN else f"{shown} and {len(names) - SHOWN} more"


def _result(
    text: str, finish: FinishReason, done: _Event | None, fim: bool, ms: float
) -> CompletionResult:
    prompt = done.prompt_eval_count if done is not None else 0
    return CompletionResult(
        text=text,
        finish_reason=finish,
        prompt_tokens=prompt,
        completion_tokens=done.eval_count if done is not None else 0,
        fim=fim,
        total_ms=ms,
        prompt_evaluated=prompt,
    )
