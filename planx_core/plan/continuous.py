"""Continuous semantic plans: keyframes of compact continuous vectors instead of token ids.

Source: SemanticGen (arXiv 2512.20619): video is planned as keyframes of compact semantic
features, VLM vision features squeezed by a KL-regularised MLP compressor to a few dimensions
(e.g. 8 or 64) per cell. Here such a plan is the second `kind` of `planx_core.plan.Plan`,
"continuous": the same video fields, grid, times, locks, notes and provenance as a token plan;
each keyframe carries `vectors`, gh*gw rows (row-major cells) of D floats. `Plan.codebook` names
the semantic space: name (e.g. "semanticgen-tiny-kl8"), size = the vector width D, digest = the
compressor's hash.

JSON (schema version 3)::

    {"format": "planx.plan", "schema_version": 3, "kind": "continuous", "video": {...}, "grid": [3, 3],
     "codebook": {"name": "semanticgen-tiny-kl8", "size": 8, "hash": "5be0c1..."},
     "keyframes": [{"time": 0.0, "vectors": [[0.12, -1.5, ...8 floats], ...9 cells], "locked": false,
                    "note": ""}], "provenance": {...}}

Values are float32: loading, `make_continuous_plan` and the edits store every number as the
float32 it is, and JSON writes the shortest decimal that reads back as that float32, so a JSON
round trip reproduces the plan exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from .checks import _is_number
from .core import CodebookId, Keyframe, Plan, PlanError, Provenance


def float32_rows(rows: list) -> list[list[float]]:
    """Lists of numbers -> the same lists with every value rounded to float32 (Python floats)."""
    if not rows:
        return []
    return torch.tensor(rows, dtype=torch.float64).to(torch.float32).tolist()


def compact_vectors(rows) -> list[list[float]]:
    """Vectors for JSON: each value as the shortest decimal that reads back as the same float32."""
    try:
        array = np.asarray(rows, dtype=np.float32)  # [cells, D]
    except (TypeError, ValueError):  # not a valid plan: written as it is
        return rows
    if array.ndim != 2:
        return rows
    return [[float(str(v)) for v in row] for row in array]


def is_number_list(value) -> bool:
    """A non-empty list of finite JSON numbers (no booleans)?"""
    return isinstance(value, list) and bool(value) and all(_is_number(v) for v in value)


def normalise_vectors(value):
    """A list of number lists -> float32-rounded copies; anything else is returned as it is (the plan's
    validation then names the keyframe and cell that is wrong)."""
    if (
        isinstance(value, list)
        and value
        and all(is_number_list(v) for v in value)
        and len({len(v) for v in value}) == 1
    ):
        return float32_rows(value)
    return value


def check_vectors(plan: Plan, index: int, keyframe: Keyframe) -> None:
    """Refuse a continuous keyframe whose vectors are missing, miscounted, of another width or not finite."""
    where, (gh, gw), width = f"keyframe {index}", plan.grid, plan.codebook.size
    if not isinstance(keyframe.tokens, list) or keyframe.tokens:
        raise PlanError(
            f"{where} of a continuous plan carries tokens; continuous keyframes hold 'vectors' only "
            f"(set kind to 'tokens' for a plan of token ids)"
        )
    vectors = keyframe.vectors
    if not isinstance(vectors, list) or len(vectors) != plan.cells:
        count = len(vectors) if isinstance(vectors, list) else ("no" if vectors is None else type(vectors).__name__)
        raise PlanError(f"{where} has {count} vectors; a {gh}x{gw} grid needs {plan.cells}, one per cell, row-major")
    for cell, vector in enumerate(vectors):
        if not isinstance(vector, list) or len(vector) != width:
            row, col = divmod(cell, gw)
            size = len(vector) if isinstance(vector, list) else type(vector).__name__
            raise PlanError(
                f"{where}, cell (row {row}, col {col}): vector has {size} numbers, but the plan's "
                f"space {plan.codebook.name} is {width}-dimensional (codebook size); give every cell "
                f"{width} numbers, or set the codebook size to the compressor's width"
            )
        for position, value in enumerate(vector):
            if not _is_number(value):
                row, col = divmod(cell, gw)
                raise PlanError(
                    f"{where}, cell (row {row}, col {col}): value {position} is {value!r}, not a finite "
                    f"number; vectors hold finite numbers (no NaN, infinity, text or true/false), fix "
                    f"or re-export the plan"
                )


def make_continuous_plan(
    vectors,
    *,
    times,
    fps,
    num_frames,
    width,
    height,
    space: CodebookId,
    provenance: Provenance | None = None,
    grid=None,
    locked=None,
) -> Plan:
    """Build and validate a continuous plan from vectors `[K, gh, gw, D]` or `[K, gh*gw, D]`.

    A `[K, gh*gw, D]` tensor needs `grid` unless gh*gw is a square (then gh = gw). `space` names
    the semantic space: its size must be D. Values are stored as float32.
    """
    values = torch.as_tensor(vectors).detach().to("cpu", torch.float32)
    grid = _grid_of(values, grid)
    values = values.reshape(values.shape[0], grid[0] * grid[1], values.shape[-1])  # [K, gh*gw, D]
    if len(values) != len(times):
        raise PlanError(f"{len(values)} vector grids for {len(times)} keyframe times; give one time per keyframe")
    if isinstance(space, CodebookId) and space.size != values.shape[-1]:
        raise PlanError(
            f"the vectors are {values.shape[-1]}-dim but the space {space.name} says size "
            f"{space.size}; the space's size is the vector width D"
        )
    locks = list(locked) if locked is not None else [False] * len(values)
    keyframes = [Keyframe(float(t), [], bool(lk), "", rows) for t, rows, lk in zip(times, values.tolist(), locks)]
    plan = Plan(
        float(fps),
        int(num_frames),
        int(width),
        int(height),
        space,
        keyframes,
        tuple(int(g) for g in grid),
        provenance or Provenance(),
        kind="continuous",
    )
    return plan.validate()


def _grid_of(values: torch.Tensor, grid) -> tuple[int, int]:
    if values.ndim not in (3, 4) or values.shape[-1] < 1:
        raise PlanError(
            f"continuous plan vectors must be [K, gh, gw, D] or [K, gh*gw, D] with D >= 1, got "
            f"shape {list(values.shape)}"
        )
    if values.ndim == 4:
        if grid is not None and tuple(grid) != tuple(values.shape[1:3]):
            raise PlanError(
                f"vectors of shape {list(values.shape)} have a {values.shape[1]}x{values.shape[2]} "
                f"grid, but grid={tuple(grid)} was given"
            )
        return int(values.shape[1]), int(values.shape[2])
    cells = int(values.shape[1])
    if grid is None:
        side = int(round(cells**0.5))
        if side * side != cells:
            raise PlanError(
                f"{cells} cells per keyframe are not a square grid; pass grid=(gh, gw) or vectors shaped [K, gh, gw, D]"
            )
        return side, side
    if len(tuple(grid)) != 2 or grid[0] * grid[1] != cells:
        raise PlanError(f"grid {tuple(grid)} does not hold the {cells} cells per keyframe of the vectors")
    return int(grid[0]), int(grid[1])


def interpolate_vectors(before: list[list[float]], after: list[list[float]], weight: float) -> list[list[float]]:
    """Linear blend `(1 - weight) * before + weight * after` of two keyframes' vectors, in float32."""
    a, b = torch.tensor(before, dtype=torch.float32), torch.tensor(after, dtype=torch.float32)  # [cells, D]
    return torch.lerp(a, b, float(weight)).tolist()


def check_vector(plan: Plan, value, what: str) -> list[float]:
    """One cell's vector given in an edit: D finite numbers -> float32 list; PlanError otherwise."""
    width = plan.codebook.size
    if not is_number_list(value) or len(value) != width:
        raise PlanError(
            f"{what} must be a list of {width} finite numbers (a vector of the space "
            f"{plan.codebook.name}), got {_short(value)}"
        )
    return float32_rows([value])[0]


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = [
    "check_vector",
    "check_vectors",
    "compact_vectors",
    "float32_rows",
    "interpolate_vectors",
    "make_continuous_plan",
    "normalise_vectors",
]
