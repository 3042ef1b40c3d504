"""Safetensors files, independent of any model: checked headers, shards, casting, fp8 folding, writing.

Nothing is ever unpickled. `check_safetensors_header` reads and checks the 8-byte length, the
JSON header and the data size before anything is mapped, and names the file and the fix (a
pickle, GGUF, a truncated download); `read_safetensors` reads one file, an `.index.json`, a
folder of shards or a list of them, casting each tensor while it is read; `fold_fp8_scales`
dequantises ComfyUI's fp8_scaled files; `save_safetensors` writes contiguous CPU tensors with
string metadata; `check_keys` names missing, unexpected and mis-shaped keys. `CheckpointError` is
the one error type of every model-file boundary. Format reference: huggingface/safetensors.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .jsontext import parse_json
from .paths import within

PathLike = str | os.PathLike
FLOAT8_DTYPES = tuple(
    getattr(torch, n)
    for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, n)
)
_MAX_HEADER = 100_000_000  # safetensors' own upper bound on the JSON header
_CONVERT_HINT = (
    "convert it to .safetensors first (for example with a one-off script that loads it in a trusted "
    "environment and calls safetensors.torch.save_file); Plan-X never unpickles weights at run time"
)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded; the message names the file and the fix."""


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
    """Validate the 8-byte header length, the JSON header, every tensor entry and the data size; return the
    header. Only regular files are opened (a FIFO or a device would block or stream forever)."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read it ({err.strerror or err}); check the path") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise CheckpointError(f"{path}: {kind}, not a safetensors file; pass the .safetensors file itself")
    size = info.st_size
    with open(path, "rb") as f:
        head = f.read(9)
        kind = _sniff_format(head)
        head = head[:8]
        if kind:
            raise CheckpointError(f"{path}: this is {kind}, not safetensors; {_CONVERT_HINT}")
        if len(head) < 8:
            raise CheckpointError(
                f"{path}: only {size} bytes, too small for a safetensors file; it looks truncated or "
                f"empty, re-download or re-copy it"
            )
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > _MAX_HEADER:
            raise CheckpointError(
                f"{path}: not a valid safetensors file (header length {n} is impossible); it is "
                f"corrupted or truncated, or another format: re-download/re-copy it, or "
                f"{_CONVERT_HINT}"
            )
        if 8 + n > size:
            raise CheckpointError(
                f"{path}: safetensors header wants {n} bytes but the file has only {size}; it looks "
                f"truncated (incomplete download or copy), re-download or re-copy it"
            )
        f.seek(8)
        raw = f.read(n)
    fix = f"the file is corrupted or not safetensors, re-download it or {_CONVERT_HINT}"
    header = parse_json(raw, f"{path}: the safetensors header", CheckpointError, fix)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object; the file is corrupted")
    need = 8 + n + _data_end(header, path)
    if need > size:
        raise CheckpointError(
            f"{path}: the safetensors header describes {need} bytes but the file has only {size}; "
            f"it looks truncated (incomplete download or copy), re-download or re-copy it"
        )
    return header


def _entry_ok(entry) -> bool:
    """A tensor entry: a dtype name, a shape of non-negative ints, two ordered non-negative int offsets."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    ints = lambda v: isinstance(v, list) and all(type(x) is int and 0 <= x < 2**62 for x in v)  # noqa: E731
    return ints(shape) and len(shape) <= 16 and ints(offsets) and len(offsets) == 2 and offsets[0] <= offsets[1]


def _data_end(header: dict, path: Path) -> int:
    meta = header.get("__metadata__", {})
    bad = [k for k, v in header.items() if k != "__metadata__" and not _entry_ok(v)]
    if bad or not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        what = f"tensor entries {bad[:3]}" if bad else "metadata (it must map strings to strings)"
        raise CheckpointError(
            f"{path}: safetensors header has malformed {what}; the file is corrupted, re-download or re-copy it"
        )
    return max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)


