"""Load Wan DiT checkpoints from safetensors files only (nothing is ever unpickled).

Accepted files: the official Wan 2.1 / 2.2 layout (single files, or the
`diffusion_pytorch_model-0000x-of-0000y.safetensors` shards with their `.index.json`);
ComfyUI's repackaged single files (official names, optionally behind a `model.diffusion_model.`
or `diffusion_model.` prefix, including the fp8 variants); and diffusers'
`WanTransformer3DModel` naming. Everything is converted to the official names, which are the
`state_dict()` keys of `dit.WanModel`, then checked against the model's expected shapes before
the model is built on the meta device and given the loaded tensors (no second copy).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import torch

from ..files.modules import load_module, save_module
from ..files.safetensors import (
    LORA_KEY,
    CheckpointError,
    PathLike,
    check_keys,
    fold_fp8_scales,
    read_safetensors,
    refuse_non_float,
)
from .configs import PRESETS, DiTConfig, get_preset
from .dit import WanModel

# --------------------------------------------------------------------------- reading files


# --------------------------------------------------------------------------- key layouts

COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
# Other components that an all-in-one ComfyUI checkpoint may bundle next to the DiT.
_BUNDLED_PREFIXES = (
    "first_stage_model.",
    "cond_stage_model.",
    "conditioner.",
    "vae.",
    "text_encoders.",
    "clip_vision.",
    "model_ema.",
)

# (official module path, diffusers module path); a key maps when it equals the path or continues with ".".
TOP_LEVEL_NAMES: tuple[tuple[str, str], ...] = (
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),  # Wan 2.1 I2V / FLF2V image projection
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
    ("head.head", "proj_out"),
    ("head.modulation", "scale_shift_table"),
    ("patch_embedding", "patch_embedding"),
)
BLOCK_NAMES: tuple[tuple[str, str], ...] = tuple(
    (f"{off}.{o}", f"{dif}.{d}")
    for off, dif in (("self_attn", "attn1"), ("cross_attn", "attn2"))
    for o, d in (
        ("q", "to_q"),
        ("k", "to_k"),
        ("v", "to_v"),
        ("o", "to_out.0"),
        ("norm_q", "norm_q"),
        ("norm_k", "norm_k"),
    )
) + (
    ("cross_attn.k_img", "attn2.add_k_proj"),
    ("cross_attn.v_img", "attn2.add_v_proj"),
    ("cross_attn.norm_k_img", "attn2.norm_added_k"),
    ("norm3", "norm2"),  # the affine LayerNorm before cross-attention
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("modulation", "scale_shift_table"),
)

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_OFFICIAL = re.compile(
    r"^(text_embedding|time_embedding|time_projection|head)\.|"
    r"^blocks\.\d+\.(self_attn|cross_attn|norm3|modulation$|ffn\.\d)"
)
_DIFFUSERS = re.compile(
    r"^(condition_embedder|proj_out)\.|^scale_shift_table$|"
    r"^blocks\.\d+\.(attn1|attn2|scale_shift_table$|ffn\.net)"
)


def _rename(name: str, table: Iterable[tuple[str, str]]) -> str | None:
    for src, dst in table:
        if name == src or name.startswith(src + "."):
            return dst + name[len(src) :]
    return None


def _comfy_prefix(keys: list[str]) -> str | None:
    for prefix in COMFY_PREFIXES:
        if sum(k.startswith(prefix) for k in keys) * 2 >= len(keys) or any(
            k.startswith(prefix + "blocks.") for k in keys
        ):
            return prefix
    return None


def describe_non_dit(keys: Iterable[str]) -> str | None:
    """If the keys are clearly another model (VAE, text encoder, CLIP vision, LoRA), say which and where it goes."""
    keys = list(keys)
    has = lambda pat: any(re.search(pat, k) for k in keys)  # noqa: E731
    if any(LORA_KEY.search(k) for k in keys):
        return "a LoRA (low-rank adapter), not a full DiT; put it in models/loras and apply it with a LoRA loader"
    if has(r"^(encoder\.)?block\.\d+\.layer\.") or has(r"^shared\.weight$") or has(r"^token_embedding\.weight$"):
        return "a text encoder (umT5); put it in models/text_encoders and load it with the text-encoder loader"
    if has(r"^(visual|vision_model|textual|log_scale)\b"):
        return "a CLIP vision encoder; put it in models/clip_vision and load it with the CLIP-vision loader"
    if has(r"^(encoder|decoder)\.") or has(r"^(post_)?quant_conv\.") or has(r"^(conv1|conv2)\.weight$"):
        return "a VAE (encoder/decoder weights); put it in models/vae and load it with the VAE loader"
    return None


def detect_layout(keys: Iterable[str], source: PathLike | None = None) -> str:
    """ "official", "comfyui" (official or diffusers names behind a ComfyUI prefix) or "diffusers"."""
    keys = list(keys)
    where = f"{source}: " if source else ""
    if not keys:
        raise CheckpointError(f"{where}the checkpoint holds no tensors")
    if any(LORA_KEY.search(k) for k in keys):
        raise CheckpointError(f"{where}this looks like {describe_non_dit(keys)}")
    if _comfy_prefix(keys):
        return "comfyui"
    n_off = sum(bool(_OFFICIAL.search(k)) for k in keys)
    n_dif = sum(bool(_DIFFUSERS.search(k)) for k in keys)
    if n_off or n_dif:
        return "diffusers" if n_dif > n_off else "official"
    what = describe_non_dit(keys)
    if what:
        raise CheckpointError(f"{where}not a Wan DiT: this looks like {what}")
    raise CheckpointError(
        f"{where}not a Wan DiT checkpoint: none of its keys look like Wan DiT weights "
        f"(patch_embedding, blocks.N.self_attn, head.head, ...); first keys: {keys[:5]}"
    )


def _diffusers_to_official_key(key: str) -> str:
    m = _BLOCK.match(key)
    if m:
        rest = _rename(m.group(2), ((d, o) for o, d in BLOCK_NAMES))
        return key if rest is None else f"blocks.{m.group(1)}.{rest}"
    return _rename(key, ((d, o) for o, d in TOP_LEVEL_NAMES)) or key


def _official_to_diffusers_key(key: str) -> str:
    m = _BLOCK.match(key)
    if m:
        rest = _rename(m.group(2), BLOCK_NAMES)
        return key if rest is None else f"blocks.{m.group(1)}.{rest}"
    return _rename(key, TOP_LEVEL_NAMES) or key


def to_official(sd: Mapping[str, torch.Tensor], source: PathLike | None = None) -> dict[str, torch.Tensor]:
    """Rename a Wan DiT state dict (official, ComfyUI-prefixed or diffusers) to the official names.

    Unknown keys are kept unchanged (they are reported as unexpected by `check_state_dict`);
    other components bundled in an all-in-one ComfyUI file (VAE, text encoder) are dropped.
    """
    layout = detect_layout(sd.keys(), source)
    out = dict(sd)
    if layout == "comfyui":
        prefix = _comfy_prefix(list(out))
        out = {
            (k[len(prefix) :] if k.startswith(prefix) else k): v
            for k, v in out.items()
            if k.startswith(prefix) or not k.startswith(_BUNDLED_PREFIXES)
        }
        layout = detect_layout(out.keys(), source)
    if layout == "diffusers":
        out = {_diffusers_to_official_key(k): v for k, v in out.items()}
    return out


def official_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Wan names -> diffusers `WanTransformer3DModel` names (the inverse of `to_official`)."""
    return {_official_to_diffusers_key(k): v for k, v in sd.items()}


