"""A GGUF file's header (metadata and tensor infos), read without touching the weights.

The header is all the memory estimate needs: the architecture's numbers and the size
of every tensor. It sits at the start of the file, before the tensor data, and can be
parsed from a prefix of the file, which is what lets a Range request to the Hub read
a model's needs before its weights move. A prefix that ends too early raises
``NeedMoreBytes`` with the least total length that could get further; the caller
fetches at least that much and tries again.

The bytes are untrusted (a file from anywhere, a Hub or mirror answering anything): every
count, length and dimension is checked against the bytes it needs before anything is
allocated or looped over (a count that needs more bytes than the file has, or than a
header may have, is a ``NeedMoreBytes`` its caller turns into a ``GGUFFormatError``), a
tensor has at most 4 dimensions (ggml's limit), and sizes over ``MAX_MODEL_BYTES`` are
refused. Before, one tensor with 200,000 dimensions ran past 60 s, and a ``block_count``
of 2^28 in a 4 KB header took 2.7 GB of memory.

Own reader, not ``gguf.GGUFReader``: that one memory-maps the whole file and builds a
numpy view of every metadata item (Gemma's 262k-token vocabulary alone is three arrays
of 262k items), needs the complete file, and is a development dependency only. This
reader walks the arrays without keeping them and stops at the end of the tensor infos.

Format (GGUF v2 and v3, little-endian): magic ``GGUF``, u32 version, u64 tensor count,
u64 metadata count; each metadata item a string key, a u32 value type, the value; each
tensor info a string name, u32 dimension count, u64 per dimension, u32 ggml type,
u64 offset into the data section, which starts at the next multiple of
``general.alignment`` (32 by default).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

import msgspec

from vibrant_rpc.errors import GGUFFormatError

from .ggml import GGML_TYPES, MAX_DIMS, MAX_MODEL_BYTES, tensor_nbytes

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# The first read of a file: most headers fit (Gemma's is 6.5 MB).
FIRST_READ_BYTES = 8 * 1024 * 1024
# Over the network: start small, grow by doubling; never move more than the limit.
FIRST_RANGE_BYTES = 2 * 1024 * 1024
RANGE_LIMIT_BYTES = 16 * 1024 * 1024
# The most a file's header is read to (Gemma's 262k-token vocabulary takes 6.5 MB).
FILE_LIMIT_BYTES = 64 * 1024 * 1024
# The fewest bytes each item takes in the header, to check a count before its loop.
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, a one-byte value
_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8  # name length, dimension count, type, offset

# Metadata value types: id -> struct format of a scalar (8 string, 9 array).
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
# Strings longer than this (chat templates) are not kept among the scalars.
_MAX_KEPT_STRING = 256
_LAYER = re.compile(r"^blk\.(\d+)\.")

Scalar = str | int | float | bool


# Not in errors.py: a signal between the parser and its callers here (fetch more, parse
# again), never a user's error; when no more bytes can come it becomes a GGUFFormatError.
class NeedMoreBytes(Exception):
    """The prefix ended inside the header; ``needed`` is the least total length to try next,
    ``what`` what needs it when that was a count or a length (``"2^40 tensor infos"``)."""

    def __init__(self, needed: int, have: int, what: str = "") -> None:
        super().__init__(f"GGUF header needs at least {needed} bytes, have {have}")
        self.needed = needed
        self.have = have
        self.what = what

    def cause(self) -> str:
        """``at least N bytes[ for what]``: for the message of the error it becomes."""
        return f"at least {self.needed} bytes" + (f" for {self.what}" if self.what else "")


class TensorInfo(msgspec.Struct, frozen=True):
    name: str
    type_name: str
    shape: list[int]
    nbytes: int


class ModelHeader(msgspec.Struct, frozen=True, kw_only=True):
    """What a GGUF header says about a model's size; JSON-serialisable for the header store
    (``fit.headers``)."""

    architecture: str
    name: str | None = None
    file_type: int | None = None
    block_count: int
    head_count: int
    head_count_kv: int
    embedding_length: int
    # Per head; the architecture's default (embedding_length / head_count) when absent.
    key_length: int
    value_length: int
    context_length: int
    vocab_size: int
    feed_forward_length: int | None = None
    sliding_window: int | None = None
    # Total bytes of every tensor's data (the weights), and where the data starts.
    weight_bytes: int
    header_bytes: int
    # Bytes of blk.0 … blk.(block_count-1), in order.
    layer_bytes: list[int]
    token_embd_bytes: int
    # output.weight plus output_norm; a model with tied embeddings has no output.weight.
    output_bytes: int
    tied_embeddings: bool
    bytes_by_type: dict[str, int] = {}
    tensor_count: int = 0
    # The metadata's short scalar values (general.name, rope settings, token ids …).
    scalars: dict[str, Scalar] = {}


class _Cursor:
    """Reads little-endian values from a prefix; raises NeedMoreBytes at its end."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def _need(self, n: int, what: str = "") -> None:
        if self.pos + n > len(self.data):
            raise NeedMoreBytes(self.pos + n, len(self.data), what)

    def unpack(self, fmt: str) -> object:
        size = struct.calcsize(fmt)
        self._need(size)
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def u32(self) -> int:
        value = self.unpack("<I")
        assert isinstance(value, int)
        return value

    def u64(self) -> int:
        value = self.unpack("<Q")
        assert isinstance(value, int)
        return value

    def string(self) -> str:
        n = self.u64()
        self._need(n, f"a string of {n} bytes at byte {self.pos - 8}")
        raw = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.u64()
        self._need(n, f"a string of {n} bytes at byte {self.pos - 8}")
        self.pos += n


