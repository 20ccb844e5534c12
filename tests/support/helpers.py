"""Shared test helpers: write a user registry and put fake models into the cache."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from vibrant_rpc.cache.manifest import ManifestEntry, ManifestFile, utcnow
from vibrant_rpc.cache.store import Cache
from vibrant_rpc.paths import Paths


def write_registry(paths: Paths, models: list[dict[str, Any]]) -> Path:
    paths.home.mkdir(parents=True, exist_ok=True)
    paths.user_registry.write_text(json.dumps({"models": models}))
    return paths.user_registry


def tiny_model(model_id: str, ram_mb: int = 100, files: int = 1, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": model_id,
        "name": f"Tiny {model_id}",
        "hf_repo": "test/tiny",
        "ram_required_mb": ram_mb,
        "parameters": f"{ram_mb}M",
        "quantization": "Q4",
    }
    if files == 1:
        entry["filename"] = f"{model_id}.gguf"
    else:
        entry["files"] = [
            {"filename": f"{model_id}-{i:05d}-of-{files:05d}.gguf"} for i in range(1, files + 1)
        ]
    entry.update(extra)
    return entry


def put_cached(
    cache: Cache,
    model_id: str,
    size: int = 1000,
    *,
    last_used: datetime | None = None,
    downloaded_at: datetime | None = None,
) -> ManifestEntry:
    """Write a model's files into the cache folder and record them, as a download would."""
    model = cache.registry.get(model_id)
    cache.paths.models.mkdir(parents=True, exist_ok=True)
    files = []
    for i, name in enumerate(model.local_filenames()):
        # GGUF's magic first, as a real model file has it (the cache adopts nothing else)
        data = (b"GGUF" + bytes([(i + len(model_id)) % 256]) * size)[:size]
        path = cache.paths.models / name
        path.write_bytes(data)
        files.append(
            ManifestFile(
                path=name,
                size_bytes=size,
                sha256=hashlib.sha256(data).hexdigest(),
                mtime_ns=os.stat(path).st_mtime_ns,
                remote_filename=model.files[i].filename,
            )
        )
    entry = ManifestEntry(
        id=model_id,
        files=files,
        size_bytes=size * len(files),
        checksum=f"sha256:{files[0].sha256}",
        downloaded_at=downloaded_at or utcnow(),
        hf_repo=model.hf_repo,
        revision="0" * 40,
        last_used=last_used,
    )
    cache.record(entry)
    return entry


# Gemma 3 270M's numbers, as its GGUF header has them: the `architecture` of the user
# registry entries that name it (it is not an embedded model).
GEMMA_ARCH: dict[str, Any] = {
    "architecture": "gemma3",
    "layers": 18,
    "heads": 4,
    "kv_heads": 1,
    "hidden": 640,
    "head_dim": 256,
    "vocab": 262144,
    "feed_forward": 2048,
    "context_length": 32768,
    "tied_embeddings": True,
    "sliding_window": 512,
}
