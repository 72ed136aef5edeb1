"""Which anyformer options each x-transformers release can express: the converter's one check.

``check_x_transformers_support(model, version)`` walks the model's resolved configurations (the
frozen dataclasses of ``anyformer/config``) and raises a ``ValueError`` naming every keyword that
is set away from its default while the target release (``1``: x-transformers 1.28.2, ``2``:
2.31.10) has no keyword of that name and meaning. A checkpoint of such a model would load into
x-transformers (or from it) and compute something else: the converter refuses instead of
approximating.

The table lists, per configuration dataclass, the fields each release can express (the names
appear in that release's ``Attention`` / ``FeedForward`` / ``AttentionLayers`` / wrapper
signatures; ``tests/test_convert_x_transformers_refusals.py`` checks the table against them).
A field missing from the table is refused when set: an option added to anyformer later converts
only once someone has verified it against x-transformers and added it here. ``SEMANTICS`` lists
the names a release shares with anyformer but computes differently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config.attention import AttentionConfig
from ..config.continuous import ContinuousConfig
from ..config.feedforward import FeedForwardConfig
from ..config.norm import NormConfig
from ..config.positions import PositionConfig
from ..config.stack import StackConfig
from ..config.vit import ViTConfig, XTransformerConfig
from ..config.wrapper import WrapperConfig

__all__ = ["RELEASES", "RUNTIME", "SEMANTICS", "SUPPORT", "check_x_transformers_support"]

#: version argument -> the release the table was read from
RELEASES = {1: "x-transformers 1.28.2", 2: "x-transformers 2.31.10"}


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


@dataclass(frozen=True)
class Support:
    """The fields of one configuration dataclass that both releases / only 1.28.2 / only 2.x
    express with anyformer's meaning."""

    both: frozenset[str]
    only1: frozenset[str] = frozenset()
    only2: frozenset[str] = frozenset()

    def expresses(self, name: str, version: int) -> bool:
        return name in self.both or name in (self.only1 if version == 1 else self.only2)


_ATTENTION = Support(
    both=_names(
        "add_zero_kv dim_context dim_head dropout flash gate_value_heads gate_values head_scale "
        "kv_heads max_attend_past num_mem_kv on_attn one_kv_head onnxable qk_norm "
        "qk_norm_dim_scale qk_norm_groups qk_norm_scale sparse_topk swiglu_values "
        "value_dim_head zero_init_output"
    ),
    only1=_names("rotary_embed_values shared_kv talking_heads tensor_product"),
    only2=_names(
        "data_dependent_alibi data_dependent_alibi_kwargs data_dependent_alibi_per_row "
        "data_dependent_alibi_per_row_dim_head dim_latent_kv dim_latent_q head_learned_sink "
        "latent_rope_subheads logit_softclamp_value output_gate output_gate_headwise "
        "post_talking_heads pre_talking_heads qk_rmsnorm softclamp_logits use_latent_kv "
        "use_latent_q"
    ),
)

#: configuration dataclass -> what each release expresses of its fields
SUPPORT: dict[type, Support] = {
    AttentionConfig: _ATTENTION,
    FeedForwardConfig: Support(
        both=_names(
            "dropout glu glu_mult_bias mult no_bias post_act_ln relu_squared swish zero_init_output"
        )
    ),
    NormConfig: Support(
        both=_names("use_rmsnorm use_scalenorm use_simple_rmsnorm"),
        only2=_names(
            "dim_condition dynamic_tanh_init_alpha use_adaptive_layernorm use_adaptive_rmsnorm "
            "use_dynamic_tanh"
        ),
    ),
    PositionConfig: Support(
        both=_names(
            "alibi_num_heads alibi_pos_bias disable_abs_pos_emb dynamic_pos_bias "
            "dynamic_pos_bias_log_distance dynamic_pos_bias_mlp_depth dynamic_pos_bias_norm "
            "rel_pos_bias rel_pos_max_distance rel_pos_num_buckets rotary_base_rescale_factor "
            "rotary_emb_dim rotary_interpolation_factor rotary_pos_emb rotary_xpos "
            "rotary_xpos_scale_base"
            # no keyword in either release, but the same frequencies come from
            # rotary_base_rescale_factor and the stored inv_freq is compared on load
            " rotary_theta"
        )
    ),
    StackConfig: Support(
        both=_names(
            "causal cross_attend cross_attn_tokens_dropout cross_residual_attn custom_layers "
            "depth dim gate_residual heads layer_dropout layers_execute_order macaron only_cross "
            "par_ratio pre_norm pre_norm_has_final_norm residual_attn sandwich_coef "
            "sandwich_norm scale_residual scale_residual_constant shift_tokens "
            "weight_tie_layers zero_init_branch_output"
            # the nested configurations, checked field by field
            " attention cross_attention feedforward norm positions"
        ),
        only1=_names("resi_dual resi_dual_scale"),
        only2=_names(
            "add_value_residual hyper_conn_sinkhorn_iters layerscale_init_value "
            "learned_reinject_input_gate learned_value_residual_mix num_residual_streams "
            "reinject_input softclamp_output softclamp_output_value unet_skips "
            "use_adaptive_layerscale use_layerscale"
        ),
    ),
    WrapperConfig: Support(
        both=_names(
            "attn_z_loss_weight emb_dim emb_dropout emb_frac_gradient embed_num_tokens "
            "l2norm_embed logits_dim max_mem_len max_seq_len memory_tokens_interspersed_every "
            "num_memory_tokens num_tokens post_emb_norm scaled_sinu_pos_emb shift_mem_down "
            "tie_embedding use_abs_pos_emb"
        ),
        only2=_names(
            "average_pool_embed input_not_include_cache num_cls_tokens return_only_embed "
            "use_cls_token"
        ),
    ),
    ContinuousConfig: Support(
        both=_names(
            "dim_in dim_out emb_dropout max_mem_len max_seq_len num_memory_tokens post_emb_norm "
            "scaled_sinu_pos_emb use_abs_pos_emb"
        ),
        only2=_names("average_pool_embed probabilistic use_identity_if_same_dim"),
    ),
    ViTConfig: Support(
        both=_names(
            "channels emb_dropout image_size num_classes num_register_tokens patch_size "
            "post_emb_norm"
        )
    ),
    XTransformerConfig: Support(
        both=_names("cross_attn_tokens_dropout dim ignore_index pad_value tie_token_emb")
    ),
}

