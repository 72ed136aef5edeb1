"""Rotary position embedding (RoPE) and its family: partial rotary, xPos, interpolation, NTK base.

RoPE (Su et al., https://arxiv.org/abs/2104.09864) rotates each pair of features of a query or
key by an angle proportional to the token's position, so that q . k depends only on the distance
between the two tokens. The pairs are (i, i + r/2) over the first ``r`` features of a head (the
"rotate half" layout of GPT-NeoX and Llama); with ``r < dim_head`` the rest pass unchanged
(partial rotary, GPT-J). Options:

- ``theta``: the base of the frequencies ``theta ** (-2i / r)``;
- ``base_rescale_factor`` (NTK-aware scaling): ``theta * factor ** (r / (r - 2))``;
- ``interpolation_factor`` f (position interpolation, https://arxiv.org/abs/2306.15595): position
  p is rotated as position p / f;
- ``xpos_scale_base`` (xPos, https://arxiv.org/abs/2212.10554): queries are scaled by
  ``zeta ** ((p - c) / scale_base)`` and keys by its inverse, so q . k decays with distance; ``c``
  is a centre that cancels in every product (kept fixed for a whole cached decode);
- ``scaling`` (:class:`~.rotary_scaling.RotaryScaling`): context extension that recomputes the
  frequencies (Llama 3, YaRN, dynamic NTK, LongRoPE; see rotary_scaling.py). Llama 3 and YaRN
  are tabulated like plain rotary; dynamic NTK and LongRoPE depend on each forward's length and
  are computed per forward.

The rotation is applied as ``t * C + swap(t) * S`` with full-width factors (C = [cos, cos, 1...],
S = [-sin, sin, 0...], swap exchanging the two rotated halves): three kernels per tensor. The
factor table is a non-persistent buffer covering positions [0, len), grown (doubled) when a
longer sequence arrives; consecutive positions are a slice of it. Per-row positions are computed
directly (the same arithmetic, so the same values). The frequencies and the table are float32
whatever the module dtype (tables.py); the factors are cast to the activations' dtype once per
forward, for every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from .rotary_scaling import RotaryScaling
from .tables import PositionTables, tables_mode

__all__ = [
    "GivenRotary",
    "LocalRotaryEmbedding",
    "RotaryAngles",
    "RotaryEmbedding",
    "apply_rotary",
]

#: Positions the table covers when it is first built (grown on demand).
INITIAL_TABLE_LEN = 1024


@dataclass(frozen=True)
class RotaryAngles:
    """The rotation of the rows computed now: full-width factors (b|1, 1, n, dim_head) for
    queries and keys (they differ only with xPos, whose scales are folded in), and the number of
    rotated features. The factors are in the tables' precision (float32 at least);
    :meth:`factors` gives them in the activations' dtype, cast once for every layer."""

    q_cos: Tensor
    q_sin: Tensor
    k_cos: Tensor
    k_sin: Tensor
    rot_dim: int
    shared: bool = True  # queries and keys get the same factors (not with xPos)
    # the positions they rotate to and, when consecutive, the first one (None: given angles):
    # what a LocalRotaryEmbedding recomputes its own angles from
    positions: Tensor | None = None
    offset: int | None = None
    _cast: dict[tuple[str, torch.dtype], tuple[Tensor, Tensor]] = field(
        default_factory=dict, repr=False, compare=False
    )
    _local: dict[int, RotaryAngles] = field(default_factory=dict, repr=False, compare=False)

    def factors(self, kind: Literal["q", "k", "rows"], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The (cos, sin) factors of ``kind`` in ``dtype``: "q" and "k" as (b|1, 1, n, dim_head);
        "rows" as (b|1, n, 1, dim_head), for tensors in the (b, n, heads, d) layout (no xPos:
        queries and keys share them). Computed once per dtype, shared by every layer."""
        key = (kind, dtype)
        if key not in self._cast:
            if kind == "rows":
                cos, sin = self.q_cos.transpose(1, 2), self.q_sin.transpose(1, 2)
            elif kind == "q":
                cos, sin = self.q_cos, self.q_sin
            else:
                cos, sin = self.k_cos, self.k_sin
            self._cast[key] = (cos.to(dtype), sin.to(dtype))
        return self._cast[key]


def _pad(t: Tensor, rest: int, value: float) -> Tensor:
    """Extend the last dim by `rest` features of `value` (the features rotary leaves alone)."""
    if rest == 0:
        return t
    return torch.cat((t, t.new_full((*t.shape[:-1], rest), value)), dim=-1)


def _full_width(cos: Tensor, sin: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
    """(..., r/2) cos/sin -> the full-width factors [cos, cos, 1...] and [-sin, sin, 0...]."""
    rest = head_dim - 2 * cos.shape[-1]
    return _pad(torch.cat((cos, cos), -1), rest, 1.0), _pad(torch.cat((-sin, sin), -1), rest, 0.0)


def apply_rotary(t: Tensor, cos: Tensor, sin: Tensor, rot_dim: int) -> Tensor:
    """Rotate the pairs (i, i + r/2) of the first r = rot_dim features of t (..., n, d), given the
    full-width factors (..., n, d) of ``_full_width``: t * cos + swap(t) * sin."""
    half, dim = rot_dim // 2, t.shape[-1]
    if cos.dtype != t.dtype:
        cos, sin = cos.to(t.dtype), sin.to(t.dtype)
    parts: tuple[Tensor, ...] = (t.narrow(-1, half, half), t.narrow(-1, 0, half))
    if rot_dim < dim:
        parts = (*parts, t.narrow(-1, rot_dim, dim - rot_dim))
    return torch.addcmul(t * cos, torch.cat(parts, dim=-1), sin)


class RotaryEmbedding(PositionTables):
    """One per stack, shared by its self-attention layers: ``(q, k, positions) -> (q, k)``.

    Its tables (frequencies, cos/sin factors, xPos rates) are float32 whatever the module dtype
    (float64 under ``.double()``); the factors are cast to the activations' dtype when applied."""

    inv_freq: Tensor  # buffers (not saved), filled by reset_tables
    cos_table: Tensor
    sin_table: Tensor

    def __init__(
        self,
        dim: int,
        *,
        head_dim: int | None = None,
        theta: float = 10000.0,
        interpolation_factor: float = 1.0,
        base_rescale_factor: float = 1.0,
        xpos_scale_base: float | None = None,
        scaling: RotaryScaling | None = None,
    ) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"RotaryEmbedding: dim must be an even int >= 2, got {dim}")
        head_dim = dim if head_dim is None else head_dim
        if head_dim < dim:
            raise ValueError(f"RotaryEmbedding: head_dim ({head_dim}) must be >= dim ({dim})")
        if base_rescale_factor != 1.0 and dim <= 2:
            raise ValueError("RotaryEmbedding: base_rescale_factor needs dim > 2")
        self.dim = dim
        self.head_dim = head_dim
        self.theta = theta
        self.interpolation_factor = interpolation_factor
        self.base_rescale_factor = base_rescale_factor
        self.xpos_scale_base = xpos_scale_base
        self.scaling = scaling
        # cos and sin are multiplied by this (YaRN / LongRoPE attention factor)
        self.cos_sin_factor = 1.0 if scaling is None else scaling.cos_sin_factor
        # dynamic NTK / LongRoPE: frequencies from each forward's length (no table)
        self.per_length = scaling is not None and scaling.length_dependent
        half = dim // 2
        self.register_buffer("inv_freq", torch.empty(half), persistent=False)
        self.long_inv_freq: Tensor | None
        if scaling is not None and scaling.kind == "longrope":
            self.register_buffer("long_inv_freq", torch.empty(half), persistent=False)
        else:
            self.long_inv_freq = None
        table = (INITIAL_TABLE_LEN, head_dim)  # full-width factors per position
        self.register_buffer("cos_table", torch.empty(table), persistent=False)
        self.register_buffer("sin_table", torch.empty(table), persistent=False)
        self.xpos_zeta: Tensor | None
        if xpos_scale_base is None:
            self.xpos_zeta = None
        else:
            self.register_buffer("xpos_zeta", torch.empty(half), persistent=False)
        self.reset_parameters()

    @property
    def shares_qk_factors(self) -> bool:
        """Whether queries and keys get the same rotation (so one pass can rotate both): not
        with xPos, whose scales differ."""
        return self.xpos_zeta is None

    @property
    def base(self) -> float:
        """The frequency base after NTK-aware rescaling."""
        if self.base_rescale_factor == 1.0:
            return self.theta
        return self.theta * self.base_rescale_factor ** (self.dim / (self.dim - 2))

    def reset_parameters(self) -> None:
        """Recompute the frequencies and the table (they are not saved; to_empty leaves garbage)."""
        with tables_mode():
            self.reset_tables()

    def reset_tables(self) -> None:
        """The frequencies, xPos rates and factor table, in ``tables_dtype``."""
        device, dtype = self.inv_freq.device, self.tables_dtype
        pairs = torch.arange(0, self.dim, 2, device=device, dtype=dtype)
        inv_freq = 1.0 / (self.base ** (pairs / self.dim))
        if self.scaling is not None:
            if self.long_inv_freq is not None:
                self.long_inv_freq = self.scaling.long_inv_freq(inv_freq)
            inv_freq = self.scaling.inv_freq(inv_freq, self.theta, self.dim)
        self.inv_freq = inv_freq
        if self.xpos_zeta is not None:
            # zeta_i = (2i + 0.4 r) / (1.4 r): the xPos paper's per-pair decay rates
            self.xpos_zeta = (pairs + 0.4 * self.dim) / (1.4 * self.dim)
        self._fill_table(self.cos_table.shape[0])

    def _angles(self, positions: Tensor, inv_freq: Tensor | None = None) -> Tensor:
        """(...,) positions -> (..., r/2) angles p * inv_freq / interpolation_factor, in the
        tables' precision (float32 at least)."""
        inv_freq = self.inv_freq if inv_freq is None else inv_freq
        dtype = torch.promote_types(inv_freq.dtype, torch.float32)
        angles = positions.to(dtype).unsqueeze(-1) * inv_freq.to(dtype)
        if self.interpolation_factor != 1.0:
            angles = angles / self.interpolation_factor
        return angles

    def _cos_sin(self, angles: Tensor) -> tuple[Tensor, Tensor]:
        """(..., r/2) angles -> the full-width factors, times the cos/sin factor if any."""
        cos, sin = angles.cos(), angles.sin()
        if self.cos_sin_factor != 1.0:
            cos, sin = cos * self.cos_sin_factor, sin * self.cos_sin_factor
        return _full_width(cos, sin, self.head_dim)

    def _fill_table(self, length: int) -> None:
        positions = torch.arange(length, device=self.inv_freq.device)
        self.cos_table, self.sin_table = self._cos_sin(self._angles(positions))

    def _per_length_angles(self, positions: Tensor) -> Tensor:
        """dynamic NTK / LongRoPE: (b|1, n) positions -> (b|1, n, r/2) angles with the
        frequencies of this forward's length (its largest position + 1)."""
        scaling = self.scaling
        if scaling is None:
            raise ValueError("RotaryEmbedding: per-length frequencies need a scaling")
        length = positions.max() + 1
        inv_freq = scaling.length_inv_freq(
            length, self.inv_freq, self.long_inv_freq, self.theta, self.dim
        )
        return self._angles(positions, inv_freq)

    def _table(self, start: int, n: int) -> tuple[Tensor, Tensor]:
        """Factors of positions start .. start + n - 1, (n, dim_head), growing the table if needed."""
        end = start + n
        if end > self.cos_table.shape[0]:
            with tables_mode():  # a normal tensor even when grown under inference mode
                self._fill_table(max(end, 2 * self.cos_table.shape[0]))
        return self.cos_table[start:end], self.sin_table[start:end]

    def angles(
        self, positions: Tensor, offset: int | None = None, cache: Any = None
    ) -> RotaryAngles:
        """The rotation of the rows at ``positions`` (b|1, n); ``offset``: they are known to be
        offset .. offset + n - 1 (a slice of the table). ``cache`` keeps the xPos centre fixed
        over a cached decode."""
        if self.per_length:
            cos, sin = self._cos_sin(self._per_length_angles(positions).unsqueeze(1))
        elif offset is not None:
            cos, sin = self._table(offset, positions.shape[-1])
            cos, sin = cos[None, None], sin[None, None]
        else:
            angles = self._angles(positions).unsqueeze(1)  # (b|1, 1, n, r/2)
            cos, sin = self._cos_sin(angles)
        if self.xpos_zeta is None:
            return RotaryAngles(cos, sin, cos, sin, self.dim, positions=positions, offset=offset)
        q_scale, k_scale = self._xpos_scales(positions, offset, cache)
        q_scale, _ = _full_width(q_scale, q_scale, self.head_dim)
        k_scale, _ = _full_width(k_scale, k_scale, self.head_dim)
        q, k = (cos * q_scale, sin * q_scale), (cos * k_scale, sin * k_scale)
        return RotaryAngles(*q, *k, self.dim, shared=False)

    def _xpos_scales(
        self, positions: Tensor, offset: int | None, cache: Any
    ) -> tuple[Tensor, Tensor]:
        """zeta ** ((p - c) / scale_base) for queries, its inverse for keys; c = (max p + 1) // 2
        of the first call (fixed in ``cache`` so that cached keys stay consistent)."""
        center = None if cache is None else cache.xpos_center
        if center is None:
            if offset is not None:
                center = (offset + positions.shape[-1]) // 2
            else:
                center = torch.div(positions.max() + 1, 2, rounding_mode="floor")
            if cache is not None:
                cache.xpos_center = center
        zeta, scale_base = self.xpos_zeta, self.xpos_scale_base
        if zeta is None or scale_base is None:
            raise ValueError("RotaryEmbedding: xPos scales need xpos_scale_base (built without)")
        power = (positions - center).to(zeta.dtype) / scale_base
        scale = zeta ** power.unsqueeze(-1).unsqueeze(1)  # (b|1, 1, n, r/2)
        return scale, scale.reciprocal()

    def rotation(self, positions: Tensor | RotaryAngles) -> RotaryAngles:
        """The angles to apply: the stack's, computed once for all its layers, or computed now
        from (b|1, n) positions."""
        return positions if isinstance(positions, RotaryAngles) else self.angles(positions)

    def forward(
        self, q: Tensor, k: Tensor, positions: Tensor | RotaryAngles
    ) -> tuple[Tensor, Tensor]:
        """Rotate q (b, h, n, d) and k (b, h_kv, n, d) to their positions: a (b|1, n) tensor, or
        the angles the stack computed once for all its layers."""
        rot = self.rotation(positions)
        return (
            apply_rotary(q, *rot.factors("q", q.dtype), rot.rot_dim),
            apply_rotary(k, *rot.factors("k", k.dtype), rot.rot_dim),
        )

    def rotate_rows(self, t: Tensor, positions: Tensor | RotaryAngles) -> Tensor:
        """Rotate t (b, n, heads, d), queries and keys side by side (``shares_qk_factors``)."""
        rot = self.rotation(positions)
        return apply_rotary(t, *rot.factors("rows", t.dtype), rot.rot_dim)

    def rotate_values(self, v: Tensor, positions: Tensor | RotaryAngles) -> Tensor:
        """Rotate values as keys (``rotary_embed_values``)."""
        rot = self.rotation(positions)
        return apply_rotary(v, *rot.factors("k", v.dtype), rot.rot_dim)

    def extra_repr(self) -> str:
        extra = f", xpos_scale_base={self.xpos_scale_base}" if self.xpos_zeta is not None else ""
        extra += f", scaling={self.scaling}" if self.scaling is not None else ""
        return (
            f"dim={self.dim}, head_dim={self.head_dim}, theta={self.theta}, interpolation_factor={self.interpolation_factor}"
            f", base_rescale_factor={self.base_rescale_factor}{extra}"
        )


