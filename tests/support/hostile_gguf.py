"""GGUF headers written byte by byte, hostile ones among them: counts, lengths and
dimensions that claim more than the bytes hold, sizes no model has, numbers that divide by
zero. Each is a real file's start; the parser must refuse it at once, in little memory."""

from __future__ import annotations

import struct
from pathlib import Path

U32, U64, STRING, ARRAY = 4, 10, 8, 9
F32 = 0  # ggml type id


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv_str(key: str, value: str) -> bytes:
    return _string(key) + struct.pack("<I", STRING) + _string(value)


def kv_u32(key: str, value: int) -> bytes:
    return _string(key) + struct.pack("<II", U32, value)


def kv_u64(key: str, value: int) -> bytes:
    return _string(key) + struct.pack("<IQ", U64, value)


def tensor(name: str, shape: list[int], type_id: int = F32, offset: int = 0) -> bytes:
    dims = struct.pack(f"<{len(shape)}Q", *shape)
    return (
        _string(name) + struct.pack("<I", len(shape)) + dims + struct.pack("<IQ", type_id, offset)
    )


def header(
    items: list[bytes],
    tensors: list[bytes],
    *,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    pad_to: int = 0,
) -> bytes:
    counts = (
        len(tensors) if n_tensors is None else n_tensors,
        len(items) if n_kv is None else n_kv,
    )
    data = b"GGUF" + struct.pack("<IQQ", 3, *counts) + b"".join(items) + b"".join(tensors)
    return data + bytes(max(0, pad_to - len(data)))


def model_items(**numbers: int) -> list[bytes]:
    """A llama-shaped model's metadata; ``numbers`` override (or add) ``llama.<key>``s."""
    values = {"block_count": 2, "attention.head_count": 4, "embedding_length": 64}
    values.update(numbers)
    return [kv_str("general.architecture", "llama")] + [
        kv_u64(f"llama.{key}", value) for key, value in values.items()
    ]


def model_tensors(blocks: int = 2) -> list[bytes]:
    out = [tensor("token_embd.weight", [64, 100])]
    for i in range(blocks):
        out.append(tensor(f"blk.{i}.attn_q.weight", [64, 64]))
    return out


def sane() -> bytes:
    """A small header the parser reads: the base the hostile ones change one thing of."""
    return header(model_items(), model_tensors())


def hostile_headers() -> dict[str, bytes]:
    """The issue's cases and their kin, by what is wrong with each."""
    many_dims = tensor("blk.0.attn_q.weight", [1] * 200_000)
    return {
        # 1.6 MB of header; the sizes were multiplied as big integers for over 60 s
        "a tensor with 200,000 dimensions": header(model_items(block_count=1), [many_dims]),
        # a list of 2^28 layer sizes: 2.66 GB of memory, a 537 MB models/.headers record
        "block_count 2^28 in a 4 KB header": header(
            model_items(block_count=2**28), model_tensors(), pad_to=4096
        ),
        # answered with a 31-digit GiB figure
        "2^128-element tensors": header(
            model_items(block_count=1),
            [tensor("token_embd.weight", [2**32] * 4), tensor("blk.0.a.weight", [2**32] * 4)],
        ),
        "tensors adding up to more than 2^50 bytes": header(
            model_items(block_count=1),
            [tensor(f"blk.0.t{i}.weight", [2**24, 2**24]) for i in range(300)],
        ),
        "2^60 metadata items": header(model_items(), model_tensors(), n_kv=2**60),
        "2^40 tensor infos": header(model_items(), model_tensors(), n_tensors=2**40),
        "a key of 2^60 bytes": header(
            [struct.pack("<Q", 2**60) + b"k" * 100, *model_items()], model_tensors()
        ),
        "an array of 2^62 strings": header(
            [_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARRAY, STRING, 2**62)],
            model_tensors(),
        ),
        "an array of 2^61 u64s": header(
            [_string("x") + struct.pack("<IIQ", ARRAY, U64, 2**61)], model_tensors()
        ),
        "head_count 0": header(model_items(**{"attention.head_count": 0}), model_tensors()),
        "a token_embd with 0 dimensions": header(
            model_items(block_count=1),
            [tensor("token_embd.weight", []), tensor("blk.0.attn_q.weight", [64, 64])],
        ),
        "alignment 0": header([kv_u32("general.alignment", 0), *model_items()], model_tensors()),
        "alignment 48": header([kv_u32("general.alignment", 48), *model_items()], model_tensors()),
    }


def write(path: Path, data: bytes, weights: int = 4096) -> Path:
    """A file: the header, then ``weights`` bytes standing for the tensor data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data + bytes(weights))
    return path
