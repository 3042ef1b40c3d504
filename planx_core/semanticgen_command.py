"""`python -m planx_core semanticgen`: a (long) video from a prompt with the embedded SemanticGen.

Stage 1 plans the whole video's semantics in one go; stage 2 renders it with shifted-window
attention (`semanticgen`). Writes the video, the continuous plan JSON beside it (`.plan.json`),
and prints the time of each stage. `--plan FILE` renders an (edited) continuous plan instead.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .plan import Plan, PlanError
from .pipeline import output_paths, split_prompt
from .semanticgen import EMBEDDED, SemanticGen
from .video_io import write_video


def run(args) -> int:
    started = time.perf_counter()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        scene, motion = split_prompt(args.prompt)
        model = SemanticGen.load(args.model or EMBEDDED / "semanticgen")
        if args.window is not None:
            model = model.with_spec(window=args.window)
        loaded = time.perf_counter()
        z = None
        if args.plan:
            z = model.plan_vectors(Plan.from_json(Path(args.plan).read_bytes()).validate())
        elif not args.no_plan:
            z = model.plan_semantics(scene, motion, num_frames=args.frames, seed=args.seed)
        planned = time.perf_counter()
        frames = model.decode(model.render_latent(z, scene, motion, num_frames=args.frames, seed=args.seed))
        video_path, plan_path, _ = output_paths(args.out)
        write_video(frames, video_path, model.spec.fps, scale=args.scale)
        if z is not None and not args.plan:
            plan = model.semantic_plan(z, num_frames=args.frames, scene=scene, motion=motion, seed=args.seed)
            plan_path.write_text(plan.to_json(indent=1) + "\n", encoding="utf-8")
            print(f"wrote    {plan_path}")
    except (CheckpointError, PlanError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    done = time.perf_counter()
    print(f"wrote    {video_path} ({args.frames} frames, window {model.spec.window})")
    print(f"time:    {done - started:.1f} s (load {loaded - started:.1f} s, plan {planned - loaded:.1f} s, "
          f"render {done - planned:.1f} s)")
    return 0
