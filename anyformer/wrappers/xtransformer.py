"""XTransformer: an encoder TransformerWrapper and a cross-attending decoder (Vaswani et al.)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_non_empty
from ..config.later import LATER_WRAPPER
from ..config.options import from_dict, suggest, to_dict
from ..config.stack import stack_keyword_names
from ..config.vit import XTransformerConfig
from ..generation.autoregressive import AutoregressiveWrapper
from ..nn.init import reset_module_tree
from ..nn.token_dropout import drop_tokens
from ..serialization import PretrainedMixin
from ..stack.layers import Decoder, Encoder
from .transformer import _WRAPPER_FIELDS, TransformerWrapper

__all__ = ["XTransformer"]

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


def _route(side: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split one side's keywords between its TransformerWrapper and its stack."""
    wrapper, stack = {}, {}
    for name, value in kwargs.items():
        full = f"{side}_{name}"
        if name in _NOT_ROUTED:
            raise TypeError(f"XTransformer: keyword {full!r} is not accepted: {_NOT_ROUTED[name]}")
        if name in _WRAPPER_FIELDS or name in LATER_WRAPPER:
            wrapper[name] = value
        elif name in _STACK_NAMES:
            stack[name] = value
        else:
            valid = [f"{side}_{n}" for n in (*_WRAPPER_FIELDS, *_STACK_NAMES)]
            raise TypeError(
                f"XTransformer got an unexpected keyword argument {full!r}.{suggest(full, valid)}"
            )
    for required in ("num_tokens", "max_seq_len"):
        if required not in wrapper:
            raise TypeError(f"XTransformer: missing required keyword {side + '_' + required!r}")
    return wrapper, stack


@contextmanager
def _naming_side(side: str, kwargs: dict[str, Any]) -> Iterator[None]:
    """Re-raise a side's ValueError / TypeError with its keywords as the user wrote them
    (``rotary_xpos_scale_base`` -> ``dec_rotary_xpos_scale_base``)."""
    try:
        yield
    except (ValueError, TypeError) as e:
        known = {*_WRAPPER_FIELDS, *_STACK_NAMES} - {"dim"}  # dim is XTransformer's own
        names = {n for n in known if "_" in n} | (set(kwargs) - {"dim"})
        pattern = r"(?<![\w.])(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True))
        message = re.sub(pattern + r")(?!\w)", rf"{side}_\1", str(e))
        if message == str(e) or type(e) not in (ValueError, TypeError):
            raise
        raise type(e)(f"XTransformer ({side}_ side): {message}") from e


class XTransformer(PretrainedMixin, nn.Module):
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
        enc_wrapper, enc_stack = _route("enc", enc_kwargs)
        dec_wrapper, dec_stack = _route("dec", dec_kwargs)
        with _naming_side("enc", enc_kwargs):
            encoder = TransformerWrapper(
                **enc_wrapper, return_only_embed=True, attn_layers=Encoder(dim=dim, **enc_stack)
            )
        with _naming_side("dec", dec_kwargs):
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

    def config_dict(self) -> dict[str, Any]:
        """The resolved configuration as a plain dict."""
        return {
            "class": type(self).__name__,
            **to_dict(self.config),
            "encoder": self.encoder.config_dict(),
            "decoder": self.decoder.net.config_dict(),
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

    @torch.no_grad()
    def generate(
        self,
        seq_in: Tensor,
        seq_out_start: Tensor,
        seq_len: int,
        mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        src_prepend_embeds: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Encode seq_in once, then generate seq_len tokens after seq_out_start (cached)."""
        enc, mask = self.encode(seq_in, mask, attn_mask, src_prepend_embeds)
        return self.decoder.generate(
            seq_out_start, seq_len, context=enc, context_mask=mask, **kwargs
        )

    @torch.no_grad()
    def beam_search(
        self,
        seq_in: Tensor,
        seq_out_start: Tensor,
        seq_len: int,
        mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        src_prepend_embeds: Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Encode seq_in once, then beam-search seq_len tokens (AutoregressiveWrapper.beam_search)."""
        enc, mask = self.encode(seq_in, mask, attn_mask, src_prepend_embeds)
        return self.decoder.beam_search(
            seq_out_start, seq_len, context=enc, context_mask=mask, **kwargs
        )
