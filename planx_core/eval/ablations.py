"""`python -m planx_core.eval`: the Plan-X ablations on the synthetic world's held-out compositions.

After Plan-X (arXiv 2511.17986), Table 2 / Fig. 5: the full model against text only, a plan
without 3D RoPE, the DiT without end-to-end training, ground-truth plans (the ceiling), and
semantic transfer. Everything is scored from the generated frames alone (`world_score`: objects
found by colour and tracked), against each clip's exact ground truth.

Rows (every row renders the same clips with the same seed):
- `full`: the planner's plan, the bundle's DiT.
- `text_only`: the same DiT from the text alone (no plan).
- `no_rope`: the planner's plan with its 3D RoPE positions removed at sampling (the plan keys and
  the queries looking at them are not rotated). The paper retrains without RoPE; this measures
  what the trained model does without the alignment, and is labelled so in the report.
- `no_e2e`: the planner's plan rendered by the DiT before the end-to-end stage (`--no-e2e`,
  a folder with its dit.safetensors and branch.safetensors; default `<bundle>/no_e2e`).
- `gt_plan`: the TA-Tok codes of the clip's own keyframes (the planner replaced by the truth).
- `transfer` (separate table): order minimal pairs (A, B) share objects, start and background and
  differ only in stage order; A's ground-truth plan is rendered with B's texts. Accuracy against A
  = the motion follows the plan; against B = it follows the text.

`--mode i2v` (default): Wan 2.2 TI2V, the clip's first frame is given to the planner (keyframe 0
locked to its codes) and pinned as latent frame 0, so every row starts from the same picture and
differs only in how it moves. `--mode t2v`: nothing is given; the planner draws keyframe 0.
Planner accuracy: cell accuracy of its plans against the ground-truth codes over keyframes 1..K-1
(all cells, and object cells), keyframe moves, and the share of clips whose plan moves every object as the truth
does, with the full row's completeness on those clips and on the others. `--split train` scores unseen clips of
the training compositions instead: the validation row, for choosing settings without looking at the held-out rows.

Writes `<out>/report.md` (tables), `<out>/scores.json` and `<out>/figure.png` (a few clips:
frames of each row and the plans).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import world
from ..pipelines.bundle import EMBEDDED, load_bundle
from ..pipelines.planx import FirstFrame, PlanXPipeline
from ..plan.core import Plan
from ..planner.moves import code_moves
from ..semantic_branch import load_branch
from ..tatok import plan_from_video
from ..wan.dit_files import load_dit
from ..world import score as world_score
from ..world.labels import move_confusion, share_agreeing

ROWS = {
    "full": "Plan-X: the planner's plan",
    "text_only": "text only (no plan)",
    "no_rope": "plan without 3D RoPE (removed at sampling)",
    "no_e2e": "plan, DiT without end-to-end training",
    "gt_plan": "ground-truth plan (ceiling)",
}
METRICS = ("accuracy", "completeness", "fidelity", "consistency", "trajectory_error")


@dataclass
class ClipInputs:
    """What every row of one clip shares: the first frame (i2v), the truth plan, the planner's plan."""

    first: FirstFrame | None
    truth: Plan
    planned: Plan | None = None


class Evaluator:
    """Renders the rows of one bundle (and its pre-e2e DiT) on clips, with fixed seeds."""

    def __init__(
        self, pipe: PlanXPipeline, no_e2e: PlanXPipeline | None, mode: str, seed: int, steps: int | None = None
    ):
        self.pipe, self.no_e2e, self.mode, self.seed, self.steps = pipe, no_e2e, mode, seed, steps

    def inputs(self, clip: world.Clip) -> ClipInputs:
        v = self.pipe.spec.video
        truth = plan_from_video(
            self.pipe.bundle.tatok,
            torch.from_numpy(clip.frames),
            v.fps,
            keyframe_rate=v.keyframe_rate,
            grid=v.grid,
            codebook_name=self.pipe.spec.codebook_name,
        )
        first = self.pipe.first_frame(clip.frames[0]) if self.mode == "i2v" else None
        return ClipInputs(first, truth)

    def planned(self, clip: world.Clip, inputs: ClipInputs) -> Plan:
        if inputs.planned is None:
            inputs.planned = self.pipe.plan(
                clip.scene, clip.motion, seed=self.seed, first_frame=inputs.first, progress=False
            )
        return inputs.planned

    def render(
        self, row: str, clip: world.Clip, inputs: ClipInputs, scene: str | None = None, motion: str | None = None
    ) -> np.ndarray:
        """Frames `[T, H, W, 3]` of one row for one clip (texts default to the clip's own)."""
        pipe, plan, rope = self.pipe, None, None
        if row in ("full", "no_rope", "no_e2e"):
            plan = self.planned(clip, inputs)
        elif row == "gt_plan":
            plan = inputs.truth
        if row == "no_rope":
            rope = False
        if row == "no_e2e":
            pipe = self.no_e2e
        return pipe.render(
            plan,
            clip.scene if scene is None else scene,
            clip.motion if motion is None else motion,
            seed=self.seed,
            steps=self.steps,
            rope=rope,
            first_frame=inputs.first,
            progress=False,
        )


