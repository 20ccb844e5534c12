"""Whether a model fits this machine: its memory estimate from a GGUF header
(``estimate``), the machine's RAM (``ram``) and GPUs (``gpu``), the verdict with "auto"
context and GPU layers resolved (``plan``), the model a machine gets (``selection``),
and a model's header before and after its download (``headers``)."""

from .estimate import EstimateOptions, MemoryEstimate, estimate
from .gpu import GpuDevice, GpuPlan, detect_gpus
from .headers import HeaderStore, KnownHeader, header_for
from .plan import Fit, FitRequest, fit_model
from .ram import MemoryInfo, read_memory
from .selection import Need, Selection, select_model

__all__ = [
    "EstimateOptions",
    "Fit",
    "FitRequest",
    "GpuDevice",
    "GpuPlan",
    "HeaderStore",
    "KnownHeader",
    "MemoryEstimate",
    "MemoryInfo",
    "Need",
    "Selection",
    "detect_gpus",
    "estimate",
    "fit_model",
    "header_for",
    "read_memory",
    "select_model",
]
