"""The alignment rule, in one place: where a keyframe sits in the video, in the latent, on the token grid.

This project's rule for Plan-X's (t, h, w) plan-token indices (arXiv 2511.17986, Fig. 2) and
SemanticGen's semantic keyframes (arXiv 2512.20619), on Wan's VAE (4x in time, frame 0 alone):

- keyframes every 1/rate seconds (about 2 a second), from 0 to the last frame (`keyframe_times`);
- a keyframe at `t` seconds sits on video frame round(t * fps) (`video_frame`);
- and on latent frame video_frame / 4, fractional when the frame is not a multiple of 4
  (`latent_frame`, `keyframe_latent_frames`);
- cell (i, j) of a gh x gw grid sits at the centre of its area on the H' x W' latent token grid:
  ((i + .5) * H' / gh - .5, (j + .5) * W' / gw - .5) (`cell_centres`, `plan_positions`).

Every module that places a keyframe (plans, the semantic branch, SemanticGen, TA-Tok's video
plans, the toy world, training) calls these functions; none re-derives them.
"""

from __future__ import annotations

import math

import torch

from ..limits import LIMITS
from .errors import PlanError

TEMPORAL_FACTOR = 4  # Wan's VAE: video frame n is latent frame n / 4 (frame 0 is latent frame 0)


def keyframe_times(num_frames: int, fps: float, rate: float = 2.0) -> list[float]:
    """Keyframe times in seconds: every 1/rate s from 0 up to the last frame, (num_frames-1)/fps."""
    if num_frames < 1 or fps <= 0 or rate <= 0:
        raise PlanError(f"keyframe times need num_frames >= 1, fps > 0 and rate > 0 (got {num_frames}, {fps}, {rate})")
    duration = (num_frames - 1) / fps
    count = int(math.floor(duration * rate + 1e-9)) + 1
    if count > LIMITS["keyframes"]:
        raise PlanError(
            f"{num_frames} frames at {fps:g} fps with {rate:g} keyframes a second make {count} keyframes, more than "
            f"the {LIMITS['keyframes']} a plan may hold (limit 'keyframes'); use a lower keyframe rate"
        )
    return [round(k / rate, 6) for k in range(count)]


def video_frame(time_s: float, fps: float) -> int:
    """The video frame a keyframe at `time_s` seconds sits on: round(time_s * fps)."""
    return int(round(time_s * fps))


def latent_frame(time_s: float, fps: float, temporal_factor: int = TEMPORAL_FACTOR) -> float:
    """The latent frame of a keyframe at `time_s` seconds: its video frame / the VAE's temporal factor."""
    return video_frame(time_s, fps) / temporal_factor


def keyframe_latent_frames(times, fps: float, temporal_factor: int = TEMPORAL_FACTOR) -> list[float]:
    """`latent_frame` of every keyframe time."""
    return [latent_frame(t, fps, temporal_factor) for t in times]


def keyframe_frames(num_frames: int, fps: float, rate: float = 2.0) -> tuple[list[float], list[int]]:
    """(times, video frame indices) of the keyframes: `video_frame` of each `keyframe_times` time; when
    fps is below the rate, times that land on an already used frame are skipped."""
    times, indices = [], []
    for t in keyframe_times(num_frames, fps, rate):
        index = min(video_frame(t, fps), num_frames - 1)
        if index not in indices:
            times.append(t)
            indices.append(index)
    return times, indices


def cell_centres(grid_hw: tuple[int, int], token_hw: tuple[int, int]) -> torch.Tensor:
    """Centre of each plan cell on the latent token grid, `[gh * gw, 2]` (h, w), row-major."""
    (gh, gw), (th, tw) = grid_hw, token_hw
    h = (torch.arange(gh, dtype=torch.float64) + 0.5) * th / gh - 0.5  # [gh]
    w = (torch.arange(gw, dtype=torch.float64) + 0.5) * tw / gw - 0.5  # [gw]
    return torch.stack(torch.meshgrid(h, w, indexing="ij"), dim=-1).reshape(-1, 2)  # [gh*gw, 2]


def plan_positions(latent_frames: list[float], grid_hw: tuple[int, int], token_hw: tuple[int, int]) -> torch.Tensor:
    """(t, h, w) of every plan token, keyframe-major then row-major: `[K * gh * gw, 3]`."""
    cells = cell_centres(grid_hw, token_hw)  # [gh*gw, 2]
    t = torch.tensor(latent_frames, dtype=torch.float64).repeat_interleave(len(cells))[:, None]  # [K*gh*gw, 1]
    return torch.cat([t, cells.repeat(len(latent_frames), 1)], dim=1)  # [K*gh*gw, 3]
