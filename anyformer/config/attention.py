"""AttentionConfig: the options of one attention module (``attn_*`` / ``cross_attn_*``).

Which kernel runs is decided here, once: the fused ``F.scaled_dot_product_attention`` path
wherever the math allows, the explicit (materialised softmax) path only for the options that must
see the attention matrix (``explicit_reasons``). ``flash=True`` insists on the fused path, so it
cannot be combined with such an option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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
_GEMMA2 = "https://arxiv.org/abs/2408.00118"
_OUTPUT_GATE = "https://arxiv.org/abs/2505.06708"
_MLA = "https://arxiv.org/abs/2405.04434"
_FOX = "https://arxiv.org/abs/2503.02130"


@dataclass(frozen=True)
class AttentionConfig:
    """Attention options; each field is one x-transformers ``attn_*`` keyword (plus ``kernel``,
    ``qkv_bias``, ``out_bias``)."""

    dim_head: int = option(64, "width of each attention head")
    dropout: float = option(0.0, "dropout on the attention probabilities")
    scale: float | None = option(
        None,
        "logit scale q.k * scale (None: dim_head ** -0.5); T5 uses 1 (its 1/sqrt(d) is folded "
        "into the initialisation). A T5 relative bias on the stack is then multiplied by "
        "1 / scale (x-transformers' dim_head ** 0.5 under the default scale)",
        "https://arxiv.org/abs/1910.10683",
    )
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
    qk_rmsnorm: bool = option(
        False,
        "RMSNorm on every query and key head before rotary, with a learned gain per head and "
        "feature (x-transformers 2.x; Qwen3, OLMo 2); the logit scale stays dim_head ** -0.5",
        _QK_DIM_SCALE,
    )
    qk_rmsnorm_eps: float = option(
        0.0,
        "qk_rmsnorm: epsilon added to the mean square (0 as x-transformers 2.x; Hugging Face "
        "models use their rms_norm_eps)",
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
    sliding_window: int | tuple[int | None, ...] | None = option(
        None,
        "causal self-attention: the query at position i sees the keys j with i - W < j <= i "
        "(W keys, itself included: Mistral / Gemma 2 `sliding_window`); O(n W) on the fused "
        "path, a ring buffer of W keys in the KV cache. A tuple gives each self-attention layer "
        "its window in turn, repeated over the layers (None: global), e.g. (4096, None)",
        "https://arxiv.org/abs/2004.05150",
    )
    softclamp_logits: bool = option(
        False,
        "soft-cap the attention logits (after any position bias, before masking) at "
        "logit_softclamp_value: v * tanh(logits / v) (Gemma 2; explicit path)",
        _GEMMA2,
    )
    logit_softclamp_value: float = option(
        50.0, "softclamp_logits: the cap v (> 0; Gemma 2: 50)", _GEMMA2
    )
    output_gate: bool = option(
        False,
        "gate the merged head outputs o by sigmoid(W o) before the output projection (W bias-"
        "less, zero at init: gates start at 1/2; x-transformers 2.x)",
        _OUTPUT_GATE,
    )
    output_gate_headwise: bool = option(
        False, "output_gate: one gate per head instead of one per feature", _OUTPUT_GATE
    )
    head_learned_sink: bool = option(
        False,
        "a learned logit per head joins every softmax denominator (attention sink, gpt-oss); "
        "a zero key with a bias, so the fused path stays",
        "https://arxiv.org/abs/2309.17453",
    )

    differential: bool = option(
        False,
        "differential attention: two softmax maps per head (query/key sub-heads of width "
        "dim_head), the second weighted by a learned lambda and subtracted, per-head RMSNorm, "
        "times 1 - lambda_init (value width default 2 * dim_head; fused path, two calls)",
        "https://arxiv.org/abs/2410.05258",
    )

    use_latent_q: bool = option(
        False, "multi-head latent attention: queries from a low-rank latent of width "
        "dim_latent_q", _MLA,
    )  # fmt: skip
    dim_latent_q: int | None = option(None, "use_latent_q: the query latent's width", _MLA)
    use_latent_kv: bool = option(
        False,
        "multi-head latent attention: keys and values from one latent of width dim_latent_kv; "
        "self-attention caches only the latent (and the decoupled rotary key heads)",
        _MLA,
    )
    dim_latent_kv: int | None = option(None, "use_latent_kv: the key/value latent's width", _MLA)
    latent_rope_subheads: int | None = option(
        None,
        "use_latent_kv: the last this many key heads come from the input, not the latent, and "
        "only they (and the last as many query heads) are rotated (decoupled rotary)",
        _MLA,
    )
    data_dependent_alibi: bool = option(
        False,
        "causal self-attention: a learned per-token, per-head forget gate f = sigmoid(Linear(x)); "
        "query i adds sum_{j < s <= i} log f_s to its logit for key j (Forgetting Transformer)",
        _FOX,
    )
    data_dependent_alibi_per_row: bool = option(
        False,
        "data_dependent_alibi: a gate per (query, key) pair, f_ij = sigmoid(q_i . k_j / sqrt(d)) "
        "from small query/key heads; query i adds sum_{j <= s < i} log f_is (x-transformers 2.x)",
        _FOX,
    )
    data_dependent_alibi_per_row_dim_head: int = option(
        8, "data_dependent_alibi_per_row: width d of the gates' query/key heads", _FOX
    )
    data_dependent_alibi_kwargs: dict[str, Any] | None = option(
        None,
        "data_dependent_alibi: {'bias_init': 5.0 (the gate bias at init; not per row), "
        "'post_log_scale': 1.0 (scales the log gates)}",
        _FOX,
    )

    def __post_init__(self) -> None:
        p = current_prefix("attn_")
        if isinstance(self.sliding_window, list):
            object.__setattr__(self, "sliding_window", tuple(self.sliding_window))
        check_fields(self, "Attention", p)
        self._check_ranges(p)
        self._check_data_dependent_alibi(p)
        self._check_sliding_window(p)
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

    def _check_data_dependent_alibi(self, p: str) -> None:
        if self.data_dependent_alibi and self.sliding_window is not None:
            raise ValueError(
                f"Attention: {p}data_dependent_alibi=True and {p}sliding_window: the forget "
                "gates' running sums are kept for every cached key, a window keeps only the last "
                "W (drop one of the two)"
            )
        if self.data_dependent_alibi_per_row and not self.data_dependent_alibi:
            raise ValueError(
                f"Attention: {p}data_dependent_alibi_per_row=True needs "
                f"{p}data_dependent_alibi=True"
            )
        if self.data_dependent_alibi_per_row_dim_head < 1:
            raise ValueError(
                f"Attention: {p}data_dependent_alibi_per_row_dim_head must be >= 1, got "
                f"{self.data_dependent_alibi_per_row_dim_head}"
            )
        kwargs = self.data_dependent_alibi_kwargs
        if kwargs is None:
            return
        if not self.data_dependent_alibi:
            raise ValueError(
                f"Attention: {p}data_dependent_alibi_kwargs was set but "
                f"{p}data_dependent_alibi=False"
            )
        valid: tuple[str, ...] = ("bias_init", "post_log_scale")
        if self.data_dependent_alibi_per_row:
            valid = ("post_log_scale",)
        for key, value in kwargs.items():
            if key not in valid:
                raise ValueError(
                    f"Attention: {p}data_dependent_alibi_kwargs takes {valid}"
                    f"{' (per row)' if len(valid) == 1 else ''}, got {key!r}"
                )
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(
                    f"Attention: {p}data_dependent_alibi_kwargs[{key!r}] must be a float, got "
                    f"{value!r} ({type(value).__name__})"
                )
            if not math.isfinite(value):
                raise ValueError(
                    f"Attention: {p}data_dependent_alibi_kwargs[{key!r}] must be finite, got "
                    f"{value!r}"
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
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"Attention: {p}scale must be > 0, got {self.scale}")

    def _check_sliding_window(self, p: str) -> None:
        window = self.sliding_window
        windows = window if isinstance(window, tuple) else (window,)
        if isinstance(window, tuple) and not window:
            raise ValueError(f"Attention: {p}sliding_window must not be an empty tuple")
        for w in windows:
            if w is not None and w < 1:
                raise ValueError(
                    f"Attention: {p}sliding_window windows must be >= 1 (or None: global), "
                    f"got {window!r}"
                )
        if window is not None and self.max_attend_past is not None:
            raise ValueError(
                f"Attention: set {p}sliding_window or {p}max_attend_past, not both "
                f"(sliding_window=W is max_attend_past=W-1 computed in O(n W))"
            )

    def window_of_layer(self, index: int) -> int | None:
        """The sliding window of self-attention layer `index` (a tuple repeats over layers)."""
        window = self.sliding_window
        return window[index % len(window)] if isinstance(window, tuple) else window

    def _check_qk_rmsnorm(self, p: str) -> None:
        if self.qk_rmsnorm_eps != 0.0 and not self.qk_rmsnorm:
            raise ValueError(f"Attention: {p}qk_rmsnorm_eps was set but {p}qk_rmsnorm=False")
        if self.qk_rmsnorm and self.qk_norm:
            raise ValueError(
                f"Attention: {p}qk_norm (l2 norm, fixed scale) and {p}qk_rmsnorm (RMSNorm, "
                "learned gains) both normalise queries and keys: choose one"
            )
        if not self.qk_rmsnorm_eps >= 0:
            raise ValueError(
                f"Attention: {p}qk_rmsnorm_eps must be >= 0, got {self.qk_rmsnorm_eps}"
            )

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
        self._check_qk_rmsnorm(p)
        self._check_modern(p)
        if self.qk_norm and self.scale is not None:
            raise ValueError(
                f"Attention: {p}scale and {p}qk_norm=True both set the logit scale (qk_norm uses "
                f"{p}qk_norm_scale): drop one"
            )
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

    def _check_modern(self, p: str) -> None:
        """Softclamped logits, the output gate and the attention sink."""
        self._check_latent(p)
        if self.differential:
            clashing = [
                name
                for name in (
                    "qk_norm", "qk_rmsnorm", "num_mem_kv", "add_zero_kv", "head_learned_sink",
                    "talking_heads", "pre_talking_heads", "post_talking_heads", "shared_kv",
                    "rotary_embed_values",
                )
                if getattr(self, name)
            ]  # fmt: skip
            if clashing:
                raise ValueError(
                    f"Attention: {p}differential=True cannot be combined with {p}{clashing[0]} "
                    "(not supported with two maps per head)"
                )
        if not self.logit_softclamp_value > 0:
            raise ValueError(
                f"Attention: {p}logit_softclamp_value must be > 0, got {self.logit_softclamp_value}"
            )
        if self.logit_softclamp_value != 50.0 and not self.softclamp_logits:
            raise ValueError(
                f"Attention: {p}logit_softclamp_value was set but {p}softclamp_logits=False"
            )
        if self.output_gate_headwise and not self.output_gate:
            raise ValueError(f"Attention: {p}output_gate_headwise=True needs {p}output_gate=True")
        if self.output_gate and self.gate_values:
            raise ValueError(
                f"Attention: {p}output_gate=True with {p}gate_values=True (x-transformers 2.x adds "
                "the two gates' logits) is not supported: choose one"
            )
        if self.head_learned_sink and self.softclamp_logits:
            raise ValueError(
                f"Attention: {p}head_learned_sink=True with {p}softclamp_logits=True is not "
                "supported (the sink logit must not be clamped): choose one"
            )

    def _check_latent(self, p: str) -> None:
        """Multi-head latent attention."""
        for use, width in (("use_latent_q", "dim_latent_q"), ("use_latent_kv", "dim_latent_kv")):
            value = getattr(self, width)
            if getattr(self, use) != (value is not None):
                raise ValueError(
                    f"Attention: {p}{use}=True and {p}{width} go together (got {p}{use}="
                    f"{getattr(self, use)}, {p}{width}={value!r})"
                )
            if value is not None and value < 1:
                raise ValueError(f"Attention: {p}{width} must be >= 1, got {value}")
        subheads = self.latent_rope_subheads
        if subheads is not None and (not self.use_latent_kv or subheads < 1):
            raise ValueError(
                f"Attention: {p}latent_rope_subheads must be >= 1 and needs {p}use_latent_kv=True, "
                f"got {subheads!r}"
            )
        if self.use_latent_q or self.use_latent_kv:
            clashing = [
                name
                for name in (
                    "qkv_bias", "shared_kv", "qk_norm", "qk_rmsnorm", "rotary_embed_values",
                    "differential", "one_kv_head", "kv_heads",
                )
                if getattr(self, name)
            ]  # fmt: skip
            if clashing:
                raise ValueError(
                    f"Attention: latent attention ({p}use_latent_q / {p}use_latent_kv) cannot be "
                    f"combined with {p}{clashing[0]}"
                )

    # ------------------------------------------------------------------ resolved values

    @property
    def value_dim(self) -> int:
        """Width of one value head."""
        if self.value_dim_head:
            return self.value_dim_head
        return 2 * self.dim_head if self.differential else self.dim_head

    @property
    def logit_scale(self) -> float:
        """The factor q.k is multiplied by: qk_norm_scale with qk_norm, else scale, else
        dim_head ** -0.5."""
        if self.qk_norm:
            return self.qk_norm_scale
        return self.dim_head**-0.5 if self.scale is None else self.scale

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
        if self.softclamp_logits:
            reasons.append("softclamp_logits=True")
        return tuple(reasons)
