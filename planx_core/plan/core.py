"""The Plan: a keyframe plan of text-aligned visual tokens, the object every node passes on.

Sources: Plan-X (arXiv 2511.17986) Fig. 2, keyframes of 9x9 = 81 TA-Tok tokens with (t, h, w)
indices; Tar (github csuhan/Tar) for the token text `<im_start><S2><I123>...<im_end>` and the
scale tokens `<S0>/<S1>/<S2>` of the 27x27 / 13x13 / 9x9 grids. SemanticGen (arXiv 2512.20619)
for the second kind, "continuous": keyframes of compact continuous semantic vectors (e.g. 8 or
64 numbers per cell from a KL-regularised MLP compressor of VLM vision features), see
`planx_core.plan_continuous`. The JSON layout is this project's own; see `PLAN_FORMAT` below and
`docs` in the README.

JSON form (schema version 3)::

    {"format": "planx.plan", "schema_version": 3, "kind": "tokens",
     "video": {"fps": 24.0, "num_frames": 121, "width": 1280, "height": 704},
     "grid": [9, 9],
     "codebook": {"name": "ta-tok", "size": 65536, "hash": "0123456789abcdef"},
     "keyframes": [{"time": 0.0, "tokens": [81 ints, row-major], "locked": false, "note": ""}],
     "provenance": {"scene": "...", "motion": "...", "seed": 0, "planner": "..."}}

A "continuous" plan has the same fields; its keyframes carry `"vectors": [[D floats], ...]` (one
row per cell, row-major) instead of `tokens`, and `codebook` names the semantic space: `name`
(e.g. "semanticgen-tiny-kl8"), `size` = the vector width D, `hash` = the compressor's hash.

Schema version 1 (the first draft: frame indices instead of seconds, rows of tokens, flat
metadata) and 2 (token plans only) migrate on load. Every problem in a plan raises `PlanError`,
whose message names the keyframe and the cell and says how to fix it.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field

import torch

from ..files.jsontext import parse_json
from .checks import (
    _check_codebook_fields,
    _check_grid,
    _check_keyframe,
    _check_order,
    _check_video,
    check_size,
)
from .errors import PlanError
from .timing import keyframe_latent_frames, video_frame

PLAN_FORMAT = "planx.plan"
SCHEMA_VERSION = 3
KINDS = ("tokens", "continuous")  # token ids of a codebook / continuous semantic vectors
SCALE_TOKENS = {27: "<S0>", 13: "<S1>", 9: "<S2>"}  # grid side -> Tar scale token (pool 1/2/3)


@dataclass(frozen=True)
class CodebookId:
    """Which tokenizer's codebook the token ids index: name, number of codes and a content hash.

    For a continuous plan it names the semantic space instead: name (e.g. "semanticgen-tiny-kl8"),
    size = the vector width D, digest = the compressor's hash.
    """

    name: str
    size: int
    digest: str = ""

    def describe(self) -> str:
        return f"{self.name} ({self.size} codes, hash {self.digest or 'unknown'})"

    def describe_space(self) -> str:
        return f"{self.name} ({self.size}-dim vectors, compressor hash {self.digest or 'unknown'})"


@dataclass
class Keyframe:
    """One keyframe: its time in seconds and a row-major grid of token ids (a tokens plan), or
    of D-dim vectors, one list of floats per cell (a continuous plan; `tokens` is then empty)."""

    time: float
    tokens: list[int]
    locked: bool = False
    note: str = ""
    vectors: list[list[float]] | None = None

    def moved(self, time: float, locked: bool = False, note: str = "") -> Keyframe:
        """A copy of this keyframe's cells (tokens or vectors) at another time, lock and note."""
        vectors = None if self.vectors is None else [list(v) for v in self.vectors]
        return Keyframe(time, list(self.tokens), locked, note, vectors)


@dataclass
class Provenance:
    """Where a plan came from: the planner's inputs and its name."""

    scene: str = ""
    motion: str = ""
    seed: int | None = None
    planner: str = ""


