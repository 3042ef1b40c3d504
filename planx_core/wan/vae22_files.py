"""Wan 2.2 VAE files: telling them from Wan 2.1, diffusers' names, and the config from the shapes.

The official checkpoint (`Wan2.2_VAE.pth`) and ComfyUI's `wan2.2_vae.safetensors` share one set of
names, those of `vae.WanVAE(residual=True)`: `encoder.downsamples.I.downsamples.J.residual.K` (the
level's residual blocks, then at J = num_res_blocks its `resample` / `time_conv`),
`decoder.upsamples.I.upsamples.J...` (num_res_blocks + 1 blocks, then the upsampler), and the Wan
2.1 names elsewhere. ComfyUI tells the two VAEs apart by
`decoder.upsamples.0.upsamples.0.residual.2.weight`. diffusers' `AutoencoderKLWan(is_residual=True)`
(`vae/diffusion_pytorch_model.safetensors` of Wan-AI/Wan2.2-TI2V-5B-Diffusers) names them
`encoder.down_blocks.I.resnets.J.{norm1,conv1,norm2,conv2,conv_shortcut}`,
`encoder.down_blocks.I.downsampler.*`, `decoder.up_blocks.I.resnets.J.*` and
`decoder.up_blocks.I.upsampler.*`. Source: the key lists of those classes, read from Wan2.2
`wan/modules/vae2_2.py`, ComfyUI `comfy/ldm/wan/vae2_2.py` and diffusers `autoencoder_kl_wan.py`.
The loading itself (`load_vae`) is in `vae_files.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ..files.safetensors import CheckpointError, PathLike
from .vae import VAEConfig

# ComfyUI's test for the Wan 2.2 VAE, and the diffusers keys that only exist with is_residual=True.
_WAN22_KEY = re.compile(
    r"^(encoder\.downsamples\.\d+\.downsamples\.|decoder\.upsamples\.\d+\.upsamples\.|"
    r"encoder\.down_blocks\.\d+\.(resnets|downsampler)\.|decoder\.up_blocks\.\d+\.upsampler\.)"
)
# a residual block's official -> diffusers names
_RESNET = {
    "residual.0.": "norm1.",
    "residual.2.": "conv1.",
    "residual.3.": "norm2.",
    "residual.6.": "conv2.",
    "shortcut.": "conv_shortcut.",
}
_LEVEL_OFFICIAL = re.compile(
    r"^(encoder\.downsamples|decoder\.upsamples)\.(\d+)\.(?:downsamples|upsamples)\.(\d+)\.(.+)$"
)
_LEVEL_DIFFUSERS = re.compile(
    r"^(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(?:resnets\.(\d+)|downsampler|upsampler)\.(.+)$"
)
# official level prefix -> (diffusers level prefix, diffusers resampler name); and back
_SIDES = {
    "encoder.downsamples": ("encoder.down_blocks", "downsampler"),
    "decoder.upsamples": ("decoder.up_blocks", "upsampler"),
}
_OFFICIAL = {
    "encoder.down_blocks": "encoder.downsamples.{}.downsamples",
    "decoder.up_blocks": "decoder.upsamples.{}.upsamples",
}


def is_wan22(keys: Iterable[str]) -> bool:
    """True for the keys of a Wan 2.2 VAE (official, ComfyUI or diffusers names; prefix already stripped)."""
    return any(_WAN22_KEY.match(k) for k in keys)


def _rename(rest: str, table: Mapping[str, str]) -> str:
    return next((new + rest[len(old) :] for old, new in table.items() if rest.startswith(old)), rest)


def _level_to_diffusers(m: re.Match) -> str:
    side, level, j, rest = m.groups()
    block, resampler = _SIDES[side]
    if rest.startswith(("residual.", "shortcut.")):
        return f"{block}.{level}.resnets.{j}.{_rename(rest, _RESNET)}"
    return f"{block}.{level}.{resampler}.{rest}"


def official22_to_diffusers(sd: Mapping, rename_rest) -> dict:
    """Official Wan 2.2 names -> diffusers `AutoencoderKLWan(is_residual=True)` names; `rename_rest(key)` names
    the parts shared with Wan 2.1 (conv1/conv2, middle, head)."""
    return {(_level_to_diffusers(m) if (m := _LEVEL_OFFICIAL.match(k)) else rename_rest(k)): v for k, v in sd.items()}


def diffusers22_to_official(sd: Mapping, rename_rest) -> dict:
    """diffusers `AutoencoderKLWan(is_residual=True)` names -> official names; `rename_rest(key)` names the
    parts shared with Wan 2.1. The resampler follows the level's residual blocks, so its index is their count."""
    blocks: dict[tuple[str, str], int] = {}
    for k in sd:
        if (m := _LEVEL_DIFFUSERS.match(k)) and m.group(3) is not None:
            where = (m.group(1), m.group(2))
            blocks[where] = max(blocks.get(where, 0), int(m.group(3)) + 1)
    inverse = {new: old for old, new in _RESNET.items()}
    out = {}
    for k, v in sd.items():
        if not (m := _LEVEL_DIFFUSERS.match(k)):
            out[rename_rest(k)] = v
            continue
        side, level, j, rest = m.groups()
        if j is None:  # the level's resampler
            j = blocks.get((side, level), 0)
        else:
            rest = _rename(rest, inverse)
        out[f"{_OFFICIAL[side].format(level)}.{j}.{rest}"] = v
    return out


