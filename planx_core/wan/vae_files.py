"""Load, save and describe Wan 2.1 and Wan 2.2 VAE weights (`vae.WanVAE`), safetensors files only.

Accepted: the official layout (`Wan2.1_VAE.pth` / `Wan2.2_VAE.pth` converted to safetensors,
ComfyUI's `wan_2.1_vae.safetensors` / `wan2.2_vae.safetensors`), optionally behind a `vae.` or
`first_stage_model.` prefix; diffusers' `AutoencoderKLWan` layout
(`vae/diffusion_pytorch_model.safetensors`, `is_residual=True` for Wan 2.2), renamed to the
official names; and files written by `save_vae`, whose "planx_vae" metadata holds the config.
Without metadata the version is told by the keys (Wan 2.2's residual levels, `vae22_files`) and
the config is inferred from the shapes (width from `encoder.conv1.weight`, z_dim from
`conv2.weight`, levels, blocks, attention and temporal steps from `encoder.downsamples.N`).
Everything is checked against the header before a tensor is read or a weight allocated. DiT,
text-encoder, image-VAE, truncated and mis-shaped files, and a Wan 2.1 file given a Wan 2.2 config
(or the reverse), are refused with the fix. `describe_vae_file` says what a file is (`inspect`).
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import fields
from functools import lru_cache
from pathlib import Path

import torch

from ..files.modules import check_field_types, config_in_metadata, save_module
from ..files.safetensors import (
    FLOAT8_DTYPES,
    LORA_KEY,
    CheckpointError,
    PathLike,
    check_keys,
    check_safetensors_header,
    header_shapes,
    read_safetensors,
    refuse_non_float,
)
from .vae import VAE_PRESETS, VAEConfig, WanVAE, get_vae_preset
from .vae22_files import diffusers22_to_official, infer_config22, is_wan22, official22_to_diffusers

PREFIXES = ("vae.", "first_stage_model.")
METADATA_KEY = "planx_vae"
_VAE_FILE_HINT = (
    "the Wan VAEs are ComfyUI's wan_2.1_vae.safetensors and wan2.2_vae.safetensors (models/vae), Wan-AI's "
    "Wan2.1_VAE.pth / Wan2.2_VAE.pth converted to safetensors, or a diffusers vae/ folder"
)
# what each version is, for descriptions and refusals
VERSIONS = {
    "2.1": "Wan 2.1 VAE (z_dim 16; Wan 2.1 and Wan 2.2 A14B)",
    "2.2": "Wan 2.2 VAE (z_dim 48, 2x2 patchify; Wan 2.2 TI2V-5B)",
}

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
    """Official Wan 2.1 or 2.2 VAE names -> diffusers `AutoencoderKLWan` names (decoder attention is not in
    diffusers); Wan 2.2's (`is_residual=True`) are told by the keys and need no `num_res_blocks`."""
    if is_wan22(sd):
        return official22_to_diffusers(sd, lambda k: _official_to_diffusers_key(k, num_res_blocks))
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
    """diffusers `AutoencoderKLWan` names (Wan 2.1, or Wan 2.2 with `is_residual=True`) -> official names.
    Values pass through untouched (tensors or shapes)."""
    if is_wan22(sd):
        return diffusers22_to_official(sd, lambda k: _diffusers_to_official_key(k, 0))
    resnets = {int(m.group(2)) for k in sd if (m := _UP_DIFFUSERS.match(k)) and m.group(1) == "0" and m.group(2)}
    per_level = max(resnets, default=-1) + 1  # num_res_blocks + 1
    return {_diffusers_to_official_key(k, per_level): v for k, v in sd.items()}


# --------------------------------------------------------------------------- what a file holds


def vae_prefix(keys: Iterable[str]) -> str:
    """The ComfyUI prefix the VAE's keys sit behind (`vae.`, `first_stage_model.`), or ""."""
    keys = list(keys)
    return next((p for p in PREFIXES if any(k.startswith((p + "encoder.", p + "decoder.")) for k in keys)), "")


def strip_prefix(sd: Mapping) -> dict:
    """Drop a ComfyUI `vae.` / `first_stage_model.` prefix (and the other components of an all-in-one file)."""
    prefix = vae_prefix(sd)
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def vae_version(keys: Iterable[str]) -> str:
    """ "2.2" when the keys hold Wan 2.2's residual levels (official, ComfyUI or diffusers names), else "2.1"."""
    return "2.2" if is_wan22(keys) else "2.1"


def describe_non_vae(keys: Iterable[str]) -> str | None:
    """If the keys are clearly something other than a Wan VAE, say what and where it goes."""
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
        raise CheckpointError(f"{where}not a Wan VAE: this looks like {what}")
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


def _shape(value) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else tuple(value.shape)


