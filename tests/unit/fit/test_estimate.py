"""The memory estimate: its terms against llama.cpp's own log, its total against a real load."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from bench.memory_probe import Probe
from tests.support.gguf_fixtures import GEMMA_SIZE, gemma_path
from tests.support.helpers import GEMMA_ARCH
from tests.support.qwen2_fixtures import QWEN_7B_LAYOUT, tiny_qwen2_path
from vibrant_rpc.fit.estimate import (
    EstimateOptions,
    compute_reserved_bytes,
    estimate,
    kv_cache_bytes,
)
from vibrant_rpc.gguf.architectures import ArchFacts, header_from_arch
from vibrant_rpc.gguf.header import ModelHeader, read_header
from vibrant_rpc.registry import Registry

MIB = 2**20
ROOT = Path(__file__).resolve().parents[3]


def probe(path: Path, context: int, *args: str) -> Probe:
    """A real load in a fresh process, its context filled (bench/memory_probe.py)."""
    cmd = [sys.executable, "-m", "bench.memory_probe", str(path), str(context), *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return msgspec.json.decode(done.stdout.strip().splitlines()[-1], type=Probe)


def gemma() -> ModelHeader:
    return read_header(gemma_path())


def test_kv_cache_is_full_size_for_sliding_window_layers() -> None:
    # llama.cpp logs 6.00 MiB (3 global layers) + 30.00 MiB (15 SWA layers) at 2048.
    assert kv_cache_bytes(gemma(), EstimateOptions(context=2048)) == 36 * MIB
    # 7B's layout: 2 × 28 layers × 4 KV heads × 128 × 2 bytes = 56 KiB a token.
    layout = read_header(tiny_qwen2_path(QWEN_7B_LAYOUT))
    assert kv_cache_bytes(layout, EstimateOptions(context=4096)) == 4096 * 56 * 1024
    # Padded to 256 cells, as llama.cpp allocates them.
    assert kv_cache_bytes(layout, EstimateOptions(context=4000)) == 4096 * 56 * 1024


def test_kv_cache_types() -> None:
    h = gemma()
    f16 = kv_cache_bytes(h, EstimateOptions(context=2048))
    assert kv_cache_bytes(h, EstimateOptions(context=2048, kv_cache_type="q8_0")) == f16 * 34 // 64
    assert kv_cache_bytes(h, EstimateOptions(context=2048, kv_cache_type="q4_0")) == f16 * 18 // 64
    assert kv_cache_bytes(h, EstimateOptions(context=2048, kv_cache_type="f32")) == 2 * f16


def test_context_zero_is_the_models_own() -> None:
    h = gemma()
    assert estimate(h, EstimateOptions(context=0)) == estimate(h, EstimateOptions(context=32768))


def test_more_context_never_needs_less() -> None:
    h = gemma()
    totals = [estimate(h, EstimateOptions(context=c)).total_bytes for c in (512, 2048, 8192)]
    assert totals == sorted(totals) and totals[0] < totals[-1]


def test_flash_attention_and_small_ubatch_need_less_compute() -> None:
    h = read_header(tiny_qwen2_path(QWEN_7B_LAYOUT))
    plain = estimate(h, EstimateOptions(context=8192))
    flash = estimate(h, EstimateOptions(context=8192, flash_attention=True))
    small = estimate(h, EstimateOptions(context=8192, ubatch=128))
    assert flash.compute_bytes < plain.compute_bytes / 4
    assert small.compute_bytes < plain.compute_bytes / 2
    assert flash.kv_cache_bytes == plain.kv_cache_bytes


def _facts(model_id: str) -> ArchFacts:
    """An embedded model's architecture numbers, as the registry carries them."""
    facts = Registry.embedded().get(model_id).architecture
    assert facts is not None
    return facts


def test_breakdown_reads_like_the_issue() -> None:
    facts = _facts("qwen2.5-coder-7b-q5")
    h = header_from_arch(facts, 5_440_000_000, name="7B Q5_K_M")
    text = estimate(h, EstimateOptions(context=4096)).breakdown()
    assert re.fullmatch(
        r"7B Q5_K_M at 4096 tokens: 5\.1 GiB weights \+ 0\.22 GiB KV cache "
        r"\+ \d\.\d\d GiB buffers = \d+\.\d GiB",
        text,
    ), text


