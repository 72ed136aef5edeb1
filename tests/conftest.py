"""Test settings: one intra-op thread (tiny models run fastest that way on a 2-core CI box)."""

import torch

torch.set_num_threads(1)
