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

import json
import math
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .configs import PRESETS, DiTConfig, get_preset
from .dit import WanModel

PathLike = str | os.PathLike
FLOAT8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                                  "float8_e5m2fnuz") if hasattr(torch, n))
_MAX_HEADER = 100_000_000  # safetensors' own upper bound on the JSON header
_CONVERT_HINT = ("convert it to .safetensors first (for example with a one-off script that loads it in a trusted "
                 "environment and calls safetensors.torch.save_file); Plan-X never unpickles weights at run time")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded; the message names the file and the fix."""


# --------------------------------------------------------------------------- reading files

def _sniff_format(head: bytes) -> str | None:
    """Name a known non-safetensors format from a file's first 9 bytes. A safetensors file is an
    8-byte length and then its JSON header, so byte 8 is "{"; its length can start with 0x80 0x02
    (a 640-byte header) like a pickle does, so the "{" decides."""
    if head[8:9] == b"{":
        return None
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch zip/pickle checkpoint (torch.save)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (legacy torch.save)"
    if head.startswith(b"GGUF"):
        return "a GGUF file"
    return None


def check_safetensors_header(path: PathLike) -> dict:
    """Validate the 8-byte header length, the JSON header and the data size; return the header."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
        kind = _sniff_format(head)
        head = head[:8]
        if kind:
            raise CheckpointError(f"{path}: this is {kind}, not safetensors; {_CONVERT_HINT}")
        if len(head) < 8:
            raise CheckpointError(f"{path}: only {size} bytes, too small for a safetensors file; it looks truncated or "
                                  f"empty, re-download or re-copy it")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > _MAX_HEADER:
            raise CheckpointError(f"{path}: not a valid safetensors file (header length {n} is impossible); it is "
                                  f"corrupted or truncated, or another format: re-download/re-copy it, or "
                                  f"{_CONVERT_HINT}")
        if 8 + n > size:
            raise CheckpointError(f"{path}: safetensors header wants {n} bytes but the file has only {size}; it looks "
                                  f"truncated (incomplete download or copy), re-download or re-copy it")
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({e}); the file is corrupted or not "
                              f"safetensors, re-download it or {_CONVERT_HINT}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object; the file is corrupted")
    need = 8 + n + _data_end(header, path)
    if need > size:
        raise CheckpointError(f"{path}: the safetensors header describes {need} bytes but the file has only {size}; "
                              f"it looks truncated (incomplete download or copy), re-download or re-copy it")
    return header


def _data_end(header: dict, path: Path) -> int:
    try:
        return max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError, ValueError):
        raise CheckpointError(f"{path}: safetensors header has malformed tensor entries; the file is corrupted, "
                              f"re-download or re-copy it") from None


def _read_one(path: Path, cast) -> dict[str, torch.Tensor]:
    check_safetensors_header(path)
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:  # memory-mapped
            keys = list(f.keys())
            lookup = set(keys)
            for key in keys:
                out[key] = cast(key, f.get_tensor(key), lookup)
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError / OSError types
        raise CheckpointError(f"{path}: safetensors could not read it ({e}); the file is corrupted or truncated, "
                              f"re-download or re-copy it") from e
    return out


def _shards_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: not a valid shard index (needs a JSON 'weight_map'): {e}") from None
    shards = [index.parent / name for name in sorted(set(weight_map.values()))]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise CheckpointError(f"{index}: lists shard(s) that are not in {index.parent}: {missing[:5]}; "
                              f"download all shards next to the index")
    return shards


def resolve_shards(path: PathLike | Sequence[PathLike]) -> list[Path]:
    """The safetensors files behind a file, an `.index.json`, a folder of shards, or a list of files."""
    if isinstance(path, (list, tuple)):
        return [Path(p) for p in path]
    path = Path(path)
    if path.is_file():
        return _shards_from_index(path) if path.name.endswith(".index.json") else [path]
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such file or folder")
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise CheckpointError(f"{path}: several shard indexes ({[i.name for i in indexes]}); pass the one to load")
    if indexes:
        return _shards_from_index(indexes[0])
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    if (path / "transformer").is_dir():  # a diffusers pipeline folder
        return resolve_shards(path / "transformer")
    others = sorted(p.name for p in path.iterdir() if p.suffix in (".pth", ".pt", ".ckpt", ".bin", ".gguf"))
    hint = f" (found {others[:3]}: {_CONVERT_HINT})" if others else ""
    raise CheckpointError(f"{path}: no .safetensors files in this folder{hint}")


