"""Hooks on the explicit attention path (what talking heads, top-k, residual attention need)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anyformer.nn.attend import Attend
from anyformer.nn.masks import build_attention_mask


class HeadMix(nn.Module):
    """Mix heads with a fixed matrix: (b, h, i, j) -> (b, h, i, j)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return torch.einsum("gh,bhij->bgij", self.weight, t)


class KeepTop1(nn.Module):
    def forward(self, sim: torch.Tensor) -> torch.Tensor:
        top = sim.argmax(dim=-1, keepdim=True)
        keep = torch.zeros_like(sim, dtype=torch.bool).scatter(-1, top, True)
        return sim.masked_fill(~keep, torch.finfo(sim.dtype).min)


def test_hooks_run_where_they_belong_float64():
    torch.manual_seed(0)
    b, h, n, d = 1, 2, 4, 8
    q, k, v = (torch.randn(b, h, n, d, dtype=torch.float64) for _ in range(3))
    pre, post = torch.randn(h, h, dtype=torch.float64), torch.randn(h, h, dtype=torch.float64)
    attend = Attend(logit_hooks=[HeadMix(pre)], prob_hooks=[HeadMix(post)])
    out, inter = attend(q, k, v, build_attention_mask(q_len=n, k_len=n, causal=True))
    sim = torch.einsum("gh,bhij->bgij", pre, q @ k.transpose(-1, -2) / d**0.5)
    sim = sim.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    attn = torch.einsum("gh,bhij->bgij", post, sim.softmax(-1))
    torch.testing.assert_close(out, attn @ v)
    # the reported weights are the softmax's, before the post-softmax hooks (as x-transformers)
    torch.testing.assert_close(inter.post_softmax_attn, sim.softmax(-1))


def test_masked_logit_hooks_see_masked_logits():
    # a top-1 hook after masking can never pick a future key (the seed's sparse_topk leak)
    torch.manual_seed(0)
    n = 6
    q, k = torch.randn(1, 1, n, 4), torch.randn(1, 1, n, 4)
    k[..., -1, :] = q[..., 0, :] * 100  # the last key is every query's favourite
    v = torch.eye(n).view(1, 1, n, n)
    out, _ = Attend(masked_logit_hooks=[KeepTop1()])(
        q, k, v, build_attention_mask(q_len=n, k_len=n, causal=True)
    )
    chosen = out[0, 0].argmax(-1)
    assert (chosen <= torch.arange(n)).all()
    assert torch.equal(out[0, 0].sum(-1), torch.ones(n))


def test_flash_with_hooks_is_refused():
    with pytest.raises(ValueError, match="flash=True cannot run attention-matrix hooks"):
        Attend(flash=True, masked_logit_hooks=[KeepTop1()])
