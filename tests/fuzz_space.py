"""Hypothesis strategies over anyformer's keyword space (tests/test_fuzz_config.py).

``model_specs()`` draws a valid model: a wrapper kind, its keywords and its stack's keywords, with
tiny sizes (dim 8-32, depth 1-2, heads 1-4, sequences of 2-8). The draws respect the documented
constraints (``anyformer/config``), so every draw must build. ``build(spec)`` builds it and
``inputs(spec, model)`` draws matching inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from hypothesis import strategies as st

import anyformer as af
from anyformer.config.structure import layer_types

SEQ = 6  # tokens per fuzz input (within 2-8; cached checks split it in prefix + 2 steps)
BATCH = 2

KINDS = ("decoder", "encoder", "continuous_decoder", "continuous_encoder", "xtransformer", "vit")


@dataclass
class Spec:
    """One drawn model: its kind, the wrapper's keywords and the stack's keywords."""

    kind: str
    wrapper: dict[str, Any] = field(default_factory=dict)
    stack: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # a reproducer, as hypothesis prints it
        return f"Spec(kind={self.kind!r}, wrapper={self.wrapper!r}, stack={self.stack!r})"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# --------------------------------------------------------------------------- stack pieces


@st.composite
def attention_kwargs(draw: Any, heads: int, dim_head: int, prefix: str = "attn_") -> dict:
    """attn_* options (valid for any stack): kv heads, qk norm, gates, memory kv, kernels."""
    kw: dict[str, Any] = {prefix + "dim_head": dim_head}
    kv = draw(st.sampled_from(["all", "one", "grouped"]))
    if kv == "one":
        kw[prefix + "one_kv_head"] = True
    elif kv == "grouped":
        kw[prefix + "kv_heads"] = draw(st.sampled_from(_divisors(heads)))
    groups = [g for g in _divisors(dim_head) if dim_head // g > 2]
    if groups and draw(st.booleans()):
        kw[prefix + "qk_norm"] = True
        if draw(st.booleans()):
            kw[prefix + "qk_norm_groups"] = draw(st.sampled_from(groups))
        if draw(st.booleans()):
            kw[prefix + "qk_norm_scale"] = draw(st.sampled_from([1.0, 4.0, 16.0]))
        if draw(st.booleans()):
            kw[prefix + "qk_norm_dim_scale"] = True
    value = draw(st.sampled_from(["same", "wider", "shared"]))
    if value == "wider":
        kw[prefix + "value_dim_head"] = draw(st.sampled_from([4, 8, 12]))
    elif value == "shared":
        kw[prefix + "shared_kv"] = True
    flags = draw(
        st.fixed_dictionaries(
            {},
            optional={
                name: st.booleans()
                for name in (
                    "talking_heads",
                    "pre_talking_heads",
                    "post_talking_heads",
                    "add_zero_kv",
                    "on_attn",
                    "gate_value_heads",
                    "tensor_product",
                    "head_scale",
                    "qkv_bias",
                    "out_bias",
                    "zero_init_output",
                )
            },
        )
    )
    kw.update({prefix + k: v for k, v in flags.items()})
    if draw(st.booleans()):
        kw[prefix + "gate_values"] = True
        kw[prefix + "swiglu_values"] = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:
        kw[prefix + "sparse_topk"] = draw(st.integers(1, 4))
    if draw(st.booleans()):
        kw[prefix + "num_mem_kv"] = draw(st.integers(0, 2))
    if draw(st.booleans()):
        kw[prefix + "kernel"] = draw(st.sampled_from(["auto", "explicit"]))
    if draw(st.integers(0, 3)) == 0:
        kw[prefix + "dropout"] = 0.1
    return kw


@st.composite
def position_kwargs(draw: Any, causal: bool, heads: int, dim_head: int) -> dict:
    """Positions: none / rotary / xPos, optionally with one additive bias (ALiBi, T5, dynamic)."""
    kw: dict[str, Any] = {}
    rotary = draw(st.sampled_from(["none", "rotary", "xpos"] if causal else ["none", "rotary"]))
    if rotary != "none" and dim_head >= 2:
        kw["rotary_pos_emb"] = True
        if rotary == "xpos":
            kw["rotary_xpos"] = True
            if draw(st.booleans()):
                kw["rotary_xpos_scale_base"] = draw(st.sampled_from([8.0, 64.0, 512.0]))
        if draw(st.booleans()):
            kw["rotary_emb_dim"] = draw(st.sampled_from(range(2, dim_head + 1, 2)))
        if draw(st.booleans()):
            kw["rotary_interpolation_factor"] = draw(st.sampled_from([1.0, 2.0, 4.0]))
        if draw(st.booleans()):
            kw["rotary_base_rescale_factor"] = draw(st.sampled_from([1.0, 2.0, 8.0]))
        if draw(st.booleans()):
            kw["rotary_theta"] = draw(st.sampled_from([100.0, 10000.0, 500000.0]))
        if draw(st.booleans()):
            kw["attn_rotary_embed_values"] = True
    bias = draw(st.sampled_from(["none", "alibi", "t5", "dynamic"]))
    if bias == "alibi":
        kw["alibi_pos_bias"] = True
        if draw(st.booleans()):
            kw["alibi_num_heads"] = draw(st.integers(1, heads))
    elif bias == "t5":
        kw["rel_pos_bias"] = True
        if draw(st.booleans()):
            top = draw(st.integers(4, 32))
            kw["rel_pos_max_distance"] = top
            kw["rel_pos_num_buckets"] = draw(st.integers(2 if causal else 4, top))
    elif bias == "dynamic":
        kw["dynamic_pos_bias"] = True
        kw["dynamic_pos_bias_log_distance"] = draw(st.booleans())
        kw["dynamic_pos_bias_mlp_depth"] = draw(st.integers(1, 2))
        kw["dynamic_pos_bias_norm"] = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:
        kw["disable_abs_pos_emb"] = draw(st.booleans())
    return kw


@st.composite
def norm_kwargs(draw: Any) -> dict:
    kind = draw(st.sampled_from(["layer", "rms", "scale", "simple_rms"]))
    kw: dict[str, Any] = {}
    if kind == "layer":
        if draw(st.booleans()):
            kw["norm_bias"] = True
    else:
        kw[{"rms": "use_rmsnorm", "scale": "use_scalenorm", "simple_rms": "use_simple_rmsnorm"}[
            kind
        ]] = True  # fmt: skip
    if draw(st.booleans()):
        kw["norm_eps"] = draw(st.sampled_from([1e-6, 1e-5, 1e-3]))
    return kw


def _par_ok(block: tuple[str, ...], depth: int, ratio: int) -> bool:
    """The PAR constraint documented in config/structure.py (one attention group per ratio)."""
    par_depth = depth * len(block)
    if not 1 < ratio <= par_depth:
        return False
    attn = [t for t in block if t != "f"]
    par_attn = par_depth // ratio
    cut = par_depth * 2 // 3
    return len(attn) <= (cut + cut // par_attn) // par_attn


def _layer_types(kw: dict[str, Any], depth: int, cross: bool) -> tuple[str, ...]:
    """The layer types the structure keywords give (x-transformers' rules)."""
    options = {
        "only_cross": False,
        "cross_attend": cross,
        "macaron": False,
        "weight_tie_layers": False,
        "custom_layers": None,
        "par_ratio": None,
        "sandwich_coef": None,
        **{k: v for k, v in kw.items() if k in _ORDER_KEYS},
        "depth": depth,
    }
    return layer_types(SimpleNamespace(**options))


_ORDER_KEYS = ("macaron", "weight_tie_layers", "custom_layers", "par_ratio", "sandwich_coef")


@st.composite
def structure_kwargs(draw: Any, depth: int, dim: int, causal: bool, cross: bool) -> dict:
    """Layer orders and residual options."""
    kw: dict[str, Any] = {}
    macaron = draw(st.booleans())
    if macaron:
        kw["macaron"] = True
    block = ("a", "c", "f") if cross else ("a", "f")
    block = ("f", *block) if macaron else block
    order = draw(st.sampled_from(["plain", "custom", "sandwich", "par", "tie", "execute"]))
    count = len(block) * depth
    if order == "custom":
        letters = ["a", "f", "c"] if cross else ["a", "f"]
        kw["custom_layers"] = tuple(
            draw(st.lists(st.sampled_from(letters), min_size=1, max_size=5))
        )
        count = len(kw["custom_layers"])
    elif order == "sandwich":
        kw["sandwich_coef"] = draw(st.integers(1, depth))
        count = 2 * kw["sandwich_coef"] + len(block) * (depth - kw["sandwich_coef"])
    elif order == "par":
        ratios = [r for r in range(2, count + 1) if _par_ok(block, depth, r)]
        if ratios:
            kw["par_ratio"] = draw(st.sampled_from(ratios))
    elif order == "tie":
        kw["weight_tie_layers"] = True
        count = len(block)
    elif order == "execute":
        kw["layers_execute_order"] = tuple(
            draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=4))
        )
    residual = draw(st.sampled_from(["pre", "post", "sandwich", "resi_dual"]))
    if residual == "post":
        kw["pre_norm"] = False
    elif residual == "sandwich":
        kw["sandwich_norm"] = True
    elif residual == "resi_dual":
        kw["resi_dual"] = True
        if draw(st.booleans()):
            kw["resi_dual_scale"] = draw(st.sampled_from([0.5, 1.0]))
    if residual == "pre" and draw(st.integers(0, 3)) == 0:
        kw["pre_norm_has_final_norm"] = False
    if draw(st.integers(0, 2)) == 0:
        kw["gate_residual"] = True
    elif draw(st.integers(0, 2)) == 0:
        kw["scale_residual_constant"] = draw(st.sampled_from([0.5, 2.0]))
    extra = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "scale_residual": st.booleans(),
                "zero_init_branch_output": st.booleans(),
                "residual_attn": st.booleans(),
            },
        )
    )
    kw.update(extra)
    if cross and draw(st.booleans()):
        kw["cross_residual_attn"] = True
    if draw(st.integers(0, 2)) == 0:
        if draw(st.booleans()):
            kw["shift_tokens"] = draw(st.integers(0, 1))
        else:
            count = len(_layer_types(kw, depth, cross))
            kw["shift_tokens"] = tuple(
                draw(st.lists(st.integers(0, 1), min_size=count, max_size=count))
            )
    if draw(st.integers(0, 3)) == 0:
        kw["layer_dropout"] = 0.1
    return kw