class LocalRotaryEmbedding(RotaryEmbedding):
    """Plain rotary with its own base for the sliding-window layers of a stack
    (``rotary_local_theta``; Gemma 3: base 10000 on local layers, the stack's base and scaling on
    global ones, https://arxiv.org/abs/2503.19786). It recomputes its angles from the positions
    of the stack's angles, once per forward for all the layers that share it."""

    def rotation(self, positions: Tensor | RotaryAngles) -> RotaryAngles:
        if not isinstance(positions, RotaryAngles):
            return self.angles(positions)
        own = positions._local.get(id(self))
        if own is None:
            if positions.positions is None:
                raise ValueError(
                    "rotary_local_theta: the sliding-window layers recompute their rotary angles "
                    "from positions, which given rotary frequencies (rotary_pos_emb) do not carry"
                )
            own = self.angles(positions.positions, positions.offset)
            positions._local[id(self)] = own
        return own


@dataclass(frozen=True)
class CrossRotary:
    """Rotary cross-attention (x-transformers 2.x's forward ``context_pos``): the queries rotate
    to their own positions, the context's keys to ``context_pos``, so that q.k depends on the
    offset between a row and a context token. ``keys`` is None when the context's keys are
    cached (already rotated)."""

    queries: RotaryAngles
    keys: RotaryAngles | None

    def rotate_queries(self, q: Tensor) -> Tensor:
        return apply_rotary(q, *self.queries.factors("q", q.dtype), self.queries.rot_dim)

    def rotate_keys(self, k: Tensor) -> Tensor:
        if self.keys is None:
            raise ValueError("CrossRotary: the context's keys are cached (already rotated)")
        return apply_rotary(k, *self.keys.factors("k", k.dtype), self.keys.rot_dim)


