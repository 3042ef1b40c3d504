"""Load and save Wan 2.1 VAE weights (`vae.WanVAE`) from safetensors files only.

Accepted: the official layout (`Wan2.1_VAE.pth` converted to safetensors, ComfyUI's
`wan_2.1_vae.safetensors`), optionally behind a `vae.` or `first_stage_model.` prefix; diffusers'
`AutoencoderKLWan` layout (`vae/diffusion_pytorch_model.safetensors`), renamed to the official
names; and files written by `save_vae`, whose "planx_vae" metadata holds the config. Without
metadata the config is inferred from the shapes (width from `encoder.conv1.weight`, z_dim from
`conv2.weight`, levels, blocks, attention and temporal steps from `encoder.downsamples.N`).
DiT, text-encoder, Wan 2.2 VAE, truncated and mis-shaped files are refused with the fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import fields
from functools import lru_cache
from pathlib import Path

import torch

from ..files.modules import config_in_metadata, save_module
from ..files.safetensors import (
    FLOAT8_DTYPES,
    LORA_KEY,
    CheckpointError,
    PathLike,
    check_keys,
    check_safetensors_header,
    read_safetensors,
)
from .vae import VAE_PRESETS, VAEConfig, WanVAE, get_vae_preset

PREFIXES = ("vae.", "first_stage_model.")
METADATA_KEY = "planx_vae"
_VAE_FILE_HINT = (
    "the Wan 2.1 VAE is ComfyUI's wan_2.1_vae.safetensors (models/vae) or Wan-AI's Wan2.1_VAE.pth "
    "converted to safetensors"
)

# --------------------------------------------------------------------------- official <-> diffusers names

_TOP = (("conv1.", "quant_conv."), ("conv2.", "post_quant_conv."))
_PARTS = (
    ("conv1.", "conv_in."),
    ("head.0.", "norm_out."),
    ("head.2.", "conv_out."),
    ("middle.0.", "mid_block.resnets.0."),
    ("middle.1.", "mid_block.attentions.0."),
    ("middle.2.", "mid_block.resnets.1."),
    ("downsamples.", "down_blocks."),
)
_RESNET = (
    ("residual.0.", "norm1."),
    ("residual.2.", "conv1."),
    ("residual.3.", "norm2."),
    ("residual.6.", "conv2."),
    ("shortcut.", "conv_shortcut."),
)
_UP_OFFICIAL = re.compile(r"^decoder\.upsamples\.(\d+)\.(.+)$")
_UP_DIFFUSERS = re.compile(r"^decoder\.up_blocks\.(\d+)\.(?:resnets\.(\d+)|upsamplers\.0)\.(.+)$")
_BLOCK_DIFFUSERS = re.compile(
    r"^((?:encoder|decoder)\.(?:down_blocks\.\d+|mid_block\.resnets\.\d+|"
    r"up_blocks\.\d+\.resnets\.\d+)\.)(.+)$"
)


def _swap(name: str, table: Iterable[tuple[str, str]], reverse: bool = False) -> str | None:
    for a, b in table:
        src, dst = (b, a) if reverse else (a, b)
        if name.startswith(src):
            return dst + name[len(src) :]
    return None


def _official_to_diffusers_key(key: str, num_res_blocks: int) -> str:
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return _swap(key, _TOP) or key
    if m := _UP_OFFICIAL.match(key):  # per level: num_res_blocks + 1 resnets, then the upsampler
        level, j = divmod(int(m.group(1)), num_res_blocks + 2)
        block = "upsamplers.0" if j == num_res_blocks + 1 else f"resnets.{j}"
        return f"decoder.up_blocks.{level}.{block}." + (_swap(m.group(2), _RESNET) or m.group(2))
    rest = _swap(rest, _PARTS) or rest
    if m := re.match(r"^(down_blocks\.\d+\.|mid_block\.resnets\.\d+\.)(.+)$", rest):
        rest = m.group(1) + (_swap(m.group(2), _RESNET) or m.group(2))
    return f"{side}.{rest}"


def official_to_diffusers(sd: Mapping[str, torch.Tensor], num_res_blocks: int) -> dict[str, torch.Tensor]:
    """Official Wan 2.1 VAE names -> diffusers `AutoencoderKLWan` names (decoder attention is not in diffusers)."""
    return {_official_to_diffusers_key(k, num_res_blocks): v for k, v in sd.items()}


def _diffusers_to_official_key(key: str, per_level: int) -> str:
    if not key.startswith(("encoder.", "decoder.")):
        return _swap(key, _TOP, reverse=True) or key
    if m := _UP_DIFFUSERS.match(key):
        j = int(m.group(2)) if m.group(2) is not None else per_level
        rest = m.group(3) if m.group(2) is None else (_swap(m.group(3), _RESNET, reverse=True) or m.group(3))
        return f"decoder.upsamples.{int(m.group(1)) * (per_level + 1) + j}.{rest}"
    if m := _BLOCK_DIFFUSERS.match(key):
        key = m.group(1) + (_swap(m.group(2), _RESNET, reverse=True) or m.group(2))
    side, _, rest = key.partition(".")
    return f"{side}.{_swap(rest, _PARTS, reverse=True) or rest}"


def diffusers_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `AutoencoderKLWan` (Wan 2.1, `is_residual=False`) names -> official names."""
    resnets = {int(m.group(2)) for k in sd if (m := _UP_DIFFUSERS.match(k)) and m.group(1) == "0" and m.group(2)}
    per_level = max(resnets, default=-1) + 1  # num_res_blocks + 1
    return {_diffusers_to_official_key(k, per_level): v for k, v in sd.items()}


