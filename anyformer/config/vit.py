"""ViTConfig and XTransformerConfig: the options of the two composite wrappers."""

from __future__ import annotations

from dataclasses import dataclass

from .options import check_fields, option

__all__ = ["ViTConfig", "XTransformerConfig"]


@dataclass(frozen=True)
class ViTConfig:
    """Options of ViTransformerWrapper (patches -> Encoder -> pooled class logits)."""

    image_size: int = option(None, "height = width of the input images, in pixels")
    patch_size: int = option(None, "side of the square patches", "https://arxiv.org/abs/2010.11929")
    channels: int = option(3, "input channels")
    num_classes: int | None = option(None, "classifier width (None: return embeddings)")
    post_emb_norm: bool = option(False, "LayerNorm after the patch embedding")
    num_register_tokens: int = option(
        0, "learned register tokens appended to the patches", "https://arxiv.org/abs/2309.16588"
    )
    emb_dropout: float = option(0.0, "dropout after the embeddings")
    use_cls_token: bool = option(
        False,
        "prepend a learned CLS token (with its own learned position); its output is the pooled "
        "feature the head reads, instead of the mean over the patches (original ViT)",
        "https://arxiv.org/abs/2010.11929",
    )
    patch_norm: bool = option(
        True,
        "LayerNorms before and after the patch projection (dual PatchNorm); False: the plain "
        "linear patch embedding of the original ViT (a stride-p convolution)",
        "https://arxiv.org/abs/2302.01327",
    )

    def __post_init__(self) -> None:
        check_fields(self, "ViTransformerWrapper")
        for name in ("image_size", "patch_size", "channels"):
            value = getattr(self, name)
            if value is None or value < 1:
                raise ValueError(f"ViTransformerWrapper: {name} must be an int >= 1, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ViTransformerWrapper: image_size ({self.image_size}) must be divisible by "
                f"patch_size ({self.patch_size})"
            )
        if self.num_register_tokens < 0:
            raise ValueError(
                "ViTransformerWrapper: num_register_tokens must be >= 0, "
                f"got {self.num_register_tokens}"
            )
        if not 0.0 <= self.emb_dropout < 1.0:
            raise ValueError(
                f"ViTransformerWrapper: emb_dropout must be in [0, 1), got {self.emb_dropout}"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_positions(self) -> int:
        """Rows of the learned position table: the patches, and the CLS token if any."""
        return self.num_patches + int(self.use_cls_token)


@dataclass(frozen=True)
class XTransformerConfig:
    """XTransformer's own options (each side's go to its TransformerWrapper and stack)."""

    dim: int = option(None, "model width of both sides")
    tie_token_emb: bool = option(False, "encoder and decoder share the token embedding")
    ignore_index: int = option(-100, "target id the decoder's loss skips")
    pad_value: int = option(0, "token generate pads finished rows with")
    cross_attn_tokens_dropout: float = option(
        0.0,
        "fraction of encoder tokens dropped from the context while training",
        "https://arxiv.org/abs/2202.07765",
    )

    def __post_init__(self) -> None:
        check_fields(self, "XTransformer")
        if self.dim is None or self.dim < 1:
            raise ValueError(f"XTransformer: dim must be an int >= 1, got {self.dim!r}")
        if not 0.0 <= self.cross_attn_tokens_dropout < 1.0:
            raise ValueError(
                "XTransformer: cross_attn_tokens_dropout must be in [0, 1), "
                f"got {self.cross_attn_tokens_dropout}"
            )
