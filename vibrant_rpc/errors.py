"""Every error a user (or an editor) can meet, in one tree.

Each class carries its own JSON-RPC ``code`` and its ``kind`` (the name a client matches
on, sent as ``data.kind``); details are plain JSON values that cross every boundary
unchanged. The CLI prints ``message`` and ``hint`` and exits 1; the server answers with
``code``, ``message`` and ``data``. Nothing is re-coded on its way to the wire.

    VibrantException                 code     kind
    ├── VibrantError                 -31000   VibrantError      a failure the user can act on
    │   ├── ModelNotFoundError       -31001   ModelNotFound
    │   ├── InsufficientRamError     -31002   InsufficientRam
    │   ├── DownloadFailedError      -31003   DownloadFailed    the partial download is kept
    │   │   ├── HubUnreachableError  -31008   HubUnreachable    retries ran out
    │   │   ├── OfflineError         -31009   Offline           HF_HUB_OFFLINE is set
    │   │   ├── GatedRepoError       -31010   GatedRepo         401/403: a token is needed
    │   │   └── NotHubAnswer         (its parent's)             a web page where the Hub answers
    │   ├── ChecksumMismatchError    -31004   ChecksumMismatch
    │   ├── ModelLoadFailedError     -31005   ModelLoadFailed
    │   ├── CacheFullError           -31006   CacheFull         over the cache size limit
    │   ├── NotCachedError           -31007   NotCached
    │   ├── DiskFullError            -31011   DiskFull          the disk itself is full
    │   ├── ModelInUseError          -31012   ModelInUse
    │   ├── RegistryError            -31013   RegistryError     a user registry entry refused
    │   ├── EngineError              -31020   EngineError       the team's engine answered an error
    │   │   ├── EngineUnreachableError -31021 EngineUnreachable no answer from its host:port
    │   │   ├── EngineKeyRefusedError  -31022 EngineKeyRefused  401/403: the key is wrong or missing
    │   │   └── ModelNotServedError    -31023 ModelNotServed    the engine serves another model
    │   ├── ConfigError              -31014   ConfigError       a setting refused
    │   └── GGUFFormatError          (its parent's)             not a GGUF header we can read
    ├── Cancelled                    -32800   Cancelled         the user stopped it: not a failure
    └── InvalidParams                -32602   InvalidParams     params that don't match their type

    RuntimeError
    └── ModelClosedError             (a bug: the wire's InternalError, -32603)

vibrant's own codes are the block -31000 … -31099: outside JSON-RPC's reserved
-32768 … -32000 (which holds LSP's -32002 ServerNotInitialized and -32001
UnknownErrorCode) and LSP's -32899 … -32800. Cancellation and bad params use the codes
JSON-RPC and LSP define for them. Clients should match ``data.kind``, not the code.

A class without a ``kind`` of its own (``GGUFFormatError``, ``NotHubAnswer``) is its
parent on the wire, so the protocol's error list (``tree``) leaves it out.
``ModelClosedError`` is a bug, not a user's error: it is no ``VibrantException``, so the
wire answers it as an internal error.

Not here, on purpose: exceptions that never leave their module, signals one function
raises for its caller to act on (``gguf.header.NeedMoreBytes``: read more and parse
again; ``download.hub.TransientError`` and ``download.transfer``'s ``RangeIgnored``,
``RemoteChanged``, ``UrlExpired``: retry, resolve again, restart the file;
``cache.manifest.Unreadable``: the cache sets the manifest aside and rebuilds it). Each
ends as one of the errors above, or not at all. And ``server.wire.RpcError``, a pygls
exception that only the transport may import.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import msgspec

from .redact import redact, redact_value


class VibrantException(Exception):
    """Base of every error that is reported to the user as it is (no traceback)."""

    code: ClassVar[int]
    kind: ClassVar[str]

    def __init__(self, message: str, *, hint: str | None = None, **details: Any) -> None:
        # Credentials in a URL (HF_ENDPOINT=http://user:token@host) never reach a person.
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.hint = redact(hint) if hint else hint
        self.details: dict[str, Any] = redact_value(details)

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, **self.details}
        if self.hint:
            out["hint"] = self.hint
        return out

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


class VibrantError(VibrantException):
    """Any other failure the user can act on; the message says what to do."""

    code = -31000
    kind = "VibrantError"


class ModelNotFoundError(VibrantError):
    """No registry model has this id; ``data.suggestions`` lists close ones."""

    code = -31001
    kind = "ModelNotFound"

    def __init__(self, model_id: str, suggestions: list[str] | None = None) -> None:
        suggestions = suggestions or []
        hint = (
            "Did you mean " + " or ".join(repr(s) for s in suggestions) + "?"
            if suggestions
            else "Run `vibrant model list --all` to see the known models."
        )
        super().__init__(
            f"Unknown model {model_id!r}.", hint=hint, modelId=model_id, suggestions=suggestions
        )


class InsufficientRamError(VibrantError):
    """No model fits this machine's memory."""

    code = -31002
    kind = "InsufficientRam"