# --------------------------------------------------------------------------- what a file holds


def strip_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ComfyUI `vae.` / `first_stage_model.` prefix (and the other components of an all-in-one file)."""
    for prefix in PREFIXES:
        if any(k.startswith(prefix + "encoder.") or k.startswith(prefix + "decoder.") for k in sd):
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def describe_non_vae(keys: Iterable[str]) -> str | None:
    """If the keys are clearly something other than a Wan 2.1 VAE, say what and where it goes."""
    keys = list(keys)
    has = lambda pat: any(re.search(pat, k) for k in keys)  # noqa: E731
    if any(LORA_KEY.search(k) for k in keys):
        return "a LoRA (low-rank adapter); it goes in models/loras and is applied to the DiT with a LoRA loader"
    if has(r"(^|\.)patch_embedding\.weight$|(^|\.)blocks\.\d+\.(self_attn|cross_attn|modulation)|head\.modulation$"):
        return (
            "a Wan DiT (diffusion model), not a VAE; load it with the DiT loader (models/diffusion_models, "
            f"planx_core.wan.load_dit); {_VAE_FILE_HINT}"
        )
    if has(r"^(encoder\.)?block\.\d+\.layer\.|^shared\.weight$|token_embedding\.weight$|^blocks\.\d+\.attn\.q\."):
        return f"a text encoder (umT5), not a VAE; it goes in models/text_encoders; {_VAE_FILE_HINT}"
    if has(r"^(visual|vision_model|textual)\."):
        return f"a CLIP vision encoder, not a VAE; it goes in models/clip_vision; {_VAE_FILE_HINT}"
    if has(r"^(encoder\.downsamples\.\d+\.downsamples|decoder\.upsamples\.\d+\.upsamples)\.") or has(
        r"^encoder\.down_blocks\.\d+\.resnets\."
    ):  # official / diffusers Wan 2.2 residual blocks
        return (
            "the Wan 2.2 VAE (z_dim 48, used by TI2V-5B); Plan-X's WanVAE is the Wan 2.1 VAE (z_dim 16, used "
            f"by Wan 2.1 and Wan 2.2 A14B); {_VAE_FILE_HINT}"
        )
    if has(r"^(encoder|decoder)\.(down|up)\.\d+\.block\.") or has(r"^(encoder|decoder)\.mid\.block_1\."):
        return f"an image VAE (Stable Diffusion / Flux style), not the Wan video VAE; {_VAE_FILE_HINT}"
    return None


def detect_vae_layout(keys: Iterable[str], source: PathLike | None = None) -> str:
    """ "official" or "diffusers"; anything else is refused with what it looks like."""
    keys = list(keys)
    where = f"{source}: " if source else ""
    if not keys:
        raise CheckpointError(f"{where}the file holds no tensors; {_VAE_FILE_HINT}")
    what = describe_non_vae(keys)
    if what:
        raise CheckpointError(f"{where}not a Wan 2.1 VAE: this looks like {what}")
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.", "quant_conv.")) for k in keys):
        return "diffusers"
    if any(k.startswith(("encoder.downsamples.", "decoder.upsamples.", "encoder.conv1.")) for k in keys):
        return "official"
    raise CheckpointError(
        f"{where}not a Wan VAE: none of its keys look like Wan VAE weights (encoder.conv1, "
        f"encoder.downsamples.N, decoder.upsamples.N, conv1, conv2); first keys: {keys[:5]}; "
        f"{_VAE_FILE_HINT}"
    )


# --------------------------------------------------------------------------- config from shapes

_DOWN = re.compile(r"^encoder\.downsamples\.(\d+)\.(residual\.6\.weight|to_qkv\.weight|resample\.1\.weight)$")


def _encoder_levels(sd: Mapping[str, torch.Tensor]) -> list[dict]:
    """Walk `encoder.downsamples.N` in order: per level its residual widths, attention and temporal step."""
    found = sorted((int(m.group(1)), m.group(2), k) for k in sd if (m := _DOWN.match(k)))
    levels, level = [], {"widths": [], "attn": False, "time": False}
    for index, kind, key in found:
        if kind.startswith("residual"):
            level["widths"].append(sd[key].shape[0])
        elif kind.startswith("to_qkv"):
            level["attn"] = True
        else:
            level["time"] = f"encoder.downsamples.{index}.time_conv.weight" in sd
            levels.append(level)
            level = {"widths": [], "attn": False, "time": False}
    return levels + [level]


def infer_vae_config(sd: Mapping[str, torch.Tensor], source: PathLike | None = None) -> VAEConfig:
    """A `VAEConfig` from official-layout shapes; the latent statistics of a preset with the same architecture."""
    where = f"{source}: " if source else ""
    absent = [
        k for k in ("encoder.conv1.weight", "conv2.weight", "encoder.downsamples.0.residual.6.weight") if k not in sd
    ]
    if absent:
        raise CheckpointError(
            f"{where}cannot infer the VAE size, keys {absent} are missing; is this a complete "
            f"Wan 2.1 VAE file? {_VAE_FILE_HINT}"
        )
    dim, z_dim = sd["encoder.conv1.weight"].shape[0], sd["conv2.weight"].shape[0]
    levels = _encoder_levels(sd)
    counts = {len(lv["widths"]) for lv in levels}
    widths = [lv["widths"][-1] if lv["widths"] else 0 for lv in levels]
    if len(counts) != 1 or any(w % dim for w in widths):
        raise CheckpointError(
            f"{where}encoder.downsamples does not follow the Wan VAE pattern (residual blocks per "
            f"level {[len(lv['widths']) for lv in levels]}, widths {widths}, base width {dim}); "
            f"the file is damaged or another model; {_VAE_FILE_HINT}"
        )
    arch = VAEConfig(
        dim=dim,
        z_dim=z_dim,
        dim_mult=tuple(w // dim for w in widths),
        num_res_blocks=counts.pop(),
        attn_scales=tuple(1.0 / 2**i for i, lv in enumerate(levels) if lv["attn"]),
        temperal_downsample=tuple(lv["time"] for lv in levels[:-1]),
    )
    for preset in VAE_PRESETS.values():
        if _architecture(preset) == _architecture(arch):
            return preset
    return arch


def _architecture(cfg: VAEConfig) -> tuple:
    return tuple(getattr(cfg, f.name) for f in fields(cfg) if f.name not in ("latents_mean", "latents_std", "name"))


@lru_cache(maxsize=16)
def expected_vae_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of `WanVAE(cfg).state_dict()`, built on the meta device."""
    with torch.device("meta"):
        model = WanVAE(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_vae_state_dict(sd: Mapping[str, torch.Tensor], cfg: VAEConfig, path: PathLike | None = None) -> None:
    """Raise a CheckpointError naming missing, unexpected and mis-shaped keys for `WanVAE(cfg)`."""
    check_keys(
        sd,
        expected_vae_shapes(cfg),
        f"{path or 'checkpoint'}: does not fit the VAE config {cfg.name!r} (dim {cfg.dim}, z_dim {cfg.z_dim}, "
        f"dim_mult {list(cfg.dim_mult)}, {cfg.num_res_blocks} residual blocks per level):",
        f"The file is incomplete or damaged (re-download or re-copy it), or the config does not match "
        f"it (leave config=None to infer it from the shapes); {_VAE_FILE_HINT}.",
    )


# --------------------------------------------------------------------------- load and save


def _resolve_file(path: Path) -> Path:
    if path.is_dir():
        for candidate in (
            path / "diffusion_pytorch_model.safetensors",
            path / "vae" / "diffusion_pytorch_model.safetensors",
        ):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path}: a folder; pass the VAE .safetensors file itself ({_VAE_FILE_HINT})")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; {_VAE_FILE_HINT}")
    return path


