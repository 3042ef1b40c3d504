"""PlanShapes: a procedural world of coloured shapes moving through multi-stage motions.

This project's own design, after the team's PlanShapes proposal (docs/planshapes.md section 3:
rendering spec, caption grammar, splits), scaled down to one Wan VAE chunk: 64x64 pixels,
17 frames (4n+1) at 8 fps, so keyframes at 2 fps fall on frames 0, 4, 8, 12, 16 = latent
frames 0..4. Plain numpy, deterministic by seed; the scorer lives in `world_score`.

World, fixed by `WorldConfig`:

* Background flat (40, 40, 40), or a static per-clip noise texture (sigma <= 10, clipped at
  2.5 sigma, so no background pixel comes within the detector's L1 threshold of a palette colour).
* 1..`max_objects` objects, each a unique colour of `PALETTE` (colour identifies the object),
  a shape of `SHAPES` (circle, square, upward triangle) and a radius of `radii` (4..6 px), drawn
  with hard edges at rounded centres, in index order (later on top).
* Motion: 1..`max_stages` stages. The 16 frame intervals are split as evenly as possible, longer
  stages first (`stage_bounds`): 1 stage [0, 16]; 2 stages [0, 8], [8, 16]; 3 stages [0, 6],
  [6, 11], [11, 16]; 4 stages [0, 4], ..., [12, 16]. With 1, 2 or 4 stages the boundaries fall on
  the 2-fps keyframes; with 3 they do not (positions at any frame are in the ground truth).
  A moving object goes `speed` = 2 px/frame along one axis, so the shortest stage (5 intervals)
  moves 10 px, well above the scorer's 4 px direction threshold, and a whole clip moves at most
  32 px. Objects not named in a stage stay still. A stage has one action, or two joined by
  "while". Starting positions are drawn so every object stays inside the frame and no two
  objects come within `min_gap` px of each other (except an object passing behind another).
* Occlusion (probability `occluder_probability`, one-stage clips): an object crosses a static
  gray (150, 150, 150) wall, `wall_width` = 16 px wide and full height, drawn over the objects,
  moving the full 32 px, so it starts and ends fully visible and is hidden for 2..4 frames
  (radius 6..4); or the smallest object passes behind the largest one (a static circle or
  square at the middle of its path, drawn on top).

Captions (all lower case; `tokenize` splits them into `WORDS` and "," "."):

    caption := scene ". " motion "."
    scene   := item ( ", " item )* [ " and " item ] " on a " ( "dark" | "textured" ) " background"
    item    := "a " COLOUR " " SHAPE | "a gray wall"
    motion  := clause ( ", then " ( clause | short ) )*
    clause  := subject " " vp [ " while " subject " " vp ]
    short   := DIR | vp        # same lone subject as the previous lone clause ("right, then up")
    subject := "the " COLOUR " " SHAPE
    vp      := "moves " DIR [ ", passing behind " ( "the gray wall" | subject ) ] | "stays still"

Splits: `"train"` never contains a held-out colour x shape pair (`HELDOUT_PAIRS`: green
triangle, blue circle, yellow square) nor a held-out motion bigram (`HELDOUT_BIGRAMS`: a move
"left" followed in the next stage by a move "down", or "up" followed by "right", by any objects);
every `"heldout"` composition contains at least one of them. `order_pairs` gives minimal pairs
whose stage lists differ only in order (same objects, start positions and background).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..plan import timing

PALETTE = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 215, 40),
    "magenta": (215, 50, 215),
    "cyan": (40, 215, 215),
}
COLOURS = tuple(PALETTE)
PALETTE_RGB = np.array([PALETTE[c] for c in COLOURS], dtype=np.uint8)  # [6, 3]
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
VERBS = DIRECTIONS + ("still",)
STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}  # (dx, dy)
BACKGROUND = (40, 40, 40)
WALL_RGB = (150, 150, 150)
WALL = -1  # `Action.behind` value: passing behind the wall (otherwise an object index)
MIN_VISIBLE_PIXELS = 8  # an object showing fewer pixels counts as not visible (the detector's minimum area)

HELDOUT_PAIRS = frozenset({("green", "triangle"), ("blue", "circle"), ("yellow", "square")})
HELDOUT_BIGRAMS = frozenset({("left", "down"), ("up", "right")})
SPLITS = ("train", "heldout")
KINDS = ("plain", "wall", "behind")

WORDS = (
    "a",
    "and",
    "on",
    "dark",
    "textured",
    "background",
    "the",
    "moves",
    "stays",
    "still",
    "then",
    "while",
    "passing",
    "behind",
    "gray",
    "wall",
    *COLOURS,
    *SHAPES,
    *DIRECTIONS,
)
PUNCTUATION = (",", ".")
_TOKEN_RE = re.compile(r"[a-z]+|[^\sa-z]")
_PAIR_STREAM = 7  # seed-sequence tag of `order_pairs`, apart from the split streams 0, 1


@dataclass(frozen=True)
class WorldConfig:
    """Size, timing and sampling knobs of the world; validated on construction."""

    size: int = 64
    num_frames: int = 17  # 4n+1, as Wan's VAE wants
    fps: int = 8
    keyframe_stride: int = 4  # 2-fps keyframes at 8 fps: frames 0, 4, 8, 12, 16
    max_objects: int = 2  # 1..3
    max_stages: int = 3  # 1..(num_frames - 1) // 4
    speed: float = 2.0  # px per frame of a moving object
    radii: tuple[int, ...] = (4, 5, 6)
    textured_probability: float = 0.5
    texture_sigma: float = 8.0  # <= 10
    occluder_probability: float = 0.15
    wall_width: int = 16
    while_probability: float = 0.3
    still_probability: float = 0.15  # a stage's first action is "stays still"
    margin: int = 1  # px kept free between an object and the frame edge
    min_gap: int = 2  # px kept free between two objects' boxes

    def __post_init__(self):
        intervals = self.num_frames - 1
        if intervals < 4 or intervals % 4:
            raise ValueError(f"num_frames={self.num_frames}: the VAE needs 4n+1 frames, e.g. 17 or 33")
        if not 1 <= self.max_objects <= 3:
            raise ValueError(f"max_objects={self.max_objects}: must be 1, 2 or 3")
        if not 1 <= self.max_stages <= intervals // 4:
            raise ValueError(f"max_stages={self.max_stages}: must be 1..{intervals // 4} (4+ intervals per stage)")
        if not 0 < self.texture_sigma <= 10:
            raise ValueError(f"texture_sigma={self.texture_sigma}: must be in (0, 10] to keep detection exact")
        for name in ("textured_probability", "occluder_probability", "while_probability", "still_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be a probability in [0, 1]")
        if not self.radii or min(self.radii) < 2:
            raise ValueError(f"radii={self.radii}: need at least one radius, each >= 2")
        self._check_fits()

    def _check_fits(self):
        travel = self.speed * (self.num_frames - 1)
        need = 2 * (max(self.radii) + self.margin) + 1 + travel
        if need > self.size:
            raise ValueError(
                f"a {travel:g}-px path of a radius-{max(self.radii)} object needs {need:g} px, "
                f"more than size={self.size}; lower speed or radii"
            )
        if self.occluder_probability > 0 and max(self.radii) > (travel - self.wall_width) / 2 - 1:
            raise ValueError(
                f"wall_width={self.wall_width}: a {travel:g}-px path cannot cross it with radius "
                f"{max(self.radii)}; narrow the wall or set occluder_probability=0"
            )

    @property
    def travel(self) -> float:
        """Distance an object covers moving through the whole clip, px."""
        return self.speed * (self.num_frames - 1)


@dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    radius: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Action:
    """One object's motion during one stage."""

    obj: int
    verb: str  # one of VERBS
    behind: int | None = None  # WALL, or the index of the object it passes behind


