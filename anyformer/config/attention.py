"""AttentionConfig: the options of one attention module (``attn_*`` / ``cross_attn_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from .options import check_fields, current_prefix, option

__all__ = ["AttentionConfig"]


@dataclass(frozen=True)
class AttentionConfig:
    """Attention options; each field is one x-transformers ``attn_*`` keyword."""

    dim_head: int = option(64, "width of each attention head")
    dropout: float = option(0.0, "dropout on the attention probabilities")
    flash: bool = option(
        False,
        "use the fused F.scaled_dot_product_attention kernel",
        "https://arxiv.org/abs/2205.14135",
    )
    dim_context: int | None = option(
        None, "width of the keys/values input for cross-attention (default: dim)"
    )
    zero_init_output: bool = option(False, "zero-initialise the output projection")
    onnxable: bool = option(
        False, "ONNX-friendly causal mask (always satisfied: masks are built without triu)"
    )
    qkv_bias: bool = option(
        False, "learned biases on the query/key/value projections (GPT-2, BERT)"
    )
    out_bias: bool = option(False, "learned bias on the output projection (GPT-2, BERT)")

    def __post_init__(self) -> None:
        p = current_prefix("attn_")
        check_fields(self, "Attention", p)
        if self.dim_head < 1:
            raise ValueError(f"Attention: {p}dim_head must be >= 1, got {self.dim_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Attention: {p}dropout must be in [0, 1), got {self.dropout}")
        if self.dim_context is not None and self.dim_context < 1:
            raise ValueError(f"Attention: {p}dim_context must be >= 1, got {self.dim_context}")