def _encoder_levels(sd: Mapping) -> list[dict]:
    """Walk `encoder.downsamples.N` in order: per level its residual widths, attention and temporal step."""
    found = sorted((int(m.group(1)), m.group(2), k) for k in sd if (m := _DOWN.match(k)))
    levels, level = [], {"widths": [], "attn": False, "time": False}
    for index, kind, key in found:
        if kind.startswith("residual"):
            level["widths"].append(_shape(sd[key])[0])
        elif kind.startswith("to_qkv"):
            level["attn"] = True
        else:
            level["time"] = f"encoder.downsamples.{index}.time_conv.weight" in sd
            levels.append(level)
            level = {"widths": [], "attn": False, "time": False}
    return levels + [level]


def _infer_config21(sd: Mapping, where: str) -> VAEConfig:
    absent = [
        k for k in ("encoder.conv1.weight", "conv2.weight", "encoder.downsamples.0.residual.6.weight") if k not in sd
    ]
    if absent:
        raise CheckpointError(
            f"{where}cannot infer the VAE size, keys {absent} are missing; is this a complete "
            f"Wan VAE file? {_VAE_FILE_HINT}"
        )
    dim, z_dim = _shape(sd["encoder.conv1.weight"])[0], _shape(sd["conv2.weight"])[0]
    levels = _encoder_levels(sd)
    counts = {len(lv["widths"]) for lv in levels}
    widths = [lv["widths"][-1] if lv["widths"] else 0 for lv in levels]
    if len(counts) != 1 or any(w % dim for w in widths):
        raise CheckpointError(
            f"{where}encoder.downsamples does not follow the Wan VAE pattern (residual blocks per "
            f"level {[len(lv['widths']) for lv in levels]}, widths {widths}, base width {dim}); "
            f"the file is damaged or another model; {_VAE_FILE_HINT}"
        )
    return VAEConfig(
        dim=dim,
        z_dim=z_dim,
        dim_mult=tuple(w // dim for w in widths),
        num_res_blocks=counts.pop(),
        attn_scales=tuple(1.0 / 2**i for i, lv in enumerate(levels) if lv["attn"]),
        temperal_downsample=tuple(lv["time"] for lv in levels[:-1]),
    )


def infer_vae_config(sd: Mapping, source: PathLike | None = None) -> VAEConfig:
    """A `VAEConfig` from official-layout shapes (key -> tensor or shape), Wan 2.1 or 2.2 by the keys; the
    preset with the same architecture when there is one (it brings the latent statistics)."""
    where = f"{source}: " if source else ""
    arch = infer_config22(sd, source, _VAE_FILE_HINT) if is_wan22(sd) else _infer_config21(sd, where)
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


def check_vae_state_dict(sd: Mapping, cfg: VAEConfig, path: PathLike | None = None) -> None:
    """Raise a CheckpointError naming missing, unexpected and mis-shaped keys (tensors or shapes) for `WanVAE(cfg)`."""
    decoder = f", decoder {cfg.dec_dim}" if cfg.dec_dim else ""
    check_keys(
        sd,
        expected_vae_shapes(cfg),
        f"{path or 'checkpoint'}: does not fit the VAE config {cfg.name!r} (Wan {cfg.version}, dim {cfg.dim}"
        f"{decoder}, z_dim {cfg.z_dim}, dim_mult {list(cfg.dim_mult)}, {cfg.num_res_blocks} residual blocks "
        f"per level):",
        f"The file is incomplete or damaged (re-download or re-copy it), or the config does not match "
        f"it (leave config=None to infer it from the shapes); {_VAE_FILE_HINT}.",
    )


# --------------------------------------------------------------------------- load, save, describe


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


def _official_shapes(header: dict, path: Path) -> tuple[dict[str, tuple[int, ...]], str]:
    """The VAE's keys (official names, prefix stripped) -> shapes, and the file's layout, from the header alone."""
    shapes = strip_prefix(header_shapes(header))
    layout = detect_vae_layout(shapes, path)
    return (diffusers_to_official(shapes) if layout == "diffusers" else shapes), layout


def _stored_config(config: VAEConfig | str | None, header: dict, shapes: Mapping, path: Path) -> VAEConfig:
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
        return infer_vae_config(shapes, path)
    check_field_types(VAEConfig, raw, path, "VAE config", fix)
    try:
        return VAEConfig.from_dict(raw)
    except (ValueError, TypeError) as e:
        raise CheckpointError(
            f"{path}: its {METADATA_KEY!r} metadata is not a valid VAE config ({e}); re-save it "
            f"with save_vae, or strip the metadata to infer the config from the shapes"
        ) from None


def _config_from(config: VAEConfig | str | None, header: dict, shapes: Mapping, path: Path) -> VAEConfig:
    """The config to build: given, stored or inferred; refused when it is the other Wan VAE version than the file."""
    cfg = _stored_config(config, header, shapes, path)
    found = vae_version(shapes)
    if cfg.version != found:
        raise CheckpointError(
            f"{path}: this file is the {VERSIONS[found]}, but the config {cfg.name!r} is the "
            f"{VERSIONS[cfg.version]}; leave config=None to load what the file holds, or pick the file the "
            f"config is for ({'wan2.2_vae' if cfg.version == '2.2' else 'wan_2.1_vae'}.safetensors)"
        )
    return cfg


def load_vae(
    path: PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    config: VAEConfig | str | None = None,
) -> WanVAE:
    """Load a Wan 2.1 or 2.2 VAE from safetensors into a `WanVAE` in eval mode (computes in `dtype`).

    `config`: None uses the file's "planx_vae" metadata or infers it from the shapes; a preset
    name or a `VAEConfig` is used as given (and validated against the file). Keys and shapes are
    checked against the header before any tensor is read; the model is built on the meta device
    and takes the file's tensors as they are read.
    """
    if dtype in FLOAT8_DTYPES or not dtype.is_floating_point:
        raise CheckpointError(
            f"load_vae: dtype {dtype} is not supported; the VAE computes in its storage dtype, "
            f"use torch.float32, torch.bfloat16 or torch.float16"
        )
    path = _resolve_file(Path(path))
    header = check_safetensors_header(path)
    shapes, layout = _official_shapes(header, path)
    cfg = _config_from(config, header, shapes, path)
    check_vae_state_dict(shapes, cfg, path)
    sd = strip_prefix(read_safetensors(path, dtype=dtype, device=device))
    refuse_non_float(sd, path, _VAE_FILE_HINT)
    if layout == "diffusers":
        sd = diffusers_to_official(sd)
    with torch.device("meta"):
        model = WanVAE(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def save_vae(model: WanVAE, path: PathLike) -> None:
    """Save official-layout weights as safetensors, with the config (and latent statistics) in the metadata."""
    save_module(model.state_dict(), path, key=METADATA_KEY, config=model.config.to_dict())


def is_vae_file(path: PathLike) -> bool:
    """True when `path` (a file, or a diffusers folder) holds Wan VAE weights by its header's keys (nothing read):
    lets `inspect` pick `describe_vae_file`; a damaged or non-VAE file gives False."""
    try:
        path = _resolve_file(Path(path))
        detect_vae_layout(strip_prefix(header_shapes(check_safetensors_header(path))), path)
    except (CheckpointError, OSError):
        return False
    return True


_LAYOUTS = {"official": "official/ComfyUI (Wan2.x_VAE.pth names)", "diffusers": "diffusers (AutoencoderKLWan)"}


def _checked_header(path: PathLike):
    """(file, header, official shapes, layout, config) of a VAE file, checked from its header alone."""
    path = _resolve_file(Path(path))
    header = check_safetensors_header(path)
    shapes, layout = _official_shapes(header, path)
    cfg = _config_from(None, header, shapes, path)
    check_vae_state_dict(shapes, cfg, path)
    return path, header, shapes, layout, cfg


def vae_file_config(path: PathLike) -> VAEConfig:
    """The config of a VAE file, from its header alone (nothing read, nothing allocated); CheckpointError if it is
    not a Wan VAE file."""
    return _checked_header(path)[-1]


def describe_vae_file(path: PathLike) -> str:
    """What a VAE file is, from its header alone (nothing read, nothing allocated), as `inspect` lines:
    the Wan VAE version, layout, config, latent shape, parameter count and dtypes. CheckpointError when
    it is not a Wan VAE file (or does not fit the config it carries), naming what it is and the fix."""
    path, header, shapes, layout, cfg = _checked_header(path)
    prefix = vae_prefix(header_shapes(header))
    stored = METADATA_KEY in (header.get("__metadata__") or {})
    source = "Plan-X save_vae, " if stored else ""
    dtypes = collections.Counter(v["dtype"] for k, v in header.items() if k != "__metadata__" and k.startswith(prefix))
    s, t, z = cfg.spatial_factor, cfg.temporal_factor, cfg.z_dim
    decoder = f", decoder {cfg.decoder_dim}" if cfg.dec_dim else ""
    lines = {
        "kind": VERSIONS[cfg.version],
        "layout": f"{source}{_LAYOUTS[layout]}" + (f", behind the prefix {prefix!r}" if prefix else ""),
        "config": f"{cfg.name!r}: dim {cfg.dim}{decoder}, dim_mult {list(cfg.dim_mult)}, "
        f"{cfg.num_res_blocks} residual block{'s' * (cfg.num_res_blocks != 1)} per level, patch {cfg.patch_size}",
        "latents": f"[3, 1 + {t}n, H, W] -> [{z}, 1 + n, H / {s}, W / {s}]",
        "tensors": f"{len(shapes)}, {sum(math.prod(v) for v in shapes.values()) / 1e6:.1f} M parameters",
        "dtypes": ", ".join(f"{d} x{n}" for d, n in dtypes.most_common()),
    }
    return "\n".join(f"{k + ':':<11} {v}" for k, v in lines.items())
