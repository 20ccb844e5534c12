"""GPU detection (never an error without a GPU) and the layer plan as a pure function."""

from __future__ import annotations

import platform

import msgspec
import pytest

from tests.support.qwen2_fixtures import QWEN_7B_LAYOUT, tiny_qwen2_path
from vibrant_rpc.fit.estimate import EstimateOptions, compute_reserved_bytes, kv_bytes_per_layer
from vibrant_rpc.fit.gpu import (
    MINIMUM_MEMORY,
    GpuDevice,
    apple_unified,
    detect_gpus,
    nvidia_gpus,
    plan_gpu_layers,
)
from vibrant_rpc.fit.ram import MemoryInfo
from vibrant_rpc.gguf.header import ModelHeader, read_header

MIB = 2**20
GIB = 2**30
OPTIONS = EstimateOptions(context=4096, gpu_layers=-1)


def header() -> ModelHeader:
    return read_header(tiny_qwen2_path(QWEN_7B_LAYOUT))


def cuda(free: int, index: int = 0) -> GpuDevice:
    return GpuDevice(index=index, kind="cuda", name="test", total_bytes=free, free_bytes=free)


def layer_size(h: ModelHeader) -> int:
    return h.layer_bytes[0] + kv_bytes_per_layer(h, OPTIONS)


def test_detection_never_raises() -> None:
    # Here: nvidia-ml-py without a driver, so []; on a GPU machine, its devices.
    found = nvidia_gpus()
    assert all(d.kind == "cuda" and 0 <= d.free_bytes <= d.total_bytes for d in found)
    if platform.system() == "Linux":
        memory = MemoryInfo(total_bytes=16 * GIB, available_bytes=8 * GIB)
        assert [(d.index, d.name) for d in detect_gpus(memory)] == [
            (d.index, d.name) for d in found
        ]


def test_nvml_failures_mean_no_gpus() -> None:
    import pynvml  # type: ignore[import-untyped]

    def no_library() -> list[GpuDevice]:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    def no_driver() -> list[GpuDevice]:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    def no_module() -> list[GpuDevice]:
        raise ImportError("No module named 'pynvml'")

    def a_bug() -> list[GpuDevice]:
        raise ZeroDivisionError

    for load in (no_library, no_driver, no_module):
        assert nvidia_gpus(load) == []
    with pytest.raises(ZeroDivisionError):
        nvidia_gpus(a_bug)


def test_apple_silicon_is_one_unified_pool() -> None:
    memory = MemoryInfo(total_bytes=32 * GIB, available_bytes=20 * GIB)
    (device,) = apple_unified(memory, "Darwin", "arm64")
    assert (device.kind, device.total_bytes, device.free_bytes) == ("metal", 32 * GIB, 20 * GIB)
    assert apple_unified(memory, "Darwin", "x86_64") == []
    assert apple_unified(memory, "Linux", "arm64") == []


def test_no_devices_or_zero_layers_run_on_the_cpu() -> None:
    h = header()
    assert plan_gpu_layers([], h, OPTIONS).gpu_layers == 0
    cpu = plan_gpu_layers([cuda(80 * GIB)], h, EstimateOptions(context=4096, gpu_layers=0))
    assert cpu.gpu_layers == 0 and cpu.bytes_by_device == [0]


def test_a_large_gpu_takes_everything() -> None:
    h = header()
    plan = plan_gpu_layers([cuda(80 * GIB)], h, OPTIONS)
    assert plan.full_offload and plan.output_offloaded
    assert plan.gpu_layers == h.block_count + 1 == 29
    assert plan.layers_by_device == [29]


def test_a_small_gpu_takes_what_fits_less_the_margin() -> None:
    h = header()
    graph = compute_reserved_bytes(h, OPTIONS)
    size = layer_size(h)
    # Room for the reserve, the graph, one buffer layer and exactly 10 layers more.
    free = MINIMUM_MEMORY["cuda"] + graph + size + 10 * size + size // 2
    plan = plan_gpu_layers([cuda(free)], h, OPTIONS)
    assert plan.gpu_layers == plan.offloaded_blocks == 10
    assert not plan.output_offloaded and not plan.full_offload
    assert plan.bytes_by_device[0] < free
    assert "10 of 28 layers" in plan.reason


