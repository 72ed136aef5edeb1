"""XTransformer: an encoder TransformerWrapper and a cross-attending decoder (Vaswani et al.)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..checks import check_non_empty
from ..config.options import from_dict, keyword_side, suggest, to_dict, unknown_keyword
from ..config.stack import stack_keyword_names
from ..config.vit import XTransformerConfig
from ..config.wrapper import split_keywords, wrapper_keywords
from ..generation.autoregressive import AutoregressiveWrapper
from ..nn.init import reset_module_tree
from ..nn.token_dropout import drop_tokens
from ..serialization import PretrainedMixin
from ..stack.layers import Decoder, Encoder
from .transformer import TransformerWrapper

__all__ = ["XTransformer"]

_WRAPPER_NAMES = set(wrapper_keywords())
_STACK_NAMES = set(stack_keyword_names()) | {
    "depth",
    "heads",
    "pre_norm",
    "pre_norm_has_final_norm",
}
_NOT_ROUTED = {
    "dim": "the model width is XTransformer's own `dim`",
    "attn_layers": "XTransformer builds its own stacks",
    "causal": "the encoder is bidirectional and the decoder causal",
    "cross_attend": "the decoder always cross-attends",
    "only_cross": "the decoder needs self-attention",
    "return_only_embed": "set by XTransformer",
}
_POOLED = (
    "pools the output to one vector per sequence, which can be neither the encoder's "
    "cross-attention context nor the decoder's per-position logits"
)
_NOT_ROUTED.update(
    dict.fromkeys(("use_cls_token", "num_cls_tokens", "average_pool_embed"), _POOLED)
)


def _route(side: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split one side's keywords (without their ``side`` prefix) between its TransformerWrapper
    and its stack; a name neither takes raises, named as the user wrote it."""
    for name in kwargs:
        full = f"{side}{name}"
        if name in _NOT_ROUTED:
            raise TypeError(f"XTransformer: keyword {full!r} is not accepted: {_NOT_ROUTED[name]}")
        if name not in _WRAPPER_NAMES and name not in _STACK_NAMES:
            valid = [f"{side}{n}" for n in (*_WRAPPER_NAMES, *_STACK_NAMES)]
            raise unknown_keyword("XTransformer", full, valid)
    wrapper, stack = split_keywords(kwargs, _WRAPPER_NAMES)
    for required in ("num_tokens", "max_seq_len"):
        if required not in wrapper:
            raise TypeError(f"XTransformer: missing required keyword {side + required!r}")
    return wrapper, stack


