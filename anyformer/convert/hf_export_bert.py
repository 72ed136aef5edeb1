"""anyformer -> Hugging Face BERT (``BertModel``, the last hidden state; inverse of
:mod:`hf_bert`).

The model must have BERT's token-type embedding (``embed_num_tokens={"token_type": N}`` with
``embed_ids_default={"token_type": 0}``): Hugging Face's BERT always adds one. The pooler is not written (``transformers`` initialises
it; it does not take part in the last hidden state).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from . import hf_bert
from .hf_base import layer_pairs
from .hf_export_base import HFExporter, configs
from .hf_export_gpt2 import unscaled_table

__all__ = ["BERT"]


def _config(net: nn.Module, head: str) -> dict[str, Any]:
    wrapper, stack = configs(net)
    # Hugging Face's BERT always has a token-type table: a model without one differs
    types = dict(wrapper.embed_num_tokens)
    ff = stack.feedforward
    return {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "vocab_size": wrapper.num_tokens,
        "hidden_size": stack.dim,
        "num_hidden_layers": stack.depth,
        "num_attention_heads": stack.heads,
        "intermediate_size": ff.inner_dim or int(stack.dim * ff.mult),
        "hidden_act": "gelu_new" if ff.gelu_tanh else "gelu",
        "max_position_embeddings": wrapper.max_seq_len,
        "type_vocab_size": types.get("token_type", 1),
        "layer_norm_eps": stack.norm.eps,
        "hidden_dropout_prob": wrapper.emb_dropout,
        "attention_probs_dropout_prob": stack.attention.dropout,
        "position_embedding_type": "absolute",
        "is_decoder": False,
        "add_cross_attention": False,
    }


def _weights(net: nn.Module, head: str) -> dict[str, Tensor]:
    pos_emb = net.get_submodule("pos_emb")
    table = pos_emb.get_parameter("emb.weight")
    e = "embeddings."
    out: dict[str, Tensor] = {
        e + "word_embeddings.weight": net.get_parameter("token_emb.emb.weight"),
        e + "position_embeddings.weight": unscaled_table(
            table, float(getattr(pos_emb, "scale", 1.0))
        ),
        e + "token_type_embeddings.weight": net.get_parameter("embeds.token_type_embed.weight"),
    }

    def linear(name: str, module: nn.Module) -> None:
        out[name + ".weight"] = module.get_parameter("weight")
        out[name + ".bias"] = module.get_parameter("bias")

    linear(e + "LayerNorm", net.get_submodule("post_emb_norm"))
    for i, (attn, ff) in enumerate(layer_pairs(net.get_submodule("attn_layers"))):
        p = f"encoder.layer.{i}."
        qkv = attn.get_submodule("branch.qkv.to_qkv")
        for kind in ("weight", "bias"):
            parts = getattr(qkv, kind).detach().chunk(3)
            for name, part in zip(("query", "key", "value"), parts):
                out[f"{p}attention.self.{name}.{kind}"] = part.clone()
        linear(p + "attention.output.dense", attn.get_submodule("branch.to_out"))
        linear(p + "attention.output.LayerNorm", attn.get_submodule("post_norm"))
        linear(p + "intermediate.dense", ff.get_submodule("branch.proj_in"))
        linear(p + "output.dense", ff.get_submodule("branch.proj_out"))
        linear(p + "output.LayerNorm", ff.get_submodule("post_norm"))
    return out


BERT = HFExporter(
    family=hf_bert.FAMILY,
    architectures={"hidden": "BertModel"},
    config=_config,
    weights=_weights,
)