def test_more_free_memory_never_offloads_fewer_layers() -> None:
    h = header()
    counts = [
        plan_gpu_layers([cuda(free)], h, OPTIONS).gpu_layers
        for free in range(256 * MIB, 4 * GIB, 64 * MIB)
    ]
    assert counts == sorted(counts)
    assert counts[0] == 0 and counts[-1] == 29


def test_too_little_for_the_graph_is_cpu_only() -> None:
    h = header()
    graph = compute_reserved_bytes(h, OPTIONS)
    plan = plan_gpu_layers([cuda(MINIMUM_MEMORY["cuda"] + graph)], h, OPTIONS)
    assert plan.gpu_layers == 0 and "too little" in plan.reason


def test_gpu_layers_caps_the_plan() -> None:
    h = header()
    plan = plan_gpu_layers([cuda(80 * GIB)], h, EstimateOptions(context=4096, gpu_layers=5))
    assert plan.gpu_layers == 5 and not plan.output_offloaded


def test_two_gpus_share_the_layers() -> None:
    h = header()
    plan = plan_gpu_layers([cuda(40 * GIB, 0), cuda(40 * GIB, 1)], h, OPTIONS)
    assert plan.full_offload
    assert sum(plan.layers_by_device) == 29
    assert abs(plan.layers_by_device[0] - plan.layers_by_device[1]) <= 1
    # A device too small for even the graph takes no layers.
    tiny = plan_gpu_layers([cuda(40 * GIB, 0), cuda(100 * MIB, 1)], h, OPTIONS)
    assert tiny.layers_by_device == [29, 0] and tiny.bytes_by_device[1] == 0


def test_longer_context_offloads_fewer_layers() -> None:
    h = header()
    free = 2 * GIB
    short = plan_gpu_layers([cuda(free)], h, EstimateOptions(context=2048, gpu_layers=-1))
    long = plan_gpu_layers([cuda(free)], h, EstimateOptions(context=16384, gpu_layers=-1))
    assert long.gpu_layers < short.gpu_layers


def test_a_gpu_the_installed_llama_cpp_cannot_use_keeps_every_layer_in_ram() -> None:
    """pip's default llama.cpp on Linux is CPU-only even where NVML sees a card: the card
    shows, with offload false, and the plan says why nothing goes to it."""
    memory = MemoryInfo(total_bytes=16 * GIB, available_bytes=8 * GIB)
    h100 = GpuDevice(index=0, kind="cuda", name="NVIDIA H100", total_bytes=80 * GIB,
                     free_bytes=79 * GIB)  # fmt: skip
    if platform.system() == "Linux":
        found = detect_gpus(memory, nvml=lambda: [h100], offloads=lambda: False)
        assert [(d.name, d.offload) for d in found] == [("NVIDIA H100", False)]
        assert detect_gpus(memory, nvml=lambda: [h100], offloads=lambda: True) == [h100]
    # No GPU found: the build is not even asked (asking imports llama.cpp).
    asked: list[bool] = []

    def offloads() -> bool:
        asked.append(True)
        return True

    assert detect_gpus(memory, nvml=lambda: [], offloads=offloads) in (
        [], apple_unified(memory, platform.system(), platform.machine()))  # fmt: skip
    plan = plan_gpu_layers([msgspec.structs.replace(h100, offload=False)], header(), OPTIONS)
    assert (plan.gpu_layers, plan.layers_by_device, plan.graph_bytes) == (0, [0], 0)
    assert plan.reason == (
        "the installed llama.cpp is a CPU build (it can't offload): every layer stays in "
        "RAM, though NVIDIA H100 is here"
    )


def test_this_machines_llama_cpp_build_decides() -> None:
    """With the llama.cpp installed here (the project's CPU build from pip: offload false;
    a CUDA or Metal build: true), a card NVML reports is usable exactly when it offloads."""
    import llama_cpp

    from vibrant_rpc.fit.gpu import llama_offloads

    can = bool(llama_cpp.llama_supports_gpu_offload())
    assert llama_offloads() is can
    memory = MemoryInfo(total_bytes=16 * GIB, available_bytes=8 * GIB)
    found = detect_gpus(memory, nvml=lambda: [cuda(80 * GIB)])
    if platform.system() == "Linux":
        assert [d.offload for d in found] == [can]
        plan = plan_gpu_layers(found, header(), OPTIONS)
        assert plan.gpu_layers == (header().block_count + 1 if can else 0)
