"""Hyper-connections: ``num_residual_streams`` parallel residual streams in place of one
(Zhu et al., https://arxiv.org/abs/2409.19606, dynamic variant), with the manifold-constrained
mixing of mHC (https://arxiv.org/abs/2512.24880): per token, from the LayerNorm of the streams,

- the branch input is ``sum_s sigmoid(alpha_pre[s]) * stream[s]`` (H_pre),
- the streams are mixed by a doubly stochastic ``s x s`` matrix, ``Sinkhorn(alpha_res)``
  (H_res, ``hyper_conn_sinkhorn_iters`` alternating row / column normalisations after a
  column softmax),
- the branch output joins stream t with weight ``2 sigmoid(beta[t])`` (H_post),

each alpha / beta a static parameter plus a scaled linear map of the normalised streams. The
stack adds a learned embedding per stream to its input (``stream_emb``) and sums the streams
before its final norm. The parameters have x-transformers 2.x's names and shapes.

x-transformers 2.31.10 applies its Sinkhorn step to (s, 1, s) slices, which makes H_res the
all-ones matrix whatever the parameters; anyformer projects the s x s matrix as the paper says
(the tests compare with 2.x with that step corrected).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HyperConnection", "HyperState", "sinkhorn"]

HyperState = tuple[Tensor, Tensor]
"""(the mixed streams (b, n, s, d), the branch output's weights (b, n, s)) between a block's
branch input and its join."""


def sinkhorn(logits: Tensor, iters: int) -> Tensor:
    """A (nearly) doubly stochastic matrix from ``logits`` (..., s, s): softmax over the rows
    (dim -2), then ``iters`` times rows then columns normalised to sum 1 (in float32 at least)."""
    low = logits.dtype in (torch.float16, torch.bfloat16)
    t = (logits.float() if low else logits).softmax(dim=-2)
    for _ in range(iters):
        t = F.normalize(t, p=1, dim=-1)
        t = F.normalize(t, p=1, dim=-2)
    return t.to(logits.dtype)


class HyperConnection(nn.Module):
    """The width and depth connections of one layer over ``streams`` residual streams."""

    def __init__(self, dim: int, layer_index: int, streams: int, sinkhorn_iters: int = 5):
        super().__init__()
        self.streams = streams
        self.layer_index = layer_index
        self.sinkhorn_iters = sinkhorn_iters
        self.norm = nn.LayerNorm(dim, bias=False)
        self.static_beta = nn.Parameter(torch.empty(streams))
        self.static_alpha = nn.Parameter(torch.empty(streams, 1 + streams))
        self.dynamic_alpha_fn = nn.Parameter(torch.empty(dim, 1 + streams))
        self.dynamic_alpha_scale = nn.Parameter(torch.empty(()))
        self.dynamic_beta_fn = nn.Parameter(torch.empty(dim))
        self.dynamic_beta_scale = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Layer i reads stream i mod s; the streams start unmixed (identity H_res logits)."""
        s = self.streams
        with torch.no_grad():
            nn.init.ones_(self.static_beta)
            self.static_alpha.zero_()
            self.static_alpha[self.layer_index % s, 0] = 1.0
            self.static_alpha[:, 1:] = torch.eye(s)
            nn.init.zeros_(self.dynamic_alpha_fn)
            nn.init.constant_(self.dynamic_alpha_scale, 1e-2)
            nn.init.zeros_(self.dynamic_beta_fn)
            nn.init.constant_(self.dynamic_beta_scale, 1e-2)
        self.norm.reset_parameters()

    def prepare(self, x: Tensor) -> tuple[Tensor, HyperState]:
        """x, the streams (b * s, n, d) -> the branch input (b, n, d) and the state for join."""
        s = self.streams
        bs, n, d = x.shape
        streams = x.view(bs // s, s, n, d).transpose(1, 2)  # (b, n, s, d)
        normed = self.norm(streams)
        alpha = normed @ self.dynamic_alpha_fn * self.dynamic_alpha_scale + self.static_alpha
        weights = torch.cat(
            (torch.sigmoid(alpha[..., :1]), sinkhorn(alpha[..., 1:], self.sinkhorn_iters)), dim=-1
        )
        dynamic_beta = torch.sigmoid(normed @ self.dynamic_beta_fn) * 2 * self.dynamic_beta_scale
        beta = torch.sigmoid(dynamic_beta + self.static_beta) * 2
        mixed = torch.einsum("bnst,bnsd->bntd", weights, streams)
        return mixed[..., 0, :], (mixed[..., 1:, :], beta)

    def join(self, out: Tensor, state: HyperState) -> Tensor:
        """The branch output (b, n, d) added to the mixed streams -> (b * s, n, d)."""
        residuals, beta = state
        streams = residuals + out.unsqueeze(-2) * beta.unsqueeze(-1)
        b, n, s, d = streams.shape
        return streams.transpose(1, 2).reshape(b * s, n, d)
