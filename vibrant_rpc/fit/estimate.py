"""How much memory a model takes in llama-cpp-python 0.3.36, from its GGUF header.

``estimate(header, options)`` is a pure function; each term below is what llama.cpp
allocates *and touches*, read off its own log ("... buffer size = N MiB") and off the
process's RssAnon/RssFile (``bench/memory_probe.py``), on Gemma 3 270M Q4_K_M and on
tiny models with Qwen 2.5 Coder 7B's layers and heads (``tests/qwen2_fixtures.py``),
each in a fresh process with its context filled by a real prompt, 2 threads, CPU only:

- **weights**: the sum of the tensors' sizes (type block size × elements); llama.cpp's
  "CPU_Mapped model buffer size" equals it to the byte (235.16 MiB for Gemma). With
  mmap the pages are file-backed, but a loaded model touches all of them.
- **KV cache**: n_ctx (padded to 256) × layers × KV heads × (key + value length) ×
  the cache type's size, for *every* layer: this runtime logs "using full-size SWA
  cache", so sliding-window layers get the whole context too. The buffer is cleared
  at load, so all of it is resident from the start (Gemma at 2048: 36.0 MiB logged,
  3 non-SWA + 15 SWA layers). q8_0/q4_0 caches are 34/32 and 18/32 bytes per element.
- **compute**: llama.cpp reserves the worst-case graph ("CPU compute buffer size"):
  the largest of the attention phase (activations + the n_kv × n_ubatch × heads f32
  attention scores + the f32 masks, one per cache), the feed-forward phase, and the
  output phase (n_vocab × n_ubatch f32 logits: 512 of Gemma's 514.5 MiB). On a CPU only
  touched pages count, and a real prompt asks for one row of logits, so the resident
  part is the attention or feed-forward phase plus the f16 copy of the scores that the
  scores × V product converts into (half the scores' size). Flash attention drops the
  scores and their copy. Calibration: tiny 7B layout, 512 and 1024 tokens: logged
  46.5/75.5 MiB, model 45.5/74.5; resident 61.0/104.1 MiB, model 60.0/102.5.
- **output**: the logits of one token (n_vocab × 4 bytes: Gemma's 1.00 MiB).
- **overhead**: llama.cpp's code and heap at load (32 MiB measured with a 263-token
  vocabulary) plus its vocabulary tables, 160 bytes a token (Gemma's 262k: 40 MiB),
  plus what evaluating a batch leaves allocated (thread work buffers: 6 MiB).

What the estimate does not count: the process itself before the load (the Python
interpreter and the server: measured by the caller, e.g. the benchmark's baseline),
and a GPU's own allocations when layers are offloaded (``gpu_bytes`` counts the
offloaded weights, their KV cache and the reserved compute graph, which a GPU does
allocate in full). The measurements and the benchmark: ``docs/memory-estimate.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

import msgspec

from vibrant_rpc.errors import GGUFFormatError
from vibrant_rpc.gguf.ggml import GGML_TYPES, MAX_MODEL_BYTES
from vibrant_rpc.gguf.header import ModelHeader

KvCacheType = Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl"]

MIB = 1024 * 1024
# llama.cpp pads the KV cache's cell count to this.
KV_PAD = 256
# Calibrated constants (module docstring).
RUNTIME_BYTES = 32 * MIB
VOCAB_BYTES_PER_TOKEN = 160
EVAL_BYTES = 6 * MIB


class EstimateOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The estimate's own input: llama.cpp's parameters that decide what it allocates, in
    its terms and resolved (no "auto"). Not a copy of the load settings: three of these no
    setting sets (the micro-batch, the KV cache's type, flash attention; the calibration
    and bench/bench_memory.py vary them), threads and mlock change no size, and "auto" is
    resolved by searching over these (``largest_context``, the GPU plan). ``fit.plan``
    builds it from a ``LoadRequest`` in one place."""

    # 0: the model's own training context.
    context: Annotated[int, msgspec.Meta(ge=0)] = 4096
    batch: Annotated[int, msgspec.Meta(ge=1)] = 512
    ubatch: Annotated[int, msgspec.Meta(ge=1)] = 512
    kv_cache_type: KvCacheType = "f16"
    flash_attention: bool = False
    # Changes where the weights live (page cache or anonymous memory), not how much.
    mmap: bool = True
    # Repeating layers on the GPU (llama.cpp's n_gpu_layers); above block_count the
    # output layer goes too; -1 offloads everything.
    gpu_layers: Annotated[int, msgspec.Meta(ge=-1)] = 0


