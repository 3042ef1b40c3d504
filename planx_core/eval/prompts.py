"""`python -m planx_core eval-prompts`: do videos follow their prompts? Held-out prompts, scored from the mp4s.

For each held-out prompt (`prompt_set`), text-to-video and image-to-video from a hand-drawn first
frame, and for the README's own example (its shipped first frame, seeds 0-4), this generates the
clip as `generate` does, writes the mp4, reads the mp4 back and scores its pixels with
`pixel_check` (which shares no code with the world, its scorer or the training). Writes
`report.md`, `scores.json`, the videos and `readme_strip.png` (the README example's frames).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .. import EMBEDDED
from ..files.video import read_image, read_video, write_png, write_video
from ..pipelines import PlanXPipeline, split_prompt
from .pixel_check import check_video
from .prompt_set import HELDOUT, README_PROMPT, first_frame, prompt_of

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
    return {
        "prompt": prompt,
        "seed": seed,
        "mode": "t2v" if image is None else "i2v",
        "video": str(path),
        "follows": check.follows,
        "stages": f"{hits}/{total}",
        "visible": check.visible,
    }


def run_all(pipe: PlanXPipeline, out: Path, seeds: list[int], readme_seeds: list[int]) -> list[dict]:
    rows = []
    for index, item in enumerate(HELDOUT):
        prompt = prompt_of(*item)
        for seed in seeds:
            rows.append(run_clip(pipe, prompt, seed, None, out / f"t2v_{index:02d}_s{seed}.mp4"))
            rows.append(run_clip(pipe, prompt, seed, first_frame(*item), out / f"i2v_{index:02d}_s{seed}.mp4"))
    image = read_image(EMBEDDED / "examples" / "red_circle.png")
    for seed in readme_seeds:
        row = run_clip(pipe, README_PROMPT, seed, image, out / f"readme_s{seed}.mp4")
        rows.append({**row, "mode": "readme"})
    return rows


def summary(rows: list[dict]) -> dict[str, float]:
    out = {}
    for mode in ("t2v", "i2v", "readme"):
        picked = [r["follows"] for r in rows if r["mode"] == mode]
        if picked:
            out[mode] = sum(picked) / len(picked)
    held = [r["follows"] for r in rows if r["mode"] in ("t2v", "i2v")]
    out["held_out"] = sum(held) / len(held) if held else float("nan")
    return out


def report(rows: list[dict], scores: dict[str, float], bundle: str) -> str:
    lines = [
        f"# Prompt adherence: {bundle}",
        "",
        "Scored from the decoded mp4s by `planx_core/eval/pixel_check.py`.",
        "",
        "| share of clips that follow every stage | value |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {value:.2f} |" for name, value in scores.items()]
    lines += ["", "| mode | seed | prompt | stages | follows |", "| --- | --- | --- | --- | --- |"]
    lines += [
        f"| {r['mode']} | {r['seed']} | {r['prompt']} | {r['stages']} | {'yes' if r['follows'] else 'no'} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


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
    rows = run_all(pipe, out, args.seeds, args.readme_seeds)
    scores = summary(rows)
    (out / "scores.json").write_text(json.dumps({"summary": scores, "clips": rows}, indent=1) + "\n")
    (out / "report.md").write_text(report(rows, scores, args.bundle))
    readme = [r for r in rows if r["mode"] == "readme"]
    if readme:
        readme_strip(Path(readme[0]["video"]), out / "readme_strip.png")
    print(report(rows, scores, args.bundle).split("\n\n| mode")[0])
    print(f"wrote {out}/report.md in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
