"""PoolingOptions: one vector per sequence out of a wrapper (CLS tokens or the mean), shared by
the token and the continuous wrapper (their configs inherit these fields)."""

from __future__ import annotations

from dataclasses import dataclass

from .options import current_prefix, option

__all__ = ["PoolingOptions"]


@dataclass(frozen=True)
class PoolingOptions:
    """Pooling options of a wrapper around an AttentionLayers stack."""

    use_cls_token: bool = option(
        False,
        "learned CLS token(s) in front of the sequence; the output is theirs (b, [k,] ...) "
        "instead of one per position (BERT)",
        "https://arxiv.org/abs/1810.04805",
    )
    num_cls_tokens: int = option(
        1, "number of CLS tokens with use_cls_token (one: the output has no token axis)"
    )
    average_pool_embed: bool = option(
        False,
        "the output is the (masked) mean over the positions (b, ...) instead of one per position",
    )

    def check_pooling(self, owner: str) -> None:
        """Validate the pooling options (called from the inheriting config's __post_init__)."""
        p = current_prefix()
        k = self.num_cls_tokens
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"{owner}: {p}num_cls_tokens must be an int >= 1, got {k!r}")
        if self.use_cls_token and self.average_pool_embed:
            raise ValueError(
                f"{owner}: pass at most one of {p}use_cls_token=True and "
                f"{p}average_pool_embed=True (both pool the output), got both"
            )

    @property
    def pools(self) -> bool:
        """Whether the output is one row per sequence (or per CLS token), not per position."""
        return self.use_cls_token or self.average_pool_embed
