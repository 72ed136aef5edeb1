"""Weight-only int4 linear maps, groupwise: 4 bits per weight and a scale and zero per group.

Each row's inputs are cut into groups of ``group_size``; in each group
``w ~= (q - 8) * scale + zero`` with ``q`` in 0..15 (asymmetric min/max, round to nearest; the
``zero`` is the value ``q = 8`` stands for; both are bf16 values, the kernel's precision, stored
in the model's float dtype). ``qweight`` holds two values per byte, the even
column in the low nibble, in this plain layout on disk and in the state dict.

On the CPU the product runs on aten's ``_weight_int4pack_mm_for_cpu`` (the kernel of gpt-fast and
torchao's int4 weight-only CPU path), with the activations rounded to bf16 for it (the kernel's
fp32 path is ~30x slower); its packed layout is derived from the buffers when first needed and
rebuilt whenever a buffer changes (its version counter), so it never goes stale. Elsewhere, and
under ``torch.compile``, the weight is dequantized and multiplied with the kernel's arithmetic
(bf16-rounded activations, fp32 sums, a bf16-rounded result).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GROUP_SIZES", "Int4Linear", "quantize_int4"]

GROUP_SIZES = (32, 64, 128, 256)
"""Group sizes the CPU kernel takes (inputs per scale/zero pair)."""

_INNER_K_TILES = 8


class Int4Linear(nn.Module):
    """``nn.Linear`` with groupwise int4 weights (weight-only int4, ``group_size`` inputs per scale)."""

    qweight: Tensor
    scale: Tensor
    zero: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        group_size: int = 32,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_int4_shape(in_features, group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        dtype = dtype or torch.get_default_dtype()
        groups = in_features // group_size
        self.register_buffer(
            "qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device)
        )
        self.register_buffer("scale", torch.ones(out_features, groups, dtype=dtype, device=device))
        self.register_buffer("zero", torch.zeros(out_features, groups, dtype=dtype, device=device))
        self.bias: nn.Parameter | None = None
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device))
        self._packed: tuple[tuple[object, ...], Tensor, Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 32) -> Int4Linear:
        """The int4 form of a linear map's current weights (the linear itself is not changed)."""
        w = linear.weight.detach()
        module = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            group_size,
            w.device,
            w.dtype,
        )
        q, scale, zero = quantize_int4(w, group_size)
        with torch.no_grad():
            module.qweight.copy_(pack_nibbles(q))
            module.scale.copy_(scale)
            module.zero.copy_(zero)
            if linear.bias is not None and module.bias is not None:
                module.bias.copy_(linear.bias.detach())
        return module

    def levels(self) -> Tensor:
        """The 4-bit values q (out, in) as int32, unpacked from ``qweight``."""
        return unpack_nibbles(self.qweight)

    def _dequantized(self) -> Tensor:
        """``(q - 8) * scale + zero`` (out, in) in fp32 (exact: the scales are bf16 values)."""
        q = self.levels().float() - 8
        g = self.group_size
        scale, zero = self.scale.float(), self.zero.float()
        return q * scale.repeat_interleave(g, 1) + zero.repeat_interleave(g, 1)

    @property
    def weight(self) -> Tensor:
        """The dequantized weight ``(q - 8) * scale + zero`` (out, in), in the scale's dtype."""
        return self._dequantized().to(self.scale.dtype)

    def _kernel_ok(self, x: Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and self.out_features % 16 == 0
            and not torch.compiler.is_compiling()
        )

    def _kernel_weights(self) -> tuple[Tensor, Tensor]:
        """(the kernel's packed weight, its bf16 (groups, out, 2) scales and zeros), remade
        when a buffer was replaced or changed in place since they were made."""
        bufs = (self.qweight, self.scale, self.zero)
        key: tuple[object, ...] | None = tuple(
            (b.data_ptr(), None if b.is_inference() else b._version) for b in bufs
        )
        if any(b.is_inference() for b in bufs):
            key = None  # no version counter: nothing can be reused safely
        if key is None or self._packed is None or self._packed[0] != key:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                self.levels(), _INNER_K_TILES
            )
            pairs = torch.stack([self.scale.t(), self.zero.t()], dim=-1)
            entry = (key or (), packed, pairs.to(torch.bfloat16).contiguous())
            self._packed = entry if key is not None else None
            return entry[1], entry[2]
        return self._packed[1], self._packed[2]

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self._kernel_ok(x):
            packed, pairs = self._kernel_weights()
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.to(torch.bfloat16), packed, self.group_size, pairs
            ).to(x.dtype)
        else:  # the kernel's arithmetic: bf16 activations, fp32 sums, a bf16 result
            x32 = x2.to(torch.bfloat16).float()
            out = F.linear(x32, self._dequantized()).to(torch.bfloat16).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, group_size={self.group_size}"
        )

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_packed"] = None  # derived: copies and pickles remake it
        return state


def check_int4_shape(in_features: int, group_size: int) -> None:
    """ValueError unless ``group_size`` is one the kernel takes and divides ``in_features``."""
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size!r}")
    if in_features % group_size:
        raise ValueError(
            f"in_features must be a multiple of group_size={group_size}, got {in_features}"
        )


def quantize_int4(weight: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """(q int32 (out, in) in 0..15, scale (out, groups), zero (out, groups)) of a weight:
    per group of ``group_size`` inputs, min/max asymmetric, round to nearest."""
    out_f, in_f = weight.shape
    check_int4_shape(in_f, group_size)
    w = weight.detach().float().view(out_f, in_f // group_size, group_size)
    lo, hi = w.amin(-1), w.amax(-1)
    # scale and zero at bf16 precision (the kernel's), so that every path dequantizes alike
    scale = _bf16((hi - lo) / 15).clamp(min=2**-126)
    zero = _bf16(lo + 8 * scale)
    q = torch.round((w - zero[..., None]) / scale[..., None]) + 8
    q = q.clamp(0, 15).to(torch.int32).view(out_f, in_f)
    return q, scale.to(weight.dtype), zero.to(weight.dtype)


def _bf16(t: Tensor) -> Tensor:
    """fp32 values rounded to the nearest bf16."""
    return t.to(torch.bfloat16).float()


def pack_nibbles(q: Tensor) -> Tensor:
    """int values 0..15 (out, in) -> uint8 (out, in // 2), the even column in the low nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_nibbles(packed: Tensor) -> Tensor:
    """The inverse of :func:`pack_nibbles`, as int32 (out, in)."""
    lo = (packed & 15).to(torch.int32)
    hi = (packed >> 4).to(torch.int32)
    return torch.stack([lo, hi], dim=-1).view(packed.shape[0], -1)