@st.composite
def feedforward_kwargs(draw: Any) -> dict:
    kw: dict[str, Any] = {}
    act = draw(st.sampled_from(["gelu", "swish", "gelu_tanh", "relu_squared"]))
    if act != "gelu":
        kw["ff_" + act] = True
    if draw(st.booleans()):
        kw["ff_glu"] = True
        kw["ff_glu_mult_bias"] = draw(st.booleans())
    if draw(st.booleans()):
        kw["ff_mult"] = draw(st.sampled_from([1, 2, 1.5]))
    elif draw(st.integers(0, 3)) == 0:
        kw["ff_inner_dim"] = draw(st.integers(1, 24))
    flags = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "ff_post_act_ln": st.booleans(),
                "ff_no_bias": st.booleans(),
                "ff_zero_init_output": st.booleans(),
            },
        )
    )
    kw.update(flags)
    if draw(st.integers(0, 3)) == 0:
        kw["ff_dropout"] = 0.1
    if draw(st.integers(0, 3)) == 0:
        kw.update(draw(experts_kwargs()))
    return kw


@st.composite
def experts_kwargs(draw: Any) -> dict:
    """A small mixture of experts (2-3 experts, any top_k, maybe a shared expert, capacity)."""
    experts = draw(st.integers(2, 3))
    kw: dict[str, Any] = {"ff_num_experts": experts, "ff_top_k": draw(st.integers(1, experts))}
    optional = {
        "ff_num_shared_experts": st.integers(0, 1),
        "ff_capacity_factor": st.sampled_from([0.5, 1.0]),
        "ff_router_renormalize": st.booleans(),
    }
    kw.update(draw(st.fixed_dictionaries({}, optional=optional)))
    return kw