class DownloadFailedError(VibrantError):
    """A download failed (the Hub said no, or the file changed); the partial is kept."""

    code = -31003
    kind = "DownloadFailed"


class HubUnreachableError(DownloadFailedError):
    """The Hub could not be reached (connection, timeouts, 5xx) after retries; the partial
    is kept."""

    code = -31008
    kind = "HubUnreachable"


class OfflineError(DownloadFailedError):
    """HF_HUB_OFFLINE is set, so nothing reaches the network; downloaded models still work."""

    code = -31009
    kind = "Offline"


class GatedRepoError(DownloadFailedError):
    """The Hub answered 401/403: the repository is gated or private, or the token is bad."""

    code = -31010
    kind = "GatedRepo"


class NotHubAnswer(DownloadFailedError):
    """A source answered with something that is not the Hub's answer: a web page (a captive
    portal, a proxy's login page) or text that is not the Hub's JSON. Sources pass the
    request to the next source; the message names the source and what it sent."""


class ChecksumMismatchError(VibrantError):
    """A file's SHA-256 differs from the one it must have; the cache keeps nothing damaged."""

    code = -31004
    kind = "ChecksumMismatch"


class ModelLoadFailedError(VibrantError):
    """llama.cpp could not load the model, nor any smaller cached one; ``message`` carries
    llama.cpp's words."""

    code = -31005
    kind = "ModelLoadFailed"


class CacheFullError(VibrantError):
    """The model does not fit under the cache size limit."""

    code = -31006
    kind = "CacheFull"


class NotCachedError(VibrantError):
    """The model is not downloaded; ``data.modelId`` and ``data.downloadBytes`` say what to
    offer. Nothing downloads unless asked."""

    code = -31007
    kind = "NotCached"


class DiskFullError(VibrantError):
    """No space left on the disk (not the cache size limit: that is CacheFull)."""

    code = -31011
    kind = "DiskFull"


class ModelInUseError(VibrantError):
    """The model is loaded by a running vibrant server, so it can't be removed now."""

    code = -31012
    kind = "ModelInUse"


class RegistryError(VibrantError):
    """A user registry entry that was refused; the rest of the registry still works."""

    code = -31013
    kind = "RegistryError"


class ConfigError(VibrantError):
    """A setting that was refused (its value is ignored)."""

    code = -31014
    kind = "ConfigError"


class EngineError(VibrantError):
    """The engine completions go to (``engine`` in the settings) answered with an error;
    ``message`` carries the engine's own words, ``data.engine`` its name."""

    code = -31020
    kind = "EngineError"


class EngineUnreachableError(EngineError):
    """The engine could not be reached at its host:port (refused, timed out, or gone in
    the middle of an answer). With ``fallback = "local"`` the local model answers instead."""

    code = -31021
    kind = "EngineUnreachable"