@dataclass
class Plan:
    """A keyframe plan for one video: video fields, grid, codebook identity, keyframes, provenance."""

    fps: float
    num_frames: int
    width: int
    height: int
    codebook: CodebookId
    keyframes: list[Keyframe]
    grid: tuple[int, int] = (9, 9)
    provenance: Provenance = field(default_factory=Provenance)
    kind: str = "tokens"

    # -- derived -------------------------------------------------------------------------
    @property
    def duration(self) -> float:
        """Seconds from the first to the last video frame."""
        return (self.num_frames - 1) / self.fps

    @property
    def cells(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def times(self) -> list[float]:
        return [k.time for k in self.keyframes]

    def video_frame(self, index: int) -> int:
        """The video frame keyframe `index` sits on (`timing.video_frame`)."""
        return video_frame(self.keyframes[index].time, self.fps)

    def latent_frames(self, temporal_factor: int = 4) -> list[float]:
        """Latent-frame positions of the keyframes (`timing.keyframe_latent_frames`)."""
        return keyframe_latent_frames(self.times, self.fps, temporal_factor)

    def describe_codebook(self) -> str:
        """The codebook (tokens plan) or semantic space (continuous plan), in words."""
        return self.codebook.describe_space() if self.kind == "continuous" else self.codebook.describe()

    def require_kind(self, kind: str, what: str) -> None:
        """Refuse a token-only helper on a continuous plan, and vice versa."""
        if self.kind == kind:
            return
        if kind == "tokens":
            raise PlanError(
                f"{what} needs a token plan, but this plan is continuous ({self.describe_codebook()}): "
                f"its keyframes hold vectors, not token ids; use vector_tensor() / the continuous tools"
            )
        raise PlanError(
            f"{what} needs a continuous plan, but this plan holds token ids of "
            f"{self.codebook.describe()}; use token_tensor() and the codebook, or a continuous plan"
        )

    def token_tensor(self) -> torch.Tensor:
        """All keyframes' tokens as one tensor."""
        self.require_kind("tokens", "token_tensor()")
        return torch.tensor([k.tokens for k in self.keyframes], dtype=torch.long)  # [K, gh*gw]

    def vector_tensor(self) -> torch.Tensor:
        """All keyframes' vectors of a continuous plan as one float32 tensor `[K, gh*gw, D]`."""
        self.require_kind("continuous", "vector_tensor()")
        return torch.tensor([k.vectors for k in self.keyframes], dtype=torch.float32).reshape(
            len(self.keyframes), self.cells, self.codebook.size
        )  # [K, gh*gw, D]

    def locked_tokens(self) -> dict[int, list[int]]:
        """Index -> tokens of the locked keyframes (what a re-plan must keep)."""
        self.require_kind("tokens", "locked_tokens()")
        return {i: list(k.tokens) for i, k in enumerate(self.keyframes) if k.locked}

    def copy(self) -> Plan:
        return copy.deepcopy(self)

    # -- checks --------------------------------------------------------------------------
    def validate(self) -> Plan:
        """Raise PlanError naming the first problem; return self when the plan is sound."""
        _check_video(self)
        _check_grid(self.grid)
        check_size(self)
        _check_codebook_fields(self.codebook)
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise PlanError(f"plan kind {self.kind!r} is not supported; expected one of {', '.join(KINDS)}")
        if not isinstance(self.keyframes, list) or not self.keyframes:
            raise PlanError("the plan has no keyframes; generate a plan or insert a keyframe")
        for index, keyframe in enumerate(self.keyframes):
            _check_keyframe(self, index, keyframe)
        _check_order(self)
        return self

    def check_codebook(self, expected: CodebookId) -> None:
        """Refuse a plan whose tokens index another tokenizer's codebook."""
        self.require_kind("tokens", "a tokenizer codebook check")
        same = (
            self.codebook.name == expected.name
            and self.codebook.size == expected.size
            and (not self.codebook.digest or not expected.digest or self.codebook.digest == expected.digest)
        )
        if not same:
            raise PlanError(
                f"codebook mismatch: the plan's tokens index {self.codebook.describe()}, but the "
                f"loaded tokenizer is {expected.describe()}; re-plan with this planner, or "
                f"load the tokenizer the plan was made with"
            )

    def check_video(self, num_frames: int, fps: float) -> None:
        """Refuse a plan that does not fit a video of num_frames at fps."""
        last = (num_frames - 1) / fps
        if self.keyframes and self.keyframes[-1].time > last + 1e-6:
            raise PlanError(
                f"the plan does not fit the video: its last keyframe is at "
                f"{self.keyframes[-1].time:g} s but {num_frames} frames at {fps:g} fps end at "
                f"{last:g} s; render at least {self.video_frame(-1) * fps / self.fps + 1:.0f} "
                f"frames, or resample/delete keyframes (Edit Plan Tokens)"
            )

    # -- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "video": {"fps": self.fps, "num_frames": self.num_frames, "width": self.width, "height": self.height},
            "grid": list(self.grid),
            "codebook": {"name": self.codebook.name, "size": self.codebook.size, "hash": self.codebook.digest},
            "keyframes": [self._keyframe_dict(k) for k in self.keyframes],
            "provenance": {
                "scene": self.provenance.scene,
                "motion": self.provenance.motion,
                "seed": self.provenance.seed,
                "planner": self.provenance.planner,
            },
        }

    def _keyframe_dict(self, keyframe: Keyframe) -> dict:
        if self.kind == "continuous":
            from .continuous import compact_vectors

            return {
                "time": keyframe.time,
                "vectors": compact_vectors(keyframe.vectors),
                "locked": keyframe.locked,
                "note": keyframe.note,
            }
        return {
            "time": keyframe.time,
            "tokens": list(keyframe.tokens),
            "locked": keyframe.locked,
            "note": keyframe.note,
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data) -> Plan:
        """Build and validate a plan from its JSON form (any schema version); PlanError otherwise."""
        from .schema import plan_from_dict

        return plan_from_dict(data, cls)

    @classmethod
    def from_json(cls, text) -> Plan:
        """Parse plan JSON text (str, or UTF-8 bytes with or without a BOM); any problem raises PlanError."""
        data = parse_json(text, "the plan", PlanError, "re-export the plan or fix the file (UTF-8 JSON)")
        return cls.from_dict(data)

    # -- Tar token text ------------------------------------------------------------------
    def to_token_text(self) -> str:
        """Tar's token text: per keyframe `<im_start><S{scale}><I..>x(gh*gw)<im_end>`."""
        self.require_kind("tokens", "token text")
        scale = scale_token(self.grid)
        return "".join("<im_start>" + scale + "".join(f"<I{t}>" for t in k.tokens) + "<im_end>" for k in self.keyframes)

    @classmethod
    def from_token_text(cls, text: str, like: Plan) -> Plan:
        """Parse Tar token text; video, codebook and provenance come from `like`, and its
        keyframe times are kept when the keyframe count matches (else spread over the video)."""
        like.require_kind("tokens", "token text (its template plan)")
        grid, grids = parse_token_text(text)
        if grid != tuple(like.grid):
            raise PlanError(
                f"token text has {grid[0]}x{grid[1]} grids but the template plan uses {like.grid[0]}x{like.grid[1]}"
            )
        plan = like.copy()
        times = like.times if len(like.keyframes) == len(grids) else _spread(len(grids), like.duration)
        locks = [k.locked for k in like.keyframes] if len(like.keyframes) == len(grids) else [False] * len(grids)
        notes = [k.note for k in like.keyframes] if len(like.keyframes) == len(grids) else [""] * len(grids)
        plan.keyframes = [Keyframe(t, toks, lock, note) for t, toks, lock, note in zip(times, grids, locks, notes)]
        return plan.validate()