class MemoryEstimate(msgspec.Struct, frozen=True, kw_only=True):
    label: str
    context: int
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    output_bytes: int
    overhead_bytes: int
    total_bytes: int
    # Where it lives: system RAM, and the GPUs' memory when layers are offloaded.
    cpu_bytes: int
    gpu_bytes: int
    gpu_layers: int
    # Of cpu_bytes, the weights mapped from the file (mmap): resident once loaded, but
    # page cache the kernel may drop under pressure (and read again, slowly) rather
    # than memory that runs out. 0 without mmap, where they are anonymous memory.
    mapped_bytes: int = 0

    @property
    def buffers_bytes(self) -> int:
        return self.compute_bytes + self.output_bytes + self.overhead_bytes

    def breakdown(self) -> str:
        """'Gemma 3 270M at 4096 tokens: 0.22 GiB weights + … = 0.43 GiB'.

        GiB, as the selection and ``vibrant model`` say RAM, so the figures compare."""
        return (
            f"{self.label} at {self.context} tokens: {_gb(self.weights_bytes)} weights"
            f" + {_gb(self.kv_cache_bytes)} KV cache + {_gb(self.buffers_bytes)} buffers"
            f" = {_gb(self.total_bytes)}"
        )


def _gb(n: int) -> str:
    gib = n / 2**30
    return f"{gib:.2f} GiB" if gib < 1 else f"{gib:.1f} GiB"


def context_of(header: ModelHeader, options: EstimateOptions) -> int:
    """The context llama.cpp will allocate: the model's own for 0."""
    return options.context or header.context_length or 4096


def kv_cells(header: ModelHeader, options: EstimateOptions) -> int:
    n = context_of(header, options)
    return (n + KV_PAD - 1) // KV_PAD * KV_PAD


def _type_bytes(kv_type: KvCacheType, elements: int) -> int:
    name = kv_type.upper()
    for type_name, block, size in GGML_TYPES.values():
        if type_name == name:
            return elements // block * size
    raise ValueError(f"unknown KV cache type {kv_type}")


def kv_bytes_per_layer(header: ModelHeader, options: EstimateOptions) -> int:
    """One layer's K and V for the whole context (every layer gets the full context)."""
    cells = kv_cells(header, options)
    k = _type_bytes(options.kv_cache_type, header.head_count_kv * header.key_length)
    v = _type_bytes(options.kv_cache_type, header.head_count_kv * header.value_length)
    return cells * (k + v)


def kv_cache_bytes(header: ModelHeader, options: EstimateOptions) -> int:
    return header.block_count * kv_bytes_per_layer(header, options)


def _ubatch(header: ModelHeader, options: EstimateOptions) -> int:
    return min(options.ubatch, options.batch, context_of(header, options))


def _phases(header: ModelHeader, options: EstimateOptions) -> tuple[int, int, int, int]:
    """(attention, feed-forward, output, scores) bytes of the worst-case graph, f32."""
    ub = _ubatch(header, options)
    n_kv = kv_cells(header, options)
    q_dim = header.head_count * header.key_length
    kv_dim = header.head_count_kv * (header.key_length + header.value_length)
    embd = header.embedding_length
    ff = header.feed_forward_length or 4 * embd
    # Gemma-style models keep two caches (sliding and global), each with its own mask.
    masks = 2 if header.sliding_window else 1
    mask_bytes = 2 if options.flash_attention else 4
    scores = 0 if options.flash_attention else n_kv * ub * header.head_count * 4
    attention = ub * 4 * (2 * q_dim + kv_dim + embd) + scores + masks * n_kv * ub * mask_bytes
    ffn = ub * 4 * (3 * ff + 2 * embd)
    output = ub * 4 * (header.vocab_size + embd)
    return attention, ffn, output, scores


def compute_reserved_bytes(header: ModelHeader, options: EstimateOptions) -> int:
    """llama.cpp's "compute buffer size": what a GPU allocates in full."""
    attention, ffn, output, _ = _phases(header, options)
    return max(attention, ffn, output)


def compute_resident_bytes(header: ModelHeader, options: EstimateOptions) -> int:
    """The compute memory a CPU really touches with the context filled."""
    attention, ffn, _, scores = _phases(header, options)
    # The f16 copy of the scores for the scores × V product (ggml's work buffer).
    return max(attention, ffn) + scores // 2 + EVAL_BYTES


