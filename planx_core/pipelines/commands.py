"""The job commands: `python -m planx_core generate` (Plan-X) and `python -m planx_core semanticgen`.

`generate` plans with the bundle's planner (or reads `--plan`), renders, and writes the video, the
plan JSON and the plan picture beside it; `semanticgen` plans a continuous plan with stage 1 (or
reads `--plan`, rendered at its own keyframe times) and renders it with windowed stage 2. With
`--image` both start from that first frame (image-to-video); `semanticgen --draw-first-frame` starts from
frame 0 of a Plan-X bundle's text-to-video for the prompt (`--draw-lead`: and from its keyframes in the video's
first share). Both exit 2 with the error's message on
bad input; the argument definitions live in `__main__`.

Under `torchrun --nproc_per_node N ... --sequence-parallel N` every process runs the whole command with
the same inputs, the DiT (semanticgen: stage 2) splits its sequence over the N processes
(`wan.parallel`), and rank 0 alone shows progress and writes the files.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch

from .. import EMBEDDED
from ..diffusion.sampling import guidance_runner
from ..files.atomic import staged, temp_for
from ..files.safetensors import CheckpointError
from ..files.video import read_image, write_png, write_video
from ..plan.core import Plan, PlanError
from ..semanticgen.candidates import candidate_seeds, keep_nearest
from ..semanticgen.drawn import drawn_start
from ..semanticgen.model import SemanticGen, SemanticStart
from ..wan.parallel import (
    GuidanceSplit,
    SequenceParallel,
    finish,
    init_from_torchrun,
    is_writer,
    sequence_parallel,
)
from .bundle import read_spec
from .planx import (
    Generation,
    PlanXPipeline,
    _clean,
    _report,
    load_plan_file,
    split_prompt,
)

DEFAULT_LONG_FRAMES = 65  # semanticgen's default length: 8 s at 8 fps, 4x the training clip of 17


def output_paths(out) -> tuple[Path, Path, Path]:
    """(video, plan JSON, plan picture): clip.mp4 -> clip.plan.json, clip.plan.png beside it."""
    video = Path(out)
    if video.suffix.lower() not in (".mp4", ".avi"):
        raise ValueError(f"--out {out}: the video file must end in .mp4 (or .avi), e.g. --out clip.mp4")
    return video, video.with_suffix(".plan.json"), video.with_suffix(".plan.png")


def _texts(args) -> tuple[str, str]:
    scene, motion = (_clean(args.prompt), _clean(args.motion)) if args.motion is not None else split_prompt(args.prompt)
    if not scene and not motion:
        raise ValueError(
            "--prompt is empty; describe the scene and the motion, e.g. "
            '--prompt "a red circle on a dark background. the red circle moves right."'
        )
    return scene, motion


def _check_options(args) -> None:
    if args.plan is not None and args.no_plan:
        raise ValueError("--plan and --no-plan contradict each other; pass one of them")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps {args.steps}: sampling needs at least 1 step (the bundle's default is a good start)")
    if args.scale < 1:
        raise ValueError(f"--scale {args.scale}: the enlargement factor must be an integer >= 1 (1 = as rendered)")
    if getattr(args, "threads", None) is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads}: give at least 1 CPU thread, or leave it out for torch's default")
    output_paths(args.out)


def _check_given_plan(pipe: PlanXPipeline, plan: Plan, path) -> None:
    try:
        pipe.check_plan(plan)
    except PlanError as err:
        raise PlanError(f"--plan {path} cannot be rendered with bundle {pipe.spec.name!r}: {err}") from None


def _write_outputs(pipe: PlanXPipeline, result: Generation, args, plan_bytes: bytes | None) -> list[Path]:
    """Video, plan JSON and picture as one set: all written under temp names, then renamed together (`staged`),
    so an interruption leaves the previous set or the new one; a given plan file is copied byte for byte. Without
    a plan, a previous run's plan files beside the video are removed with the same commit."""
    video_path, plan_path, picture_path = output_paths(args.out)
    with staged() as pairs:
        video_temp = write_video(result.frames, temp_for(video_path), pipe.spec.video.fps, scale=args.scale)
        pairs.append((video_temp, video_path.with_suffix(video_temp.suffix)))
        if result.plan is not None and not (
            plan_bytes is not None and Path(args.plan).resolve() == plan_path.resolve()
        ):
            temp = temp_for(plan_path)
            temp.write_bytes(plan_bytes if plan_bytes is not None else (result.plan.to_json(indent=1) + "\n").encode())
            pairs.insert(0, (temp, plan_path))
        if result.plan is not None:
            pairs.insert(1, (write_png(pipe.plan_picture(result.plan), temp_for(picture_path)), picture_path))
        else:
            _drop_stale(plan_path, picture_path)
    return [target for _, target in pairs]