def _value(cur: _Cursor, vtype: int) -> Scalar | list[Scalar] | int:
    """A metadata value; arrays of strings are walked and only their length returned."""
    if vtype in _SCALARS:
        value = cur.unpack(_SCALARS[vtype])
        assert isinstance(value, int | float | bool)
        return value
    if vtype == _STRING:
        return cur.string()
    if vtype != _ARRAY:
        raise GGUFFormatError(f"unknown GGUF metadata type {vtype} at byte {cur.pos}")
    item_type = cur.u32()
    count = cur.u64()
    what = f"an array of {count} items at byte {cur.pos - 12}"
    if item_type in _SCALARS:
        size = struct.calcsize(_SCALARS[item_type])
        cur._need(size * count, what)
        # Short numeric arrays (per-layer head counts) are kept; long ones skipped.
        if count <= 1024:
            items = list(struct.unpack_from(f"<{count}{_SCALARS[item_type][1]}", cur.data, cur.pos))
            cur.pos += size * count
            return items
        cur.pos += size * count
        return count
    if item_type == _STRING:
        cur._need(8 * count, what)  # a length each, before a loop over them
        for _ in range(count):
            cur.skip_string()
        return count
    raise GGUFFormatError(f"unsupported GGUF array of type {item_type} at byte {cur.pos}")


def _count(meta: dict[str, object], key: str, *, least: int = 0) -> int | None:
    """A size or count from the metadata (None: absent); one below ``least`` (a negative
    head count, a head count of 0 that would divide by zero) is a damaged header."""
    value = _int(meta, key)
    if value is not None and value < least:
        raise GGUFFormatError(f"the GGUF header's {key} is {value}: it is damaged")
    return value


def _int(meta: dict[str, object], key: str) -> int | None:
    value = meta.get(key)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    # Per-layer values (e.g. head_count_kv for hybrid models): the largest rules memory.
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return max(int(v) for v in value if isinstance(v, int))
    return None


_Parsed = tuple[dict[str, object], list[TensorInfo], int]


def parse_header(data: bytes | memoryview) -> ModelHeader:
    """Parse a GGUF header from a prefix of the file; NeedMoreBytes if it is too short.

    A split model's first shard has the metadata but only its own tensors: use
    ``read_header`` (which finds the other shards) or ``header_from_ranges`` with one
    reader per shard."""
    meta, tensors, data_start = _parse(data)
    _refuse_split(meta, 1)
    return _header(meta, tensors, data_start)


def _split_count(meta: dict[str, object]) -> int:
    return _int(meta, "split.count") or 1


def _refuse_split(meta: dict[str, object], shards: int) -> None:
    count = _split_count(meta)
    if count != shards:
        raise GGUFFormatError(
            f"this GGUF file is the first of {count} shards; "
            f"its header covers only its own tensors ({shards} given)"
        )


