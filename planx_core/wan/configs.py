"""DiT architecture presets: Wan 2.2 TI2V-5B, Wan 2.1 T2V 1.3B/14B, and tiny test sizes.

Source: Wan-Video/Wan2.2 `wan/configs/wan_ti2v_5B.py` and `shared_config.py` (dim, layers,
heads, ffn, freq dim, patch, eps); Wan 2.1 sizes from the same repository's 2.1 configs.
The presets describe architecture; `SAMPLING` holds each preset's sampling defaults (the one table
the pipelines and the ComfyUI sampler take a default shift from).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..limits import check_config


@dataclass(frozen=True)
class DiTConfig:
    """Constructor arguments of `WanModel`; names follow the Wan reference."""

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int
    out_dim: int
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    text_len: int = 512
    name: str = "custom"

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def __post_init__(self):
        check_config(
            f"DiTConfig {self.name!r}",
            dim=("model_dim", self.dim),
            ffn_dim=("ffn_dim", self.ffn_dim),
            num_heads=("model_heads", self.num_heads),
            num_layers=("model_layers", self.num_layers),
            in_dim=("channels", self.in_dim),
            out_dim=("channels", self.out_dim),
            text_dim=("model_dim", self.text_dim),
            freq_dim=("model_dim", self.freq_dim),
            text_len=("text_len", self.text_len),
        )
        if len(self.patch_size) != 3 or not all(isinstance(p, int) and 1 <= p <= 16 for p in self.patch_size):
            raise ValueError(f"DiTConfig {self.name!r}: patch_size must be three whole numbers in 1..16")
        if self.dim % self.num_heads:
            raise ValueError(f"DiTConfig {self.name!r}: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"DiTConfig {self.name!r}: head dim {self.head_dim} must be even for RoPE")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> DiTConfig:
        return replace(self, **changes)


PRESETS: dict[str, DiTConfig] = {
    "wan2.2-ti2v-5b": DiTConfig(
        dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48, out_dim=48, name="wan2.2-ti2v-5b"
    ),
    "wan2.1-t2v-1.3b": DiTConfig(
        dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, in_dim=16, out_dim=16, name="wan2.1-t2v-1.3b"
    ),
    "wan2.1-t2v-14b": DiTConfig(
        dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16, out_dim=16, name="wan2.1-t2v-14b"
    ),
    # Tiny sizes for tests: same architecture, Wan 2.2 channel layout (48) and a small text width.
    "tiny": DiTConfig(
        dim=64,
        ffn_dim=128,
        num_heads=2,
        num_layers=2,
        in_dim=48,
        out_dim=48,
        text_dim=32,
        freq_dim=32,
        text_len=16,
        name="tiny",
    ),
    "tiny-wan21": DiTConfig(
        dim=64,
        ffn_dim=128,
        num_heads=2,
        num_layers=2,
        in_dim=16,
        out_dim=16,
        text_dim=32,
        freq_dim=32,
        text_len=16,
        name="tiny-wan21",
    ),
    # The embedded model's renderer: 16 latent channels (the tiny Wan-architecture VAE), a 16x16
    # latent of a 64x64 frame -> 8x8 tokens per latent frame; patch dim 64 is below the width 128,
    # so velocity prediction is safe (docs/planshapes.md section 4.1), text from the tiny umT5 (64 wide).
    "planx-tiny": DiTConfig(
        dim=128,
        ffn_dim=512,
        num_heads=4,
        num_layers=4,
        in_dim=16,
        out_dim=16,
        text_dim=64,
        freq_dim=64,
        text_len=64,
        name="planx-tiny",
    ),
}


def get_preset(name: str) -> DiTConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown DiT preset {name!r}; choose one of {sorted(PRESETS)}") from None


@dataclass(frozen=True)
class SamplingPreset:
    """A model's sampling defaults: flow shift, steps, text guidance, frames per second."""

    shift: float
    steps: int
    text_scale: float
    fps: float


# Wan's own configs (`sample_shift`, `sample_steps`, `sample_guide_scale`, `sample_fps`). TI2V-5B: shift 5.0 as its
# config and the official sampler use; ComfyUI's WAN22 model sampling defaults to 8, its own choice for fewer steps.
# The tiny presets: what the embedded models were trained and evaluated with.
SAMPLING: dict[str, SamplingPreset] = {
    "wan2.2-ti2v-5b": SamplingPreset(shift=5.0, steps=50, text_scale=5.0, fps=24.0),
    "wan2.1-t2v-1.3b": SamplingPreset(shift=5.0, steps=50, text_scale=5.0, fps=16.0),
    "wan2.1-t2v-14b": SamplingPreset(shift=5.0, steps=50, text_scale=5.0, fps=16.0),
    "planx-tiny": SamplingPreset(shift=3.0, steps=20, text_scale=1.0, fps=8.0),
}


def preset_named(dim: int, num_layers: int, num_heads: int, in_dim: int) -> str | None:
    """The preset with these sizes (how a loaded model is recognised), or None."""
    for name, cfg in PRESETS.items():
        if (cfg.dim, cfg.num_layers, cfg.num_heads, cfg.in_dim) == (dim, num_layers, num_heads, in_dim):
            return name
    return None


def default_shift(preset: str | None) -> float | None:
    """The flow shift `SAMPLING` gives a preset, or None for a model it does not know."""
    return SAMPLING[preset].shift if preset in SAMPLING else None
