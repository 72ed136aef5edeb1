"""Weight-only int8 linear maps: one int8 per weight, one float scale per output row.

``w[o, i] ~= qweight[o, i] * scale[o]`` (symmetric, round to nearest, |q| <= 127); the
activations stay in the model's float dtype. On the CPU the product runs on aten's
``_weight_int8pack_mm``. That kernel is SLOWER than an fp32 matrix-vector product on the CPU
this was measured on (AVX-512, 2 cores: 130 ms against fp32's 47 ms over a GPT-2-124M-shaped
set of weights; decoding 0.3-0.4x fp32's tokens/s), so int8 is a memory and disk format (a
quarter of fp32's bytes per weight, quality as fp32's), not a decoding speed-up: use int4 or
bf16 for speed. See benchmarks/bench_lowp.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Int8Linear"]

_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights and a scale per output feature (weight-only int8)."""

    qweight: Tensor
    scale: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        dtype = dtype or torch.get_default_dtype()
        shape = (out_features, in_features)
        self.register_buffer("qweight", torch.zeros(shape, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(out_features, dtype=dtype, device=device))
        self.bias: nn.Parameter | None = None
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """The int8 form of a linear map's current weights (the linear itself is not changed)."""
        w = linear.weight.detach()
        module = cls(
            linear.in_features, linear.out_features, linear.bias is not None, w.device, w.dtype
        )
        qweight, scale = quantize_int8(w)
        with torch.no_grad():
            module.qweight.copy_(qweight)
            module.scale.copy_(scale)
            if linear.bias is not None and module.bias is not None:
                module.bias.copy_(linear.bias.detach())
        return module

    @property
    def weight(self) -> Tensor:
        """The dequantized weight ``qweight * scale`` (out, in), in the scale's dtype."""
        return self.qweight.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x.device.type == "cpu" and x.dtype in _KERNEL_DTYPES:
            out = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scale.to(x.dtype))
        else:
            out = F.linear(x2, self.weight.to(x.dtype))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(qweight int8 (out, in), scale (out,)): symmetric per-row, round to nearest."""
    w = weight.detach().float()
    # the scale as the model's dtype holds it, so that q * scale is what the kernel computes
    scale = (w.abs().amax(dim=1) / 127).to(weight.dtype).float()
    scale = scale.clamp(min=torch.finfo(weight.dtype).tiny)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale.to(weight.dtype)
