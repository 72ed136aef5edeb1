"""x-transformers 2.x beside 1.28.2: the oracle of the keywords x-transformers added after 1.28.

``scripts/setup.sh`` installs it with the test extra into its own folder, ``.venv/xt2`` (pinned
there; ``ANYFORMER_XT2`` names another folder). Both releases are the package ``x_transformers``,
so :func:`xt2` imports the 2.x one under a private set of ``sys.modules`` entries and puts the
1.28.2 entries back: the returned module works (its own imports were bound at import time) and
``import x_transformers`` elsewhere still gives 1.28.2.

The anyformer package never imports it; tests do, to compare logits from the same weights.
"""

from __future__ import annotations

import importlib
import os
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
#: the folder holding x-transformers 2.x (``scripts/setup.sh`` installs it there with ``test``)
XT2_DIR = Path(os.environ.get("ANYFORMER_XT2", ROOT / ".venv" / "xt2"))
#: the version the tests were written against (scripts/setup.sh pins it)
XT2_VERSION = "2.31.10"

_PACKAGE = "x_transformers"


def _ours(name: str) -> bool:
    return name == _PACKAGE or name.startswith(_PACKAGE + ".")


@cache
def xt2() -> ModuleType:
    """The ``x_transformers`` package of release 2.x (``XT2_VERSION``), imported in isolation."""
    if not (XT2_DIR / _PACKAGE).is_dir():
        raise RuntimeError(
            f"x-transformers {XT2_VERSION} is not installed in {XT2_DIR}: run "
            "`bash scripts/setup.sh test` (it installs it there)"
        )
    saved = {k: v for k, v in sys.modules.items() if _ours(k)}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, str(XT2_DIR))
    loaded: dict[str, ModuleType] = {}
    try:
        module = importlib.import_module(_PACKAGE)
        loaded = {k: v for k, v in sys.modules.items() if _ours(k)}
    finally:
        sys.path.remove(str(XT2_DIR))
        for k in [k for k in sys.modules if _ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
    version = (XT2_DIR / f"x_transformers-{XT2_VERSION}.dist-info").is_dir()
    if not version:
        raise RuntimeError(f"{XT2_DIR} does not hold x-transformers {XT2_VERSION}")
    module.__dict__.setdefault("_anyformer_submodules", loaded)
    return module
