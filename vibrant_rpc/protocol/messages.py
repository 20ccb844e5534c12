"""The wire messages: every params, result and notification as a msgspec Struct.

These types are the contract editors code against. Field names are snake_case in
Python and camelCase on the wire (``rename="camel"``); ``protocol/`` (README and
JSON Schemas) is generated from this module by ``vibrant_rpc.protocol.docs``.

Params types forbid unknown fields and bound every number, so that a typo or a
hostile value becomes a -32602 naming the field rather than odd behaviour later.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

# Re-exported: the wire speaks these states, and handlers raise InvalidParams.
from ..errors import InvalidParams as InvalidParams
from ..states import Auto as Auto
from ..states import DownloadState as DownloadState
from ..states import EngineKind as EngineKind
from ..states import FinishReason as FinishReason
from ..states import HeaderSource as HeaderSource
from ..states import ModelState as ModelState
from ..states import StopReason as StopReason

# -- building blocks ---------------------------------------------------------------------

ProgressToken = int | str
ModelId = Annotated[str, msgspec.Meta(min_length=1, max_length=200, description="A registry id.")]
Bytes = Annotated[int, msgspec.Meta(ge=0, le=2**62)]


class Params(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """Base of request params: unknown fields are an error, not silently dropped."""


class Wire(msgspec.Struct, kw_only=True, rename="camel"):
    """Base of results and notifications."""


class NoParams(Params):
    """A method without params (``params`` absent, null or ``{}``)."""


# -- models ------------------------------------------------------------------------------


class ListModelsParams(Params):
    # "all": every registry model; "cached": the downloaded ones; absent: all but
    # deprecated models that aren't downloaded.
    scope: Literal["all", "cached"] | None = None


class ModelFileInfo(Wire):
    """One file of a model on the Hub; a split model has several, in shard order."""

    filename: str  # the file's name in the Hub repo
    size_bytes: int | None = None  # when the registry knows it
    sha256: str | None = None  # the digest it must have, when the registry knows it


class PartialDownloadInfo(Wire):
    """A download that was started and not finished; the next download resumes it."""

    downloaded_bytes: int  # kept on disk so far
    total_bytes: int | None  # of the whole model, once known
    updated_at: datetime | None  # when bytes last arrived
    active: bool  # a process is transferring it right now


class VersionSeen(Wire):
    """A Hub commit seen for a cached model (downloaded, or found by an update check)."""

    revision: str | None
    seen_at: datetime
    size_bytes: int
    sha256: str | None  # of the first (or only) file


class ModelEntry(Wire):
    """A registry entry and its state in this machine's cache."""

    id: str  # the registry id every method takes as modelId
    name: str  # for people
    family: str  # e.g. "qwen2.5-coder"
    parameters: str  # e.g. "7B"
    quantization: str  # e.g. "Q5_K_M"
    context_window: int  # the model's training context, in tokens
    file_size_mb: int | None  # the registry's estimate of the download
    # The registry's own figure; the selection compares the estimate from the header when
    # there is one (`fit` in vibrant/modelInfo, vibrant/fitModel), and this only without.
    ram_required_mb: int
    download_bytes: int  # what a download costs: the files' sizes, else the estimate
    hf_repo: str  # owner/name on the Hub
    files: list[ModelFileInfo]
    sha256: str | None  # of a single-file model, when the registry pins it
    revision: str | None  # the registry's pinned revision
    recommended: bool  # selection prefers recommended models
    description: str
    tags: list[str]
    deprecated: bool  # never selected; hidden from the default list unless downloaded
    replaced_by: str | None  # the id that supersedes a deprecated model
    cached: bool  # downloaded and complete
    size_bytes: int | None  # on disk, when cached
    last_used: datetime | None  # last loaded (by any process)
    use_count: int  # times loaded
    cached_revision: str | None  # the Hub commit the cached files came from
    versions: list[VersionSeen]  # commits seen for it, oldest first
    sources: dict[str, str]  # Hub file name -> where it came from (a source, a cache)
    partial: PartialDownloadInfo | None
    selected: bool  # the model this machine gets
    loaded: bool  # loaded in this server now
    fit: FitResult | None = None  # in vibrant/modelInfo: what it needs here, if known


class EngineInfo(Wire):
    """The engine completions go to (the ``engine`` setting), as last seen: ``vibrant/status``
    reports what the last completion or check learnt, ``vibrant/listModels`` asks it."""

    name: str  # its name in the settings ([engines.<name>])
    url: str
    kind: EngineKind | None  # None: not reached yet
    model: str | None  # the model it serves
    healthy: bool | None  # None: not asked yet
    error: str | None = None  # why it is not healthy, or its last error
    error_kind: str | None = None  # that error's kind in the error tree (EngineUnreachable...)
    hint: str | None = None  # what to do about it
    checked_at: datetime | None = None
    fallback: Literal["local"] | None = None  # the local model answers when it is down
    slots: int | None = None  # llama-server's parallel slots


