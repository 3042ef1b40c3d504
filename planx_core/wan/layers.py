"""Layers that store weights in one dtype and compute in another (fp8/bf16 storage, per-layer upcast).

Every weight is cast to the dtype of the incoming activations at call time, so a DiT whose
parameters are stored in float8 or bf16 runs in float32 (or bf16) without a second full copy
of the model. Norms follow Wan 2.2 `wan/modules/model.py` (`WanRMSNorm`, `WanLayerNorm`):
statistics in float32, result in the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


class CastLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype))


class CastConv3d(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype))


class WanRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused kernel
            return F.rms_norm(x, (x.shape[-1],), self.weight.float(), self.eps)
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)  # statistics in float32, as the reference
        return y.to(x.dtype) * self.weight.to(x.dtype)


class WanLayerNorm(nn.LayerNorm):
    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = _cast(self.weight, torch.float32), _cast(self.bias, torch.float32)
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)