def _offloaded(header: ModelHeader, gpu_layers: int) -> tuple[int, bool]:
    """(repeating layers on the GPU, output layer too): llama.cpp takes the last ones."""
    blocks = header.block_count
    if gpu_layers < 0:
        return blocks, True
    return min(gpu_layers, blocks), gpu_layers > blocks


def estimate(header: ModelHeader, options: EstimateOptions) -> MemoryEstimate:
    """Memory of ``header``'s model loaded with ``options``, its context filled."""
    weights = header.weight_bytes
    kv = kv_cache_bytes(header, options)
    output = header.vocab_size * 4
    overhead = RUNTIME_BYTES + VOCAB_BYTES_PER_TOKEN * header.vocab_size
    blocks_on, output_on = _offloaded(header, options.gpu_layers)
    cpu_compute = compute_resident_bytes(header, options)
    gpu = dup = 0
    cpu_weights, cpu_kv = weights, kv
    if blocks_on or output_on:
        # The GPU holds its layers, their KV and the whole reserved graph; the CPU keeps
        # the rest and the token embedding (llama.cpp never offloads the input layer).
        layers_gpu = sum(header.layer_bytes[header.block_count - blocks_on :])
        kv_gpu = blocks_on * kv_bytes_per_layer(header, options)
        out_gpu = header.output_bytes if output_on else 0
        gpu = layers_gpu + kv_gpu + out_gpu + compute_reserved_bytes(header, options)
        # Tied embeddings: the GPU gets a copy of token_embd, the CPU keeps its own.
        dup = out_gpu if header.tied_embeddings else 0
        cpu_weights = weights - layers_gpu - (out_gpu - dup)
        cpu_kv = kv - kv_gpu
        if blocks_on == header.block_count:
            cpu_compute = EVAL_BYTES
    cpu = cpu_weights + cpu_kv + cpu_compute + output + overhead
    return MemoryEstimate(
        label=label_of(header),
        context=context_of(header, options),
        weights_bytes=weights + dup,
        kv_cache_bytes=kv,
        compute_bytes=cpu + gpu - weights - dup - kv - output - overhead,
        output_bytes=output,
        overhead_bytes=overhead,
        total_bytes=cpu + gpu,
        cpu_bytes=cpu,
        gpu_bytes=gpu,
        gpu_layers=blocks_on + (1 if output_on else 0),
        mapped_bytes=cpu_weights if options.mmap else 0,
    )


def check_sizes(header: ModelHeader) -> ModelHeader:
    """``header``, if a model of its numbers fits in ``MAX_MODEL_BYTES`` at its own context
    with every layer's cache in f32 (the most any load allocates for it); else a
    ``GGUFFormatError``. The parser bounds each tensor and their sum; this bounds what the
    architecture's numbers multiply to (a head count of 2^60 parses, and was estimated as a
    31-digit GiB figure). A few multiplications: no cost to a real header."""
    worst = estimate(header, EstimateOptions(context=0, kv_cache_type="f32", gpu_layers=-1))
    if worst.total_bytes > MAX_MODEL_BYTES:
        raise GGUFFormatError(
            f"the GGUF header's numbers make a model of {worst.total_bytes:.3g} bytes at its "
            f"own context ({worst.context} tokens), more than any model "
            f"({MAX_MODEL_BYTES:.3g}): it is damaged"
        )
    return header


def label_of(header: ModelHeader) -> str:
    return header.name or header.architecture


def largest_context(
    header: ModelHeader, options: EstimateOptions, budget_bytes: int, *, minimum: int = 512
) -> int | None:
    """The largest context, a multiple of 256 up to the model's own, whose estimate fits
    ``budget_bytes`` (for ``context_size = "auto"``); None if not even ``minimum`` fits."""

    def fits(n: int) -> bool:
        return (
            estimate(header, msgspec.structs.replace(options, context=n)).total_bytes
            <= budget_bytes
        )

    return largest_fitting(fits, header.context_length or 4096, minimum)


def largest_fitting(fits: Callable[[int], bool], top: int, minimum: int) -> int | None:
    """The largest context ``fits`` accepts: ``top``, else ``minimum`` or a multiple of 256
    between them; None if not even ``minimum`` fits. Memory grows with the context, so
    a bisection finds it."""
    if not fits(minimum):
        return None
    lo, hi = minimum // KV_PAD, top // KV_PAD  # in cells of 256
    if fits(top):
        return top
    while lo < hi - 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid * KV_PAD) else (lo, mid)
    return max(lo * KV_PAD, minimum)