class ListModelsResult(Wire):
    models: list[ModelEntry]  # in registry order
    recommended: str | None  # the selection's choice for this machine
    engine: EngineInfo | None = None  # where completions go, when not this machine


class ModelInfoParams(Params):
    model_id: ModelId  # a registry id


class SelectModelParams(Params):
    # Select for this much RAM instead of this machine's (cgroup limits included).
    ram_bytes: Annotated[int, msgspec.Meta(ge=0, le=2**50)] | None = None


class SelectModelResult(Wire):
    model_id: str  # the chosen model
    reason: str  # why, in words
    total_ram_bytes: int  # the RAM considered
    usable_ram_bytes: int  # less 2 GiB kept for the system
    available_bytes: int | None  # free right now (this machine only)
    fits: list[str]  # every model that fits, largest first
    warning: str | None  # e.g. too little memory free right now


# -- memory ------------------------------------------------------------------------------


class MemoryNeed(Wire):
    """What a model takes loaded with its context filled, by part (docs/memory-estimate.md)."""

    label: str  # the model, for people
    context: int  # tokens of context this is for
    weights_bytes: int  # the tensors
    kv_cache_bytes: int  # K and V for the whole context, every layer
    compute_bytes: int  # llama.cpp's compute graph (resident part on a CPU)
    output_bytes: int  # one token's logits
    overhead_bytes: int  # llama.cpp's own code, heap and vocabulary tables
    total_bytes: int
    cpu_bytes: int  # of the total, in system RAM
    gpu_bytes: int  # of the total, on GPUs
    gpu_layers: int  # layers offloaded
    mapped_bytes: int  # of cpu_bytes, weights mapped from the file (page cache)


class GpuLayersPlan(Wire):
    """How many layers go to the GPUs, for ``gpuLayers: "auto"``."""

    gpu_layers: int  # what llama.cpp gets as n_gpu_layers
    offloaded_blocks: int  # repeating layers on the GPUs
    output_offloaded: bool  # the output layer too
    full_offload: bool
    layers_by_device: list[int]  # in the order of the GPUs found
    bytes_by_device: list[int]
    graph_bytes: int  # the compute graph each GPU reserves
    reason: str  # in words


class FitModelParams(Params):
    model_id: ModelId | None = None  # default (or "auto"): the selection's choice
    # Default: the contextSize setting; "auto": the largest that fits.
    context_size: Annotated[int, msgspec.Meta(ge=0, le=1 << 20)] | Auto | None = None
    # Default: the gpuLayers setting; "auto": as many as fit the GPUs' free memory.
    gpu_layers: Annotated[int, msgspec.Meta(ge=-1, le=100_000)] | Auto | None = None


class FitResult(Wire):
    """Whether a model fits this machine, and what it needs."""

    model_id: str
    fits: bool  # its RAM need is within the usable RAM
    verdict: str  # in words, with the breakdown
    context: int  # the context it would load with ("auto" resolved)
    gpu_layers: int  # the GPU layers it would load with ("auto" resolved)
    estimate: MemoryNeed
    breakdown: str  # "7B Q5_K_M at 4096 tokens: 5.1 GiB weights + … = 5.9 GiB"
    ram_needed_bytes: int  # of the estimate, what comes out of system RAM
    total_ram_bytes: int
    usable_ram_bytes: int  # less 2 GiB kept for the system
    available_bytes: int | None  # free right now
    # Where the numbers come from: the downloaded file's header, the header fetched from
    # the Hub (a few MB by Range), or the registry's architecture numbers.
    header_source: HeaderSource
    note: str | None  # why not from the file, in words
    gpu: GpuLayersPlan | None  # the plan, when gpuLayers is "auto"
    warning: str | None  # fits, but too little memory is free right now


# -- downloads ---------------------------------------------------------------------------


class DownloadModelParams(Params):
    model_id: ModelId  # or "auto": the selection's choice
    work_done_token: ProgressToken | None = None  # $/progress goes here


class AdoptedFile(Wire):
    """A model file another tool (huggingface_hub, llama.cpp, LM Studio, Ollama) had
    downloaded already, checked against the reference and linked or copied in."""

    filename: str  # the Hub file name
    tool: str  # whose cache it came from
    path: str  # the other tool's file (only ever read)
    method: str  # "reflink", "hardlink" or "copy"
    copied_bytes: int  # 0 for a link


