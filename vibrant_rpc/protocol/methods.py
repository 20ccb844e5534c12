"""The method table: each method's params, result, errors and summary (what ``protocol/``
documents), and the codes JSON-RPC and LSP define for the wire itself."""

from __future__ import annotations

import msgspec

from .. import errors
from .messages import *  # the table names every message type

# -- errors ------------------------------------------------------------------------------
# vibrant's own errors carry their codes (``errors.py`` draws the tree); these are the
# codes JSON-RPC and LSP define for the wire itself.

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603
SERVER_NOT_INITIALIZED = -32002  # LSP's: a request before `initialize`


class ErrorCode(msgspec.Struct, frozen=True):
    code: int
    kind: str
    meaning: str


def _meaning(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


ERROR_CODES: list[ErrorCode] = [
    *(ErrorCode(cls.code, cls.kind, _meaning(cls)) for cls in errors.tree()),
    ErrorCode(METHOD_NOT_FOUND, "MethodNotFound", "No such method."),
    ErrorCode(INVALID_REQUEST, "InvalidRequest", "Not a JSON-RPC 2.0 request."),
    ErrorCode(PARSE_ERROR, "ParseError", "The message body is not JSON."),
    ErrorCode(SERVER_NOT_INITIALIZED, "NotInitialized", "A request came before `initialize`."),
    ErrorCode(INTERNAL_ERROR, "InternalError", "A bug in the server; the log has the details."),
]


# -- the method table (what protocol/ documents) -----------------------------------------


class Method(msgspec.Struct, frozen=True):
    name: str
    params: type[Params]
    result: type[msgspec.Struct] | None
    summary: str
    errors: tuple[str, ...] = ()
    progress: bool = False  # reports $/progress on workDoneToken (or a server-made token)


_DOWNLOAD_ERRORS = ("DownloadFailed", "HubUnreachable", "Offline", "GatedRepo", "DiskFull")

METHODS: list[Method] = [
    Method("vibrant/listModels", ListModelsParams, ListModelsResult,
           "The registry's models with their cache state, and the model this machine gets."),
    Method("vibrant/modelInfo", ModelInfoParams, ModelEntry,
           "One model's registry fields and cache state.", ("ModelNotFound",)),
    Method("vibrant/selectModel", SelectModelParams, SelectModelResult,
           "The model for this machine's memory, or for `ramBytes` of RAM, with the reason: "
           "the largest recommended model whose memory estimate at the configured context "
           "fits in the RAM less 2 GiB.",
           ("InsufficientRam",)),
    Method("vibrant/fitModel", FitModelParams, FitResult,
           "What a model needs in memory here, by part, and whether it fits, at the "
           "configured (or given) context and GPU layers; `auto` values resolved. The "
           "numbers come from the downloaded file's header, else from its header on the "
           "Hub (a few MB by Range, then kept), else from the registry (`note` says so).",
           ("ModelNotFound", "InsufficientRam", "VibrantError")),
    Method("vibrant/downloadModel", DownloadModelParams, DownloadModelResult,
           "Download (or resume) a model; `modelId` may be `auto`. Sends "
           "`vibrant/downloadProgress` and `$/progress`; cancellable, keeping the partial.",
           ("ModelNotFound", "InsufficientRam", *_DOWNLOAD_ERRORS,
            "ChecksumMismatch", "CacheFull", "Cancelled"), progress=True),
    Method("vibrant/checkUpdates", CheckUpdatesParams, CheckUpdatesResult,
           "Ask the Hub whether downloaded models have newer files (a new commit that leaves "
           "a model's files unchanged is not an update; pinned entries never update).",
           ("ModelNotFound", "NotCached", "DownloadFailed", "HubUnreachable", "Offline",
            "GatedRepo")),
    Method("vibrant/updateModel", UpdateModelParams, DownloadModelResult,
           "Download a model's newer files beside the old ones and swap once verified; same "
           "progress and cancellation as `vibrant/downloadModel`. A loaded model keeps running "
           "and the new files are used at its next load.",
           ("ModelNotFound", "NotCached", *_DOWNLOAD_ERRORS,
            "ChecksumMismatch", "CacheFull", "Cancelled", "VibrantError"), progress=True),
    Method("vibrant/cancelDownload", CancelDownloadParams, CancelDownloadResult,
           "Stop a running download of this model; its request answers -32800."),
    Method("vibrant/removeModel", RemoveModelParams, RemoveModelResult,
           "Delete a downloaded model (unloading it first if this server has it loaded).",
           ("ModelNotFound", "NotCached", "ModelInUse", "DiskFull")),
    Method("vibrant/cacheStats", NoParams, CacheStatsResult,
           "Cache folder, size, limit, number of models and bytes of partial downloads."),
    Method("vibrant/cleanCache", CleanCacheParams, RemovalResult,
           "Remove partial downloads and, with `olderThanDays`, models unused that long."),
    Method("vibrant/pruneCache", PruneCacheParams, RemovalResult,
           "Remove least recently used models down to `maxBytes` (default: the cache limit)."),
    Method("vibrant/loadModel", LoadModelParams, LoadModelResult,
           "Load a model now (the request's, else the last used, else the selection among "
           "cached models); the old one is unloaded first. The context and GPU layers come "
           "from the settings (or `options`), `auto` resolved from the model's header; a "
           "model whose memory estimate doesn't fit is refused before it loads. A failed or "
           "refused load falls back to the next smaller cached model (`reason` says why).",
           ("ModelNotFound", "NotCached", "ModelLoadFailed", "ChecksumMismatch",
            "InsufficientRam", "Cancelled"), progress=True),
    Method("vibrant/unloadModel", NoParams, UnloadModelResult,
           "Unload the model and return its memory."),
    Method("vibrant/status", NoParams, StatusResult,
           "The loaded model's state and the running downloads; never waits on work."),
    Method("vibrant/complete", CompleteParams, CompleteResult,
           "Complete `prompt` (fill in the middle when `suffix` is given and the model has FIM "
           "tokens; else from the prefix alone, `fim: false`). Loads a model lazily. With "
           "`partialResultToken` the text streams as `$/progress` values (`{text}`). One "
           "completion runs at a time: a new one cancels the one running or queued, which "
           "answers -32800 within a token or a prompt batch. A prompt that types the start "
           "of the last completion is answered from it at once (`cached: true`).",
           ("ModelNotFound", "NotCached", "ModelLoadFailed", "ChecksumMismatch",
            "InsufficientRam", "Cancelled"), progress=True),
]  # fmt: skip


class Notification(msgspec.Struct, frozen=True):
    name: str
    params: type[msgspec.Struct]
    summary: str


NOTIFICATIONS: list[Notification] = [
    Notification("vibrant/downloadProgress", DownloadProgress,
                 "Progress of a download, at most about ten a second, always ending with a "
                 "`done`, `failed` or `cancelled` state."),
    Notification("vibrant/modelStateChanged", ModelStateChanged,
                 "The loaded model changed state (`loading`, `ready`, `failed`, `unloaded`); "
                 "`reason` says why (a fallback, idle unload, ...)."),
    Notification("vibrant/updateAvailable", UpdateAvailable,
                 "The weekly background check (never offline) found newer files for a model; "
                 "with the `autoUpdate` setting the server is already downloading them."),
    Notification("$/progress", CompletionChunk,
                 "Work-done progress (begin/report/end, `cancellable: true`) for downloads and "
                 "loads; and, on a completion's `partialResultToken`, `{text}` pieces."),
]  # fmt: skip

METHOD_TABLE: dict[str, Method] = {m.name: m for m in METHODS}
