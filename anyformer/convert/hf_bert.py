"""BERT (Hugging Face ``BertModel``) -> anyformer: the last hidden state.

The model: token + learned absolute position + token-type embeddings, a LayerNorm (with bias)
on their sum, post-LN encoder blocks (attention and GELU feedforward with biases everywhere),
no final norm (Devlin et al. 2018, https://arxiv.org/abs/1810.04805). anyformer's equivalent is a
TransformerWrapper with ``return_only_embed=True``, ``embed_num_tokens={"token_type": ...}``,
``post_emb_norm=True`` and an ``Encoder(pre_norm=False, ...)``. Token type ids are optional, as
in Hugging Face (which takes zeros when none are given): the model is built with
``embed_ids_default={"token_type": 0}``, so ``model(ids)`` equals Hugging Face without
``token_type_ids`` and ``model(ids, embed_ids={"token_type": token_type_ids})`` with them. The
pooler (a dense + tanh on the first token) is not part of
the last hidden state and is dropped.
"""

from __future__ import annotations

from torch import Tensor, nn

from .hf_base import HFConfig, HFFamily, WeightLoader, check_divisible, hf_activation, layer_pairs

__all__ = ["FAMILY", "build", "load"]

_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh")


def build(config: HFConfig, head: str) -> nn.Module:
    """An anyformer TransformerWrapper with BERT's structure (random weights)."""
    from ..stack import Encoder
    from ..wrappers import TransformerWrapper

    config.require("position_embedding_type", ("absolute",), "absolute")
    config.require("is_decoder", (False,), False)
    config.require("add_cross_attention", (False,), False)
    eps = float(config.value_or("layer_norm_eps", 1e-12))
    stack = Encoder(
        dim=config.get("hidden_size"),
        depth=config.get("num_hidden_layers"),
        heads=config.get("num_attention_heads"),
        attn_dim_head=check_divisible(config, "hidden_size", "num_attention_heads"),
        pre_norm=False,
        attn_qkv_bias=True,
        attn_out_bias=True,
        attn_dropout=float(config.value_or("attention_probs_dropout_prob", 0.0)),
        norm_bias=True,
        norm_eps=eps,
        ff_inner_dim=config.get("intermediate_size"),
        **hf_activation(config, "hidden_act", _ACTIVATIONS),
    )
    types = config.value_or("type_vocab_size", 0)
    return TransformerWrapper(
        num_tokens=config.get("vocab_size"),
        max_seq_len=config.get("max_position_embeddings"),
        embed_num_tokens={"token_type": types} if types else {},
        embed_ids_default={"token_type": 0} if types else {},
        post_emb_norm=True,
        post_emb_norm_bias=True,
        post_emb_norm_eps=eps,
        emb_dropout=float(config.value_or("hidden_dropout_prob", 0.0)),
        return_only_embed=True,
        attn_layers=stack,
    )


def load(loader: WeightLoader, config: HFConfig, model: nn.Module, head: str) -> None:
    """Copy a BERT checkpoint's tensors into ``model`` (built by ``build``)."""
    take = loader.take

    def linear(name: str) -> tuple[Tensor, Tensor]:
        return take(f"{name}.weight"), take(f"{name}.bias")

    def norm(module: nn.Module, name: str) -> None:
        loader.set_norm(module, *linear(name), name)

    e = "embeddings."
    words = take(e + "word_embeddings.weight")
    loader.set(model.get_parameter("token_emb.emb.weight"), words, "word_embeddings")
    positions = take(e + "position_embeddings.weight")
    loader.set_abs_positions(model.get_submodule("pos_emb"), positions, "positions")
    if getattr(model, "embeds", None) is not None:
        table = take(e + "token_type_embeddings.weight")
        types = model.get_parameter("embeds.token_type_embed.weight")
        loader.set(types, table, "token_type_embeddings")
    norm(model.get_submodule("post_emb_norm"), e + "LayerNorm")
    for i, (attn, ff) in enumerate(layer_pairs(model.get_submodule("attn_layers"))):
        p = f"encoder.layer.{i}."
        s = p + "attention.self."
        q, k, v = linear(s + "query"), linear(s + "key"), linear(s + "value")
        out = linear(p + "attention.output.dense")
        loader.set_attention(attn.get_submodule("branch"), q, k, v, out, p + "attention")
        norm(attn.get_submodule("post_norm"), p + "attention.output.LayerNorm")
        up, down = linear(p + "intermediate.dense"), linear(p + "output.dense")
        loader.set_feedforward(ff.get_submodule("branch"), up, down, p + "intermediate/output")
        norm(ff.get_submodule("post_norm"), p + "output.LayerNorm")


FAMILY = HFFamily(
    name="BERT",
    model_types=("bert",),
    architectures={"BertModel": "hidden"},
    build=build,
    load=load,
    prefixes=("bert.", ""),
    probe="embeddings.word_embeddings.weight",
    # the pooler is not part of the last hidden state; index buffers of older checkpoints
    ignore=("pooler.*", "bert.pooler.*", "*embeddings.position_ids", "*embeddings.token_type_ids"),
)