#: fields that change neither the tensors nor what the model computes in eval mode (a kernel
#: choice, training-only loss weights): always convertible
RUNTIME = frozenset({"kernel", "load_balance_loss_weight", "router_z_loss_weight"})

#: (version, config dataclass, field) -> how that release computes something else under the name
SEMANTICS: dict[tuple[int, type, str], str] = {
    (2, WrapperConfig, "tie_embedding"): (
        "2.x multiplies tied logits by tie_embedding_scale (default dim ** -0.5), anyformer "
        "does not"
    ),
    (2, AttentionConfig, "qk_norm_dim_scale"): (
        "2.x scales the normalised logits by 1/sqrt(dim_head), starts its scales at "
        "dim_head ** 0.25 and keeps one key scale per kv head"
    ),
    (2, AttentionConfig, "qk_rmsnorm"): (
        "no checkpoint mapping yet: 2.x stores its q/k RMSNorm gains in its interleaved "
        "rotary layout"
    ),
}

#: the keyword prefix of a nested configuration of StackConfig
_PREFIX = {"attention": "attn_", "cross_attention": "cross_attn_", "feedforward": "ff_"}


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _configs(model: nn.Module) -> Iterator[tuple[str, object, frozenset[str]]]:
    """(keyword prefix, configuration dataclass, fields set by a parent module rather than by
    the user) of every configured module of ``model``."""
    implied: dict[int, frozenset[str]] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if not dataclasses.is_dataclass(config) or isinstance(config, type):
            continue
        if isinstance(config, XTransformerConfig):  # both releases: an encoder without a head
            implied[id(getattr(module, "encoder"))] = frozenset({"return_only_embed"})  # noqa: B009
        yield "", config, implied.get(id(module), frozenset())
        crossing = getattr(config, "cross_attend", False) or getattr(config, "only_cross", False)
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if f.name == "cross_attention" and not crossing:
                continue  # resolved but unused: a stack without cross-attention
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                yield _PREFIX.get(f.name, ""), value, frozenset()


def _refusals(prefix: str, config: object, version: int, implied: frozenset[str]) -> Iterator[str]:
    support = SUPPORT.get(type(config))
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, f.name)
        if f.name in RUNTIME or f.name in implied or dataclasses.is_dataclass(value):
            continue
        if value == _default(f):
            continue
        keyword = f"{prefix}{f.name}={value!r}"
        differs = SEMANTICS.get((version, type(config), f.name))
        if support is None or not support.expresses(f.name, version):
            yield f"{keyword} (no such option)"
        elif differs is not None:
            yield f"{keyword} ({differs})"


def check_x_transformers_support(fn: str, model: nn.Module, version: int) -> None:
    """Raise a ValueError naming every option of ``model`` set away from its default that
    x-transformers release ``version`` (1 or 2) cannot express with anyformer's meaning."""
    found: list[str] = []
    for prefix, config, implied in _configs(model):
        for item in _refusals(prefix, config, version, implied):
            if item not in found:
                found.append(item)
    if found:
        raise ValueError(
            f"{fn}: {RELEASES[version]} cannot express {'; '.join(found)}: its checkpoint "
            "would compute something else, so this model has no "
            f"{RELEASES[version]} (version={version}) layout (save it with save_pretrained "
            "instead)"
        )