@dataclass(frozen=True)
class Composition:
    """What a clip shows, without positions: objects, stages of actions, background kind."""

    objects: tuple[ObjectSpec, ...]
    stages: tuple[tuple[Action, ...], ...]
    textured: bool = False

    @property
    def occlusion(self) -> Action | None:
        return next((a for stage in self.stages for a in stage if a.behind is not None), None)

    @property
    def kind(self) -> str:
        action = self.occlusion
        return "plain" if action is None else "wall" if action.behind == WALL else "behind"


@dataclass(frozen=True)
class Stage:
    start: int  # first frame
    end: int  # last frame (the next stage's first)
    actions: tuple[Action, ...]


@dataclass
class Clip:
    """A rendered clip with its captions and exact per-frame ground truth."""

    frames: np.ndarray  # [T, H, W, 3] uint8
    scene: str
    motion: str
    composition: Composition
    stages: tuple[Stage, ...]
    positions: np.ndarray  # [T, n, 2] float32 centres (x, y)
    visible: np.ndarray  # [T, n] bool, >= MIN_VISIBLE_PIXELS of the object show
    visible_fraction: np.ndarray  # [T, n] float32, shown pixels / the shape's pixels
    wall: tuple[int, int] | None  # columns [x0, x1) of the wall
    seed: int
    split: str
    config: WorldConfig

    @property
    def objects(self) -> tuple[ObjectSpec, ...]:
        return self.composition.objects

    @property
    def caption(self) -> str:
        return f"{self.scene}. {self.motion}."

    @property
    def colour(self) -> tuple[str, ...]:
        return tuple(o.colour for o in self.objects)

    @property
    def shape(self) -> tuple[str, ...]:
        return tuple(o.shape for o in self.objects)

    @property
    def radius(self) -> np.ndarray:
        return np.array([o.radius for o in self.objects], dtype=np.int64)  # [n]

    @property
    def rgb(self) -> np.ndarray:
        return np.array([PALETTE[o.colour] for o in self.objects], dtype=np.uint8)  # [n, 3]


