"""ViTransformerWrapper: image patches -> Encoder -> mean pool (or CLS token) -> class logits."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config.vit import ViTConfig
from ..nn.norms import LayerNorm
from ..serialization import PretrainedMixin
from ..stack.layers import AttentionLayers
from .configured import StackedModel

__all__ = ["ViTransformerWrapper"]


class ViTransformerWrapper(StackedModel, PretrainedMixin, nn.Module, folder_model=True):
    """Vision transformer (SimpleViT https://arxiv.org/abs/2205.01580, dual patch norm
    https://arxiv.org/abs/2302.01327, register tokens https://arxiv.org/abs/2309.16588; with
    ``use_cls_token=True, patch_norm=False`` the original ViT https://arxiv.org/abs/2010.11929)."""

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        attn_layers: AttentionLayers,
        channels: int = 3,
        num_classes: int | None = None,
        post_emb_norm: bool = False,
        num_register_tokens: int = 0,
        emb_dropout: float = 0.0,
        use_cls_token: bool = False,
        patch_norm: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(attn_layers, AttentionLayers):
            raise TypeError(
                f"ViTransformerWrapper: attn_layers must be an Encoder, got {type(attn_layers).__name__}"
            )
        config = ViTConfig(
            image_size=image_size,
            patch_size=patch_size,
            channels=channels,
            num_classes=num_classes,
            post_emb_norm=post_emb_norm,
            num_register_tokens=num_register_tokens,
            emb_dropout=emb_dropout,
            use_cls_token=use_cls_token,
            patch_norm=patch_norm,
        )
        self._setup(config, attn_layers)

    config_class = ViTConfig

    def _setup(self, config: ViTConfig, attn_layers: AttentionLayers) -> None:
        self.config = config
        dim = attn_layers.dim
        self.image_size, self.patch_size = config.image_size, config.patch_size
        self.channels = config.channels
        patch_dim = config.channels * config.patch_size**2
        self.pos_embedding = nn.Parameter(torch.empty(1, config.num_positions, dim))
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim)) if config.use_cls_token else None
        self.register_tokens = (
            nn.Parameter(torch.empty(config.num_register_tokens, dim))
            if config.num_register_tokens
            else None
        )
        # the projection is always patch_to_embedding.1 (the norms are Identity without patch_norm)
        norm = config.patch_norm
        self.patch_to_embedding = nn.Sequential(
            LayerNorm(patch_dim) if norm else nn.Identity(),
            nn.Linear(patch_dim, dim),
            LayerNorm(dim) if norm else nn.Identity(),
        )
        self.post_emb_norm = LayerNorm(dim) if config.post_emb_norm else nn.Identity()
        self.dropout = nn.Dropout(config.emb_dropout)
        self.attn_layers = attn_layers
        self.mlp_head = (
            nn.Linear(dim, config.num_classes) if config.num_classes is not None else None
        )
        self._reset_own_parameters()

    def _reset_own_parameters(self) -> None:
        """Positions, the CLS token and registers start as N(0, 0.02^2)."""
        nn.init.normal_(self.pos_embedding, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=0.02)

    def patchify(self, img: Tensor) -> Tensor:
        """(b, c, H, W) -> (b, H/p * W/p, p * p * c)."""
        b, c, height, width = img.shape
        p = self.patch_size
        x = img.reshape(b, c, height // p, p, width // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (height // p) * (width // p), p * p * c)

    def forward(
        self,
        img: Tensor,
        return_embeddings: bool = False,
        return_logits_and_embeddings: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """img (b, channels, H, W) -> logits (b, num_classes) (without a head: the pooled
        features (b, dim): the mean over the patches, or the CLS token's output), or with
        return_embeddings the embeddings (b, n, dim) (with use_cls_token: the CLS token's first,
        then the n - 1 patches')."""
        self._check_image(img)
        if return_embeddings and return_logits_and_embeddings:
            raise ValueError(
                "pass at most one of return_embeddings and return_logits_and_embeddings"
            )
        x = self.patch_to_embedding(self.patchify(img))
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embedding[:, : x.shape[1]]
        x = self.dropout(self.post_emb_norm(x))
        n = x.shape[1]
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(x.shape[0], -1, -1)
            x = torch.cat((x, registers), dim=1)
        embed = self.attn_layers(x)[:, :n]
        if return_embeddings:
            return embed
        # without a head: the pooled features, as x-transformers
        pooled = embed[:, 0] if self.cls_token is not None else embed.mean(dim=1)
        logits = pooled if self.mlp_head is None else self.mlp_head(pooled)
        return (logits, embed) if return_logits_and_embeddings else logits

    def _check_image(self, img: Tensor) -> None:
        p, size = self.patch_size, self.image_size
        ok = (
            isinstance(img, Tensor)
            and img.is_floating_point()
            and img.ndim == 4
            and img.shape[0] >= 1
            and img.shape[1] == self.channels
            and img.shape[2] >= p
            and img.shape[3] >= p
            and img.shape[2] % p == 0
            and img.shape[3] % p == 0
            and img.shape[2] * img.shape[3] <= size * size
        )
        if not ok:
            got = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(
                f"img must be a float tensor of shape (batch, {self.channels}, H, W) with "
                f"batch >= 1, H, W positive multiples of patch_size={p} and H*W <= "
                f"{size}*{size}, got {got}"
            )
