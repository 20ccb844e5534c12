"""``HF_HUB_OFFLINE``: no network at all. Apart so that asking costs no httpx import."""

from __future__ import annotations

import os


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