def _config_from(config: VAEConfig | str | None, header: dict, sd: Mapping, path: Path) -> VAEConfig:
    if isinstance(config, VAEConfig):
        return config
    if isinstance(config, str):
        try:
            return get_vae_preset(config)
        except KeyError as e:
            raise CheckpointError(f"{path}: {e.args[0]}") from None
    fix = "re-save it with save_vae, or strip the metadata to infer the config from the shapes"
    raw = config_in_metadata(header.get("__metadata__") or {}, METADATA_KEY, path, fix)
    if raw is None:
        return infer_vae_config(sd, path)
    try:
        return VAEConfig.from_dict(raw)
    except (ValueError, TypeError) as e:
        raise CheckpointError(
            f"{path}: its {METADATA_KEY!r} metadata is not a valid VAE config ({e}); re-save it "
            f"with save_vae, or strip the metadata to infer the config from the shapes"
        ) from None


def load_vae(
    path: PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    config: VAEConfig | str | None = None,
) -> WanVAE:
    """Load a Wan 2.1 VAE from safetensors into a `WanVAE` in eval mode (computes in `dtype`).

    `config`: None uses the file's "planx_vae" metadata or infers it from the shapes; a preset
    name or a `VAEConfig` is used as given (and validated against the file).
    """
    if dtype in FLOAT8_DTYPES or not dtype.is_floating_point:
        raise CheckpointError(
            f"load_vae: dtype {dtype} is not supported; the VAE computes in its storage dtype, "
            f"use torch.float32, torch.bfloat16 or torch.float16"
        )
    path = _resolve_file(Path(path))
    header = check_safetensors_header(path)
    sd = strip_prefix(read_safetensors(path, dtype=dtype, device=device))
    if detect_vae_layout(sd, path) == "diffusers":
        sd = diffusers_to_official(sd)
    cfg = _config_from(config, header, sd, path)
    check_vae_state_dict(sd, cfg, path)
    with torch.device("meta"):
        model = WanVAE(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def save_vae(model: WanVAE, path: PathLike) -> None:
    """Save official-layout weights as safetensors, with the config (and latent statistics) in the metadata."""
    save_module(model.state_dict(), path, key=METADATA_KEY, config=model.config.to_dict())