@st.composite
def stack_kwargs(draw: Any, causal: bool, cross: bool = False) -> dict:
    """Keywords of one Decoder / Encoder (dim, depth, heads and every option family)."""
    dim = draw(st.sampled_from([8, 16, 24, 32]))
    depth = draw(st.integers(1, 2))
    heads = draw(st.integers(1, 4))
    dim_head = draw(st.sampled_from([4, 8, 16]))
    kw: dict[str, Any] = {"dim": dim, "depth": depth, "heads": heads}
    kw.update(draw(attention_kwargs(heads, dim_head)))
    if cross and draw(st.booleans()):  # cross_attn_* override the inherited attn_* options
        kw["cross_attn_qkv_bias"] = True
        if "attn_qk_norm_groups" not in kw and "attn_shared_kv" not in kw:
            kw["cross_attn_dim_head"] = draw(st.sampled_from([4, 8]))
    kw.update(draw(position_kwargs(causal, heads, dim_head)))
    kw.update(draw(norm_kwargs()))
    kw.update(draw(structure_kwargs(depth, dim, causal, cross)))
    kw.update(draw(feedforward_kwargs()))
    if causal and draw(st.integers(0, 4)) == 0:
        kw["attn_max_attend_past"] = draw(st.integers(1, 4))
    return _avoid_known_defects(_drop_refused(kw, heads, dim_head))


