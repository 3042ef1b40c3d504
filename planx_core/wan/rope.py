"""3D rotary position embedding with explicit, possibly fractional, (t, h, w) positions.

Source: Wan 2.2 `wan/modules/model.py` (`rope_params`, `rope_apply`): the head dimension d is
split into t / h / w parts of d - 4*(d//6), 2*(d//6), 2*(d//6) channels (44/42/42 for d=128),
theta 10000, rotations applied to adjacent channel pairs and concatenated in (t, h, w) order.
Wan builds tables for integer grid positions only; here the angle is `position * inv_freq`
for any float position, so plan tokens can sit between latent frames and cells.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Rope(NamedTuple):
    """Per-token rotation `[..., L, head_dim // 2]`: cos and sin of the angles, and cos + i sin."""

    cos: torch.Tensor
    sin: torch.Tensor
    polar: torch.Tensor  # complex64, used for float32 inputs: one fused multiply

    @classmethod
    def from_angles(cls, angle: torch.Tensor) -> Rope:
        cos, sin = angle.cos().float(), angle.sin().float()
        return cls(cos, sin, torch.complex(cos, sin))

    @classmethod
    def identity(cls, tokens: int, half_dim: int, device=None) -> Rope:
        return cls.from_angles(torch.zeros(tokens, half_dim, device=device))

    def cat(self, other: Rope) -> Rope:
        return Rope(*(torch.cat([a, b], dim=-2) for a, b in zip(self, other)))


def rope_axes_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels per axis (t, h, w), Wan's split: (44, 42, 42) for a 128-wide head."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_frequencies(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> Rope:
    """Rotation for tokens at `positions` `[..., L, 3]` (t, h, w; float allowed)."""
    positions = positions.to(torch.float64)
    angles = []
    for axis, axis_dim in enumerate(rope_axes_dims(head_dim)):
        inv_freq = theta ** (-torch.arange(0, axis_dim, 2, dtype=torch.float64, device=positions.device) / axis_dim)
        angles.append(positions[..., axis, None] * inv_freq)  # [..., L, axis_dim // 2]
    return Rope.from_angles(torch.cat(angles, dim=-1))  # [..., L, head_dim // 2]


def apply_rope(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate adjacent channel pairs of `x` `[B, L, H, D]` by `rope` (`[L, D/2]` or `[B, L, D/2]`)."""
    if x.dtype == torch.float32:
        pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))  # [B, L, H, D/2] complex
        return torch.view_as_real(pairs * rope.polar.unsqueeze(-2)).flatten(-2)
    cos = rope.cos.unsqueeze(-2).to(x.dtype)  # [(B,) L, 1, D/2]
    sin = rope.sin.unsqueeze(-2).to(x.dtype)
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # [B, L, H, D/2] each
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def grid_positions(
    frames: int, height: int, width: int, t_start: float = 0.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """(t, h, w) of every token of a `frames x height x width` token grid in (f, h, w) order: `[L, 3]`."""
    t = torch.arange(frames, dtype=torch.float64, device=device) + t_start
    h = torch.arange(height, dtype=torch.float64, device=device)
    w = torch.arange(width, dtype=torch.float64, device=device)
    return torch.stack(torch.meshgrid(t, h, w, indexing="ij"), dim=-1).reshape(-1, 3)  # [F*H*W, 3]