def plan_accuracy(
    planned: list[Plan], truth: list[Plan], background: int, exact: list[bool] | None = None
) -> dict[str, float]:
    """Cell accuracy of plans against the truth over keyframes 1..: over all cells, and over the
    cells where the truth is not `background`; their keyframe moves (as `move_agreement`), the share of the
    steps where the truth keeps an object still that the plan keeps still (`move_confusion`; nan without any),
    and the share of clips whose plan is exact (`exact_moves`, passed in when the caller has it)."""
    plans = torch.stack([p.token_tensor() for p in planned])  # [N, K, g*g]
    truths = torch.stack([t.token_tensor() for t in truth])  # [N, K, g*g]
    hit = plans[:, 1:] == truths[:, 1:]  # [N, K-1, g*g]
    moves = move_confusion(plans, truths, planned[0].grid[1], background)
    still = sum(n for (want, _), n in moves.items() if want == "still")
    exact = exact_moves(planned, truth, background) if exact is None else exact
    return {
        "plan_cells": float(hit.float().mean()),
        "plan_objects": float(hit[truths[:, 1:] != background].float().mean()),
        "plan_moves": share_agreeing(moves),
        "plan_still": moves[("still", "still")] / still if still else math.nan,
        "plan_exact": float(np.mean(exact)),
    }


def exact_moves(planned: list[Plan], truth: list[Plan], background: int) -> list[bool]:
    """Per clip: every code of the truth's keyframe 0 makes the truth's `code_moves` in the plan: the plan says
    which object goes which way when, whatever its exact cells."""
    width, out = planned[0].grid[1], []
    for p, t in zip(planned, truth):
        got = code_moves(p.token_tensor(), width, background)
        out.append(all(got.get(code) == want for code, want in code_moves(t.token_tensor(), width, background).items()))
    return out


def completes_by_plan(done: list[float], exact: list[bool]) -> dict[str, float]:
    """The full row's completeness (`done`, per clip) on the clips whose plan is exact and on the others (nan
    where there are none): how far right plans carry the videos."""
    pick = [[d for d, e in zip(done, exact) if e == want] for want in (True, False)]
    return {key: float(np.mean(v)) if v else math.nan for key, v in zip(("full_when_exact", "full_otherwise"), pick)}


def background_code(truth: list[Plan]) -> int:
    """The most frequent code of the ground-truth plans (the background's)."""
    return int(torch.cat([t.token_tensor().flatten() for t in truth]).mode().values)


def no_e2e_pipeline(pipe: PlanXPipeline, folder: Path | None) -> PlanXPipeline | None:
    """The bundle with the DiT and branch of `folder` (the dit stage's export before e2e), or None."""
    if folder is None or not (folder / "dit.safetensors").is_file():
        return None
    device = pipe.device
    bundle = replace(
        pipe.bundle,
        dit=load_dit(folder / "dit.safetensors").to(device).eval(),
        branch=load_branch(folder / "branch.safetensors").to(device).eval(),
    )
    return PlanXPipeline(bundle)


