"""Command line of planx_core: every command. `generate`, `semanticgen`, `info`, `inspect FILE`, `check-plan FILE`,
`convert-tatok`, `convert-umt5`, `convert-planner`, and the outer ring's `prepare`, `train`, `assemble`, `eval`,
`eval-drift`, `eval-semanticgen`.

`generate --prompt "scene. motion." --out clip.mp4` plans and renders a clip with the embedded
model (or `--bundle DIR`) and writes clip.mp4, clip.plan.json and clip.plan.png; see `pipeline`.
`torchrun --nproc_per_node N -m planx_core generate ... --sequence-parallel N` renders one video on N
processes (GPUs), the DiT's sequence split across them (`wan.parallel`); `semanticgen` takes the same flag.

`semanticgen --prompt "scene. motion." --frames 65 --out long.mp4` makes a long video with the
embedded SemanticGen (a continuous semantic plan, then windowed rendering); see `semanticgen`.

`info` lists the DiT presets and the attention backends this machine can use. `inspect` reads a
checkpoint's header and shapes (safetensors only; nothing is unpickled) and says what it is:
layout, the preset it matches, storage dtypes and parameter count. `check-plan` validates a plan
JSON file (any schema version) and summarises it, optionally after applying an edit list.
`convert-tatok`, `convert-umt5` and `convert-planner` turn released pickles (Tar's `ta_tok.pth`, Wan's
umT5 `.pth`, `.bin`-only planner folders) into safetensors once, with `torch.load(weights_only=True)`.

`prepare`, `train`, `assemble`, `eval`, `eval-drift` and `eval-semanticgen` hand their arguments to the outer
ring (`planx_core.training.prepare`, `planx_core.training`, `planx_core.training.assemble`, `planx_core.eval`,
`planx_core.eval.drift`, `planx_core.eval.adherence`; `train --help` and so on list their options); nothing of
the outer ring is imported otherwise. `prepare VIDEOS --bundle DIR --out cache/` turns your captioned videos into a
training cache; `train --stage branch --cache cache/ --dit WAN.safetensors` trains a semantic branch on that frozen
Wan DiT (`planx_core.training.branch`), the file `assemble --real --branch` and Inject 3D RoPE Guidance load;
`train --stage planner-sft --cache cache/ --base-planner Tar-1.5B` fine-tunes the planner on the same cache.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys

from .files.safetensors import CheckpointError, check_safetensors_header, read_safetensors
from .limits import bounded, guidance_scale, share, sketch_level
from .wan.attention import available_backends
from .wan.configs import PRESETS
from .wan.dit_files import describe_shapes, detect_layout, to_official


def cmd_info(_args) -> int:
    print("DiT presets:")
    for name, cfg in PRESETS.items():
        print(
            f"  {name:<16} dim {cfg.dim:>5}  layers {cfg.num_layers:>2}  heads {cfg.num_heads:>2}  "
            f"ffn {cfg.ffn_dim:>5}  channels {cfg.in_dim}"
        )
    print(f"attention backends importable here: {', '.join(available_backends())}")
    return 0


def _describe_other(path) -> str | None:
    """What a file or folder is when it is not a DiT: a VAE, a umT5 text encoder, a planner folder, or one of this
    project's own files (named by its metadata); None for a DiT (or anything else, which the DiT reader refuses)."""
    from pathlib import Path

    from .files.modules import describe_file_kind, file_metadata
    from .wan.text_encoder_files import describe_text_encoder, is_umt5_keys
    from .wan.vae_files import describe_vae_file, is_vae_file

    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        kind = json.loads((path / "config.json").read_text()).get("model_type")
        if kind in ("umt5", "t5", "mt5"):
            return describe_text_encoder(path)
        return f"a planner (causal LM) folder, model_type {kind!r}; Load Planner and `--bundle` read it"
    if is_vae_file(path):
        return describe_vae_file(path)
    if path.is_file() and path.suffix == ".safetensors":
        header = check_safetensors_header(path)
        if is_umt5_keys(header):
            return describe_text_encoder(path)
        kind = describe_file_kind(file_metadata(path), but_not="planx_dit_config")
        if kind is not None:
            return f"{kind} (Plan-X's own file: {len(header) - 1} tensors, its config in the metadata)"
    return None


