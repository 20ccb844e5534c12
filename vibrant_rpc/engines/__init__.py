"""Completions from an inference server instead of this machine's llama.cpp, and the
server's own half: ``engine`` is one configured engine (``[engines.<name>]``: probed
kind and model, health, completions), over ``transport`` (httpx, streamed answers a
cancel can end, the key sent to that engine only) and its adapters, ``llama_server``
(``/infill``, ``/completion``), ``openai`` (``/v1/completions`` with the FIM prompt
``fim`` renders) and ``ollama`` (``/api/generate``, raw, with the same prompt); ``keys``
reads an engine's key; ``routing`` sends a completion to the engine, and to the local
model when it is down and ``fallback = "local"``; ``supervisor`` runs llama-server on a
cached model for `vibrant model serve`. docs/engines.md holds the engines' facts this
relies on.

The names below are looked up on first use (PEP 562, as ``download``'s): httpx costs a
sixth of a second, and a command that reaches no engine never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_face

if TYPE_CHECKING:
    from .engine import Engine, EngineAnswer, EngineStatus
    from .fim import FimTemplate, render, template_for
    from .keys import engine_key
    from .routing import Routed, route
    from .supervisor import ServeSpec, Supervisor, laptop_setting, serve_args

_WHERE = {
    "Engine": "engine",
    "EngineAnswer": "engine",
    "EngineStatus": "engine",
    "FimTemplate": "fim",
    "Routed": "routing",
    "ServeSpec": "supervisor",
    "Supervisor": "supervisor",
    "engine_key": "keys",
    "laptop_setting": "supervisor",
    "render": "fim",
    "route": "routing",
    "serve_args": "supervisor",
    "template_for": "fim",
}
__all__ = [
    "Engine",
    "EngineAnswer",
    "EngineStatus",
    "FimTemplate",
    "Routed",
    "ServeSpec",
    "Supervisor",
    "engine_key",
    "laptop_setting",
    "render",
    "route",
    "serve_args",
    "template_for",
]


__getattr__ = lazy_face(__name__, _WHERE)


def __dir__() -> list[str]:
    return __all__