def _decoding(name: str, doc: str) -> Callable[..., Any]:
    """An XTransformer method that encodes ``seq_in`` once, then runs the decoder's ``name``
    (``generate`` / ``beam_search``) from ``seq_out_start``, cross-attending to the encoding."""

    @torch.no_grad()
    def method(
        self: XTransformer,
        seq_in: Tensor,
        seq_out_start: Tensor,
        seq_len: int,
        mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        src_prepend_embeds: Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        enc, mask = self.encode(seq_in, mask, attn_mask, src_prepend_embeds)
        run = getattr(self.decoder, name)
        return run(seq_out_start, seq_len, context=enc, context_mask=mask, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    return method


class XTransformer(PretrainedMixin, nn.Module, folder_model=True):
    """Encoder-decoder transformer; ``enc_*`` / ``dec_*`` keywords go to each side."""

    def __init__(
        self,
        *,
        dim: int,
        tie_token_emb: bool = False,
        ignore_index: int = -100,
        pad_value: int = 0,
        cross_attn_tokens_dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        enc_kwargs = {k[4:]: v for k, v in kwargs.items() if k.startswith("enc_")}
        dec_kwargs = {k[4:]: v for k, v in kwargs.items() if k.startswith("dec_")}
        for name in kwargs:
            if not name.startswith(("enc_", "dec_")):
                valid = list(XTransformerConfig.__dataclass_fields__)
                raise TypeError(
                    f"XTransformer got an unexpected keyword argument {name!r}: options of one side "
                    f"take an enc_ or dec_ prefix.{suggest(name, valid)}"
                )
        config = XTransformerConfig(
            dim=dim,
            tie_token_emb=tie_token_emb,
            ignore_index=ignore_index,
            pad_value=pad_value,
            cross_attn_tokens_dropout=cross_attn_tokens_dropout,
        )
        enc_wrapper, enc_stack = _route("enc_", enc_kwargs)
        dec_wrapper, dec_stack = _route("dec_", dec_kwargs)
        with keyword_side("enc_"):  # errors name the keywords as written: enc_rotary_xpos
            encoder = TransformerWrapper(
                **enc_wrapper, return_only_embed=True, attn_layers=Encoder(dim=dim, **enc_stack)
            )
        with keyword_side("dec_"):
            decoder = TransformerWrapper(
                **dec_wrapper, attn_layers=Decoder(dim=dim, cross_attend=True, **dec_stack)
            )
        self._setup(config, encoder, decoder)

    _resets_tree = True

    def _setup(
        self, config: XTransformerConfig, encoder: TransformerWrapper, decoder: TransformerWrapper
    ) -> None:
        self.config = config
        self.cross_attn_tokens_dropout = config.cross_attn_tokens_dropout
        self.encoder = encoder
        if config.tie_token_emb:
            if encoder.token_emb.emb.weight.shape != decoder.token_emb.emb.weight.shape:
                raise ValueError(
                    "XTransformer: tie_token_emb=True needs enc_num_tokens == dec_num_tokens (and "
                    f"equal embedding widths), got {encoder.num_tokens} and {decoder.num_tokens}"
                )
            decoder.token_emb = encoder.token_emb
            decoder.tie_weights()
        self.decoder = AutoregressiveWrapper(
            decoder, ignore_index=config.ignore_index, pad_value=config.pad_value
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> XTransformer:
        """Rebuild a model from ``config_dict()``: same modules, same state-dict keys."""
        data = dict(config)
        name = data.pop("class", cls.__name__)
        if name != cls.__name__:
            raise ValueError(f"{cls.__name__}.from_config: got a configuration of class {name!r}")
        encoder = TransformerWrapper.from_config(data.pop("encoder"))
        decoder = TransformerWrapper.from_config(data.pop("decoder"))
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model._setup(from_dict(XTransformerConfig, data), encoder, decoder)
        return model

    def reset_parameters(self) -> None:
        """Re-initialise every parameter (e.g. after building on the meta device)."""
        reset_module_tree(self)

    def tie_weights(self) -> None:
        """With dec_tie_embedding, re-tie the decoder's head to its token embedding (after a
        move that recreates parameters, such as ``to_empty``); the token embedding shared under
        tie_token_emb is one module, so it stays shared."""
        cast(TransformerWrapper, self.decoder.net).tie_weights()

    def config_dict(self) -> dict[str, Any]:
        """The resolved configuration as a plain dict."""
        return {
            "class": type(self).__name__,
            **to_dict(self.config),
            "encoder": self.encoder.config_dict(),
            "decoder": cast(TransformerWrapper, self.decoder.net).config_dict(),
        }

    def encode(
        self,
        src: Tensor,
        mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        src_prepend_embeds: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """src (b, n) -> encodings (b, [p +] n, dim) and the matching context mask."""
        if isinstance(src, Tensor):
            check_non_empty("src", src, "batch >= 1, seq_len >= 1")
        enc = self.encoder(src, mask=mask, attn_mask=attn_mask, prepend_embeds=src_prepend_embeds)
        if src_prepend_embeds is not None and mask is not None:
            ones = mask.new_ones(mask.shape[0], src_prepend_embeds.shape[1])
            mask = torch.cat((ones, mask), dim=1)
        return enc, mask

    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        src_prepend_embeds: Tensor | None = None,
    ) -> Tensor:
        """Next-token cross-entropy of tgt (b, m) given src (b, n)."""
        enc, mask = self.encode(src, mask, attn_mask, src_prepend_embeds)
        if self.training and self.cross_attn_tokens_dropout > 0:
            enc, mask = drop_tokens(enc, mask, self.cross_attn_tokens_dropout)
        return self.decoder(tgt, context=enc, context_mask=mask)

    generate = _decoding(
        "generate", "Encode seq_in once, then generate seq_len tokens after seq_out_start (cached)."
    )
    beam_search = _decoding(
        "beam_search",
        "Encode seq_in once, then beam-search seq_len tokens (AutoregressiveWrapper.beam_search).",
    )
