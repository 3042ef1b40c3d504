"""PlanShapes clips: placement, rendering, clips, data sets and minimal pairs of the synthetic world.

This project's own design (docs/planshapes.md section 3), plain numpy and deterministic by seed:
start positions that keep objects apart and inside the frame (`place`), stamped shapes and the
object-id buffer (`stamp`, `id_buffer`), painted frames (`render`, `paint`), `make_clip` and the
seeded streams of `dataset`, `order_pairs` for semantic transfer, `swap_pair` (who does what) for
training, and `clip_video` (clips as a video tensor in [-1, 1]).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from functools import cache

import numpy as np
import torch

from .sample import sample_composition
from .scenes import (
    _PAIR_STREAM,
    BACKGROUND,
    MIN_VISIBLE_PIXELS,
    PALETTE,
    SHAPES,
    SPLITS,
    STEP,
    WALL,
    WALL_RGB,
    Action,
    Clip,
    Composition,
    ObjectSpec,
    Stage,
    WorldConfig,
    _check_split,
    is_heldout,
    keyframe_frames,
    motion_text,
    offsets,
    scene_text,
    stage_bounds,
    validate_composition,
)


def _start_range(composition: Composition, paths: Sequence[np.ndarray], config: WorldConfig) -> np.ndarray:
    """Integer start bounds keeping every object inside the frame on all paths: `[n, 2, 2]` (lo/hi, x/y)."""
    radius = np.array([o.radius for o in composition.objects])[:, None]  # [n, 1]
    stacked = np.concatenate(paths)  # [P*T, n, 2]
    lo = np.ceil(radius + config.margin - stacked.min(axis=0))  # [n, 2]
    hi = np.floor(config.size - 1 - radius - config.margin - stacked.max(axis=0))  # [n, 2]
    return np.stack([lo, hi], axis=1).astype(np.int64)  # [n, 2, 2]


def _wall_span(start: np.ndarray, action: Action, config: WorldConfig) -> tuple[int, int]:
    """Wall columns [x0, x1) centred on the middle of the crossing object's path."""
    middle = start[action.obj, 0] + STEP[action.verb][0] * config.travel / 2
    x0 = int(np.floor(middle - config.wall_width / 2 + 0.5))
    return x0, x0 + config.wall_width


def _apart(path: np.ndarray, radius: np.ndarray, gap: int, exempt: set[tuple[int, int]]) -> bool:
    """No two objects' boxes come within `gap` px at any frame (pairs in `exempt` may overlap)."""
    centres = np.floor(path + 0.5)  # [T, n, 2]
    n = path.shape[1]
    for i in range(n):
        for j in range(i + 1, n):
            if (i, j) in exempt:
                continue
            reach = radius[i] + radius[j] + gap
            close = np.abs(centres[:, i] - centres[:, j]) <= reach  # [T, 2]
            if close.all(axis=1).any():
                return False
    return True


def _clear_of_wall(path: np.ndarray, radius: np.ndarray, wall: tuple[int, int], mover: int, gap: int) -> bool:
    x = np.floor(path[..., 0] + 0.5)  # [T, n]
    left, right = x - radius - gap, x + radius + gap  # [T, n]
    hits = (right >= wall[0]) & (left < wall[1])  # [T, n]
    hits[:, mover] = False
    return not hits.any()


def _anchor_occlusion(
    start: np.ndarray, composition: Composition, paths: Sequence[np.ndarray], config: WorldConfig, bounds: np.ndarray
):
    """Put the wall, or the occluder, at the middle of the passing object's path (edits `start`).

    Returns (wall or None, pairs allowed to overlap), or None when the occluder leaves its bounds.
    """
    action = composition.occlusion
    if action is None:
        return None, set()
    if action.behind == WALL:
        return _wall_span(start, action, config), set()
    middle = (config.num_frames - 1) // 2
    start[action.behind] = start[action.obj] + paths[0][middle, action.obj]  # [2]
    lo, hi = bounds[action.behind]  # [2] each
    if np.any(start[action.behind] < lo) or np.any(start[action.behind] > hi):
        return None
    return None, {(action.obj, action.behind)}


def _try_place(
    rng: np.random.Generator,
    composition: Composition,
    paths: Sequence[np.ndarray],
    config: WorldConfig,
    bounds: np.ndarray,
):
    """One random placement; returns (starts [n, 2], wall) or None if it breaks a rule."""
    start = rng.integers(bounds[:, 0], bounds[:, 1] + 1).astype(np.float64)  # [n, 2]
    anchored = _anchor_occlusion(start, composition, paths, config, bounds)
    if anchored is None:
        return None
    wall, exempt = anchored
    radius = np.array([o.radius for o in composition.objects])  # [n]
    for path in paths:
        placed = start[None] + path  # [T, n, 2]
        if not _apart(placed, radius, config.min_gap, exempt):
            return None
        if wall is not None and not _clear_of_wall(placed, radius, wall, composition.occlusion.obj, config.min_gap):
            return None
    return start, wall


