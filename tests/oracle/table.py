"""The oracle table: configurations built in anyformer and in x-transformers 1.28.2.

A row is (id, kind, shared keywords, optional per-side overrides, inputs, known-defect note).
Every row is built on both sides from the same keywords, the weights are copied through the
converter and ``test_oracle.py`` checks logits, loss, gradients and greedy decoding. A later
issue that adds a keyword adds rows here (and, if the layouts differ, a rule in
``anyformer/convert/x_transformers.py``).

Kinds (what is built, and how it is driven):

- ``decoder``: TransformerWrapper(Decoder); loss through AutoregressiveWrapper, greedy decoding.
- ``encoder``: TransformerWrapper(Encoder); cross-entropy on the logits.
- ``prefix``: TransformerWrapper(PrefixDecoder) called with ``prefix_attn_len``; cross-entropy.
- ``cross``: TransformerWrapper(Decoder(cross_attend=True)) with a context (and context mask);
  loss through AutoregressiveWrapper, greedy decoding.
- ``cross_attender``: TransformerWrapper(CrossAttender) with a context; cross-entropy.
- ``vit``: ViTransformerWrapper(Encoder); cross-entropy on the class logits (mean square of the
  embeddings without a head).
- ``xtransformer``: XTransformer (``wrapper`` holds all its keywords); its own loss, greedy
  decoding through ``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Stack keywords every row starts from (a row's ``stack`` overrides them).
BASE_STACK: dict[str, Any] = dict(dim=16, depth=2, heads=2, attn_dim_head=8)
#: TransformerWrapper keywords every token row starts from.
BASE_WRAPPER: dict[str, Any] = dict(num_tokens=32, max_seq_len=48)
#: ViTransformerWrapper keywords every vit row starts from.
BASE_VIT: dict[str, Any] = dict(image_size=8, patch_size=4, num_classes=5)
#: ContinuousTransformerWrapper keywords every continuous row starts from.
BASE_CONTINUOUS: dict[str, Any] = dict(max_seq_len=48, dim_in=6, dim_out=6)
#: XTransformer keywords every xtransformer row starts from.
BASE_XTRANSFORMER: dict[str, Any] = dict(
    dim=16,
    enc_num_tokens=32,
    enc_max_seq_len=48,
    enc_depth=2,
    enc_heads=2,
    enc_attn_dim_head=8,
    dec_num_tokens=32,
    dec_max_seq_len=48,
    dec_depth=2,
    dec_heads=2,
    dec_attn_dim_head=8,
)


@dataclass(frozen=True)
class Defect:
    """A defect of x-transformers 1.28.2 that anyformer fixes (reproduced by running 1.28.2)."""

    note: str
    #: the oracle checks ("logits", "loss", "generate") that still hold exactly on its rows;
    #: test_oracle.py has one test per defect that asserts exactly the difference it makes
    holds: tuple[str, ...] = ()


DEFECTS: dict[str, Defect] = {
    "shift_tokens_cache": Defect(
        "shift_tokens with the KV cache: 1.28.2 shifts only the new token of a cached step, so "
        "the channel groups it should take from earlier tokens are zeros and cached greedy "
        "decoding departs from uncached; anyformer's token shift reads the earlier rows from "
        "the cache and matches the uncached decoding",
        holds=("logits", "loss"),
    ),
    "final_norm_ignored": Defect(
        "pre_norm_has_final_norm=False is ignored: 1.28.2 builds and applies a final LayerNorm "
        "anyway (still in 2.0, fixed in a later 2.x); its logits are ours with that norm applied to "
        "the "
        "last hidden state",
    ),
    "glu_bias_kept": Defect(
        "ff_no_bias=True keeps the bias of the GLU input projection; 1.28.2's logits are ours "
        "with that bias added to the projection (equal when it is zero, which is what "
        "to_x_transformers_state_dict writes)",
        holds=("logits", "loss", "generate"),
    ),
    "cache_trim_without_positions": Defect(
        "max_seq_len=0 (no absolute positions) with the KV cache: 1.28.2's generate trims the "
        "cache to its last max_seq_len - 1 = -1 entries, i.e. drops the oldest key at every "
        "step, so cached greedy decoding departs from uncached; without that trim it matches",
        holds=("logits", "loss"),
    ),
    "sparse_topk_inverted_and_leaks": Defect(
        "attn_sparse_topk=k: 1.28.2 masks out the k largest logits of each row and keeps the "
        "others (its comparison is the wrong way round), and picks them before the causal mask, so "
        "future keys take part; anyformer keeps the k largest logits among the visible keys",
    ),
    "rotary_dim_floor_32": Defect(
        "rotary_emb_dim below 32 is raised to 32: 1.28.2 builds its rotary embedding with "
        "max(rotary_emb_dim, 32) dimensions (2.x honours the keyword); its model built with "
        "rotary_emb_dim=16 is ours built with rotary_emb_dim=32 (the row builds them so)",
        holds=("logits", "loss", "generate"),
    ),
    "dynamic_bias_cannot_cache": Defect(
        "dynamic_pos_bias: 1.28.2's cached decoding fails with a bare AssertionError (its bias "
        "module asserts as many queries as keys); anyformer decodes with the cache and matches "
        "1.28.2's uncached decoding",
        holds=("logits", "loss"),
    ),
    "empty_row_attends_everything": Defect(
        "attn_flash=False: a query with no key to attend to (a context row that is all masked) "
        "gets the mean of all the masked values in 1.28.2, where anyformer (and 1.28.2's own "
        "flash path on torch >= 2.5) gives zeros",
    ),
}

#: Differences that are not defects: behaviour on positions no loss or output depends on.
NOTES: dict[str, str] = {
    "padded_queries": (
        "with a padding mask, 1.28.2 zeroes the attention outputs at padded query positions; "
        "anyformer computes them as usual. Kept positions never see them (they are masked as "
        "keys), so only the logits at padded positions differ, by exactly that zeroing"
    ),
}


@dataclass(frozen=True)
class Row:
    """One configuration of the oracle."""

    id: str
    kind: str
    stack: dict[str, Any] = field(default_factory=dict)
    wrapper: dict[str, Any] = field(default_factory=dict)
    ours: dict[str, dict[str, Any]] = field(default_factory=dict)  # {"stack": .., "wrapper": ..}
    theirs: dict[str, dict[str, Any]] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    defect: str | None = None  # a key of DEFECTS: 1.28.2 differs, and the test says exactly how
    xfail: str | None = None  # an anyformer bug this row exposes (strict xfail until fixed)

    def keywords(self, side: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(stack keywords, wrapper keywords) for side "ours" or "theirs"."""
        overrides = self.ours if side == "ours" else self.theirs
        if self.kind == "xtransformer":
            base_stack, base_wrapper = {}, BASE_XTRANSFORMER
        elif self.kind == "vit":
            base_stack, base_wrapper = BASE_STACK, BASE_VIT
        elif self.kind == "continuous":
            base_stack, base_wrapper = BASE_STACK, BASE_CONTINUOUS
        else:
            base_stack, base_wrapper = BASE_STACK, BASE_WRAPPER
        stack = {**base_stack, **self.stack, **overrides.get("stack", {})}
        wrapper = {**base_wrapper, **self.wrapper, **overrides.get("wrapper", {})}
        return stack, wrapper

    @property
    def generates(self) -> bool:
        return self.kind in ("decoder", "cross", "xtransformer")

    def holds(self, check: str) -> bool:
        """Whether oracle check "logits", "loss" or "generate" must hold exactly on this row."""
        return self.defect is None or check in DEFECTS[self.defect].holds