def _parse(data: bytes | memoryview) -> _Parsed:
    cur = _Cursor(data)
    cur._need(4)
    if bytes(cur.data[:4]) != GGUF_MAGIC:
        raise GGUFFormatError("not a GGUF file (no GGUF magic at the start)")
    cur.pos = 4
    version = cur.u32()
    if version not in (2, 3):
        raise GGUFFormatError(f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors = cur.u64()
    n_kv = cur.u64()
    # Both counts before either loop: neither can claim more items than the bytes hold.
    cur._need(n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_BYTES,
              f"{n_kv} metadata items and {n_tensors} tensor infos")  # fmt: skip
    meta: dict[str, object] = {}
    for _ in range(n_kv):
        key = cur.string()
        meta[key] = _value(cur, cur.u32())
    tensors: list[TensorInfo] = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.u32()
        if n_dims > MAX_DIMS:
            raise GGUFFormatError(
                f"tensor {name[:100]!r} has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}"
            )
        shape = [cur.u64() for _ in range(n_dims)]
        type_id = cur.u32()
        cur.u64()  # offset: sizes follow from shape and type
        tensors.append(
            TensorInfo(
                name,
                GGML_TYPES.get(type_id, (str(type_id),))[0],
                shape,
                tensor_nbytes(type_id, shape),
            )
        )
    alignment = _count(meta, "general.alignment", least=1) or DEFAULT_ALIGNMENT
    if alignment & (alignment - 1):
        raise GGUFFormatError(f"the GGUF header's alignment {alignment} is not a power of 2")
    data_start = (cur.pos + alignment - 1) // alignment * alignment
    return meta, tensors, data_start


def _combine(parts: list[_Parsed]) -> ModelHeader:
    """One header over a model's shards: the first's metadata, every shard's tensors."""
    meta, _, data_start = parts[0]
    _refuse_split(meta, len(parts))
    return _header(meta, [t for _, tensors, _ in parts for t in tensors], data_start)


def _header(meta: dict[str, object], tensors: list[TensorInfo], data_start: int) -> ModelHeader:
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFFormatError("GGUF header has no general.architecture")

    def need(key: str) -> int:
        value = _count(meta, f"{arch}.{key}", least=1)
        if value is None:
            raise GGUFFormatError(f"GGUF header has no {arch}.{key}")
        return value

    def size(key: str) -> int | None:
        return _count(meta, f"{arch}.{key}")

    blocks = need("block_count")
    # Every layer has tensors of its own: more layers than tensors is a damaged count (a
    # list of 2^28 layer sizes took 2.7 GB, and was kept on disk as 537 MB of JSON).
    if blocks > len(tensors):
        raise GGUFFormatError(
            f"the GGUF header says {blocks} layers but has {len(tensors)} tensors: it is damaged"
        )
    heads = need("attention.head_count")
    embd = need("embedding_length")
    kv_heads = size("attention.head_count_kv") or heads
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = tokens if isinstance(tokens, int) else len(tokens) if isinstance(tokens, list) else 0
    vocab = _int(meta, f"{arch}.vocab_size") or vocab
    layer_bytes = [0] * blocks
    by_type: dict[str, int] = {}
    named: dict[str, int] = {}
    for t in tensors:
        by_type[t.type_name] = by_type.get(t.type_name, 0) + t.nbytes
        m = _LAYER.match(t.name)
        if m and int(m.group(1)) < blocks:
            layer_bytes[int(m.group(1))] += t.nbytes
        else:
            named[t.name] = named.get(t.name, 0) + t.nbytes
    token_embd = named.get("token_embd.weight", 0)
    if not vocab and token_embd:
        shape = next(t.shape for t in tensors if t.name == "token_embd.weight")
        if not shape:
            raise GGUFFormatError("the GGUF header's token_embd.weight has no dimensions")
        vocab = shape[-1]
    weights = sum(t.nbytes for t in tensors)
    if weights > MAX_MODEL_BYTES:
        raise GGUFFormatError(
            f"the GGUF header's tensors add up to {weights:.3g} bytes, more than any model "
            f"({MAX_MODEL_BYTES:.3g}): it is damaged"
        )
    tied = "output.weight" not in named
    output = named.get("output_norm.weight", 0) + (token_embd if tied else named["output.weight"])
    name = meta.get("general.name")
    file_type = _int(meta, "general.file_type")
    scalars: dict[str, Scalar] = {
        k: v
        for k, v in meta.items()
        if len(k) <= _MAX_KEPT_STRING
        and (
            isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= _MAX_KEPT_STRING)
        )
    }
    return ModelHeader(
        architecture=arch,
        name=name if isinstance(name, str) else None,
        file_type=file_type,
        block_count=blocks,
        head_count=heads,
        head_count_kv=kv_heads,
        embedding_length=embd,
        key_length=size("attention.key_length") or embd // heads,
        value_length=size("attention.value_length") or embd // heads,
        context_length=size("context_length") or 0,
        vocab_size=vocab,
        feed_forward_length=size("feed_forward_length"),
        sliding_window=size("attention.sliding_window"),
        weight_bytes=weights,
        header_bytes=data_start,
        layer_bytes=layer_bytes,
        token_embd_bytes=token_embd,
        output_bytes=output,
        tied_embeddings=tied,
        bytes_by_type=by_type,
        tensor_count=len(tensors),
        scalars=scalars,
    )