@dataclass(frozen=True)
class GivenRotary:
    """Rotary frequencies passed to ``forward(rotary_pos_emb=(freqs, xpos_scale))``, as
    x-transformers' ``RotaryEmbedding`` returns them: ``freqs`` (n, r) or (b, n, r), the angle
    of each rotated feature of each row (``[theta, theta]`` over the two halves), and
    ``xpos_scale`` (None, a number, or a tensor of freqs' shape) that scales the queries and
    divides the keys. The rows computed by a call are the last ones of ``freqs``."""

    freqs: Tensor
    xpos_scale: Tensor | float | None

    @staticmethod
    def parse(value: Any, batch: int, head_dim: int) -> GivenRotary:
        """Check ``rotary_pos_emb``: a (freqs, xpos_scale) pair, or freqs alone."""
        freqs, scale = (
            value if isinstance(value, (tuple, list)) and len(value) == 2 else (value, None)
        )
        if (
            not isinstance(freqs, Tensor)
            or not freqs.is_floating_point()
            or freqs.ndim not in (2, 3)
            or (freqs.ndim == 3 and freqs.shape[0] not in (1, batch))
        ):
            got = (
                f"{freqs.dtype} tensor of shape {tuple(freqs.shape)}"
                if isinstance(freqs, Tensor)
                else type(freqs).__name__
            )
            raise ValueError(
                "rotary_pos_emb must be (freqs, xpos_scale) with freqs a float tensor of shape "
                f"(seq_len, rot_dim) or ({batch}, seq_len, rot_dim), got {got}"
            )
        rot_dim = freqs.shape[-1]
        if rot_dim % 2 or not 2 <= rot_dim <= head_dim:
            raise ValueError(
                f"rotary_pos_emb: freqs' last dim (rot_dim) must be even and in [2, {head_dim}] "
                f"(dim_head), got {rot_dim}"
            )
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            scale = None if scale == 1 else float(scale)
        elif scale is not None and not isinstance(scale, Tensor):
            raise ValueError(
                "rotary_pos_emb: xpos_scale must be None, a number or a tensor of freqs' shape, "
                f"got {type(scale).__name__}"
            )
        return GivenRotary(freqs, scale)

    def check_rows(self, needed: int) -> None:
        have = self.freqs.shape[-2]
        if have < needed:
            raise ValueError(
                f"rotary_pos_emb: freqs have {have} rows but this call computes {needed} "
                "(memories included): pass one row per position, the computed rows last"
            )

    def angles(self, n: int, after: int, head_dim: int) -> RotaryAngles:
        """The rotation of n rows that end ``after`` rows before the last one of freqs."""
        freqs = _rows(self.freqs, n, after).float()  # (b|1, 1, n, r)
        rot_dim = freqs.shape[-1]
        half, rest = rot_dim // 2, head_dim - rot_dim
        cos, sin = freqs.cos(), freqs.sin()
        sin = torch.cat((-sin[..., :half], sin[..., half:]), -1)  # rotate_half: (-x2, x1)
        q = (_pad(cos, rest, 1.0), _pad(sin, rest, 0.0))
        scale = self.xpos_scale
        if scale is None:
            return RotaryAngles(*q, *q, rot_dim)
        if isinstance(scale, Tensor):
            scale = _rows(scale, n, after).to(freqs.dtype)
        q = (_pad(cos * scale, rest, 1.0), _pad(sin * scale, rest, 0.0))
        k = (_pad(cos / scale, rest, 1.0), _pad(sin / scale, rest, 0.0))
        return RotaryAngles(*q, *k, rot_dim, shared=False)


def _rows(t: Tensor, n: int, after: int) -> Tensor:
    """Rows [len - after - n, len - after) of a (n, r) or (b, n, r) table, as (b|1, 1, n, r)."""
    t = t.narrow(-2, t.shape[-2] - after - n, n)
    return (t if t.ndim == 3 else t.unsqueeze(0)).unsqueeze(1)
