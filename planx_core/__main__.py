"""Command line of planx_core: every command. `generate`, `semanticgen`, `info`, `inspect FILE`, `check-plan FILE`,
`convert-tatok SRC DST`, and the outer ring's `train`, `assemble`, `eval`, `eval-drift`.

`generate --prompt "scene. motion." --out clip.mp4` plans and renders a clip with the embedded
model (or `--bundle DIR`) and writes clip.mp4, clip.plan.json and clip.plan.png; see `pipeline`.

`semanticgen --prompt "scene. motion." --frames 65 --out long.mp4` makes a long video with the
embedded SemanticGen (a continuous semantic plan, then windowed rendering); see `semanticgen`.

`info` lists the DiT presets and the attention backends this machine can use. `inspect` reads a
checkpoint's header and shapes (safetensors only; nothing is unpickled) and says what it is:
layout, the preset it matches, storage dtypes and parameter count. `check-plan` validates a plan
JSON file (any schema version) and summarises it, optionally after applying an edit list.
`convert-tatok` turns the released `ta_tok.pth` into a safetensors file for the models folder.

`train`, `assemble`, `eval` and `eval-drift` hand their arguments to the outer ring
(`planx_core.training`, `planx_core.training.assemble`, `planx_core.eval`, `planx_core.eval.drift`;
`train --help` and so on list their options); nothing of the outer ring is imported otherwise.
"""

from __future__ import annotations

import argparse
import collections
import math
import sys

from .files.safetensors import CheckpointError, read_safetensors
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


def cmd_inspect(args) -> int:
    from .wan.vae_files import describe_vae_file, is_vae_file

    try:
        if is_vae_file(args.path):
            print(f"file:       {args.path}\n{describe_vae_file(args.path)}")
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


def cmd_convert_tatok(args) -> int:
    from .tatok.files import convert_main

    return convert_main([args.src, args.dst])


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
    parser.add_argument("--steps", type=int, help="DiT sampling steps (default: the bundle's)")
    parser.add_argument("--bundle", help="bundle folder (default: planx_core/embedded, the embedded model)")
    parser.add_argument(
        "--scale",
        type=int,
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


def add_semanticgen_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `semanticgen` (here, so that the other commands do not import the models)."""
    parser.add_argument("--prompt", required=True, help='"scene. motion." (split at the first sentence boundary)')
    parser.add_argument("--out", required=True, help="video file to write (.mp4 or .avi); the plan goes next to it")
    parser.add_argument(
        "--frames",
        type=int,
        help="video frames, 4n+1 (default: the --plan file's, else 65 = 8 s at 8 fps, 4x the training "
        "clip of 17); a --plan must fit in them",
    )
    parser.add_argument(
        "--window",
        type=int,
        help="stage-2 attention window in latent frames (0 = full attention; default: the model's)",
    )
    parser.add_argument("--plan", help="render this continuous plan JSON file instead of planning")
    parser.add_argument("--no-plan", action="store_true", help="stage 2 alone, without a semantic plan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="SemanticGen folder (default: planx_core/embedded/semanticgen)")
    parser.add_argument("--scale", type=int, default=4, help="enlarge the video by this factor (nearest)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")


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
    else:
        from .eval.drift import main
    return main


OUTER_RING = {
    "train": "train a stage of the tiny models (python -m planx_core train --help)",
    "assemble": "build a bundle folder and its model card from training runs",
    "eval": "the ablation table of a bundle on held-out clips of the world",
    "eval-drift": "long-video drift of the embedded SemanticGen",
    "eval-prompts": "held-out prompts (text- and image-to-video) and the README example, scored from the mp4s",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in OUTER_RING:
        return _outer_ring(argv[0])(argv[1:])
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
    convert = sub.add_parser("convert-tatok", help="released ta_tok.pth -> safetensors")
    convert.add_argument("src", help="ta_tok.pth (read with torch.load(weights_only=True))")
    convert.add_argument("dst", help="output .safetensors file")
    convert.set_defaults(fn=cmd_convert_tatok)
    generate = sub.add_parser("generate", help="plan and render a clip from a prompt (the embedded model)")
    add_generate_arguments(generate)
    generate.set_defaults(fn=cmd_generate)
    semgen = sub.add_parser("semanticgen", help="a long video from a prompt with the embedded SemanticGen")
    add_semanticgen_arguments(semgen)
    semgen.set_defaults(fn=cmd_semanticgen)
    for name, text in OUTER_RING.items():  # listed in --help; dispatched above with their own parsers
        sub.add_parser(name, help=text, add_help=False)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