_SHARD = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def shard_paths(first: Path, count: int) -> list[Path]:
    """llama.cpp's names for the shards beside a first shard ``<prefix>-00001-of-0000N.gguf``."""
    m = _SHARD.match(first.name)
    if not m or int(m["no"]) != 1 or int(m["count"]) != count:
        raise GGUFFormatError(f"{first.name} is not named as the first of {count} shards")
    return [
        first.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)
    ]


def _read_file(path: Path, first_read: int) -> _Parsed:
    if not path.is_file():
        raise GGUFFormatError(f"{path} is missing")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(first_read)
        while True:
            try:
                return _parse(data)
            except NeedMoreBytes as more:
                if more.needed > size:
                    # A damaged length field can ask for petabytes: never allocate them.
                    raise GGUFFormatError(
                        f"{path} ends inside its GGUF header (the header needs {more.cause()}, "
                        f"the file has {size}): it is cut short or damaged"
                    ) from more
                if more.needed > FILE_LIMIT_BYTES:
                    raise GGUFFormatError(
                        f"{path}'s GGUF header would be longer than {FILE_LIMIT_BYTES} bytes "
                        f"({more.cause()}): not read further"
                    ) from more
                # Doubling bounds the re-parses to a handful for any header size.
                want = min(max(more.needed, 2 * len(data)), size)
                chunk = f.read(want - len(data))
                if not chunk:
                    raise GGUFFormatError(
                        f"{path} ends inside its GGUF header ({len(data)} bytes)"
                    ) from more
                data += chunk


def read_header(path: Path, first_read: int = FIRST_READ_BYTES) -> ModelHeader:
    """The header of the GGUF file at ``path``, reading only as far as the header goes.

    For the first shard of a split model, the other shards' headers (their tensor
    infos) are read from beside it, named as llama.cpp names them."""
    first = _read_file(path, first_read)
    count = _split_count(first[0])
    if count == 1:
        return _combine([first])
    rest = [_read_file(p, first_read) for p in shard_paths(path, count)[1:]]
    return _combine([first, *rest])


RangeReader = Callable[[int, int], bytes]


def header_from_ranges(
    read_range: RangeReader,
    *other_shards: RangeReader,
    first: int = FIRST_RANGE_BYTES,
    limit: int = RANGE_LIMIT_BYTES,
) -> ModelHeader:
    """Parse a header fetched piecewise: ``read_range(start, end)`` returns bytes
    ``[start, end)`` of the file (an HTTP Range request, ``bytes=start-(end-1)``), or
    fewer at its end; a split model passes one reader per shard, first shard first.
    Each round asks only for the bytes not yet held, at least doubling what is held,
    so at most twice the header moves (Gemma's 6.5 MB: 2 + 2 + 4 MiB) and never more
    than ``limit`` bytes a file."""
    parts = [_fetch(r, first, limit) for r in (read_range, *other_shards)]
    return _combine(parts)


def _fetch(read_range: RangeReader, first: int, limit: int) -> _Parsed:
    data = b""
    want = min(first, limit)
    while True:
        chunk = read_range(len(data), want)
        if not chunk:
            raise GGUFFormatError(f"the file ends inside its GGUF header ({len(data)} bytes)")
        data += chunk
        try:
            return _parse(data)
        except NeedMoreBytes as more:
            # A count that needs more than the limit is refused before its bytes move.
            if len(data) >= limit or more.needed > limit:
                raise GGUFFormatError(
                    f"the GGUF header is longer than {limit} bytes ({more.cause()}); "
                    "not fetched further"
                ) from more
            want = min(max(more.needed, 2 * len(data)), limit)


def encode_header(header: ModelHeader) -> bytes:
    """JSON for ``models/.headers/``."""
    return msgspec.json.encode(header)


def decode_header(raw: bytes) -> ModelHeader:
    return msgspec.json.decode(raw, type=ModelHeader)