# ---------------------------------------------------------------- timing and trajectories


def stage_bounds(num_stages: int, num_frames: int = 17) -> list[tuple[int, int]]:
    """Frame spans of the stages: the intervals split as evenly as possible, longer stages first."""
    intervals = num_frames - 1
    if not 1 <= num_stages <= intervals:
        raise ValueError(f"{num_stages} stages do not fit {num_frames} frames")
    base, extra = divmod(intervals, num_stages)
    lengths = [base + 1] * extra + [base] * (num_stages - extra)
    ends = np.cumsum([0] + lengths)
    return [(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])]


def keyframe_frames(config: WorldConfig | None = None) -> tuple[int, ...]:
    """Frame indices of the 2-fps keyframes (`plan.timing`): (0, 4, 8, 12, 16) for the default world."""
    config = config or WorldConfig()
    rate = config.fps / config.keyframe_stride
    return tuple(timing.keyframe_frames(config.num_frames, config.fps, rate)[1])


def offsets(composition: Composition, config: WorldConfig) -> np.ndarray:
    """Displacement of every object from its start, per frame: `[T, n, 2]` float (x, y)."""
    n, T = len(composition.objects), config.num_frames
    velocity = np.zeros((T - 1, n, 2))  # [T-1, n, 2]
    bounds = stage_bounds(len(composition.stages), T)
    for (start, end), actions in zip(bounds, composition.stages):
        for action in actions:
            velocity[start:end, action.obj] = np.array(STEP[action.verb]) * config.speed
    return np.concatenate([np.zeros((1, n, 2)), np.cumsum(velocity, axis=0)])  # [T, n, 2]


# ---------------------------------------------------------------- captions and words


def _subject(composition: Composition, index: int) -> str:
    return f"the {composition.objects[index].name}"


def _vp(composition: Composition, action: Action) -> str:
    if action.verb == "still":
        return "stays still"
    text = f"moves {action.verb}"
    if action.behind is not None:
        what = "the gray wall" if action.behind == WALL else _subject(composition, action.behind)
        text += f", passing behind {what}"
    return text


def _clause(composition: Composition, actions: tuple[Action, ...], previous: tuple[Action, ...] | None) -> str:
    first = actions[0]
    if previous is not None and len(previous) == 1 == len(actions) and previous[0].obj == first.obj:
        both_move = "still" not in (previous[0].verb, first.verb)
        return first.verb if both_move else _vp(composition, first)
    parts = [f"{_subject(composition, a.obj)} {_vp(composition, a)}" for a in actions]
    return " while ".join(parts)