class DownloadModelResult(Wire):
    model_id: str  # resolved ("auto" becomes an id)
    paths: list[str]  # absolute; the first is what llama.cpp loads
    size_bytes: int  # of all files
    sha256: str  # of the first (or only) file
    revision: str | None  # the Hub commit the files came from
    pruned: list[str]  # models removed to stay under the cache size limit
    # Every file's SHA-256 matched a reference known in advance (the registry's, the Hub's
    # LFS oid, or a trusted mirror's); false: the hash was only recorded (say "verified"
    # only when true).
    verified: bool
    cached: bool  # it was downloaded already: nothing moved
    repaired: list[str]  # what was wrong with the cached files this download replaced
    adopted: list[AdoptedFile]  # files taken from other tools' caches, not downloaded
    served_by: dict[str, str]  # Hub file name -> the source (host:port) that sent it
    # Hub file name -> who vouched for its SHA-256: "registry", or the source (host:port:
    # the Hub, or a mirror in trusted_sources) whose word it is; absent: nobody did.
    reference_by: dict[str, str] = {}


# -- updates -----------------------------------------------------------------------------


class CheckUpdatesParams(Params):
    model_ids: list[ModelId] | None = None  # default: every downloaded model


class UpdateEntry(Wire):
    model_id: str
    current_revision: str | None  # the Hub commit the cached files came from
    latest_revision: str  # the commit the model's revision (e.g. main) points to now
    size_bytes: int  # what the update downloads


class CheckUpdatesResult(Wire):
    updates: list[UpdateEntry]  # only models whose files changed
    checked_at: datetime


class UpdateModelParams(Params):
    model_id: ModelId
    work_done_token: ProgressToken | None = None  # $/progress goes here


class UpdateAvailable(Wire):
    """``vibrant/updateAvailable``: the background check found newer files for a model."""

    model_id: str
    current_revision: str | None
    latest_revision: str
    size_bytes: int
    auto_update: bool  # true: the server is downloading it now (the autoUpdate setting)


class CancelDownloadParams(Params):
    model_id: ModelId  # the model whose download to stop


class CancelDownloadResult(Wire):
    model_id: str
    cancelled: bool  # False: no download of it was running in this server


class DownloadProgress(Wire):
    """``vibrant/downloadProgress``: at most about ten a second per download."""

    model_id: str
    file: str  # the Hub file being transferred
    downloaded_bytes: int  # of the whole model, all files
    total_bytes: int | None  # once known
    bytes_per_second: float  # smoothed over a few seconds
    eta_seconds: float | None  # when the speed is known
    source: str | None  # where the bytes come from: a source's host:port, a cache
    # "waiting" (another process downloads it), "resolving", "downloading",
    # "verifying", then "done", "failed" or "cancelled" last.
    state: DownloadState


# -- cache -------------------------------------------------------------------------------


class RemoveModelParams(Params):
    model_id: ModelId  # its files and any partial download go


class RemoveModelResult(Wire):
    model_id: str
    freed_bytes: int  # on disk


class CacheStatsResult(Wire):
    cache_dir: str  # the models folder
    total_bytes: int  # of downloaded models
    max_cache_bytes: int | None  # the cache size limit; null: unlimited
    models: int  # how many are downloaded
    partial_bytes: int  # of unfinished downloads


class CleanCacheParams(Params):
    # Also remove models not used for this many days (absent: partial downloads only).
    older_than_days: Annotated[float, msgspec.Meta(ge=0, le=36500)] | None = None


class PruneCacheParams(Params):
    max_bytes: Bytes | None = None  # default: the cache size limit


class RemovalResult(Wire):
    removed: list[str]  # model ids; "<id> (partial)" for a partial download
    freed_bytes: int


# -- the loaded model --------------------------------------------------------------------


class LoadOverrides(Params):
    """Per-load overrides of the settings of the same names (``runtime.LoadOptions``)."""

    # "auto": the largest context up to the model's own that fits this machine's memory.
    context_size: Annotated[int, msgspec.Meta(ge=64, le=1 << 20)] | Auto | None = None
    threads: Annotated[int, msgspec.Meta(ge=1, le=1024)] | None = None
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1 << 16)] | None = None
    mmap: bool | None = None
    mlock: bool | None = None
    # -1: every layer; "auto": as many as fit the GPUs' free memory.
    gpu_layers: Annotated[int, msgspec.Meta(ge=-1, le=100_000)] | Auto | None = None