def run_rows(ev: Evaluator, clips: list[world.Clip], rows: list[str], keep: int):
    """Scores per row, planner plans and the first `keep` clips' frames per row."""
    frames = {r: [] for r in rows}
    inputs = []
    for i, clip in enumerate(clips):
        inputs.append(ev.inputs(clip))
        for row in rows:
            frames[row].append(ev.render(row, clip, inputs[-1]))
        print(f"[eval] clip {i + 1}/{len(clips)}", file=sys.stderr, flush=True)
    per_clip = {r: [world_score.score_clip(f, c) for f, c in zip(frames[r], clips)] for r in rows}
    scores = {r: world_score.summarize(per_clip[r]) for r in rows}
    planned = [x.planned for x in inputs if x.planned is not None]
    if planned:
        truth = [x.truth for x in inputs]
        background = background_code(truth)
        exact = exact_moves(planned, truth, background)
        scores["planner"] = plan_accuracy(planned, truth, background, exact)
        if "full" in per_clip:
            scores["planner"] |= completes_by_plan([s["completeness"] for s in per_clip["full"]], exact)
    return scores, {r: f[:keep] for r, f in frames.items()}, inputs[:keep]


def run_transfer(ev: Evaluator, pairs: list[tuple[world.Clip, world.Clip]]) -> dict[str, float]:
    """A's ground-truth plan rendered with B's texts: accuracy against A (the plan) and against B (the text)."""
    follows_plan, follows_text = [], []
    for a, b in pairs:
        inputs = ev.inputs(a)  # same first frame as b: a pair shares objects and start
        frames = ev.render("gt_plan", a, inputs, scene=b.scene, motion=b.motion)
        follows_plan.append(world_score.score_clip(frames, a)["accuracy"])
        follows_text.append(world_score.score_clip(frames, b)["accuracy"])
    return {
        "follows_plan": float(np.mean(follows_plan)),
        "follows_text": float(np.mean(follows_text)),
        "count": len(pairs),
    }


# ----------------------------------------------------------------------------- report


def _cell(value: float, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.1f}" if key == "trajectory_error" else f"{value:.3f}"


_SPLIT_NAMES = {"heldout": "held-out clips", "train": "validation clips (training compositions, unseen clips)"}


