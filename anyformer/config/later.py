"""x-transformers keywords that anyformer knows but does not implement yet.

They are recognised (so a typo still gets a did-you-mean, and the real name is not mistaken for a
typo) but raise ``NotImplementedError`` naming the keyword: nothing is ever silently ignored.
Each feature issue removes its names from these tables as it lands.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "LATER_ATTENTION",
    "LATER_FORWARD",
    "LATER_STACK",
    "LATER_WRAPPER",
    "raise_if_later",
]

ATTENTION = "attention variant"
POSITIONS = "positional scheme"
STRUCTURE = "stack structure option"

#: Attention keywords of the seed design (reached as ``attn_*`` / ``cross_attn_*`` on a stack).
LATER_ATTENTION: dict[str, str] = {
    name: ATTENTION
    for name in (
        "value_dim_head",
        "one_kv_head",
        "kv_heads",
        "head_scale",
        "sparse_topk",
        "qk_norm",
        "qk_norm_groups",
        "qk_norm_scale",
        "qk_norm_dim_scale",
        "num_mem_kv",
        "add_zero_kv",
        "on_attn",
        "gate_values",
        "swiglu_values",
        "gate_value_heads",
        "talking_heads",
        "shared_kv",
        "tensor_product",
        "rotary_embed_values",
        "max_attend_past",
    )
}

#: Stack keywords of the seed design.
LATER_STACK: dict[str, str] = {
    **{
        name: POSITIONS
        for name in (
            "rotary_pos_emb",
            "rotary_emb_dim",
            "rotary_xpos",
            "rotary_xpos_scale_base",
            "rotary_interpolation_factor",
            "rotary_base_rescale_factor",
            "alibi_pos_bias",
            "alibi_num_heads",
            "rel_pos_bias",
            "rel_pos_num_buckets",
            "rel_pos_max_distance",
            "dynamic_pos_bias",
            "dynamic_pos_bias_log_distance",
            "dynamic_pos_bias_mlp_depth",
            "dynamic_pos_bias_norm",
        )
    },
    **{
        name: ATTENTION
        for name in (
            "residual_attn",
            "cross_residual_attn",
        )
    },
}

#: TransformerWrapper keywords of the seed design.
LATER_WRAPPER: dict[str, str] = {
    "attn_z_loss_weight": ATTENTION,
}

#: Forward keywords of the seed design (wrapper and stack).
LATER_FORWARD: dict[str, str] = {
    "seq_start_pos": POSITIONS,
    "return_attn_z_loss": ATTENTION,
    "attn_z_loss_weight": ATTENTION,
    "self_attn_kv_mask": POSITIONS,
    "rotary_pos_emb": POSITIONS,
    "cache_age": STRUCTURE,
}


def raise_if_later(
    owner: str, names: Iterable[str], registry: dict[str, str], prefix: str = ""
) -> None:
    """Raise NotImplementedError for the first name that is known but not implemented yet."""
    from .. import __version__

    for name in names:
        if name in registry:
            raise NotImplementedError(
                f"{owner}: keyword {prefix + name!r} ({registry[name]}) is not available yet "
                f"in anyformer {__version__}"
            )