def _rows() -> list[Row]:
    d, e = "decoder", "encoder"
    masked = dict(mask=True)
    return [
        # --- stacks and wrappers with their defaults -------------------------------------
        Row("decoder", d),
        Row("encoder-mask", e, inputs=masked),
        Row("prefix-decoder", "prefix", inputs=dict(prefix_attn_len=5)),
        Row("prefix-decoder-per-row", "prefix", inputs=dict(prefix_attn_len=(3, 7))),
        Row("cross-attend", "cross", stack=dict(cross_attend=True), inputs=dict(context_len=6)),
        Row(
            "cross-attend-context-mask",
            "cross",
            stack=dict(cross_attend=True),
            inputs=dict(context_len=6, context_mask=True),
        ),
        Row(
            "cross-attn-dim-context",
            "cross",
            stack=dict(cross_attend=True, cross_attn_dim_context=12),
            inputs=dict(context_len=6, context_mask=True),
        ),
        Row(
            "cross-context-row-all-masked",
            "cross",
            stack=dict(cross_attend=True),
            inputs=dict(context_len=6, context_mask="row 1 empty"),
            defect="empty_row_attends_everything",
        ),
        Row("only-cross", "cross_attender", inputs=dict(context_len=6, context_mask=True)),
        Row("vit", "vit"),
        # without a head both return the mean-pooled features (b, dim)
        Row("vit-no-head", "vit", wrapper=dict(num_classes=None)),
        Row("vit-register-tokens", "vit", wrapper=dict(num_register_tokens=3)),
        Row("vit-post-emb-norm-dropout", "vit", wrapper=dict(post_emb_norm=True, emb_dropout=0.1)),
        Row("xtransformer", "xtransformer", inputs=masked),
        Row("xtransformer-tie-token-emb", "xtransformer", wrapper=dict(tie_token_emb=True)),
        Row(
            "xtransformer-enc-dec-keywords",
            "xtransformer",
            wrapper=dict(
                enc_depth=1,
                enc_heads=4,
                enc_attn_dim_head=4,
                enc_ff_glu=True,
                enc_use_abs_pos_emb=False,
                dec_depth=3,
                dec_ff_mult=2,
                dec_scaled_sinu_pos_emb=True,
                dec_emb_dropout=0.1,
                dec_cross_attn_dim_head=4,
            ),
            inputs=masked,
        ),
        Row(
            "xtransformer-cross-attn-tokens-dropout",
            "xtransformer",
            wrapper=dict(cross_attn_tokens_dropout=0.25),  # a training-time option: eval is exact
            inputs=masked,
        ),
        # --- attention keywords, each alone ----------------------------------------------
        Row("attn-dim-head-heads", d, stack=dict(heads=4, attn_dim_head=4)),
        Row("attn-dropout", d, stack=dict(attn_dropout=0.1)),
        Row("attn-flash", d, stack=dict(attn_flash=True)),
        Row("attn-flash-encoder-mask", e, stack=dict(attn_flash=True), inputs=masked),
        Row("attn-zero-init-output", d, stack=dict(attn_zero_init_output=True)),
        Row("attn-kv-heads", d, stack=dict(heads=4, attn_kv_heads=2)),
        Row("attn-kv-heads-encoder-mask", e, stack=dict(heads=4, attn_kv_heads=2), inputs=masked),
        Row("attn-one-kv-head", d, stack=dict(heads=4, attn_one_kv_head=True)),
        Row("attn-value-dim-head", d, stack=dict(attn_value_dim_head=12)),
        Row("attn-shared-kv", d, stack=dict(attn_shared_kv=True)),
        Row("attn-head-scale", d, stack=dict(attn_head_scale=True)),
        Row("attn-talking-heads", d, stack=dict(heads=3, attn_talking_heads=True)),
        Row("attn-qk-norm", d, stack=dict(attn_qk_norm=True)),
        Row("attn-qk-norm-groups", d, stack=dict(attn_qk_norm=True, attn_qk_norm_groups=2)),
        Row("attn-qk-norm-scale", e, stack=dict(attn_qk_norm=True, attn_qk_norm_scale=4.0)),
        Row(
            "attn-qk-norm-dim-scale", d, stack=dict(attn_qk_norm=True, attn_qk_norm_dim_scale=True)
        ),
        Row("attn-num-mem-kv", d, stack=dict(attn_num_mem_kv=3)),
        Row("attn-num-mem-kv-encoder-mask", e, stack=dict(attn_num_mem_kv=2), inputs=masked),
        Row("attn-add-zero-kv", d, stack=dict(attn_add_zero_kv=True)),
        Row("attn-add-zero-kv-encoder-mask", e, stack=dict(attn_add_zero_kv=True), inputs=masked),
        Row("attn-on-attn", d, stack=dict(attn_on_attn=True)),
        Row("attn-gate-values", d, stack=dict(attn_gate_values=True)),
        Row("attn-swiglu-values", d, stack=dict(attn_gate_values=True, attn_swiglu_values=True)),
        Row("attn-gate-value-heads", d, stack=dict(attn_gate_value_heads=True)),
        Row("attn-tensor-product", d, stack=dict(attn_tensor_product=True)),
        Row("attn-max-attend-past", d, stack=dict(attn_max_attend_past=3)),
        Row("attn-max-attend-past-encoder", e, stack=dict(attn_max_attend_past=2), inputs=masked),
        Row("attn-onnxable", d, stack=dict(attn_onnxable=True)),
        Row(
            "attn-sparse-topk",
            d,
            stack=dict(attn_sparse_topk=3),
            defect="sparse_topk_inverted_and_leaks",
        ),
        Row("residual-attn", d, stack=dict(residual_attn=True)),
        Row(
            "cross-residual-attn",
            "cross",
            stack=dict(cross_attend=True, residual_attn=True, cross_residual_attn=True),
            inputs=dict(context_len=6, context_mask=True),
        ),
        Row(
            "combo-gqa-qk-norm-gates-mem-kv",
            d,
            stack=dict(
                heads=4,
                attn_kv_heads=2,
                attn_qk_norm=True,
                attn_gate_values=True,
                attn_num_mem_kv=2,
                attn_head_scale=True,
                attn_gate_value_heads=True,
            ),
        ),
        Row(
            "combo-gqa-flash-zero-kv-swiglu-encoder",
            e,
            stack=dict(
                heads=4,
                attn_kv_heads=2,
                attn_flash=True,
                attn_add_zero_kv=True,
                attn_gate_values=True,
                attn_swiglu_values=True,
                attn_on_attn=True,
            ),
            inputs=masked,
        ),
        Row(
            "combo-mqa-qk-dim-scale-mem-kv-max-past",
            d,
            stack=dict(
                heads=4,
                attn_one_kv_head=True,
                attn_qk_norm=True,
                attn_qk_norm_dim_scale=True,
                attn_num_mem_kv=2,
                attn_max_attend_past=5,
            ),
        ),
        Row(
            "combo-talking-heads-residual-head-scale",
            d,
            stack=dict(heads=3, attn_talking_heads=True, residual_attn=True, attn_head_scale=True),
            wrapper=dict(use_abs_pos_emb=False),
        ),
        Row(
            "combo-cross-gqa-on-attn-gates",
            "cross",
            stack=dict(
                heads=4,
                cross_attend=True,
                attn_kv_heads=2,
                cross_attn_kv_heads=1,
                attn_on_attn=True,
                cross_attn_gate_value_heads=True,
                cross_attn_num_mem_kv=2,
                cross_attn_dim_context=12,
                cross_residual_attn=True,
            ),
            inputs=dict(context_len=6, context_mask=True),
        ),
        Row(
            "combo-value-dim-tensor-product-zero-kv",
            "prefix",
            stack=dict(
                attn_value_dim_head=12,
                attn_tensor_product=True,
                attn_add_zero_kv=True,
                attn_talking_heads=True,
            ),
            inputs=dict(prefix_attn_len=(3, 7)),
        ),
        Row(
            "combo-shared-kv-qk-groups-mem-kv",
            d,
            stack=dict(
                attn_shared_kv=True,
                attn_qk_norm=True,
                attn_qk_norm_groups=2,
                attn_num_mem_kv=1,
                attn_on_attn=True,
            ),
        ),
        # --- positions (attn_dim_head >= 32 where rotary: see the rotary_dim_floor_32 defect)
        Row("rotary", d, stack=dict(rotary_pos_emb=True, attn_dim_head=32)),
        Row(
            "rotary-encoder-mask",
            e,
            stack=dict(rotary_pos_emb=True, attn_dim_head=32),
            inputs=masked,
        ),
        Row("rotary-partial", d, stack=dict(rotary_pos_emb=True, attn_dim_head=64)),
        Row(
            "rotary-emb-dim",
            d,
            stack=dict(rotary_pos_emb=True, attn_dim_head=48, rotary_emb_dim=40),
        ),
        Row(
            "rotary-emb-dim-below-32",
            d,
            stack=dict(rotary_pos_emb=True, attn_dim_head=64),
            ours=dict(stack=dict(rotary_emb_dim=32)),
            theirs=dict(stack=dict(rotary_emb_dim=16)),
            defect="rotary_dim_floor_32",
        ),
        Row("rotary-xpos", d, stack=dict(rotary_xpos=True, attn_dim_head=32)),
        Row(
            "rotary-xpos-scale-base",
            d,
            stack=dict(rotary_xpos=True, rotary_xpos_scale_base=16, attn_dim_head=32),
        ),
        Row(
            "rotary-interpolation-factor",
            d,
            stack=dict(rotary_pos_emb=True, attn_dim_head=32, rotary_interpolation_factor=4.0),
        ),
        Row(
            "rotary-base-rescale-factor",
            d,
            stack=dict(rotary_pos_emb=True, attn_dim_head=32, rotary_base_rescale_factor=8.0),
        ),
        Row(
            "rotary-theta",
            d,
            stack=dict(rotary_pos_emb=True, attn_dim_head=32),
            # 1.28.2 has no base keyword: 10000 * f ** (32 / 30) = 500000 for this f
            ours=dict(stack=dict(rotary_theta=500000.0)),
            theirs=dict(stack=dict(rotary_base_rescale_factor=50.0 ** (30 / 32))),
        ),
        Row(
            "rotary-embed-values",
            d,
            stack=dict(rotary_pos_emb=True, attn_dim_head=32, attn_rotary_embed_values=True),
        ),
        Row(
            "rotary-cross-attend",
            "cross",
            stack=dict(cross_attend=True, rotary_pos_emb=True, attn_dim_head=32),
            inputs=dict(context_len=6, context_mask=True),
        ),
        Row(
            "rotary-abs-pos-emb-kept",
            d,
            stack=dict(rotary_pos_emb=True, attn_dim_head=32, disable_abs_pos_emb=False),
        ),
        Row("alibi", d, stack=dict(alibi_pos_bias=True)),
        Row("alibi-encoder-mask", e, stack=dict(alibi_pos_bias=True), inputs=masked),
        Row(
            "alibi-num-heads",
            d,
            stack=dict(alibi_pos_bias=True, heads=6, attn_dim_head=4, alibi_num_heads=5),
        ),
        Row("alibi-flash", d, stack=dict(alibi_pos_bias=True, attn_flash=True, heads=3)),
        Row(
            "alibi-prefix",
            "prefix",
            stack=dict(alibi_pos_bias=True),
            inputs=dict(prefix_attn_len=(3, 7)),
        ),
        Row("rel-pos-bias", d, stack=dict(rel_pos_bias=True)),
        Row(
            "rel-pos-bias-encoder-mask",
            e,
            stack=dict(rel_pos_bias=True, rel_pos_num_buckets=8, rel_pos_max_distance=10),
            inputs=masked,
        ),
        Row(
            "rel-pos-bias-buckets",
            d,
            stack=dict(rel_pos_bias=True, rel_pos_num_buckets=6, rel_pos_max_distance=9),
        ),
        Row(
            "rel-pos-bias-fused",
            d,
            stack=dict(rel_pos_bias=True),
            ours=dict(stack=dict(attn_flash=True)),
        ),  # 1.28.2 refuses flash with this bias
        Row(
            "dynamic-pos-bias",
            d,
            stack=dict(dynamic_pos_bias=True),
            defect="dynamic_bias_cannot_cache",
        ),
        Row(
            "dynamic-pos-bias-encoder",
            e,
            stack=dict(
                dynamic_pos_bias=True,
                dynamic_pos_bias_log_distance=True,
                dynamic_pos_bias_mlp_depth=3,
                dynamic_pos_bias_norm=True,
            ),
            inputs=masked,
        ),
        Row(
            "dynamic-pos-bias-fused",
            e,
            stack=dict(dynamic_pos_bias=True, dynamic_pos_bias_norm=True),
            ours=dict(stack=dict(attn_flash=True)),
            inputs=masked,
        ),
        Row("disable-abs-pos-emb", d, stack=dict(disable_abs_pos_emb=True)),
        Row(
            "combo-llama",
            d,
            stack=dict(
                rotary_pos_emb=True,
                attn_dim_head=32,
                heads=4,
                attn_kv_heads=2,
                use_rmsnorm=True,
                ff_glu=True,
                ff_swish=True,
                ff_no_bias=True,
                attn_flash=True,
            ),
            wrapper=dict(use_abs_pos_emb=False),
            defect="glu_bias_kept",
        ),
        Row(
            "combo-xpos-gqa-qk-norm",
            d,
            stack=dict(
                rotary_xpos=True,
                attn_dim_head=32,
                heads=4,
                attn_kv_heads=1,
                attn_qk_norm=True,
                use_rmsnorm=True,
            ),
        ),
        Row(
            "combo-alibi-gqa-qk-norm-flash",
            d,
            stack=dict(
                alibi_pos_bias=True,
                heads=4,
                attn_kv_heads=2,
                attn_qk_norm=True,
                attn_flash=True,
                alibi_num_heads=3,
            ),
        ),
        Row(
            "combo-t5-encoder-rmsnorm",
            e,
            stack=dict(
                rel_pos_bias=True, use_rmsnorm=True, attn_qk_norm=True, heads=4, attn_kv_heads=2
            ),
            inputs=masked,
        ),
        Row(
            "combo-rotary-t5-post-norm",
            d,
            stack=dict(
                rotary_pos_emb=True,
                rel_pos_bias=True,
                attn_dim_head=32,
                pre_norm=False,
                rotary_interpolation_factor=2.0,
            ),
        ),
        Row(
            "combo-dynamic-rmsnorm-qk-norm",
            d,
            stack=dict(
                dynamic_pos_bias=True,
                dynamic_pos_bias_log_distance=True,
                use_rmsnorm=True,
                attn_qk_norm=True,
            ),
            defect="dynamic_bias_cannot_cache",
        ),
        Row(
            "combo-scaled-sinu-alibi-post-emb-norm",
            d,
            stack=dict(alibi_pos_bias=True),
            wrapper=dict(scaled_sinu_pos_emb=True, post_emb_norm=True),
        ),
        # --- stack keywords --------------------------------------------------------------
        Row("post-norm", d, stack=dict(pre_norm=False)),
        Row("post-norm-encoder-mask", e, stack=dict(pre_norm=False), inputs=masked),
        Row(
            "pre-norm-no-final-norm",
            d,
            stack=dict(pre_norm_has_final_norm=False),
            defect="final_norm_ignored",
        ),
        # --- feedforward keywords --------------------------------------------------------
        Row("ff-mult", d, stack=dict(ff_mult=2)),
        Row("ff-glu", d, stack=dict(ff_glu=True)),
        Row("ff-swish", d, stack=dict(ff_swish=True)),
        Row("ff-glu-mult-bias", d, stack=dict(ff_glu=True, ff_glu_mult_bias=True)),
        Row("ff-post-act-ln", d, stack=dict(ff_post_act_ln=True)),
        Row("ff-no-bias", d, stack=dict(ff_no_bias=True)),
        Row("ff-no-bias-glu", d, stack=dict(ff_no_bias=True, ff_glu=True), defect="glu_bias_kept"),
        Row("ff-relu-squared", d, stack=dict(ff_relu_squared=True)),
        Row("ff-dropout", d, stack=dict(ff_dropout=0.1)),
        Row("ff-zero-init-output", d, stack=dict(ff_zero_init_output=True)),
        # --- TransformerWrapper keywords -------------------------------------------------
        Row("emb-dim", d, wrapper=dict(emb_dim=12)),
        Row("emb-dropout", d, wrapper=dict(emb_dropout=0.1)),
        Row("post-emb-norm", d, wrapper=dict(post_emb_norm=True)),
        Row("tie-embedding", d, wrapper=dict(tie_embedding=True)),
        Row("logits-dim", e, wrapper=dict(logits_dim=7)),
        Row("no-abs-pos-emb", d, wrapper=dict(use_abs_pos_emb=False)),
        Row("max-seq-len-0", e, wrapper=dict(max_seq_len=0)),
        Row(
            "max-seq-len-0-decoder",
            d,
            wrapper=dict(max_seq_len=0),
            defect="cache_trim_without_positions",
        ),
        Row("scaled-sinu-pos-emb", d, wrapper=dict(scaled_sinu_pos_emb=True)),
        Row("l2norm-embed", d, wrapper=dict(l2norm_embed=True)),
        Row("emb-frac-gradient", d, wrapper=dict(emb_frac_gradient=0.1)),
        Row(
            "embed-num-tokens",
            e,
            wrapper=dict(embed_num_tokens=dict(type=3)),
            inputs=dict(embed_ids=True),
        ),
        # --- combinations ----------------------------------------------------------------
        Row(
            "combo-palm-decoder",
            d,
            stack=dict(ff_glu=True, ff_swish=True, ff_no_bias=False, attn_flash=True, heads=4),
            wrapper=dict(tie_embedding=True, use_abs_pos_emb=False),
        ),
        Row(
            "combo-bert-post-norm",
            e,
            stack=dict(pre_norm=False, ff_relu_squared=True, ff_post_act_ln=True, attn_dropout=0.1),
            wrapper=dict(emb_dim=12, logits_dim=9, embed_num_tokens=dict(type=2, segment=4)),
            inputs=dict(mask=True, embed_ids=True),
        ),
        Row(
            "combo-cross-post-norm-flash",
            "cross",
            stack=dict(
                cross_attend=True,
                cross_attn_dim_context=10,
                pre_norm=False,
                attn_flash=True,
                ff_glu=True,
                ff_glu_mult_bias=True,
            ),
            inputs=dict(context_len=5, context_mask=True),
        ),
        Row(
            "combo-prefix-sinu-glu",
            "prefix",
            stack=dict(ff_glu=True, ff_post_act_ln=True, attn_zero_init_output=True),
            wrapper=dict(scaled_sinu_pos_emb=True, post_emb_norm=True),
            inputs=dict(prefix_attn_len=(4, 9)),
        ),
        Row(
            "combo-decoder-l2norm-frac",
            d,
            stack=dict(attn_dim_head=4, heads=3, ff_mult=3, ff_zero_init_output=True, depth=3),
            wrapper=dict(l2norm_embed=True, emb_frac_gradient=0.5, post_emb_norm=True),
        ),
        Row(
            "combo-vit-registers-flash",
            "vit",
            stack=dict(attn_flash=True, ff_glu=True, ff_swish=True, pre_norm=False),
            wrapper=dict(num_register_tokens=2, post_emb_norm=True, channels=1, image_size=12),
        ),
        Row(
            "combo-xtransformer",
            "xtransformer",
            wrapper=dict(
                tie_token_emb=True,
                enc_attn_flash=True,
                dec_attn_flash=True,
                enc_ff_glu=True,
                dec_ff_swish=True,
                dec_ff_post_act_ln=True,
                enc_scaled_sinu_pos_emb=True,
                dec_pre_norm=False,
            ),
            inputs=masked,
        ),
        Row(
            "combo-cross-attend-encoder",
            e,
            stack=dict(cross_attend=True, cross_attn_dim_context=8, ff_no_bias=True),
            inputs=dict(mask=True, context_len=4, context_mask=True),
        ),
    ]


