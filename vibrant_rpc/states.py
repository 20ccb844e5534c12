"""The named states that cross boundaries, each declared once (the wire uses these too)."""

from __future__ import annotations

from typing import Literal

# The loaded model's state in a server.
ModelState = Literal["unloaded", "loading", "ready", "failed"]

# Where a download is: "waiting" (another process is downloading this model), "resolving",
# "downloading", "verifying", then "done", "failed" or "cancelled" last.
DownloadState = Literal[
    "waiting", "resolving", "downloading", "verifying", "done", "failed", "cancelled"
]

# Why a completion ended: end of text or a stop string, max tokens, or cancelled.
FinishReason = Literal["stop", "length", "cancelled"]
