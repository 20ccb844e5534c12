"""Installing a verified download: rename its files into the models folder, then record
them in the manifest. Files are only ever renamed into place, never rewritten, so a
process that has the old file mapped keeps reading whole bytes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..cache.manifest import ManifestEntry, ManifestFile, ModelVersion, utcnow
from ..cache.partials import PartialState
from ..cache.store import Cache
from ..errors import DiskFullError
from ..fsutil import fsync_dir
from ..registry import ModelInfo
from ..units import format_bytes

MiB = 1024 * 1024


def disk_margin(remaining: int) -> int:
    return max(64 * MiB, remaining // 50)


def check_disk(models: Path, model_id: str, remaining: int) -> None:
    """Room for what is left to download (plus a margin) where the model will live."""
    models.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(models).free
    needed = remaining + disk_margin(remaining)
    if free < needed:
        raise DiskFullError(
            f"Not enough disk space for {model_id}: {format_bytes(needed)} is needed in "
            f"{models} ({format_bytes(remaining)} left to download plus a margin), "
            f"but only {format_bytes(free)} is free.",
            hint="Free some space, remove models with `vibrant model remove <id>`, or move "
            "the cache with VIBRANT_HOME.",
            modelId=model_id,
            neededBytes=needed,
            freeBytes=free,
            path=str(models),
        )


def install(
    cache: Cache,
    models: Path,
    model: ModelInfo,
    folder: Path,
    state: PartialState,
    sources: dict[str, str] | None = None,  # Hub file name -> where it came from
) -> ManifestEntry:
    """Move the verified files into place, then record them in the manifest."""
    previous = cache.get(model.id)  # before the files appear, or it adopts them
    files: list[ManifestFile] = []
    for fp in state.files:
        target = models / fp.name
        os.replace(folder / f"{fp.name}.part", target)
        files.append(
            ManifestFile(
                path=fp.name,
                size_bytes=fp.size_bytes or 0,
                sha256=fp.sha256,
                mtime_ns=target.stat().st_mtime_ns,
                remote_filename=fp.remote_filename,
                source=(sources or {}).get(fp.remote_filename),
            )
        )
    if previous is not None:  # an update with fewer or renamed shards: drop the old ones
        for old in set(previous.paths) - {f.path for f in files}:
            (models / old).unlink(missing_ok=True)
    fsync_dir(models)
    now = utcnow()
    versions = [v for v in (previous.versions if previous else []) if v.revision != state.commit]
    size = sum(f.size_bytes for f in files)
    versions.append(
        ModelVersion(revision=state.commit, seen_at=now, size_bytes=size, sha256=files[0].sha256)
    )
    entry = ManifestEntry(
        id=model.id,
        files=files,
        size_bytes=size,
        checksum=f"sha256:{files[0].sha256}",
        downloaded_at=now,
        hf_repo=model.hf_repo,
        revision=state.commit,
        last_used=previous.last_used if previous else None,
        use_count=previous.use_count if previous else 0,
        versions=versions,
    )
    cache.record(entry)
    shutil.rmtree(folder, ignore_errors=True)
    return entry
