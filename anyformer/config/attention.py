"""AttentionConfig: the options of one attention module (``attn_*`` / ``cross_attn_*``).

Which kernel runs is decided here, once: the fused ``F.scaled_dot_product_attention`` path
wherever the math allows, the explicit (materialised softmax) path only for the options that must
see the attention matrix (``explicit_reasons``). ``flash=True`` insists on the fused path, so it
cannot be combined with such an option.
"""

from __future__ import annotations

from dataclasses import dataclass

from .options import check_fields, current_prefix, option

__all__ = ["KERNELS", "AttentionConfig"]

#: Values of ``kernel``.
KERNELS = ("auto", "explicit")

_TALKING = "https://arxiv.org/abs/2003.02436"
_QK_NORM = "https://arxiv.org/abs/2010.04245"
_QK_DIM_SCALE = "https://arxiv.org/abs/2302.05442"
_MEM_KV = "https://arxiv.org/abs/1907.01470"
_ZERO_KV = "https://www.evanmiller.org/attention-is-off-by-one.html"
_ON_ATTN = "https://arxiv.org/abs/1908.06954"
_GATED = "https://www.nature.com/articles/s41586-021-03819-2"
_SWIGLU = "https://arxiv.org/abs/2002.05202"
_HEAD_GATES = "https://arxiv.org/abs/2306.12929"
_TENSOR_PRODUCT = "https://arxiv.org/abs/2208.06061"
_ROTARY = "https://arxiv.org/abs/2104.09864"


