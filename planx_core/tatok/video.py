"""A video's keyframes -> a token plan through TA-Tok: the frames at the keyframe times of `plan.timing`, encoded
into grid x grid code ids. This project's own glue around Tar's tokenizer (`model`)."""

from __future__ import annotations

import torch

from ..plan.core import Provenance, make_plan
from ..plan.timing import keyframe_frames
from .model import TATok, to_unit_images


def frames_to_nchw(frames) -> torch.Tensor:
    """Frames `[T, H, W, 3]` (ComfyUI IMAGE) or `[T, 3, H, W]`, float [0, 1] or uint8 -> float `[T, 3, H, W]`."""
    frames = torch.as_tensor(frames)
    if frames.ndim != 4 or 3 not in (frames.shape[1], frames.shape[-1]):
        raise ValueError(f"video frames must be [T, H, W, 3] or [T, 3, H, W], got {list(frames.shape)}")
    if frames.shape[-1] == 3:  # channels-last wins when both axes are 3 (ComfyUI's IMAGE layout)
        frames = frames.permute(0, 3, 1, 2)
    return to_unit_images(frames)  # [T, 3, H, W]


def plan_from_video(
    tatok: TATok,
    frames,
    fps: float,
    *,
    keyframe_rate: float = 2.0,
    grid: int = 9,
    codebook_name: str = "ta-tok",
    width: int | None = None,
    height: int | None = None,
    batch_size: int = 8,
    provenance=None,
):
    """Encode the frames at the keyframe times (frame round(t * fps)) into a `Plan` of grid x grid tokens.

    Keyframes fall every 1/keyframe_rate s (`plan.keyframe_times`); when fps is below the rate, times
    that land on an already used frame are skipped. width/height default to the frames' size.
    """
    frames = torch.as_tensor(frames)
    shape = frames_to_nchw(frames[:1]).shape  # checks the layout on one frame: [1, 3, H, W]
    count = frames.shape[0]
    times, indices = keyframe_frames(count, fps, keyframe_rate)
    tokens = torch.cat(
        [
            tatok.encode(frames_to_nchw(frames[indices[i : i + batch_size]]), grid=grid)
            for i in range(0, len(indices), batch_size)
        ]
    )  # [K, g*g]; only keyframes are converted
    return make_plan(
        tokens,
        times=times,
        fps=fps,
        num_frames=count,
        width=width or shape[-1],
        height=height or shape[-2],
        codebook=tatok.identity(codebook_name),
        grid=(grid, grid),
        provenance=provenance or Provenance(planner=f"encoded from video ({tatok.config.name})"),
    )