def place(rng: np.random.Generator, compositions: Sequence[Composition], config: WorldConfig, tries: int = 200):
    """Start positions valid for every composition (same objects): (starts [n, 2], wall) or None."""
    paths = [offsets(c, config) for c in compositions]  # P x [T, n, 2]
    bounds = _start_range(compositions[0], paths, config)  # [n, 2, 2]
    if np.any(bounds[:, 0] > bounds[:, 1]):
        return None
    for _ in range(tries):
        placed = _try_place(rng, compositions[0], paths, config, bounds)
        if placed is not None:
            return placed
    return None


@cache
def stamp(shape: str, radius: int) -> np.ndarray:
    """Hard-edged mask of a shape centred in a `[2r+1, 2r+1]` box (read-only)."""
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]  # [2r+1, 2r+1] each
    if shape == "circle":
        mask = x * x + y * y <= radius * radius + radius / 2  # fill 0.72..0.76 of the box
    elif shape == "square":
        mask = np.ones_like(x, dtype=bool)
    elif shape == "triangle":  # apex up, base on the bottom row; half width grows 1 px every 2 rows
        mask = np.abs(x) <= (y + radius) // 2
    else:
        raise ValueError(f"shape={shape!r}: must be one of {SHAPES}")
    mask.setflags(write=False)
    return mask


def _draw_mask(canvas: np.ndarray, mask: np.ndarray, cx: int, cy: int, value: int) -> None:
    """Write `value` into `canvas` [H, W] where `mask` [2r+1, 2r+1] centred at (cx, cy) is set, clipped."""
    r = mask.shape[0] // 2
    height, width = canvas.shape
    y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, height), max(cx - r, 0), min(cx + r + 1, width)
    if y0 < y1 and x0 < x1:
        sub = mask[y0 - cy + r : y1 - cy + r, x0 - cx + r : x1 - cx + r]
        canvas[y0:y1, x0:x1][sub] = value


def id_buffer(
    positions: np.ndarray, objects: Sequence[ObjectSpec], wall: tuple[int, int] | None, size: int
) -> np.ndarray:
    """What each pixel shows: object index, -1 background, -2 wall: `[T, H, W]` int8."""
    centres = np.floor(positions + 0.5).astype(np.int64)  # [T, n, 2]
    ids = np.full((positions.shape[0], size, size), -1, dtype=np.int8)  # [T, H, W]
    for t in range(positions.shape[0]):
        for i, o in enumerate(objects):
            _draw_mask(ids[t], stamp(o.shape, o.radius), centres[t, i, 0], centres[t, i, 1], i)
    if wall is not None:
        ids[:, :, max(wall[0], 0) : max(wall[1], 0)] = -2
    return ids


def background(rng: np.random.Generator, textured: bool, config: WorldConfig) -> np.ndarray:
    """Flat (40, 40, 40), or static noise of `texture_sigma` clipped at 2.5 sigma: `[H, W, 3]` uint8."""
    base = np.full((config.size, config.size, 3), BACKGROUND, dtype=np.float64)  # [H, W, 3]
    if textured:
        sigma = config.texture_sigma
        base += np.clip(rng.normal(0.0, sigma, base.shape), -2.5 * sigma, 2.5 * sigma)
    return np.clip(np.rint(base), 0, 255).astype(np.uint8)


def paint(ids: np.ndarray, rgb: np.ndarray, back: np.ndarray) -> np.ndarray:
    """Frames `[T, H, W, 3]` uint8 from ids `[T, H, W]`, object colours `[n, 3]`, background `[H, W, 3]`."""
    lut = np.concatenate([np.array([WALL_RGB, (0, 0, 0)], dtype=np.uint8), rgb])  # [n+2, 3], row id+2
    frames = lut[ids.astype(np.int64) + 2]  # [T, H, W, 3]
    return np.where((ids == -1)[..., None], back[None], frames)  # [T, H, W, 3]


def visibility(ids: np.ndarray, objects: Sequence[ObjectSpec]) -> tuple[np.ndarray, np.ndarray]:
    """(visible [T, n] bool, visible_fraction [T, n] float32) counted from the id buffer."""
    counts = np.stack([(ids == i).sum(axis=(1, 2)) for i in range(len(objects))], axis=1)  # [T, n]
    full = np.array([stamp(o.shape, o.radius).sum() for o in objects])  # [n]
    return counts >= np.minimum(MIN_VISIBLE_PIXELS, full), (counts / full).astype(np.float32)


