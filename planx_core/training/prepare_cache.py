"""The prepared cache on disk: its fingerprint, atomic writes, the manifest, and the reader the training stages use.

The format is documented in `prepare` (the module docstring is the contract). This module needs
neither PyAV nor a model: a training stage reads a cache with `open_cache(folder)` and iterates
`PreparedClip`s; `PreparedCache.check_bundle(folder)` refuses a cache made with other encoders.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..files.atomic import staged, temp_for, write_text
from ..files.jsontext import parse_json
from ..files.safetensors import CheckpointError, check_safetensors_header, save_safetensors

CACHE_FORMAT = "planx.prepared"
CACHE_VERSION = 1
CLIP_FORMAT = "planx.prepared.clip"
MANIFEST = "manifest.json"
DROPPED = "dropped.json"
CLIPS = "clips"
WORK = ".work"  # per-run intermediate files (text features, keyframe ids); removed when a run completes
TENSORS = ("latent", "first_latent", "text", "keyframe_ids", "keyframe_times")
ENCODER_PARTS = ("vae.safetensors", "text_encoder", "ta_tok.safetensors")  # what `prepare` reads of a bundle
TEMPS = ".*.partial-*"  # `files.atomic.temp_for` names
FIX = "pass --rebuild to rebuild the cache in this folder, or write it to another --out"
_BLOCK, _BLOCKS = 1 << 16, 16  # content sample: 16 blocks of 64 KiB spread over the file (whole file below 1 MiB)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class CacheError(CheckpointError):
    """A cache that cannot be used as it is (another model or setting, unfinished, damaged); names the fix."""


# ----------------------------------------------------------------------------- fingerprint


def file_fingerprint(path: Path) -> dict:
    """size, mtime_ns, sha256 of the safetensors header (None for other files) and of a content sample: 16 blocks
    of 64 KiB spread evenly over the file (the whole file below 1 MiB), so a 10 GB file costs 1 MiB of reading."""
    stat = path.stat()
    size, header = stat.st_size, None
    sample = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if path.suffix == ".safetensors" and size >= 8:
            (n,) = struct.unpack("<Q", f.read(8))
            header = hashlib.sha256(f.read(min(n, size - 8))).hexdigest()
        if size <= _BLOCK * _BLOCKS:
            f.seek(0)
            sample.update(f.read())
        else:
            for i in range(_BLOCKS):
                f.seek((size - _BLOCK) * i // (_BLOCKS - 1))
                sample.update(f.read(_BLOCK))
    return {"size": size, "mtime_ns": stat.st_mtime_ns, "header_sha256": header, "sample_sha256": sample.hexdigest()}


def model_files(bundle: Path) -> dict[str, Path]:
    """The encoder files `prepare` reads, by their name in the bundle: vae.safetensors, every file of
    text_encoder/, ta_tok.safetensors."""
    found = {}
    for part in ENCODER_PARTS:
        path = bundle / part
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        found.update({p.relative_to(bundle).as_posix(): p for p in files})
    return found


def fingerprint(bundle: Path, settings: dict) -> dict:
    """{"digest", "settings", "files"}: the digest covers the settings and each file's size, header and content
    sample; mtime is recorded but a file with a new mtime and the same bytes sampled is the same file (a copy)."""
    files = {name: file_fingerprint(path) for name, path in model_files(bundle).items()}
    stable = {name: {k: v for k, v in fp.items() if k != "mtime_ns"} for name, fp in files.items()}
    blob = json.dumps({"format": CACHE_VERSION, "settings": settings, "files": stable}, sort_keys=True)
    return {"digest": hashlib.sha256(blob.encode()).hexdigest()[:16], "settings": settings, "files": files}


def differences(old: dict, new: dict) -> list[str]:
    """What changed between two fingerprints, one line per setting or file, naming both values."""
    lines = []
    for key in sorted(set(old["settings"]) | set(new["settings"])):
        a, b = old["settings"].get(key), new["settings"].get(key)
        if a != b:
            lines.append(f"setting {key}: the cache was made with {a!r}, this run asks for {b!r}")
    for name in sorted(set(old["files"]) | set(new["files"])):
        a, b = old["files"].get(name), new["files"].get(name)
        if a is None or b is None:
            lines.append(f"model file {name}: {'added to' if a is None else 'missing from'} the bundle")
            continue
        what = [k.split("_")[0] for k in ("size", "header_sha256", "sample_sha256") if a[k] != b[k]]
        if what:
            lines.append(f"model file {name} changed ({', '.join(what)} differ: another file than the cache's)")
    return lines


# ----------------------------------------------------------------------------- atomic writes


def save_atomic(tensors: dict, path: Path, metadata: dict) -> None:
    """A safetensors file under a hidden temporary name beside it, fsynced and renamed (`files.atomic`): readers
    see the whole file or none."""
    temp = temp_for(path)
    with staged() as pairs:
        pairs.append((temp, path))
        save_safetensors(tensors, temp, metadata)
        os.chmod(temp, 0o666 & ~_UMASK)  # safetensors writes 0600; a cache is read by whoever trains


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def remove_temporaries(out: Path) -> int:
    """Delete the temporary files an interrupted run left (`files.atomic` names, in the cache's own folders)."""
    found = [p for folder in (out, out / CLIPS) if folder.is_dir() for p in folder.glob(TEMPS)]
    found += list((out / WORK).rglob(TEMPS)) if (out / WORK).is_dir() else []
    for path in found:
        path.unlink(missing_ok=True)
    return len(found)


def read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    data = parse_json(path.read_bytes(), str(path), CacheError, FIX)
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        raise CacheError(f"{path}: not a Plan-X prepared cache (format must be {CACHE_FORMAT!r}); {FIX}")
    if data.get("version") != CACHE_VERSION:
        raise CacheError(f"{path}: cache version {data.get('version')!r}, this Plan-X reads {CACHE_VERSION}; {FIX}")
    return data


def clip_meta(path: Path) -> dict | None:
    """A complete clip file's metadata (from its header); None when the file is missing or damaged."""
    try:
        header = check_safetensors_header(path)
    except (OSError, CheckpointError):
        return None
    meta = header.get("__metadata__") or {}
    if meta.get("planx_format") != CLIP_FORMAT or not set(TENSORS) <= set(header):
        return None
    return meta


def clip_digest(path: Path) -> str | None:
    """The fingerprint digest a clip file was written under; None when the file is missing or damaged."""
    return (clip_meta(path) or {}).get("fingerprint")


# ----------------------------------------------------------------------------- the reader


@dataclass
class PreparedClip:
    """One prepared clip: the five tensors of the contract and the clip's metadata (strings, as stored)."""

    latent: torch.Tensor  # [C, F', h, w] float32, the VAE's normalised latent mean (F' = 1 + (frames - 1) / 4)
    first_latent: torch.Tensor  # [C, 1, h, w] float32, frame 0 encoded alone
    text: torch.Tensor  # [L, D] float32, the unpadded umT5 features of "scene. motion."
    keyframe_ids: torch.Tensor  # [K, g*g] int64, TA-Tok codes of the keyframes, row-major
    keyframe_times: torch.Tensor  # [K] float32, seconds from the clip's first frame (plan.timing)
    meta: dict[str, str]

    @property
    def scene(self) -> str:
        return self.meta["scene"]

    @property
    def motion(self) -> str:
        return self.meta["motion"]


def read_clip(path, digest: str | None = None) -> PreparedClip:
    """Read one clip file; with `digest`, refuse a file written under another fingerprint."""
    path = Path(path)
    found = clip_digest(path)
    if found is None:
        raise CacheError(f"{path}: missing or not a complete prepared clip; rerun the prepare command to remake it")
    if digest is not None and found != digest:
        raise CacheError(f"{path}: written for fingerprint {found}, the manifest's is {digest}; {FIX}")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        tensors = {k: f.get_tensor(k) for k in TENSORS}
        meta = dict(f.metadata())
    return PreparedClip(**tensors, meta=meta)


class PreparedCache:
    """A complete prepared cache: `manifest`, `clips` (the manifest's entries), `model`, `len()`, `[i]` -> clip."""

    def __init__(self, folder, require_complete: bool = True):
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest is None:
            raise CacheError(f"{self.folder}: no {MANIFEST}; make the cache with `python -m planx_core prepare`")
        if require_complete and not manifest.get("complete"):
            raise CacheError(f"{self.folder}: the preparation did not finish; rerun the same prepare command")
        self.manifest = manifest
        self.clips: list[dict] = manifest["clips"]
        self.model: dict = manifest["model"]
        self.settings: dict = manifest["fingerprint"]["settings"]
        self.digest: str = manifest["fingerprint"]["digest"]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> PreparedClip:
        return read_clip(self.folder / self.clips[index]["file"], self.digest)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def check_bundle(self, bundle) -> None:
        """Refuse a bundle whose VAE, text encoder or TA-Tok is not the one this cache was made with."""
        new = fingerprint(Path(bundle), self.settings)
        changed = [line for line in differences(self.manifest["fingerprint"], new) if line.startswith("model file")]
        if changed:
            raise CacheError(
                f"{self.folder} was prepared with other encoders than {bundle}'s:\n  "
                + "\n  ".join(changed)
                + "\nprepare the clips again with this bundle (`python -m planx_core prepare --bundle ...`)"
            )


def open_cache(folder, require_complete: bool = True) -> PreparedCache:
    """The reader of a prepared cache folder (see `prepare` for the format)."""
    return PreparedCache(folder, require_complete)
