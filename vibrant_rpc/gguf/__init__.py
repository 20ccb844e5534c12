"""GGUF model files: the header (metadata and tensor sizes) read from a file or from a
prefix of it (``header``), and a header built from an architecture's published numbers
for a model not downloaded yet (``architectures``). Knows nothing of the registry."""

from ..errors import GGUFFormatError  # the error tree's; the face keeps it beside the reader
from .architectures import ArchFacts, header_from_arch
from .ggml import GGML_TYPES
from .header import ModelHeader, header_from_ranges, read_header

__all__ = [
    "GGML_TYPES",
    "ArchFacts",
    "GGUFFormatError",
    "ModelHeader",
    "header_from_arch",
    "header_from_ranges",
    "read_header",
]