def report_markdown(scores: dict, transfer: dict | None, meta: dict) -> str:
    split = meta["split"]
    lines = [
        f"# Plan-X evaluation: {meta['bundle']}",
        "",
        f"{meta['clips']} {_SPLIT_NAMES[split]} (world split `{split}`, seed {meta['seed']}), mode `{meta['mode']}`, "
        f"{meta['steps']} sampling steps; {meta['seconds']:.0f} s on {meta['device']}.",
        "",
        "| row | " + " | ".join(METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for row, label in ROWS.items():
        if row in scores:
            lines.append(f"| {label} | " + " | ".join(_cell(scores[row][k], k) for k in METRICS) + " |")
    if "planner" in scores:
        p = scores["planner"]
        lines += [
            "",
            f"Planner plan accuracy (keyframes 1.., against the TA-Tok codes of the real keyframes): "
            f"all cells {p['plan_cells']:.3f}, object cells {p['plan_objects']:.3f}; keyframe moves "
            f"{p.get('plan_moves', float('nan')):.3f} (each object's step from keyframe to keyframe, as the truth's); "
            f"objects the truth keeps still kept still in {p.get('plan_still', float('nan')):.3f} of their steps.",
        ]
        if "full_when_exact" in p:
            lines += [
                "",
                f"Plans whose every object moves as the truth's at every keyframe step: {p['plan_exact']:.3f} of "
                f"clips; the full row's videos complete {_cell(p['full_when_exact'], '')} of those and "
                f"{_cell(p['full_otherwise'], '')} of the others.",
            ]
    if transfer:
        lines += [
            "",
            f"Semantic transfer ({transfer['count']} order minimal pairs; plan of A, texts of B): "
            f"stage accuracy against A (follows the plan) {transfer['follows_plan']:.3f}, "
            f"against B (follows the text) {transfer['follows_text']:.3f}.",
        ]
    lines += [
        "",
        "trajectory_error is in pixels (lower is better); the other columns are in [0, 1], higher is better.",
        "Command: `" + meta["command"] + "`",
        "",
    ]
    return "\n".join(lines)


def figure(pipe: PlanXPipeline, clips, frames: dict, inputs: list[ClipInputs], path: Path) -> Path:
    """One block per clip: a row of frames (every 4th) per ablation row, then the planner's plan picture."""
    from PIL import Image

    blocks = []
    for i, clip in enumerate(clips):
        strips = []
        for row, per_clip in frames.items():
            strip = np.concatenate(list(per_clip[i][::4]), axis=1)  # [H, 5W, 3]
            strips.append(_labelled(strip, row))
        truth = np.concatenate(list(clip.frames[::4]), axis=1)
        blocks.append(np.concatenate([_labelled(truth, "truth")] + strips, axis=0))
        plan = inputs[i].planned or inputs[i].truth
        picture = (pipe.plan_picture(plan, words=False).numpy() * 255).astype(np.uint8)
        blocks.append(_fit_width(picture, blocks[-1].shape[1]))
    image = np.concatenate(blocks, axis=0)
    Image.fromarray(image).save(path)
    return path


def _labelled(strip: np.ndarray, label: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    pad = np.full((strip.shape[0], 72, 3), 255, np.uint8)
    board = Image.fromarray(np.concatenate([pad, strip], axis=1))
    ImageDraw.Draw(board).text((2, 2), label, fill=(0, 0, 0))
    return np.asarray(board)


def _fit_width(image: np.ndarray, width: int) -> np.ndarray:
    from PIL import Image

    height = max(1, round(image.shape[0] * width / image.shape[1]))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m planx_core.eval", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default=str(EMBEDDED), help="bundle folder (default: the embedded model)")
    p.add_argument("--no-e2e", help="folder with the DiT before end-to-end training (default: <bundle>/no_e2e)")
    p.add_argument("--clips", type=int, default=24, help="held-out clips scored per row")
    p.add_argument("--pairs", type=int, default=8, help="order minimal pairs for semantic transfer (0 = skip)")
    p.add_argument("--mode", choices=("i2v", "t2v"), default="i2v", help="first frame given (i2v) or not (t2v)")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows to run")
    p.add_argument("--seed", type=int, default=0, help="seed of the clips, the planner and the DiT noise")
    p.add_argument(
        "--split",
        choices=world.SPLITS,
        default="heldout",
        help="heldout: compositions never trained on (the evaluation); train: unseen clips of the training "
        "compositions (the evaluation's own stream), for choosing settings without looking at the held-out rows",
    )
    p.add_argument("--steps", type=int, help="DiT sampling steps (default: the bundle's)")
    p.add_argument("--figure-clips", type=int, default=3, help="clips drawn in figure.png")
    p.add_argument("--out", default="eval_report", help="folder for report.md, scores.json and figure.png")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or args.clips < 1:
        print(f"error: --rows {unknown} unknown (choose from {', '.join(ROWS)}) or --clips < 1", file=sys.stderr)
        return 2
    started = time.perf_counter()
    pipe = PlanXPipeline(load_bundle(args.bundle, device=args.device))
    no_e2e = no_e2e_pipeline(pipe, Path(args.no_e2e) if args.no_e2e else Path(args.bundle) / "no_e2e")
    if "no_e2e" in rows and no_e2e is None:
        print(
            "warning: no DiT before end-to-end training found (pass --no-e2e FOLDER with dit.safetensors and "
            "branch.safetensors); skipping the no_e2e row",
            file=sys.stderr,
        )
        rows.remove("no_e2e")
    ev = Evaluator(pipe, no_e2e, args.mode, args.seed, args.steps)
    clips = world.dataset(args.split, args.clips, seed=args.seed)
    with torch.inference_mode():
        scores, frames, inputs = run_rows(ev, clips, rows, args.figure_clips)
        transfer = run_transfer(ev, world.order_pairs(args.seed, args.pairs, split=args.split)) if args.pairs else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "bundle": pipe.spec.name,
        "clips": len(clips),
        "seed": args.seed,
        "split": args.split,
        "mode": args.mode,
        "steps": args.steps or pipe.spec.sampling.steps,
        "seconds": time.perf_counter() - started,
        "device": f"{args.device} ({torch.get_num_threads()} threads)",
        "command": "python -m planx_core.eval " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    (out / "report.md").write_text(report_markdown(scores, transfer, meta), encoding="utf-8")
    (out / "scores.json").write_text(json.dumps({"rows": scores, "transfer": transfer, **meta}, indent=1) + "\n")
    if args.figure_clips:
        figure(pipe, clips[: args.figure_clips], frames, inputs, out / "figure.png")
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
