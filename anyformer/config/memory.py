"""MemoryOptions: memory tokens and Transformer-XL memories, shared by the token and the
continuous wrapper (their configs inherit these fields)."""

from __future__ import annotations

from dataclasses import dataclass

from .options import current_prefix, option

__all__ = ["MemoryOptions"]


@dataclass(frozen=True)
class MemoryOptions:
    """Memory options of a wrapper around an AttentionLayers stack."""

    num_memory_tokens: int | None = option(
        None,
        "learned memory / register tokens in front of the sequence, removed from the output",
        "https://arxiv.org/abs/2006.11527",
    )
    memory_tokens_interspersed_every: int | None = option(
        None,
        "insert the memory tokens again before every N-th position (causal stacks only; "
        "Hymba's meta tokens)",
        "https://arxiv.org/abs/2411.13676",
    )
    max_mem_len: int = option(
        0,
        "Transformer-XL: rows kept per layer by return_mems (0: all of memory + segment)",
        "https://arxiv.org/abs/1901.02860",
    )
    shift_mem_down: int = option(
        0,
        "enhanced recurrence: layer i reads the memory made by layer i + shift_mem_down",
        "https://arxiv.org/abs/2012.15688",
    )

    def check_memory(self, owner: str) -> None:
        """Validate the memory options (called from the inheriting config's __post_init__)."""
        p = current_prefix()
        for name in ("num_memory_tokens", "memory_tokens_interspersed_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{owner}: {p}{name} must be >= 1 (or None), got {value}")
        if self.memory_tokens_interspersed_every is not None and not self.num_memory_tokens:
            raise ValueError(
                f"{owner}: {p}memory_tokens_interspersed_every needs {p}num_memory_tokens >= 1"
            )
        for name in ("max_mem_len", "shift_mem_down"):
            if getattr(self, name) < 0:
                raise ValueError(f"{owner}: {p}{name} must be >= 0, got {getattr(self, name)}")

    @property
    def memory_token_count(self) -> int:
        return self.num_memory_tokens or 0
