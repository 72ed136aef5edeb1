"""Checkpoint conversion between anyformer and other libraries' layouts."""

from .x_transformers import load_x_transformers_state_dict, to_x_transformers_state_dict

__all__ = ["load_x_transformers_state_dict", "to_x_transformers_state_dict"]
