"""pyproject.toml: the runtime dependencies are exactly what the package imports, every
requirement is bounded, the type annotations ship (py.typed), and CI's pins cover the extras."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# import name -> distribution name, where they differ
DISTRIBUTION = {"yaml": "pyyaml"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def _imported_third_party() -> set[str]:
    """Top-level modules imported anywhere in anyformer/ that are not the standard library."""
    found = set()
    for path in (ROOT / "anyformer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {
        m
        for m in found
        if m not in sys.stdlib_module_names and m not in ("anyformer", "__future__")
    }


def test_runtime_dependencies_are_exactly_the_imports():
    declared = {_name(r) for r in PROJECT["project"]["dependencies"]}
    imported = {DISTRIBUTION.get(m, m) for m in _imported_third_party()}
    assert imported == declared == {"torch", "safetensors", "tqdm", "matplotlib", "pyyaml", "tomli"}


def test_tomli_only_where_tomllib_is_missing():
    tomli = [r for r in PROJECT["project"]["dependencies"] if _name(r) == "tomli"]
    assert len(tomli) == 1 and tomli[0].endswith("; python_version < '3.11'")


@pytest.mark.parametrize("group", ["dependencies", "test", "docs", "bench"])
def test_every_requirement_is_bounded_above(group):
    project = PROJECT["project"]
    requirements = (
        project[group] if group == "dependencies" else project["optional-dependencies"][group]
    )
    unbounded = [r for r in requirements if "<" not in r and "==" not in r]
    assert unbounded == []


def test_the_torch_floor_is_the_tested_release():
    torch = next(r for r in PROJECT["project"]["dependencies"] if _name(r) == "torch")
    assert torch == "torch>=2.13,<3"
    assert 'TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"' in (ROOT / "scripts/setup.sh").read_text()


def test_type_annotations_ship():
    assert PROJECT["tool"]["setuptools"]["package-data"]["anyformer"] == ["py.typed"]
    assert (ROOT / "anyformer" / "py.typed").is_file()


def test_constraints_pin_every_extra_and_no_git_url():
    text = (ROOT / "constraints.txt").read_text()
    pins = {_name(line) for line in text.splitlines() if line and not line.startswith("#")}
    extras = PROJECT["project"]["optional-dependencies"]
    wanted = {_name(r) for r in PROJECT["project"]["dependencies"]} - {"torch", "tomli"}
    wanted |= {_name(r) for group in ("test", "docs", "bench") for r in extras[group]}
    pins = {p.replace("_", "-") for p in pins}
    assert sorted({w.replace("_", "-") for w in wanted} - pins) == []
    assert "torch" not in pins and "anyformer" not in pins
    assert "git+" not in text and "://" not in text
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r'[\w.-]+==[\w.+-]+ ; python_version == "3\.\d+"', x) for x in lines)
