"""GPUs this machine has, and how many of a model's layers to put on them.

Detection reads NVIDIA GPUs' free memory through NVML (``nvidia-ml-py``); a machine
without the library, the driver or a GPU gets an empty list, never an error. An Apple
Silicon Mac counts as one device whose memory is the system's (unified memory: what
the GPU takes, the CPU doesn't get).

A GPU counts only where the installed llama.cpp can put layers on it: pip's default
build on Linux is CPU-only (``llama_supports_gpu_offload()`` is false) even with an
NVIDIA driver present and NVML seeing the card. Such a device is still listed, with
``offload`` false, so the plan can say why every layer stays in RAM.

``plan_gpu_layers`` is Ollama's planner (``llm/memory.go``, ``EstimateGPULayers``) over
vibrant's estimate, as a pure function: a device takes part only if it fits the
compute graph, its minimum reserve and two layers; then layers go round-robin to the
devices while ``used + graph + layer`` stays under the free memory, where a layer is
its weights plus its share of the KV cache; the output layer (output.weight, or the
token embedding when they are tied) goes last, if it still fits. llama.cpp offloads
the *last* N repeating layers; ``n_gpu_layers`` above the layer count also moves the
output layer.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import Literal

import msgspec

from vibrant_rpc.fit.estimate import EstimateOptions, compute_reserved_bytes, kv_bytes_per_layer
from vibrant_rpc.fit.ram import MemoryInfo
from vibrant_rpc.gguf.header import ModelHeader

GpuKind = Literal["cuda", "metal"]

MIB = 1024 * 1024
# What the driver and runtime take on a device before any tensor (Ollama's discover:
# cudaMinimumMemory and the Metal reserve).
MINIMUM_MEMORY: dict[str, int] = {"cuda": 457 * MIB, "metal": 512 * MIB}


class GpuDevice(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    kind: GpuKind
    name: str
    total_bytes: int
    free_bytes: int
    uuid: str | None = None
    # The installed llama.cpp can put layers on it (False: a CPU build; it only shows).
    offload: bool = True


class GpuPlan(msgspec.Struct, frozen=True, kw_only=True):
    # What to pass to llama.cpp as n_gpu_layers: block_count + 1 moves the output too.
    gpu_layers: int
    # Repeating layers on the GPUs, and whether the output layer went with them.
    offloaded_blocks: int
    output_offloaded: bool
    full_offload: bool
    # Layers per device, in the order of ``devices`` (llama.cpp's tensor_split).
    layers_by_device: list[int]
    bytes_by_device: list[int]
    graph_bytes: int
    reason: str


NvmlLoader = Callable[[], list[GpuDevice]]


def _nvml_devices() -> list[GpuDevice]:
    import pynvml  # type: ignore[import-untyped]  # no stubs; pure ctypes

    pynvml.nvmlInit()
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            devices.append(
                GpuDevice(
                    index=i,
                    kind="cuda",
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    total_bytes=int(mem.total),
                    free_bytes=int(mem.free),
                    uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                )
            )
        return devices
    finally:
        pynvml.nvmlShutdown()


def nvidia_gpus(load: NvmlLoader = _nvml_devices) -> list[GpuDevice]:
    """NVIDIA GPUs with their free memory; [] without nvidia-ml-py, NVML, a driver or a GPU."""
    try:
        return load()
    except ImportError:
        return []
    except Exception as exc:  # every pynvml.NVMLError_* (no library, no driver, no GPU …)
        if type(exc).__module__ == "pynvml" or type(exc).__name__.startswith("NVMLError"):
            return []
        raise


def apple_unified(memory: MemoryInfo, system: str, machine: str) -> list[GpuDevice]:
    """One Metal device over the system's memory on Apple Silicon; [] elsewhere."""
    if system != "Darwin" or machine != "arm64":
        return []
    return [
        GpuDevice(
            index=0,
            kind="metal",
            name="Apple unified memory",
            total_bytes=memory.total_bytes,
            free_bytes=memory.available_bytes,
        )
    ]


def llama_offloads() -> bool:
    """Whether the installed llama.cpp can offload layers at all (imports llama.cpp: asked
    only once a GPU was found)."""
    from ..inference.llama_setup import llama_cpp_module

    return bool(llama_cpp_module().llama_supports_gpu_offload())