def render(
    composition: Composition,
    start: np.ndarray,
    wall: tuple[int, int] | None,
    back: np.ndarray,
    config: WorldConfig,
    seed: int,
    split: str,
) -> Clip:
    """Draw a placed composition: frames, captions and per-frame ground truth."""
    positions = (start[None] + offsets(composition, config)).astype(np.float32)  # [T, n, 2]
    ids = id_buffer(positions, composition.objects, wall, config.size)  # [T, H, W]
    rgb = np.array([PALETTE[o.colour] for o in composition.objects], dtype=np.uint8)  # [n, 3]
    visible, fraction = visibility(ids, composition.objects)
    bounds = stage_bounds(len(composition.stages), config.num_frames)
    stages = tuple(Stage(a, b, actions) for (a, b), actions in zip(bounds, composition.stages))
    return Clip(
        paint(ids, rgb, back),
        scene_text(composition),
        motion_text(composition),
        composition,
        stages,
        positions,
        visible,
        fraction,
        wall,
        seed,
        split,
        config,
    )


def make_clip(
    seed: int,
    config: WorldConfig | None = None,
    composition: Composition | None = None,
    split: str = "train",
    kind: str | None = None,
) -> Clip:
    """One clip, deterministic by `seed`; a random `split` composition unless `composition` is given."""
    config = config or WorldConfig()
    _check_split(split, kind)
    rng = np.random.default_rng(seed)
    if composition is not None:
        validate_composition(composition, config)
        placed = place(rng, [composition], config, tries=2000)
        if placed is None:
            raise ValueError(f"cannot place {composition} inside {config.size}x{config.size} without overlaps")
    else:
        composition, placed = _sample_placed(rng, config, split, kind)
    return render(composition, placed[0], placed[1], background(rng, composition.textured, config), config, seed, split)


def _sample_placed(
    rng: np.random.Generator, config: WorldConfig, split: str, kind: str | None, num_stages: int | None = None
):
    for _ in range(1000):
        composition = sample_composition(rng, config, split, kind, num_stages)
        placed = place(rng, [composition], config)
        if placed is not None:
            return composition, placed
    raise RuntimeError(f"could not place a {split} composition in 1000 tries; enlarge size or lower max_objects")