def read_safetensors(path: PathLike | Sequence[PathLike], *, dtype: torch.dtype | None = None,
                     device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read one safetensors file, a shard index, a folder of shards or a list of shards into one dict.

    Files are memory-mapped; with `dtype`, each tensor is converted as it is read (see
    `cast_tensor`), so a converted model never sits in memory twice. Duplicate keys are refused.
    """
    shards = resolve_shards(path)
    if not shards:
        raise CheckpointError(f"{path}: empty list of checkpoint files")
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}

    def cast(key: str, t: torch.Tensor, keys: set[str]) -> torch.Tensor:
        if _scale_key(key) in keys:  # scaled fp8 weight: its scale is folded in later
            return t.to(device)
        return cast_tensor(key, t, dtype).to(device)

    for shard in shards:
        for key, tensor in _read_one(shard, cast).items():
            if key in out:
                raise CheckpointError(f"{shard}: key {key!r} is also in {origin[key]}; the shards overlap, so they do "
                                      f"not belong to one checkpoint; pass only the shards of one model")
            out[key], origin[key] = tensor, shard
    return out


def cast_tensor(key: str, t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Convert one stored tensor to `dtype` (None keeps it).

    Non-float tensors are untouched. For a float8 target only matrix/conv weights (`*.weight`,
    2 or more dims) become float8, clamped to the format's range; biases, norms and modulation
    keep their stored dtype (they are a tiny share of the weights and lose the most in float8).
    """
    if dtype is None or not t.is_floating_point() or t.dtype == dtype:
        return t
    if dtype in FLOAT8_DTYPES:
        if not (key.endswith(".weight") and t.ndim >= 2):
            return t
        lim = torch.finfo(dtype).max
        return t.clamp(-lim, lim).to(dtype)
    return t.to(dtype)


def _scale_key(key: str) -> str:
    return key[: -len("weight")] + "scale_weight" if key.endswith(".weight") else "\0"


def fold_fp8_scales(sd: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Dequantise ComfyUI "fp8_scaled" files (`X.weight` float8 plus scalar `X.scale_weight`).

    The scaled weight is `weight * scale_weight`; it is stored in `dtype`, or bfloat16 when
    `dtype` is None or float8 (a scaled weight need not fit float8's range). The `scaled_fp8`
    marker and `scale_input` entries are dropped; other files pass through unchanged.
    """
    for k in [k for k in sd if k.rsplit(".", 1)[-1] == "scaled_fp8" or k.endswith(".scale_input")]:
        del sd[k]
    scales = [k for k in sd if k.endswith(".scale_weight")]
    target = torch.bfloat16 if dtype is None or dtype in FLOAT8_DTYPES else dtype
    for sk in scales:
        wk = sk[: -len("scale_weight")] + "weight"
        scale = sd.pop(sk)
        if wk in sd:
            sd[wk] = (sd[wk].float() * scale.float()).to(target)
    return sd


def save_safetensors(sd: Mapping[str, torch.Tensor], path: PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Save a state dict as safetensors: contiguous CPU tensors, no shared storage, string metadata."""
    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        t = t.detach().to("cpu").contiguous()
        sid = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        out[key] = t.clone() if sid in seen and t.numel() else t
        seen.add(sid)
    meta = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata=meta)


# --------------------------------------------------------------------------- key layouts

COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
# Other components that an all-in-one ComfyUI checkpoint may bundle next to the DiT.
_BUNDLED_PREFIXES = ("first_stage_model.", "cond_stage_model.", "conditioner.", "vae.", "text_encoders.",
                     "clip_vision.", "model_ema.")

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
    for o, d in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"), ("norm_q", "norm_q"),
                 ("norm_k", "norm_k"))
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
_OFFICIAL = re.compile(r"^(text_embedding|time_embedding|time_projection|head)\.|"
                       r"^blocks\.\d+\.(self_attn|cross_attn|norm3|modulation$|ffn\.\d)")
_DIFFUSERS = re.compile(r"^(condition_embedder|proj_out)\.|^scale_shift_table$|"
                        r"^blocks\.\d+\.(attn1|attn2|scale_shift_table$|ffn\.net)")
LORA_KEY = re.compile(r"lora_(a|b|up|down)\b|^lora_(unet|te)|\.alpha$|\.diff(_b)?$", re.IGNORECASE)


def _rename(name: str, table: Iterable[tuple[str, str]]) -> str | None:
    for src, dst in table:
        if name == src or name.startswith(src + "."):
            return dst + name[len(src):]
    return None


def _comfy_prefix(keys: list[str]) -> str | None:
    for prefix in COMFY_PREFIXES:
        if sum(k.startswith(prefix) for k in keys) * 2 >= len(keys) or any(
                k.startswith(prefix + "blocks.") for k in keys):
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
    """"official", "comfyui" (official or diffusers names behind a ComfyUI prefix) or "diffusers"."""
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
    raise CheckpointError(f"{where}not a Wan DiT checkpoint: none of its keys look like Wan DiT weights "
                          f"(patch_embedding, blocks.N.self_attn, head.head, ...); first keys: {keys[:5]}")


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
        out = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in out.items()
               if k.startswith(prefix) or not k.startswith(_BUNDLED_PREFIXES)}
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
    ffn, text, freq = (_shape(sd, k) for k in ("blocks.0.ffn.0.weight", "text_embedding.0.weight",
                                                 "time_embedding.0.weight"))
    blocks = _block_indices(sd)
    return {"dim": dim, "num_layers": max(blocks) + 1 if blocks else None, "in_dim": pe[1] if pe else None,
            "out_dim": hh[0] // math.prod(patch) if hh and patch else None, "ffn_dim": ffn[0] if ffn else None,
            "text_dim": text[1] if text else None, "freq_dim": freq[1] if freq else None, "patch_size": patch}