def _structure_rows() -> list[Row]:
    """Stack structure (issue 8): norms, residual schemes, layer orders, token shift, memory
    tokens, Transformer-XL memories, continuous inputs; each keyword alone, then combined."""
    d, e, c, xl, ct = "decoder", "encoder", "cross", "xl", "continuous"
    masked = dict(mask=True)
    ctx = dict(context_len=6, context_mask=True)
    return [
        # --- norms -----------------------------------------------------------------------
        Row("use-scalenorm", d, stack=dict(use_scalenorm=True)),
        Row("use-rmsnorm", d, stack=dict(use_rmsnorm=True)),
        Row(
            "use-simple-rmsnorm",
            d,
            stack=dict(use_simple_rmsnorm=True),
            wrapper=dict(post_emb_norm=True),  # a constant gain for test_initial_constants
        ),
        Row(
            "rmsnorm-post-norm-encoder-mask",
            e,
            stack=dict(use_rmsnorm=True, pre_norm=False),
            inputs=masked,
        ),
        Row("scalenorm-cross", c, stack=dict(use_scalenorm=True, cross_attend=True), inputs=ctx),
        Row("sandwich-norm", d, stack=dict(sandwich_norm=True)),
        Row(
            "sandwich-norm-rmsnorm-encoder",
            e,
            stack=dict(sandwich_norm=True, use_rmsnorm=True),
            inputs=masked,
        ),
        Row("resi-dual", d, stack=dict(resi_dual=True)),
        Row("resi-dual-scale", d, stack=dict(resi_dual=True, resi_dual_scale=0.5)),
        Row(
            "resi-dual-encoder-mask",
            e,
            stack=dict(resi_dual=True, resi_dual_scale=0.25),
            inputs=masked,
        ),
        # --- residuals -------------------------------------------------------------------
        Row("gate-residual", d, stack=dict(gate_residual=True)),
        Row("scale-residual", d, stack=dict(scale_residual=True)),
        Row("scale-residual-constant", d, stack=dict(scale_residual_constant=0.5)),
        Row(
            "gate-residual-scale-residual-post-norm",
            d,
            stack=dict(gate_residual=True, scale_residual=True, pre_norm=False),
        ),
        Row(
            "scale-residual-both-post-norm",
            e,
            stack=dict(scale_residual=True, scale_residual_constant=2.0, pre_norm=False),
            inputs=masked,
        ),
        Row("zero-init-branch-output", d, stack=dict(zero_init_branch_output=True)),
        # --- pre_norm=False with the options it combines with ---------------------------
        Row(
            "post-norm-shift-weight-tie",
            d,
            stack=dict(pre_norm=False, shift_tokens=1, weight_tie_layers=True, depth=3),
            defect="shift_tokens_cache",
        ),
        Row(
            "post-norm-scalenorm-layer-orders",
            e,
            stack=dict(pre_norm=False, use_scalenorm=True, sandwich_coef=1, scale_residual=True),
            inputs=masked,
        ),
        Row(
            "post-norm-simple-rmsnorm-par-memory",
            d,
            stack=dict(pre_norm=False, use_simple_rmsnorm=True, depth=4, par_ratio=4),
            wrapper=dict(num_memory_tokens=2, post_emb_norm=True),
        ),
        Row(
            "post-norm-xl-zero-init",
            "xl",
            stack=dict(
                pre_norm=False, zero_init_branch_output=True, rotary_pos_emb=True, attn_dim_head=32
            ),
            wrapper=dict(max_seq_len=4, max_mem_len=8),
        ),
        Row(
            "post-norm-continuous-macaron",
            "continuous",
            stack=dict(pre_norm=False, macaron=True, gate_residual=True),
        ),
        # --- layer orders ----------------------------------------------------------------
        Row("custom-layers", d, stack=dict(custom_layers=("a", "f", "f", "a", "a", "f"))),
        Row(
            "custom-layers-cross",
            c,
            stack=dict(cross_attend=True, custom_layers=("c", "a", "f", "c", "f")),
            inputs=ctx,
        ),
        Row("sandwich-coef", d, stack=dict(depth=3, sandwich_coef=2)),
        Row("par-ratio", d, stack=dict(depth=4, par_ratio=4)),
        Row("par-ratio-cross", c, stack=dict(depth=3, par_ratio=3, cross_attend=True), inputs=ctx),
        Row("macaron", d, stack=dict(macaron=True)),
        Row(
            "macaron-cross-post-norm",
            c,
            stack=dict(macaron=True, cross_attend=True, pre_norm=False),
            inputs=ctx,
        ),
        Row("weight-tie-layers", d, stack=dict(weight_tie_layers=True, depth=3)),
        Row(
            "weight-tie-layers-cross",
            c,
            stack=dict(weight_tie_layers=True, cross_attend=True),
            inputs=ctx,
        ),
        Row("layers-execute-order", d, stack=dict(layers_execute_order=(0, 1, 0, 1, 2, 3, 2))),
        Row(
            "layers-execute-order-custom",
            d,
            stack=dict(custom_layers=("a", "f"), layers_execute_order=(0, 1, 1, 0, 1)),
        ),
        Row("shift-tokens", d, stack=dict(shift_tokens=1), defect="shift_tokens_cache"),
        Row(
            "shift-tokens-per-layer",
            d,
            stack=dict(shift_tokens=(2, 0, 0, 3)),
            defect="shift_tokens_cache",
        ),
        # no padding mask here: a bidirectional shift moves padded rows into kept ones, and
        # 1.28.2 zeroes attention outputs at padded rows (NOTES["padded_queries"])
        Row("shift-tokens-encoder", e, stack=dict(shift_tokens=2)),
        Row("shift-tokens-odd-width", e, stack=dict(shift_tokens=(1, 2, 0, 3), dim=18, heads=2)),
        Row(
            "shift-tokens-cross",
            c,
            stack=dict(shift_tokens=1, cross_attend=True),
            inputs=ctx,
            defect="shift_tokens_cache",
        ),
        Row("layer-dropout", d, stack=dict(layer_dropout=0.5)),  # training only: eval is exact
        Row("layer-dropout-per-layer", d, stack=dict(layer_dropout=(0.1, 0.0, 0.3, 0.0))),
        Row(
            "cross-attn-tokens-dropout",
            c,
            stack=dict(cross_attend=True, cross_attn_tokens_dropout=0.5),
            inputs=ctx,
        ),
        # --- memory tokens ---------------------------------------------------------------
        Row("memory-tokens", d, wrapper=dict(num_memory_tokens=3)),
        Row("memory-tokens-encoder-mask", e, wrapper=dict(num_memory_tokens=2), inputs=masked),
        Row(
            "memory-tokens-rotary",
            d,
            stack=dict(rotary_pos_emb=True, attn_dim_head=32),
            wrapper=dict(num_memory_tokens=2),
        ),
        Row(
            "memory-tokens-interspersed",
            d,
            wrapper=dict(num_memory_tokens=2, memory_tokens_interspersed_every=5),
        ),
        Row(
            "memory-tokens-interspersed-rotary",
            d,
            stack=dict(rotary_pos_emb=True, attn_dim_head=32),
            wrapper=dict(num_memory_tokens=1, memory_tokens_interspersed_every=4),
        ),
        # --- Transformer-XL: segments of max_seq_len with memories -----------------------
        Row("xl", xl, wrapper=dict(max_seq_len=4, max_mem_len=8)),
        Row(
            "xl-rotary",
            xl,
            stack=dict(rotary_pos_emb=True, attn_dim_head=32),
            wrapper=dict(max_seq_len=5, max_mem_len=5),
        ),
        Row(
            "xl-alibi",
            xl,
            stack=dict(alibi_pos_bias=True),
            wrapper=dict(max_seq_len=4, max_mem_len=6),
        ),
        Row(
            "xl-rel-pos-bias-gate-residual",
            xl,
            stack=dict(rel_pos_bias=True, gate_residual=True),
            wrapper=dict(max_seq_len=4, max_mem_len=4),
        ),
        Row(
            "xl-shift-mem-down",
            xl,
            stack=dict(rotary_pos_emb=True, attn_dim_head=32, depth=3),
            wrapper=dict(max_seq_len=4, max_mem_len=8, shift_mem_down=1),
        ),
        Row(
            "xl-mem-masks",
            xl,
            stack=dict(rotary_pos_emb=True, attn_dim_head=32),
            wrapper=dict(max_seq_len=6, max_mem_len=6),
            inputs=dict(mem_masks=True),
        ),
        Row("xl-unbounded-memory", xl, wrapper=dict(max_seq_len=4, use_abs_pos_emb=False)),
        Row(
            "xl-memory-tokens",
            xl,
            stack=dict(rotary_pos_emb=True, attn_dim_head=32),
            wrapper=dict(max_seq_len=4, max_mem_len=6, num_memory_tokens=2),
        ),
        # --- continuous inputs -----------------------------------------------------------
        Row("continuous", ct),
        Row("continuous-no-projections", ct, wrapper=dict(dim_in=None, dim_out=None)),
        Row("continuous-mask", ct, inputs=masked),
        Row(
            "continuous-sinu-post-emb-norm",
            ct,
            wrapper=dict(scaled_sinu_pos_emb=True, post_emb_norm=True, emb_dropout=0.1),
        ),
        Row(
            "continuous-memory-tokens-rotary",
            ct,
            stack=dict(rotary_pos_emb=True, attn_dim_head=32),
            wrapper=dict(num_memory_tokens=2, use_abs_pos_emb=False),
        ),
        # --- combinations ----------------------------------------------------------------
        Row(
            "combo-rmsnorm-macaron-gate-shift",
            d,
            stack=dict(
                use_rmsnorm=True, macaron=True, gate_residual=True, shift_tokens=1, ff_glu=True
            ),
            defect="shift_tokens_cache",
        ),
        Row(
            "combo-weight-tie-scalenorm-sandwich",
            d,
            stack=dict(
                weight_tie_layers=True,
                depth=3,
                use_scalenorm=True,
                sandwich_norm=True,
                scale_residual=True,
            ),
            wrapper=dict(num_memory_tokens=2),
        ),
        Row(
            "combo-resi-dual-macaron-rotary",
            d,
            stack=dict(
                resi_dual=True,
                resi_dual_scale=0.5,
                macaron=True,
                rotary_pos_emb=True,
                attn_dim_head=32,
                zero_init_branch_output=True,
            ),
        ),
        Row(
            "combo-sandwich-coef-simple-rmsnorm-alibi",
            d,
            stack=dict(
                depth=3,
                sandwich_coef=1,
                use_simple_rmsnorm=True,
                alibi_pos_bias=True,
                layer_dropout=0.2,
                scale_residual=True,
            ),
        ),
        Row(
            "combo-par-ratio-execute-order-encoder",
            e,
            stack=dict(
                custom_layers=("a", "f", "f", "a", "f"),
                layers_execute_order=(0, 1, 2, 0, 3, 4),
                pre_norm=False,
                gate_residual=True,
                scale_residual=True,
            ),
            wrapper=dict(num_memory_tokens=1),
            inputs=masked,
        ),
        Row(
            "combo-xl-rmsnorm-macaron-memory",
            xl,
            stack=dict(
                use_rmsnorm=True,
                macaron=True,
                rotary_pos_emb=True,
                attn_dim_head=32,
                sandwich_norm=True,
            ),
            wrapper=dict(max_seq_len=4, max_mem_len=8, num_memory_tokens=1, shift_mem_down=1),
        ),
        Row(
            "combo-continuous-gate-scalenorm-weight-tie",
            ct,
            stack=dict(gate_residual=True, use_scalenorm=True, weight_tie_layers=True, depth=3),
            wrapper=dict(num_memory_tokens=2, post_emb_norm=True),
            inputs=masked,
        ),
    ]


ROWS: list[Row] = _rows() + _structure_rows()
