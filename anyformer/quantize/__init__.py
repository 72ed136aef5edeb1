"""Fewer bytes per weight for decoding: bf16 models, weight-only int8 and groupwise int4 maps.

``prepare_for_decoding(model, dtype, quantize)`` returns the model to decode with (the command
line's ``anyformer generate --dtype bf16 / --quantize int4`` calls it). Quantized models save
and load as model folders.
"""

from .bf16 import PackedBf16Linear, packed_bf16_supported
from .int4 import GROUP_SIZES, Int4Linear, quantize_int4
from .int8 import Int8Linear, quantize_int8
from .prepare import DTYPES, prepare_for_decoding
from .swap import (
    METHODS,
    OWN_KERNEL_TYPES,
    QUANTIZED_TYPES,
    pack_bf16_linears,
    quantize_entry,
    quantize_linears,
    restore_quantized,
)

__all__ = [
    "DTYPES",
    "GROUP_SIZES",
    "METHODS",
    "OWN_KERNEL_TYPES",
    "QUANTIZED_TYPES",
    "Int4Linear",
    "Int8Linear",
    "PackedBf16Linear",
    "pack_bf16_linears",
    "packed_bf16_supported",
    "prepare_for_decoding",
    "quantize_entry",
    "quantize_int4",
    "quantize_int8",
    "quantize_linears",
    "restore_quantized",
]
