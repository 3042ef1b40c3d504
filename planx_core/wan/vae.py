"""The Wan causal video VAEs (`WanVAE`): Wan 2.1 (3-channel video <-> 16-channel latents, 4x in time,
8x in space) and Wan 2.2 (the TI2V-5B's: 48 channels, 4x in time, 16x in space).

Source: Wan-Video/Wan2.1 `wan/modules/vae.py` and Wan2.2 `wan/modules/vae2_2.py` (architecture,
module names, the causal chunking of `encode`/`decode` and its feature cache), written from a
reading of them, of ComfyUI's `comfy/ldm/wan/vae.py`, `vae2_2.py` and of diffusers'
`AutoencoderKLWan`, never copied. Module names follow the official checkpoints (`Wan2.1_VAE.pth`,
`Wan2.2_VAE.pth`; ComfyUI's `wan_2.1_vae.safetensors`, `wan2.2_vae.safetensors`), so
`state_dict()` keys are the official ones: `encoder.conv1`, `encoder.downsamples.N.residual.K`,
`encoder.middle.1.to_qkv`, `encoder.head.0.gamma`, `conv1`, `conv2`, `decoder.upsamples.N.time_conv`...
A config with `residual=True` builds Wan 2.2's levels (`vae22.py`: residual down/up blocks with
parameter-free shortcuts, `encoder.downsamples.N.downsamples.J...`) and `patch_size=2` its 2x2
patchify; the rest is shared.

Everything is causal in time: latent frame 0 encodes video frame 0 alone, and each later latent
frame encodes the next `temporal_factor` (4) frames; clips therefore have 1 + 4n frames. Clips
are processed chunk by chunk (frame 0, then groups of 4 frames; one latent frame at a time when
decoding) with a cache holding the last frames each temporal convolution has seen, so activation
memory does not grow with the clip length. Loading and saving files live in `vae_files.py`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn

from ..limits import check_config
from .vae22 import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD, down_levels, patchify, unpatchify, up_levels
from .vae_layers import AttentionBlock, Cache, CausalConv3d, Resample, ResidualBlock, RMS_norm, run

# Wan 2.1's per-channel latent statistics (diffusers `AutoencoderKLWan` defaults `latents_mean/std`).
WAN21_LATENTS_MEAN = (
    -0.7571,
    -0.7089,
    -0.9113,
    0.1075,
    -0.1745,
    0.9653,
    -0.1517,
    1.5508,
    0.4134,
    -0.0715,
    0.5517,
    -0.3632,
    -0.1922,
    -0.9497,
    0.2503,
    -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184,
    1.4541,
    2.3275,
    2.6558,
    1.2196,
    1.7708,
    2.6052,
    2.0743,
    3.2687,
    2.1526,
    2.8652,
    1.5579,
    1.6382,
    1.1253,
    2.8251,
    1.9160,
)


@dataclass(frozen=True)
class VAEConfig:
    """Constructor arguments of `WanVAE`; names (typos included) follow the Wan reference.

    `latents_mean`/`latents_std` (None: 0 and 1) normalise the posterior mean per channel:
    `latent = (mean - latents_mean) / latents_std`, the space the DiT works in. Wan 2.2: `residual`
    (residual down/up levels with parameter-free shortcuts), `patch_size` 2 (2x2 patchify to 12
    channels) and `dec_dim` (the decoder's base width; None: `dim`).
    """

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    dropout: float = 0.0
    dec_dim: int | None = None
    patch_size: int = 1
    residual: bool = False
    name: str = "custom"

    def __post_init__(self):
        for f in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
            value = getattr(self, f)
            if value is not None:
                object.__setattr__(self, f, tuple(value))  # lists are accepted, stored as tuples
        object.__setattr__(self, "temperal_downsample", tuple(bool(b) for b in self.temperal_downsample))
        if self.dec_dim == self.dim:
            object.__setattr__(self, "dec_dim", None)  # one spelling of "the decoder is as wide as the encoder"
        check_config(
            f"VAEConfig {self.name!r}",
            dim=("model_dim", self.dim),
            z_dim=("channels", self.z_dim),
            num_res_blocks=("model_layers", self.num_res_blocks),
            levels=("model_layers", len(self.dim_mult)),
            patch_size=("grid", self.patch_size),
            dec_dim=("model_dim", self.dec_dim or self.dim),
        )
        if self.dim * max(self.dim_mult) > 4 * 16384:
            raise ValueError(f"VAEConfig {self.name!r}: dim x dim_mult reaches {self.dim * max(self.dim_mult)}")
        if self.residual and self.attn_scales:
            raise ValueError(
                f"VAEConfig {self.name!r}: the residual (Wan 2.2) levels have no attention; attn_scales=()"
            )
        if self.patch_size < 1:
            raise ValueError(f"VAEConfig {self.name!r}: patch_size must be >= 1, got {self.patch_size}")
        if len(self.dim_mult) < 2:
            raise ValueError(f"VAEConfig {self.name!r}: dim_mult needs at least 2 levels, got {self.dim_mult}")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"VAEConfig {self.name!r}: temperal_downsample needs one flag per downsampling step "
                f"({len(self.dim_mult) - 1} for dim_mult {self.dim_mult}), got {self.temperal_downsample}"
            )
        for f in ("latents_mean", "latents_std"):
            value = getattr(self, f)
            if value is not None and len(value) != self.z_dim:
                raise ValueError(f"VAEConfig {self.name!r}: {f} has {len(value)} values, z_dim is {self.z_dim}")

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temperal_downsample)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1) * self.patch_size

    @property
    def decoder_dim(self) -> int:
        return self.dim if self.dec_dim is None else self.dec_dim

    @property
    def video_channels(self) -> int:
        """Channels the encoder sees and the decoder writes: RGB, times the patch area."""
        return 3 * self.patch_size**2

    @property
    def version(self) -> str:
        """ "2.2" for the residual (Wan 2.2) architecture, else "2.1" (the tiny presets included)."""
        return "2.2" if self.residual else "2.1"

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """[z_dim, 1 + (frames - 1) / temporal_factor, height / s, width / s] for a valid clip size."""
        return (
            self.z_dim,
            1 + (frames - 1) // self.temporal_factor,
            height // self.spatial_factor,
            width // self.spatial_factor,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> VAEConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> VAEConfig:
        return cls.from_dict(json.loads(text))

    def with_(self, **changes) -> VAEConfig:
        return replace(self, **changes)


VAE_PRESETS: dict[str, VAEConfig] = {
    "wan2.1": VAEConfig(latents_mean=WAN21_LATENTS_MEAN, latents_std=WAN21_LATENTS_STD, name="wan2.1"),
    # A 64x64, 17-frame world: 4x in time and space, [3, 17, 64, 64] -> [16, 5, 16, 16]; width 16 trains
    # at ~0.6 s per step of 8 windows of 5 x 32 x 32 on one CPU thread (width 32: ~2 s).
    "tiny": VAEConfig(
        dim=16, z_dim=16, dim_mult=(1, 2, 2), num_res_blocks=1, temperal_downsample=(True, True), name="tiny"
    ),
    # Wan 2.2 (TI2V-5B): ~705M parameters; [3, 121, 704, 1280] -> [48, 31, 44, 80].
    "wan2.2": VAEConfig(
        dim=160,
        dec_dim=256,
        z_dim=48,
        patch_size=2,
        residual=True,
        latents_mean=WAN22_LATENTS_MEAN,
        latents_std=WAN22_LATENTS_STD,
        name="wan2.2",
    ),
    # Wan 2.2's architecture at widths 16 / 24 (tests): the same levels, patchify, z_dim and time steps.
    "tiny2.2": VAEConfig(dim=16, dec_dim=24, z_dim=48, patch_size=2, residual=True, name="tiny2.2"),
}


def get_vae_preset(name: str) -> VAEConfig:
    try:
        return VAE_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown VAE preset {name!r}; choose one of {sorted(VAE_PRESETS)}") from None


# --------------------------------------------------------------------------- encoder and decoder


def _level_blocks(cin: int, cout: int, n: int, attn: bool, dropout: float) -> list[nn.Module]:
    blocks: list[nn.Module] = []
    for _ in range(n):
        blocks.append(ResidualBlock(cin, cout, dropout))
        if attn:
            blocks.append(AttentionBlock(cout))
        cin = cout
    return blocks


def _middle(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim, dropout), AttentionBlock(dim), ResidualBlock(dim, dim, dropout))


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(RMS_norm(dim, images=False), nn.SiLU(), CausalConv3d(dim, out_dim, 3, padding=1))


class Encoder3d(nn.Module):
    """Video [B, 3 * p * p, T, H, W] (patchified) -> posterior moments [B, 2 * z_dim, latent T, H / s, W / s]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(cfg.video_channels, dims[0], 3, padding=1)
        if cfg.residual:
            blocks = down_levels(dims, cfg.num_res_blocks, cfg.temperal_downsample, cfg.dropout)
        else:
            blocks, scale = [], 1.0
            for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
                blocks += _level_blocks(cin, cout, cfg.num_res_blocks, scale in cfg.attn_scales, cfg.dropout)
                if i < len(cfg.temperal_downsample):
                    blocks.append(Resample(cout, "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"))
                    scale /= 2.0
        self.downsamples = nn.Sequential(*blocks)
        self.middle = _middle(dims[-1], cfg.dropout)
        self.head = _head(dims[-1], cfg.z_dim * 2)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        x = self.conv1(x, cache)  # [B, dim, T, H, W]
        for part in (self.downsamples, self.middle, self.head):
            x = run(part, x, cache)
        return x


class Decoder3d(nn.Module):
    """Latent [B, z_dim, t, h, w] -> video [B, 3 * p * p, 1 + (t - 1) * temporal_factor, h * s / p, w * s / p]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.decoder_dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        temperal_upsample = cfg.temperal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0], cfg.dropout)
        if cfg.residual:
            blocks = up_levels(dims, cfg.num_res_blocks + 1, temperal_upsample, cfg.dropout)
        else:
            blocks, scale = [], 1.0 / 2 ** (len(cfg.dim_mult) - 2)
            for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
                cin = cin // 2 if i > 0 else cin  # each upsampling conv halved the channels
                blocks += _level_blocks(cin, cout, cfg.num_res_blocks + 1, scale in cfg.attn_scales, cfg.dropout)
                if i < len(temperal_upsample):
                    blocks.append(Resample(cout, "upsample3d" if temperal_upsample[i] else "upsample2d"))
                    scale *= 2.0
        self.upsamples = nn.Sequential(*blocks)
        self.head = _head(dims[-1], cfg.video_channels)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        x = self.conv1(x, cache)  # [B, dim * dim_mult[-1], t, h, w]
        for part in (self.middle, self.upsamples, self.head):
            x = run(part, x, cache)
        return x


# --------------------------------------------------------------------------- the VAE


class WanVAE(nn.Module):
    """Wan 2.1 or 2.2 video VAE (the config says which). `encode`/`decode` work on normalised latents (the DiT's space).

    `chunked=True` (default) runs the reference's causal chunks with a feature cache: memory
    stays flat in the clip length. `chunked=False` runs the clip in one pass (faster, and the
    natural choice for training with gradients); both give the same result. Wan 2.2 patchifies
    the video 2x2 before the encoder and un-patchifies after the decoder.
    """

    def __init__(self, config: VAEConfig | str = "wan2.1"):
        super().__init__()
        cfg = get_vae_preset(config) if isinstance(config, str) else config
        self.config = cfg
        self.encoder = Encoder3d(cfg)
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    def check_video(self, video: torch.Tensor) -> None:
        """Refuse a video that is not [B, 3, 1 + 4n, H, W] with H and W multiples of the spatial factor."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(
                f"WanVAE.encode wants video [B, 3, T, H, W] in [-1, 1], got shape {list(video.shape)}; "
                f"add a batch axis or move channels first (a [T, H, W, 3] frame stack needs "
                f".permute(3, 0, 1, 2)[None])"
            )
        t, (h, w), k, s = video.shape[2], video.shape[3:], self.config.temporal_factor, self.config.spatial_factor
        if t < 1 or (t - 1) % k:
            lo = t - (t - 1) % k  # the valid counts around t are lo and lo + k
            fix = f"trim the clip to {lo} frame{'s' * (lo > 1)} or pad it" if lo >= 1 else "pad the clip"
            raise ValueError(
                f"WanVAE.encode: {t} frames cannot be encoded; the Wan VAE is causal in time and takes "
                f"1 + {k}n frames (1, {1 + k}, {1 + 2 * k}, {1 + 3 * k}, ...); {fix} to {lo + k}"
            )
        if h % s or w % s:
            raise ValueError(
                f"WanVAE.encode: frame size {h}x{w} is not a multiple of {s} (the spatial compression); "
                f"resize or crop to {h - h % s or s}x{w - w % s or s}"
            )

    def encoder_chunks(self, frames: int) -> list[tuple[int, int]]:
        """Frame 0 alone, then groups of max(4, temporal_factor) frames, as the reference."""
        step = max(4, self.config.temporal_factor)
        return [(0, 1)] + [(a, min(a + step, frames)) for a in range(1, frames, step)]

    def posterior(self, video: torch.Tensor, chunked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised posterior (mean, logvar), each [B, z_dim, 1 + (T - 1) / 4, H / s, W / s], float32."""
        self.check_video(video)
        x, cache = patchify(video.to(self.dtype), self.config.patch_size), {}  # [B, 3 * p * p, T, H / p, W / p]
        if chunked:
            out = torch.cat([self.encoder(x[:, :, a:b], cache) for a, b in self.encoder_chunks(x.shape[2])], dim=2)
        else:
            out = self.encoder(x, cache)  # [B, 2z, t, h, w]
        mean, logvar = self.conv1(out).float().chunk(2, dim=1)  # [B, z, t, h, w] each
        return mean, logvar.clamp(-30.0, 20.0)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        cfg = self.config
        if cfg.latents_mean is None and cfg.latents_std is None:
            return None
        mean = torch.tensor(cfg.latents_mean or (0.0,) * cfg.z_dim, device=like.device, dtype=like.dtype)
        std = torch.tensor(cfg.latents_std or (1.0,) * cfg.z_dim, device=like.device, dtype=like.dtype)
        return mean.view(1, -1, 1, 1, 1), std.view(1, -1, 1, 1, 1)

    def normalize(self, mean: torch.Tensor) -> torch.Tensor:
        stats = self._stats(mean)
        return mean if stats is None else (mean - stats[0]) / stats[1]

    def denormalize(self, latent: torch.Tensor) -> torch.Tensor:
        stats = self._stats(latent)
        return latent if stats is None else latent * stats[1] + stats[0]

    def encode(self, video: torch.Tensor, chunked: bool = True) -> torch.Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] -> normalised latent mean [B, z, 1 + (T - 1) / 4, H / s, W / s]."""
        return self.normalize(self.posterior(video, chunked)[0])

    def sample(
        self, video: torch.Tensor, generator: torch.Generator | None = None, chunked: bool = True
    ) -> torch.Tensor:
        """A normalised latent drawn from the posterior: mean + exp(logvar / 2) * noise (for training)."""
        mean, logvar = self.posterior(video, chunked)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return self.normalize(mean + torch.exp(0.5 * logvar) * noise)

    def decode(self, latent: torch.Tensor, clamp: bool = True, chunked: bool = True) -> torch.Tensor:
        """Normalised latent [B, z, t, h, w] -> video [B, 3, 1 + 4(t - 1), h * s, w * s], float32 in [-1, 1]."""
        if latent.ndim != 5 or latent.shape[1] != self.config.z_dim:
            raise ValueError(
                f"WanVAE.decode wants a latent [B, {self.config.z_dim}, t, h, w], got shape "
                f"{list(latent.shape)}; is it from a VAE with another z_dim (Wan 2.1's has 16, Wan 2.2's has 48)?"
            )
        x, cache = self.conv2(self.denormalize(latent.float()).to(self.dtype)), {}  # [B, z, t, h, w]
        if chunked:
            out = torch.cat([self.decoder(x[:, :, i : i + 1], cache) for i in range(x.shape[2])], dim=2)
        else:
            out = self.decoder(x, cache)  # [B, 3 * p * p, T, H / p, W / p]
        out = unpatchify(out, self.config.patch_size)  # [B, 3, T, H, W]
        return out.float().clamp(-1.0, 1.0) if clamp else out.float()
