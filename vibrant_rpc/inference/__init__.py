"""One model loaded in llama-cpp-python and what it generates (``model``), on the one
thread all llama.cpp work runs on (``llama_setup``); the KV cache kept across prompts
(``kv_reuse``), greedy decoding with checked drafts (``greedy_decode``, ``lookup_draft``,
``draft_policy``) and UTF-8 text from token bytes (``text_stream``). llama_cpp itself
is imported on the first load, not here."""

from ..errors import ModelClosedError  # the error tree's; the face keeps it beside the model
from .model import (
    FLASH_ATTENTION,
    CompletionRequest,
    CompletionResult,
    LoadedModel,
    LoadOptions,
    warm_up,
)

__all__ = [
    "FLASH_ATTENTION",
    "CompletionRequest",
    "CompletionResult",
    "LoadOptions",
    "LoadedModel",
    "ModelClosedError",
    "warm_up",
]