def _preset_summary(cfg: DiTConfig) -> dict:
    return {f: getattr(cfg, f) for f in ("dim", "num_layers", "in_dim", "out_dim", "ffn_dim", "text_dim", "freq_dim",
                                         "patch_size")}


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
    return (f"shapes look like {near} (dim {cfg.dim}, {cfg.num_layers} layers, in_dim {cfg.in_dim}); "
            f"this file has {mine}")


def _heads_for(dim: int, summary: dict, num_heads: int | None) -> int:
    if num_heads:
        return num_heads
    same = [c for c in PRESETS.values() if _preset_summary(c) == summary] or \
           [c for c in PRESETS.values() if c.dim == dim]
    if same:
        return same[0].num_heads
    if dim >= 1024 and dim % 128 == 0:
        return dim // 128  # every released Wan size uses 128-wide heads
    raise CheckpointError(f"cannot infer the number of attention heads for dim {dim} from shapes; pass a preset "
                          f"name or a DiTConfig as config (presets: {sorted(PRESETS)})")


def infer_config(sd: Mapping[str, torch.Tensor], num_heads: int | None = None,
                 source: PathLike | None = None) -> DiTConfig:
    """A `DiTConfig` from an official-layout state dict's shapes (heads: argument, matching preset, or dim/128)."""
    s = shape_summary(sd)
    absent = [f for f, v in s.items() if v is None]
    if absent:
        where = f"{source}: " if source else ""
        raise CheckpointError(f"{where}cannot infer the DiT size, the shapes of {absent} are missing (keys "
                              f"head.modulation, patch_embedding.weight, head.head.weight, blocks.0.ffn.0.weight, "
                              f"text_embedding.0.weight, time_embedding.0.weight); is this a complete Wan DiT file? "
                              f"{describe_shapes(sd)}")
    heads = _heads_for(s["dim"], s, num_heads)
    exact = match_preset(sd)
    base = PRESETS[exact] if exact else None
    return DiTConfig(dim=s["dim"], ffn_dim=s["ffn_dim"], num_heads=heads, num_layers=s["num_layers"],
                     in_dim=s["in_dim"], out_dim=s["out_dim"], text_dim=s["text_dim"], freq_dim=s["freq_dim"],
                     patch_size=s["patch_size"], qk_norm="blocks.0.self_attn.norm_q.weight" in sd,
                     cross_attn_norm="blocks.0.norm3.weight" in sd,
                     text_len=base.text_len if base else 512, eps=base.eps if base else 1e-6,
                     name=exact or "custom")


