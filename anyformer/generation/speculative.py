"""Speculative decoding: a small draft model proposes, the target model verifies in one pass.

Leviathan et al. 2023 (https://arxiv.org/abs/2211.17192), Chen et al. 2023
(https://arxiv.org/abs/2302.01318). Each round the draft proposes ``k`` tokens one by one; the
target scores all of them in one forward call. Draft token ``d_j`` is accepted with probability
``min(1, p_j(d_j) / q_j(d_j))``; at the first rejection the token is drawn from the residual
``max(0, p_j - q_j)`` (normalised); when all ``k`` pass, one more token is drawn from the
target's next distribution. Every emitted token is then distributed exactly as the target's own
sampling (same filter, same temperature) would draw it. Greedy (temperature 0) accepts a draft
token iff it is the target's argmax, so the output equals the target's greedy output.

Rows of a batch share one cache length, so a round commits the same number of tokens in every
row: ``m = min_i a_i`` accepted drafts (``a_i``: row i's accepted count) plus one token per row,
which is row i's residual/bonus token when ``a_i == m`` and its accepted draft ``d_m`` otherwise.
Each row thus emits a prefix of what it would emit alone, cut at a length that does not depend
on its own draws past that point, so the target's distribution is kept (a batch of one is the
textbook algorithm). Rejected positions are rolled back in both caches (``KVCache.truncate``).

Invariant between rounds: the target has consumed every emitted token but the last; the draft
has consumed a prefix of them (it catches up at the start of its next proposal).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from .sampling import Picker
from .steppers import Stepper

__all__ = ["SpeculativeStats", "speculative_tokens"]


@dataclass
class SpeculativeStats:
    """Counters of one speculative generation (summed over rounds; per batch row for tokens)."""

    rounds: int = 0
    proposed: int = 0  # draft tokens proposed per row
    accepted: int = 0  # draft tokens committed per row (the batch minimum each round)
    target_calls: int = 0
    draft_calls: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def _propose(
    draft: Stepper, out: Tensor, emitted: int, k: int, pick: Picker
) -> tuple[Tensor, Tensor | None, int]:
    """Draft k tokens -> (drafts (b, k), their draft probabilities (b, k, V) or None, calls)."""
    pending = out[:, draft.num_new : emitted]
    logits = draft.feed(pending)[:, -1]
    drafts, probs = [], []
    for j in range(k):
        pick.guard.observe(logits, emitted + j, who="draft_model's logits")
        if pick.greedy:
            token = logits.argmax(dim=-1)
        else:  # filter once: draw from the very probabilities the verification uses
            probs.append(pick.probs(logits))
            token = pick_from_probs(probs[-1], pick.generator)
        drafts.append(token)
        if j < k - 1:
            logits = draft.feed(token[:, None])[:, -1]
    q = torch.stack(probs, dim=1) if probs else None
    return torch.stack(drafts, dim=1), q, k


def _verify(
    target_logits: Tensor, drafts: Tensor, q: Tensor | None, pick: Picker
) -> tuple[Tensor, Tensor]:
    """-> (accepted count per row a (b,), candidate next token at every index (b, k + 1))."""
    b, k = drafts.shape
    if pick.greedy:
        best = target_logits.argmax(dim=-1)  # (b, k + 1)
        accept = drafts == best[:, :k]
        nxt = best
    else:
        p = pick.probs(target_logits)  # (b, k + 1, V)
        if q is None:
            raise RuntimeError("sampled speculative decoding needs the draft's probabilities")
        q = torch.cat((q, q.new_zeros(b, 1, q.shape[-1])), dim=1)  # no draft at index k
        p_d = p[:, :k].gather(-1, drafts[..., None])[..., 0]
        q_d = q[:, :k].gather(-1, drafts[..., None])[..., 0]
        u = torch.rand(b, k, generator=pick.generator, device=p.device, dtype=p.dtype)
        accept = u * q_d < p_d  # u < p/q, without dividing by a zero q
        residual = (p - q).clamp(min=0)
        mass = residual.sum(dim=-1, keepdim=True)
        residual = torch.where(mass > 0, residual, p)  # p == q: any rejection had probability 0
        nxt = pick_from_probs(residual, pick.generator)
    a = accept.long().cumprod(dim=1).sum(dim=1)
    return a, nxt


def pick_from_probs(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row from unnormalised probabilities (..., V), by the Gumbel-max trick."""
    u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
    u = u.clamp_(min=torch.finfo(probs.dtype).tiny)
    return (probs.log() - torch.log(-torch.log(u))).argmax(dim=-1)


def speculative_tokens(
    target: Stepper,
    draft: Stepper,
    pick: Picker,
    seq_len: int,
    draft_tokens: int,
    stats: SpeculativeStats,
) -> Iterator[Tensor]:
    """Yield `seq_len` tokens (b,), each as soon as the round that made it is verified."""
    logits = target.start()
    pick.guard.observe(logits, 0)
    pick.guard.verify()
    first = pick(logits)
    stats.target_calls += 1
    draft.start()
    stats.draft_calls += 1
    b = first.shape[0]
    out = first.new_empty(b, seq_len)
    out[:, 0] = first
    emitted = 1
    yield first
    rows = torch.arange(b, device=first.device)
    while emitted < seq_len:
        k = min(draft_tokens, seq_len - emitted - 1)
        drafts, q = first.new_empty(b, 0), None
        if k > 0:
            drafts, q, calls = _propose(draft, out, emitted, k, pick)
            stats.draft_calls += calls
        consumed = target.num_new
        logits = target.feed(torch.cat((out[:, emitted - 1 : emitted], drafts), dim=1))
        stats.target_calls += 1
        pick.guard.observe(logits, emitted)  # index j predicts the token of step emitted + j
        pick.guard.verify()  # a round reads its acceptance on the host anyway
        a, nxt = _verify(logits, drafts, q, pick) if k > 0 else (rows * 0, pick(logits))
        m = int(a.min())
        last = nxt[:, m] if k > 0 else nxt[:, 0]
        if m < k:
            last = torch.where(a > m, drafts[:, m], last)
        new = torch.cat((drafts[:, :m], last[:, None]), dim=1)
        out[:, emitted : emitted + m + 1] = new
        target.truncate(consumed + 1 + m)
        if k > 0:
            draft.truncate(min(draft.num_new, consumed + 1 + m))
        stats.rounds += 1
        stats.proposed += k
        stats.accepted += m
        emitted += m + 1
        yield from new.unbind(dim=1)
