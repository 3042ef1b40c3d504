"""The held-out prompts of the adherence check, and the first frames drawn for their image-to-video runs.

This project's own set, in the README's form ("a C S on a dark background. the C S moves D1, then
D2."). Every prompt holds a composition the training split never draws (`world.HELDOUT_PAIRS`: a
green triangle, a blue circle, a yellow square; or `world.HELDOUT_BIGRAMS`: left then down, up then
right), so none of them was seen in training; the world module itself is not imported here (the
set is written out, and `tests/test_prompt_check.py` checks it against the world's held-out rule).
`VALIDATION` is a second set in the same form whose compositions the training split does draw: the
place to choose sampling settings (planning temperature, guidance) without looking at the held-out
check. First frames are drawn with OpenCV, not by the world's renderer: 64x64, the dark background, the
object (radius 5) placed so that both 16-px moves stay in the frame.
"""

from __future__ import annotations

import cv2
import numpy as np

RGB = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 215, 40),
    "magenta": (215, 50, 215),
    "cyan": (40, 215, 215),
}
STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BACKGROUND = (40, 40, 40)
SIZE, RADIUS, TRAVEL = 64, 5, 16  # pixels; TRAVEL: the world's 2 px a frame over half of 17 frames

# (colour, shape, first direction, second direction)
HELDOUT = (
    ("green", "triangle", "right", "up"),
    ("blue", "circle", "left", "down"),
    ("yellow", "square", "down", "right"),
    ("red", "circle", "up", "right"),
    ("cyan", "square", "left", "down"),
    ("green", "triangle", "down", "left"),
    ("blue", "circle", "up", "left"),
    ("yellow", "square", "right", "down"),
    ("magenta", "triangle", "up", "right"),
    ("magenta", "circle", "left", "down"),
)
# training-split compositions (no held-out pair or bigram, not the README example): for choosing settings
VALIDATION = (
    ("red", "square", "left", "up"),
    ("green", "circle", "up", "left"),
    ("blue", "square", "right", "down"),
    ("yellow", "triangle", "down", "left"),
    ("magenta", "square", "right", "up"),
    ("cyan", "circle", "down", "right"),
    ("red", "triangle", "up", "left"),
    ("green", "square", "down", "right"),
    ("blue", "triangle", "left", "up"),
    ("cyan", "triangle", "right", "down"),
)
SETS = {"heldout": HELDOUT, "validation": VALIDATION}
README_PROMPT = "a red circle on a dark background. the red circle moves right, then up."


def prompt_of(colour: str, shape: str, first: str, second: str) -> str:
    """The README's form: scene sentence, then the motion with ", then "."""
    return f"a {colour} {shape} on a dark background. the {colour} {shape} moves {first}, then {second}."


def prompts() -> list[str]:
    return [prompt_of(*item) for item in HELDOUT]


def start_position(first: str, second: str) -> tuple[int, int]:
    """Where the object starts so that both moves end inside the frame: the path's middle at the centre."""
    dx = (STEP[first][0] + STEP[second][0]) * TRAVEL // 2
    dy = (STEP[first][1] + STEP[second][1]) * TRAVEL // 2
    return SIZE // 2 - dx, SIZE // 2 - dy


def first_frame(colour: str, shape: str, first: str, second: str) -> np.ndarray:
    """A hand-drawn first frame `[64, 64, 3]` uint8 RGB for the prompt `prompt_of(colour, shape, first, second)`."""
    image = np.full((SIZE, SIZE, 3), BACKGROUND, dtype=np.uint8)  # [H, W, 3]
    x, y = start_position(first, second)
    fill = tuple(int(v) for v in RGB[colour])
    if shape == "circle":
        cv2.circle(image, (x, y), RADIUS, fill, thickness=-1)
    elif shape == "square":
        cv2.rectangle(image, (x - RADIUS, y - RADIUS), (x + RADIUS, y + RADIUS), fill, thickness=-1)
    else:  # an upward triangle
        corners = np.array([[x, y - RADIUS], [x - RADIUS, y + RADIUS], [x + RADIUS, y + RADIUS]], dtype=np.int32)
        cv2.fillPoly(image, [corners], fill)
    return image
