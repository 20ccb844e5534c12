"""Hostile GGUF headers cost bounded work: counts, lengths and dimensions that can't fit in
the bytes given, and sizes no model has, are a GGUFFormatError before anything is
allocated; and random damage to a real header either parses or is that error, at once
(as Ollama's fs/ggml FuzzDecode target checks its decoder)."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from tests.support.gguf_fixtures import tiny_fim_path
from tests.support.hostile_gguf import hostile_headers, sane, write
from vibrant_rpc.errors import GGUFFormatError
from vibrant_rpc.fit.estimate import check_sizes
from vibrant_rpc.gguf.header import ModelHeader, header_from_ranges, read_header

# Each case in a fresh process: its time, and its peak memory over the process's before.
_MEASURE = r"""
import json, resource, sys, time
from vibrant_rpc.errors import GGUFFormatError
from vibrant_rpc.gguf.header import header_from_ranges, read_header
path = sys.argv[1]
data = open(path, "rb").read()
out = {}
for how in ("file", "ranges"):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        if how == "file":
            read_header(__import__("pathlib").Path(path))
        else:
            header_from_ranges(lambda s, e: data[s:e])
        error = None
    except GGUFFormatError as err:
        error = str(err)
    took = time.perf_counter() - start
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    out[how] = {"s": took, "kib": grew, "error": error}
print(json.dumps(out))
"""

# What each refusal says (part of it): the cause, for the note `fit` and `info` print.
SAYS = {
    "a tensor with 200,000 dimensions": "200000 dimensions; GGUF allows at most 4",
    "block_count 2^28 in a 4 KB header": "268435456 layers but has 3 tensors",
    "2^128-element tensors": "more than any model",
    "tensors adding up to more than 2^50 bytes": "tensors add up to",
    "2^60 metadata items": "1152921504606846976 metadata items",
    "2^40 tensor infos": "1099511627776 tensor infos",
    "a key of 2^60 bytes": "a string of 1152921504606846976 bytes",
    "an array of 2^62 strings": "an array of 4611686018427387904 items",
    "an array of 2^61 u64s": "an array of 2305843009213693952 items",
    "head_count 0": "llama.attention.head_count is 0",
    "a token_embd with 0 dimensions": "token_embd.weight has no dimensions",
    "alignment 0": "general.alignment is 0",
    "alignment 48": "alignment 48 is not a power of 2",
}


def test_the_sane_base_parses(tmp_path: Path) -> None:
    header = read_header(write(tmp_path / "sane.gguf", sane()))
    assert (header.block_count, header.tensor_count, header.vocab_size) == (2, 3, 100)


@pytest.mark.parametrize("case", sorted(SAYS))
def test_a_hostile_header_is_refused_at_once_in_little_memory(tmp_path: Path, case: str) -> None:
    data = hostile_headers()[case]
    path = write(tmp_path / "hostile.gguf", data)
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    for how, got in json.loads(run.stdout).items():
        print(f"{case} ({len(data):,} B), {how}: {got['s'] * 1e3:.1f} ms, "
              f"+{got['kib'] / 1024:.1f} MB peak: {got['error']}")  # fmt: skip
        assert got["error"] is not None and SAYS[case] in got["error"], got
        # Before: over 60 s (200,000 dims); 14.5 s and 2.66 GB (block_count 2^28).
        assert got["s"] < 2 and got["kib"] < 200 * 1024


def test_a_header_whose_numbers_make_a_model_bigger_than_any_is_refused(tmp_path: Path) -> None:
    from tests.support.hostile_gguf import header, model_items, model_tensors

    huge = header(model_items(**{"attention.head_count_kv": 2**60}), model_tensors())
    parsed = read_header(write(tmp_path / "huge.gguf", huge))  # each number is a number
    with pytest.raises(GGUFFormatError, match="more than any model") as err:
        check_sizes(parsed)
    print(f"head_count_kv 2^60: {err.value}")
    long = header(model_items(context_length=2**62), model_tensors())
    with pytest.raises(GGUFFormatError, match=r"own context \(4611686018427387904 tokens\)"):
        check_sizes(read_header(write(tmp_path / "long.gguf", long)))
    assert check_sizes(read_header(tiny_fim_path())) == read_header(tiny_fim_path())


_INTERESTING = [0, 1, 2, 4, 5, 255, 2**16, 2**31, 2**32 - 1, 2**32, 2**50, 2**63, 2**64 - 1]


def bytes_of(data: bytes, start: int, end: int) -> bytes:
    return data[start:end]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """One random kind of damage: flipped bytes, a 4- or 8-byte field set to a value that
    breaks parsers, a cut, or a piece repeated."""
    out = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind in (1, 2):
        fmt = "<Q" if kind == 1 else "<I"
        bound = 2**64 if kind == 1 else 2**32
        value = rng.choice([*_INTERESTING, rng.randrange(bound)]) % bound
        at = rng.randrange(len(out) - struct.calcsize(fmt))
        struct.pack_into(fmt, out, at, value)
    elif kind == 3:
        del out[rng.randrange(len(out)) :]
    else:
        start = rng.randrange(len(out))
        piece = out[start : start + rng.randint(1, 64)]
        out[start:start] = piece * rng.randint(1, 4)
    return bytes(out)


def test_random_damage_to_a_real_header_parses_or_is_refused_at_once(tmp_path: Path) -> None:
    real = tiny_fim_path().read_bytes()
    head = real[: read_header(tiny_fim_path()).header_bytes]
    rng = random.Random(2222)
    outcomes = {"parsed": 0, "refused": 0}
    slowest, total = 0.0, time.perf_counter()
    for i in range(400):
        data = _mutate(rng, head) + real[len(head) :]
        path = tmp_path / "fuzz.gguf"
        for how in ("ranges", "file"):
            start = time.perf_counter()
            try:
                if how == "ranges":
                    header: ModelHeader = header_from_ranges(partial(bytes_of, data))
                else:
                    path.write_bytes(data)
                    header = read_header(path)
                check_sizes(header)
                # What is kept on disk is never larger than the header itself.
                assert len(json.dumps(header.scalars)) + 17 * header.block_count < max(
                    header.header_bytes, 64 * 1024
                )
                outcomes["parsed"] += 1
            except GGUFFormatError:
                outcomes["refused"] += 1
            took = time.perf_counter() - start
            slowest = max(slowest, took)
            assert took < 1.0, f"case {i} ({how}): {took:.2f} s"
    total = time.perf_counter() - total
    print(f"fuzz: 400 damaged headers x 2 readers: {outcomes}, slowest {slowest * 1e3:.1f} ms, "
          f"all {total:.1f} s")  # fmt: skip
    assert outcomes["parsed"] and outcomes["refused"]