# --------------------------------------------------------------------------- configs from shapes


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...] | None:
    return tuple(sd[key].shape) if key in sd else None


def _block_indices(sd: Mapping[str, torch.Tensor]) -> set[int]:
    return {int(m.group(1)) for k in sd if (m := _BLOCK.match(k))}


def shape_summary(sd: Mapping[str, torch.Tensor]) -> dict[str, int | tuple[int, ...] | None]:
    """What the shapes say (None where the key is absent): dim, num_layers, in/out/ffn/text/freq dims, patch."""
    pe, hh = _shape(sd, "patch_embedding.weight"), _shape(sd, "head.head.weight")
    mod = _shape(sd, "head.modulation")
    dim = mod[-1] if mod else (pe[0] if pe else None)
    patch = tuple(pe[2:]) if pe and len(pe) == 5 else None
    ffn, text, freq = (
        _shape(sd, k) for k in ("blocks.0.ffn.0.weight", "text_embedding.0.weight", "time_embedding.0.weight")
    )
    blocks = _block_indices(sd)
    return {
        "dim": dim,
        "num_layers": max(blocks) + 1 if blocks else None,
        "in_dim": pe[1] if pe else None,
        "out_dim": hh[0] // math.prod(patch) if hh and patch else None,
        "ffn_dim": ffn[0] if ffn else None,
        "text_dim": text[1] if text else None,
        "freq_dim": freq[1] if freq else None,
        "patch_size": patch,
    }


