"""`python -m planx_core assemble --real`: a bundle folder from released files (Wan 2.2, umT5, Tar, TA-Tok, a branch).

This project's own layout (`bundle.FILES`), filled with the files a user has: the Wan DiT in any
layout (official, ComfyUI, diffusers; fp16, bf16 or fp8), the Wan VAE, the umT5 text encoder (a
ComfyUI file, a google/umt5-xxl folder, or a converted official one) and its tokenizer, a planner
folder (Tar's `llava_qwen` included), a TA-Tok file and a semantic branch. Every file is checked
from its header first (kinds, sizes, and that the parts fit together) before anything is written;
then each is hard-linked into the folder (copied when the folder is on another disk, or with
`--copy`), so a bundle never points outside itself and 10 GB of weights are not duplicated.
bundle.json takes the DiT's preset, the video and the sampling defaults from `wan.SAMPLING`.
Without `--branch` the folder serves `prepare` and `train --stage branch` (which makes the branch);
assemble again with `--branch` for `generate`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from ..files.modules import config_in_metadata, file_metadata
from ..files.safetensors import CheckpointError, read_safetensors
from ..semantic_branch import BRANCH_CONFIG_KEY, branch_config_from
from ..tatok.files import load_tatok
from ..wan import SAMPLING, DiTConfig, infer_config, to_official
from ..wan.text_encoder_files import find_tokenizer, locate
from ..wan.vae_files import vae_file_config
from .bundle import FILES, BundleSpec, PlanningDefaults, SamplingDefaults, VideoDefaults, write_spec

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")


class RealBundleError(CheckpointError):
    """A released file that cannot go into a bundle, or parts that do not fit; the message names both sides."""


def dit_config(path: Path) -> DiTConfig:
    """The DiT's config from its shapes (memory-mapped; nothing is copied)."""
    return infer_config(to_official(read_safetensors(path), path), source=path)


def check_parts(dit: DiTConfig, args) -> dict:
    """Read every part's header and refuse parts that do not fit the DiT, naming both; returns what was found."""
    found = {"vae": vae_file_config(args.vae), "text": locate(args.text_encoder)}
    text, vae = found["text"]["config"], found["vae"]
    tatok = load_tatok(args.tatok)
    checks = [
        (vae.z_dim == dit.in_dim, f"the VAE makes {vae.z_dim}-channel latents, the DiT reads {dit.in_dim}"),
        (text.d_model == dit.text_dim, f"the text encoder is {text.d_model} wide, the DiT reads {dit.text_dim}"),
        ((Path(args.planner) / "config.json").is_file(), f"{args.planner}: no config.json; pass the planner folder"),
    ]
    if args.branch is not None:  # without one the bundle serves `prepare` and `train --stage branch` only
        raw = config_in_metadata(file_metadata(args.branch), BRANCH_CONFIG_KEY, args.branch, "re-export the branch")
        if raw is None:
            raise RealBundleError(f"{args.branch}: not a Plan-X semantic-branch file; train one for this DiT")
        branch = branch_config_from(raw)
        checks += [
            (branch.code_dim == tatok.config.bottleneck_dim, "the branch's code width is not TA-Tok's codebook width"),
            (
                (branch.dim, branch.num_layers, branch.num_heads) == (dit.dim, dit.num_layers, dit.num_heads),
                f"the branch was trained for a DiT of width {branch.dim}, this one is {dit.dim}",
            ),
        ]
    for ok, message in checks:
        if not ok:
            raise RealBundleError(f"{message}; pick files made for one another")
    return found


