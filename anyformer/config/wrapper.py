"""WrapperConfig: the options of TransformerWrapper (embeddings and output head)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .later import LATER_WRAPPER
from .memory import MemoryOptions
from .options import check_fields, current_prefix, option
from .pooling import PoolingOptions

__all__ = ["WrapperConfig", "split_keywords", "wrapper_keywords"]


@dataclass(frozen=True)
class WrapperConfig(MemoryOptions, PoolingOptions):
    """Embedding and head options of a token model."""

    num_tokens: int = option(None, "vocabulary size of the token embedding")
    max_seq_len: int = option(
        None, "longest sequence the absolute positional embedding covers (0: none)"
    )
    emb_dim: int | None = option(None, "embedding width when it differs from the model width")
    emb_dropout: float = option(0.0, "dropout after the embeddings")
    attn_z_loss_weight: float = option(
        1e-4,
        "default weight of the attention z-loss that forward(return_attn_z_loss=True) returns "
        "(x-transformers accepts this keyword and ignores it)",
        "https://arxiv.org/abs/2202.08906",
    )
    post_emb_norm: bool = option(False, "LayerNorm right after the embeddings (BLOOM)")
    post_emb_norm_bias: bool = option(False, "the post-embedding LayerNorm has a bias (BERT)")
    post_emb_norm_eps: float = option(1e-5, "epsilon of the post-embedding LayerNorm")
    tie_embedding: bool = option(
        False, "output head reuses the token embedding", "https://arxiv.org/abs/1608.05859"
    )
    logits_dim: int | None = option(None, "output head width (default: num_tokens)")
    use_abs_pos_emb: bool = option(True, "learned absolute positional embedding")
    scaled_sinu_pos_emb: bool = option(
        False,
        "sinusoidal positional embedding with one learned scale",
        "https://arxiv.org/abs/2202.10447",
    )
    l2norm_embed: bool = option(
        False, "l2-normalise token and positional embeddings, tiny init (fixnorm)"
    )
    emb_frac_gradient: float = option(
        1.0,
        "fraction of the gradient that reaches the embeddings",
        "https://arxiv.org/abs/2105.13290",
    )
    return_only_embed: bool = option(False, "no output head: forward returns embeddings")
    embed_num_tokens: dict = option(
        {}, "extra embeddings summed into the input, name -> vocabulary size (BERT token types)"
    )
    embed_ids_default: dict = option(
        {},
        "extra embeddings whose ids forward's embed_ids may omit, name -> the id every token "
        "gets then (Hugging Face BERT: {'token_type': 0}); anyformer's own keyword",
    )

    logit_softclamp_value: float | None = option(
        None,
        "soft-cap the output logits at v: v * tanh(logits / v) (Gemma 2's "
        "final_logit_softcapping, 30); None: no cap. anyformer's own keyword (not in "
        "x-transformers)",
        "https://arxiv.org/abs/2408.00118",
    )

    token_emb_scale: float | None = option(
        None,
        "multiply the token embeddings by this value, rounded to the model's dtype first "
        "(Gemma: sqrt(dim)); None: unscaled. anyformer's own keyword (not in x-transformers)",
        "https://arxiv.org/abs/2403.08295",
    )

    input_not_include_cache: bool = option(
        False,
        "default of forward's input_not_include_cache: with cache=, x holds only the new tokens",
    )

    def __post_init__(self) -> None:
        p = current_prefix()
        check_fields(self, "TransformerWrapper", p)
        self.check_pooling("TransformerWrapper")
        scale = self.token_emb_scale
        if scale is not None and not scale > 0:
            raise ValueError(f"TransformerWrapper: {p}token_emb_scale must be > 0, got {scale}")
        if self.logit_softclamp_value is not None and not self.logit_softclamp_value > 0:
            raise ValueError(
                f"TransformerWrapper: {p}logit_softclamp_value must be > 0 (or None), got "
                f"{self.logit_softclamp_value}"
            )
        self.check_memory("TransformerWrapper")
        if self.num_tokens is None or self.num_tokens < 1:
            raise ValueError(
                f"TransformerWrapper: {p}num_tokens must be an int >= 1, got {self.num_tokens!r}"
            )
        if self.max_seq_len is None or self.max_seq_len < 0:
            raise ValueError(
                f"TransformerWrapper: {p}max_seq_len must be an int >= 0, got {self.max_seq_len!r}"
            )
        for name in ("emb_dim", "logits_dim"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"TransformerWrapper: {p}{name} must be >= 1, got {value}")
        if not self.post_emb_norm_eps > 0:
            raise ValueError(
                f"TransformerWrapper: {p}post_emb_norm_eps must be > 0, got "
                f"{self.post_emb_norm_eps}"
            )
        if not 0.0 <= self.emb_dropout < 1.0:
            raise ValueError(
                f"TransformerWrapper: {p}emb_dropout must be in [0, 1), got {self.emb_dropout}"
            )
        if not 0.0 < self.emb_frac_gradient <= 1.0:
            raise ValueError(
                f"TransformerWrapper: {p}emb_frac_gradient must be in (0, 1], "
                f"got {self.emb_frac_gradient}"
            )
        for name, size in self.embed_num_tokens.items():
            if not isinstance(name, str) or not isinstance(size, int) or size < 1:
                raise ValueError(
                    f"TransformerWrapper: {p}embed_num_tokens must map names (str) to vocabulary "
                    f"sizes (int >= 1), got {name!r}: {size!r}"
                )
        for name, default in self.embed_ids_default.items():
            size = self.embed_num_tokens.get(name)
            if size is None or not isinstance(default, int) or not 0 <= default < size:
                raise ValueError(
                    f"TransformerWrapper: {p}embed_ids_default must map names of "
                    f"{p}embed_num_tokens ({sorted(self.embed_num_tokens)}) to an id in [0, "
                    f"size), got {name!r}: {default!r}"
                )

    @property
    def has_abs_pos_emb(self) -> bool:
        return self.max_seq_len > 0 and self.use_abs_pos_emb


def wrapper_keywords() -> tuple[str, ...]:
    """The keywords of TransformerWrapper's own options (known-but-later ones included)."""
    return (*WrapperConfig.__dataclass_fields__, *LATER_WRAPPER)


def split_keywords(
    keywords: Mapping[str, Any], wrapper_names: Collection[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Wrapper and stack keywords written side by side -> (the wrapper's, the stack's).

    A name among ``wrapper_names`` (default: :func:`wrapper_keywords`) goes to the wrapper,
    every other one to the stack, whose parser checks it.
    """
    names = set(wrapper_keywords() if wrapper_names is None else wrapper_names)
    wrapper = {k: v for k, v in keywords.items() if k in names}
    return wrapper, {k: v for k, v in keywords.items() if k not in names}
