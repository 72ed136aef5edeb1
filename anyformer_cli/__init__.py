"""The ``anyformer`` console script's entry: sets ``OMP_WAIT_POLICY=PASSIVE`` for ``train``
before torch is imported, then runs :func:`anyformer.cli.main.cli`.

OpenMP reads the variable once, when torch loads it, and importing anything inside the
``anyformer`` package imports torch; so the entry lives outside it, in this torch-free module.
Other ways in (``python -m anyformer``, ``torchrun -m anyformer``) get the same setting from
:mod:`anyformer.cli.launch`, which re-executes the command once. A value the user set is kept.
"""

import os
import sys

_WORDS = [a for a in sys.argv[1:] if not a.startswith("-")]
if _WORDS[:1] == ["train"]:  # the rule of anyformer.cli.launch.passive_command
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from anyformer.cli.main import cli  # noqa: E402 - torch starts here, after the setting

__all__ = ["cli"]
