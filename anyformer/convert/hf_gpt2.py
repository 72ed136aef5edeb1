"""GPT-2 (Hugging Face ``GPT2LMHeadModel`` / ``GPT2Model``) -> anyformer.

The model: learned absolute positions, pre-LN blocks with LayerNorm biases, attention with
biased q/k/v and output projections, a GELU (tanh approximation) feedforward of width
``n_inner`` (default 4 * n_embd), a final LayerNorm and an LM head tied to the token embedding
(Radford et al. 2019, https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf).
Hugging Face stores the linears as ``Conv1D`` with (in, out) weights: they are transposed here.
The residual dropout (``resid_pdrop``) has no anyformer counterpart; dropout only acts in
training, so outputs in eval mode are unaffected.
"""

from __future__ import annotations

from torch import Tensor, nn

from .hf_base import (
    HFConfig,
    HFFamily,
    WeightLoader,
    check_divisible,
    hf_activation,
    layer_pairs,
    tied_head,
)

__all__ = ["FAMILY", "build", "load"]

_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu")


def build(config: HFConfig, head: str) -> nn.Module:
    """An anyformer TransformerWrapper with GPT-2's structure (random weights)."""
    from ..stack import Decoder
    from ..wrappers import TransformerWrapper

    config.require("scale_attn_weights", (True,), True)
    config.require("scale_attn_by_inverse_layer_idx", (False,), False)
    config.require("add_cross_attention", (False,), False)
    dim = config.get("n_embd")
    stack = Decoder(
        dim=dim,
        depth=config.get("n_layer"),
        heads=config.get("n_head"),
        attn_dim_head=check_divisible(config, "n_embd", "n_head"),
        attn_qkv_bias=True,
        attn_out_bias=True,
        attn_dropout=float(config.value_or("attn_pdrop", 0.0)),
        norm_bias=True,
        norm_eps=float(config.value_or("layer_norm_epsilon", 1e-5)),
        ff_inner_dim=config.value_or("n_inner", 4 * dim),
        **hf_activation(config, "activation_function", _ACTIVATIONS),
    )
    return TransformerWrapper(
        num_tokens=config.get("vocab_size"),
        max_seq_len=config.get("n_positions"),
        emb_dropout=float(config.value_or("embd_pdrop", 0.0)),
        tie_embedding=head == "lm" and bool(config.value_or("tie_word_embeddings", True)),
        return_only_embed=head == "hidden",
        attn_layers=stack,
    )


def load(loader: WeightLoader, config: HFConfig, model: nn.Module, head: str) -> None:
    """Copy a GPT-2 checkpoint's tensors into ``model`` (built by ``build``)."""
    take = loader.take

    def conv1d(name: str) -> tuple[Tensor, Tensor]:
        return take(f"{name}.weight").t(), take(f"{name}.bias")

    def norm(module: nn.Module, name: str) -> None:
        loader.set_norm(module, take(f"{name}.weight"), take(f"{name}.bias"), name)

    loader.set(model.get_parameter("token_emb.emb.weight"), take("wte.weight"), "wte.weight")
    loader.set_abs_positions(model.get_submodule("pos_emb"), take("wpe.weight"), "wpe.weight")
    stack = model.get_submodule("attn_layers")
    for i, (attn, ff) in enumerate(layer_pairs(stack)):
        p = f"h.{i}."
        norm(attn.get_submodule("pre_norm"), p + "ln_1")
        weight, bias = conv1d(p + "attn.c_attn")
        q, k, v = zip(weight.chunk(3), bias.chunk(3))
        out = conv1d(p + "attn.c_proj")
        loader.set_attention(attn.get_submodule("branch"), q, k, v, out, p + "attn")
        norm(ff.get_submodule("pre_norm"), p + "ln_2")
        up, down = conv1d(p + "mlp.c_fc"), conv1d(p + "mlp.c_proj")
        loader.set_feedforward(ff.get_submodule("branch"), up, down, p + "mlp")
    norm(stack.get_submodule("final_norm"), "ln_f")
    if head == "lm":
        loader.set_head(model, tied=tied_head(model))


FAMILY = HFFamily(
    name="GPT-2",
    model_types=("gpt2",),
    architectures={"GPT2LMHeadModel": "lm", "GPT2Model": "hidden"},
    build=build,
    load=load,
    prefixes=("transformer.", ""),
    probe="wte.weight",
    # causal-mask buffers of older checkpoints
    ignore=("*.attn.bias", "*.attn.masked_bias"),
)