def _float8_bad(t: torch.Tensor) -> torch.Tensor:
    """NaN / infinity bit patterns of a float8 tensor (e4m3fn: S.1111.111; e5m2: exponent all ones)."""
    bits = t.view(torch.uint8)
    if t.dtype in (torch.float8_e5m2, getattr(torch, "float8_e5m2fnuz", None)):
        return (bits & 0x7C) == 0x7C
    return (bits & 0x7F) == 0x7F


def check_finite(key: str, t: torch.Tensor, path) -> None:
    """Refuse a weight holding NaN or infinity, naming it: such a model renders black frames and exits 0."""
    if not t.is_floating_point() or t.numel() == 0:
        return
    bad = _float8_bad(t) if t.dtype in FLOAT8_DTYPES else ~torch.isfinite(t)
    if bool(bad.any()):
        count = int(bad.sum())
        raise CheckpointError(
            f"{path}: the weight {key!r} holds {count} NaN or infinite value{'s' * (count != 1)}; the file is "
            f"damaged (or was saved from a diverged training run): re-download it or export it again"
        )


FLOAT_DTYPE_NAMES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}  # safetensors' names of float dtypes


def check_float_weights(header: Mapping, keys, path, fix: str) -> None:
    """Refuse integer or boolean tensors where a model holds floating-point weights (the header alone)."""
    bad = [k for k in keys if k in header and header[k].get("dtype") not in FLOAT_DTYPE_NAMES]
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} weight(s) are stored as {header[bad[0]]['dtype']}, not as floating-point numbers "
            f"({bad[:3]}); the file is damaged or is not this model's; {fix}"
        )


def refuse_non_float(sd: Mapping[str, torch.Tensor], path, fix: str) -> None:
    """Refuse integer or boolean tensors in a state dict of a model whose weights are all floating point."""
    bad = [k for k, t in sd.items() if not t.is_floating_point()]
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} weight(s) are stored as {sd[bad[0]].dtype}, not as floating-point numbers "
            f"({bad[:3]}); the file is damaged or is not this model's; {fix}"
        )


def _read_one(path: Path, cast) -> dict[str, torch.Tensor]:
    check_safetensors_header(path)
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:  # memory-mapped
            keys = list(f.keys())
            lookup = set(keys)
            for key in keys:
                tensor = f.get_tensor(key)
                check_finite(key, tensor, path)
                out[key] = cast(key, tensor, lookup)
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError / OSError types
        raise CheckpointError(
            f"{path}: safetensors could not read it ({e}); the file is corrupted or truncated, "
            f"re-download or re-copy it"
        ) from e
    return out


def inside(folder: Path, name: str, source: Path, what: str) -> Path:
    """`folder / name`, refused (CheckpointError) when its real path leaves `folder` (.., an absolute path, a
    symlink pointing out): a model folder only ever loads its own files."""
    path = within(folder, name)
    if path is None:
        raise CheckpointError(
            f"{source}: {what} {name!r} is outside {folder} (it resolves to {(folder / name).resolve()}); a model "
            f"folder may only name "
            f"its own files: move the file into the folder, or fix the name"
        )
    return path


def _shards_from_index(index: Path) -> list[Path]:
    fix = "re-download the index with its shards"
    try:
        raw = index.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{index}: cannot read the shard index ({err.strerror or err})") from None
    data = parse_json(raw, f"{index}: the shard index", CheckpointError, fix)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: not a valid shard index (needs a 'weight_map' of tensor -> file); {fix}")
    shards = [inside(index.parent, name, index, "a shard") for name in sorted(set(weight_map.values()))]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise CheckpointError(
            f"{index}: lists shard(s) that are not in {index.parent}: {missing[:5]}; "
            f"download all shards next to the index"
        )
    return shards


