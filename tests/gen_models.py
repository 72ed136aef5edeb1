"""Tiny models and independent reference computations shared by the generation tests."""

from __future__ import annotations

import copy
import itertools
import math

import torch

from anyformer import Decoder, TransformerWrapper

DIM = 32


def decoder_net(seed=0, vocab=32, max_seq_len=96, dim=DIM, depth=2, logit_scale=1.0, **kwargs):
    """A tiny causal model in eval mode; `logit_scale` sharpens its next-token distributions."""
    torch.manual_seed(seed)
    layers = Decoder(dim=dim, depth=depth, heads=2, attn_dim_head=16, **kwargs)
    net = TransformerWrapper(num_tokens=vocab, max_seq_len=max_seq_len, attn_layers=layers).eval()
    if logit_scale != 1.0:
        with torch.no_grad():
            net.to_logits.weight.mul_(logit_scale)
    return net


def float64_copy(net):
    """The same weights in float64: a reference path independent of float32 rounding."""
    return copy.deepcopy(net).double().eval()


def prompt_list(lens, vocab=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g) for n in lens]


@torch.no_grad()
def greedy_by_hand(net, prompt, steps, **kwargs):
    """Greedy decoding of one 1-D prompt by full recomputation, straight from net's logits."""
    seq = prompt[None]
    for _ in range(steps):
        nxt = net(seq, **kwargs)[:, -1].argmax(-1)
        seq = torch.cat((seq, nxt[:, None]), dim=1)
    return seq[0, len(prompt) :]


@torch.no_grad()
def sequence_log_probs(net64, prompt, seqs, temperature=1.0, keep_top=None, **kwargs):
    """log p(seq | prompt) in float64 for each row of seqs (m, L), by full recomputation.

    With `keep_top`, each step's distribution keeps only its `keep_top` most likely tokens
    (a top-k filter) before the temperature softmax.
    """
    full = torch.cat((prompt[None].expand(seqs.shape[0], -1), seqs), dim=1)
    logits = net64(full, **kwargs)[:, len(prompt) - 1 : -1].double()  # predicts seqs
    if keep_top is not None:
        kth = logits.topk(keep_top, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    logp = (logits / temperature).log_softmax(dim=-1)
    return logp.gather(-1, seqs[..., None])[..., 0].sum(dim=1)


def all_sequences(vocab, length):
    """Every sequence of `length` tokens over the vocabulary, (vocab ** length, length)."""
    return torch.tensor(list(itertools.product(range(vocab), repeat=length)), dtype=torch.long)


def chi_square_p_value(observed, expected_probs, min_expected=5.0):
    """Pearson chi-square goodness of fit; bins expecting < `min_expected` counts are pooled.

    The p-value uses the Wilson-Hilferty normal approximation of the chi-square tail.
    """
    observed = torch.as_tensor(observed, dtype=torch.float64)
    n = float(observed.sum())
    expected = torch.as_tensor(expected_probs, dtype=torch.float64) * n
    small = expected < min_expected
    obs = torch.cat((observed[~small], observed[small].sum()[None]))
    exp = torch.cat((expected[~small], expected[small].sum()[None]))
    keep = exp > 0
    if bool((obs[~keep] > 0).any()):
        return 0.0  # an outcome of probability zero happened
    obs, exp = obs[keep], exp[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = len(obs) - 1
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def counts_of(seqs, vocab):
    """Histogram of sequences (N, L) over all vocab ** L outcomes, in all_sequences order."""
    length = seqs.shape[1]
    weights = vocab ** torch.arange(length - 1, -1, -1)
    index = (seqs * weights).sum(dim=1)
    return torch.bincount(index, minlength=vocab**length)


@torch.no_grad()
def step_log_probs(net64, prompt, seqs, **kwargs):
    """(m, L) float64 log p(seqs[:, j] | prompt, seqs[:, :j]), by one full recomputation."""
    full = torch.cat((prompt[None].expand(seqs.shape[0], -1), seqs), dim=1)
    logp = net64(full, **kwargs)[:, len(prompt) - 1 : -1].double().log_softmax(dim=-1)
    return logp.gather(-1, seqs[..., None])[..., 0]


class Biased(torch.nn.Module):
    """A token model whose logits get a fixed bias added (to make one token likely)."""

    def __init__(self, net, bias):
        super().__init__()
        self.net, self.bias = net, bias
        self.num_tokens, self.max_seq_len = net.num_tokens, net.max_seq_len
        self.calls = 0

    @property
    def can_cache_kv(self):
        return self.net.can_cache_kv

    def forward(self, x, **kwargs):
        self.calls += 1
        return self.net(x, **kwargs) + self.bias


def x_transformers_twin(net, cross_attend=False):
    """x-transformers 1.28.2 model of the same shape, holding `net`'s weights (the oracle)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import x_transformers as xt

    stack = net.attn_layers
    layers = xt.Decoder(
        dim=stack.dim,
        depth=stack.depth,
        heads=stack.heads,
        attn_dim_head=stack.config.attention.dim_head,
        cross_attend=cross_attend,
    )
    twin = xt.TransformerWrapper(
        num_tokens=net.num_tokens, max_seq_len=net.max_seq_len, attn_layers=layers
    ).eval()
    ours = list(net.parameters())
    theirs = list(twin.parameters())
    with torch.no_grad():
        i = 0
        for p in ours:
            if theirs[i].shape == p.shape:
                theirs[i].copy_(p)
                i += 1
            else:  # our fused to_qkv -> their to_q, to_k, to_v
                for part in p.split(theirs[i].shape[0], dim=0):
                    theirs[i].copy_(part)
                    i += 1
    assert i == len(theirs)
    return twin