def cmd_inspect(args) -> int:
    try:
        other = _describe_other(args.path)
        if other is not None:
            print(f"file:       {args.path}\n{other if other.startswith('kind:') else 'kind:       ' + other}")
            return 0
        sd = read_safetensors(args.path)
        layout = detect_layout(sd.keys(), args.path)
        official = to_official(sd, args.path)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    dtypes = collections.Counter(str(t.dtype).replace("torch.", "") for t in official.values())
    params = sum(math.prod(t.shape) for t in official.values())
    print(f"file:       {args.path}")
    print(f"layout:     {layout}")
    print(f"tensors:    {len(official)}, {params / 1e9:.3f} B parameters")
    print(f"dtypes:     {', '.join(f'{d} x{n}' for d, n in dtypes.most_common())}")
    print(f"shapes:     {describe_shapes(official)}")
    return 0


def cmd_check_plan(args) -> int:
    from .plan.core import Plan, PlanError
    from .plan.edits import apply_edits

    try:
        with open(args.path, "rb") as handle:
            plan = Plan.from_json(handle.read())
        if args.edits:
            with open(args.edits, encoding="utf-8") as handle:
                plan = apply_edits(plan, handle.read())
    except (OSError, PlanError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"plan:       {args.path} (valid)")
    print(f"video:      {plan.num_frames} frames at {plan.fps:g} fps, {plan.width}x{plan.height}, {plan.duration:g} s")
    print(f"grid:       {plan.grid[0]}x{plan.grid[1]}, {plan.kind}, {plan.describe_codebook()}")
    locked = [i for i, k in enumerate(plan.keyframes) if k.locked]
    print(
        f"keyframes:  {len(plan.keyframes)} at {', '.join(f'{t:g}' for t in plan.times)} s"
        + (f"; locked {sorted(locked)}" if locked else "")
    )
    if plan.provenance.scene or plan.provenance.motion:
        print(
            f"prompt:     {plan.provenance.scene!r} / {plan.provenance.motion!r} "
            f"(seed {plan.provenance.seed}, planner {plan.provenance.planner or '?'})"
        )
    return 0


# One-off converters of released pickles to safetensors (torch.load(weights_only=True)); each parses its own options.
CONVERTERS = {
    "convert-tatok": ("tatok.files", "Tar's ta_tok.pth -> a TA-Tok safetensors file (convert-tatok SRC DST --help)"),
    "convert-umt5": ("wan.text_encoder_convert", "Wan's umT5 .pth or a .bin folder -> safetensors (SRC DST)"),
    "convert-planner": ("planner.files", "a planner folder of pytorch_model*.bin -> safetensors (SRC [DST])"),
}


def _converter(command: str):
    import importlib

    return importlib.import_module(f"planx_core.{CONVERTERS[command][0]}").convert_main


DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}  # --dtype choices (torch names)


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `generate`, declared here so that the other commands do not import the pipeline."""
    parser.add_argument(
        "--prompt",
        required=True,
        help='"scene. motion." (split at the first sentence boundary unless --motion is given)',
    )
    parser.add_argument("--motion", help="the motion text; then --prompt is the scene alone")
    parser.add_argument("--out", required=True, help="video file to write (.mp4, or .avi); the plan goes next to it")
    parser.add_argument("--plan", help="render this plan JSON file instead of planning (e.g. an edited plan)")
    parser.add_argument("--no-plan", action="store_true", help="render from the text alone, without a plan")
    parser.add_argument(
        "--image",
        help="first frame (PNG/JPEG at the video's size): image-to-video; the planner "
        "reads it and the video starts from it",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the planner and of the DiT noise (default 0)")
    parser.add_argument("--steps", type=bounded("steps"), help="DiT sampling steps (default: the bundle's)")
    parser.add_argument("--bundle", help="bundle folder (default: planx_core/embedded, the embedded model)")
    parser.add_argument(
        "--scale",
        type=bounded("scale"),
        default=4,
        help="enlarge the video by this integer factor, nearest-neighbour (default 4; 1 = as rendered)",
    )
    parser.add_argument("--device", default="cpu", help="torch device to run on (default cpu)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=sorted(DTYPES),
        help="weights and sampling dtype (default float32; bfloat16 for the real 5B model on a GPU)",
    )
    parser.add_argument(
        "--offload",
        action="store_true",
        help="keep the parts on the CPU and move each stage's parts to --device only while it runs (planner, "
        "text encoder, DiT, VAE): what a 5B model on one GPU needs",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's choice; 1 is often "
        "fastest for the tiny model, and much faster on a busy machine)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--sequence-parallel",
        type=int,
        default=1,
        metavar="N",
        help="split the DiT's token sequence over N processes (Ulysses attention); launch with "
        "torchrun --nproc_per_node N -m planx_core ... (N must divide the DiT's heads); rank 0 writes the files",
    )
    add_split_guidance_argument(parser)


def add_split_guidance_argument(parser: argparse.ArgumentParser) -> None:
    """`--split-guidance`, for the commands that take `--sequence-parallel`."""
    parser.add_argument(
        "--split-guidance",
        action="store_true",
        help="with --sequence-parallel N: run each step's P guidance passes (text, plan, neither) at once on P "
        "groups of N/P processes instead of one after another (when P divides N; otherwise as without)",
    )


def add_semanticgen_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `semanticgen` (here, so that the other commands do not import the models)."""
    parser.add_argument("--prompt", required=True, help='"scene. motion." (split at the first sentence boundary)')
    parser.add_argument("--out", required=True, help="video file to write (.mp4 or .avi); the plan goes next to it")
    parser.add_argument(
        "--frames",
        type=bounded("frames"),
        help="video frames, 4n+1 (default: the --plan file's, else 65 = 8 s at 8 fps, 4x the training "
        "clip of 17); a --plan must fit in them",
    )
    parser.add_argument(
        "--window",
        type=int,
        help="stage-2 attention window in latent frames (0 = full attention; default: the model's)",
    )
    parser.add_argument(
        "--window-semantics",
        choices=("local", "global"),
        help="stage-2 windows see the semantic keyframes of their own frames (local: time grows linearly with "
        "the length) or all of them (global); default: the model's",
    )
    parser.add_argument(
        "--window-margin",
        type=int,
        help="local: latent frames of semantics a window also sees before and after its own (default: the model's)",
    )
    parser.add_argument("--plan", help="render this continuous plan JSON file instead of planning")
    parser.add_argument("--no-plan", action="store_true", help="stage 2 alone, without a semantic plan")
    parser.add_argument(
        "--image",
        help="first frame (PNG/JPEG at the video's size): image-to-video; stage 1 plans from its semantics "
        "(keyframe 0) and stage 2 starts the video from it",
    )
    parser.add_argument(
        "--draw-first-frame",
        nargs="?",
        const="embedded",
        metavar="BUNDLE",
        help="text to video from a first frame that Plan-X draws: the Plan-X bundle (a folder; default, or "
        "'embedded': the embedded tiny model) plans and renders the prompt, and its frame 0 is used as --image "
        "would be (SemanticGen alone often draws the objects in a near colour; this pins them)",
    )
    parser.add_argument(
        "--draw-lead",
        type=share,
        default=0.0,
        metavar="SHARE",
        help="with --draw-first-frame: the semantic keyframes in this first share of the video (0 to 1) are also "
        "taken from Plan-X's video, stretched over this video's length, and stage 1 plans only the ones after "
        "them (0, the default: the first frame alone; 0.25 follows the prompt better: the model card)",
    )
    parser.add_argument(
        "--draw-sketch",
        type=sketch_level,
        default=1.0,
        metavar="LEVEL",
        help="with --draw-first-frame: stage 1 starts each keyframe it plans from Plan-X's video's own, noised to "
        "this level (SDEdit; above 0, at most 1), instead of pure noise (1, the default); with --draw-lead 0.25, "
        "0.85 scored a little above the lead alone: the model card",
    )
    parser.add_argument(
        "--semantic-text-scale",
        type=guidance_scale,
        metavar="CFG",
        help="stage-1 text guidance, as Generate Semantic Plan's cfg in ComfyUI (default: the model's "
        "semantic_text_scale, 3 for the embedded one)",
    )
    parser.add_argument(
        "--plan-scale",
        type=guidance_scale,
        metavar="CFG",
        help="stage-2 guidance by the semantic plan, as the Plan-X Sampler's plan_cfg in ComfyUI (default: the "
        "model's plan_scale, 2 for the embedded one; over 65 frames 6 kept the second object in sight more often, "
        "on 17-frame clips it scored lower: the model card)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--best-of",
        type=bounded("best_of"),
        default=1,
        metavar="N",
        help="render N whole videos (seeds --seed + 1000 j) and keep the one whose frames lie nearest the plan "
        "stage 1 made for it (N times the time; with the drawn sketch, 8 scored best held out: the model card); "
        "default 1",
    )
    parser.add_argument("--model", help="SemanticGen folder (default: planx_core/embedded/semanticgen)")
    parser.add_argument("--scale", type=bounded("scale"), default=4, help="enlarge the video by this factor (nearest)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument(
        "--sequence-parallel",
        type=int,
        default=1,
        metavar="N",
        help="split stage 2's token sequence over N processes (Ulysses attention); launch with "
        "torchrun --nproc_per_node N -m planx_core ... (N must divide stage 2's heads); rank 0 writes the files",
    )
    add_split_guidance_argument(parser)