def scene_text(composition: Composition) -> str:
    """'a red circle, a blue square and a gray wall on a textured background'."""
    items = [f"a {o.name}" for o in composition.objects]
    if composition.kind == "wall":
        items.append("a gray wall")
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return f"{listed} on a {'textured' if composition.textured else 'dark'} background"


def motion_text(composition: Composition) -> str:
    """'the red circle moves right, then up, then the blue square moves left while ...'."""
    clauses, previous = [], None
    for actions in composition.stages:
        clauses.append(_clause(composition, actions, previous))
        previous = actions
    return ", then ".join(clauses)


def tokenize(text: str, strict: bool = True) -> list[str]:
    """Lower-cased words and punctuation marks of a caption; unknown words raise when `strict`.

    Same split as `planner_vocab.build_word_tokenizer(list(WORDS))` gives on world captions.
    """
    tokens = _TOKEN_RE.findall(text.lower())
    unknown = sorted({t for t in tokens if t not in WORDS and t not in PUNCTUATION})
    if strict and unknown:
        raise ValueError(f"tokens outside the world's vocabulary: {unknown}; see WORDS and PUNCTUATION")
    return tokens


# ---------------------------------------------------------------- validation and splits


def validate_composition(composition: Composition, config: WorldConfig) -> None:
    """Raise ValueError naming the first thing this world cannot render."""
    objects, n = composition.objects, len(composition.objects)
    if not 1 <= n <= 3 or len({o.colour for o in objects}) != n:
        raise ValueError(f"need 1..3 objects of distinct colours, got {[o.name for o in objects]}")
    for o in objects:
        if o.colour not in PALETTE or o.shape not in SHAPES or o.radius not in config.radii:
            raise ValueError(
                f"{o}: colour must be one of {COLOURS}, shape one of {SHAPES}, radius one of {config.radii}"
            )
    if not 1 <= len(composition.stages) <= (config.num_frames - 1) // 4:
        raise ValueError(f"{len(composition.stages)} stages: must be 1..{(config.num_frames - 1) // 4}")
    for k, stage in enumerate(composition.stages):
        _validate_stage(k, stage, n)
    _validate_occlusion(composition)


def _validate_stage(k: int, stage: tuple[Action, ...], n: int) -> None:
    if not 1 <= len(stage) <= 2 or len({a.obj for a in stage}) != len(stage):
        raise ValueError(f"stage {k}: needs one action, or two for different objects ('while')")
    for a in stage:
        if not 0 <= a.obj < n or a.verb not in VERBS:
            raise ValueError(f"stage {k}: {a} needs an object index in 0..{n - 1} and a verb of {VERBS}")


def _validate_occlusion(composition: Composition) -> None:
    passing = [a for stage in composition.stages for a in stage if a.behind is not None]
    if not passing:
        return
    a = passing[0]
    if len(passing) > 1 or len(composition.stages) != 1 or a.verb not in ("left", "right"):
        raise ValueError("occlusion: one action moving left or right in a one-stage clip passes behind something")
    if a.behind != WALL:
        if not 0 <= a.behind < len(composition.objects) or a.behind == a.obj:
            raise ValueError(f"{a}: `behind` must be WALL or the index of another object")
        if len(composition.stages[0]) > 1 or a.behind < a.obj:
            raise ValueError(f"{a}: the occluder must come later (drawn on top) and stay still, no 'while'")


def bigrams(composition: Composition) -> set[tuple[str, str]]:
    """(move, move) of any objects in consecutive stages: the unit the held-out split withholds."""
    found = set()
    for this, after in zip(composition.stages[:-1], composition.stages[1:]):
        found |= {(a.verb, b.verb) for a in this for b in after if "still" not in (a.verb, b.verb)}
    return found


def is_heldout(composition: Composition) -> bool:
    """True when the composition has a held-out colour x shape pair or motion bigram."""
    pairs = {(o.colour, o.shape) for o in composition.objects}
    return bool(pairs & HELDOUT_PAIRS or bigrams(composition) & HELDOUT_BIGRAMS)


def _check_split(split: str, kind: str | None = None) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {SPLITS}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind={kind!r}: must be None (random) or one of {KINDS}")