class LoadModelParams(Params):
    model_id: ModelId | None = None  # default: last used, else the selection among cached
    options: LoadOverrides | None = None  # override the settings for this load
    work_done_token: ProgressToken | None = None  # $/progress of the load goes here


class LoadModelResult(Wire):
    model_id: str  # the model now loaded
    loaded_at: datetime
    load_ms: float  # 0 when it was loaded already
    supports_fim: bool  # it has fill-in-the-middle tokens
    reason: str | None = None  # why another model than the one asked for was loaded


class UnloadModelResult(Wire):
    model_id: str | None  # the model unloaded
    unloaded: bool  # False: nothing was loaded


class StatusResult(Wire):
    state: ModelState
    model_id: str | None  # the model that state is about
    loaded_at: datetime | None  # when it became ready
    last_used: datetime | None  # its last completion
    busy: bool  # a completion is running
    error: str | None  # the last load failure, in state "failed"
    downloads: list[DownloadProgress]  # running in this server, latest progress each
    # The loaded model's memory, context and GPU layers, as planned when it loaded.
    plan: FitResult | None = None
    engine: EngineInfo | None = None  # where completions go, when not this machine


class ModelStateChanged(Wire):
    """``vibrant/modelStateChanged``."""

    model_id: str | None
    state: ModelState
    reason: str | None = None  # e.g. a fallback after a failed load, or idle unload


# -- completions -------------------------------------------------------------------------


class ContextFile(Params):
    """A chunk of another file the model sees before the cursor's window (the client
    collects them, as llama.vim's ring buffer does)."""

    filename: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]  # its path
    text: Annotated[str, msgspec.Meta(max_length=16_000)]  # whole lines of it


class CompleteParams(Params):
    prompt: Annotated[str, msgspec.Meta(max_length=4_000_000)]  # the text before the cursor
    # The text after the cursor: fill in the middle when the model has FIM tokens.
    suffix: Annotated[str, msgspec.Meta(max_length=4_000_000)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=32768)] = 128
    temperature: Annotated[float, msgspec.Meta(ge=0, le=5)] = 0.2  # 0: greedy
    # Generation stops before any of these strings.
    stop: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=256)]],
                    msgspec.Meta(max_length=16)] = []  # fmt: skip
    model_id: ModelId | None = None  # default: the loaded model, else as loadModel chooses
    partial_result_token: ProgressToken | None = None  # stream {text} pieces here
    work_done_token: ProgressToken | None = None  # progress of a load this completion starts
    # The editor's language id (python, typescript...) and the file's path: the language's
    # rules of the completion pipeline (line comment, blocks, top-level keywords).
    language_id: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    filename: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    # Chunks of other files, in a fixed order (oldest first), before the window.
    context: Annotated[list[ContextFile], msgspec.Meta(max_length=16)] = []
    # One line (false) or several (true); default: several only at the end of a line or
    # on an empty one, outside a line comment.
    multiline: bool | None = None
    # The model's text as it came, without the completion pipeline (benchmarks).
    raw: bool = False


class Usage(Wire):
    prompt_tokens: int  # fed to the model (FIM tokens included)
    completion_tokens: int  # generated
    # Of the prompt tokens: how many were evaluated now, and how many came from the KV
    # cache of earlier requests (kept in place, or shifted there).
    prompt_evaluated: int = 0
    prompt_cached: int = 0
    # Greedy completions: tokens guessed from the prompt and checked by the model in the
    # same batch as the token before them, and how many it agreed with (each one a
    # token that cost no decode of its own).
    drafted: int = 0
    draft_accepted: int = 0


class Timings(Wire):
    load_ms: float  # loading the model for this request; 0 when it was loaded
    total_ms: float  # load plus generation


class CompleteResult(Wire):
    text: str  # the completion (the stop string excluded)
    model_id: str  # the model that wrote it
    finish_reason: FinishReason  # "stop": end of text or a stop string; "length": maxTokens
    # Why the completion ended: the pipeline's rule that cut it, or end, length, cancelled.
    stop_reason: StopReason
    usage: Usage
    timings: Timings
    fim: bool  # the suffix was used (the model has fill-in-the-middle tokens)
    # Answered from the last completion without the model: the prompt typed the start of
    # it (temperature 0, no stop strings), and this is the rest.
    cached: bool = False
    engine: str = "local"  # which answered: "local" (this machine) or the engine's name
    # Why the local model answered instead of the engine (it could not be reached); a
    # completion the engine began and the local model finished says so too.
    fallback_reason: str | None = None


class CompletionChunk(Wire):
    """A ``$/progress`` value on ``partialResultToken``: the next piece of text."""

    text: str  # the pieces, in order, make the result's text