def link(src: Path, dst: Path, copy: bool) -> str:
    """Hard-link `src` as `dst` (a copy across disks, or when asked); 'linked' or 'copied'."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    if not copy:
        try:
            os.link(src, dst)
            return "linked"
        except OSError:
            pass
    shutil.copy2(src, dst)
    return "copied"


def link_folder(src: Path, dst: Path, copy: bool, names=None) -> None:
    """Every file of `src` (or only `names`) into the folder `dst`."""
    for file in sorted(src.iterdir()):
        if file.is_file() and (names is None or file.name in names):
            link(file, dst / file.name, copy)


def text_encoder_folder(found: dict, args, out: Path) -> None:
    """The bundle's text_encoder/: the encoder's files, a config.json for a single file, and the tokenizer."""
    folder = out / FILES["text_encoder"]
    source = Path(args.text_encoder)
    if source.is_dir():
        link_folder(source, folder, args.copy)
        return
    link(source, folder / source.name, args.copy)
    config = found["text"]["config"]
    config.planx_text_len = found["text"]["text_len"]
    config.save_pretrained(folder)
    try:
        link_folder(find_tokenizer(source, args.tokenizer), folder, args.copy, TOKENIZER_FILES)
    except CheckpointError:
        if found["text"].get("spiece") is None:
            raise


def spec_for(dit: DiTConfig, args) -> BundleSpec:
    preset = SAMPLING.get(dit.name)
    sampling = SamplingDefaults(
        steps=preset.steps if preset else 50,
        shift=preset.shift if preset else 5.0,
        solver="unipc",
        text_scale=preset.text_scale if preset else 5.0,
        schedule="wan",
    )
    video = VideoDefaults(
        fps=args.fps or (preset.fps if preset else 24.0),
        num_frames=args.frames,
        width=args.width,
        height=args.height,
        keyframe_rate=args.keyframe_rate,
        grid=9,
    )
    return BundleSpec(
        dit=dit,
        name=args.name,
        planner_name=Path(args.planner).name,
        codebook_name="ta-tok",
        video=video,
        sampling=sampling,
        planning=PlanningDefaults(top_k=1200, top_p=0.95),
        notes="assembled from released files with `python -m planx_core assemble --real`",
    )


def assemble_real(args) -> Path:
    out = Path(args.out)
    dit = dit_config(Path(args.dit))
    found = check_parts(dit, args)
    out.mkdir(parents=True, exist_ok=True)
    for part in ("dit", "vae", "tatok", "branch"):
        if getattr(args, part) is None:
            continue
        how = link(Path(getattr(args, part)), out / FILES[part], args.copy)
        print(f"{how:<7} {getattr(args, part)} -> {out / FILES[part]}")
    link_folder(Path(args.planner), out / FILES["planner"], args.copy)
    text_encoder_folder(found, args, out)
    write_spec(spec_for(dit, args), out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m planx_core assemble --real", description=__doc__.split("\n")[0])
    p.add_argument("--real", action="store_true", help="build from released files (this command)")
    for name, text in (
        ("--dit", "the Wan DiT .safetensors (e.g. wan2.2_ti2v_5B_fp16.safetensors)"),
        ("--vae", "the Wan VAE .safetensors (wan2.2_vae.safetensors)"),
        ("--text-encoder", "umT5: a ComfyUI file, a google/umt5-xxl folder or a converted file"),
        ("--planner", "the planner folder (Tar-1.5B, or one trained with issue 16's planner stage)"),
        ("--tatok", "the TA-Tok .safetensors (python -m planx_core convert-tatok ta_tok.pth ...)"),
        ("--out", "the bundle folder to write"),
    ):
        p.add_argument(name, required=True, help=text)
    p.add_argument(
        "--branch",
        help="the semantic branch trained for this DiT (branch.safetensors); without it the bundle serves "
        "`prepare` and `train --stage branch` (which makes one), not `generate`",
    )
    p.add_argument("--tokenizer", help="the umT5 tokenizer folder, when it is not beside the text-encoder file")
    p.add_argument("--name", default="planx-wan2.2-5b")
    p.add_argument("--fps", type=float, help="video fps (default: the DiT's, 24 for Wan 2.2 TI2V-5B)")
    p.add_argument("--frames", type=int, default=121)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=704)
    p.add_argument("--keyframe-rate", type=float, default=2.0)
    p.add_argument("--copy", action="store_true", help="copy the files instead of hard-linking them")
    args = p.parse_args(argv)
    try:
        out = assemble_real(args)
    except (CheckpointError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.branch is None:
        print(
            f"wrote bundle {out} without a semantic branch: prepare clips with it (python -m planx_core prepare "
            f"VIDEOS --bundle {out} --out cache/), train one (train --stage branch), then assemble again with --branch"
        )
        return 0
    print(
        f"wrote bundle {out}; run it with: python -m planx_core generate --bundle {out} --device cuda "
        f'--dtype bfloat16 --offload --prompt "..." --out clip.mp4'
    )
    return 0