def test_qwen_kv_cache_matches_the_published_numbers() -> None:
    # ../shared/MODELS.md: 0.15 / 0.23 / 0.81 GB at 4096; 1.2 / 1.9 / 6.4 GB at 32768.
    for model_id, at_4k, at_32k in (
        ("qwen2.5-coder-3b-q4", 0.15, 1.2),
        ("qwen2.5-coder-7b-q5", 0.23, 1.9),
        ("qwen2.5-coder-14b-q5", 0.81, 6.4),
    ):
        h = header_from_arch(_facts(model_id), 5 * 10**9)
        assert round(kv_cache_bytes(h, EstimateOptions(context=4096)) / 1e9, 2) == at_4k
        assert round(kv_cache_bytes(h, EstimateOptions(context=32768)) / 1e9, 1) == at_32k


def test_header_from_arch_is_close_to_the_real_header() -> None:
    real = gemma()
    built = header_from_arch(msgspec.convert(GEMMA_ARCH, ArchFacts), GEMMA_SIZE)
    for context in (2048, 32768):
        options = EstimateOptions(context=context)
        a, b = estimate(real, options).total_bytes, estimate(built, options).total_bytes
        assert abs(a - b) / a < 0.03
        assert kv_cache_bytes(real, options) == kv_cache_bytes(built, options)


def test_gpu_split_adds_up() -> None:
    h = read_header(tiny_qwen2_path(QWEN_7B_LAYOUT))
    cpu_only = estimate(h, EstimateOptions(context=4096))
    assert cpu_only.gpu_bytes == 0 and cpu_only.cpu_bytes == cpu_only.total_bytes
    half = estimate(h, EstimateOptions(context=4096, gpu_layers=14))
    assert half.gpu_layers == 14
    assert half.cpu_bytes + half.gpu_bytes == half.total_bytes
    # The GPU holds the last 14 layers, their KV and the reserved graph.
    reserved = compute_reserved_bytes(h, EstimateOptions(context=4096))
    assert half.gpu_bytes == sum(h.layer_bytes[14:]) + half.kv_cache_bytes // 2 + reserved
    full = estimate(h, EstimateOptions(context=4096, gpu_layers=-1))
    assert full.gpu_layers == 29
    # The CPU keeps only the token embedding, the logits and llama.cpp itself.
    assert full.cpu_bytes < h.token_embd_bytes + 60 * MIB
    assert full.cpu_bytes < half.cpu_bytes < cpu_only.cpu_bytes


@pytest.mark.llama
@pytest.mark.parametrize(
    ("path", "context"),
    [(gemma_path, 1024), (lambda: tiny_qwen2_path(QWEN_7B_LAYOUT), 512)],
    ids=["gemma-1024", "tiny-7b-layout-512"],
)
def test_estimate_against_a_real_load(path: object, context: int) -> None:
    assert callable(path)
    model = path()
    header = read_header(model)
    options = EstimateOptions(context=context)
    predicted = estimate(header, options)
    measured = probe(model, context)
    # Each term as llama.cpp itself logs it.
    assert round(header.weight_bytes / MIB, 2) == measured.buffers_mib["CPU_Mapped model"]
    assert round(predicted.kv_cache_bytes / MIB, 2) == measured.buffers_mib["CPU KV"]
    reserved = compute_reserved_bytes(header, options) / MIB
    assert abs(reserved - measured.buffers_mib["CPU compute"]) / reserved < 0.05
    # The total against the peak RSS, on what the load added to the process. Loose
    # (the benchmark has the figures) but failing: without the overhead term Gemma is
    # 20 % short, without the compute term the tiny model 25 %; the KV term is checked
    # exactly above.
    added = measured.peak_rss_bytes - measured.rss_before_bytes
    assert abs(predicted.total_bytes - added) / added < 0.08, predicted.breakdown()
    assert measured.prompt_tokens == context - 1


def test_largest_context_that_fits() -> None:
    from vibrant_rpc.fit.estimate import largest_context

    h = gemma()
    options = EstimateOptions()
    at_8k = estimate(h, EstimateOptions(context=8192)).total_bytes
    found = largest_context(h, options, at_8k)
    assert found is not None and found >= 8192
    assert estimate(h, EstimateOptions(context=found)).total_bytes <= at_8k
    assert estimate(h, EstimateOptions(context=found + 256)).total_bytes > at_8k
    assert largest_context(h, options, 10**12) == h.context_length
    assert largest_context(h, options, 100 * MIB) is None
