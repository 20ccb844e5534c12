"""One configured engine: what it is (probed), whether it answers, and completions from it.

The kind, when the settings leave it out, is probed: llama-server answers ``GET /props``
with its ``model_path`` and ``build_info``; Ollama answers ``GET /api/tags`` with its
models (asked before ``/v1/models``, which Ollama answers too); an OpenAI-compatible
server answers ``GET /v1/models`` (vLLM, SGLang). The model it serves comes from the same
answers (``/props``'s alias, ``/api/tags``' names, ``/v1/models``' ids); a ``model``
setting must be one of them, and Ollama, which has many, needs one unless it has only
one. The probe runs before the first completion and again after a failure; health is
``GET /health`` (llama-server; no key needed), ``GET /api/version`` (Ollama) or
``GET /v1/models``. ``status()`` is memory only: what the last probe or completion learnt.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any, Literal

import msgspec

from ..config import EngineSettings
from ..errors import EngineError, EngineUnreachableError, ModelNotServedError, VibrantError
from ..inference.model import CompletionRequest, CompletionResult
from ..states import EngineKind
from .keys import engine_key
from .llama_server import LlamaServerAdapter
from .ollama import TAGS, VERSION, OllamaAdapter, Tags, served_model
from .openai import OpenAIAdapter
from .transport import EngineClient

log = logging.getLogger(__name__)

# A probe or health check is small: it may not wait as long as a completion's first token.
PROBE_TIMEOUT_S = 10.0


class EngineStatus(msgspec.Struct, kw_only=True):
    """An engine as the last probe or completion left it (``vibrant/status``)."""

    name: str
    url: str
    kind: EngineKind | None  # None: not probed yet
    model: str | None  # the model it serves (or the one asked for)
    healthy: bool | None  # None: not asked yet
    error: str | None = None  # why it is not healthy
    error_kind: str | None = None  # the error's kind (EngineUnreachable, EngineKeyRefused...)
    hint: str | None = None  # what to do about it
    checked_at: datetime | None = None
    fallback: Literal["local"] | None = None
    slots: int | None = None  # llama-server's parallel slots


class EngineAnswer(msgspec.Struct, kw_only=True, frozen=True):
    result: CompletionResult
    model: str  # the served model that wrote it


class _Props(msgspec.Struct):
    model_path: str = ""
    model_alias: str = ""
    total_slots: int | None = None
    build_info: str | None = None


class _Model(msgspec.Struct):
    id: str
    aliases: list[str] = []


class _Models(msgspec.Struct):
    data: list[_Model]


Adapter = LlamaServerAdapter | OllamaAdapter | OpenAIAdapter
# What a health check asks each kind: llama-server's /health needs no key.
_HEALTH: dict[str, str] = {"llama-server": "/health", "ollama": VERSION, "openai": "/v1/models"}


class Engine:
    def __init__(self, name: str, settings: EngineSettings) -> None:
        self.name = name
        self.settings = settings
        self.client = EngineClient(name, settings, engine_key(name, settings))
        self._lock = threading.Lock()
        self._adapter: Adapter | None = None
        self._status = EngineStatus(
            name=name,
            url=settings.url,
            kind=settings.kind,
            model=settings.model,
            healthy=None,
            fallback=settings.fallback,
        )

    def close(self) -> None:
        self.client.close()

    def status(self) -> EngineStatus:
        with self._lock:
            return msgspec.structs.replace(self._status)

    def _note(self, *, healthy: bool, error: VibrantError | None = None, **fields: Any) -> None:
        with self._lock:
            self._status = msgspec.structs.replace(
                self._status,
                healthy=healthy,
                error=error.message if error else None,
                error_kind=error.kind if error else None,
                hint=error.hint if error else None,
                checked_at=datetime.now(UTC),
                **fields,
            )

    # -- what it is --------------------------------------------------------------------

    def probe(self) -> EngineStatus:
        """Ask the engine what it is and serves (blocking: the network)."""
        try:
            adapter, model, slots = self._probe()
        except EngineError as err:
            self._note(healthy=False, error=err)
            raise
        with self._lock:
            self._adapter = adapter
        self._note(healthy=True, kind=adapter.kind, model=model, slots=slots)
        return self.status()

    def _probe(self) -> tuple[Adapter, str | None, int | None]:
        kind = self.settings.kind
        props: _Props | None = None
        if kind in (None, "llama-server"):
            props = self._props(required=kind == "llama-server")
        if props is not None:
            model = self._check_model(_served_names(props, self._models()))
            return LlamaServerAdapter(self.client), model, props.total_slots
        tags = self._tags(required=kind == "ollama") if kind in (None, "ollama") else None
        if tags is not None:
            served = served_model(tags, self.settings.model, self.name, self.client.where)
            return OllamaAdapter(self.client, served), served, None
        model = self._check_model(self._models())
        return OpenAIAdapter(self.client, model), model, None

    def _props(self, *, required: bool) -> _Props | None:
        try:
            raw = self.client.get_json("/props", PROBE_TIMEOUT_S)
        except EngineError as err:
            if required or err.details.get("status") not in (404, 405):
                raise
            return None  # not llama-server
        props = msgspec.convert(raw, _Props) if isinstance(raw, dict) else _Props()
        if not (props.model_path or props.build_info) and not required:
            return None
        return props

    def _tags(self, *, required: bool) -> Tags | None:
        try:
            raw = self.client.get_json(TAGS, PROBE_TIMEOUT_S)
        except EngineUnreachableError:
            raise
        except EngineError as err:
            # 404/405, or no JSON: not Ollama (another answer, a wrong key: said as it is).
            if required or err.details.get("status") not in (404, 405, None):
                raise
            return None
        try:
            return msgspec.convert(raw, Tags)
        except msgspec.ValidationError:
            if not required:
                return None  # /api/tags means something else here: not Ollama
            raise EngineError(
                f"The engine {self.name!r} at {self.client.where} answered {TAGS} with no "
                "model list: is the url that of an Ollama server?",
                engine=self.name,
            ) from None

    def _models(self) -> list[str]:
        raw = self.client.get_json("/v1/models", PROBE_TIMEOUT_S)
        try:
            models = msgspec.convert(raw, _Models)
        except msgspec.ValidationError:
            raise EngineError(
                f"The engine {self.name!r} at {self.client.where} answered /v1/models with "
                "no model list: is the url that of an inference server?",
                engine=self.name,
            ) from None
        names: list[str] = []
        for m in models.data:
            names += [m.id, *m.aliases]
        return list(dict.fromkeys(names))

    def _check_model(self, served: list[str]) -> str | None:
        wanted = self.settings.model
        if wanted is None:
            return served[0] if served else None
        if wanted in served:
            return wanted
        raise ModelNotServedError(
            f"The engine {self.name!r} at {self.client.where} does not serve {wanted!r}; "
            f"it serves {', '.join(repr(s) for s in served) or 'nothing'}.",
            hint=f"Set model in [engines.{self.name}] to one of those, or leave it out.",
            engine=self.name,
            served=served,
        )

    def health(self) -> EngineStatus:
        """Whether the engine answers now (blocking: the network). Probes it first if it
        was never probed, so the status names the model it serves."""
        with self._lock:
            adapter = self._adapter
        try:
            if adapter is None:
                return self.probe()
            self.client.get_json(_HEALTH[adapter.kind], PROBE_TIMEOUT_S)
        except EngineError as err:
            self._note(healthy=False, error=err)
        else:
            self._note(healthy=True)
        return self.status()

    # -- completions -------------------------------------------------------------------

    def complete(
        self,
        req: CompletionRequest,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> EngineAnswer:
        """A completion from the engine, its pieces to ``on_text`` as they arrive; a set
        ``cancel`` ends it (finish_reason "cancelled") and the engine stops."""
        cancel = cancel or threading.Event()
        with self._lock:
            adapter = self._adapter
        if adapter is None:
            self.probe()
            with self._lock:
                adapter = self._adapter
            assert adapter is not None
        try:
            result = adapter.complete(req, on_text, cancel)
        except (EngineUnreachableError, ModelNotServedError) as err:
            # Probe again next time: the engine may come back serving another model (or
            # have been given the one asked for: Ollama pulls models while it runs).
            with self._lock:
                self._adapter = None
            self._note(healthy=False, error=err)
            raise
        except EngineError as err:
            self._note(healthy=True, error=err)
            raise
        if result.finish_reason != "cancelled":
            self._note(healthy=True)
        status = self.status()
        return EngineAnswer(result=result, model=status.model or self.name)


def _served_names(props: _Props, listed: list[str]) -> list[str]:
    """The served model's names, the one to show first: its alias (``--alias``), else its
    file's name (llama-server reports the whole path as the alias when none is given)."""
    names = []
    if props.model_alias and props.model_alias != props.model_path:
        names.append(props.model_alias)
    if props.model_path:
        names.append(PurePath(props.model_path).name)
    return list(dict.fromkeys([*names, *listed]))
