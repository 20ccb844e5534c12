"""A ModelHeader from an architecture's published numbers, for a model not downloaded yet.

The estimate wants tensor sizes; before a download there is only the architecture
(layers, heads, head dimension, embedding, feed-forward, vocabulary) and the file size.
Weights are split in proportion to parameter counts: each layer's q, k, v, o and
three feed-forward matrices, the token embedding and (unless tied) the output matrix.
Quantisations give some tensors more bits than others (Q4_K_M keeps the output at
Q6_K), so per-layer bytes are approximate; their total is the file less its header.
The facts (``ArchFacts``) are each registry entry's ``architecture``: the embedded models
carry theirs, and a user's entry may.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from .header import ModelHeader

__all__ = ["ArchFacts", "header_from_arch"]

Positive = Annotated[int, msgspec.Meta(ge=1)]


class ArchFacts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An architecture's published numbers (config.json or the GGUF header): enough for
    the memory estimate before the file is here (``architectures.header_from_arch``)."""

    architecture: str  # llama.cpp's name, general.architecture: "qwen2", "gemma3"
    layers: Positive
    heads: Positive
    kv_heads: Positive
    hidden: Positive
    head_dim: Positive
    vocab: Positive
    feed_forward: Positive
    context_length: Positive
    tied_embeddings: bool = False
    sliding_window: Positive | None = None


# A GGUF header is mostly its vocabulary: token strings, scores, types and merges
# (Gemma's 262k tokens: 6.5 MB, 25 bytes a token; BPE merges add about as much).
HEADER_BYTES_PER_TOKEN = 40


def header_from_arch(facts: ArchFacts, file_size: int, name: str | None = None) -> ModelHeader:
    """A ModelHeader whose sizes add up to ``file_size`` (the sum of a split model's files)."""
    q_dim = facts.heads * facts.head_dim
    kv_dim = facts.kv_heads * facts.head_dim
    layer_params = (
        facts.hidden * (q_dim + 2 * kv_dim)
        + q_dim * facts.hidden
        + 3 * facts.hidden * facts.feed_forward
        + 2 * facts.hidden  # the two norms
    )
    embd_params = facts.vocab * facts.hidden
    output_params = (0 if facts.tied_embeddings else embd_params) + facts.hidden
    total_params = facts.layers * layer_params + embd_params + output_params
    header_bytes = HEADER_BYTES_PER_TOKEN * facts.vocab
    weight_bytes = max(file_size - header_bytes, 0)
    per_param = weight_bytes / total_params
    layer = int(layer_params * per_param)
    token_embd = int(embd_params * per_param)
    output = int(output_params * per_param) + (token_embd if facts.tied_embeddings else 0)
    return ModelHeader(
        architecture=facts.architecture,
        name=name,
        block_count=facts.layers,
        head_count=facts.heads,
        head_count_kv=facts.kv_heads,
        embedding_length=facts.hidden,
        key_length=facts.head_dim,
        value_length=facts.head_dim,
        context_length=facts.context_length,
        vocab_size=facts.vocab,
        feed_forward_length=facts.feed_forward,
        sliding_window=facts.sliding_window,
        weight_bytes=weight_bytes,
        header_bytes=header_bytes,
        layer_bytes=[layer] * facts.layers,
        token_embd_bytes=token_embd,
        output_bytes=output,
        tied_embeddings=facts.tied_embeddings,
    )
