"""The layer stack: blocks and AttentionLayers (Encoder, Decoder, PrefixDecoder, CrossAttender)."""

from .layers import AttentionLayers, CrossAttender, Decoder, Encoder, PrefixDecoder

__all__ = ["AttentionLayers", "CrossAttender", "Decoder", "Encoder", "PrefixDecoder"]
