"""Whether a model fits this machine: its memory estimate from a GGUF header
(``estimate``), the machine's RAM (``ram``) and GPUs (``gpu``), the verdict with "auto"
context and GPU layers resolved for a load's request (``plan``), the model a machine
gets (``selection``), a model's header before and after its download (``headers``), and
the sizes a model's life is handed (``sizing``)."""

from .estimate import EstimateOptions, MemoryEstimate, estimate
from .gpu import GpuDevice, GpuPlan, detect_gpus
from .headers import HeaderStore, KnownHeader, header_for
from .plan import Fit, LoadRequest, fit_model, load_request
from .ram import MemoryInfo, read_memory
from .selection import Need, Selection, select_model
from .sizing import Sizing

__all__ = [
    "EstimateOptions",
    "Fit",
    "GpuDevice",
    "GpuPlan",
    "HeaderStore",
    "KnownHeader",
    "LoadRequest",
    "MemoryEstimate",
    "MemoryInfo",
    "Need",
    "Selection",
    "Sizing",
    "detect_gpus",
    "estimate",
    "fit_model",
    "header_for",
    "load_request",
    "read_memory",
    "select_model",
]
