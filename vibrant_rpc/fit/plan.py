"""Whether a model fits this machine, at which context and with how many GPU layers.

One pure function over a model's header, the load settings, the memory and the GPUs:
``fit_model`` resolves ``context_size = "auto"`` (the largest context up to the
model's own that fits) and ``gpu_layers = "auto"`` (``gpu.plan_gpu_layers``), then
says in words what the model needs and whether it fits. The selection, ``vibrant
model fit``, ``vibrant/fitModel`` and the load itself all ask it, so they agree.

What must fit is the memory that comes out of system RAM: the estimate's CPU part on
a machine with a discrete GPU, all of it with Apple's unified memory. The OS keeps
``ram.OS_BUFFER_BYTES`` (2 GiB). ``"auto"`` context is sized
for the CPU alone, before any layer moves to a GPU: on a discrete GPU offloading then
only frees RAM; with unified memory it may not (the GPU reserves its whole compute
graph), and a context that no longer fits is bisected down to one that does.
"""

from __future__ import annotations

import msgspec

from ..config import Settings
from ..gguf.header import ModelHeader
from ..inference.model import FLASH_ATTENTION
from ..states import Auto, HeaderSource
from ..units import format_gib
from .estimate import (
    EstimateOptions,
    MemoryEstimate,
    estimate,
    largest_context,
    largest_fitting,
)
from .gpu import GpuDevice, GpuPlan, plan_gpu_layers
from .ram import OS_BUFFER_BYTES, MemoryInfo, short_now_warning, usable_bytes

# "auto" never goes below this (a completion window of a few hundred lines); a model
# that doesn't fit at it doesn't fit.
MIN_AUTO_CONTEXT = 2048
# llama-cpp-python's n_ubatch default: the micro-batch its compute graph is sized for.
UBATCH = 512


class LoadRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a load asks for: the load settings as the user gives them (``Settings``' six
    of these names, with a request's own values), the context and GPU layers possibly
    "auto". ``fit_model`` says what it comes to for one model; ``inference.LoadOptions``
    is what llama.cpp then gets. Made by ``load_request`` only, so no defaults here: the
    defaults are the settings'."""

    context_size: int | Auto  # 0: the model's own training context
    threads: int
    batch_size: int
    mmap: bool
    mlock: bool
    gpu_layers: int | Auto  # -1: every layer


def load_request(settings: Settings, **given: int | bool | Auto | None) -> LoadRequest:
    """The load settings, with a request's own values where it gives them (None: the
    setting's): the CLI's and ``fitModel``'s context and GPU layers, ``loadModel``'s
    overrides. An unknown name or a value of the wrong type raises."""
    request = msgspec.convert(settings, LoadRequest, from_attributes=True)
    own = {name: value for name, value in given.items() if value is not None}
    if not own:
        return request
    return msgspec.convert({**msgspec.structs.asdict(request), **own}, LoadRequest)


class Fit(msgspec.Struct, frozen=True, kw_only=True):
    model_id: str
    fits: bool
    # "fits: needs 5.7 GiB of the 13.5 GiB usable" or why not, with what to change.
    verdict: str
    context: int  # the context it loads with ("auto" resolved)
    gpu_layers: int  # what goes to llama.cpp as n_gpu_layers ("auto" resolved)
    estimate: MemoryEstimate
    breakdown: str  # the estimate in words: "7B Q5_K_M at 4096 tokens: … = 5.9 GiB"
    ram_needed_bytes: int  # of the estimate, what comes out of system RAM
    total_ram_bytes: int
    usable_ram_bytes: int
    available_bytes: int | None
    # Where the header came from, and what that means for the numbers.
    header_source: HeaderSource
    note: str | None = None
    gpu: GpuPlan | None = None  # the plan, when gpu_layers is "auto"
    warning: str | None = None  # fits, but the memory free right now is short


def _estimate_options(request: LoadRequest, context: int, gpu_layers: int) -> EstimateOptions:
    return EstimateOptions(
        context=context,
        batch=request.batch_size,
        ubatch=min(UBATCH, request.batch_size),
        mmap=request.mmap,
        gpu_layers=gpu_layers,
        flash_attention=FLASH_ATTENTION,  # as the runtime loads
    )


def _ram_needed(est: MemoryEstimate, devices: list[GpuDevice]) -> int:
    # Unified memory: what the GPU takes comes out of the same RAM.
    return est.total_bytes if any(d.kind == "metal" for d in devices) else est.cpu_bytes


def _floor(header: ModelHeader) -> int:
    return min(MIN_AUTO_CONTEXT, header.context_length or 4096)


def _context(header: ModelHeader, request: LoadRequest, usable: int) -> int:
    own = header.context_length or 4096
    if request.context_size != "auto":
        return request.context_size or own
    floor = _floor(header)
    found = largest_context(header, _estimate_options(request, 0, 0), usable, minimum=floor)
    return found if found is not None else floor


class _Planned(msgspec.Struct, frozen=True):
    gpu: GpuPlan | None  # the plan, for gpu_layers "auto"
    gpu_layers: int  # what llama.cpp gets as n_gpu_layers
    estimate: MemoryEstimate
    need: int  # of the estimate, what comes out of system RAM


def _plan(
    header: ModelHeader, request: LoadRequest, context: int, devices: list[GpuDevice]
) -> _Planned:
    """The GPU layers, the estimate and its RAM need at ``context``."""
    plan: GpuPlan | None = None
    if request.gpu_layers == "auto":
        plan = plan_gpu_layers(devices, header, _estimate_options(request, context, -1))
        gpu_layers = plan.gpu_layers
    else:
        gpu_layers = request.gpu_layers
    # No GPU llama.cpp can use (none found, or a CPU build that can't offload): it ignores
    # n_gpu_layers and keeps every layer in RAM, so a gpu_layers setting must not make a
    # model look smaller than it is.
    on_gpu = gpu_layers if any(d.offload for d in devices) else 0
    est = estimate(header, _estimate_options(request, context, on_gpu))
    return _Planned(plan, gpu_layers, est, _ram_needed(est, devices))


def _shrink(
    header: ModelHeader,
    request: LoadRequest,
    devices: list[GpuDevice],
    usable: int,
    context: int,
) -> tuple[int, _Planned]:
    """An "auto" context sized for the CPU alone, that doesn't fit once layers go to the
    GPU: with unified memory the GPU's share (the whole reserved compute graph with it)
    comes out of the same RAM. The largest smaller multiple of 256 that fits; the floor
    (not fitting) if none does."""
    floor = _floor(header)
    found = largest_fitting(
        lambda n: _plan(header, request, n, devices).need <= usable, context, floor
    )
    n = floor if found is None else found
    return n, _plan(header, request, n, devices)


def fit_model(
    model_id: str,
    header: ModelHeader,
    request: LoadRequest,
    memory: MemoryInfo,
    devices: list[GpuDevice],
    *,
    header_source: HeaderSource = "file",
    note: str | None = None,
) -> Fit:
    usable = usable_bytes(memory.total_bytes)
    context = _context(header, request, usable)
    planned = _plan(header, request, context, devices)
    if request.context_size == "auto" and planned.need > usable and context > _floor(header):
        context, planned = _shrink(header, request, devices, usable, context)
    est, need = planned.estimate, planned.need
    fits = need <= usable
    breakdown = est.breakdown()
    room = f"{format_gib(usable)} usable ({format_gib(memory.total_bytes)} less "
    room += f"{format_gib(OS_BUFFER_BYTES)} for the system)"
    if fits:
        verdict = f"fits: {breakdown}; {room}"
        if est.gpu_bytes:
            verdict += f"; {format_gib(est.gpu_bytes)} of it on the GPU"
    else:
        verdict = f"does not fit: {breakdown}; only {room}"
        if request.context_size != "auto" and context > MIN_AUTO_CONTEXT:
            verdict += '. A smaller context_size, or "auto", needs less'
    available = memory.available_bytes
    warning = short_now_warning(available, need, "it") if fits else None
    return Fit(
        model_id=model_id,
        fits=fits,
        verdict=verdict,
        context=context,
        gpu_layers=planned.gpu_layers,
        estimate=est,
        breakdown=breakdown,
        ram_needed_bytes=need,
        total_ram_bytes=memory.total_bytes,
        usable_ram_bytes=usable,
        available_bytes=available,
        header_source=header_source,
        note=note,
        gpu=planned.gpu,
        warning=warning,
    )