# --------------------------------------------------------------------------- validation and loading

@lru_cache(maxsize=16)
def expected_shapes(config: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of `WanModel(config).state_dict()`, built on the meta device (no memory used)."""
    with torch.device("meta"):
        model = WanModel(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _natural(key: str) -> list:
    """Sort key putting blocks.2 before blocks.10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def _listing(title: str, items: list[str]) -> str:
    more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
    return f"  {len(items)} {title}: " + ", ".join(items[:5]) + more


def check_keys(sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], header: str,
               fix: str, details: list[str] = ()) -> None:
    """Raise a CheckpointError listing missing, unexpected and mis-shaped keys of `sd` against
    `expected` (key -> shape): `header`, any `details` lines, the key lists, then `fix`."""
    missing = sorted((k for k in expected if k not in sd), key=_natural)
    unexpected = sorted((k for k in sd if k not in expected), key=_natural)
    wrong = [f"{k} (expected {list(expected[k])}, found {list(sd[k].shape)})" for k in sorted(sd, key=_natural)
             if k in expected and tuple(sd[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return
    lines = [header, *(f"  {d}" for d in details)]
    lines += [_listing(t, items) for t, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                                   ("mis-shaped keys", wrong)) if items]
    lines.append(f"  {fix}")
    raise CheckpointError("\n".join(lines))


def check_state_dict(sd: Mapping[str, torch.Tensor], config: DiTConfig, path: PathLike | None = None) -> None:
    """Raise a CheckpointError naming missing, unexpected and mis-shaped keys for `WanModel(config)`."""
    check_keys(sd, expected_shapes(config),
               f"{path or 'checkpoint'}: does not fit the DiT config {config.name!r} (dim {config.dim}, "
               f"{config.num_layers} layers, in_dim {config.in_dim}):",
               "Pick the preset that matches the file (or leave the config on auto), or pick the DiT file that "
               "matches the preset; VAE, text-encoder and LoRA files do not go in the DiT loader.",
               details=[f"The file's {describe_shapes(sd)}."])


def resolve_config(config: DiTConfig | str | None, sd: Mapping[str, torch.Tensor],
                   source: PathLike | None = None) -> DiTConfig:
    """None: infer from shapes; a preset name: that preset; a DiTConfig: itself."""
    if config is None:
        return infer_config(sd, source=source)
    if isinstance(config, str):
        try:
            return get_preset(config)
        except KeyError as e:
            raise CheckpointError(f"{source or 'checkpoint'}: {e.args[0]}") from None
    return config


def load_dit(path: PathLike | Sequence[PathLike], *, config: DiTConfig | str | None = None,
             dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """Load a Wan DiT from safetensors into a `WanModel` in eval mode.

    `config`: None infers it from the shapes, or a preset name / DiTConfig (then validated).
    `dtype`: None keeps the stored dtypes (fp8 stays fp8 and is upcast per layer at compute
    time); otherwise each tensor is converted while it is read (see `cast_tensor`).
    The model is built on the meta device and takes the loaded tensors (`assign=True`).
    """
    sd = read_safetensors(path, dtype=dtype, device=device)
    sd = fold_fp8_scales(to_official(sd, source=path), dtype)
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