class EngineKeyRefusedError(EngineError):
    """The engine answered 401/403: the key (``api_key_env``/``api_key_file``) is wrong
    or missing. The key itself is never in the message."""

    code = -31022
    kind = "EngineKeyRefused"


class ModelNotServedError(EngineError):
    """The model asked for (the engine's ``model`` setting) is not one the engine serves;
    ``data.served`` lists those it does."""

    code = -31023
    kind = "ModelNotServed"


class GGUFFormatError(VibrantError):
    """The bytes are not a GGUF header this reader understands."""


class Cancelled(VibrantException):
    """Cancelled by ``$/cancelRequest``, ``window/workDoneProgress/cancel`` or
    ``vibrant/cancelDownload``; a download keeps its partial."""

    code = -32800  # LSP's RequestCancelled
    kind = "Cancelled"

    def __init__(self, message: str = "Cancelled.", **details: Any) -> None:
        super().__init__(message, **details)


class InvalidParams(VibrantException):
    """Bad params; ``data.field`` names the field and ``data.reason`` says why."""

    code = -32602  # JSON-RPC's InvalidParams
    kind = "InvalidParams"

    def __init__(self, method: str, field: str, reason: str) -> None:
        where = f"`{field}`" if field else "params"
        super().__init__(
            f"Invalid params for {method}: {where}: {reason}", field=field, reason=reason
        )
        self.method, self.field, self.reason = method, field, reason


class ModelClosedError(RuntimeError):
    """``complete`` on a model that was closed."""


def tree() -> list[type[VibrantException]]:
    """Every error class with a kind of its own, parents before children (what protocol/
    documents); a class that reuses its parent's kind is its parent on the wire."""
    out: list[type[VibrantException]] = []

    def walk(cls: type[VibrantException]) -> None:
        for sub in cls.__subclasses__():
            if sub.__module__ == __name__:
                if "kind" in vars(sub):
                    out.append(sub)
                walk(sub)

    walk(VibrantException)
    return out


# -- msgspec's words ---------------------------------------------------------------------
# msgspec says where a value failed only in its message ("Expected `int`, got `str` - at
# `$.options.contextSize`"), and names an unknown or missing field only there too. Its
# message is taken apart here alone; the wire (InvalidParams), the registry and the
# settings word it each their way.
_AT = re.compile(r"^(?P<reason>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$", re.DOTALL)
_NAMED = re.compile(r"Object (?P<how>contains unknown|missing required) field `(?P<name>[^`]*)`")


class ValidationProblem(msgspec.Struct, frozen=True, kw_only=True):
    """A value that did not match its type: msgspec's words, and where."""

    reason: str  # msgspec's words without the place: "Expected `int`, got `str`"
    path: str  # where the bad value is: "options.contextSize", "files[0]"; "" for the top
    unknown: str | None = None  # a field the type doesn't have
    missing: str | None = None  # a required field that is absent

    def field(self, *, missing: bool = True) -> str:
        """The path of the field at fault: the field the words name (an unknown one; a
        missing one too with ``missing``) inside ``path``, else ``path``."""
        named = self.unknown or (self.missing if missing else None)
        if named is None:
            return self.path
        return f"{self.path}.{named}" if self.path else named


def validation_problem(err: msgspec.ValidationError | ValueError) -> ValidationProblem:
    """msgspec's ``ValidationError`` taken apart (any other ValueError: its words alone)."""
    text = str(err)
    m = _AT.match(text)
    reason, path = (m.group("reason"), m.group("path") or "") if m else (text, "")
    named = _NAMED.search(reason)
    how, name = named.group("how", "name") if named else (None, None)
    return ValidationProblem(
        reason=reason,
        path=path,
        unknown=name if how == "contains unknown" else None,
        missing=name if how == "missing required" else None,
    )
