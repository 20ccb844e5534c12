"""The GGUF header reader on real files: against gguf's own reader, and from prefixes."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import gguf
import pytest

from tests.support.gguf_fixtures import gemma_path, gemma_split_paths, tiny_fim_path
from tests.support.qwen2_fixtures import QWEN2_7B_HEADS, QWEN_7B_LAYOUT, tiny_qwen2_path
from vibrant_rpc.errors import GGUFFormatError
from vibrant_rpc.gguf.ggml import GGML_TYPES
from vibrant_rpc.gguf.header import (
    NeedMoreBytes,
    decode_header,
    encode_header,
    header_from_ranges,
    parse_header,
    read_header,
)


def _files() -> list[Path]:
    return [
        gemma_path(),
        tiny_fim_path(),
        tiny_qwen2_path(QWEN_7B_LAYOUT),
        tiny_qwen2_path(QWEN2_7B_HEADS),
    ]


def test_type_table_matches_gguf() -> None:
    for type_id, (name, block, size) in GGML_TYPES.items():
        qtype = gguf.GGMLQuantizationType(type_id)
        assert qtype.name == name
        assert gguf.GGML_QUANT_SIZES[qtype] == (block, size)


def test_gemma_header_facts() -> None:
    h = read_header(gemma_path())
    assert (h.architecture, h.block_count, h.head_count, h.head_count_kv) == ("gemma3", 18, 4, 1)
    assert (h.key_length, h.value_length, h.embedding_length) == (256, 256, 640)
    assert (h.vocab_size, h.context_length, h.sliding_window) == (262144, 32768, 512)
    assert h.tied_embeddings
    # llama.cpp logs "CPU_Mapped model buffer size = 235.16 MiB" for this file.
    assert round(h.weight_bytes / 2**20, 2) == 235.16
    assert h.output_bytes > h.token_embd_bytes > 0
    assert len(h.layer_bytes) == 18 and all(b > 0 for b in h.layer_bytes)
    assert h.scalars["general.architecture"] == "gemma3"


@pytest.mark.parametrize("index", range(4))
def test_sizes_match_gguf_reader(index: int) -> None:
    path = _files()[index]
    ours = read_header(path)
    theirs = gguf.GGUFReader(path, "r")
    assert ours.tensor_count == len(theirs.tensors)
    assert ours.weight_bytes == sum(int(t.n_bytes) for t in theirs.tensors)
    assert ours.header_bytes == theirs.data_offset
    per_layer = [0] * ours.block_count
    for t in theirs.tensors:
        if t.name.startswith("blk."):
            per_layer[int(t.name.split(".")[1])] += int(t.n_bytes)
    assert ours.layer_bytes == per_layer
    embd = next(t for t in theirs.tensors if t.name == "token_embd.weight")
    assert ours.token_embd_bytes == int(embd.n_bytes)
    by_type: dict[str, int] = {}
    for t in theirs.tensors:
        by_type[t.tensor_type.name] = by_type.get(t.tensor_type.name, 0) + int(t.n_bytes)
    assert ours.bytes_by_type == by_type


def test_tiny_layout_header() -> None:
    h = read_header(tiny_qwen2_path(QWEN_7B_LAYOUT))
    assert (h.block_count, h.head_count, h.head_count_kv, h.key_length) == (28, 28, 4, 128)
    assert h.embedding_length == 256 and not h.tied_embeddings


def test_prefix_parse_says_how_much_more() -> None:
    path = gemma_path()
    full = read_header(path)
    with open(path, "rb") as f:
        data = f.read(full.header_bytes)
    have = 1000
    rounds = 0
    while True:
        try:
            header = parse_header(data[:have])
            break
        except NeedMoreBytes as more:
            assert more.needed > have
            assert more.have == have
            assert f"needs at least {more.needed} bytes" in str(more)
            # Never asks for more than the header really is.
            assert more.needed <= full.header_bytes
            have = max(more.needed, 2 * have)
            have = min(have, full.header_bytes)
            rounds += 1
    # The 6 MB vocabulary was crossed in steps: its 262k strings' lengths are asked for
    # at once (a count is checked against the bytes it needs before its loop).
    assert rounds >= 3
    assert header == full


def test_prefix_one_byte_short_is_refused() -> None:
    path = tiny_qwen2_path(QWEN_7B_LAYOUT)
    full = read_header(path)
    data = path.read_bytes()[: full.header_bytes]
    # The tensor infos end at most 31 bytes (alignment padding) before the data.
    end = full.header_bytes
    while end > 0:
        try:
            parse_header(data[: end - 1])
        except NeedMoreBytes as more:
            assert more.needed == end
            break
        end -= 1
    assert full.header_bytes - 32 < end <= full.header_bytes
    assert parse_header(data[:end]) == full


def test_read_header_with_a_small_first_read() -> None:
    assert read_header(gemma_path(), first_read=4096) == read_header(gemma_path())


def test_not_gguf_and_truncated(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(GGUFFormatError, match="magic"):
        read_header(bad)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(gemma_path().read_bytes()[:100_000])
    with pytest.raises(GGUFFormatError, match=r"ends inside .* the file has 100000"):
        read_header(cut, first_read=4096)
    # A valid start (version 3, one tensor, one key), then a key length of 2**60 bytes:
    # refused, nothing allocated (before, the read asked for it all: MemoryError).
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 1, 1, 2**60) + bytes(5000))
    with pytest.raises(GGUFFormatError, match=r"ends inside .* the file has 5032\)"):
        read_header(damaged)


def test_json_round_trip() -> None:
    h = read_header(gemma_path())
    raw = encode_header(h)
    assert decode_header(raw) == h
    assert len(raw) < 100_000  # the cached header is small: the vocabulary isn't kept


def _ranges(path: Path, log: list[tuple[int, int]]) -> Callable[[int, int], bytes]:
    def read_range(start: int, end: int) -> bytes:
        log.append((start, end))
        with open(path, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    return read_range


def test_header_from_ranges_moves_at_most_twice_the_header() -> None:
    path = gemma_path()
    log: list[tuple[int, int]] = []
    header = header_from_ranges(_ranges(path, log))
    assert header == read_header(path)
    moved = sum(end - start for start, end in log)
    assert moved <= 2 * header.header_bytes
    assert moved <= 16 * 2**20
    # Each range starts where the last ended: no byte is fetched twice.
    assert [s for s, _ in log] == [0, *[e for _, e in log[:-1]]]


def test_header_from_ranges_stops_at_the_limit() -> None:
    log: list[tuple[int, int]] = []
    with pytest.raises(GGUFFormatError, match="longer than"):
        header_from_ranges(_ranges(gemma_path(), log), first=1 << 20, limit=4 << 20)
    assert log[-1][1] == 4 << 20


def test_split_model_header_covers_every_shard() -> None:
    whole = read_header(gemma_path())
    first, second = gemma_split_paths(2)
    split = read_header(first)
    for field in (
        "weight_bytes",
        "layer_bytes",
        "token_embd_bytes",
        "output_bytes",
        "bytes_by_type",
        "tensor_count",
        "block_count",
        "vocab_size",
    ):
        assert getattr(split, field) == getattr(whole, field), field
    # The first shard alone is refused, not silently half a model.
    with pytest.raises(GGUFFormatError, match="first of 2 shards"):
        parse_header(first.read_bytes()[: split.header_bytes])
    # Over ranges: one reader per shard.
    log: list[tuple[int, int]] = []
    assert header_from_ranges(_ranges(first, log), _ranges(second, log)) == split


def test_split_model_with_a_shard_missing(tmp_path: Path) -> None:
    first, _ = gemma_split_paths(2)
    lone = tmp_path / first.name
    lone.symlink_to(first)
    with pytest.raises(GGUFFormatError, match="missing"):
        read_header(lone)