def _preset_summary(cfg: DiTConfig) -> dict:
    return {
        f: getattr(cfg, f)
        for f in ("dim", "num_layers", "in_dim", "out_dim", "ffn_dim", "text_dim", "freq_dim", "patch_size")
    }


def match_preset(sd: Mapping[str, torch.Tensor]) -> str | None:
    """The preset whose every expected key and shape this state dict has exactly (and nothing else), or None."""
    summary = shape_summary(sd)
    found = {k: tuple(v.shape) for k, v in sd.items()}
    for name, cfg in PRESETS.items():
        if _preset_summary(cfg) == summary and expected_shapes(cfg) == found:
            return name
    return None


def nearest_preset(sd: Mapping[str, torch.Tensor]) -> str | None:
    """The preset sharing the most shape fields with `sd` (dim counts double); None if none shares any."""
    summary = shape_summary(sd)

    def score(cfg: DiTConfig) -> int:
        ref = _preset_summary(cfg)
        return sum((2 if f == "dim" else 1) for f, v in summary.items() if v is not None and ref[f] == v)

    best = max(PRESETS, key=lambda n: score(PRESETS[n]))
    return best if score(PRESETS[best]) else None


def describe_shapes(sd: Mapping[str, torch.Tensor]) -> str:
    """A sentence for error messages: which preset the shapes match or look like."""
    s = shape_summary(sd)
    mine = f"dim {s['dim']}, {s['num_layers']} layers, in_dim {s['in_dim']}"
    exact = match_preset(sd)
    if exact:
        return f"shapes match preset {exact} ({mine})"
    near = nearest_preset(sd)
    if near is None:
        return f"shapes match no preset ({mine})"
    if _preset_summary(PRESETS[near]) == s:
        return f"sizes are those of preset {near} ({mine}) but its keys differ from that preset's"
    cfg = PRESETS[near]
    return (
        f"shapes look like {near} (dim {cfg.dim}, {cfg.num_layers} layers, in_dim {cfg.in_dim}); this file has {mine}"
    )


def _heads_for(dim: int, summary: dict, num_heads: int | None) -> int:
    if num_heads:
        return num_heads
    same = [c for c in PRESETS.values() if _preset_summary(c) == summary] or [
        c for c in PRESETS.values() if c.dim == dim
    ]
    if same:
        return same[0].num_heads
    if dim >= 1024 and dim % 128 == 0:
        return dim // 128  # every released Wan size uses 128-wide heads
    raise CheckpointError(
        f"cannot infer the number of attention heads for dim {dim} from shapes; pass a preset "
        f"name or a DiTConfig as config (presets: {sorted(PRESETS)})"
    )


def infer_config(
    sd: Mapping[str, torch.Tensor], num_heads: int | None = None, source: PathLike | None = None
) -> DiTConfig:
    """A `DiTConfig` from an official-layout state dict's shapes (heads: argument, matching preset, or dim/128)."""
    s = shape_summary(sd)
    absent = [f for f, v in s.items() if v is None]
    if absent:
        where = f"{source}: " if source else ""
        raise CheckpointError(
            f"{where}cannot infer the DiT size, the shapes of {absent} are missing (keys "
            f"head.modulation, patch_embedding.weight, head.head.weight, blocks.0.ffn.0.weight, "
            f"text_embedding.0.weight, time_embedding.0.weight); is this a complete Wan DiT file? "
            f"{describe_shapes(sd)}"
        )
    heads = _heads_for(s["dim"], s, num_heads)
    exact = match_preset(sd)
    base = PRESETS[exact] if exact else None
    return DiTConfig(
        dim=s["dim"],
        ffn_dim=s["ffn_dim"],
        num_heads=heads,
        num_layers=s["num_layers"],
        in_dim=s["in_dim"],
        out_dim=s["out_dim"],
        text_dim=s["text_dim"],
        freq_dim=s["freq_dim"],
        patch_size=s["patch_size"],
        qk_norm="blocks.0.self_attn.norm_q.weight" in sd,
        cross_attn_norm="blocks.0.norm3.weight" in sd,
        text_len=base.text_len if base else 512,
        eps=base.eps if base else 1e-6,
        name=exact or "custom",
    )


# --------------------------------------------------------------------------- validation and loading


