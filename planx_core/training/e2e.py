"""Training stage `e2e`: the DiT fine-tuned end to end on the planner's own plans.

Plan-X (arXiv 2511.17986) trains the DiT on ground-truth plans, then on plans written by the
trained planner, so that it renders the planner's imperfect plans well (the recipe's details are
unpublished). Here: start from a finished `--stage dit` run (`--init-from`), build a pool of
`--pool` fresh clips whose plans the planner (`--planner`) writes image-to-video style (keyframe 0
= the TA-Tok codes of the clip's first frame, locked; keyframes 1.. sampled at
`--plan-temperature` from the scene and motion texts), and train as the `dit` stage, each sample
taking the planner's plan with probability `--planned-share` and the ground-truth plan otherwise.
The video target stays the real clip. Everything else (dropouts, shift, TI2V pinning) is the
`dit` stage's; pass `--switch 0` for the late text-dropout rate throughout, and a small `--pool`
(planning is the slow part: about a second per clip on a CPU).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import world
from ..planner.files import load_planner
from ..world import tiny
from .dit import DiTStage
from .stages import StageError

POOL_STREAM = 210  # world.clip_seed stream of the e2e pool (the dit pool is 200)


def planner_folder(path: str | None) -> Path:
    """The planner folder of `--planner`: a `--stage planner` run folder or the planner folder itself."""
    if not path:
        raise StageError("--stage e2e needs --planner (the --out folder of a finished `--stage planner` run)")
    path = Path(path)
    folder = path / "planner" if (path / "planner").is_dir() else path
    if not (folder / "config.json").is_file():
        raise StageError(
            f"--planner {path}: no planner found (expected {folder / 'config.json'}); pass the --out "
            f"folder of a `--stage planner` run"
        )
    return folder


class E2EStage(DiTStage):
    name = "e2e"

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--planner", help="e2e: trained planner (a `--stage planner` run folder)")
        parser.add_argument(
            "--planned-share",
            type=float,
            default=0.5,
            help="e2e: share of samples conditioned on the planner's plan (else the ground truth)",
        )
        parser.add_argument("--plan-temperature", type=float, default=1.0, help="e2e: planner sampling temperature")

    def __init__(self, ctx):
        if not ctx.args.init_from:
            raise StageError("--stage e2e fine-tunes a trained DiT: pass --init-from runs/<dit run>")
        self.planner = load_planner(planner_folder(ctx.args.planner))
        super().__init__(ctx)

    def fingerprint(self) -> dict:
        a = self.args
        return {**super().fingerprint(), "planned_share": a.planned_share, "plan_temperature": a.plan_temperature}

    def plan_clip(self, clip: world.Clip, first: torch.Tensor, seed: int) -> torch.Tensor:
        """The planner's image-to-video plan of `clip`, keyframe 0 locked to `first` `[g*g]`: `[K, g*g]`."""
        v = tiny.VIDEO
        return self.planner.generate(
            clip.scene,
            clip.motion,
            num_keyframes=len(v.keyframes),
            fps=v.fps,
            keyframe_rate=v.keyframe_rate,
            grid=(v.grid, v.grid),
            duration=v.duration,
            seed=seed,
            temperature=self.args.plan_temperature,
            first_frame_codes=first,
            locked={0: first.tolist()},
        )

    pool_stream = POOL_STREAM

    def pool_part(self, clips: list[world.Clip], seeds: list[int]) -> dict[str, torch.Tensor]:
        """The dit stage's tensors plus "planned": the planner's plan of each clip `[b, K, g*g]`."""
        part = self.encode_clips(clips)
        part["planned"] = torch.stack(
            [self.plan_clip(c, part["codes"][b, 0], s) for b, (c, s) in enumerate(zip(clips, seeds))]
        )  # [b, K, g*g]
        return part

    def batch(self, step: int):
        inputs, rows = super().batch(step)
        gen = torch.Generator().manual_seed(world.clip_seed(self.args.seed, 400 + self.ctx.rank, step))
        use = torch.rand(len(rows), generator=gen) < self.args.planned_share  # [B]
        planned = self.pool["planned"][rows].to(inputs["codes"].device)  # [B, K, g*g]
        inputs["codes"] = torch.where(use[:, None, None].to(planned.device), planned, inputs["codes"])
        inputs.pop("planned", None)
        return inputs, rows