def _avoid_known_defects(kw: dict[str, Any]) -> dict[str, Any]:
    """Leave out the defects the fuzzing found, each reproduced by an xfail(strict=True) test in
    test_fuzz_config.py; delete a line here when its test passes."""
    return kw


def _drop_refused(kw: dict[str, Any], heads: int, dim_head: int) -> dict[str, Any]:
    """Leave out the combinations anyformer refuses at construction (test_fuzz_config.py checks
    that each is refused naming its keywords): qk_norm_dim_scale with grouped keys/values and
    rotary; NTK rescaling of a 2-feature rotary; rotated values of another width than the keys."""
    if kw.get("attn_rotary_embed_values") and kw.get("attn_value_dim_head") not in (None, dim_head):
        kw.pop("attn_value_dim_head")
    rotary = kw.get("rotary_pos_emb", False)
    kv = 1 if kw.get("attn_one_kv_head") else kw.get("attn_kv_heads", heads)
    if rotary and kv != heads:
        kw.pop("attn_qk_norm_dim_scale", None)
    rot_dim = kw.get("rotary_emb_dim", min(max(dim_head // 2, 32), dim_head - dim_head % 2))
    if rotary and rot_dim <= 2:
        kw.pop("rotary_base_rescale_factor", None)
    return kw


# --------------------------------------------------------------------------- wrappers


@st.composite
def memory_kwargs(draw: Any, causal: bool) -> dict:
    kw: dict[str, Any] = {}
    if draw(st.booleans()):
        kw["num_memory_tokens"] = draw(st.integers(1, 2))
        if causal and draw(st.integers(0, 2)) == 0:
            kw["memory_tokens_interspersed_every"] = draw(st.integers(2, 4))
    if causal and draw(st.integers(0, 2)) == 0:
        kw["max_mem_len"] = draw(st.integers(0, 4))
    return kw


@st.composite
def token_wrapper_kwargs(draw: Any, dim: int, causal: bool) -> dict:
    kw: dict[str, Any] = {
        "num_tokens": draw(st.integers(SEQ, 32)),
        "max_seq_len": draw(st.sampled_from([0, 8, 16])),
    }
    head = draw(st.sampled_from(["plain", "tie", "logits_dim", "emb_dim", "only_embed"]))
    if head == "tie":
        kw["tie_embedding"] = True
    elif head == "logits_dim":
        kw["logits_dim"] = draw(st.integers(2, 12))
    elif head == "emb_dim":
        kw["emb_dim"] = draw(st.sampled_from([4, 8, 12]))
    elif head == "only_embed":
        kw["return_only_embed"] = True
    flags = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "post_emb_norm": st.booleans(),
                "scaled_sinu_pos_emb": st.booleans(),
                "l2norm_embed": st.booleans(),
                "use_abs_pos_emb": st.booleans(),
                "emb_frac_gradient": st.sampled_from([0.1, 0.5, 1.0]),
                "emb_dropout": st.sampled_from([0.0, 0.1]),
            },
        )
    )
    kw.update(flags)
    kw.update(draw(memory_kwargs(causal)))
    return kw


