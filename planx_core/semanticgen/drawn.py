"""SemanticGen started from a video another model drew for the same prompt (`semanticgen --draw-first-frame`).

Not in the SemanticGen paper: the project's own route to text-to-video that follows its prompt. The embedded
Plan-X plans and renders the prompt at its own length; its frame 0 is SemanticGen's first frame (image-to-video),
and with a lead share > 0 the semantic keyframes in that first share of the video are the drawn video's too,
stretched over SemanticGen's length (a keyframe at fraction f of the video takes the drawn frame at fraction f),
so stage 1 plans only the keyframes after them (`generator.generate_semantics`'s `given`). With a sketch level
below 1, stage 1 starts each keyframe it plans from the drawn video's own, noised to that level (SDEdit, Meng et
al. 2022), rather than from pure noise: the drawn motion guides the plan, and stage 1 redraws its details.
"""

from __future__ import annotations

import numpy as np
import torch

from ..files.video import image_tensor
from .model import SemanticGen, SemanticStart


def lead_frames(keyframe_frames: list[int], num_frames: int, drawn_frames: int, lead: float) -> list[int]:
    """Indices into a drawn video of `drawn_frames` frames for the keyframes (at `keyframe_frames` of a video of
    `num_frames`) that lie in the first `lead` share of the video: keyframe 0 always, each at the same fraction."""
    if not 0.0 <= lead <= 1.0:
        raise ValueError(f"the drawn lead is a share of the video from 0 to 1, got {lead!r}")
    last, drawn_last = max(num_frames - 1, 1), drawn_frames - 1
    shares = [frame / last for frame in keyframe_frames]
    return [round(share * drawn_last) for share in shares if share <= lead + 1e-9]  # keyframe 0: share 0


@torch.inference_mode()
def drawn_start(
    model: SemanticGen, video: np.ndarray, num_frames: int, lead: float = 0.0, sketch: float = 1.0
) -> SemanticStart:
    """Image-to-video inputs from a drawn video `[T, H, W, 3]` uint8 at the model's size: frame 0's semantics and
    latent (`SemanticGen.first_frame`), and, for the keyframes in the first `lead` share of a `num_frames` video,
    the drawn frames' semantics as keyframes 1..P-1 (`SemanticStart.semantics` `[P, gh, gw, D]`). `sketch` below 1:
    every keyframe's drawn semantics are also the start stage 1 noises to that level (`SemanticStart.sketch`)."""
    if not 0.0 < sketch <= 1.0:
        raise ValueError(
            f"the sketch level is the noise stage 1 starts the drawn keyframes from, in (0, 1]; got {sketch!r}"
        )
    first = model.first_frame(video[0])
    keyframes = model.keyframe_frames(num_frames)[1]
    rest = _semantics(model, video, lead_frames(keyframes, num_frames, len(video), lead)[1:], first.semantics)
    semantics = first.semantics if rest is None else torch.cat([first.semantics, rest])  # [P, gh, gw, D]
    drawn = (
        None
        if sketch == 1.0
        else _semantics(model, video, lead_frames(keyframes, num_frames, len(video), 1.0), first.semantics)
    )
    return SemanticStart(semantics, first.latent, drawn, sketch)  # drawn: [K, gh, gw, D] or None


def _semantics(model: SemanticGen, video: np.ndarray, picks: list[int], like: torch.Tensor) -> torch.Tensor | None:
    """The semantics `[N, gh, gw, D]` of the drawn frames `picks` (None for none), on `like`'s device and dtype."""
    if not picks:
        return None
    size, name = model.spec.size, model.spec.name
    frames = torch.cat([image_tensor(video[i], size, size, name) for i in picks]) * 2 - 1  # [N, 3, H, W]
    return model.frame_semantics(frames.to(like.device)).to(like)  # [N, gh, gw, D]
