"""Checkpoint conversion between anyformer and other libraries' layouts.

Hugging Face in (``from_hf``, ``from_hf_dir``; families listed by ``supported_architectures``:
GPT-2, Llama 1-3.x, Qwen2, Qwen3, Phi-3, BERT, ...) and out (``to_hf``, ``to_hf_dir``);
x-transformers state dicts both ways (1.28.x and 2.x layouts).
"""

from .export import export_families, to_hf, to_hf_dir
from .hf import UnsupportedHFModel, from_hf, from_hf_dir, supported_architectures
from .x_transformers import load_x_transformers_state_dict, to_x_transformers_state_dict

__all__ = [
    "UnsupportedHFModel",
    "export_families",
    "from_hf",
    "from_hf_dir",
    "load_x_transformers_state_dict",
    "supported_architectures",
    "to_hf",
    "to_hf_dir",
    "to_x_transformers_state_dict",
]