@st.composite
def model_specs(draw: Any, kinds: tuple[str, ...] = KINDS) -> Spec:
    """A valid model of one of `kinds`."""
    kind = draw(st.sampled_from(kinds))
    if kind in ("decoder", "encoder"):
        causal = kind == "decoder"
        stack = draw(stack_kwargs(causal))
        return Spec(kind, draw(token_wrapper_kwargs(stack["dim"], causal)), stack)
    if kind.startswith("continuous"):
        causal = kind == "continuous_decoder"
        stack = draw(stack_kwargs(causal))
        wrapper = {"max_seq_len": draw(st.sampled_from([0, 8, 16]))}
        if draw(st.booleans()):
            wrapper["dim_in"] = draw(st.integers(1, 12))
        if draw(st.booleans()):
            wrapper["dim_out"] = draw(st.integers(1, 12))
        wrapper.update(
            draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "post_emb_norm": st.booleans(),
                        "scaled_sinu_pos_emb": st.booleans(),
                        "use_abs_pos_emb": st.booleans(),
                    },
                )
            )
        )
        wrapper.update(draw(memory_kwargs(causal)))
        return Spec(kind, wrapper, stack)
    if kind == "vit":
        patch = draw(st.sampled_from([2, 4]))
        wrapper = {
            "image_size": patch * draw(st.integers(1, 2)),
            "patch_size": patch,
            "channels": draw(st.integers(1, 3)),
            "num_classes": draw(st.sampled_from([None, 3])),
            "post_emb_norm": draw(st.booleans()),
            "num_register_tokens": draw(st.integers(0, 2)),
        }
        return Spec(kind, wrapper, draw(stack_kwargs(causal=False)))
    # xtransformer: both sides share dim
    enc = draw(stack_kwargs(causal=False))
    dec = draw(stack_kwargs(causal=True, cross=True))
    dec["dim"] = enc["dim"]
    wrapper: dict[str, Any] = {"dim": enc.pop("dim"), "tie_token_emb": draw(st.booleans())}
    dec.pop("dim")
    vocab = draw(st.integers(SEQ, 16))
    wrapper["enc_num_tokens"] = vocab
    wrapper["dec_num_tokens"] = vocab if wrapper["tie_token_emb"] else draw(st.integers(SEQ, 16))
    wrapper["enc_max_seq_len"] = draw(st.sampled_from([0, 8]))
    wrapper["dec_max_seq_len"] = draw(st.sampled_from([0, 8]))
    stack = {**{"enc_" + k: v for k, v in enc.items()}, **{"dec_" + k: v for k, v in dec.items()}}
    return Spec(kind, wrapper, stack)


# --------------------------------------------------------------------------- build / inputs


def build(spec: Spec) -> torch.nn.Module:
    """The model a spec describes."""
    if spec.kind == "xtransformer":
        return af.XTransformer(**spec.wrapper, **spec.stack)
    causal = spec.kind in ("decoder", "continuous_decoder")
    layers = (af.Decoder if causal else af.Encoder)(**spec.stack)
    if spec.kind in ("decoder", "encoder"):
        return af.TransformerWrapper(**spec.wrapper, attn_layers=layers)
    if spec.kind == "vit":
        return af.ViTransformerWrapper(**spec.wrapper, attn_layers=layers)
    return af.ContinuousTransformerWrapper(**spec.wrapper, attn_layers=layers)


def _token_ids(spec: Spec, vocab: int, g: torch.Generator) -> torch.Tensor:
    """(BATCH, SEQ) ids (repeats included: sparse_topk keeps tied logits alike in every path)."""
    return torch.randint(0, vocab, (BATCH, SEQ), generator=g)


def inputs(spec: Spec, seed: int) -> tuple[torch.Tensor, ...]:
    """Positional inputs of the model's forward (a batch of BATCH, SEQ positions)."""
    g = torch.Generator().manual_seed(seed)
    if spec.kind in ("decoder", "encoder"):
        return (_token_ids(spec, spec.wrapper["num_tokens"], g),)
    if spec.kind == "vit":
        side = spec.wrapper["image_size"]
        return (torch.randn(BATCH, spec.wrapper["channels"], side, side, generator=g),)
    if spec.kind == "xtransformer":
        src = _token_ids(spec, spec.wrapper["enc_num_tokens"], g)
        tgt = _token_ids(spec, spec.wrapper["dec_num_tokens"], g)
        return (src, tgt)
    dim_in = spec.wrapper.get("dim_in") or spec.stack["dim"]
    return (torch.randn(BATCH, SEQ, dim_in, generator=g),)


def without_compile_defects(spec: Spec) -> Spec:
    """The spec less the options with a known graph break (each has an xfail(strict=True) test
    in test_fuzz_config.py; delete its line here when that test passes)."""
    wrapper = dict(spec.wrapper)
    return Spec(spec.kind, wrapper, dict(spec.stack))
