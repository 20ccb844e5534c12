"""ggml's tensor types and the size of a tensor: what a GGUF header's tensor infos mean."""

from __future__ import annotations

from vibrant_rpc.errors import GGUFFormatError

# Larger than any model (a petabyte): a size over it is a damaged or hostile header, and
# the estimate built on it would be a 31-digit figure.
MAX_MODEL_BYTES = 2**50
# ggml's GGML_MAX_DIMS: llama.cpp refuses a tensor with more.
MAX_DIMS = 4

# ggml type id -> (name, elements per block, bytes per block): ggml.c's type_traits.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}


def tensor_nbytes(type_id: int, shape: list[int]) -> int:
    if type_id not in GGML_TYPES:
        raise GGUFFormatError(f"unknown ggml tensor type {type_id}")
    _, block, size = GGML_TYPES[type_id]
    elements = 1
    for d in shape:  # at most MAX_DIMS: four multiplications of 64-bit numbers
        elements *= d
    nbytes = elements // block * size
    if nbytes > MAX_MODEL_BYTES:
        raise GGUFFormatError(
            f"a tensor of shape {shape} would take {nbytes:.3g} bytes, more than any model "
            f"({MAX_MODEL_BYTES:.3g}): the header is damaged"
        )
    return nbytes