def _drop_stale(*paths: Path) -> None:
    """Remove a previous run's plan files (a video rendered without a plan has none)."""
    for path in paths:
        if path.exists():
            path.unlink()


@contextlib.contextmanager
def _parallel(model, parallel: SequenceParallel | None, split_guidance: bool = False):
    """`model` sequence-parallel over `parallel`'s ranks inside the block (as it is when None); with
    `split_guidance`, each step's guidance passes go to groups of those ranks (`wan.parallel.GuidanceSplit`)."""
    if split_guidance and parallel is None:
        raise ValueError(
            "--split-guidance spreads the guidance passes over the ranks of --sequence-parallel N (N >= 2, "
            "under torchrun); add --sequence-parallel, or drop --split-guidance"
        )
    if parallel is None:
        yield model
        return
    runner = GuidanceSplit(model, parallel) if split_guidance else None
    with sequence_parallel(model, parallel), guidance_runner(runner):
        yield model


def generate_command(args) -> int:
    """`python -m planx_core generate`: plan, render, write video + plan JSON + plan picture; errors exit 2."""
    from ..files.safetensors import CheckpointError

    started, writer = time.perf_counter(), True
    try:
        _check_options(args)
        scene, motion = _texts(args)
        parallel, device = init_from_torchrun(args.sequence_parallel, args.device)
        writer = is_writer()
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        plan = load_plan_file(args.plan) if args.plan else None
        plan_bytes = Path(args.plan).read_bytes() if args.plan else None
        pipe = PlanXPipeline.from_folder(
            args.bundle or EMBEDDED,
            device=device,
            dtype=getattr(torch, getattr(args, "dtype", "float32")),
            offload=getattr(args, "offload", False),
        )
        loaded = time.perf_counter()
        if plan is not None:
            _check_given_plan(pipe, plan, args.plan)
        first = pipe.first_frame(read_image(args.image)) if getattr(args, "image", None) else None
        with _parallel(pipe.bundle.dit, parallel, args.split_guidance):
            result = pipe.generate(
                scene,
                motion,
                plan=plan,
                use_plan=not args.no_plan,
                seed=args.seed,
                steps=args.steps,
                progress=writer and not args.quiet,
                first_frame=first,
            )
        written = _write_outputs(pipe, result, args, plan_bytes) if writer else []
    except (CheckpointError, PlanError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        finish()
    if not writer:
        return 0
    _report(written, result, loaded - started, time.perf_counter() - started, scene, motion, args)
    return 0


def _semanticgen_plan(
    model: SemanticGen, args, scene: str, motion: str, start: SemanticStart | None = None, seed: int | None = None
) -> tuple[Plan | None, int, torch.Tensor | None]:
    """(the continuous plan to render, the video's frame count, stage 1's z_sem `[K, gh, gw, D]` or None):
    --plan's file (its own frame count unless --frames says otherwise, and then it must fit), stage 1's plan with
    `seed` (default --seed; from --image's semantics when given), or none with --no-plan."""
    if args.plan:
        plan = load_plan_file(args.plan)
        frames = plan.num_frames if args.frames is None else args.frames
        return model.check_plan(plan, frames), frames, None
    frames, seed = _frames(args), args.seed if seed is None else seed
    if args.no_plan:
        return None, frames, None
    z = model.plan_semantics(scene, motion, num_frames=frames, seed=seed, start=start)  # [K, gh, gw, D]
    return model.semantic_plan(z, num_frames=frames, scene=scene, motion=motion, seed=seed), frames, z


def _semanticgen_render(model: SemanticGen, args, plan, frames: int, scene, motion, start, parallel, seed: int):
    """Stage 2: the latent `[1, C, T', h, w]` of `plan` (or none) with `seed`, sequence-parallel as asked."""
    with _parallel(model.latent_dit, parallel, args.split_guidance):
        return model.render_latent(plan, scene, motion, num_frames=frames, seed=seed, start=start)


def _semanticgen_best_of(model: SemanticGen, args, scene: str, motion: str, start, parallel, log) -> tuple:
    """(plan, frame count, latent `[1, C, T', h, w]`, frames `[T, H, W, 3]`) of the one of --best-of N videos
    (seeds --seed + 1000 j) whose render lies nearest its own plan (`semanticgen.candidates`); every rank renders
    every candidate, so all keep the same one."""

    def render(seed: int):
        plan, frames, z = _semanticgen_plan(model, args, scene, motion, start, seed)
        latent = _semanticgen_render(model, args, plan, frames, scene, motion, start, parallel, seed)
        video = model.decode(latent)  # [T, H, W, 3]
        return video, z, (plan, frames, latent, video)

    def report(j: int, seed: int, distance: float) -> None:
        log(f"video {j + 1}/{args.best_of} (seed {seed}): {distance:.4f} from its plan")

    return keep_nearest(model, candidate_seeds(args.seed, args.best_of), render, report)[0]


def _frames(args) -> int:
    """The video's frame count when it is not --plan's: --frames, or the long default."""
    return DEFAULT_LONG_FRAMES if args.frames is None else args.frames


def _semanticgen_start(model: SemanticGen, args, scene: str, motion: str, progress: bool) -> SemanticStart | None:
    """The first frame to start from: --image's file, or frame 0 of the --draw-first-frame Plan-X bundle's
    text-to-video for the prompt (same seed; with --draw-lead also its keyframes in that share), or none."""
    if args.image:
        return model.first_frame(read_image(args.image))
    if not args.draw_first_frame:
        return None
    folder = EMBEDDED if args.draw_first_frame == "embedded" else Path(args.draw_first_frame)
    layout, size = read_spec(folder).video, model.spec.size
    if (layout.width, layout.height) != (size, size):
        raise ValueError(
            f"--draw-first-frame {folder}: that Plan-X bundle draws {layout.width}x{layout.height} frames, but the "
            f"SemanticGen model renders {size}x{size}; give a Plan-X bundle of that size (or --image a {size}x{size} "
            f"first frame)"
        )
    pipe = PlanXPipeline.from_folder(folder)
    video = pipe.draw(scene, motion, seed=args.seed, progress=progress)  # [T, H, W, 3]
    return drawn_start(model, video, _frames(args), args.draw_lead, args.draw_sketch)


def _check_start_options(args) -> None:
    """Refuse first-frame, candidate and guidance options that contradict each other, before any model loads."""
    if args.best_of > 1 and (args.plan or args.no_plan):
        raise ValueError(
            "--best-of keeps the video nearest the plan stage 1 made for it, but with --plan or --no-plan stage 1 "
            "does not run; drop --best-of"
        )
    if args.plan_scale is not None and args.no_plan:
        raise ValueError("--plan-scale sets the guidance by the plan, but --no-plan renders without one; drop one")
    if args.image and args.draw_first_frame:
        raise ValueError("--image and --draw-first-frame each give the first frame; keep one of them")
    for option, given in (("--draw-lead", args.draw_lead), ("--draw-sketch", args.draw_sketch < 1.0)):
        if given and not args.draw_first_frame:
            raise ValueError(
                f"{option} takes keyframes from the video --draw-first-frame draws; add --draw-first-frame"
            )
        if given and (args.plan or args.no_plan):
            raise ValueError(
                f"{option} gives stage 1 keyframes of the drawn video, but with --plan or --no-plan stage 1 does not "
                f"run; drop {option} (the drawn first frame still starts the video)"
            )


def semanticgen_command(args) -> int:
    started, writer = time.perf_counter(), True
    try:
        parallel, _ = init_from_torchrun(args.sequence_parallel)
        writer = is_writer()
        if args.threads:
            torch.set_num_threads(args.threads)
        scene, motion = split_prompt(args.prompt)
        video_path, plan_path, _ = output_paths(args.out)
        _check_start_options(args)
        model = SemanticGen.load(args.model or EMBEDDED / "semanticgen")
        model = model.with_windowing(args.window, args.window_semantics, args.window_margin)
        scales = {"semantic_text_scale": args.semantic_text_scale, "plan_scale": args.plan_scale}
        model = model.with_spec(**{name: scale for name, scale in scales.items() if scale is not None})
        loaded = time.perf_counter()
        start = _semanticgen_start(model, args, scene, motion, writer)  # the first frame, read or drawn, is planning
        if args.best_of == 1:
            plan, frames, _ = _semanticgen_plan(model, args, scene, motion, start)
            planned, video = time.perf_counter(), None
            latent = _semanticgen_render(model, args, plan, frames, scene, motion, start, parallel, args.seed)
        else:
            planned, log = time.perf_counter(), print if writer else (lambda _: None)
            plan, frames, latent, video = _semanticgen_best_of(model, args, scene, motion, start, parallel, log)
        if not writer:
            return 0
        video = model.decode(latent) if video is None else video
        with staged() as pairs:
            temp = write_video(video, temp_for(video_path), model.spec.fps, scale=args.scale)
            pairs.append((temp, video_path.with_suffix(temp.suffix)))
            if plan is not None and not args.plan:
                plan_temp = temp_for(plan_path)
                plan_temp.write_text(plan.to_json(indent=1) + "\n", encoding="utf-8")
                pairs.insert(0, (plan_temp, plan_path))
        if plan is not None and not args.plan:
            print(f"wrote    {plan_path}")
    except (CheckpointError, PlanError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        finish()
    done = time.perf_counter()
    spec = model.spec
    print(f"wrote    {video_path} ({frames} frames, window {spec.window}, {spec.window_semantics} semantics)")
    print(
        f"time:    {done - started:.1f} s (load {loaded - started:.1f} s, plan {planned - loaded:.1f} s, "
        f"render {done - planned:.1f} s)"
    )
    return 0
