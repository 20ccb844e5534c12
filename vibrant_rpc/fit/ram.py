"""How much memory this process may really use: psutil, capped by a cgroup limit; and
how much of it a model may take, the operating system keeping ``OS_BUFFER_BYTES``."""

from __future__ import annotations

from pathlib import Path

import msgspec
import psutil

from ..units import GiB, format_gib

# What the operating system keeps of the RAM, as in the seed's selection.
OS_BUFFER_BYTES = 2 * GiB


class MemoryInfo(msgspec.Struct, frozen=True):
    total_bytes: int
    available_bytes: int
    cgroup_limit_bytes: int | None = None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _cgroup_dirs(proc_self_cgroup: Path, cgroup_root: Path) -> list[Path]:
    """This process's cgroup folders, innermost first, up to the root."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return []
    dirs: list[Path] = []
    for line in lines:
        hierarchy, controllers, rel = [*line.split(":", 2), "", ""][:3]
        if hierarchy == "0" and controllers == "":
            base = cgroup_root  # cgroup v2, unified
        elif "memory" in controllers.split(","):
            base = cgroup_root / "memory"  # cgroup v1
        else:
            continue
        here = base / rel.lstrip("/")
        while True:
            dirs.append(here)
            if here == base:
                break
            here = here.parent
    return dirs


def cgroup_memory(
    proc_self_cgroup: Path = Path("/proc/self/cgroup"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
) -> tuple[int | None, int | None]:
    """(limit, usage) of the tightest cgroup memory limit over this process, if any."""
    best: tuple[int | None, int | None] = (None, None)
    for d in _cgroup_dirs(proc_self_cgroup, cgroup_root):
        limit = _read_int(d / "memory.max")
        usage = _read_int(d / "memory.current")
        if limit is None:
            limit = _read_int(d / "memory.limit_in_bytes")
            usage = _read_int(d / "memory.usage_in_bytes")
            # cgroup v1 says "no limit" with a huge number near 2**63.
            if limit is not None and limit >= 2**60:
                limit = None
        if limit is not None and (best[0] is None or limit < best[0]):
            best = (limit, usage)
    return best


def read_memory(
    proc_self_cgroup: Path = Path("/proc/self/cgroup"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
) -> MemoryInfo:
    vm = psutil.virtual_memory()
    limit, usage = cgroup_memory(proc_self_cgroup, cgroup_root)
    total, available = int(vm.total), int(vm.available)
    if limit is not None and limit < total:
        total = limit
        available = min(available, max(0, limit - (usage or 0)))
    return MemoryInfo(total, available, limit)


def usable_bytes(total_bytes: int) -> int:
    """What a model may take of ``total_bytes`` of RAM."""
    return max(0, total_bytes - OS_BUFFER_BYTES)


def short_now_warning(available_bytes: int | None, need_bytes: int, what: str) -> str | None:
    """Why loading ``what`` (``need_bytes``, a model that fits) would squeeze the system
    with the memory free right now, or None where it would not (or that isn't known)."""
    if available_bytes is None or available_bytes - need_bytes >= OS_BUFFER_BYTES:
        return None
    return (
        f"Only {format_gib(available_bytes)} of memory is free right now: loading {what} "
        f"({format_gib(need_bytes)}) would leave less than {format_gib(OS_BUFFER_BYTES)} "
        "for the system. Close other programs first."
    )
