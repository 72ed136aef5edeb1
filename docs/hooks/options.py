"""mkdocs hook: fills the `<!-- options -->` marker of docs/options.md with one table per
configuration dataclass, read from the fields' one-line docs (`anyformer.config.options.option`),
so the page lists every keyword the code accepts and cannot drift from it."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

MARKER = "<!-- options -->"

# (heading, module:class, keyword prefix(es) the constructor takes the fields under, intro)
SECTIONS: list[tuple[str, str, tuple[str, ...], str]] = [
    ("Stack", "anyformer.config.stack:StackConfig", ("",),
     "Keywords of `AttentionLayers`, `Encoder`, `Decoder`, `PrefixDecoder`, `CrossAttender`."),
    ("Norms", "anyformer.config.norm:NormConfig", ("",), "Stack keywords choosing the norms."),
    ("Positions", "anyformer.config.positions:PositionConfig", ("",),
     "Stack keywords choosing the positional scheme."),
    ("Attention", "anyformer.config.attention:AttentionConfig", ("attn_", "cross_attn_"),
     "Stack keywords of the self-attention (`attn_*`) and cross-attention (`cross_attn_*`, "
     "defaulting to the `attn_*` values) modules."),
    ("Feedforward", "anyformer.config.feedforward:FeedForwardConfig", ("ff_",),
     "Stack keywords of the feedforward modules."),
    ("TransformerWrapper", "anyformer.config.wrapper:WrapperConfig", ("",),
     "Keywords of the token model (besides `attn_layers`)."),
    ("ContinuousTransformerWrapper", "anyformer.config.continuous:ContinuousConfig", ("",),
     "Keywords of the model over real-valued sequences (besides `attn_layers`)."),
    ("ViTransformerWrapper", "anyformer.config.vit:ViTConfig", ("",),
     "Keywords of the vision model (besides `attn_layers`)."),
    ("XTransformer", "anyformer.config.vit:XTransformerConfig", ("",),
     "Keywords of the encoder-decoder (besides the `enc_*` / `dec_*` stack keywords)."),
]  # fmt: skip


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(field: dataclasses.Field[Any]) -> str:
    if field.default is not dataclasses.MISSING:
        return f"`{field.default!r}`"
    if field.default_factory is not dataclasses.MISSING:
        return f"`{field.default_factory()!r}`"
    return "required"


def _table(cls: type, prefixes: tuple[str, ...]) -> str:
    rows = ["| keyword | default | what it does |", "| --- | --- | --- |"]
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(field.default):
            continue  # a nested group: it has its own table
        doc = field.metadata.get("doc", "")
        paper = field.metadata.get("paper")
        link = f" ([paper]({paper}))" if paper else ""
        names = " / ".join(f"`{p}{field.name}`" for p in prefixes)
        rows.append(f"| {names} | {_cell(_default(field))} | {_cell(doc)}{link} |")
    return "\n".join(rows)


def options_markdown() -> str:
    """Every section's heading, introduction and table."""
    parts = []
    for heading, path, prefixes, intro in SECTIONS:
        module, name = path.split(":")
        cls = getattr(importlib.import_module(module), name)
        source = f"Read from the fields of `{path.replace(':', '.')}`."
        parts.append(f"## {heading}\n\n{intro} {source}\n\n{_table(cls, prefixes)}\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """mkdocs event: replace the marker on the page that has it."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, options_markdown())