def clip_seed(seed: int, stream: int, index: int) -> int:
    """Independent 63-bit seed of item `index` of stream `stream` (split index or pair tag)."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def iter_dataset(
    split: str, count: int, seed: int = 0, config: WorldConfig | None = None, kind: str | None = None
) -> Iterator[Clip]:
    """`count` clips of `split`, clip k made from `clip_seed(seed, split index, k)`."""
    _check_split(split, kind)
    for k in range(count):
        yield make_clip(clip_seed(seed, SPLITS.index(split), k), config, split=split, kind=kind)


def dataset(
    split: str, count: int, seed: int = 0, config: WorldConfig | None = None, kind: str | None = None
) -> list[Clip]:
    """`iter_dataset` as a list."""
    return list(iter_dataset(split, count, seed, config, kind))


def _reorder(rng: np.random.Generator, composition: Composition, config: WorldConfig, split: str) -> Composition | None:
    """The same stages in another order that changes the motion, still in `split`; None if none found."""
    stages, motion = composition.stages, offsets(composition, config)
    for _ in range(20):
        order = rng.permutation(len(stages))
        other = replace(composition, stages=tuple(stages[i] for i in order))
        if (
            not np.array_equal(offsets(other, config), motion)
            and not _repeats(other)
            and is_heldout(other) == (split == "heldout")
        ):
            return other
    return None


def _repeats(composition: Composition) -> bool:
    """True when an object has the same verb in two consecutive stages ("right, then right")."""
    for this, after in zip(composition.stages[:-1], composition.stages[1:]):
        if any(a.obj == b.obj and a.verb == b.verb for a in this for b in after):
            return True
    return False


def _swap(rng: np.random.Generator, composition: Composition, config: WorldConfig, split: str) -> Composition | None:
    """Two objects, each given the other's actions (who does what changes, nothing else), still in `split`; None
    when there are not two objects, one passes behind something, or the swap leaves the motion as it was."""
    if len(composition.objects) != 2 or composition.occlusion is not None:
        return None
    stages = tuple(tuple(replace(a, obj=1 - a.obj) for a in stage) for stage in composition.stages)
    other = replace(composition, stages=stages)
    same = np.array_equal(offsets(other, config), offsets(composition, config))
    return None if same or is_heldout(other) != (split == "heldout") else other


def _pair(rng: np.random.Generator, config: WorldConfig, split: str, seed: int, partner=_reorder) -> tuple[Clip, Clip]:
    """Two clips of one scene (objects, start, background) whose compositions are a plain one and its `partner`."""
    for _ in range(1000):
        num_stages = int(rng.integers(2, config.max_stages + 1))
        first = sample_composition(rng, config, split, "plain", num_stages)
        second = partner(rng, first, config, split)
        placed = None if second is None else place(rng, [first, second], config)
        if placed is not None:
            back = background(rng, first.textured, config)
            return tuple(render(c, placed[0], placed[1], back, config, seed, split) for c in (first, second))
    raise RuntimeError(f"no {partner.__name__.strip('_')} pair found in 1000 tries")


def order_pairs(seed: int, n: int, config: WorldConfig | None = None, split: str = "train") -> list[tuple[Clip, Clip]]:
    """`n` minimal pairs of clips whose stage lists differ only in order ("right, then up" vs "up, then right").

    Both members share objects, start positions and background; each is a `split` composition.
    """
    config = _pair_config(config, split)
    return [order_pair(clip_seed(seed, _PAIR_STREAM, k), config, split) for k in range(n)]


def order_pair(seed: int, config: WorldConfig | None = None, split: str = "train") -> tuple[Clip, Clip]:
    """One minimal order pair (see `order_pairs`), deterministic by `seed`."""
    config = _pair_config(config, split)
    return _pair(np.random.default_rng(seed), config, split, seed)


def swap_pair(seed: int, config: WorldConfig | None = None, split: str = "train") -> tuple[Clip, Clip]:
    """One minimal binding pair, deterministic by `seed`: two objects, one start and background, each object's
    actions given to the other ("the red circle moves right while the blue square stays still" and the reverse)."""
    config = _pair_config(config, split)
    return _pair(np.random.default_rng(seed), config, split, seed, partner=_swap)


def paired_items(n: int, share: float, swap: float = 0.0) -> tuple[int, int]:
    """Where `clips_with_pairs` puts its pairs among `n` clips: items 0..a-1 are order pairs and a..b-1 binding
    pairs, each two in a row; returns (a, b)."""
    ordered = 2 * int(round(n * share / 2))
    return ordered, min(ordered + 2 * int(round(n * swap / 2)), n // 2 * 2)


def clips_with_pairs(
    seeds: Sequence[int], share: float, config: WorldConfig | None = None, swap: float = 0.0
) -> list[Clip]:
    """One training clip per seed; the first `share` of them in twos, each two a minimal order pair (one scene,
    its stages in two orders) made from the first seed of the two: the contrast that teaches the text's order;
    then `swap` of them as minimal binding pairs (`swap_pair`): the contrast that teaches which object does what."""
    clips = [make_clip(s, config) for s in seeds]
    ordered, swapped = paired_items(len(seeds), share, swap)
    for i in range(0, ordered, 2):
        clips[i : i + 2] = order_pair(seeds[i], config)
    for i in range(ordered, swapped, 2):
        clips[i : i + 2] = swap_pair(seeds[i], config)
    return clips


def _pair_config(config: WorldConfig | None, split: str) -> WorldConfig:
    config = config or WorldConfig()
    _check_split(split)
    if config.max_stages < 2:
        raise ValueError("order pairs need max_stages >= 2")
    return config


def keyframe_layout(clip: Clip, times: Sequence[int] | None = None) -> list[list[dict]]:
    """Per keyframe (frame index; default the 2-fps keyframes), per object: colour, shape, x, y, visible."""
    times = keyframe_frames(clip.config) if times is None else times
    layout = []
    for t in times:
        if not 0 <= t < clip.config.num_frames:
            raise ValueError(f"keyframe {t} outside frames 0..{clip.config.num_frames - 1}")
        layout.append(
            [
                {
                    "colour": o.colour,
                    "shape": o.shape,
                    "x": float(clip.positions[t, i, 0]),
                    "y": float(clip.positions[t, i, 1]),
                    "visible": bool(clip.visible[t, i]),
                }
                for i, o in enumerate(clip.objects)
            ]
        )
    return layout


def clip_video(clips: list[Clip]) -> torch.Tensor:
    """Clips -> video `[B, 3, T, H, W]` float in [-1, 1]."""
    frames = torch.from_numpy(np.stack([c.frames for c in clips]))  # [B, T, H, W, 3] uint8
    return frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # [B, 3, T, H, W]
