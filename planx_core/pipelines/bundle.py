"""The embedded-model bundle: one folder with every part `generate` needs, and its defaults.

This project's own layout (the parts follow Plan-X, arXiv 2511.17986: a planner LM writing TA-Tok
keyframe tokens, a Wan DiT with a semantic branch, the Wan text encoder and VAE). A bundle
folder holds:

    planner/             the semantic planner, Hugging Face folder (`planner.save_planner`)
    ta_tok.safetensors   the TA-Tok tokenizer whose codebook the planner writes (`save_tatok`)
    text_encoder/        the DiT's umT5 text encoder, Hugging Face folder (`save_text_encoder`)
    vae.safetensors      the Wan video VAE (`save_vae`)
    dit.safetensors      the Wan DiT, official Wan keys, its DiTConfig also in the metadata
    branch.safetensors   the Plan-X semantic branch (`save_branch`)
    bundle.json          names, video defaults, sampling and planning defaults, the DiT config

`EMBEDDED` (planx_core/embedded) is where the trained tiny model ships; `load_bundle` checks
that the parts fit together (codebook size and width, text width, latent channels, DiT size)
and names the missing or mismatched file and the fix. `random_bundle` builds an untrained bundle
at the tiny sizes for tests and smoke runs (its videos are noise); it lives with the toy world in
`planx_core.world.tiny`, which the runtime never imports.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from .. import EMBEDDED
from ..files.jsontext import parse_json
from ..files.modules import config_in_metadata, file_metadata
from ..files.safetensors import (
    CheckpointError,
    inside,
)
from ..planner.decode import check_candidates
from ..planner.files import load_planner, save_planner
from ..planner.model import SemanticPlanner
from ..semantic_branch import SemanticBranch, load_branch, save_branch
from ..tatok.files import load_tatok, save_tatok
from ..tatok.model import TATok
from ..wan.configs import DiTConfig, get_preset
from ..wan.dit import WanModel
from ..wan.dit_files import DIT_CONFIG_KEY, dit_config_from, load_dit, save_dit
from ..wan.text_encoder import TextEncoder, load_text_encoder, save_text_encoder
from ..wan.vae import WanVAE
from ..wan.vae_files import load_vae, save_vae

__all__ = [
    "FILES",
    "Bundle",
    "BundleError",
    "BundleSpec",
    "PlanningDefaults",
    "SamplingDefaults",
    "VideoDefaults",
    "load_bundle",
    "read_spec",
    "save_bundle",
    "write_spec",
]

BUNDLE_FORMAT = "planx.bundle"
BUNDLE_VERSION = 1
FILES = {
    "spec": "bundle.json",
    "planner": "planner",
    "tatok": "ta_tok.safetensors",
    "text_encoder": "text_encoder",
    "vae": "vae.safetensors",
    "dit": "dit.safetensors",
    "branch": "branch.safetensors",
}
_WHAT = {
    "spec": "the bundle description",
    "planner": "the semantic planner folder",
    "tatok": "the TA-Tok tokenizer",
    "text_encoder": "the text-encoder folder",
    "vae": "the video VAE",
    "dit": "the diffusion transformer",
    "branch": "the semantic branch",
}


class BundleError(CheckpointError):
    """A bundle folder that cannot be used; the message names the file and the fix."""


def _fix(folder: Path) -> str:
    if folder.resolve() == EMBEDDED:
        return (
            "restore the shipped model with `git checkout -- planx_core/embedded` (or re-clone the pack), or "
            "train it with `python -m planx_core train` and export the bundle there"
        )
    return (
        "train the parts with `python -m planx_core train` and write the folder with bundle.save_bundle, "
        "or pass --bundle with a complete bundle folder (the default is planx_core/embedded)"
    )


# ----------------------------------------------------------------------------- bundle.json


@dataclass(frozen=True)
class VideoDefaults:
    """The video the bundle renders: 17 frames of 64x64 at 8 fps, keyframes at 2 fps on a 9x9 grid."""

    fps: float = 8.0
    num_frames: int = 17
    width: int = 64
    height: int = 64
    keyframe_rate: float = 2.0
    grid: int = 9


@dataclass(frozen=True)
class SamplingDefaults:
    """DiT sampling: steps, timestep shift, solver, text / plan guidance scales, plan strength and RoPE."""

    steps: int = 20
    shift: float = 3.0
    solver: str = "unipc"
    text_scale: float = 5.0
    plan_scale: float = 1.0
    plan_strength: float = 1.0
    plan_rope: bool = True
    schedule: str = "flow"  # the sigma schedule: "flow" (from sigma 1) or "wan" (Wan's own, from 0.999)


@dataclass(frozen=True)
class PlanningDefaults:
    """How the planner draws plan tokens (see `planner_decode.Sampling`)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    guidance_scale: float = 1.0
    t2v_temperature: float | None = None  # without a first frame (text-to-video); None: `temperature`
    persistence: float = 0.0  # logit bonus for a cell keeping its code of the keyframe before; 0: off
    candidates: int = 1  # plans drawn, the planner's likeliest kept (`SemanticPlanner.generate`); 1: one draw

    def __post_init__(self):
        check_candidates(self.candidates)
        for name, what in (
            ("temperature", "a temperature"),
            ("t2v_temperature", "a temperature"),
            ("persistence", "a logit bonus"),
        ):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if value is not None and not (number and value >= 0):
                raise ValueError(f"planning {name} {value!r} is not {what} (a finite number, 0 or more)")

    def temperature_for(self, image_to_video: bool) -> float:
        """The default temperature of a plan drawn with a first frame (image-to-video) or without one."""
        if image_to_video or self.t2v_temperature is None:
            return self.temperature
        return self.t2v_temperature