def cmd_generate(args) -> int:
    from .pipelines.commands import generate_command

    return generate_command(args)


def cmd_semanticgen(args) -> int:
    from .pipelines.commands import semanticgen_command

    return semanticgen_command(args)


def _outer_ring(command: str):
    """The main() of an outer-ring command, imported only when that command runs."""
    if command == "train":
        from .training.main import main
    elif command == "assemble":
        from .training.assemble import main
    elif command == "eval":
        from .eval.ablations import main
    elif command == "eval-prompts":
        from .eval.prompts import main
    elif command == "prepare":
        from .training.prepare import main
    elif command == "eval-semanticgen":
        from .eval.adherence import main
    else:
        from .eval.drift import main
    return main


OUTER_RING = {
    "train": "train a stage of the tiny models (python -m planx_core train --help)",
    "assemble": "build a bundle folder and its model card from training runs",
    "eval": "the ablation table of a bundle on held-out clips of the world",
    "eval-drift": "long-video drift of the embedded SemanticGen",
    "eval-semanticgen": "SemanticGen's adherence to the prompt on held-out 17-frame clips (world scores)",
    "eval-prompts": "held-out prompts (text- and image-to-video) and the README example, scored from the mp4s",
    "prepare": "videos with captions -> a cache of latents, text features and keyframe ids for training",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["assemble"] and "--real" in argv:  # a bundle from released files: the runtime's own
        from .pipelines.real_bundle import main as assemble_real

        return assemble_real(argv[1:])
    if argv and argv[0] in OUTER_RING:
        return _outer_ring(argv[0])(argv[1:])
    if argv and argv[0] in CONVERTERS:
        return _converter(argv[0])(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m planx_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="presets and attention backends").set_defaults(fn=cmd_info)
    inspect = sub.add_parser("inspect", help="what a model file is (a Wan DiT or VAE, ...)")
    inspect.add_argument("path", help="a .safetensors file, a folder of shards or an index json")
    inspect.set_defaults(fn=cmd_inspect)
    check = sub.add_parser("check-plan", help="validate and summarise a plan JSON file")
    check.add_argument("path", help="a plan .json file")
    check.add_argument("--edits", help="a JSON edit list to apply first")
    check.set_defaults(fn=cmd_check_plan)
    generate = sub.add_parser("generate", help="plan and render a clip from a prompt (the embedded model)")
    add_generate_arguments(generate)
    generate.set_defaults(fn=cmd_generate)
    semgen = sub.add_parser("semanticgen", help="a long video from a prompt with the embedded SemanticGen")
    add_semanticgen_arguments(semgen)
    semgen.set_defaults(fn=cmd_semanticgen)
    for name, text in {**{k: v[1] for k, v in CONVERTERS.items()}, **OUTER_RING}.items():  # own parsers, above
        sub.add_parser(name, help=text, add_help=False)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
