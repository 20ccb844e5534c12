"""``fit_model`` on real headers (Gemma 3 270M's file, the embedded Qwen models' registry
numbers), and the selection built on it through ``app.Vibrant`` with the embedded registry.

The selection's tiers at 4096 tokens are asserted here, as the README quotes them.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import msgspec
import pytest

from tests.support.gguf_fixtures import gemma_path
from tests.support.helpers import write_registry
from vibrant_rpc.app import Vibrant
from vibrant_rpc.config import Settings
from vibrant_rpc.errors import InsufficientRamError, VibrantError
from vibrant_rpc.fit.estimate import EstimateOptions, estimate
from vibrant_rpc.fit.gpu import GpuDevice
from vibrant_rpc.fit.headers import header_for
from vibrant_rpc.fit.plan import MIN_AUTO_CONTEXT, Fit, LoadRequest, fit_model, load_request
from vibrant_rpc.fit.ram import OS_BUFFER_BYTES, MemoryInfo
from vibrant_rpc.gguf.header import ModelHeader, read_header
from vibrant_rpc.inference.model import FLASH_ATTENTION
from vibrant_rpc.paths import Paths
from vibrant_rpc.registry import ModelInfo, Registry
from vibrant_rpc.states import Auto

GiB = 2**30
MiB = 2**20
Q3, Q7, Q14, Q14_8 = (
    "qwen2.5-coder-3b-q4",
    "qwen2.5-coder-7b-q5",
    "qwen2.5-coder-14b-q5",
    "qwen2.5-coder-14b-q8",
)


@cache
def gemma() -> ModelHeader:
    return read_header(gemma_path())


@cache
def embedded() -> dict[str, ModelInfo]:
    return {m.id: m for m in Registry.embedded()}


def qwen(model_id: str) -> ModelHeader:
    header = header_for(embedded()[model_id])
    assert header is not None, f"{model_id} has its architecture in the registry"
    return header


def ram(gib: float, available: float | None = None) -> MemoryInfo:
    total = int(gib * GiB)
    return MemoryInfo(total, total if available is None else int(available * GiB))


def fit(
    header: ModelHeader,
    memory: MemoryInfo,
    devices: list[GpuDevice] | None = None,
    context: int | Auto = 4096,
    gpu_layers: int | Auto = 0,
) -> Fit:
    request = load_request(Settings(), context_size=context, gpu_layers=gpu_layers)
    return fit_model("m", header, request, memory, devices or [])


def cuda(free_gib: float) -> GpuDevice:
    free = int(free_gib * GiB)
    return GpuDevice(index=0, kind="cuda", name="test GPU", total_bytes=free, free_bytes=free)


def metal(memory: MemoryInfo) -> GpuDevice:
    return GpuDevice(
        index=0,
        kind="metal",
        name="Apple unified memory",
        total_bytes=memory.total_bytes,
        free_bytes=memory.available_bytes,
    )


# -- fit_model ------------------------------------------------------------------------


def test_a_load_request_is_the_settings_with_what_a_request_gives() -> None:
    s = Settings(context_size=8192, threads=3, batch_size=64, mmap=False, mlock=True, gpu_layers=-1)
    settings_only = LoadRequest(
        context_size=8192, threads=3, batch_size=64, mmap=False, mlock=True, gpu_layers=-1
    )
    assert load_request(s) == settings_only
    # None is "the setting's" (what the wire and the CLI send for a value not given).
    assert load_request(s, context_size=None, gpu_layers=None) == settings_only
    given = load_request(s, context_size="auto", gpu_layers=0, mmap=True, threads=None)
    assert given == msgspec.structs.replace(
        settings_only, context_size="auto", gpu_layers=0, mmap=True
    )
    with pytest.raises(msgspec.ValidationError, match="contxt"):
        load_request(s, contxt=1024)  # a name that isn't a load setting
    with pytest.raises(msgspec.ValidationError, match="context_size"):
        load_request(s, context_size="big")  # type: ignore[arg-type]  # what is refused


def test_gemma_fits_and_the_verdict_gives_the_breakdown() -> None:
    f = fit(gemma(), ram(4))
    est = estimate(gemma(), EstimateOptions(context=4096, flash_attention=FLASH_ATTENTION))
    assert f.fits and f.context == 4096 and f.gpu_layers == 0 and f.gpu is None
    assert f.estimate == est and f.ram_needed_bytes == est.cpu_bytes == est.total_bytes
    assert f.usable_ram_bytes == 2 * GiB and f.total_ram_bytes == 4 * GiB
    assert f.breakdown == est.breakdown()
    assert re.fullmatch(
        r"Gemma 3 270m at 4096 tokens: 0\.\d\d GiB weights \+ 0\.07 GiB KV cache \+ "
        r"0\.\d\d GiB buffers = 0\.\d\d GiB",
        f.breakdown,
    ), f.breakdown
    assert f.verdict == (
        f"fits: {est.breakdown()}; 2.0 GiB usable (4.0 GiB less 2.0 GiB for the system)"
    )
    assert f.warning is None and f.header_source == "file" and f.note is None


def test_a_model_too_big_does_not_fit_and_says_what_to_change() -> None:
    f = fit(qwen(Q14_8), ram(8))
    assert not f.fits and f.ram_needed_bytes > f.usable_ram_bytes
    assert f.verdict.startswith(f"does not fit: {f.breakdown}; only 6.0 GiB usable ("), f.verdict
    assert f.verdict.endswith('. A smaller context_size, or "auto", needs less')
    assert f.warning is None  # no "close other programs": that would not be enough
    # At the smallest context "auto" would give, there is no smaller one to suggest.
    small = fit(qwen(Q14_8), ram(8), context=MIN_AUTO_CONTEXT)
    assert not small.fits and "context_size" not in small.verdict


@pytest.mark.parametrize("header", [gemma(), qwen(Q7)], ids=["gemma", "qwen-7b"])
def test_the_boundary_is_the_usable_memory_to_the_byte(header: ModelHeader) -> None:
    need = fit(header, ram(64)).ram_needed_bytes
    at = MemoryInfo(need + OS_BUFFER_BYTES, need + OS_BUFFER_BYTES)
    assert fit(header, at).fits
    short = MemoryInfo(need + OS_BUFFER_BYTES - 1, need + OS_BUFFER_BYTES - 1)
    assert not fit(header, short).fits


def test_context_0_is_the_models_own() -> None:
    assert gemma().context_length == 32768
    f = fit(gemma(), ram(8), context=0)
    assert f.context == 32768 and f.estimate.context == 32768
    assert f.estimate.kv_cache_bytes == 18 * 1 * 256 * 2 * 2 * 32768  # every layer, f16
    q = fit(qwen(Q7), ram(64), context=0)
    assert q.context == qwen(Q7).context_length == 32768


def auto_is_the_largest_that_fits(header: ModelHeader, memory: MemoryInfo) -> Fit:
    f = fit(header, memory, context="auto")
    own = header.context_length
    assert f.fits, f.verdict
    assert f.context % 256 == 0 and MIN_AUTO_CONTEXT <= f.context <= own, f.context
    assert f.estimate.context == f.context
    if f.context < own:  # 256 more would not fit, unless capped at the model's own
        assert not fit(header, memory, context=f.context + 256).fits, f.context
    return f


@pytest.mark.parametrize("total", [4, 4.3, 6, 8, 12, 32])
def test_auto_context_is_the_largest_multiple_of_256_that_fits_gemma(total: float) -> None:
    f = auto_is_the_largest_that_fits(gemma(), ram(total))
    if total >= 6:
        assert f.context == 32768  # the model's own: Gemma is small


@pytest.mark.parametrize("total", [8, 8.7, 9.1, 10, 12.3, 64])
def test_auto_context_is_the_largest_multiple_of_256_that_fits_qwen(total: float) -> None:
    f = auto_is_the_largest_that_fits(qwen(Q7), ram(total))
    # With flash attention (the runtime's) the 7B needs 9.2 GiB at its own 32768 tokens.
    if total < 9:
        assert f.context < 32768
    if total >= 10:
        assert f.context == 32768


def test_auto_context_never_goes_below_2048() -> None:
    # 7B at 2048 tokens needs 5.6 GiB: with 7.5 GiB of RAM nothing fits.
    f = fit(qwen(Q7), ram(7.5), context="auto")
    assert not f.fits and f.context == MIN_AUTO_CONTEXT
    assert f.verdict.startswith("does not fit: ") and "context_size" not in f.verdict
    # A model whose own context is under the floor gets its own.
    short = msgspec.structs.replace(gemma(), context_length=1024)
    assert fit(short, ram(4), context="auto").context == 1024


def test_gpu_layers_auto_with_a_big_cuda_device_offloads_everything() -> None:
    cpu_only = fit(qwen(Q7), ram(16))
    f = fit(qwen(Q7), ram(16), [cuda(80)], gpu_layers="auto")
    blocks = qwen(Q7).block_count
    assert f.gpu is not None and f.gpu.full_offload
    assert f.gpu_layers == blocks + 1 == f.estimate.gpu_layers
    assert f.gpu.reason == f"all {blocks} layers and the output layer fit in GPU memory"
    # What stays in RAM: the token embedding and the runtime; the GPU holds the rest.
    assert f.ram_needed_bytes == f.estimate.cpu_bytes < cpu_only.ram_needed_bytes / 4
    assert f.estimate.gpu_bytes > 5 * GiB
    assert f.fits and f.verdict.endswith(" of it on the GPU")
    # With the GPU, a machine too small for the CPU-only load fits it.
    assert not fit(qwen(Q7), ram(6)).fits
    assert fit(qwen(Q7), ram(6), [cuda(80)], gpu_layers="auto").fits


def test_gpu_layers_auto_with_a_small_cuda_device_offloads_some() -> None:
    cpu_only = fit(qwen(Q7), ram(16))
    full = fit(qwen(Q7), ram(16), [cuda(80)], gpu_layers="auto")
    f = fit(qwen(Q7), ram(16), [cuda(3)], gpu_layers="auto")
    blocks = qwen(Q7).block_count
    assert f.gpu is not None and not f.gpu.full_offload
    assert 0 < f.gpu.offloaded_blocks < blocks and f.gpu_layers == f.gpu.offloaded_blocks
    assert f.gpu.reason == f"{f.gpu_layers} of {blocks} layers fit in 3.0 GiB of free GPU memory"
    assert full.ram_needed_bytes < f.ram_needed_bytes < cpu_only.ram_needed_bytes
    assert f.estimate.gpu_bytes < 3 * GiB


def test_gpu_layers_auto_without_a_gpu_runs_on_the_cpu() -> None:
    f = fit(qwen(Q7), ram(16), [], gpu_layers="auto")
    assert f.gpu is not None and f.gpu.reason == "no GPU: every layer runs on the CPU"
    assert f.gpu_layers == 0 and f.estimate.gpu_bytes == 0
    assert f.ram_needed_bytes == fit(qwen(Q7), ram(16)).ram_needed_bytes


def test_gpu_layers_set_without_a_gpu_found_still_counts_every_layer_in_ram() -> None:
    # A CPU build of llama.cpp ignores n_gpu_layers: the setting must not make the 7B
    # look like 0.4 GiB and let it load onto a machine that can't hold it.
    cpu_only = fit(qwen(Q7), ram(16))
    for layers in (-1, 10):
        f = fit(qwen(Q7), ram(16), [], gpu_layers=layers)
        assert f.gpu_layers == layers  # still what llama.cpp is asked for
        assert f.estimate == cpu_only.estimate and f.estimate.gpu_bytes == 0
        assert f.ram_needed_bytes == cpu_only.ram_needed_bytes
        assert "on the GPU" not in f.verdict
    assert not fit(qwen(Q7), ram(7), [], gpu_layers=-1).fits


def test_apple_unified_memory_counts_the_gpus_share_as_ram() -> None:
    memory = ram(32)
    f = fit(qwen(Q7), memory, [metal(memory)], gpu_layers="auto")
    assert f.gpu is not None and f.gpu.full_offload and f.estimate.gpu_bytes > 5 * GiB
    assert f.ram_needed_bytes == f.estimate.total_bytes > f.estimate.cpu_bytes
    # The same plan on a discrete GPU takes only the CPU part from RAM.
    discrete = fit(qwen(Q7), memory, [cuda(32)], gpu_layers="auto")
    assert discrete.estimate == f.estimate
    assert discrete.ram_needed_bytes == f.estimate.cpu_bytes < f.ram_needed_bytes


@pytest.mark.parametrize("model_id", [Q3, Q7])
def test_auto_context_with_auto_gpu_layers_on_unified_memory_finds_one_that_fits(
    model_id: str,
) -> None:
    # An offload reserves the whole compute graph, out of the same RAM on a Mac: the
    # context "auto" picks must leave room for it, wherever some context fits.
    header = qwen(model_id)
    for total in range(4 * GiB, 24 * GiB, 32 * MiB):
        memory = MemoryInfo(total, total)
        devices = [metal(memory)]
        auto = fit(header, memory, devices, context="auto", gpu_layers="auto")
        floor = fit(header, memory, devices, context=MIN_AUTO_CONTEXT, gpu_layers="auto")
        assert auto.fits == floor.fits, (total / GiB, auto.context, auto.verdict)
        assert auto.context >= MIN_AUTO_CONTEXT and auto.context % 256 == 0
        if auto.fits:
            assert auto.ram_needed_bytes <= auto.usable_ram_bytes


def test_a_warning_when_the_memory_free_now_is_short() -> None:
    f = fit(qwen(Q7), ram(16, available=7))
    assert f.fits and f.available_bytes == 7 * GiB
    assert f.warning is not None
    assert f.warning.startswith("Only 7.0 GiB of memory is free right now: loading it (5.")
    assert f.warning.endswith(
        "would leave less than 2.0 GiB for the system. Close other programs first."
    )
    assert fit(qwen(Q7), ram(16, available=12)).warning is None
    # The boundary: exactly 2 GiB left is enough.
    need = f.ram_needed_bytes
    exact = MemoryInfo(16 * GiB, need + OS_BUFFER_BYTES)
    assert fit(qwen(Q7), exact).warning is None
    short = MemoryInfo(16 * GiB, need + OS_BUFFER_BYTES - 1)
    assert fit(qwen(Q7), short).warning is not None


# -- the selection through app.Vibrant, embedded registry -------------------------------


def size_rank(model: ModelInfo) -> tuple[float, int]:
    """Bigger models: more parameters, then a bigger file."""
    parameters = float(model.parameters.rstrip("B"))
    return parameters, model.download_bytes


def app(root: Path, context: int | Auto) -> Vibrant:
    return Vibrant(Paths(root), Settings(context_size=context))


@pytest.mark.parametrize("context", [2048, 4096, 32768, "auto"])
def test_more_ram_never_selects_a_smaller_model(tmp_path: Path, context: int | Auto) -> None:
    v = app(tmp_path, context)
    models = {m.id: m for m in v.registry}
    last: ModelInfo | None = None
    for halves in range(4, 257):  # 2 GiB to 128 GiB in 0.5 GiB steps
        total = halves * GiB // 2
        try:
            chosen = models[v.select(total).model_id]
        except InsufficientRamError:
            assert last is None, f"{total / GiB} GiB selects nothing, less selected {last}"
            continue
        if last is not None:
            assert size_rank(chosen) >= size_rank(last), (total / GiB, chosen.id, last.id)
        last = chosen
        mine = v.fit(chosen.id, memory=MemoryInfo(total, total), fetch=False)
        assert mine.fits and mine.ram_needed_bytes <= total - OS_BUFFER_BYTES
        # the largest that fits: no bigger recommended model does
        for other in models.values():
            if other.recommended and size_rank(other) > size_rank(chosen):
                theirs = v.fit(other.id, memory=MemoryInfo(total, total), fetch=False)
                assert not theirs.fits, (total / GiB, other.id)
    assert last is not None and last.id == Q14_8


# What `app.select(ram)` chooses at each whole GiB at the default 4096 tokens (the README
# quotes these): nothing under 5 GiB, then 3B from 5, 7B from 8, 14B Q5 from 14 and 14B Q8
# from 19 GiB. The 3B starts sooner, at 4.32 GiB.
TIERS_4096 = {5: Q3, 8: Q7, 14: Q14, 19: Q14_8}


def test_the_tiers_at_4096_tokens(tmp_path: Path) -> None:
    v = app(tmp_path, 4096)
    chosen: dict[int, str | None] = {}
    for gib in range(2, 65):
        try:
            chosen[gib] = v.select(gib * GiB).model_id
        except InsufficientRamError:
            chosen[gib] = None
    expected: dict[int, str | None] = {}
    current: str | None = None
    for gib in range(2, 65):
        current = TIERS_4096.get(gib, current)
        expected[gib] = current
    assert chosen == expected
    assert v.select(int(4.35 * GiB)).model_id == Q3
    with pytest.raises(InsufficientRamError, match="the smallest, 3B Q4_K_M"):
        v.select(int(4.3 * GiB))


# -- a user's model without architecture numbers ----------------------------------------

BARE = {
    "id": "bare-1b",
    "hf_repo": "test/bare",
    "filename": "bare.gguf",
    "ram_required_mb": 1000,
    "file_size_mb": 700,
    "parameters": "1B",
    "quantization": "Q4_K_M",
    "recommended": True,
}


def test_a_model_without_architecture_is_selected_by_its_registry_ram(paths: Paths) -> None:
    write_registry(paths, [BARE])
    v = Vibrant(paths, Settings(context_size=4096))
    bare = v.registry.get("bare-1b")
    assert bare.architecture is None and v.cache.get("bare-1b") is None
    needed = 1000 * MiB  # its ram_required_mb, nothing more being known
    s = v.select(needed + OS_BUFFER_BYTES)
    assert s.model_id == "bare-1b" and s.fits == ["bare-1b"]
    # No breakdown to give for it; the next one up has its estimate.
    assert "; chose 1B Q4_K_M; the next, 3B Q4_K_M, needs " in s.reason, s.reason
    with pytest.raises(InsufficientRamError) as err:
        v.select(needed + OS_BUFFER_BYTES - 1)
    assert err.value.details["requiredRamBytes"] == needed
    assert err.value.details["smallestModelId"] == "bare-1b"
    # Enough for the 3B: the registry's numbers order the two.
    assert v.select(6 * GiB).model_id == Q3


def test_fit_of_a_model_without_architecture_names_it(paths: Paths) -> None:
    write_registry(paths, [BARE])
    v = Vibrant(paths)
    # HF_ENDPOINT is a refused port (conftest): the Hub is asked and can't answer.
    with pytest.raises(VibrantError) as err:
        v.fit("bare-1b")
    assert "bare-1b" in err.value.message and "can't estimate" in err.value.message
    assert err.value.details["modelId"] == "bare-1b"
    assert err.value.hint is not None and "1000 MB of RAM" in err.value.hint
    with pytest.raises(VibrantError, match="bare-1b"):
        v.fit("bare-1b", fetch=False)


def test_gpu_layers_with_a_card_llama_cpp_cannot_use_counts_every_layer_in_ram() -> None:
    card = msgspec.structs.replace(cuda(80), offload=False)
    cpu_only = fit(qwen(Q7), ram(16))
    auto = fit(qwen(Q7), ram(16), [card], gpu_layers="auto")
    assert auto.gpu is not None and auto.gpu_layers == 0 and "CPU build" in auto.gpu.reason
    for f in (auto, fit(qwen(Q7), ram(16), [card], gpu_layers=-1)):
        assert f.estimate == cpu_only.estimate and f.estimate.gpu_bytes == 0
        assert f.ram_needed_bytes == cpu_only.ram_needed_bytes and "on the GPU" not in f.verdict