# --------------------------------------------------------------------------- config from shapes

_ENC = re.compile(r"^encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.(residual\.6\.weight|resample\.1\.weight)$")


def _shape(value) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else tuple(value.shape)


def _levels(shapes: Mapping) -> list[dict]:
    """Per encoder level: its residual blocks' widths, whether it downsamples, and whether in time too."""
    levels: dict[int, dict] = {}
    for k in shapes:
        if m := _ENC.match(k):
            level = levels.setdefault(int(m.group(1)), {"widths": {}, "down": False, "time": False})
            if m.group(3).startswith("residual"):
                level["widths"][int(m.group(2))] = _shape(shapes[k])[0]
            else:
                level["down"] = True
                level["time"] = f"encoder.downsamples.{m.group(1)}.downsamples.{m.group(2)}.time_conv.weight" in shapes
    return [levels[i] for i in sorted(levels)]


def infer_config22(shapes: Mapping, source: PathLike | None = None, hint: str = "") -> VAEConfig:
    """A Wan 2.2 `VAEConfig` (no latent statistics, name "custom") from official-layout shapes or tensors."""
    where = f"{source}: " if source else ""
    need = ("encoder.conv1.weight", "decoder.conv1.weight", "conv2.weight")
    absent = [k for k in need if k not in shapes]
    if absent:
        raise CheckpointError(f"{where}cannot infer the Wan 2.2 VAE size, keys {absent} are missing; {hint}")
    dim, video_channels = _shape(shapes["encoder.conv1.weight"])[:2]
    patch = round((video_channels / 3) ** 0.5)
    levels = _levels(shapes)
    counts = {len(lv["widths"]) for lv in levels}
    widths = [lv["widths"][max(lv["widths"])] if lv["widths"] else 0 for lv in levels]
    downs = [lv["down"] for lv in levels]
    if len(counts) != 1 or 3 * patch * patch != video_channels or any(w % dim for w in widths) or downs[-1:] != [False]:
        raise CheckpointError(
            f"{where}encoder.downsamples does not follow the Wan 2.2 VAE pattern (residual blocks per level "
            f"{[len(lv['widths']) for lv in levels]}, widths {widths}, base width {dim}, {video_channels} input "
            f"channels); the file is damaged or another model; {hint}"
        )
    dim_mult = tuple(w // dim for w in widths)
    return VAEConfig(
        dim=dim,
        dec_dim=_shape(shapes["decoder.conv1.weight"])[0] // dim_mult[-1],
        z_dim=_shape(shapes["conv2.weight"])[0],
        dim_mult=dim_mult,
        num_res_blocks=counts.pop(),
        temperal_downsample=tuple(lv["time"] for lv in levels[:-1]),
        patch_size=patch,
        residual=True,
    )
