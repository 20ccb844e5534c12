"""Tiny GGUF files with Qwen 2.5 Coder's attention layout, for measuring memory.

The memory a model needs beyond its weights (KV cache, compute buffers) follows its
layer count and head layout, not the size of its embedding. llama.cpp's ``qwen2``
graph ties the head dimension to the embedding (it checks attn_q as n_embd × n_embd),
so the 7B's exact layout (28 layers, 28/4 heads, head dimension 128) with a small
embedding is written as a ``llama`` model with attention.key_length/value_length set:
the same graph as Qwen 2 without the q/k/v biases, and the same KV cache and attention
buffers as the 7B. A real ``qwen2`` model keeps the 7B's layers and heads with a head
dimension of 32. The vocabulary is byte-level; weights are small noise.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import gguf
import msgspec
import numpy as np

from tests.support.gguf_fixtures import (
    FIXTURES_DIR,
    QWEN_SPECIAL_TOKENS,
    _bytes_to_unicode,
    _tmp_name,
)


class TinyQwen2(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    arch: str = "llama"
    layers: int
    heads: int
    kv_heads: int
    head_dim: int = 128
    embedding: int = 256
    feed_forward: int = 512
    context_length: int = 32768

    @property
    def filename(self) -> str:
        # Bump the suffix when tiny_qwen2_gguf changes: the cached file is reused by name.
        return f"tiny-{self.name}-v3.gguf"


# Qwen 2.5 Coder 7B's layers and heads (../shared/MODELS.md), and 3B's for a second layout.
QWEN_7B_LAYOUT = TinyQwen2(name="7b-layout", layers=28, heads=28, kv_heads=4)
QWEN2_7B_HEADS = TinyQwen2(
    name="qwen2-7b-heads",
    arch="qwen2",
    layers=28,
    heads=28,
    kv_heads=4,
    head_dim=32,
    embedding=28 * 32,
    feed_forward=128,
)


def tiny_qwen2_gguf(spec: TinyQwen2, path: Path) -> Path:
    """Write ``spec`` as an f16 GGUF file to ``path``."""
    byte_tokens = _bytes_to_unicode()
    tokens = [byte_tokens[b] for b in range(256)]
    space = byte_tokens[ord(" ")]
    # llama.cpp refuses a BPE vocabulary without merges: one merge, two spaces.
    tokens.append(space + space)
    eot = len(tokens)
    tokens.extend(QWEN_SPECIAL_TOKENS)
    token_types = [gguf.TokenType.NORMAL] * eot + [gguf.TokenType.CONTROL] * len(
        QWEN_SPECIAL_TOKENS
    )
    n_vocab = len(tokens)
    q_dim = spec.heads * spec.head_dim
    kv_dim = spec.kv_heads * spec.head_dim

    w = gguf.GGUFWriter(path, spec.arch)
    w.add_name(f"tiny-qwen2-{spec.name}")
    w.add_context_length(spec.context_length)
    w.add_embedding_length(spec.embedding)
    w.add_block_count(spec.layers)
    w.add_feed_forward_length(spec.feed_forward)
    w.add_head_count(spec.heads)
    w.add_head_count_kv(spec.kv_heads)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    w.add_rope_dimension_count(spec.head_dim)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges([f"{space} {space}"])
    w.add_bos_token_id(eot)
    w.add_eos_token_id(eot)
    w.add_add_bos_token(False)

    def f16(*shape: int) -> np.ndarray:
        # Small noise, not zeros: zero pages could stay unbacked and hide real memory.
        rng = np.random.default_rng(len(shape) * 7919 + sum(shape))
        return (rng.standard_normal(shape) * 0.02).astype(np.float16)

    def f32(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    w.add_tensor("token_embd.weight", f16(n_vocab, spec.embedding))
    w.add_tensor("output_norm.weight", f32(spec.embedding))
    w.add_tensor("output.weight", f16(n_vocab, spec.embedding))
    for i in range(spec.layers):
        p = f"blk.{i}"
        w.add_tensor(f"{p}.attn_norm.weight", f32(spec.embedding))
        w.add_tensor(f"{p}.attn_q.weight", f16(q_dim, spec.embedding))
        w.add_tensor(f"{p}.attn_k.weight", f16(kv_dim, spec.embedding))
        w.add_tensor(f"{p}.attn_v.weight", f16(kv_dim, spec.embedding))
        if spec.arch == "qwen2":  # Qwen 2 has q/k/v biases; llama's graph has none
            w.add_tensor(f"{p}.attn_q.bias", np.zeros(q_dim, dtype=np.float32))
            w.add_tensor(f"{p}.attn_k.bias", np.zeros(kv_dim, dtype=np.float32))
            w.add_tensor(f"{p}.attn_v.bias", np.zeros(kv_dim, dtype=np.float32))
        w.add_tensor(f"{p}.attn_output.weight", f16(spec.embedding, q_dim))
        w.add_tensor(f"{p}.ffn_norm.weight", f32(spec.embedding))
        w.add_tensor(f"{p}.ffn_gate.weight", f16(spec.feed_forward, spec.embedding))
        w.add_tensor(f"{p}.ffn_up.weight", f16(spec.feed_forward, spec.embedding))
        w.add_tensor(f"{p}.ffn_down.weight", f16(spec.embedding, spec.feed_forward))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_qwen2_path(spec: TinyQwen2 = QWEN_7B_LAYOUT) -> Path:
    """``spec`` written once into the fixtures cache."""
    final = FIXTURES_DIR / spec.filename
    if final.is_file():
        return final
    FIXTURES_DIR.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    try:
        tiny_qwen2_gguf(spec, tmp)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return final
