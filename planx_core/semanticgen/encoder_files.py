"""Files of the semantic encoder: the Qwen2.5-VL vision tower from a released checkpoint or our own file.

A released Qwen2.5-VL folder (config.json + safetensors shards, keys `visual.*` or transformers'
`model.visual.*`), a shard index, one safetensors file, or a file written by
`save_semantic_encoder` (keys `visual.*`, the vision config in its metadata). Only the tower's keys
are read, and nothing is ever unpickled."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from ..files.modules import config_in_metadata, file_metadata, save_module
from ..files.safetensors import CheckpointError, PathLike, check_keys, check_safetensors_header, weight_files
from .encoder import (
    _FIX_FOLDER,
    ARCH_FIELDS,
    CLIP_MEAN,
    CLIP_STD,
    CONFIG_KEY,
    VISUAL_PREFIXES,
    SemanticEncoder,
    vision_arch,
    vision_config,
)


def save_semantic_encoder(encoder: SemanticEncoder, path: PathLike) -> None:
    """Write the tower as safetensors (keys `visual.*`) with its vision config in the metadata."""
    save_module(encoder.state_dict(), path, key=CONFIG_KEY, config=vision_arch(encoder.config))


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of `SemanticEncoder(config).state_dict()`, built on the meta device."""
    with torch.device("meta"):
        encoder = SemanticEncoder(config, attn="eager")
    return {k: tuple(v.shape) for k, v in encoder.state_dict().items()}


def _config_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: cannot read it as JSON ({err}); re-download the checkpoint's config.json"
        ) from None


def _config_from_json(data: Mapping, source: Path):
    """The vision config of a Qwen2.5-VL config.json, refusing other models."""
    if not isinstance(data, Mapping):
        raise CheckpointError(
            f"{source}: not a model config (a JSON {type(data).__name__}, not an object); {_FIX_FOLDER}"
        )
    kind = data.get("model_type")
    if kind == "qwen2_vl":
        raise CheckpointError(
            f"{source}: this is a Qwen2-VL checkpoint; SemanticGen's encoder is the Qwen2.5-VL "
            f"vision tower (RMSNorm, window attention, SwiGLU), a different architecture: use "
            f"Qwen2.5-VL, e.g. Qwen/Qwen2.5-VL-3B-Instruct"
        )
    if kind != "qwen2_5_vl" or not isinstance(data.get("vision_config"), Mapping):
        raise CheckpointError(
            f"{source}: not a Qwen2.5-VL checkpoint (model_type {kind!r}, "
            f"{'with' if 'vision_config' in data else 'no'} vision_config); {_FIX_FOLDER}"
        )
    return _checked_config(dict(data["vision_config"]), source)


def _checked_config(fields: dict, source: Path):
    try:
        return vision_config(**fields)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: unusable Qwen2.5-VL vision config ({err}); {_FIX_FOLDER}") from None


def _config_from_metadata(meta: Mapping[str, str], source: Path):
    fields = config_in_metadata(meta, CONFIG_KEY, source, "re-save the file with save_semantic_encoder")
    unknown = sorted(set(fields) - set(ARCH_FIELDS))
    if unknown:
        raise CheckpointError(
            f"{source}: unknown semantic-encoder config fields {unknown}; the file was written by a "
            f"newer Plan-X, update Plan-X"
        )
    return _checked_config(fields, source)


def _index_shards(index: Path) -> list[Path]:
    """The shards of an `.index.json` that hold vision-tower keys."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index}: not a valid shard index (needs a JSON 'weight_map'): {err}") from None
    names = sorted({f for k, f in weight_map.items() if k.startswith(VISUAL_PREFIXES)})
    if not names:
        raise CheckpointError(
            f"{index}: the index lists no vision-tower keys (visual.* or model.visual.*); this is "
            f"not a Qwen2.5-VL checkpoint; {_FIX_FOLDER}"
        )
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise CheckpointError(
            f"{index}: the vision tower is in shard(s) {missing} which are not in {index.parent}; "
            f"download all shards next to the index"
        )
    return [index.parent / n for n in names]


def _folder_files(folder: Path) -> list[Path]:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise CheckpointError(
            f"{folder}: several shard indexes ({[i.name for i in indexes]}); keep one checkpoint per folder"
        )
    if indexes:
        return _index_shards(indexes[0])
    files = weight_files(folder)
    if not files:
        others = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise CheckpointError(
            f"{folder}: no .safetensors files{f' (found {others[:3]})' if others else ''}; Plan-X "
            f"reads safetensors only, never pickles: download the safetensors release"
        )
    return files


def locate(path: PathLike):
    """(safetensors files holding the tower, vision config) for a folder, a shard index or one file."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: no config.json in this folder; {_FIX_FOLDER}")
        return _folder_files(path), _config_from_json(_config_json(path / "config.json"), path / "config.json")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or folder; {_FIX_FOLDER}")
    if path.name.endswith(".index.json"):
        config_path = path.parent / "config.json"
        return _index_shards(path), _config_from_json(_config_json(config_path), config_path)
    meta = file_metadata(path)
    if CONFIG_KEY in meta:
        return [path], _config_from_metadata(meta, path)
    if (path.parent / "config.json").is_file():
        return [path], _config_from_json(_config_json(path.parent / "config.json"), path.parent / "config.json")
    raise CheckpointError(
        f"{path}: no Qwen2.5-VL vision config (neither '{CONFIG_KEY}' metadata nor a config.json "
        f"beside it); {_FIX_FOLDER}"
    )


