"""Every Python block of the README runs as written, and keeps the promises it writes down: its
own ``assert`` lines, and every shape it documents in a comment (``out = f(x)  # (2, 16)``)."""

import ast
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
# a comment that starts with a literal shape: "# (2, 256, 20000)", "# (3, 32), KV-cached"
SHAPE_COMMENT = re.compile(r"#\s*\((\d+(?:,\s*\d+)*)\)(.*)$", flags=re.M)


def documented_shapes(source: str) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, shape, is_long) for every ``name = ...  # (d0, d1, ...)`` statement of a block; the
    comment sits on the statement's last line. ``is_long``: the comment also says "long"."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            match = SHAPE_COMMENT.search(lines[node.end_lineno - 1])
            if match and isinstance(target, ast.Name):
                shape = tuple(int(d) for d in match.group(1).split(","))
                found.append((target.id, shape, "long" in match.group(2)))
    return found


def test_every_python_fence_is_found_and_every_shape_comment_is_checkable():
    # the block regex misses no fence, so no example goes untested
    assert len(BLOCKS) == TEXT.count("```python") >= 8
    # every shape written in a comment belongs to an assignment the test below can check
    written = sum(len(SHAPE_COMMENT.findall(block)) for block in BLOCKS)
    assert written == sum(len(documented_shapes(block)) for block in BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_and_keeps_its_promises(index):
    torch.manual_seed(0)
    namespace: dict = {}
    # the block's own assert lines (shapes, equalities, error messages) run here
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), namespace)
    for name, shape, is_long in documented_shapes(BLOCKS[index]):
        value = namespace[name]
        assert tuple(value.shape) == shape, f"README block {index}: {name} is {value.shape}"
        if is_long:
            assert value.dtype == torch.long, f"README block {index}: {name} is {value.dtype}"
