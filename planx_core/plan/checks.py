"""The checks behind `Plan.validate`: video fields, grid, codebook fields, every keyframe, their order.

Each raises `PlanError` naming the keyframe, the cell or the field, and the fix."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..limits import LIMITS
from .errors import PlanError

if TYPE_CHECKING:
    from .core import Keyframe, Plan

MAX_GRID = LIMITS["grid"]
MAX_FRAMES = 1_000_000  # of a plan's video (a plan may describe a longer video than one render takes)
MAX_SIDE = 65_536
MAX_FPS = 1000.0


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and abs(value) < 1e12
    except OverflowError:  # an int beyond float range
        return False


def _is_text(value: str) -> bool:
    """A string that can be written as UTF-8 (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_size(plan: Plan) -> None:
    """Refuse a plan larger than the limits before its keyframes are checked one by one."""
    count = len(plan.keyframes) if isinstance(plan.keyframes, list) else 0
    if count > LIMITS["keyframes"] or count * plan.cells > LIMITS["plan_cells"]:
        raise PlanError(
            f"the plan has {count} keyframes of {plan.cells} cells, more than a plan may hold (limits: "
            f"{LIMITS['keyframes']} keyframes, {LIMITS['plan_cells']} cells in all); resample it to fewer keyframes"
        )


def _check_video(plan: Plan) -> None:
    if not _is_number(plan.fps) or not 0 < plan.fps <= MAX_FPS:
        raise PlanError(f"video fps must be a number in (0, {MAX_FPS:g}], got {plan.fps!r}")
    for name, top in (("num_frames", MAX_FRAMES), ("width", MAX_SIDE), ("height", MAX_SIDE)):
        value = getattr(plan, name)
        if not _is_int(value) or not 1 <= value <= top:
            raise PlanError(f"video {name} must be an integer in 1..{top}, got {value!r}")


def _check_grid(grid) -> None:
    if (
        not isinstance(grid, tuple)
        or len(grid) != 2
        or not all(_is_int(g) for g in grid)
        or not all(1 <= g <= MAX_GRID for g in grid)
    ):
        raise PlanError(
            f"grid must be two integers in 1..{MAX_GRID} (9x9 by default; 13x13 and 27x27 "
            f"for the other TA-Tok scales), got {grid!r}"
        )


def _check_codebook_fields(codebook) -> None:
    from .core import CodebookId  # the value object's module imports these checks

    if not isinstance(codebook, CodebookId):
        raise PlanError(f"codebook must be a CodebookId, got {type(codebook).__name__}")
    if not isinstance(codebook.name, str) or not codebook.name or not _is_text(codebook.name):
        raise PlanError(f"codebook name must be a non-empty string of valid Unicode, got {codebook.name!r}")
    if not _is_int(codebook.size) or codebook.size < 1:
        raise PlanError(f"codebook size must be a positive integer, got {codebook.size!r}")
    if not isinstance(codebook.digest, str) or not _is_text(codebook.digest):
        raise PlanError(f"codebook hash must be a string, got {codebook.digest!r}")


def _check_keyframe(plan: Plan, index: int, keyframe: Keyframe) -> None:
    where = f"keyframe {index}"
    if not _is_number(keyframe.time):
        raise PlanError(f"{where}: time must be a finite number of seconds, got {keyframe.time!r}")
    late = keyframe.time > plan.duration + 1e-6 or round(keyframe.time * plan.fps) > plan.num_frames - 1
    if keyframe.time < 0 or late:
        raise PlanError(
            f"{where} at {keyframe.time:g} s is outside the video (0..{plan.duration:g} s, "
            f"{plan.num_frames} frames at {plan.fps:g} fps); move or delete it"
        )
    if not isinstance(keyframe.locked, bool) or not isinstance(keyframe.note, str) or not _is_text(keyframe.note):
        raise PlanError(f"{where}: locked must be true/false and note a string")
    if plan.kind == "continuous":
        from .continuous import check_vectors

        return check_vectors(plan, index, keyframe)
    if keyframe.vectors is not None:
        raise PlanError(
            f"{where} of a token plan carries vectors; token keyframes hold 'tokens' only "
            f"(set kind to 'continuous' for a plan of vectors)"
        )
    if not isinstance(keyframe.tokens, list) or len(keyframe.tokens) != plan.cells:
        count = len(keyframe.tokens) if isinstance(keyframe.tokens, list) else type(keyframe.tokens).__name__
        raise PlanError(f"{where} has {count} tokens; a {plan.grid[0]}x{plan.grid[1]} grid needs {plan.cells}")
    for cell, token in enumerate(keyframe.tokens):
        if not _is_int(token) or not 0 <= token < plan.codebook.size:
            row, col = divmod(cell, plan.grid[1])
            raise PlanError(
                f"{where}, cell (row {row}, col {col}): token {token!r} is outside the codebook "
                f"{plan.codebook.name}'s range 0..{plan.codebook.size - 1}; paint a valid token"
            )


def _check_order(plan: Plan) -> None:
    for i in range(1, len(plan.keyframes)):
        before, now = plan.keyframes[i - 1], plan.keyframes[i]
        if now.time <= before.time:
            raise PlanError(
                f"keyframe {i} at {now.time:g} s is not after keyframe {i - 1} at {before.time:g} s: "
                f"keyframe times must be sorted with no duplicates; move one of them"
            )
        if plan.video_frame(i) == plan.video_frame(i - 1):
            raise PlanError(
                f"keyframes {i - 1} and {i} ({before.time:g} s and {now.time:g} s) fall on the same "
                f"video frame {plan.video_frame(i)} at {plan.fps:g} fps; move one of them"
            )
