"""The Wan video VAE's layers: causal 3D convolutions with a per-chunk cache, RMS norm, residual,
attention and resampling blocks (shared by the Wan 2.1 and Wan 2.2 VAEs).

Source: Wan-Video/Wan2.2 `wan/modules/vae2_1.py` and `vae2_2.py` (names and layout kept, so the
official keys load); the Wan 2.2 residual levels built on these are in `vae22.py`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Per-module state carried from one time chunk to the next (keyed by the module itself).
Cache = dict


class CausalConv3d(nn.Conv3d):
    """A Conv3d padded only towards the past in time (2 x the temporal padding, none after).

    With a `cache`, the last `time_pad` input frames are kept, and the next call continues the
    clip: those frames replace the zero padding, so chunk-by-chunk output equals one pass.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel, stride=1, padding=0):
        super().__init__(in_dim, out_dim, kernel, stride=stride)
        pt, ph, pw = padding if isinstance(padding, tuple) else (padding,) * 3
        self.time_pad, self.space_pad = 2 * pt, (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        past = cache.get(self) if cache is not None and self.time_pad else None
        if past is not None:
            x = torch.cat([past, x], dim=2)  # [B, C, past + T, H, W]
        if cache is not None and self.time_pad:
            cache[self] = x[:, :, -self.time_pad :].clone()
        n_past = 0 if past is None else past.shape[2]
        x = F.pad(x, (*self.space_pad, self.time_pad - n_past, 0))  # [B, C, time_pad + T, H + 2ph, W + 2pw]
        return super().forward(x)


class RMS_norm(nn.Module):  # noqa: N801  (the reference's name)
    """L2-normalise over channels (dim 1), times sqrt(C) and `gamma`; statistics in float32."""

    def __init__(self, dim: int, images: bool = True, bias: bool = False):
        super().__init__()
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)  # images: [N, C, H, W]; videos: [B, C, T, H, W]
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.normalize(x.float(), dim=1).to(x.dtype) * self.scale * self.gamma.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)


class CachedBlock(nn.Module):
    """A block whose `forward(x, cache)` carries state from one time chunk to the next."""


def run(layers: nn.Sequential, x: torch.Tensor, cache: Cache) -> torch.Tensor:
    """Apply a Sequential, handing the cache to the layers that carry state across chunks."""
    for layer in layers:
        x = layer(x, cache) if isinstance(layer, (CausalConv3d, CachedBlock)) else layer(x)
    return x


class ResidualBlock(CachedBlock):
    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.residual = nn.Sequential(
            RMS_norm(in_dim, images=False),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim, images=False),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        return run(self.residual, x, cache) + self.shortcut(x)  # [B, out_dim, T, H, W]


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).flatten(0, 1)  # [B, C, T, H, W] -> [B*T, C, H, W]


def batch_to_frames(x: torch.Tensor, b: int) -> torch.Tensor:
    return x.unflatten(0, (b, -1)).transpose(1, 2)  # [B*T, C, H, W] -> [B, C, T, H, W]


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame separately (so it is causal)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMS_norm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w = x.shape[0], x.shape[3], x.shape[4]
        qkv = self.to_qkv(self.norm(frames_to_batch(x)))  # [B*T, 3C, H, W]
        q, k, v = qkv.flatten(2).transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)  # [B*T, 1, H*W, C] each
        y = F.scaled_dot_product_attention(q, k, v)  # [B*T, 1, H*W, C]
        y = y.squeeze(1).transpose(1, 2).unflatten(2, (h, w))  # [B*T, C, H, W]
        return x + batch_to_frames(self.proj(y), b)


class Resample(CachedBlock):
    """2x spatial up/downsampling per frame; the `3d` modes also double / halve time with `time_conv`.

    Frame 0 of a clip never goes through `time_conv`: it stays a single frame (down) or is not
    doubled (up), which is what makes 1 + 4n frames map to 1 + n latent frames and back.
    Upsampling halves the channels (Wan 2.1) unless `up_dim` says otherwise (Wan 2.2 keeps them).
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str, up_dim: int | None = None):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Resample mode {mode!r}: choose one of {self.MODES}")
        self.mode = mode
        if mode.startswith("up"):
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                nn.Conv2d(dim, dim // 2 if up_dim is None else up_dim, 3, padding=1),
            )
        else:  # pad right/bottom, then a stride-2 conv
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self.time_up(x, cache)
        x = batch_to_frames(self.resample(frames_to_batch(x)), x.shape[0])  # [B, C', T, 2H or H/2, ...]
        if self.mode == "downsample3d":
            x = self.time_down(x, cache)
        return x

    def time_up(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, C, 2T, H, W], or 2T - 1 frames when the chunk starts the clip."""
        head = x[:, :, :1] if self not in cache else None  # clip frame 0 is not doubled
        cache[self] = True
        if head is not None:
            x = x[:, :, 1:]
        if x.shape[2]:
            y = self.time_conv(x, cache)  # [B, 2C, T, H, W], causal over the frames after frame 0
            x = y.unflatten(1, (2, -1)).permute(0, 2, 3, 1, 4, 5).flatten(2, 3)  # [B, C, 2T, H, W]
        return x if head is None else torch.cat([head, x], dim=2)

    def time_down(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        """Stride-2 windows of 3 frames, (f0), (f0, f1, f2), (f2, f3, f4)...: T -> (T - 1) / 2 + 1 at the start."""
        past = cache.get(self)
        cache[self] = x[:, :, -1:].clone()
        if past is not None:
            return self.time_conv(torch.cat([past, x], dim=2))  # [B, C, T / 2, H, W]
        if x.shape[2] == 1:
            return x
        return torch.cat([x[:, :, :1], self.time_conv(x)], dim=2)  # [B, C, 1 + (T - 1) / 2, H, W]