@dataclass(frozen=True)
class BundleSpec:
    """The contents of bundle.json: names, the DiT config and the defaults of generation."""

    dit: DiTConfig
    name: str = "planx-tiny"
    planner_name: str = "planshapes-tiny"
    codebook_name: str = "ta-tok-planshapes"
    video: VideoDefaults = field(default_factory=VideoDefaults)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    planning: PlanningDefaults = field(default_factory=PlanningDefaults)
    notes: str = ""

    def to_json(self) -> str:
        return json.dumps({"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, **asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text, source: Path) -> BundleSpec:
        """Parse bundle.json (text or bytes), naming the field that is wrong."""
        data = parse_json(text, f"{source}", BundleError, "restore the file or re-save the bundle")
        if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{source}: not a Plan-X bundle description (format must be {BUNDLE_FORMAT!r})")
        if data.get("version") != BUNDLE_VERSION:
            raise BundleError(
                f"{source}: bundle version {data.get('version')!r}; this Plan-X reads version "
                f"{BUNDLE_VERSION}, update Plan-X or re-save the bundle"
            )
        try:
            return cls(
                dit=_dit_config(data["dit"]),
                **{k: data[k] for k in ("name", "planner_name", "codebook_name", "notes") if k in data},
                video=_section(VideoDefaults, data, "video"),
                sampling=_section(SamplingDefaults, data, "sampling"),
                planning=_section(PlanningDefaults, data, "planning"),
            )
        except KeyError as err:
            raise BundleError(f"{source}: no {err.args[0]!r} field; re-save the bundle with save_bundle") from None
        except (TypeError, ValueError) as err:
            raise BundleError(f"{source}: {err}; fix the field or re-save the bundle with save_bundle") from None


def _section(cls, data: dict, key: str):
    raw = data.get(key, {})
    unknown = sorted(set(raw) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {key} fields {unknown}")
    return cls(**raw)


def _dit_config(raw) -> DiTConfig:
    if isinstance(raw, str):
        return get_preset(raw)
    return dit_config_from(raw)


# ----------------------------------------------------------------------------- the bundle


@dataclass
class Bundle:
    """The loaded parts of a bundle and its description."""

    spec: BundleSpec
    planner: SemanticPlanner
    tatok: TATok
    text_encoder: TextEncoder
    vae: WanVAE
    dit: WanModel
    branch: SemanticBranch
    folder: Path | None = None

    def codebook_id(self):
        """The `CodebookId` plans of this bundle carry (name from bundle.json, size and hash from TA-Tok)."""
        return self.tatok.identity(self.spec.codebook_name)

    def check(self) -> Bundle:
        """Refuse parts that do not fit together, naming both sides."""
        where = f"{self.folder}: " if self.folder else "bundle: "
        for ok, message in _fit_checks(self):
            if not ok:
                raise BundleError(f"{where}{message}; the parts come from different trainings, export them together")
        return self


def _fit_checks(b: Bundle) -> list[tuple[bool, str]]:
    dit, tok, enc, br, vae = b.dit.config, b.tatok.config, b.text_encoder, b.branch.config, b.vae.config
    return [
        (
            tok.codebook_size == b.planner.num_image_tokens,
            f"ta_tok has {tok.codebook_size} codes but the planner writes {b.planner.num_image_tokens} image tokens",
        ),
        (
            br.code_dim == tok.bottleneck_dim,
            f"branch takes {br.code_dim}-wide codes but ta_tok's codebook is {tok.bottleneck_dim} wide",
        ),
        (
            (br.dim, br.num_layers, br.num_heads) == (dit.dim, dit.num_layers, dit.num_heads),
            f"branch is for a DiT of width {br.dim} with {br.num_layers} blocks and {br.num_heads} heads, dit is "
            f"{dit.dim} with {dit.num_layers} and {dit.num_heads}",
        ),
        (enc.dim == dit.text_dim, f"text encoder is {enc.dim} wide but the DiT takes {dit.text_dim}-wide text"),
        (
            enc.text_len <= dit.text_len,
            f"text encoder writes {enc.text_len} tokens, more than the DiT's {dit.text_len}",
        ),
        (vae.z_dim == dit.in_dim == dit.out_dim, f"vae latents have {vae.z_dim} channels, the DiT {dit.in_dim}"),
        _video_fits(b.spec.video, vae.spatial_factor * dit.patch_size[1], vae.temporal_factor),
    ]


def _video_fits(v: VideoDefaults, step: int, temporal: int) -> tuple[bool, str]:
    ok = v.width % step == 0 and v.height % step == 0 and (v.num_frames - 1) % temporal == 0
    return ok, (
        f"bundle.json's video {v.width}x{v.height}, {v.num_frames} frames does not fit the VAE and the DiT "
        f"patch (sides multiples of {step}, {temporal}n+1 frames)"
    )


# ----------------------------------------------------------------------------- load and save


def _require(folder: Path, part: str) -> Path:
    """A part's file or folder, which must be inside the bundle folder with everything in it (symlinks included:
    a bundle only ever loads its own files; `assemble --real` hard-links released files in)."""
    path = folder / FILES[part]
    is_dir = part in ("planner", "text_encoder")
    if not (path.is_dir() if is_dir else path.is_file()):
        raise BundleError(f"{folder}: missing {FILES[part]}{'/' if is_dir else ''} ({_WHAT[part]}); {_fix(folder)}")
    try:
        inside(folder, FILES[part], folder, "the part")
        for item in sorted(path.iterdir()) if is_dir else ():
            inside(folder, str(item.relative_to(folder)), folder, "the file")
    except CheckpointError as err:
        raise BundleError(str(err)) from None
    return path


def read_spec(folder) -> BundleSpec:
    """bundle.json of a bundle folder."""
    folder = Path(folder)
    path = _require(folder, "spec")
    return BundleSpec.from_json(path.read_bytes(), path)


@contextmanager
def _quiet_transformers():
    """transformers' own "Loading weights" / "Writing model shards" bars off for the duration."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_bundle(folder=EMBEDDED, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Bundle:
    """Load every part of a bundle folder (eval mode, gradients off) and check they fit together."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "the embedded model is not installed" if folder.resolve() == EMBEDDED else "no such bundle folder"
        raise BundleError(f"{folder}: {what}; {_fix(folder)}")
    paths = {part: _require(folder, part) for part in FILES}
    spec = read_spec(folder)
    try:
        with _quiet_transformers():
            bundle = _load_parts(paths, spec, device, dtype)
    except CheckpointError as err:
        if isinstance(err, BundleError):
            raise
        raise BundleError(f"{err}\n(in bundle {folder}; {_fix(folder)})") from None
    bundle.folder = folder
    return bundle.check()


def _load_parts(paths: dict[str, Path], spec: BundleSpec, device, dtype: torch.dtype) -> Bundle:
    bundle = Bundle(
        spec=spec,
        planner=load_planner(paths["planner"], dtype=dtype, device=device, name=spec.planner_name),
        tatok=load_tatok(paths["tatok"], dtype=dtype, device=device),
        text_encoder=load_text_encoder(paths["text_encoder"], dtype=dtype, device=device),
        vae=load_vae(paths["vae"], dtype=dtype, device=device),
        dit=load_dit(paths["dit"], config=_stored_dit_config(paths["dit"], spec), dtype=dtype, device=device),
        branch=load_branch(paths["branch"], dtype=dtype).to(device),
    )
    for part in (bundle.tatok, bundle.text_encoder, bundle.vae, bundle.dit, bundle.branch):
        part.requires_grad_(False).eval()
    bundle.planner.model.requires_grad_(False)
    return bundle


def _stored_dit_config(path: Path, spec: BundleSpec) -> DiTConfig:
    """bundle.json's DiT config; the file's own metadata must agree when it has one."""
    raw = config_in_metadata(file_metadata(path), DIT_CONFIG_KEY, path, "re-save the bundle with save_bundle")
    if raw is not None and _dit_config(raw) != spec.dit:
        raise BundleError(
            f"{path}: its DiT config differs from bundle.json's ({spec.dit.name}); the DiT file was "
            f"replaced without updating bundle.json, re-save the bundle with save_bundle"
        )
    return spec.dit


def save_bundle(parts: Bundle, folder) -> Path:
    """Write every part and bundle.json into `folder` (created if needed); returns the folder."""
    parts.check()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = replace(parts.spec, dit=parts.dit.config)
    with _quiet_transformers():
        save_planner(parts.planner, folder / FILES["planner"])
        save_text_encoder(parts.text_encoder, folder / FILES["text_encoder"])
    save_tatok(parts.tatok, folder / FILES["tatok"], source={"bundle": spec.name})
    save_vae(parts.vae, folder / FILES["vae"])
    save_dit(parts.dit, folder / FILES["dit"])
    save_branch(parts.branch, folder / FILES["branch"])
    write_spec(spec, folder)
    return folder


def write_spec(spec: BundleSpec, folder) -> Path:
    """Write bundle.json alone: with it, a folder of the training stages' exports (planner/,
    ta_tok.safetensors, vae.safetensors, dit.safetensors, branch.safetensors, text_encoder/) is a bundle."""
    path = Path(folder) / FILES["spec"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec.to_json() + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- an untrained bundle
