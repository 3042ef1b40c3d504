"""The Wan model family at any size: DiT, video VAE, umT5 text encoder, RoPE, attention, windows, files.

Sources: Wan-Video/Wan2.2 (`wan/modules`, `wan/configs`), ComfyUI's `comfy/ldm/wan` for per-frame
timesteps; each module names its own.

Public API: `DiTConfig`, `PRESETS`, `get_preset`, `SAMPLING`, `default_shift`, `preset_named`
(configs and sampling defaults); `WanModel` (dit); `load_dit`, `detect_layout`, `to_official`,
`infer_config`, `describe_shapes`, `save_dit`, `load_dit_file` (DiT files in the official, ComfyUI
and diffusers layouts); `available_backends` (the one attention entry point is the module
`attention`, function `attention.attention`); `Rope`, `rope_frequencies`, `apply_rope`,
`grid_positions` (3D RoPE); `WindowLayout`, `WindowSpec`, `windowed_attention` (shifted windows along time);
`WanVAE`, `VAEConfig`, `VAE_PRESETS`, `load_vae`, `save_vae`, `describe_vae_file`, `is_vae_file`
(the Wan 2.1 and 2.2 video VAEs); `TextEncoder`, `load_text_encoder`, `save_text_encoder`,
`join_prompt`, `clean_prompt`, `describe_text_encoder`, `convert_umt5_pth` (umT5 features from
every released form).
"""

from .attention import available_backends
from .configs import PRESETS, SAMPLING, DiTConfig, SamplingPreset, default_shift, get_preset, preset_named
from .dit import WanModel, check_window
from .dit_files import (
    comfyui_unet_config,
    describe_shapes,
    detect_layout,
    infer_config,
    load_dit,
    load_dit_file,
    save_dit,
    to_official,
)
from .rope import Rope, apply_rope, grid_positions, rope_frequencies
from .text_encoder import TextEncoder, join_prompt, load_text_encoder, save_text_encoder
from .text_encoder_convert import convert_umt5_pth
from .text_encoder_files import describe_text_encoder, is_umt5_keys, umt5_xxl_config
from .text_encoder_prompt import clean_prompt
from .vae import VAE_PRESETS, VAEConfig, WanVAE
from .vae_files import describe_vae_file, is_vae_file, load_vae, save_vae
from .windows import SEMANTICS, WindowLayout, WindowSpec, layer_shift, windowed_attention

__all__ = [
    "SAMPLING",
    "SamplingPreset",
    "default_shift",
    "preset_named",
    "PRESETS",
    "DiTConfig",
    "Rope",
    "TextEncoder",
    "VAEConfig",
    "VAE_PRESETS",
    "WanModel",
    "WanVAE",
    "SEMANTICS",
    "WindowLayout",
    "WindowSpec",
    "apply_rope",
    "available_backends",
    "clean_prompt",
    "comfyui_unet_config",
    "convert_umt5_pth",
    "describe_text_encoder",
    "check_window",
    "describe_shapes",
    "describe_vae_file",
    "detect_layout",
    "get_preset",
    "grid_positions",
    "infer_config",
    "is_umt5_keys",
    "is_vae_file",
    "join_prompt",
    "layer_shift",
    "load_dit",
    "load_dit_file",
    "load_text_encoder",
    "load_vae",
    "rope_frequencies",
    "save_dit",
    "save_text_encoder",
    "save_vae",
    "to_official",
    "umt5_xxl_config",
    "windowed_attention",
]
