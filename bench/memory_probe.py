"""Measure one load in this process: llama.cpp's own buffer sizes and the peak RSS.

Run as ``python -m bench.memory_probe MODEL CONTEXT [--batch N] [--ubatch N]
[--kv-type T] [--flash]``: it loads MODEL in llama-cpp-python with the settings vibrant
uses (``inference.model.warm_up`` installs its log callback and its AMX workaround; the
load options are the ones ``inference.LoadedModel.load`` passes), fills the context with a real
prompt, and prints one JSON line (``Probe``). A fresh process per measurement: RSS, once
high, stays high.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

import msgspec
import psutil

# llama.cpp logs each buffer it allocates: "<dev> <what> buffer size = <n> MiB".
_BUFFER = re.compile(r"(\S+) (model|KV|compute|output|RS) buffer size\s*=\s*([\d.]+) MiB")
_TEXT = (
    "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n"
    "    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "The quick brown fox jumps over the lazy dog while 42 programmers debug code.\n"
)


class Probe(msgspec.Struct, kw_only=True):
    context: int
    prompt_tokens: int
    rss_before_bytes: int
    rss_loaded_bytes: int
    rss_filled_bytes: int
    peak_rss_bytes: int
    # {"CPU_Mapped model": MiB, "CPU KV": MiB, "CPU compute": MiB, ...} as logged.
    buffers_mib: dict[str, float]
    # /proc/self/status RssAnon and RssFile (kB) before, loaded, filled: what grew where.
    rss_split_kib: dict[str, list[int]]
    log_lines: list[str]
    fill_seconds: float


def _rss_split() -> tuple[int, int]:
    anon = file = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1])
            elif line.startswith("RssFile:"):
                file = int(line.split()[1])
    return anon, file


def _peak_rss() -> int:
    """VmHWM: this address space's peak RSS. Not ru_maxrss, which a child inherits
    from its parent at fork (a test runner's 700 MB would read as the model's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


# llama.cpp's ggml_type ids of the KV cache types the estimate knows.
_KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}


def probe(
    path: Path,
    context: int,
    *,
    batch: int = 512,
    ubatch: int = 512,
    kv_type: str = "f16",
    flash: bool = False,
    mmap: bool = True,
    fill: bool = True,
    threads: int = 2,
) -> Probe:
    collect = _Collect()
    llama_log = logging.getLogger("vibrant_rpc.llama_cpp")
    llama_log.setLevel(logging.DEBUG)
    llama_log.addHandler(collect)
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    split = [_rss_split()]
    from vibrant_rpc.inference import model

    model.warm_up()
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=context,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=batch,
        n_ubatch=ubatch,
        use_mmap=mmap,
        n_gpu_layers=0,
        flash_attn=flash,
        type_k=_KV_TYPES[kv_type],
        type_v=_KV_TYPES[kv_type],
        verbose=True,
    )
    rss_loaded = proc.memory_info().rss
    split.append(_rss_split())
    one = llm.tokenize(_TEXT.encode(), add_bos=False, special=False)
    want = context - 1
    tokens = (one * (want // len(one) + 1))[:want] if fill else one[:8]
    started = time.perf_counter()
    llm.eval(tokens)
    fill_seconds = time.perf_counter() - started
    rss_filled = proc.memory_info().rss
    split.append(_rss_split())
    peak = _peak_rss()
    buffers: dict[str, float] = {}
    for line in collect.lines:
        for dev, what, mib in _BUFFER.findall(line):
            key = f"{dev} {what}"
            buffers[key] = buffers.get(key, 0.0) + float(mib)
    wanted = ("buffer size", "SWA", "flash_attn", "REPACK")
    return Probe(
        context=context,
        prompt_tokens=len(tokens),
        rss_before_bytes=rss_before,
        rss_loaded_bytes=rss_loaded,
        rss_filled_bytes=rss_filled,
        peak_rss_bytes=peak,
        buffers_mib=buffers,
        rss_split_kib={"anon": [a for a, _ in split], "file": [f for _, f in split]},
        log_lines=[ln.strip() for ln in collect.lines if any(w in ln for w in wanted)],
        fill_seconds=fill_seconds,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("context", type=int)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--ubatch", type=int, default=512)
    parser.add_argument("--kv-type", choices=sorted(_KV_TYPES), default="f16")
    parser.add_argument("--flash", action="store_true")
    parser.add_argument("--no-mmap", action="store_true")
    parser.add_argument("--no-fill", action="store_true")
    args = parser.parse_args(argv)
    result = probe(
        args.model,
        args.context,
        batch=args.batch,
        ubatch=args.ubatch,
        kv_type=args.kv_type,
        flash=args.flash,
        mmap=not args.no_mmap,
        fill=not args.no_fill,
    )
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")


if __name__ == "__main__":
    main()
