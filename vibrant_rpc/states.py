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

# Why a completion ended, as the completion pipeline says (completion/pipeline/): the
# model's end ("end"), a stop string or a language's stop line ("stop"), max tokens,
# cancelled, or the rule that ended it: one line asked ("oneLine"), a line out of the
# cursor's block ("scope"), a closing bracket the rest of the line has ("bracket"), the
# rest of the line reached ("lineSuffix"), the code below reached ("codeBelow"), a
# repeated line or block ("repetition"), the time budget spent ("timeBudget").
StopReason = Literal[
    "end", "stop", "length", "cancelled", "oneLine", "scope", "bracket", "lineSuffix",
    "codeBelow", "repetition", "timeBudget",
]  # fmt: skip

# A load setting (context_size, gpu_layers) left to the machine: sized from the model's
# header and this machine's memory as it loads.
Auto = Literal["auto"]

# What a team's inference server is (``[engines.<name>] kind``; docs/engines.md): llama-server
# (/infill, /completion), an OpenAI-compatible server (/v1/completions), or Ollama
# (/api/generate with ``raw``).
EngineKind = Literal["llama-server", "openai", "ollama"]

# Where a model's header came from: its downloaded file, the Hub's file read by Range,
# or the registry's architecture numbers.
HeaderSource = Literal["file", "hub", "registry"]
