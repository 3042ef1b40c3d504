"""Does a decoded video do what its prompt says? Read from the pixels alone, independently of the world's code.

This project's own check for prompts in the README's form ("a red circle on a dark background. the
red circle moves right, then up."). It shares no code with the synthetic world, its scorer or the
training: it parses the prompt with its own small grammar, finds each named colour by hue in HSV,
splits the clip into as many equal stages as the motion has clauses, and asks of every stage that
the object moved the named way (or stayed still) and stayed visible.

A stage is followed when the object's centroid moves at least `MIN_TRAVEL` (in 64-px units) along
the named direction and more along it than across it; "stays still" when it moves less than
`MAX_STILL`. The object must be found at the start and end of every stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

HUES = {"red": 0, "yellow": 55, "green": 128, "cyan": 180, "blue": 224, "magenta": 300}  # degrees
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
HUE_TOLERANCE = 22  # degrees
MIN_SATURATION, MIN_VALUE = 110, 110  # of 255: the background and the gray wall are below
MIN_AREA = 6  # pixels at 64x64 for an object to count as seen
MIN_TRAVEL, MAX_STILL = 4.0, 3.0  # pixels at 64x64
_CLAUSE = re.compile(
    r"^(?:the (?P<colour>[a-z]+) [a-z]+ )?(?:(?P<move>moves) (?P<dir>[a-z]+)|stays still|(?P<bare>[a-z]+))$"
)


@dataclass(frozen=True)
class Action:
    colour: str
    direction: str  # one of DIRECTIONS, or "still"


@dataclass
class Check:
    """The verdict on one clip: per stage, each action followed; the object visible throughout."""

    stages: list[list[bool]]
    visible: bool
    tracks: dict[str, list[tuple[float, float] | None]]

    @property
    def follows(self) -> bool:
        return self.visible and all(all(stage) for stage in self.stages)

    @property
    def stage_hits(self) -> tuple[int, int]:
        flat = [ok for stage in self.stages for ok in stage]
        return sum(flat), len(flat)


def parse_motion(prompt: str) -> list[list[Action]]:
    """The stages of a prompt's motion sentence: ", then " between stages, " while " between actions."""
    motion = prompt.strip().rstrip(".").split(". ", 1)[-1]
    stages, last = [], None
    for clause in motion.split(", then "):
        actions = []
        for part in clause.split(" while "):
            action = _action(part.strip(), last)
            actions.append(action)
            last = action.colour
        stages.append(actions)
    return stages


def _action(text: str, last: str | None) -> Action:
    match = _CLAUSE.match(text)
    if match is None:
        raise ValueError(f"cannot read the motion clause {text!r}")
    colour = match.group("colour") or last
    direction = match.group("dir") or match.group("bare") or "still"
    if colour not in HUES or direction not in (*DIRECTIONS, "still"):
        raise ValueError(f"cannot read the motion clause {text!r} (colour {colour!r}, direction {direction!r})")
    return Action(colour, direction)


def colour_mask(frame: np.ndarray, colour: str) -> np.ndarray:
    """Pixels of `frame` `[H, W, 3]` uint8 RGB whose hue is the colour's, saturated and bright: `[H, W]` bool."""
    hsv = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2HSV_FULL).astype(np.int32)  # [H, W, 3]
    hue = hsv[..., 0] * 360 // 256  # degrees
    distance = np.abs((hue - HUES[colour] + 180) % 360 - 180)
    return (distance <= HUE_TOLERANCE) & (hsv[..., 1] >= MIN_SATURATION) & (hsv[..., 2] >= MIN_VALUE)


def track(frames: np.ndarray, colour: str) -> list[tuple[float, float] | None]:
    """Centroid (x, y) in 64-px units of the colour in each frame `[T, H, W, 3]`, None where it is not seen."""
    unit = frames.shape[2] / 64
    out = []
    for frame in frames:
        ys, xs = np.nonzero(colour_mask(frame, colour))
        seen = len(xs) >= MIN_AREA * unit * unit
        out.append((float(xs.mean()) / unit, float(ys.mean()) / unit) if seen else None)
    return out


def stage_frames(num_frames: int, num_stages: int) -> list[tuple[int, int]]:
    """(first, last) frame of each of `num_stages` equal stages."""
    bounds = [round(k * (num_frames - 1) / num_stages) for k in range(num_stages + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def followed(action: Action, start: tuple[float, float] | None, end: tuple[float, float] | None) -> bool:
    if start is None or end is None:
        return False
    dx, dy = end[0] - start[0], end[1] - start[1]
    if action.direction == "still":
        return abs(dx) < MAX_STILL and abs(dy) < MAX_STILL
    ux, uy = DIRECTIONS[action.direction]
    along, across = dx * ux + dy * uy, abs(dx * uy - dy * ux)
    return along >= MIN_TRAVEL and along > across


def check_video(frames: np.ndarray, prompt: str) -> Check:
    """Score decoded frames `[T, H, W, 3]` uint8 against the prompt's motion, stage by stage."""
    stages = parse_motion(prompt)
    colours = sorted({a.colour for stage in stages for a in stage})
    tracks = {c: track(frames, c) for c in colours}
    spans = stage_frames(len(frames), len(stages))
    verdicts = [
        [followed(a, tracks[a.colour][s], tracks[a.colour][e]) for a in stage] for stage, (s, e) in zip(stages, spans)
    ]
    ends = sorted({i for span in spans for i in span})
    visible = all(tracks[c][i] is not None for c in colours for i in ends)
    return Check(verdicts, visible, tracks)
