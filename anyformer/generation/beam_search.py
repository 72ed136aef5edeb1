"""Beam search, deterministic or stochastic (Gumbel-top-k), with eos and a length penalty.

Each prompt keeps ``beams`` live hypotheses. A step scores every (hypothesis, token) pair by its
summed log-probability, keeps the best ``beams`` that do not end in eos, and moves those that do
into a per-prompt pool of finished hypotheses (at most ``beams``, best first). The model's cache
follows the surviving hypotheses with ``Stepper.reorder`` (rows move inside the preallocated
buffers). A prompt is done once its pool is full and no live hypothesis can still beat the
pool's worst; the search stops when every prompt is done or after ``seq_len`` tokens, when the
live hypotheses join the pool.

Scores: ``sum of log-probs / num_tokens ** length_penalty`` (``length_penalty=0``: the plain sum;
``num_tokens`` counts the generated tokens, eos included).

``stochastic=True`` is the stochastic beam search of Kool et al. 2019
(https://arxiv.org/abs/1903.06059): hypotheses are ranked by Gumbel-perturbed log-probabilities
conditioned on their parent's perturbed value, so that the ``beams`` results are a sample without
replacement from the model's distribution over sequences (``beams=1``: ancestral sampling).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .sampling import Picker
from .steppers import Stepper

__all__ = ["BeamResult", "beam_search"]

_NEG_INF = float("-inf")


@dataclass
class BeamResult:
    """Hypotheses best first: tokens (b, beams, n) padded after eos, scores and keys (b, beams)."""

    tokens: Tensor
    scores: Tensor  # length-penalised summed log-probs
    keys: Tensor  # what the ranking used: scores, or the perturbed values when stochastic


@dataclass
class _Pool:
    """Finished hypotheses of each prompt, best key first."""

    tokens: Tensor  # (b, beams, seq_len)
    scores: Tensor  # (b, beams)
    keys: Tensor  # (b, beams)

    def add(self, tokens: Tensor, scores: Tensor, keys: Tensor) -> None:
        beams = self.keys.shape[1]
        all_keys = torch.cat((self.keys, keys), dim=1)
        top = all_keys.topk(beams, dim=1).indices
        self.keys = all_keys.gather(1, top)
        self.scores = torch.cat((self.scores, scores), dim=1).gather(1, top)
        all_tokens = torch.cat((self.tokens, tokens), dim=1)
        self.tokens = all_tokens.gather(1, top[..., None].expand(-1, -1, all_tokens.shape[-1]))


def gumbel_under(parent: Tensor, phi: Tensor, generator: torch.Generator | None) -> Tensor:
    """Perturbed log-probs of children `phi` (b, B, V) whose maximum equals `parent` (b, B).

    Kool et al. 2019, eq. (23): sample G = phi + Gumbel, Z = max G, then
    G~ = -log(exp(-T) - exp(-Z) + exp(-G)) = T - softplus(T - G + log(1 - exp(G - Z))).
    """
    u = torch.rand(phi.shape, generator=generator, device=phi.device, dtype=phi.dtype)
    g = phi - torch.log(-torch.log(u.clamp_(min=torch.finfo(phi.dtype).tiny)))
    z = g.amax(dim=-1, keepdim=True)
    t = parent[..., None]
    v = t - g + torch.log1p(-torch.exp(g - z))
    out = t - F.softplus(v)
    dead = torch.isneginf(phi) | torch.isneginf(t)
    return out.masked_fill(dead, _NEG_INF)


def _penalised(sums: Tensor, length: int, length_penalty: float) -> Tensor:
    return sums if length_penalty == 0 else sums / float(length) ** length_penalty


def _log_probs(logits: Tensor, pick: Picker, stochastic: bool) -> Tensor:
    if stochastic:
        logits = pick.filtered(logits) / pick.temperature
    return logits.float().log_softmax(dim=-1)


def beam_search(
    stepper: Stepper,
    seq_len: int,
    beams: int,
    pick: Picker,
    stochastic: bool = False,
    eos_token: int | None = None,
    pad_value: int = 0,
    length_penalty: float = 0.0,
) -> BeamResult:
    """Run the search; `pick` holds temperature/filter/generator (used when stochastic) and
    the guard that raises on non-finite logits."""
    b, device = stepper.batch, stepper.prompts.device
    logits = stepper.start()
    pick.guard.observe(logits, 0)
    logp = _log_probs(logits, pick, stochastic)  # (b, V)
    vocab = logp.shape[-1]
    stepper.reorder(torch.arange(b, device=device).repeat_interleave(beams))
    logp = logp.repeat_interleave(beams, dim=0).view(b, beams, vocab)
    sums = torch.full((b, beams), _NEG_INF, device=device)
    sums[:, 0] = 0.0  # one live hypothesis (the prompt); the others are placeholders
    keys = sums.clone()
    seqs = torch.full((b, beams, seq_len), pad_value, dtype=torch.long, device=device)
    pool = _Pool(
        seqs.clone(), sums.new_full((b, beams), _NEG_INF), sums.new_full((b, beams), _NEG_INF)
    )
    width = beams if eos_token is None else 2 * beams
    base = (torch.arange(b, device=device) * beams)[:, None]
    for t in range(seq_len):
        cand = sums[..., None] + logp  # (b, beams, V)
        rank = gumbel_under(keys, cand, pick.generator) if stochastic else cand
        rank, cand = rank.view(b, -1), cand.view(b, -1)
        top_rank, top = rank.topk(min(width, rank.shape[1]), dim=1)
        parent, token = top // vocab, top % vocab
        top_sums = cand.gather(1, top)
        grown = seqs.gather(1, parent[..., None].expand(-1, -1, seq_len)).clone()
        grown[:, :, t] = token
        if eos_token is not None:
            is_eos = token == eos_token
            done_keys = top_rank if stochastic else _penalised(top_sums, t + 1, length_penalty)
            pool.add(
                grown,
                _penalised(top_sums, t + 1, length_penalty).masked_fill(~is_eos, _NEG_INF),
                done_keys.masked_fill(~is_eos, _NEG_INF),
            )
            top_rank = top_rank.masked_fill(is_eos, _NEG_INF)
        live = top_rank.topk(beams, dim=1).indices  # -inf keys: placeholders, never returned
        keys, sums = top_rank.gather(1, live), top_sums.gather(1, live)
        sums = sums.masked_fill(torch.isneginf(keys), _NEG_INF)
        parent, token = parent.gather(1, live), token.gather(1, live)
        seqs = grown.gather(1, live[..., None].expand(-1, -1, seq_len))
        if t == seq_len - 1 or (
            eos_token is not None
            and _all_done(pool, sums, keys, t, seq_len, length_penalty, stochastic)
        ):
            break
        stepper.reorder((base + parent).view(-1))
        logits = stepper.feed(token.view(-1, 1))[:, -1]
        pick.guard.observe(logits, t + 1, rows_per_prompt=beams)
        logp = _log_probs(logits, pick, stochastic).view(b, beams, vocab)
    pick.guard.verify()
    length = t + 1
    live_scores = _penalised(sums, length, length_penalty)
    pool.add(seqs, live_scores, keys if stochastic else live_scores)
    return BeamResult(pool.tokens[:, :, :length], pool.scores, pool.keys)


def _all_done(
    pool: _Pool,
    sums: Tensor,
    keys: Tensor,
    t: int,
    seq_len: int,
    length_penalty: float,
    stochastic: bool,
) -> bool:
    """Every prompt's pool is full and no live hypothesis can still beat its worst."""
    worst = pool.keys[:, -1]
    if stochastic:
        # perturbed values only decrease along a path: a child never beats its parent
        best = keys.amax(dim=1)
    else:
        # sums only decrease; the penalty may still lift them: bound over the lengths left
        best_sum = sums.amax(dim=1)
        best = torch.maximum(
            _penalised(best_sum, t + 1, length_penalty),
            _penalised(best_sum, seq_len, length_penalty),
        )
    return bool(((worst > _NEG_INF) & (best <= worst)).all())
