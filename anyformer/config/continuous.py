"""ContinuousConfig: the options of ContinuousTransformerWrapper (vectors in, vectors out)."""

from __future__ import annotations

from dataclasses import dataclass

from .memory import MemoryOptions
from .options import check_fields, option
from .pooling import PoolingOptions

__all__ = ["ContinuousConfig"]


@dataclass(frozen=True)
class ContinuousConfig(MemoryOptions, PoolingOptions):
    """Input/output projections and embeddings of a model over real-valued sequences."""

    max_seq_len: int = option(
        None, "longest sequence the absolute positional embedding covers (0: none)"
    )
    dim_in: int | None = option(None, "input width, projected to the model width (None: same)")
    dim_out: int | None = option(None, "output width, projected from the model width (None: same)")
    emb_dropout: float = option(0.0, "dropout after the input embedding")
    post_emb_norm: bool = option(False, "LayerNorm right after the input embedding")
    use_abs_pos_emb: bool = option(True, "learned absolute positional embedding")
    scaled_sinu_pos_emb: bool = option(
        False,
        "sinusoidal positional embedding with one learned scale",
        "https://arxiv.org/abs/2202.10447",
    )

    use_identity_if_same_dim: bool = option(
        False,
        "no input / output projection where dim_in / dim_out equals the model width "
        "(x-transformers 2.x)",
    )

    probabilistic: bool = option(
        False,
        "predict a Gaussian per output channel: forward returns stack((mean, variance)) "
        "(2, b, n, dim_out) from a 2 * dim_out projection (mean, log-variance interleaved); "
        "ContinuousAutoregressiveWrapper then trains with the Gaussian NLL and samples "
        "(x-transformers 2.x)",
    )

    def __post_init__(self) -> None:
        owner = "ContinuousTransformerWrapper"
        check_fields(self, owner)
        self.check_memory(owner)
        self.check_pooling(owner)
        if self.max_seq_len is None or self.max_seq_len < 0:
            raise ValueError(f"{owner}: max_seq_len must be an int >= 0, got {self.max_seq_len!r}")
        for name in ("dim_in", "dim_out"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
        if not 0.0 <= self.emb_dropout < 1.0:
            raise ValueError(f"{owner}: emb_dropout must be in [0, 1), got {self.emb_dropout}")

    @property
    def has_abs_pos_emb(self) -> bool:
        return self.max_seq_len > 0 and self.use_abs_pos_emb
