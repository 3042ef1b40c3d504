"""The Wan 2.2 VAE's own parts (the TI2V-5B's, 48 latent channels, 16x16 in space, 4x in time).

Source: the architecture of Wan-Video/Wan2.2 `wan/modules/vae2_2.py` (official checkpoint
`Wan2.2_VAE.pth`, ComfyUI's `wan2.2_vae.safetensors`, same key names), with ComfyUI's
`comfy/ldm/wan/vae2_2.py` and diffusers' `AutoencoderKLWan(is_residual=True)` read for behaviour;
written here from that description, not copied. `vae.WanVAE` builds on these when its config has
`residual=True`; everything else (causal convolutions and their chunk cache, residual, attention
and resampling blocks) is the Wan 2.1 code in `vae_layers.py`.

What differs from Wan 2.1:
- a 2x2 patchify of the video to 12 channels before the encoder (`patchify`), undone after the
  decoder (`unpatchify`), so the 8x spatial compression of the levels becomes 16x;
- each encoder level is one `DownBlock`: its residual blocks and downsampler, plus a
  parameter-free shortcut (`AverageDown`) that folds each 2x2 (x2 in time) neighbourhood into
  channels and averages groups of them down to the level's width;
- each decoder level is one `UpBlock`, its upsampler keeps the width (Wan 2.1 halves it), and its
  shortcut (`DuplicateUp`) repeats channels and unfolds them into 2x2 (x2 in time) pixels; on the
  first chunk of a clip the duplicated frames before frame 0 are dropped, as the upsampler does;
- a separate decoder width (`dec_dim` 256 against the encoder's 160) and z_dim 48.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .vae_layers import Cache, CachedBlock, Resample, ResidualBlock, batch_to_frames, frames_to_batch, run

# Wan 2.2's per-channel latent statistics (Wan2.2 `Wan2_2_VAE`, ComfyUI's `latent_formats.Wan22`).
# fmt: off
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)
# fmt: on


# --------------------------------------------------------------------------- patchify


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, C * p * p, T, H / p, W / p]; channel c * p * p + column * p + row.

    Within a patch the column offset varies slowest (the reference's order), hence the
    transposes around `pixel_unshuffle`, which puts the row first.
    """
    if p == 1:
        return x
    y = F.pixel_unshuffle(x.transpose(1, 2).transpose(-1, -2), p)  # [B, T, C * p * p, W / p, H / p]
    return y.transpose(-1, -2).transpose(1, 2)  # [B, C * p * p, T, H / p, W / p]


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of `patchify`: [B, C * p * p, T, h, w] -> [B, C, T, h * p, w * p]."""
    if p == 1:
        return x
    y = F.pixel_shuffle(x.transpose(1, 2).transpose(-1, -2), p)  # [B, T, C, W, H]
    return y.transpose(-1, -2).transpose(1, 2)  # [B, C, T, H, W]


# --------------------------------------------------------------------------- parameter-free shortcuts


class AverageDown(nn.Module):
    """Shortcut of a downsampling level: space (and time) to channels, then the mean of channel groups.

    Each `ft` x `fs` x `fs` neighbourhood becomes `ft * fs * fs` channels per input channel (order:
    channel, time offset, row, column); consecutive groups of them are averaged down to `out_dim`.
    In time the clip is padded with zero frames before its start to a multiple of `ft`, so frame 0
    pairs with a zero frame and later pairs are (1, 2), (3, 4)...: the same grouping chunk by
    chunk (frame 0, then 4 frames) as in one pass.
    """

    def __init__(self, in_dim: int, out_dim: int, ft: int, fs: int):
        super().__init__()
        folded = in_dim * ft * fs * fs
        if folded % out_dim:
            raise ValueError(f"AverageDown: {in_dim} x {ft * fs * fs} folded channels do not split into {out_dim}")
        self.ft, self.fs, self.out_dim = ft, fs, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs, b = self.ft, self.fs, x.shape[0]
        x = F.pad(x, (0, 0, 0, 0, -x.shape[2] % ft, 0))  # [B, C, ft * t, H, W], zero frames first
        x = x.unflatten(2, (-1, ft)).movedim(3, 2).flatten(1, 2)  # [B, C * ft, t, H, W]
        x = batch_to_frames(F.pixel_unshuffle(frames_to_batch(x), fs), b)  # [B, C * ft * fs * fs, t, H / fs, W / fs]
        return x.unflatten(1, (self.out_dim, -1)).mean(dim=2)  # [B, out_dim, t, H / fs, W / fs]


class DuplicateUp(nn.Module):
    """Shortcut of an upsampling level: repeat channels, then unfold them into `ft` frames and `fs` x `fs` pixels.

    The inverse arrangement of `AverageDown`. On the first chunk of a clip the `ft - 1` frames
    that would come before frame 0 are dropped (frame 0 is not doubled in time).
    """

    def __init__(self, in_dim: int, out_dim: int, ft: int, fs: int):
        super().__init__()
        unfolded = out_dim * ft * fs * fs
        if unfolded % in_dim:
            raise ValueError(
                f"DuplicateUp: {out_dim} x {ft * fs * fs} unfolded channels are not a multiple of {in_dim}"
            )
        self.ft, self.fs, self.repeats = ft, fs, unfolded // in_dim

    def forward(self, x: torch.Tensor, first: bool) -> torch.Tensor:
        ft, b = self.ft, x.shape[0]
        x = x.unsqueeze(2).expand(-1, -1, self.repeats, -1, -1, -1).flatten(1, 2)  # [B, C * repeats, t, h, w]
        x = batch_to_frames(F.pixel_shuffle(frames_to_batch(x), self.fs), b)  # [B, out_dim * ft, t, H, W]
        x = x.unflatten(1, (-1, ft)).movedim(2, 3).flatten(2, 3)  # [B, out_dim, t * ft, H, W]
        return x[:, :, ft - 1 :] if first else x


# --------------------------------------------------------------------------- residual levels


def _residual_blocks(in_dim: int, out_dim: int, n: int, dropout: float) -> list[nn.Module]:
    return [ResidualBlock(in_dim if i == 0 else out_dim, out_dim, dropout) for i in range(n)]


class DownBlock(CachedBlock):
    """One encoder level: `n` residual blocks and a downsampler, plus the `AverageDown` shortcut around them.

    Module names follow the official checkpoint: `downsamples.J` (the residual blocks, then the
    resampler) and `avg_shortcut` (no parameters).
    """

    def __init__(self, in_dim: int, out_dim: int, n: int, down: bool, time_down: bool, dropout: float = 0.0):
        super().__init__()
        self.avg_shortcut = AverageDown(in_dim, out_dim, 2 if time_down else 1, 2 if down else 1)
        blocks = _residual_blocks(in_dim, out_dim, n, dropout)
        if down:
            blocks.append(Resample(out_dim, "downsample3d" if time_down else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        return run(self.downsamples, x, cache) + self.avg_shortcut(x)  # [B, out_dim, t', h', w']


class UpBlock(CachedBlock):
    """One decoder level: `n` residual blocks and a width-keeping upsampler, plus the `DuplicateUp` shortcut.

    The first call with a cache (the clip's first chunk) marks the block in the cache, so the
    shortcut knows when frame 0 must not be doubled; the last level has neither upsampler nor shortcut.
    """

    def __init__(self, in_dim: int, out_dim: int, n: int, up: bool, time_up: bool, dropout: float = 0.0):
        super().__init__()
        self.avg_shortcut = DuplicateUp(in_dim, out_dim, 2 if time_up else 1, 2) if up else None
        blocks = _residual_blocks(in_dim, out_dim, n, dropout)
        if up:
            blocks.append(Resample(out_dim, "upsample3d" if time_up else "upsample2d", up_dim=out_dim))
        self.upsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        first = self not in cache
        cache[self] = True
        y = run(self.upsamples, x, cache)  # [B, out_dim, t', h', w']
        return y if self.avg_shortcut is None else y + self.avg_shortcut(x, first)


def down_levels(dims: list[int], n: int, time_down: tuple[bool, ...], dropout: float) -> list[nn.Module]:
    """The encoder's levels for widths `dims` ([dim, dim * mult...]); the last level does not downsample."""
    last = len(dims) - 2
    return [
        DownBlock(cin, cout, n, down=i < last, time_down=i < last and time_down[i], dropout=dropout)
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:]))
    ]


def up_levels(dims: list[int], n: int, time_up: tuple[bool, ...], dropout: float) -> list[nn.Module]:
    """The decoder's levels for widths `dims` (deepest first); `n` residual blocks each (num_res_blocks + 1)."""
    last = len(dims) - 2
    return [
        UpBlock(cin, cout, n, up=i < last, time_up=i < last and time_up[i], dropout=dropout)
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:]))
    ]
