"""`python -m planx_core eval-semanticgen`: SemanticGen's adherence to the prompt on held-out 17-frame clips.

Issue 19's measure of stage 1 (after SemanticGen, arXiv 2512.20619: stage 1 plans the video's semantics from the
text, stage 2 renders them): held-out compositions of the training clip length (`world.tiny.SHORT_WORLD`, clip i
made from `world.clip_seed(seed, 1, i)`, any kind), rendered by the rows of `eval.drift` (`semanticgen`: both
stages from the text; `windows_no_plan`: stage 2 without semantic tokens; `gt_semantics`: stage 2 from the clip's
own encoded semantics, the ceiling of what stage 1 can give; `semanticgen_i2v`: both stages from the text and the
clip's first frame; `gt_semantics_i2v`: its ceiling, stage 2 from the clip's semantics and first frame;
`semanticgen_planx_first`: text to video from the first frame the embedded Plan-X draws for the texts;
`semanticgen_planx_lead`: also from its keyframes in the first quarter; `semanticgen_planx_sketch`: and stage 1
starts the later keyframes from the drawn ones, noised) and scored from the decoded frames by
`world.score`, the scorer of the Plan-X table (`python -m planx_core.eval`), so the `semanticgen` and
`semanticgen_planx_*` rows compare with its full row at `--mode t2v` and `semanticgen_i2v`
with its full row at the default `--mode i2v`.
Every row renders clip i with seed i (`--best-of N`: rows with stage 1 keep the best of N videos, seeds
i + 1000 j, by their own plan, `semanticgen.candidates`). Writes `<out>/adherence.json` and `<out>/adherence.md`
(atomically).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .. import world
from ..limits import bounded
from ..semanticgen.model import EMBEDDED, SemanticGen
from ..world import score as world_score
from ..world.tiny import SHORT_WORLD
from .drift import (
    ROWS,
    STAGE_1_ROWS,
    add_guidance_arguments,
    guided,
    parse_rows,
    render_row,
    rows_report,
    save_report,
)

METRICS = ("accuracy", "completeness", "fidelity", "consistency")


def heldout_clips(count: int, seed: int = 0, split: str = "heldout") -> list[world.Clip]:
    """The held-out 17-frame clips of the table: clip i from `world.clip_seed(seed, 1, i)` (`split="train"`: unseen
    clips of the training compositions from the same stream, for choosing settings without the held-out rows)."""
    return [world.make_clip(world.clip_seed(seed, 1, i), SHORT_WORLD, split=split) for i in range(count)]


def evaluate(model: SemanticGen, clips: list[world.Clip], rows=ROWS, log=print, candidates: int = 1) -> dict:
    """`world.score` means of every row over `clips` (clip i rendered with seed i in every row)."""
    results = {}
    for row in rows:
        start = time.monotonic()
        frames = [
            render_row(model, row, clip, seed=i, candidates=candidates) for i, clip in enumerate(clips)
        ]  # each [T, H, W, 3]
        scores = world_score.score_many(frames, clips)
        results[row] = {k: round(float(scores[k]), 4) for k in METRICS} | {"count": len(clips)}
        log(f"[adherence] {row}: {results[row]} ({time.monotonic() - start:.0f} s)")
    return results


def report(results: dict, seed: int, spec, split: str = "heldout", candidates: int = 1) -> str:
    kind = "held-out" if split == "heldout" else "unseen training-composition"
    kept = f"; the best of {candidates} videos by their own plan" if candidates > 1 else ""
    title = (
        f"SemanticGen adherence ({next(iter(results.values()))['count']} {kind} {SHORT_WORLD.num_frames}-frame "
        f"clips, seed {seed}; stage-1 text guidance {spec.semantic_text_scale}, stage-2 text guidance "
        f"{spec.text_scale}, stage-2 plan guidance {spec.plan_scale}{kept})"
    )
    return rows_report(title, results, METRICS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m planx_core eval-semanticgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(EMBEDDED / "semanticgen"), help="SemanticGen folder")
    p.add_argument("--clips", type=int, default=24, help="held-out 17-frame clips scored per row")
    p.add_argument("--seed", type=int, default=0, help="seed of the clips (clip i renders with seed i)")
    p.add_argument("--rows", default="semanticgen,gt_semantics", help=f"comma-separated, of {', '.join(ROWS)}")
    p.add_argument(
        "--split",
        choices=("heldout", "train"),
        default="heldout",
        help="heldout: compositions never trained on (the table); train: unseen clips of the training compositions, "
        "for choosing settings without looking at the held-out rows",
    )
    p.add_argument(
        "--best-of",
        type=bounded("best_of"),
        default=1,
        help="rows with stage 1 keep the best of this many videos per clip, by their own plan (semanticgen "
        "--best-of; default 1: the plain video)",
    )
    add_guidance_arguments(p)
    p.add_argument("--out", default="eval_report/semanticgen")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    a = p.parse_args(argv)
    rows = parse_rows(p, a)
    if a.best_of > 1 and set(rows) - set(STAGE_1_ROWS):
        p.error(
            f"--best-of {a.best_of}: rows {sorted(set(rows) - set(STAGE_1_ROWS))} have no stage-1 plan; "
            f"keep to {', '.join(STAGE_1_ROWS)} or --best-of 1"
        )
    if a.threads:
        torch.set_num_threads(a.threads)
    model = SemanticGen.load(a.model, need_semantic=bool(set(STAGE_1_ROWS) & set(rows)))
    model = guided(model, a)
    results = evaluate(model, heldout_clips(a.clips, a.seed, a.split), rows, candidates=a.best_of)
    save_report(Path(a.out), "adherence", results, report(results, a.seed, model.spec, a.split, a.best_of))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
