"""Test settings: one intra-op thread (tiny models run fastest that way on a 2-core CI box).

``ANYFORMER_HYPOTHESIS=fixed`` (set by scripts/test.sh, the CI command) makes hypothesis draw the
same examples every run, so that CI cannot fail on a newly drawn example; plain ``pytest``
explores new examples each run.
"""

import os

import torch
from hypothesis import settings

torch.set_num_threads(1)

settings.register_profile("fixed", derandomize=True, database=None)
if os.environ.get("ANYFORMER_HYPOTHESIS") == "fixed":
    settings.load_profile("fixed")
