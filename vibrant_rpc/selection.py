"""Hardware-aware selection: the largest recommended model that fits this machine's RAM."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from .errors import InsufficientRamError
from .registry import ModelInfo
from .units import GiB, format_gib

OS_BUFFER_BYTES = 2 * GiB


class Selection(msgspec.Struct, frozen=True, kw_only=True):
    model_id: str
    reason: str
    total_ram_bytes: int
    usable_ram_bytes: int
    fits: list[str]
    available_bytes: int | None = None
    warning: str | None = None


def label(model: ModelInfo) -> str:
    """A short human name: '7B Q5_K_M', falling back to the id."""
    text = f"{model.parameters} {model.quantization}".strip()
    return text or model.id


def size_key(model: ModelInfo, size_bytes: int | None = None) -> tuple[int, int]:
    """Models in order of the memory they need, then of their size: the bytes on disk when
    known, else the registry's estimate."""
    on_disk = size_bytes if size_bytes is not None else (model.file_size_mb or 0) * 1_000_000
    return (model.ram_required_mb, on_disk)


def select_model(
    models: Iterable[ModelInfo], ram_bytes: int, available_bytes: int | None = None
) -> Selection:
    """Pick a model for ``ram_bytes`` of RAM, keeping 2 GiB for the operating system.

    Recommended models are preferred; deprecated ones are never chosen. When the
    memory free right now is known, a warning says if loading would squeeze the OS.
    """
    candidates = sorted((m for m in models if not m.deprecated), key=size_key)
    usable = max(0, ram_bytes - OS_BUFFER_BYTES)
    head = f"{format_gib(ram_bytes)} total, {format_gib(usable)} usable"
    fits = [m for m in candidates if m.ram_required_bytes <= usable]
    if not fits:
        if not candidates:
            raise InsufficientRamError("The registry holds no models to choose from.")
        smallest = candidates[0]
        need = smallest.ram_required_bytes + OS_BUFFER_BYTES
        raise InsufficientRamError(
            f"Not enough memory for any model: {head}; the smallest, {label(smallest)} "
            f"({smallest.id}), needs {format_gib(smallest.ram_required_bytes)} "
            f"plus {format_gib(OS_BUFFER_BYTES)} for the system.",
            hint=f"A machine with at least {format_gib(need)} of RAM is needed.",
            totalRamBytes=ram_bytes,
            usableRamBytes=usable,
            requiredRamBytes=smallest.ram_required_bytes,
            smallestModelId=smallest.id,
        )
    recommended = [m for m in fits if m.recommended]
    chosen = (recommended or fits)[-1]
    pool = [m for m in candidates if m.recommended] if recommended else candidates
    bigger = [m for m in pool if size_key(m) > size_key(chosen)]
    if bigger:
        nxt = bigger[0]
        why = f"{label(nxt)} needs {format_gib(nxt.ram_required_bytes)}; chose {label(chosen)}"
    else:
        why = f"chose {label(chosen)}, the largest model"
    if not recommended:
        why += " (no recommended model fits)"
    warning = None
    left = None if available_bytes is None else available_bytes - chosen.ram_required_bytes
    if available_bytes is not None and left is not None and left < OS_BUFFER_BYTES:
        warning = (
            f"Only {format_gib(available_bytes)} of memory is free right now: loading "
            f"{label(chosen)} ({format_gib(chosen.ram_required_bytes)}) would leave less than "
            f"{format_gib(OS_BUFFER_BYTES)} for the system. Close other programs first."
        )
    return Selection(
        model_id=chosen.id,
        reason=f"{head}; {why}",
        total_ram_bytes=ram_bytes,
        usable_ram_bytes=usable,
        fits=[m.id for m in reversed(fits)],
        available_bytes=available_bytes,
        warning=warning,
    )
