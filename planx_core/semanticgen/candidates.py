"""Best of several SemanticGen videos for one prompt: keep the render most faithful to its own semantic plan.

Not in the SemanticGen paper: the project's own selector (measured in the embedded model card, 2026-12-07). Each
candidate is a whole video, stage 1's plan then stage 2's render, with seed `seed + CANDIDATE_SEED_STRIDE * j`
(candidate 0 is `seed` itself, so one candidate is the plain video). The one kept is the one whose keyframes,
encoded again (`SemanticGen.encode_semantics`), lie nearest the plan it was rendered from (mean squared distance):
once stage 1 plans from a drawn sketch, stage 2 is where SemanticGen loses the prompt, and a render that drops its
plan shows it there. The signal needs nothing but the model; each candidate costs a whole video.
"""

from __future__ import annotations

import numpy as np
import torch

from ..limits import check_limit
from .model import SemanticGen

CANDIDATE_SEED_STRIDE = 1000  # candidate j renders with seed + 1000 j


def candidate_seeds(seed: int, count: int) -> list[int]:
    """The seeds of `count` candidates for `seed` (the first is `seed`)."""
    check_limit("best_of", count, "the number of candidate videos", fix="ask for 1 (the plain video) or more")
    return [seed + CANDIDATE_SEED_STRIDE * j for j in range(count)]


@torch.inference_mode()
def plan_distance(model: SemanticGen, frames: np.ndarray, z: torch.Tensor) -> float:
    """Mean squared distance between the semantics of a render `frames` `[T, H, W, 3]` uint8 at its keyframes and
    the plan `z` `[K, gh, gw, D]` it was rendered from."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).to(z.device)  # [3, T, H, W]
    seen = model.encode_semantics(video.float() / 127.5 - 1)  # [K, gh, gw, D]
    if seen.shape != z.shape:
        raise ValueError(f"a render's semantics {tuple(seen.shape)} do not match its plan {tuple(z.shape)}")
    return float(((seen.float() - z.float()) ** 2).mean())


def keep_nearest(model: SemanticGen, seeds: list[int], render, log=None) -> tuple[object, list[float]]:
    """Render every seed, `render(seed)` -> (frames `[T, H, W, 3]` uint8, its plan z_sem `[K, gh, gw, D]`, what to
    keep), and return (what to keep of the render nearest its plan, the first on a tie; every `plan_distance`).
    `log(j, seed, distance)` after each."""
    kept, distances = None, []
    for j, seed in enumerate(seeds):
        frames, z, keep = render(seed)
        distances.append(plan_distance(model, frames, z))
        if kept is None or distances[-1] < min(distances[:-1]):
            kept = keep
        if log is not None:
            log(j, seed, distances[-1])
    return kept, distances


def best_of(
    model: SemanticGen, scene: str, motion: str, *, num_frames: int, seed: int = 0, count: int = 1, **kwargs
) -> tuple[np.ndarray, torch.Tensor, int, list[float]]:
    """`count` videos of `SemanticGen.generate` (its `kwargs`: `start`, `window`) -> (the kept frames `[T, H, W, 3]`,
    its plan `[K, gh, gw, D]`, its seed, every candidate's `plan_distance`; empty for one candidate, which is the
    plain video)."""
    seeds = candidate_seeds(seed, count)
    if count > 1 and not kwargs.get("use_semantics", True):
        raise ValueError("candidates are kept by their semantic plan; without one (use_semantics=False) ask for 1")
    if count == 1:
        return (*model.generate(scene, motion, num_frames=num_frames, seed=seed, **kwargs), seed, [])

    def render(candidate: int):
        frames, z = model.generate(scene, motion, num_frames=num_frames, seed=candidate, **kwargs)
        return frames, z, (frames, z, candidate)

    kept, distances = keep_nearest(model, seeds, render)
    return (*kept, distances)