def make_plan(
    tokens,
    *,
    times,
    fps,
    num_frames,
    width,
    height,
    codebook: CodebookId,
    grid=(9, 9),
    provenance: Provenance | None = None,
    locked=None,
) -> Plan:
    """Build and validate a plan from a [K, gh*gw] token array (tensor or nested lists)."""
    rows = tokens.tolist() if isinstance(tokens, torch.Tensor) else [list(r) for r in tokens]
    if len(rows) != len(times):
        raise PlanError(f"{len(rows)} token grids for {len(times)} keyframe times")
    locks = list(locked) if locked is not None else [False] * len(rows)
    keyframes = [Keyframe(float(t), [int(v) for v in r], bool(lk)) for t, r, lk in zip(times, rows, locks)]
    plan = Plan(
        float(fps),
        int(num_frames),
        int(width),
        int(height),
        codebook,
        keyframes,
        tuple(int(g) for g in grid),
        provenance or Provenance(),
    )
    return plan.validate()


def scale_token(grid) -> str:
    """The Tar scale token for a grid: 27x27 -> <S0>, 13x13 -> <S1>, 9x9 -> <S2>."""
    gh, gw = grid
    if gh != gw or gh not in SCALE_TOKENS:
        raise PlanError(
            f"a {gh}x{gw} grid has no Tar scale token; token text exists for 27x27, 13x13 and 9x9 grids only"
        )
    return SCALE_TOKENS[gh]


_BLOCK = re.compile(r"<im_start>(<S[0-2]>)((?:<I\d+>)*)<im_end>")
_CODE = re.compile(r"<I(\d+)>")


def parse_token_text(text: str) -> tuple[tuple[int, int], list[list[int]]]:
    """Tar token text -> (grid, one token list per keyframe). Whitespace between tokens is ignored."""
    if not isinstance(text, str):
        raise PlanError(f"token text must be a string, got {type(text).__name__}")
    compact = re.sub(r"\s+", "", text)
    grids, pos, side = [], 0, None
    for match in _BLOCK.finditer(compact):
        if match.start() != pos:
            raise PlanError(f"token text: unexpected {compact[pos : pos + 40]!r} before keyframe {len(grids)}")
        pos = match.end()
        block_side = {v: k for k, v in SCALE_TOKENS.items()}[match.group(1)]
        codes = [int(c) for c in _CODE.findall(match.group(2))]
        if len(codes) != block_side * block_side:
            raise PlanError(
                f"token text: keyframe {len(grids)} has {len(codes)} <I*> tokens, its scale "
                f"{match.group(1)} needs {block_side * block_side}"
            )
        if side is not None and block_side != side:
            raise PlanError(
                f"token text: keyframe {len(grids)} uses scale {match.group(1)}, earlier ones "
                f"{SCALE_TOKENS[side]}; one plan has one grid"
            )
        side = block_side
        grids.append(codes)
    if pos != len(compact) or not grids:
        raise PlanError(
            f"token text: expected <im_start><S2><I..>...<im_end> blocks, found {compact[pos : pos + 40]!r}"
        )
    return (side, side), grids


def _spread(count: int, duration: float) -> list[float]:
    if count == 1:
        return [0.0]
    return [round(duration * i / (count - 1), 6) for i in range(count)]
