"""Scores of PlanShapes clips computed from RGB frames alone: find objects by colour, track them.

This project's own design, after the team's detector and metrics (docs/planshapes.md section 3.4).

Detection (`detect`): a pixel p belongs to palette colour c when, projected on the segment from
the background grey b = (40, 40, 40) to c, it is at least half covered (alpha = <p - b, c - b> /
|c - b|^2 >= 0.5) and its L1 residual from the segment is below `L1_THRESHOLD` = 120 and below
its L1 distance to the greys (so the gray wall is no colour); the smallest residual wins. Per
frame and colour the largest 8-connected component of at least `MIN_AREA` = 8 pixels is the
object: centroid, area, and, with holes filled, fill ratio of its box and vertical mass offset.
Shape: square if fill > 0.87, else triangle if fill < 0.64 or the mass sits low (offset > 0.07),
else circle (rendered fills: square 1.0, circle 0.72..0.76, triangle 0.51..0.55).
Departure from the first draft (a plain L1 < 110 to the colour; docs/planshapes.md section 3.4):
that test erodes blurred edges of
bright colours (a 3x3 box blur turned small cyan circles into "triangles" and "squares");
segment projection keeps half-covered pixels, and filled holes keep noisy squares square.

`cell_colours` gives the same labels' shares per cell of a grid (the colour target of SemanticGen's compressor,
`training.semanticgen`).

`score_clip` compares generated frames with the clip's plan and with the *reference*, the
ground-truth render passed through the same detector, so ground truth scores exactly 1 / 0 px:

* accuracy: fraction of stages done, each judged over its own frame span (so order counts): the
  acting object's centroid displacement from the stage's first to last frame is classified as
  left/right/up/down (dominant axis, >= 4 px) or still (< 4 px); a stage is correct when every
  action in it matches; an object not found at either end frame fails the stage.
* completeness: 1 if every stage is correct, else 0 (plan exact).
* fidelity: mean of (a) objects whose colour is found in >= half the frames where the reference
  finds it, (b) objects whose majority shape over unoccluded frames equals the reference's, and
  (c) frames with no palette colour that the plan does not have.
* consistency: per object the mean of (a) visibility agreement with the reference per frame,
  (b) frames of the object's modal shape, (c) frames whose area is within 35 % of its median
  (no morphing, growing, shrinking), (d) frame-to-frame steps no longer than the reference's
  longest step + 4 px (no jumps, identity swaps); (b)-(c) over unoccluded frames. Mean over objects.
* trajectory_error: mean centroid distance (px) to the reference where both find the object
  (nan when never); keyframe_error: the same at the 2-fps keyframes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .scenes import (
    BACKGROUND,
    COLOURS,
    MIN_VISIBLE_PIXELS,
    PALETTE_RGB,
    SHAPES,
    Clip,
    keyframe_frames,
)

L1_THRESHOLD = 120  # L1 residual from the background-to-colour segment
MIN_AREA = MIN_VISIBLE_PIXELS
SQUARE_FILL, TRIANGLE_FILL, TRIANGLE_OFFSET = 0.87, 0.64, 0.07
MOVE_THRESHOLD = 4.0  # px: below it a displacement is "still"
AREA_TOLERANCE = 0.35  # relative deviation from the median area still counted as stable
JUMP_TOLERANCE = 4.0  # px beyond the reference's longest step
FULLY_VISIBLE = 0.999  # ground-truth visible fraction of an unoccluded object
_AXES = PALETTE_RGB.astype(np.float32) - np.float32(BACKGROUND)  # [6, 3] palette colour minus background
# alpha >= 0.5 needs <p - b, a> >= |a|^2 / 2, so |p - b|_1 >= |a|^2 / (2 |a|_inf) (Hoelder): pixels nearer skip
_MIN_OFFSET = float(min((a @ a) / (2 * np.abs(a).max()) for a in _AXES)) - 1e-3
METRICS = ("accuracy", "completeness", "fidelity", "consistency", "trajectory_error", "keyframe_error", "visibility")


@dataclass
class Detections:
    """Per frame and palette colour: the largest blob of that colour."""

    found: np.ndarray  # [T, 6] bool
    centroid: np.ndarray  # [T, 6, 2] float64 (x, y); nan where not found
    area: np.ndarray  # [T, 6] int64
    fill: np.ndarray  # [T, 6] float64, filled area / box area
    offset: np.ndarray  # [T, 6] float64, (filled mass centre y - box centre y) / box height
    shape: np.ndarray  # [T, 6] int64 index into SHAPES; -1 where not found


def to_uint8(frames) -> np.ndarray:
    """`[T, H, W, 3]` uint8 from uint8, or from float in [0, 1] (numpy or a CPU tensor)."""
    array = np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"frames of shape {array.shape}: expected [T, H, W, 3] (channels last)")
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"frames of dtype {array.dtype}: expected uint8 or float in [0, 1]")
    if array.size and (np.nanmin(array) < -0.05 or np.nanmax(array) > 1.05):
        raise ValueError(f"float frames span [{np.nanmin(array):.3g}, {np.nanmax(array):.3g}]: expected [0, 1]")
    return np.clip(np.rint(np.nan_to_num(array) * 255.0), 0, 255).astype(np.uint8)


def colour_labels(frames: np.ndarray) -> np.ndarray:
    """Palette colour of every pixel, else -1: `[T, H, W]` int64.

    For each colour c the pixel p is projected on the segment from the background grey b to c:
    alpha = <p - b, c - b> / |c - b|^2 clipped to [0, 1], residual = L1 |p - b - alpha (c - b)|.
    The pixel is c when alpha >= 0.5 (at least half covered) and the residual is under
    `L1_THRESHOLD`; the smallest residual wins.
    """
    flat = frames.reshape(-1, 3).astype(np.float32)  # [N, 3], N = T*H*W
    labels = np.full(flat.shape[0], -1, dtype=np.int64)  # [N]
    offset_all = flat - np.float32(BACKGROUND)  # [N, 3]
    candidates = np.flatnonzero(np.abs(offset_all).sum(axis=1) >= _MIN_OFFSET)  # [M]: alpha >= 0.5 needs this
    pixels, offset = flat[candidates].T, offset_all[candidates].T  # [3, M] each
    median = pixels.sum(axis=0) - pixels.max(axis=0) - pixels.min(axis=0)  # [M]
    best = np.abs(pixels - median).sum(axis=0)  # [M] L1 to the greys: grey pixels stay unlabelled
    chosen = np.full(best.shape, -1, dtype=np.int64)  # [M]
    for c, axis in enumerate(_AXES):
        alpha = np.clip(axis @ offset / float(axis @ axis), 0.0, 1.0)  # [M]
        residual = np.abs(offset - axis[:, None] * alpha).sum(axis=0)  # [M]
        take = (alpha >= 0.5) & (residual < L1_THRESHOLD) & (residual < best)  # [M]
        chosen[take], best[take] = c, residual[take]
    labels[candidates] = chosen
    return labels.reshape(frames.shape[:3])


def cell_colours(frames: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Per cell of a `grid` (gh, gw) over each frame `[N, H, W, 3]` uint8, the share of its pixels that are no
    palette colour (index 0) or each palette colour (1..6, `colour_labels`): `[N, gh, gw, 7]` float32, rows sum to 1."""
    gh, gw = grid
    n, h, w = frames.shape[:3]
    if h % gh or w % gw:
        raise ValueError(f"frames of {h}x{w} pixels do not split into a {gh}x{gw} grid of whole cells")
    labels = colour_labels(frames) + 1  # [N, H, W] in 0..6
    cells = labels.reshape(n, gh, h // gh, gw, w // gw).transpose(0, 1, 3, 2, 4)  # [N, gh, gw, h/gh, w/gw]
    return np.eye(len(COLOURS) + 1, dtype=np.float32)[cells.reshape(n, gh, gw, -1)].mean(axis=-2)  # [N, gh, gw, 7]


def classify_shape(fill: float, offset: float) -> int:
    """Index into SHAPES of a blob with this fill ratio and vertical mass offset."""
    if fill > SQUARE_FILL:
        return SHAPES.index("square")
    if fill < TRIANGLE_FILL or offset > TRIANGLE_OFFSET:
        return SHAPES.index("triangle")
    return SHAPES.index("circle")


def _filled(component: np.ndarray) -> np.ndarray:
    """The component `[h, w]` uint8 with its holes filled (noise punches holes, shape does not)."""
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(component)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled | component


def _largest_blob(mask: np.ndarray):
    """(area, fill, offset, cx, cy) of the largest 8-connected component of `mask` [H, W], or None.

    Area and centroid are the component's; fill and offset come from it with holes filled.
    """
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count < 2:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = stats[best]
    if area < MIN_AREA:
        return None
    solid = _filled((labels[y : y + h, x : x + w] == best).astype(np.uint8))  # [h, w]
    rows = solid.sum(axis=1)  # [h]
    mass_y = float(rows @ np.arange(h)) / rows.sum()
    cx, cy = centroids[best]
    return int(area), rows.sum() / float(w * h), (mass_y - (h - 1) / 2) / h, float(cx), float(cy)


def detect(frames) -> Detections:
    """Run the colour detector on `[T, H, W, 3]` frames (uint8, or float in [0, 1])."""
    labels = colour_labels(to_uint8(frames))  # [T, H, W]
    T, K = labels.shape[0], len(COLOURS)
    found = np.zeros((T, K), dtype=bool)
    centroid = np.full((T, K, 2), np.nan)  # [T, 6, 2]
    area, fill, offset = np.zeros((T, K), dtype=np.int64), np.zeros((T, K)), np.zeros((T, K))
    shape = np.full((T, K), -1, dtype=np.int64)
    for t in range(T):
        counts = np.bincount(labels[t].ravel() + 1, minlength=K + 1)[1:]  # [6]
        for c in np.flatnonzero(counts >= MIN_AREA):
            blob = _largest_blob(labels[t] == c)
            if blob is not None:
                found[t, c] = True
                area[t, c], fill[t, c], offset[t, c], centroid[t, c, 0], centroid[t, c, 1] = blob
                shape[t, c] = classify_shape(fill[t, c], offset[t, c])
    return Detections(found, centroid, area, fill, offset, shape)


def direction(displacement: np.ndarray, threshold: float = MOVE_THRESHOLD) -> str:
    """'left'/'right'/'up'/'down' along the dominant axis of (dx, dy), or 'still' below `threshold` px."""
    dx, dy = float(displacement[0]), float(displacement[1])
    if max(abs(dx), abs(dy)) < threshold:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _palette_index(clip: Clip) -> np.ndarray:
    return np.array([COLOURS.index(c) for c in clip.colour])  # [n]


def _stage_results(gen: Detections, clip: Clip) -> list[bool]:
    """Per stage: every action's displacement over the stage's span has the described direction."""
    index = _palette_index(clip)
    results = []
    for stage in clip.stages:
        ok = True
        for action in stage.actions:
            c = index[action.obj]
            if not (gen.found[stage.start, c] and gen.found[stage.end, c]):
                ok = False
                continue
            moved = gen.centroid[stage.end, c] - gen.centroid[stage.start, c]  # [2]
            ok &= direction(moved) == action.verb
        results.append(bool(ok))
    return results


def _modal(values: np.ndarray) -> int:
    return int(np.bincount(values).argmax())


def _fidelity(gen: Detections, ref: Detections, clip: Clip, full: np.ndarray) -> float:
    """Mean of colour presence, shape agreement (per object) and frames free of extra colours."""
    index = _palette_index(clip)
    present, shaped = [], []
    for i, c in enumerate(index):
        present.append(gen.found[ref.found[:, c], c].mean() >= 0.5 if ref.found[:, c].any() else True)
        both = full[:, i] & gen.found[:, c]  # [T]
        shaped.append(bool(both.any()) and _modal(gen.shape[both, c]) == _modal(ref.shape[full[:, i], c]))
    extra = np.delete(gen.found, index, axis=1).any(axis=1)  # [T]
    return float(np.mean([np.mean(present), np.mean(shaped), 1.0 - extra.mean()]))


def _steps(centroid: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Lengths of frame-to-frame moves where both frames are found: `[S]`."""
    both = found[:-1] & found[1:]  # [T-1]
    return np.linalg.norm(centroid[1:][both] - centroid[:-1][both], axis=-1)


def _object_consistency(gen: Detections, ref: Detections, c: int, full: np.ndarray) -> float:
    """Mean of visibility agreement, shape and area stability, and jump-free steps for colour c."""
    visibility = float((gen.found[:, c] == ref.found[:, c]).mean())
    frames = full & gen.found[:, c]  # [T]
    if frames.any():
        shapes, areas = gen.shape[frames, c], gen.area[frames, c]
        same_shape = float((shapes == _modal(shapes)).mean())
        stable = float((np.abs(areas / np.median(areas) - 1.0) <= AREA_TOLERANCE).mean())
    else:
        same_shape = stable = 0.0
    steps = _steps(gen.centroid[:, c], gen.found[:, c])
    ref_steps = _steps(ref.centroid[:, c], ref.found[:, c])
    allowed = (ref_steps.max() if ref_steps.size else 0.0) + JUMP_TOLERANCE
    smooth = float((steps <= allowed).mean()) if steps.size else 1.0
    return float(np.mean([visibility, same_shape, stable, smooth]))


def _trajectory_error(gen: Detections, ref: Detections, index: np.ndarray, frames: Sequence[int]) -> float:
    frames = np.asarray(list(frames))  # [F]
    both = gen.found[frames][:, index] & ref.found[frames][:, index]  # [F, n]
    if not both.any():
        return math.nan
    gap = gen.centroid[frames][:, index] - ref.centroid[frames][:, index]  # [F, n, 2]
    return float(np.linalg.norm(gap, axis=-1)[both].mean())


def score_clip(frames, clip: Clip, reference: Detections | None = None) -> dict[str, float]:
    """Scores of generated `frames` `[T, H, W, 3]` (uint8, or float in [0, 1]) against `clip`.

    `reference` may pass `detect(clip.frames)` computed once; see the module docstring for the metrics.
    """
    gen = detect(frames)
    if gen.found.shape[0] != clip.config.num_frames:
        raise ValueError(f"{gen.found.shape[0]} frames scored against a clip of {clip.config.num_frames}")
    ref = detect(clip.frames) if reference is None else reference
    index = _palette_index(clip)  # [n]
    full = (clip.visible_fraction >= FULLY_VISIBLE) & ref.found[:, index]  # [T, n]
    stages = _stage_results(gen, clip)
    visibility = (gen.found[:, index] == ref.found[:, index]).mean()
    consistency = [_object_consistency(gen, ref, c, full[:, i]) for i, c in enumerate(index)]
    return {
        "accuracy": float(np.mean(stages)),
        "completeness": float(all(stages)),
        "fidelity": _fidelity(gen, ref, clip, full),
        "consistency": float(np.mean(consistency)),
        "trajectory_error": _trajectory_error(gen, ref, index, range(clip.config.num_frames)),
        "keyframe_error": _trajectory_error(gen, ref, index, keyframe_frames(clip.config)),
        "visibility": float(visibility),
    }


def score_many(frames_list: Sequence, clips: Sequence[Clip]) -> dict[str, float]:
    """Mean of `score_clip` over clips (errors: mean over clips where defined), plus `count`."""
    if len(frames_list) != len(clips):
        raise ValueError(f"{len(frames_list)} generated clips for {len(clips)} reference clips")
    if not clips:
        raise ValueError("nothing to score: no clips")
    return summarize([score_clip(f, c) for f, c in zip(frames_list, clips)])


def summarize(scores: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of per-clip `score_clip` results (errors: mean over clips where defined), plus `count`."""
    summary = {}
    for key in METRICS:
        values = np.array([s[key] for s in scores], dtype=np.float64)
        summary[key] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    summary["count"] = len(scores)
    return summary


def score_pairs(frames_pairs: Sequence, pairs: Sequence[tuple[Clip, Clip]]) -> dict[str, float]:
    """Order minimal pairs: `order_accuracy` = both members complete; also mean accuracy of all members."""
    if len(frames_pairs) != len(pairs):
        raise ValueError(f"{len(frames_pairs)} generated pairs for {len(pairs)} pairs")
    members = [score_clip(f, c) for fs, cs in zip(frames_pairs, pairs) for f, c in zip(fs, cs)]
    both = [members[k]["completeness"] * members[k + 1]["completeness"] for k in range(0, len(members), 2)]
    return {
        "order_accuracy": float(np.mean(both)),
        "accuracy": float(np.mean([m["accuracy"] for m in members])),
        "count": len(pairs),
    }