@lru_cache(maxsize=16)
def expected_shapes(config: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of `WanModel(config).state_dict()`, built on the meta device (no memory used)."""
    with torch.device("meta"):
        model = WanModel(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state_dict(sd: Mapping[str, torch.Tensor], config: DiTConfig, path: PathLike | None = None) -> None:
    """Raise a CheckpointError naming missing, unexpected and mis-shaped keys for `WanModel(config)`."""
    check_keys(
        sd,
        expected_shapes(config),
        f"{path or 'checkpoint'}: does not fit the DiT config {config.name!r} (dim {config.dim}, "
        f"{config.num_layers} layers, in_dim {config.in_dim}):",
        "Pick the preset that matches the file (or leave the config on auto), or pick the DiT file that "
        "matches the preset; VAE, text-encoder and LoRA files do not go in the DiT loader.",
        details=[f"The file's {describe_shapes(sd)}."],
    )


def resolve_config(
    config: DiTConfig | str | None, sd: Mapping[str, torch.Tensor], source: PathLike | None = None
) -> DiTConfig:
    """None: infer from shapes; a preset name: that preset; a DiTConfig: itself."""
    if config is None:
        return infer_config(sd, source=source)
    if isinstance(config, str):
        try:
            return get_preset(config)
        except KeyError as e:
            raise CheckpointError(f"{source or 'checkpoint'}: {e.args[0]}") from None
    return config


def load_dit(
    path: PathLike | Sequence[PathLike],
    *,
    config: DiTConfig | str | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
):
    """Load a Wan DiT from safetensors into a `WanModel` in eval mode.

    `config`: None infers it from the shapes, or a preset name / DiTConfig (then validated).
    `dtype`: None keeps the stored dtypes (fp8 stays fp8 and is upcast per layer at compute
    time); otherwise each tensor is converted while it is read (see `cast_tensor`).
    The model is built on the meta device and takes the loaded tensors (`assign=True`).
    """
    sd = read_safetensors(path, dtype=dtype, device=device)
    sd = fold_fp8_scales(to_official(sd, source=path), dtype)
    refuse_non_float(sd, path, "pick the Wan DiT file itself")
    cfg = resolve_config(config, sd, path)
    check_state_dict(sd, cfg, path)
    with torch.device("meta"):
        model = WanModel(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    del sd
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{path}: WanModel kept tensors on the meta device after loading: {left[:5]}")
    return model.eval()


# keep every prompt within the tiny text encoder's 64 tokens)
DIT_CONFIG_KEY = "planx_dit_config"  # metadata of a DiT file that carries its DiTConfig


def save_dit(model: WanModel, path: Path) -> None:
    """A DiT's weights with its config in the metadata (so the file loads without a bundle)."""
    save_module(model.state_dict(), path, key=DIT_CONFIG_KEY, config=asdict(model.config))


def dit_config_from(raw: dict) -> DiTConfig:
    """A `DiTConfig` from its JSON form (the patch size comes back as a list)."""
    return DiTConfig(**{**raw, "patch_size": tuple(raw.get("patch_size", (1, 2, 2)))})


def load_dit_file(path: Path) -> WanModel:
    """A DiT written by `save_dit`; refuses a file without the config or with other weights."""
    return load_module(
        path,
        key=DIT_CONFIG_KEY,
        build=lambda raw: WanModel(dit_config_from(raw)),
        what="a SemanticGen DiT file",
        fix="re-export it with save_dit",
    )


def comfyui_unet_config(cfg: DiTConfig) -> dict:
    """ComfyUI's Wan unet config (`comfy.ldm.wan.model.WanModel` arguments) of a DiT config: a plain dict, no
    ComfyUI import; the pack's loader and the benchmarks build ComfyUI's own class from it."""
    return {
        "image_model": "wan2.1",
        "model_type": "t2v",
        "dim": cfg.dim,
        "ffn_dim": cfg.ffn_dim,
        "num_heads": cfg.num_heads,
        "num_layers": cfg.num_layers,
        "in_dim": cfg.in_dim,
        "out_dim": cfg.out_dim,
        "freq_dim": cfg.freq_dim,
        "text_dim": cfg.text_dim,
        "text_len": cfg.text_len,
        "patch_size": tuple(cfg.patch_size),
        "window_size": (-1, -1),
        "qk_norm": cfg.qk_norm,
        "cross_attn_norm": cfg.cross_attn_norm,
        "eps": cfg.eps,
    }
