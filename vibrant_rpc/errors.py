"""The errors a user can meet, each with a stable code, a kind and structured details.

The codes are the JSON-RPC error codes the server answers with; the CLI prints
``message`` (and ``hint``) and exits 1. Details are plain JSON values so that
they cross every boundary unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar


class VibrantError(Exception):
    """Base of every error that is the user's to act on (no traceback shown)."""

    code: ClassVar[int] = -32000
    kind: ClassVar[str] = "VibrantError"

    def __init__(self, message: str, *, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details: dict[str, Any] = details

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, **self.details}
        if self.hint:
            out["hint"] = self.hint
        return out

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


class ModelNotFoundError(VibrantError):
    code = -32001
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
    code = -32002
    kind = "InsufficientRam"


class DownloadFailedError(VibrantError):
    code = -32003
    kind = "DownloadFailed"


class HubUnreachableError(DownloadFailedError):
    """A transient failure that outlived its retries; the partial download is kept."""


class GatedRepoError(DownloadFailedError):
    pass


class OfflineError(DownloadFailedError):
    pass


class DiskFullError(DownloadFailedError):
    pass


class DownloadCancelledError(DownloadFailedError):
    kind = "Cancelled"


class ChecksumMismatchError(VibrantError):
    code = -32004
    kind = "ChecksumMismatch"


class ModelLoadFailedError(VibrantError):
    code = -32005
    kind = "ModelLoadFailed"


class CacheFullError(VibrantError):
    code = -32006
    kind = "CacheFull"


class NotCachedError(VibrantError):
    code = -32007
    kind = "NotCached"


class RegistryError(VibrantError):
    """A user registry entry that was refused; the rest of the registry still works."""

    kind = "RegistryError"


class ConfigError(VibrantError):
    kind = "ConfigError"
