"""What a model's life needs to know of sizes, handed in as functions.

The lifecycle (``completion.lifecycle``) loads models but must not know how a fit or a
selection is computed (headers, the Hub, GPUs, the facade's caches): ``app.Vibrant``
builds a ``Sizing`` from its own methods and the lifecycle calls them, as Ollama's
scheduler (server/sched.go) is handed its ``loadFn`` and ``getGpuFn``. A test hands in
the facade's or its own.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from ..registry import ModelInfo
from .plan import Fit, LoadRequest
from .selection import Selection


class Sizing(msgspec.Struct, frozen=True, kw_only=True):
    # The plan of a downloaded model at a request, from its own file's header (never the
    # Hub's: a load doesn't wait on the network). Raises where nothing is known of it.
    fit: Callable[[str, LoadRequest], Fit]
    # The model for this machine among these models (None: the registry's).
    select: Callable[[list[ModelInfo] | None], Selection]
    # A registry id for a model id: "auto" is the selection's choice, an old id its new one.
    resolve_id: Callable[[str], str]
    # The cached models smaller than this one, the next smaller first: where a failed load
    # falls back to.
    smaller_cached: Callable[[str], list[str]]
