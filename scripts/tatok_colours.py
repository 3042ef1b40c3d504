"""Give a TA-Tok file a colour per code, measured on the synthetic world, so pictures and the editor show a
code that means "yellow" in yellow instead of in a colour of the codebook's principal components.

For each clip of the world's training split, the keyframes' 9x9 cells are labelled with
`planx_core.world.labels.clip_labels` (the labels the tiny TA-Tok was trained on), and the mean colour of
each cell (area-exact over the 64x64 frame: the same cell squares the labels measure) is added to its
label's code. A code's colour is the mean over every cell it labels; codes that label no cell (grammar
words, shapes, directions) get none and keep the projection's colour. The table goes into the file's
metadata (`planx_core.tatok.files.write_colour_table`); every tensor is written back unchanged.

    .venv/bin/python scripts/tatok_colours.py [--clips 400] [--file planx_core/embedded/ta_tok.safetensors] [--check]

--check measures and compares with the file's table instead of writing (exit 1 when they differ by more
than 2/255 per channel, or the file has none).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from planx_core import EMBEDDED, world  # noqa: E402
from planx_core.plan.picture import hex_colour, parse_hex  # noqa: E402
from planx_core.tatok.files import load_tatok, write_colour_table  # noqa: E402
from planx_core.world.labels import clip_labels  # noqa: E402

GRID = 9
SOURCE = "mean colour of the cells each code labels (planx_core.world.labels) on {n} training clips, seed {seed}"


def cell_means(frames: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Mean RGB of each cell of each frame, `[K, grid * grid, 3]` float64 in [0, 255] (area-exact)."""
    k, height, width, _ = frames.shape
    fine = frames.astype(np.float64).repeat(grid, axis=1).repeat(grid, axis=2)  # [K, H*g, W*g, 3]
    cells = fine.reshape(k, grid, height, grid, width, 3).mean(axis=(2, 4))  # [K, g, g, 3]
    return cells.reshape(k, grid * grid, 3)


def measure(clips: int, seed: int = 0, codes: int = 29) -> dict[int, str]:
    """{code: "#rrggbb"} for every code that labels at least one cell in `clips` training clips."""
    total, count = np.zeros((codes, 3)), np.zeros(codes)
    frames = world.keyframe_frames()
    for clip in world.iter_dataset("train", clips, seed=seed):
        labels = clip_labels(clip, frames, GRID).numpy()  # [K, g*g]
        means = cell_means(clip.frames[list(frames)])  # [K, g*g, 3]
        np.add.at(total, labels.reshape(-1), means.reshape(-1, 3))
        np.add.at(count, labels.reshape(-1), 1)
    return {c: hex_colour(total[c] / count[c] / 255) for c in range(codes) if count[c]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default=str(EMBEDDED / "ta_tok.safetensors"))
    parser.add_argument("--clips", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    tatok = load_tatok(args.file)
    table = measure(args.clips, args.seed, tatok.config.codebook_size)
    if args.check:
        have = tatok.colour_table or {}
        far = [
            c
            for c in set(table) | set(have)
            if c not in have
            or c not in table
            or max(abs(a - b) for a, b in zip(parse_hex(have[c]), parse_hex(table[c]))) > 2 / 255
        ]
        print(f"{args.file}: {'differs at codes ' + str(sorted(far)) if far else 'matches'}")
        return 1 if far else 0
    write_colour_table(args.file, table, tatok.digest(), SOURCE.format(n=args.clips, seed=args.seed))
    print(f"wrote {len(table)} colours into {args.file}: " + ", ".join(f"{c} {v}" for c, v in sorted(table.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