def _visual_name(key: str) -> str | None:
    """`visual.x` / `model.visual.x` -> `visual.x`; None for other keys."""
    for prefix in VISUAL_PREFIXES:
        if key.startswith(prefix):
            return "visual." + key[len(prefix) :]
    return None


def read_visual(
    files: list[Path], dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The vision-tower tensors of some safetensors files, named `visual.*`; other keys are never read."""
    out: dict[str, torch.Tensor] = {}
    for file in files:
        header = check_safetensors_header(file)
        wanted = {k: name for k in header if k != "__metadata__" and (name := _visual_name(k))}
        for key, tensor in _read_keys(file, list(wanted)).items():
            name = wanted[key]
            if name in out:
                raise CheckpointError(
                    f"{file}: {key!r} duplicates a vision-tower key already read (both visual.* and "
                    f"model.visual.*, or overlapping shards); keep one copy of the tower"
                )
            cast = dtype is not None and tensor.is_floating_point()
            out[name] = (tensor.to(dtype) if cast else tensor).to(device)
    return out


def _read_keys(file: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:  # memory-mapped
            return {k: f.get_tensor(k) for k in keys}
    except Exception as err:  # safetensors' own error types
        raise CheckpointError(
            f"{file}: safetensors could not read it ({err}); the file is corrupted or truncated, "
            f"re-download or re-copy it"
        ) from err


def load_semantic_encoder(
    path: PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu", attn: str = "sdpa"
) -> SemanticEncoder:
    """A `SemanticEncoder` from a Qwen2.5-VL checkpoint (folder, index or file), frozen, in eval mode.

    `dtype`: None keeps the stored dtype (bfloat16 for the released Qwen2.5-VL). Only the keys
    under `visual.` / `model.visual.` are read; they must be exactly the tower's keys and shapes.
    """
    files, config = locate(path)
    sd = read_visual(files, dtype, device)
    if not sd:
        raise CheckpointError(
            f"{path}: holds no vision-tower weights (keys visual.* or model.visual.*); it is not a "
            f"Qwen2.5-VL checkpoint, or the shards with the tower are missing; {_FIX_FOLDER}"
        )
    check_keys(
        sd,
        expected_shapes(config),
        f"{path}: the vision-tower weights do not fit its Qwen2.5-VL vision config ({config.depth} blocks of "
        f"{config.hidden_size}, merger to {config.out_hidden_size}):",
        f"The checkpoint is damaged or mixes models; re-download it, or {_FIX_FOLDER}.",
    )
    with torch.device("meta"):
        encoder = SemanticEncoder(config, attn=attn)
    encoder.load_state_dict(sd, strict=True, assign=True)
    _materialise(encoder, device)
    return encoder.requires_grad_(False).eval()


def _materialise(encoder: SemanticEncoder, device) -> None:
    """Rebuild the non-persistent buffers (rotary frequencies, CLIP mean/std) left on the meta device."""
    from ..planner.decode import vision_rotary  # the one place of transformers version shims

    rotary = type(encoder.visual.rotary_pos_emb)
    with torch.device(device):
        encoder.visual.rotary_pos_emb = vision_rotary(rotary, encoder.config)
    encoder.mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    encoder.std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    left = [n for n, t in (*encoder.named_parameters(), *encoder.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(
            f"semantic encoder kept tensors on the meta device after loading: {left[:5]}; this "
            f"transformers version adds state the loader does not know, report it with its version"
        )