def detect_gpus(
    memory: MemoryInfo,
    nvml: NvmlLoader = _nvml_devices,
    offloads: Callable[[], bool] = llama_offloads,
) -> list[GpuDevice]:
    """The GPUs here: Apple's unified memory, else NVIDIA's; [] if none. Each says whether
    the installed llama.cpp can use it (``offload``)."""
    found = apple_unified(memory, platform.system(), platform.machine()) or nvidia_gpus(nvml)
    if found and not offloads():
        return [msgspec.structs.replace(d, offload=False) for d in found]
    return found


def _layer_sizes(header: ModelHeader, options: EstimateOptions) -> list[int]:
    kv = kv_bytes_per_layer(header, options)
    return [w + kv for w in header.layer_bytes]


def plan_gpu_layers(
    devices: list[GpuDevice], header: ModelHeader, options: EstimateOptions
) -> GpuPlan:
    """The most layers whose weights and KV share fit the devices' free memory (Ollama's plan).

    ``options.gpu_layers`` caps the plan when it is ≥ 0; -1 means as many as fit.
    """
    blocks = header.block_count
    sizes = _layer_sizes(header, options)
    first_layer = sizes[0] if sizes else 0
    graph = compute_reserved_bytes(header, options)
    n = len(devices)
    layers_on = [0] * n
    used = [0] * n
    cap = blocks + 1 if options.gpu_layers < 0 else options.gpu_layers

    def plan(reason: str, blocks_on: int = 0, output: bool = False) -> GpuPlan:
        full = blocks_on >= blocks and output
        by_device = [u + graph if c else 0 for u, c in zip(used, layers_on, strict=True)]
        return GpuPlan(
            gpu_layers=blocks_on + (1 if output else 0),
            offloaded_blocks=blocks_on,
            output_offloaded=output,
            full_offload=full,
            layers_by_device=list(layers_on),
            bytes_by_device=by_device,
            graph_bytes=graph if blocks_on or output else 0,
            reason=reason,
        )

    if not devices:
        return plan("no GPU: every layer runs on the CPU")
    if not any(d.offload for d in devices):
        names = ", ".join(sorted({d.name for d in devices}))
        return plan(
            "the installed llama.cpp is a CPU build (it can't offload): every layer stays "
            f"in RAM, though {names} is here"
        )
    if cap == 0:
        return plan("gpu_layers is 0: every layer runs on the CPU")
    # A device takes part only if it holds the graph, its reserve and two layers.
    with_space = [
        i
        for i, d in enumerate(devices)
        if d.offload and d.free_bytes >= graph + MINIMUM_MEMORY[d.kind] + 2 * first_layer
    ]
    for i in with_space:
        # One layer's worth is held back as a buffer, as Ollama does.
        used[i] = MINIMUM_MEMORY[devices[i].kind] + first_layer
    if not with_space:
        return plan(
            f"too little free GPU memory for the {graph / MIB:.0f} MiB compute graph "
            "and one layer: every layer runs on the CPU"
        )
    # llama.cpp offloads the last layers; their sizes are what has to fit.
    placed = 0
    for layer in range(blocks - 1, -1, -1):
        if placed >= cap or not with_space:
            break
        size = sizes[layer]
        while with_space:
            j = with_space[placed % len(with_space)]
            if devices[j].free_bytes > used[j] + graph + size:
                used[j] += size
                layers_on[j] += 1
                placed += 1
                break
            with_space.remove(j)
    output = False
    if placed == blocks and placed < cap:
        for j in list(with_space):
            if devices[j].free_bytes > used[j] + graph + header.output_bytes:
                used[j] += header.output_bytes
                layers_on[j] += 1
                output = True
                break
    if placed == blocks and output:
        reason = f"all {blocks} layers and the output layer fit in GPU memory"
    elif placed == cap:
        reason = f"{placed} layers on the GPU, as gpu_layers asks"
    else:
        free = sum(d.free_bytes for d in devices) / 2**30
        reason = f"{placed} of {blocks} layers fit in {free:.1f} GiB of free GPU memory"
    return plan(reason, placed, output)
