"""The API reference (mkdocs.yml, docs/): every public name has a page, and the options page
lists every keyword the constructors accept. The site itself is built by scripts/test.sh
(`mkdocs build --strict`); these checks are the fast part."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import anyformer
from anyformer.config.later import LATER_ATTENTION, LATER_STACK, LATER_WRAPPER
from anyformer.config.stack import stack_keyword_names
from anyformer.wrappers.transformer import parse_wrapper_config

ROOT = Path(__file__).resolve().parents[1]
DIRECTIVE = re.compile(r"^::: ([\w.]+)", flags=re.M)


def _options_hook():
    spec = importlib.util.spec_from_file_location("docs_options", ROOT / "docs/hooks/options.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resolve(path: str) -> object:
    """The object a dotted path names: the longest importable module, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(path)


def _documented() -> list[object]:
    """What the pages' mkdocstrings directives show: the objects, and a module's ``__all__``."""
    paths = [
        m for page in (ROOT / "docs").rglob("*.md") for m in DIRECTIVE.findall(page.read_text())
    ]
    objects = [_resolve(p) for p in paths]
    exported = [getattr(o, n) for o in objects for n in getattr(o, "__all__", ())]
    return objects + exported


def test_every_public_name_is_on_a_page():
    documented = _documented()
    missing = [
        name
        for name in anyformer.__all__
        if name != "__version__" and not any(getattr(anyformer, name) is o for o in documented)
    ]
    assert missing == []


def test_every_page_in_the_navigation_exists():
    nav = re.findall(r":\s*([\w/]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M)
    assert len(nav) == 11
    assert [p for p in nav if not (ROOT / "docs" / p).is_file()] == []


def test_the_options_page_lists_every_keyword():
    text = _options_hook().options_markdown()
    listed = set(re.findall(r"`(\w+)`", text))
    later = set(LATER_STACK) | {"attn_" + n for n in LATER_ATTENTION}
    later |= {"cross_attn_" + n for n in LATER_ATTENTION}
    stack = set(stack_keyword_names()) - later
    assert len(stack) > 100  # dim, depth, heads, attn_*, cross_attn_*, ff_*, norms, positions
    assert sorted(stack - listed) == []
    wrapper = set(parse_wrapper_config("TransformerWrapper", {"num_tokens": 2, "max_seq_len": 2})
                  .__dataclass_fields__)  # fmt: skip
    assert sorted(wrapper - set(LATER_WRAPPER) - listed) == []


def test_an_option_row_has_its_default_doc_and_paper():
    text = _options_hook().options_markdown()
    row = next(line for line in text.splitlines() if line.startswith("| `macaron` |"))
    assert row == (
        "| `macaron` | `False` | Macaron: feedforward - attention - feedforward blocks with "
        "half-step feedforwards ([paper](https://arxiv.org/abs/1906.02762)) |"
    )
    attn = next(line for line in text.splitlines() if line.startswith("| `attn_dim_head`"))
    assert attn.startswith("| `attn_dim_head` / `cross_attn_dim_head` | `64` | width of each")


def test_every_configuration_dataclass_has_a_table():
    import dataclasses
    import pkgutil

    import anyformer.config

    hook = _options_hook()
    tables = [_resolve(path.replace(":", ".")) for _, path, _, _ in hook.SECTIONS]
    covered_fields = {f.name for cls in tables for f in dataclasses.fields(cls)}
    missing = []
    for info in pkgutil.iter_modules(anyformer.config.__path__):
        module = importlib.import_module(f"anyformer.config.{info.name}")
        for obj in vars(module).values():
            if dataclasses.is_dataclass(obj) and isinstance(obj, type):
                documented = [f.name for f in dataclasses.fields(obj) if "doc" in f.metadata]
                missing += [f"{obj.__name__}.{n}" for n in documented if n not in covered_fields]
    assert missing == []
