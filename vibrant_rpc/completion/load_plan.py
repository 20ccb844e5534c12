"""What a load's request comes to for one model.

A ``fit.LoadRequest`` is the load settings (or ``loadModel``'s overrides of them), where
the context and the GPU layers may be "auto"; ``options_for`` turns it into the
``LoadOptions`` llama.cpp gets for one model, from that model's memory estimate
(``fit.plan``), and refuses a model the estimate says won't fit, before it can swap the
machine to a halt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..errors import ModelLoadFailedError, VibrantError
from ..fit.plan import Fit, LoadRequest
from ..inference.model import LoadOptions

log = logging.getLogger(__name__)

# Without an estimate (a file whose header can't be read, no architecture numbers),
# "auto" means llama-cpp-python's defaults.
DEFAULT_CONTEXT = 4096


def options_for(
    fit: Callable[[str, LoadRequest], Fit], model_id: str, request: LoadRequest
) -> tuple[LoadOptions, Fit | None]:
    """The options for ``model_id`` and the plan they came from (None: no estimate).
    Raises ModelLoadFailedError (``cause: "memory"``) when it doesn't fit; the lifecycle
    then falls back to the next smaller model."""
    try:
        plan: Fit | None = fit(model_id, request)
    except (VibrantError, OSError) as err:  # no readable header, no architecture numbers
        log.warning("no memory estimate for %s: %s", model_id, err)
        plan = None
    if plan is not None and not plan.fits:
        raise ModelLoadFailedError(
            f"{model_id} needs more memory than this machine has: {plan.verdict}",
            hint='Choose a smaller model, or a smaller context_size (or "auto").',
            modelId=model_id,
            cause="memory",
            neededBytes=plan.ram_needed_bytes,
            usableBytes=plan.usable_ram_bytes,
        )
    if plan is not None and plan.warning:
        log.warning("%s", plan.warning)
    context, layers = request.context_size, request.gpu_layers
    options = LoadOptions(
        context_size=plan.context if plan else DEFAULT_CONTEXT if context == "auto" else context,
        threads=request.threads,
        batch_size=request.batch_size,
        mmap=request.mmap,
        mlock=request.mlock,
        gpu_layers=plan.gpu_layers if plan else 0 if layers == "auto" else layers,
    )
    return options, plan
