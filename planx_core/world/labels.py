"""Ground-truth word labels of a keyframe's 9x9 token cells, from the synthetic world's id buffer.

This project's own supervision for the tiny TA-Tok (there is no SigLIP2 teacher in this world,
so TA-Tok cannot be distilled as in Tar; it is taught the word each cell shows instead). A cell is
the patch of the 64x64 frame that one pooled TA-Tok token sees: the frame is squashed to 54 px,
cut into 2-px patches (27x27) and pooled 3x3, so cell (r, c) covers the pixel square
[64 r / 9, 64 (r + 1) / 9) x [64 c / 9, 64 (c + 1) / 9) of the original frame.

Label rule: the exact visible fraction of each cell covered by each object and by the gray wall
is measured (pixels split across cell borders count by area). The largest cover wins if it is at
least `threshold` (25 %): an object gives its colour word ("red", ...), the wall gives "wall";
otherwise the cell is "background". Labels are code indices: code k <-> `tiny.ANCHOR_WORDS[k]`.

`move_confusion` / `move_agreement` read a plan of such codes back as motion with `planner.moves.code_moves` (which
way each object's cells go from keyframe to keyframe; the planner's evaluation and its training's move targets).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from .. import world
from ..planner.moves import code_moves
from ..tatok import frames_to_nchw
from .tiny import ANCHOR_WORDS

BACKGROUND_CODE = ANCHOR_WORDS.index("background")
WALL_CODE = ANCHOR_WORDS.index("wall")
COLOUR_CODES = {c: ANCHOR_WORDS.index(c) for c in world.COLOURS}
LABEL_CODES = (BACKGROUND_CODE, WALL_CODE, *COLOUR_CODES.values())  # every code a label can be


def cell_cover(ids: np.ndarray, num_objects: int, grid: int = 9) -> np.ndarray:
    """Visible area fraction per cell of each object and of the wall: `[K, n + 1, grid, grid]` float32.

    `ids` `[K, H, W]` is `world.id_buffer` (object index, -1 background, -2 wall); channel n is the wall.
    """
    k, height, width = ids.shape
    classes = np.arange(num_objects).tolist() + [-2]
    masks = np.stack([ids == c for c in classes], axis=1).astype(np.float32)  # [K, n+1, H, W]
    fine = masks.repeat(grid, axis=2).repeat(grid, axis=3)  # [K, n+1, H*g, W*g]: each cell is H x W fine px
    cells = fine.reshape(k, len(classes), grid, height, grid, width)  # [K, n+1, g, H, g, W]
    return cells.mean(axis=(3, 5))  # [K, n+1, g, g]


def labels_from_cover(cover: np.ndarray, colours: tuple[str, ...], threshold: float = 0.25) -> np.ndarray:
    """Code of each cell from `cell_cover` output `[K, n + 1, g, g]`: `[K, g * g]` int64."""
    codes = np.array([COLOUR_CODES[c] for c in colours] + [WALL_CODE], dtype=np.int64)  # [n+1]
    best = cover.argmax(axis=1)  # [K, g, g]
    top = cover.max(axis=1)  # [K, g, g]
    labels = np.where(top >= threshold, codes[best], BACKGROUND_CODE)  # [K, g, g]
    return labels.reshape(labels.shape[0], -1)  # [K, g*g]


def clip_labels(clip: world.Clip, frames: tuple[int, ...], grid: int = 9, threshold: float = 0.25) -> torch.Tensor:
    """Ground-truth codes of the given frames of a clip: LongTensor `[K, grid * grid]`, row-major."""
    ids = world.id_buffer(clip.positions[list(frames)], clip.objects, clip.wall, clip.config.size)  # [K, H, W]
    cover = cell_cover(ids, len(clip.objects), grid)  # [K, n+1, g, g]
    return torch.from_numpy(labels_from_cover(cover, clip.colour, threshold))  # [K, g*g]


def clip_images(clip: world.Clip, frames: tuple[int, ...]) -> torch.Tensor:
    """The given frames as float images in [0, 1]: `[K, 3, H, W]`."""
    return frames_to_nchw(clip.frames[list(frames)])  # [K, 3, H, W]


def move_confusion(pred: torch.Tensor, truth: torch.Tensor, width: int, background: int) -> Counter:
    """Counts of (the truth's move, the plan's move) over every (code of the truth's keyframe 0, keyframe step):
    `pred`, `truth` `[N, K, rows * width]`; a code the plan lost is 'gone' at every step."""
    counts = Counter()
    for p, t in zip(pred, truth):
        wanted, got = code_moves(t, width, background), code_moves(p, width, background)
        for code, moves in wanted.items():
            counts.update(zip(moves, got.get(code, ["gone"] * len(moves))))
    return counts


def move_agreement(pred: torch.Tensor, truth: torch.Tensor, width: int, background: int) -> float:
    """Share of (code of the truth's keyframe 0, keyframe step) whose `code_moves` in `pred` equal the truth's:
    `pred`, `truth` `[N, K, rows * width]`. The plan-level question the videos are scored on: which object goes
    which way when (cell accuracy counts the many cells that are easy copies of the keyframe before)."""
    return share_agreeing(move_confusion(pred, truth, width, background))


def share_agreeing(counts: Counter) -> float:
    """The share of a `move_confusion` whose planned move is the truth's (0 when it is empty)."""
    return sum(n for (want, got), n in counts.items() if want == got) / max(sum(counts.values()), 1)
