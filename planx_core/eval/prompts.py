"""`python -m planx_core eval-prompts`: do videos follow their prompts? Held-out prompts, scored from the mp4s.

For each held-out prompt (`prompt_set`), text-to-video and image-to-video from a hand-drawn first
frame, and for the README's own example (its shipped first frame, seeds 0-4), this generates the
clip as `generate` does, writes the mp4, reads the mp4 back and scores its pixels with
`pixel_check` (which shares no code with the world, its scorer or the training). Writes
`report.md`, `scores.json`, the videos and `readme_strip.png` (the README example's frames). `--set validation`
runs the training-split prompts of the same form instead, for choosing sampling settings.

Beside the videos' score, a diagnosis of the plans: the planned move of the plan's object between keyframes
(`planner.moves.code_moves` of its largest code of keyframe 0) against the stage each keyframe is written under
(`planner.prompt.keyframe_cues`, the planner's own timing rule), so a miss shows whether the plan or the render
went wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .. import EMBEDDED
from ..files.atomic import write_text
from ..files.video import read_image, read_video, write_png, write_video
from ..pipelines import PlanXPipeline, split_prompt
from ..plan import Plan
from ..planner.moves import code_moves
from ..planner.prompt import keyframe_cues
from .pixel_check import check_video
from .prompt_set import README_PROMPT, SETS, first_frame, prompt_of

SCALE = 4  # as `generate` writes its videos


def run_clip(pipe: PlanXPipeline, prompt: str, seed: int, image, out: Path) -> dict:
    """Generate one clip, round-trip it through an mp4 and score that file's pixels."""
    scene, motion = split_prompt(prompt)
    first = None if image is None else pipe.first_frame(image)
    result = pipe.generate(scene, motion, seed=seed, progress=False, first_frame=first)
    path = write_video(result.frames, out, pipe.spec.video.fps, scale=SCALE)
    frames, _ = read_video(path)  # [T, H, W, 3] decoded from the file
    check = check_video(frames, prompt)
    hits, total = check.stage_hits
    planned, wanted = plan_moves(result.plan), wanted_moves(motion, len(result.plan.keyframes), result.plan.duration)
    return {
        "prompt": prompt,
        "seed": seed,
        "mode": "t2v" if image is None else "i2v",
        "video": str(path),
        "follows": check.follows,
        "stages": f"{hits}/{total}",
        "visible": check.visible,
        "plan": " ".join(planned),
        "plan_follows": planned == wanted,
    }


def plan_moves(plan: Plan) -> list[str]:
    """The moves between keyframes of the plan's object: its largest code in keyframe 0 other than the background
    (the code of most cells in the plan)."""
    codes = plan.token_tensor()  # [K, gh*gw]
    background = int(codes.flatten().mode().values)
    first = codes[0][codes[0] != background]  # [n] keyframe 0's object cells
    if not first.numel():
        return ["gone"] * (codes.shape[0] - 1)
    return code_moves(codes, plan.grid[1], background)[int(first.mode().values)]


def wanted_moves(motion: str, num_keyframes: int, duration: float) -> list[str]:
    """The direction each keyframe step should take: the last word of the stage it is written under."""
    cues = keyframe_cues(motion, num_keyframes, (num_keyframes - 1) / duration, duration)[1:]
    return [cue.split()[-1] for cue in cues]


def run_all(pipe: PlanXPipeline, out: Path, seeds: list[int], readme_seeds: list[int], items=SETS["heldout"]):
    """Every prompt of `items` at every seed, text- and image-to-video, then the README example."""
    rows = []
    for index, item in enumerate(items):
        prompt = prompt_of(*item)
        for seed in seeds:
            rows.append(run_clip(pipe, prompt, seed, None, out / f"t2v_{index:02d}_s{seed}.mp4"))
            rows.append(run_clip(pipe, prompt, seed, first_frame(*item), out / f"i2v_{index:02d}_s{seed}.mp4"))
    image = read_image(EMBEDDED / "examples" / "red_circle.png")
    for seed in readme_seeds:
        row = run_clip(pipe, README_PROMPT, seed, image, out / f"readme_s{seed}.mp4")
        rows.append({**row, "mode": "readme"})
    return rows


MODES = ("t2v", "i2v", "readme")


def shares(rows: list[dict], key: str) -> dict[str, float]:
    """The share of clips whose `key` is true, per mode that has clips."""
    out = {}
    for mode in MODES:
        picked = [r[key] for r in rows if r["mode"] == mode]
        if picked:
            out[mode] = sum(picked) / len(picked)
    return out


def summary(rows: list[dict], name: str = "held_out") -> dict[str, float]:
    """The share of videos that follow every stage, per mode and over the set's prompts (`name`)."""
    held = [r["follows"] for r in rows if r["mode"] in ("t2v", "i2v")]
    return {**shares(rows, "follows"), name: sum(held) / len(held) if held else float("nan")}


def report(rows: list[dict], scores: dict[str, float], plans: dict[str, float], bundle: str) -> str:
    lines = [
        f"# Prompt adherence: {bundle}",
        "",
        "Scored from the decoded mp4s by `planx_core/eval/pixel_check.py`.",
        "",
        "| share of clips that follow every stage | value |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {value:.2f} |" for name, value in scores.items()]
    lines += ["", "| share of plans whose object moves as every stage says | value |", "| --- | --- |"]
    lines += [f"| {name} | {value:.2f} |" for name, value in plans.items()]
    head = "| mode | seed | prompt | stages | follows | planned moves | plan follows |"
    lines += ["", head, "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [
        f"| {r['mode']} | {r['seed']} | {r['prompt']} | {r['stages']} | {_yes(r['follows'])} | {r['plan']} "
        f"| {_yes(r['plan_follows'])} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def readme_strip(path: Path, out: Path) -> Path:
    """Every second frame of the README example's video, side by side, at the video's scale."""
    frames, _ = read_video(path)  # [T, H, W, 3]
    strip = np.concatenate(list(frames[::2]), axis=1)  # [H, W * ceil(T / 2), 3]
    return write_png(strip, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m planx_core eval-prompts", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default=str(EMBEDDED), help="bundle folder (default: the embedded model)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the held-out prompts (default 0)")
    p.add_argument("--readme-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument(
        "--set",
        choices=tuple(SETS),
        default="heldout",
        help="heldout: the check (compositions never trained on); validation: training-split compositions in "
        "the same form, for choosing sampling settings without looking at the check",
    )
    p.add_argument("--out", default="eval_report/prompts", help="output folder")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pipe = PlanXPipeline.from_folder(args.bundle)
    rows = run_all(pipe, out, args.seeds, args.readme_seeds, SETS[args.set])
    scores = summary(rows, "held_out" if args.set == "heldout" else args.set)
    plans = shares(rows, "plan_follows")
    write_text(out / "scores.json", json.dumps({"summary": scores, "plans": plans, "clips": rows}, indent=1) + "\n")
    text = report(rows, scores, plans, args.bundle)
    write_text(out / "report.md", text)
    readme = [r for r in rows if r["mode"] == "readme"]
    if readme:
        readme_strip(Path(readme[0]["video"]), out / "readme_strip.png")
    print(text.split("\n\n| mode")[0])
    print(f"wrote {out}/report.md in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
