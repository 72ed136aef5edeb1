"""anyformer -> Hugging Face Gemma 2 (``Gemma2ForCausalLM`` / ``Gemma2Model``; the inverse of
:func:`anyformer.convert.hf_gemma.build_gemma2`) and Gemma 3 text (``Gemma3ForCausalLM`` /
``Gemma3TextModel``; the inverse of :func:`anyformer.convert.hf_gemma.build_gemma3`).

Gemma stores each RMSNorm gain as ``w`` with the norm computing ``x / rms(x) * (1 + w)``: the
gain ``g`` is written as ``g - 1`` in float32 (exact for ``g >= 0.5``, where the import's
``1 + w`` gives ``g`` back bitwise). Per-layer windows (``attn_sliding_window`` as a tuple with
one window size and ``None`` for global layers) become ``layer_types``; ``attn_scale`` becomes
``query_pre_attn_scalar`` (``head_dim`` when the scale is the default ``head_dim ** -0.5``).

Gemma 3 has no attention soft cap; its ``attn_qk_rmsnorm`` gains (one row shared by the heads,
stored as ``w`` like the other norms) are written with the import side's own table
(:func:`anyformer.convert.hf_gemma.rules`, read backwards), and ``rope_parameters`` holds the
global layers' rotary (``rotary_theta``, linear ``rotary_interpolation_factor``) and the
sliding layers' base (``rotary_local_theta``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from . import hf_gemma
from .hf_base import HFConfig, layer_pairs, tied_head
from .hf_export_base import HFExporter, configs, split_rows

__all__ = ["GEMMA2", "GEMMA3"]


def _windows(attention: Any, depth: int) -> tuple[list[str], int]:
    windows = [attention.window_of_layer(i) for i in range(depth)]
    sizes = [w for w in windows if w is not None]
    types = ["sliding_attention" if w is not None else "full_attention" for w in windows]
    return types, (sizes[0] if sizes else 4096)  # differing sizes: the comparison refuses


def _query_scalar(scale: float) -> float:
    """``query_pre_attn_scalar`` s with ``s ** -0.5 == scale``: an int where one gives the
    scale exactly (Gemma 3's config takes only ints), else ``scale ** -2``."""
    n = round(scale**-2)
    return n if n >= 1 and n**-0.5 == scale else scale**-2


def _config(net: nn.Module, head: str) -> dict[str, Any]:
    wrapper, stack = configs(net)
    attention, ff = stack.attention, stack.feedforward
    dim_head = attention.dim_head
    scale = attention.logit_scale
    types, window = _windows(attention, stack.depth)
    return {
        "model_type": "gemma2",
        "architectures": ["Gemma2ForCausalLM" if head == "lm" else "Gemma2Model"],
        "vocab_size": wrapper.num_tokens,
        "hidden_size": stack.dim,
        "intermediate_size": ff.inner_dim or int(stack.dim * ff.mult),
        "num_hidden_layers": stack.depth,
        "num_attention_heads": stack.heads,
        "num_key_value_heads": attention.kv_heads_for(stack.heads),
        "head_dim": dim_head,
        "hidden_activation": "gelu_pytorch_tanh" if ff.gelu_tanh else "gelu",
        "query_pre_attn_scalar": _query_scalar(scale),
        "max_position_embeddings": wrapper.max_seq_len,
        "rms_norm_eps": stack.norm.eps,
        "attention_bias": attention.qkv_bias,
        "attention_dropout": attention.dropout,
        "attn_logit_softcapping": (
            attention.logit_softclamp_value if attention.softclamp_logits else None
        ),
        "final_logit_softcapping": wrapper.logit_softclamp_value if head == "lm" else None,
        "sliding_window": window,
        "layer_types": types,
        "rope_parameters": {"rope_type": "default", "rope_theta": stack.positions.rotary_theta},
        "tie_word_embeddings": head == "lm" and tied_head(net),
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }


def _offset(gain: Tensor) -> Tensor:
    """Gemma's stored ``w`` for a gain ``g = 1 + w``."""
    return (gain.detach().float() - 1.0).to(gain.dtype)


def _weights(net: nn.Module, head: str) -> dict[str, Tensor]:
    _, config = configs(net)
    q_rows = config.heads * config.attention.dim_head
    kv_rows = config.attention.kv_heads_for(config.heads) * config.attention.dim_head
    prefix = "model." if head == "lm" else ""
    stack = net.get_submodule("attn_layers")
    out: dict[str, Tensor] = {
        prefix + "embed_tokens.weight": net.get_parameter("token_emb.emb.weight")
    }
    norms = (
        ("input_layernorm", 0, "pre_norm"),
        ("post_attention_layernorm", 0, "post_branch_norm"),
        ("pre_feedforward_layernorm", 1, "pre_norm"),
        ("post_feedforward_layernorm", 1, "post_branch_norm"),
    )
    for i, pair in enumerate(layer_pairs(stack)):
        p = f"{prefix}layers.{i}."
        for name, which, ours in norms:
            out[f"{p}{name}.weight"] = _offset(pair[which].get_parameter(f"{ours}.weight"))
        qkv = pair[0].get_submodule("branch.qkv.to_qkv")
        to_out = pair[0].get_submodule("branch.to_out")
        for kind in ("weight", "bias"):
            value = getattr(qkv, kind, None)
            if value is not None:
                for n, part in zip("qkv", split_rows(value, [q_rows, kv_rows, kv_rows])):
                    out[f"{p}self_attn.{n}_proj.{kind}"] = part
            if getattr(to_out, kind, None) is not None:
                out[f"{p}self_attn.o_proj.{kind}"] = getattr(to_out, kind)
        proj_in = pair[1].get_parameter("branch.proj_in.weight")
        up, gate = split_rows(proj_in, [proj_in.shape[0] // 2] * 2)
        out[p + "mlp.up_proj.weight"], out[p + "mlp.gate_proj.weight"] = up, gate
        out[p + "mlp.down_proj.weight"] = pair[1].get_parameter("branch.proj_out.weight")
    out[prefix + "norm.weight"] = _offset(stack.get_parameter("final_norm.weight"))
    if head == "lm" and not tied_head(net):
        out["lm_head.weight"] = net.get_parameter("to_logits.weight")
    return {k: v.detach() for k, v in out.items()}


GEMMA2 = HFExporter(
    family=hf_gemma.GEMMA2,
    architectures={"lm": "Gemma2ForCausalLM", "hidden": "Gemma2Model"},
    config=_config,
    weights=_weights,
)


# ------------------------------------------------------------------------------ Gemma 3


def _gemma3_rope(positions: Any) -> dict[str, Any]:
    full: dict[str, Any] = {"rope_type": "default", "rope_theta": positions.rotary_theta}
    if positions.rotary_interpolation_factor != 1.0:
        full.update(rope_type="linear", factor=positions.rotary_interpolation_factor)
    local = positions.rotary_local_theta or positions.rotary_theta
    return {
        "full_attention": full,
        "sliding_attention": {"rope_type": "default", "rope_theta": local},
    }


def _gemma3_config(net: nn.Module, head: str) -> dict[str, Any]:
    _, stack = configs(net)
    config = _config(net, head)
    if not isinstance(config["query_pre_attn_scalar"], int):
        raise ValueError(
            f"attn_scale={stack.attention.logit_scale} (Gemma 3 needs n ** -0.5 for an int n: "
            "its query_pre_attn_scalar is an int)"
        )
    config.update(
        model_type="gemma3_text",
        architectures=["Gemma3ForCausalLM" if head == "lm" else "Gemma3TextModel"],
        attn_logit_softcapping=None,  # Gemma 3 has none: a capped model differs by option
        rope_parameters=_gemma3_rope(stack.positions),
        use_bidirectional_attention=False,
    )
    return config


def _gemma3_weights(net: nn.Module, head: str) -> dict[str, Tensor]:
    config = HFConfig(_gemma3_config(net, head), "Gemma3")
    prefix = "model." if head == "lm" else ""
    out: dict[str, Tensor] = {}
    for rule in hf_gemma.rules(config, qk_norm=True):
        value = net.get_parameter(rule.ours).detach()
        if ".qk_rmsnorm." in rule.ours and not bool((value == value[:1]).all()):
            raise ValueError(
                f"to_hf: {rule.ours} holds a different attn_qk_rmsnorm gain per head; Gemma 3 "
                "has one gain shared by the heads"
            )
        out.update({prefix + k: v for k, v in rule.to_hf(value).items()})
    if head == "lm" and not tied_head(net):
        out["lm_head.weight"] = net.get_parameter("to_logits.weight").detach()
    return {k: v.contiguous() for k, v in out.items()}


GEMMA3 = HFExporter(
    family=hf_gemma.GEMMA3,
    architectures={"lm": "Gemma3ForCausalLM", "hidden": "Gemma3TextModel"},
    config=_gemma3_config,
    weights=_gemma3_weights,
)
