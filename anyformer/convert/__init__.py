"""Checkpoint conversion between anyformer and other libraries' layouts."""

from .hf import UnsupportedHFModel, from_hf, from_hf_dir, supported_architectures
from .x_transformers import load_x_transformers_state_dict, to_x_transformers_state_dict

__all__ = [
    "UnsupportedHFModel",
    "from_hf",
    "from_hf_dir",
    "load_x_transformers_state_dict",
    "supported_architectures",
    "to_x_transformers_state_dict",
]