def resolve_shards(path: PathLike | Sequence[PathLike]) -> list[Path]:
    """The safetensors files behind a file, an `.index.json`, a folder of shards, or a list of files."""
    if isinstance(path, (list, tuple)):
        return [Path(p) for p in path]
    path = Path(path)
    if path.is_file():
        return _shards_from_index(path) if path.name.endswith(".index.json") else [path]
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: not a regular file (a FIFO, a socket or a device); pass the .safetensors file")
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such file or folder")
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise CheckpointError(f"{path}: several shard indexes ({[i.name for i in indexes]}); pass the one to load")
    if indexes:
        return _shards_from_index(indexes[0])
    files = [inside(path, p.name, path, "the file") for p in weight_files(path)]
    if files:
        return files  # regular files only: a FIFO or a folder named x.safetensors is not a shard
    if (path / "transformer").is_dir():  # a diffusers pipeline folder
        return resolve_shards(path / "transformer")
    others = sorted(p.name for p in path.iterdir() if p.suffix in (".pth", ".pt", ".ckpt", ".bin", ".gguf"))
    hint = f" (found {others[:3]}: {_CONVERT_HINT})" if others else ""
    raise CheckpointError(f"{path}: no .safetensors files in this folder{hint}")


def weight_files(folder: Path) -> list[Path]:
    """The regular `*.safetensors` files of a folder, sorted, hidden names left out: a write still under its
    temp name (`.x.partial-PID.safetensors`) or a copy's macOS `._x.safetensors` is not a shard."""
    return [p for p in sorted(folder.glob("*.safetensors")) if not p.name.startswith(".") and p.is_file()]


def read_safetensors(
    path: PathLike | Sequence[PathLike], *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
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
                raise CheckpointError(
                    f"{shard}: key {key!r} is also in {origin[key]}; the shards overlap, so they do "
                    f"not belong to one checkpoint; pass only the shards of one model"
                )
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


LORA_KEY = re.compile(r"lora_(a|b|up|down)\b|^lora_(unet|te)|\.alpha$|\.diff(_b)?$", re.IGNORECASE)


def _natural(key: str) -> list:
    """Sort key putting blocks.2 before blocks.10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def _listing(title: str, items: list[str]) -> str:
    more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
    return f"  {len(items)} {title}: " + ", ".join(items[:5]) + more


def _shape_of(value) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else tuple(value.shape)


def header_shapes(header: Mapping) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor a safetensors header describes (nothing is read)."""
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def check_keys(
    sd: Mapping, expected: Mapping[str, tuple[int, ...]], header: str, fix: str, details: list[str] = ()
) -> None:
    """Raise a CheckpointError listing missing, unexpected and mis-shaped keys of `sd` (key -> tensor, or
    key -> shape as `header_shapes` gives) against `expected` (key -> shape): `header`, any `details`
    lines, the key lists, then `fix`."""
    missing = sorted((k for k in expected if k not in sd), key=_natural)
    unexpected = sorted((k for k in sd if k not in expected), key=_natural)
    wrong = [
        f"{k} (expected {list(expected[k])}, found {list(_shape_of(sd[k]))})"
        for k in sorted(sd, key=_natural)
        if k in expected and _shape_of(sd[k]) != tuple(expected[k])
    ]
    if not (missing or unexpected or wrong):
        return
    lines = [header, *(f"  {d}" for d in details)]
    lines += [
        _listing(t, items)
        for t, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", wrong))
        if items
    ]
    lines.append(f"  {fix}")
    raise CheckpointError("\n".join(lines))


def torch_load_reason(err: Exception) -> str:
    """The informative line of a `torch.load(weights_only=True)` failure (the unsupported global, if any), without
    colour codes: what a converter of a released pickle reports."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"Unsupported global: GLOBAL [\w.]+|WeightsUnpickler error: [^\n]+", text)
    lines = text.strip().splitlines()
    return (found.group(0) if found else lines[0] if lines else type(err).__name__)[:300]
