"""`python -m planx_core eval-drift`: drift of long videos, SemanticGen against windows without a plan.

After SemanticGen (arXiv 2512.20619), Sec. 4 and supplementary B.2: long videos made with
shifted-window attention drift (objects change or vanish late in the video); a global semantic
plan that the windows attend to (each its own span's part, `window_semantics`) should reduce it. The
paper's Delta^M_drift is the absolute difference of a metric between the start and the end of a video;
here the two ends are the first
and the last second, and everything is computed from the frames alone (`world_score.detect`). A
colour is *present* in a second when it is found in at least half of that second's frames (an
object keeps its colour in this world, so colour is its identity; shapes are not used, the tiny
renderer draws them too roughly for the shape classifier):

* identity_first / identity_last: share of the prompt's objects whose colour is present;
  identity_abs_drift = |first - last| (the Delta drift of identity).
* extra_first / extra_last: colours present that the prompt does not have (objects that changed
  colour or appeared from nowhere).
* first_last_jaccard: agreement of the present colour sets of the first and the last second.

Rows, on the same held-out long prompts (`semanticgen.LONG_WORLD`, plain scenes, 4x the training
clip length) and seeds: `semanticgen` (stage 1 plans the whole video, stage 2 renders it with
windows), `windows_no_plan` (the same stage-2 DiT and windows, no semantic tokens), and
`gt_semantics` (stage 2 with the clip's own encoded semantics: the ceiling of the plan route); on request
`semanticgen_i2v` (both stages from the text and the clip's first frame: image-to-video), `gt_semantics_i2v`
(its ceiling: the clip's own semantics, rendered from its first frame), `semanticgen_planx_first` (text to video
from the first frame the embedded Plan-X draws for the prompt, `semanticgen --draw-first-frame`) and
`semanticgen_planx_lead` (also its keyframes in the video's first quarter, `--draw-first-frame --draw-lead 0.25`)
and `semanticgen_planx_sketch` (and stage 1 starts the others from the drawn ones, `--draw-sketch 0.85`).
Writes `<out>/drift.json` and `<out>/drift.md` (atomically).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np

from .. import world
from ..files.atomic import write_text
from ..limits import guidance_scale
from ..pipelines.planx import PlanXPipeline
from ..semanticgen.candidates import best_of
from ..semanticgen.drawn import drawn_start
from ..semanticgen.model import EMBEDDED, SemanticGen, SemanticStart
from ..wan.windows import SEMANTICS
from ..world.score import detect
from ..world.tiny import LONG_WORLD, render_clip_semantics

ROWS = (
    "semanticgen",
    "windows_no_plan",
    "gt_semantics",
    "semanticgen_i2v",
    "gt_semantics_i2v",
    "semanticgen_planx_first",
    "semanticgen_planx_lead",
    "semanticgen_planx_sketch",
)
DRIFT_ROWS = ROWS[:3]  # eval-drift's default rows
DRAWN = {  # `semanticgen --draw-first-frame --draw-lead LEAD --draw-sketch LEVEL` of each drawn row
    "semanticgen_planx_first": (0.0, 1.0),
    "semanticgen_planx_lead": (0.25, 1.0),
    "semanticgen_planx_sketch": (0.25, 0.85),
}
STAGE_1_ROWS = ("semanticgen", "semanticgen_i2v", *DRAWN)  # the rows that need stage 1


def present_colours(frames: np.ndarray) -> set[int]:
    """Palette colours (indices) found in at least half of `frames` `[T, H, W, 3]`."""
    return set(np.flatnonzero(detect(frames).found.mean(axis=0) >= 0.5).tolist())


def drift_scores(frames: np.ndarray, clip: world.Clip, fps: float) -> dict[str, float]:
    """Colour identity of the first and the last second, its drift, extra colours and first/last agreement."""
    n = int(round(fps))
    prompt = {world.COLOURS.index(c) for c in clip.colour}
    first, last = present_colours(frames[:n]), present_colours(frames[-n:])
    union = first | last
    out = {
        "identity_first": len(first & prompt) / len(prompt),
        "identity_last": len(last & prompt) / len(prompt),
        "extra_first": float(len(first - prompt)),
        "extra_last": float(len(last - prompt)),
        "first_last_jaccard": len(first & last) / len(union) if union else 1.0,
    }
    out["identity_drift"] = out["identity_first"] - out["identity_last"]
    out["identity_abs_drift"] = abs(out["identity_drift"])
    return out


def parse_rows(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The rows of a comma-separated `args.rows`; an unknown row, or `args.clips` below 1, is a usage error that
    names the fix (before any model is loaded)."""
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown or not rows:
        parser.error(f"--rows {args.rows!r}: unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if args.clips < 1:
        parser.error(f"--clips {args.clips}: score at least 1 clip")
    return rows


@functools.cache
def embedded_planx() -> PlanXPipeline:
    """The embedded Plan-X, which draws `semanticgen_planx_first`'s first frames (loaded once)."""
    return PlanXPipeline.from_folder()


def row_start(model: SemanticGen, row: str, clip: world.Clip, seed: int) -> SemanticStart | None:
    """The first frame a row starts from: the clip's own (`*_i2v`), the embedded Plan-X's video for the clip's
    texts with `seed` (`semanticgen_planx_*`: its frame 0, its keyframes in the row's `DRAWN` lead share, and the
    sketch of the others), or none."""
    if row.endswith("_i2v"):
        return model.first_frame(clip.frames[0])
    if row in DRAWN:
        video = embedded_planx().draw(clip.scene, clip.motion, seed=seed, progress=False)  # [T, H, W, 3]
        return drawn_start(model, video, clip.config.num_frames, *DRAWN[row])
    return None


def render_row(model: SemanticGen, row: str, clip: world.Clip, seed: int, candidates: int = 1) -> np.ndarray:
    """A row's video `[T, H, W, 3]` of `clip` with `seed`; rows with stage 1 keep the best of `candidates`
    (`semanticgen.candidates.best_of`)."""
    frames = clip.config.num_frames
    start = row_start(model, row, clip, seed)
    if row in STAGE_1_ROWS:
        return best_of(model, clip.scene, clip.motion, num_frames=frames, seed=seed, count=candidates, start=start)[0]
    if candidates != 1:
        raise ValueError(f"row {row!r} has no stage-1 plan to keep candidates by; ask for 1 candidate")
    if row == "windows_no_plan":
        return model.generate(clip.scene, clip.motion, num_frames=frames, seed=seed, use_semantics=False)[0]
    return render_clip_semantics(model, clip, use_semantics=True, seed=seed, start=start)


def evaluate(model: SemanticGen, clips: list[world.Clip], rows=ROWS, log=print) -> dict:
    """Mean drift scores of every row over `clips` (the same seed per clip in every row)."""
    results = {}
    for row in rows:
        start, per_clip = time.monotonic(), []
        for i, clip in enumerate(clips):
            per_clip.append(drift_scores(render_row(model, row, clip, seed=i), clip, model.spec.fps))
        results[row] = {k: round(float(np.mean([p[k] for p in per_clip])), 4) for k in per_clip[0]}
        log(f"[drift] {row}: {results[row]} ({time.monotonic() - start:.0f} s)")
    return results


def rows_report(title: str, results: dict, keys: tuple[str, ...]) -> str:
    """A markdown report: the `# title`, then a table of `results` (one line per row, `keys` to 3 decimals)."""
    lines = [f"# {title}", "", "| row | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {row} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |" for row, r in results.items()]
    return "\n".join(lines) + "\n"


def save_report(out: Path, stem: str, results: dict, text: str) -> None:
    """`<out>/<stem>.json` (the results) and `<out>/<stem>.md` (the report `text`), each written atomically; the
    report is printed."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{stem}.json", json.dumps(results, indent=2))
    write_text(out / f"{stem}.md", text)
    print(text)


def report(results: dict, clips: int, spec, frames: int) -> str:
    keys = ("identity_first", "identity_last", "identity_abs_drift", "extra_first", "extra_last", "first_last_jaccard")
    title = (
        f"Long-video drift ({clips} held-out prompts, {frames} frames = 4x the training clip, window "
        f"{spec.window} latent frames, {spec.window_semantics} semantics, margin {spec.window_margin}; guidance: "
        f"stage-1 text {spec.semantic_text_scale}, stage-2 text {spec.text_scale}, plan {spec.plan_scale})"
    )
    return rows_report(title, results, keys)


def add_guidance_arguments(p: argparse.ArgumentParser) -> None:
    """The three guidance scales an evaluation may set instead of the model's (`guided`)."""
    p.add_argument("--semantic-text-scale", type=guidance_scale, help="stage-1 text guidance (default: the model's)")
    p.add_argument("--text-scale", type=guidance_scale, help="stage-2 text guidance (default: the model's)")
    p.add_argument("--plan-scale", type=guidance_scale, help="stage-2 semantic plan guidance (default: the model's)")


def guided(model: SemanticGen, a: argparse.Namespace) -> SemanticGen:
    """The model with the guidance scales `add_guidance_arguments` read, where given."""
    changes = {"semantic_text_scale": a.semantic_text_scale, "text_scale": a.text_scale, "plan_scale": a.plan_scale}
    return model.with_spec(**{k: v for k, v in changes.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m planx_core eval-drift", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(EMBEDDED / "semanticgen"), help="SemanticGen folder")
    p.add_argument("--clips", type=int, default=24, help="held-out long prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", type=int, default=None, help="stage-2 window (default: the model's)")
    p.add_argument(
        "--window-semantics",
        choices=SEMANTICS,
        default=None,
        help="stage-2 windows see their own span's semantics (local) or all (global); default: the model's",
    )
    p.add_argument("--window-margin", type=int, default=None, help="local: latent frames past each window end")
    p.add_argument("--rows", default=",".join(DRIFT_ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    add_guidance_arguments(p)
    p.add_argument("--out", default="eval_report/drift")
    a = p.parse_args(argv)
    rows = parse_rows(p, a)
    model = SemanticGen.load(a.model, need_semantic=bool(set(STAGE_1_ROWS) & set(rows)))
    model = guided(model.with_windowing(a.window, a.window_semantics, a.window_margin), a)
    clips = [
        world.make_clip(world.clip_seed(a.seed, 1, i), LONG_WORLD, split="heldout", kind="plain")
        for i in range(a.clips)
    ]
    results = evaluate(model, clips, rows)
    save_report(Path(a.out), "drift", results, report(results, a.clips, model.spec, LONG_WORLD.num_frames))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