@dataclass(frozen=True)
class AttentionConfig:
    """Attention options; each field is one x-transformers ``attn_*`` keyword (plus ``kernel``,
    ``qkv_bias``, ``out_bias``)."""

    dim_head: int = option(64, "width of each attention head")
    dropout: float = option(0.0, "dropout on the attention probabilities")
    flash: bool = option(
        False,
        "insist on the fused F.scaled_dot_product_attention kernel (options that must see the "
        "attention matrix then raise); without it the fused kernel still runs wherever it can",
        "https://arxiv.org/abs/2205.14135",
    )
    kernel: str = option(
        "auto",
        "'auto': fused kernel wherever the math allows; 'explicit': always the materialised "
        "softmax path (same results; for inspection and tests)",
    )
    dim_context: int | None = option(
        None, "width of the keys/values input for cross-attention (default: dim)"
    )
    zero_init_output: bool = option(False, "zero-initialise the output projection")
    onnxable: bool = option(
        False,
        "ONNX-friendly causal mask (always satisfied: masks are built from aranges, never triu)",
    )
    qkv_bias: bool = option(
        False, "learned biases on the query/key/value projections (GPT-2, BERT)"
    )
    out_bias: bool = option(False, "learned bias on the output projection (GPT-2, BERT)")
    value_dim_head: int | None = option(
        None, "width of each value head (default: dim_head); the output projection reads it"
    )
    one_kv_head: bool = option(
        False, "multi-query attention: one key/value head shared by all query heads",
        "https://arxiv.org/abs/1911.02150",
    )  # fmt: skip
    kv_heads: int | None = option(
        None,
        "grouped-query attention: number of key/value heads (divides heads); query head h "
        "reads key/value head h // (heads // kv_heads)",
        "https://arxiv.org/abs/2305.13245",
    )
    shared_kv: bool = option(
        False, "values are the keys' projection (no value projection; needs value_dim_head == "
        "dim_head)",
    )  # fmt: skip
    head_scale: bool = option(
        False, "learned per-head scale of the head outputs (init 1)",
        "https://arxiv.org/abs/2110.09456",
    )  # fmt: skip
    sparse_topk: int | None = option(
        None,
        "keep the k largest logits of each query (after every mask), drop the rest",
        "https://arxiv.org/abs/1912.11637",
    )
    talking_heads: bool = option(
        False, "talking heads: mix the heads before and after the softmax (both halves)", _TALKING
    )
    pre_talking_heads: bool = option(
        False, "talking heads before the softmax only (learned heads x heads mix of logits)",
        _TALKING,
    )  # fmt: skip
    post_talking_heads: bool = option(
        False, "talking heads after the softmax only (learned heads x heads mix of weights)",
        _TALKING,
    )  # fmt: skip
    qk_norm: bool = option(
        False, "cosine-similarity attention: l2-normalised queries and keys, logits scaled by "
        "qk_norm_scale", _QK_NORM,
    )  # fmt: skip
    qk_norm_groups: int = option(
        1, "qk_norm: normalise each of this many groups of a head", _QK_NORM
    )
    qk_norm_scale: float = option(10.0, "qk_norm: the fixed logit scale", _QK_NORM)
    qk_norm_dim_scale: bool = option(
        False,
        "qk_norm: learned per-feature scales of the normalised queries and keys",
        _QK_DIM_SCALE,
    )
    num_mem_kv: int = option(
        0, "learned memory key/value pairs prepended to the keys of every query", _MEM_KV
    )
    add_zero_kv: bool = option(
        False, "prepend an all-zero key/value, so a query can attend to nothing", _ZERO_KV
    )
    on_attn: bool = option(
        False, "attention on attention: the output projection is Linear -> GLU", _ON_ATTN
    )
    gate_values: bool = option(
        False, "gate the merged head outputs by sigmoid(Linear(x)) (init open)", _GATED
    )
    swiglu_values: bool = option(False, "gate_values with SiLU instead of sigmoid", _SWIGLU)
    gate_value_heads: bool = option(
        False, "per-head sigmoid gate of the head outputs, from the input (init open)", _HEAD_GATES
    )
    tensor_product: bool = option(
        False,
        "tensor-product attention: head outputs o become o * r + o, r = Linear(x) per head",
        _TENSOR_PRODUCT,
    )
    rotary_embed_values: bool = option(
        False, "rotate the values as the keys (with rotary_pos_emb)", _ROTARY
    )
    max_attend_past: int | None = option(
        None, "self-attention: a query sees no key more than this many positions before it (a "
        "mask: still quadratic)",
    )  # fmt: skip

    def __post_init__(self) -> None:
        p = current_prefix("attn_")
        check_fields(self, "Attention", p)
        self._check_ranges(p)
        self._check_dependencies(p)
        if self.kernel not in KERNELS:
            raise ValueError(f"Attention: {p}kernel must be one of {KERNELS}, got {self.kernel!r}")
        explicit = self.explicit_reasons
        if self.flash and explicit:
            raise ValueError(
                f"Attention: {p}flash=True asks for the fused kernel, but {p}{explicit[0]} must "
                "see the attention matrix (explicit path): drop one of the two"
            )
        if self.flash and self.kernel == "explicit":
            raise ValueError(
                f"Attention: {p}flash=True and {p}kernel='explicit' ask for different kernels"
            )

    def _check_ranges(self, p: str) -> None:
        at_least = {
            "dim_head": 1,
            "dim_context": 1,
            "value_dim_head": 1,
            "kv_heads": 1,
            "sparse_topk": 1,
            "qk_norm_groups": 1,
            "num_mem_kv": 0,
            "max_attend_past": 0,
        }
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"Attention: {p}{name} must be >= {low}, got {value}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Attention: {p}dropout must be in [0, 1), got {self.dropout}")
        if not self.qk_norm_scale > 0:
            raise ValueError(f"Attention: {p}qk_norm_scale must be > 0, got {self.qk_norm_scale}")

    def _check_dependencies(self, p: str) -> None:
        if self.one_kv_head and self.kv_heads is not None:
            raise ValueError(
                f"Attention: set {p}one_kv_head=True (one key/value head) or {p}kv_heads, not both"
            )
        if self.shared_kv and self.value_dim_head not in (None, self.dim_head):
            raise ValueError(
                f"Attention: {p}shared_kv=True needs {p}value_dim_head == {p}dim_head "
                f"({self.dim_head}), got {self.value_dim_head}"
            )
        if self.swiglu_values and not self.gate_values:
            raise ValueError(f"Attention: {p}swiglu_values=True needs {p}gate_values=True")
        qk_extras = {
            "qk_norm_groups": 1,
            "qk_norm_scale": 10.0,
            "qk_norm_dim_scale": False,
        }
        changed = [n for n, d in qk_extras.items() if getattr(self, n) != d]
        if changed and not self.qk_norm:
            raise ValueError(f"Attention: {p}{changed[0]} was set but {p}qk_norm=False")
        if self.qk_norm:
            if self.dim_head % self.qk_norm_groups:
                raise ValueError(
                    f"Attention: {p}qk_norm_groups ({self.qk_norm_groups}) must divide "
                    f"{p}dim_head ({self.dim_head})"
                )
            if self.dim_head // self.qk_norm_groups <= 2:
                raise ValueError(
                    f"Attention: {p}qk_norm_groups={self.qk_norm_groups} leaves "
                    f"{self.dim_head // self.qk_norm_groups} features per group; use at least 3"
                )

    # ------------------------------------------------------------------ resolved values

    @property
    def value_dim(self) -> int:
        """Width of one value head."""
        return self.value_dim_head or self.dim_head

    def kv_heads_for(self, heads: int) -> int:
        """Number of key/value heads for `heads` query heads."""
        return 1 if self.one_kv_head else (self.kv_heads or heads)

    @property
    def uses_pre_talking_heads(self) -> bool:
        return self.talking_heads or self.pre_talking_heads

    @property
    def uses_post_talking_heads(self) -> bool:
        return self.talking_heads or self.post_talking_heads

    @property
    def num_prepended_keys(self) -> int:
        """Keys prepended to every query's keys (memory key/values, the zero key)."""
        return self.num_mem_kv + int(self.add_zero_kv)

    @property
    def explicit_reasons(self) -> tuple[str, ...]:
        """The options set here that must see the attention matrix (explicit path)."""
        reasons = []
        if self.talking_heads:
            reasons.append("talking_heads=True")
        if self.pre_talking_heads:
            reasons.append("pre_talking_heads=True")
        if self.post_talking_heads:
            reasons.append("post_talking_heads=True")
        if self.sparse_topk is not None:
            reasons.append(f"sparse_topk={self.sparse_topk}")
        return tuple(reasons)
