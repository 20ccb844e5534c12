"""Switchable faults, and the plan one CDN response takes from them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BodyPlan", "Faults"]


@dataclass
class Faults:
    """Switchable faults.  Counters (``*_count``, ``status_sequence``) are
    consumed by the server as they fire; everything is read live, so a test
    may change a field at any time (also through ``POST /_stub/faults``)."""

    throttle_bps: int | None = None
    """Cap each CDN response at this many body bytes per second (None: no cap)."""
    drop_after_bytes: int | None = None
    drop_count: int = 0
    """The next drop_count CDN GET responses with a body send drop_after_bytes
    body bytes, then close the connection (the client sees a short body)."""
    ignore_range: bool = False
    """CDN answers 200 with the whole file even when a Range is asked."""
    status_sequence: list[int] = field(default_factory=list)
    """The next requests to status_target answer these statuses, in order."""
    status_target: str = "cdn"
    """"cdn", "endpoint" (resolve + API, not /_stub) or "both"."""
    retry_after: int | None = None
    """Adds Retry-After: N (and, on 429, a RateLimit header) to those statuses."""
    stall_after_bytes: int | None = None
    stall_seconds: float = 0.0
    stall_count: int = 0
    """The next stall_count CDN GET responses with a body send stall_after_bytes
    body bytes, then send nothing for stall_seconds, then close."""
    corrupt_offset: int | None = None
    corrupt_count: int = 0
    """The next corrupt_count CDN GET responses whose served range covers the
    absolute file offset corrupt_offset have that byte flipped (xor 0xFF)."""
    redirect_expires_s: int = 3600
    """Lifetime of signed CDN URLs; a negative value yields expired URLs."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def update(self, values: Mapping[str, Any]) -> None:
        """Set the fields given (validated); raises ValueError on unknown ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        for key, value in values.items():
            if key == "status_sequence":
                value = [int(v) for v in (value or [])]
            elif key == "status_target":
                if value not in ("cdn", "endpoint", "both"):
                    raise ValueError("status_target must be cdn, endpoint or both")
            elif key in (
                "throttle_bps",
                "drop_after_bytes",
                "stall_after_bytes",
                "corrupt_offset",
                "retry_after",
            ):
                value = None if value is None else int(value)
            elif key in ("drop_count", "stall_count", "corrupt_count", "redirect_expires_s"):
                value = int(value)
            elif key == "stall_seconds":
                value = float(value)
            elif key == "ignore_range":
                value = bool(value)
            setattr(self, key, value)

    def reset(self) -> None:
        self.update(Faults().to_dict())


@dataclass
class BodyPlan:
    """The body faults one CDN response takes (consumed from Faults as it starts)."""

    drop_after: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 0.0
    corrupt_offset: int | None = None
    throttle: bool = False
