"""Hardware-aware selection: the largest recommended model that fits this machine's RAM.

What a model needs comes from a ``NeedFn``: the memory estimate from its GGUF header
at the configured context (``app.Vibrant`` passes one built on ``fit.fit_model``), or
the registry's ``ram_required_mb`` for a model nothing more is known of. Models are
ordered by a need that does not depend on this machine's RAM, so more RAM never
selects a smaller model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import msgspec

from ..errors import InsufficientRamError
from ..registry import ModelInfo
from ..units import format_gib
from .ram import OS_BUFFER_BYTES, short_now_warning, usable_bytes


class Need(msgspec.Struct, frozen=True, kw_only=True):
    bytes: int  # of system RAM, at the context the model would load with here
    order: int  # the same at a fixed context: the models' order, whatever the RAM
    breakdown: str | None = None  # "7B Q5_K_M at 4096 tokens: … = 5.7 GiB"
    context: int | None = None  # the tokens of context ``bytes`` is for, when known
    # Why the estimate is not from the model's own header (the Hub too slow, ...), in words.
    note: str | None = None


NeedFn = Callable[[ModelInfo], Need]


def registry_need(model: ModelInfo) -> Need:
    return Need(bytes=model.ram_required_bytes, order=model.ram_required_bytes)


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


def disk_bytes(model: ModelInfo, size_bytes: int | None = None) -> int:
    """A model's size: the bytes on disk when known, else the registry's."""
    return size_bytes if size_bytes is not None else (model.file_size_mb or 0) * 1_000_000


def order_key(model: ModelInfo, need: Need, size_bytes: int | None = None) -> tuple[int, int]:
    """Models in order of the memory they need, then of their size. Selection and the
    fallback after a failed load both sort by it, so they agree on what is smaller."""
    return (need.order, disk_bytes(model, size_bytes))


def select_model(
    models: Iterable[ModelInfo],
    ram_bytes: int,
    available_bytes: int | None = None,
    need: NeedFn = registry_need,
) -> Selection:
    """Pick a model for ``ram_bytes`` of RAM, keeping 2 GiB for the operating system.

    Recommended models are preferred; deprecated ones are never chosen. When the
    memory free right now is known, a warning says if loading would squeeze the OS.
    """
    needs = {m.id: need(m) for m in models if not m.deprecated}
    candidates = sorted(
        (m for m in models if m.id in needs),
        key=lambda m: order_key(m, needs[m.id]),
    )
    usable = usable_bytes(ram_bytes)
    head = f"{format_gib(ram_bytes)} total, {format_gib(usable)} usable"
    fits = [m for m in candidates if needs[m.id].bytes <= usable]
    if not fits:
        if not candidates:
            raise InsufficientRamError("The registry holds no models to choose from.")
        smallest = candidates[0]
        small = needs[smallest.id]
        what = f" ({small.breakdown})" if small.breakdown else ""
        raise InsufficientRamError(
            f"Not enough memory for any model: {head}; the smallest, {label(smallest)} "
            f"({smallest.id}), needs {format_gib(small.bytes)}{what} "
            f"plus {format_gib(OS_BUFFER_BYTES)} for the system.",
            hint=f"A machine with at least {format_gib(small.bytes + OS_BUFFER_BYTES)} of RAM "
            "is needed, or a smaller context_size.",
            totalRamBytes=ram_bytes,
            usableRamBytes=usable,
            requiredRamBytes=small.bytes,
            smallestModelId=smallest.id,
        )
    recommended = [m for m in fits if m.recommended]
    chosen = (recommended or fits)[-1]
    mine = needs[chosen.id]
    pool = [m for m in candidates if m.recommended] if recommended else candidates
    bigger = pool[pool.index(chosen) + 1 :] if chosen in pool else []
    why = f"chose {label(chosen)}"
    if mine.breakdown:
        why += f" ({mine.breakdown}; {mine.note})" if mine.note else f" ({mine.breakdown})"
    if bigger:
        nxt = bigger[0]
        nxt_need = needs[nxt.id]
        at = f" at {nxt_need.context} tokens" if nxt_need.context else ""
        why += f"; the next, {label(nxt)}, needs {format_gib(nxt_need.bytes)}{at}"
    else:
        why += ", the largest model"
    if not recommended:
        why += " (no recommended model fits)"
    warning = short_now_warning(available_bytes, mine.bytes, label(chosen))
    return Selection(
        model_id=chosen.id,
        reason=f"{head}; {why}",
        total_ram_bytes=ram_bytes,
        usable_ram_bytes=usable,
        fits=[m.id for m in reversed(fits)],
        available_bytes=available_bytes,
        warning=warning,
    )
