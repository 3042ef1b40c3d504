"""Edit operations on a Plan as small JSON steps, replayable on a freshly generated plan.

This project's own design (Plan-X gives artists no editor; docs/design.md sections 1-2 ask for one). An edit
list is a JSON array of objects, each with an "op" and its fields; the editor in the graph
keeps that list in a STRING widget, so a saved workflow carries every edit and re-running the
planner re-applies them. Cells are addressed [row, col]; a rectangle is [top, left, bottom,
right], inclusive; keyframes by index (at the time the step runs); times in seconds, snapped to
the nearest video frame.

    fill            keyframe (int | [int] | "all"), rect?, token     set cells to a token
                    ... continuous plans: vector [D floats] instead of token
    fill_word       keyframe, rect?, word                            ... to the code nearest a word (tokens)
    paste           keyframe, at [r, c], tokens [[...], ...]         write a block of tokens
                    ... continuous plans: vectors [[[D floats], ...], ...] (rows of cells)
    copy_region     source?, from_keyframe, rect, keyframe, at?      copy cells from a plan
    copy_keyframe   source?, from_keyframe, keyframe | time          replace / insert a whole keyframe
    insert_keyframe time, tokens? (flat), note?                      new keyframe (default: nearest's cells)
                    ... continuous plans: vectors? (flat list of gh*gw vectors)
    interpolate     time, note?                                      new keyframe blending its two neighbours'
                                                                     vectors linearly by time (continuous only)
    duplicate_keyframe keyframe, time                                copy a keyframe to another time
    delete_keyframe keyframe
    move_keyframe   keyframe, time                                   retime (keyframes re-sort by time)
    resample        rate                                             new keyframe rate, nearest keyframe's cells
    lock            keyframe, locked? (default true)                 re-planning keeps locked keyframes
    note            keyframe, text

Token plans take every op but interpolate; continuous plans (`planx_core.plan_continuous`) every
op but fill_word, and fill / paste / insert_keyframe with vectors instead of token ids. `source`
names a plan passed to `apply_edits(sources=...)`; "self" (default) is the plan being edited; it
must be of the same kind, grid and codebook size (vector width D). Every problem raises
EditError (a PlanError) naming the step and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..files.jsontext import parse_json
from ..limits import check_limit
from .checks import _is_int, _is_number
from .continuous import check_vector, interpolate_vectors
from .core import Keyframe, Plan, PlanError
from .timing import keyframe_times


class EditError(PlanError):
    """An edit step that cannot apply: names the step index, its op and the fix."""


@dataclass
class EditContext:
    """What some steps need: named source plans and the word -> code mapping of the planner."""

    sources: dict[str, Plan] = field(default_factory=dict)
    word_to_code: Callable[[str], int] | None = None


def parse_edits(text) -> list[dict]:
    """Widget text -> edit list. Empty text is no edits; anything malformed raises EditError."""
    fix = "clear the widget or fix the text"
    if isinstance(text, list):
        edits = text
    elif isinstance(text, str) and not text.strip():
        return []
    else:
        edits = parse_json(text, "the edit list", EditError, fix)
    if not isinstance(edits, list):
        raise EditError(f"the edit list must be a JSON array of steps, got {type(edits).__name__}")
    check_limit("edit_steps", len(edits) or 1, f"the edit list's length ({len(edits)} steps)", EditError, fix)
    for index, step in enumerate(edits):
        op = step.get("op") if isinstance(step, dict) else step
        if not isinstance(op, str) or op not in OPS:
            shown = op if isinstance(op, (str, int, float, type(None))) else type(op).__name__
            raise EditError(f"edit {index}: unknown step {shown!r}; known ops: {', '.join(sorted(OPS))}")
    return edits


def apply_edits(
    plan: Plan, edits, *, sources: dict[str, Plan] | None = None, word_to_code: Callable[[str], int] | None = None
) -> Plan:
    """Apply the steps in order to a copy of `plan`; the input plan is never changed. The copy is made once and
    each step changes it in place (a step that reads the plan itself, source "self", reads a snapshot), then the
    plan is validated, so a step that leaves it unusable is named."""
    context = EditContext(dict(sources or {}), word_to_code)
    result = plan.copy()
    for index, step in enumerate(parse_edits(edits)):
        context.sources["self"] = result
        try:
            result = OPS[step["op"]](result, _Step(step), context).validate()
        except PlanError as exc:
            raise EditError(f"edit {index} ({step['op']}): {exc}") from None
    return result


class _Step:
    """Typed access to one step's fields, with errors that name the field."""

    def __init__(self, data: dict):
        self.data = data

    def get(self, key, default=...):
        if key not in self.data:
            if default is ...:
                raise PlanError(f"missing field {key!r}")
            return default
        return self.data[key]

    def int(self, key, default=...) -> int:
        value = self.get(key, default)
        if not _is_int(value):
            raise PlanError(f"field {key!r} must be an integer, got {value!r}")
        return value

    def number(self, key) -> float:
        value = self.get(key)
        if not _is_number(value):
            raise PlanError(f"field {key!r} must be a number, got {value!r}")
        return float(value)

    def cell(self, key, grid, default=...) -> tuple[int, int]:
        value = self.get(key, default)
        if not (
            isinstance(value, list)
            and len(value) == 2
            and all(_is_int(v) for v in value)
            and 0 <= value[0] < grid[0]
            and 0 <= value[1] < grid[1]
        ):
            raise PlanError(f"field {key!r} must be [row, col] inside the {grid[0]}x{grid[1]} grid, got {value!r}")
        return value[0], value[1]

    def rect(self, grid) -> tuple[int, int, int, int]:
        value = self.get("rect", [0, 0, grid[0] - 1, grid[1] - 1])
        ok = isinstance(value, list) and len(value) == 4 and all(_is_int(v) for v in value)
        if not ok or not (0 <= value[0] <= value[2] < grid[0] and 0 <= value[1] <= value[3] < grid[1]):
            raise PlanError(
                f"field 'rect' must be [top, left, bottom, right] inside the "
                f"{grid[0]}x{grid[1]} grid (inclusive), got {value!r}"
            )
        return tuple(value)


def _index(plan: Plan, value, key: str = "keyframe") -> int:
    if not _is_int(value) or not 0 <= value < len(plan.keyframes):
        raise PlanError(f"{key} {value!r} does not exist: the plan has keyframes 0..{len(plan.keyframes) - 1}")
    return value


def _targets(plan: Plan, step: _Step) -> list[int]:
    value = step.get("keyframe")
    if value == "all":
        return list(range(len(plan.keyframes)))
    values = value if isinstance(value, list) else [value]
    return [_index(plan, v) for v in values]


def _token(plan: Plan, value) -> int:
    if not _is_int(value) or not 0 <= value < plan.codebook.size:
        raise PlanError(
            f"token {value!r} is outside the codebook {plan.codebook.name}'s range 0..{plan.codebook.size - 1}"
        )
    return value


def _snap(plan: Plan, time: float) -> float:
    """A time in seconds moved onto the nearest video frame."""
    return round(round(time * plan.fps) / plan.fps, 6)


def _check_free(plan: Plan, time: float, moving: Keyframe | None = None) -> None:
    """Refuse a time whose video frame another keyframe already holds."""
    frame = round(time * plan.fps)
    for index, other in enumerate(plan.keyframes):
        if other is not moving and round(other.time * plan.fps) == frame:
            raise PlanError(
                f"keyframe {index} already sits at {other.time:g} s (video frame {frame}); "
                f"pick another time or delete that keyframe first"
            )


def _continuous(plan: Plan) -> bool:
    return plan.kind == "continuous"


def _cell_key(plan: Plan) -> str:
    """The field that holds a keyframe's cells: 'tokens' (token plans) or 'vectors' (continuous)."""
    return "vectors" if _continuous(plan) else "tokens"


def _cells(plan: Plan, keyframe: Keyframe) -> list:
    return keyframe.vectors if _continuous(plan) else keyframe.tokens


def _value(plan: Plan, value, what: str):
    """One cell's value from a step: a token id, or a continuous plan's D-vector (float32)."""
    return check_vector(plan, value, what) if _continuous(plan) else _token(plan, value)


def _refuse_other_key(plan: Plan, step: _Step, token_key: str, vector_key: str) -> str:
    """The step's key for this plan's kind; refuse the other kind's key with what to use instead."""
    want, other = (vector_key, token_key) if _continuous(plan) else (token_key, vector_key)
    if other in step.data:
        kind = (
            f"continuous ({plan.describe_codebook()})"
            if _continuous(plan)
            else f"a token plan of {plan.codebook.describe()}"
        )
        raise PlanError(f"field {other!r} does not apply: this plan is {kind}; give {want!r} instead")
    return want


def _set_cells(plan: Plan, index: int, rect, value_at: Callable[[int, int], object]) -> None:
    top, left, bottom, right = rect
    cells = _cells(plan, plan.keyframes[index])
    for r in range(top, bottom + 1):
        for c in range(left, right + 1):
            value = value_at(r, c)
            cells[r * plan.grid[1] + c] = list(value) if isinstance(value, list) else value


def _fill(plan: Plan, step: _Step, ctx: EditContext) -> Plan:
    if _continuous(plan) and "vector" not in step.data:
        raise PlanError(
            f"fill with a token id applies to token plans only; this plan is continuous "
            f"({plan.describe_codebook()}): give 'vector': [{plan.codebook.size} numbers], or use "
            f"paste / copy_region"
        )
    key = _refuse_other_key(plan, step, "token", "vector")
    value = _value(plan, step.get(key), f"field {key!r}")
    rect = step.rect(plan.grid)
    for index in _targets(plan, step):
        _set_cells(plan, index, rect, lambda r, c: value)
    return plan


def _fill_word(plan: Plan, step: _Step, ctx: EditContext) -> Plan:
    if _continuous(plan):
        raise PlanError(
            f"fill_word paints the code nearest a word and applies to token plans only; this plan is "
            f"continuous ({plan.describe_codebook()}): use fill with 'vector', paste or copy_region"
        )
    word = step.get("word")
    if not isinstance(word, str) or not word.strip():
        raise PlanError(f"field 'word' must be a non-empty word, got {word!r}")
    if ctx.word_to_code is None:
        raise PlanError(f"painting the word {word!r} needs the planner's vocabulary; connect a planner")
    try:
        token = ctx.word_to_code(word.strip())
    except (KeyError, ValueError) as exc:
        raise PlanError(f"no code for the word {word!r}: {exc}") from None
    return _fill(plan, _Step({**step.data, "token": token}), ctx)


def _paste(plan: Plan, step: _Step, ctx: EditContext) -> Plan:
    key = _refuse_other_key(plan, step, "tokens", "vectors")
    rows = step.get(key)
    if not (
        isinstance(rows, list)
        and rows
        and all(isinstance(r, list) and r for r in rows)
        and len({len(r) for r in rows}) == 1
    ):
        example = "[[[0.1, ...], [0.2, ...]]], rows of cells of vectors" if key == "vectors" else "[[1, 2], [3, 4]]"
        raise PlanError(f"field {key!r} must be a non-empty rectangle of rows, e.g. {example}")
    top, left = step.cell("at", plan.grid)
    bottom, right = top + len(rows) - 1, left + len(rows[0]) - 1
    if bottom >= plan.grid[0] or right >= plan.grid[1]:
        raise PlanError(
            f"a {len(rows)}x{len(rows[0])} block at [{top}, {left}] runs off the {plan.grid[0]}x{plan.grid[1]} grid"
        )
    block = [[_value(plan, v, f"{key} row {i}, column {j}") for j, v in enumerate(r)] for i, r in enumerate(rows)]
    for index in _targets(plan, step):
        _set_cells(plan, index, (top, left, bottom, right), lambda r, c: block[r - top][c - left])
    return plan


def _source(plan: Plan, step: _Step, ctx: EditContext) -> Plan:
    name = step.get("source", "self")
    if not isinstance(name, str) or name not in ctx.sources:
        raise PlanError(f"source plan {name!r} is not connected (available: {', '.join(sorted(ctx.sources))})")
    source = plan.copy() if name == "self" else ctx.sources[name]  # the plan as it was before this step
    if source.kind != plan.kind:
        raise PlanError(
            f"source plan {name!r} is a {source.kind} plan but this plan is {plan.kind}: token ids and "
            f"continuous vectors do not mix; copy from a plan of the same kind"
        )
    if tuple(source.grid) != tuple(plan.grid) or source.codebook.size != plan.codebook.size:
        raise PlanError(
            f"source plan {name!r} uses a {source.grid[0]}x{source.grid[1]} grid of "
            f"{source.describe_codebook()}; this plan a {plan.grid[0]}x{plan.grid[1]} grid of "
            f"{plan.describe_codebook()}; copy only between plans of the same grid and "
            f"{'vector width' if _continuous(plan) else 'codebook'}"
        )
    return source


def _copy_region(plan: Plan, step: _Step, ctx: EditContext) -> Plan:
    source = _source(plan, step, ctx)
    src = _cells(source, source.keyframes[_index(source, step.get("from_keyframe"), "from_keyframe")])
    top, left, bottom, right = step.rect(plan.grid)
    rows = [src[r * plan.grid[1] + left : r * plan.grid[1] + right + 1] for r in range(top, bottom + 1)]
    at = list(step.cell("at", plan.grid, [top, left]))
    return _paste(plan, _Step({"keyframe": step.get("keyframe"), "at": at, _cell_key(plan): rows}), ctx)


def _copy_keyframe(plan: Plan, step: _Step, ctx: EditContext) -> Plan:
    source = _source(plan, step, ctx)
    original = source.keyframes[_index(source, step.get("from_keyframe"), "from_keyframe")]
    if "time" in step.data:
        return _insert(plan, _Step({"time": step.get("time"), _cell_key(plan): _cells(source, original)}), ctx)
    for index in _targets(plan, step):
        keyframe = plan.keyframes[index]
        copied = original.moved(keyframe.time)
        keyframe.tokens, keyframe.vectors = copied.tokens, copied.vectors
    return plan


def _insert(plan: Plan, step: _Step, ctx: EditContext) -> Plan:
    time = _snap(plan, step.number("time"))
    key = _refuse_other_key(plan, step, "tokens", "vectors")
    cells = step.get(key, None)
    note = step.get("note", "")
    _check_free(plan, time)
    if cells is None:
        nearest = min(plan.keyframes, key=lambda k: abs(k.time - time))
        keyframe = nearest.moved(time, note=note)
    elif _continuous(plan):
        keyframe = Keyframe(time, [], False, note, _vector_cells(plan, cells, key))
    else:
        keyframe = Keyframe(time, list(cells) if isinstance(cells, list) else cells, False, note)
    plan.keyframes.append(keyframe)
    plan.keyframes.sort(key=lambda k: k.time if _is_number(k.time) else 0.0)
    return plan


def _vector_cells(plan: Plan, cells, key: str) -> list[list[float]]:
    if not isinstance(cells, list) or len(cells) != plan.cells:
        raise PlanError(
            f"field {key!r} must list {plan.cells} vectors, one per cell of the "
            f"{plan.grid[0]}x{plan.grid[1]} grid, row-major"
        )
    return [check_vector(plan, v, f"{key} cell {i}") for i, v in enumerate(cells)]


def _duplicate(plan: Plan, step: _Step, ctx: EditContext) -> Plan:
    original = plan.keyframes[_index(plan, step.get("keyframe"))]
    return _insert(
        plan, _Step({"time": step.get("time"), _cell_key(plan): _cells(plan, original), "note": original.note}), ctx
    )


def _interpolate(plan: Plan, step: _Step, ctx: EditContext) -> Plan:
    if not _continuous(plan):
        raise PlanError(
            "interpolate blends the vectors of two keyframes and applies to continuous plans only; "
            "token ids cannot be averaged: use insert_keyframe or duplicate_keyframe"
        )
    time = _snap(plan, step.number("time"))
    note = step.get("note", "")
    _check_free(plan, time)
    before = [k for k in plan.keyframes if k.time < time]
    after = [k for k in plan.keyframes if k.time > time]
    if not before or not after:
        raise PlanError(
            f"time {time:g} s is not between two keyframes (they span {plan.keyframes[0].time:g}.."
            f"{plan.keyframes[-1].time:g} s); interpolate needs a keyframe on each side, use "
            f"insert_keyframe outside that span"
        )
    a, b = before[-1], after[0]
    vectors = interpolate_vectors(a.vectors, b.vectors, (time - a.time) / (b.time - a.time))
    plan.keyframes.append(Keyframe(time, [], False, note, vectors))
    plan.keyframes.sort(key=lambda k: k.time)
    return plan


def _delete(plan: Plan, step: _Step, ctx: EditContext) -> Plan:
    index = _index(plan, step.get("keyframe"))
    if len(plan.keyframes) == 1:
        raise PlanError("cannot delete the only keyframe; a plan needs at least one")
    del plan.keyframes[index]
    return plan


def _move(plan: Plan, step: _Step, ctx: EditContext) -> Plan:
    keyframe = plan.keyframes[_index(plan, step.get("keyframe"))]
    time = _snap(plan, step.number("time"))
    _check_free(plan, time, moving=keyframe)
    keyframe.time = time
    plan.keyframes.sort(key=lambda k: k.time)
    return plan


def _resample(plan: Plan, step: _Step, ctx: EditContext) -> Plan:
    rate = step.number("rate")
    if not 0 < rate <= plan.fps:
        raise PlanError(f"field 'rate' must be in (0, {plan.fps:g}] keyframes per second, got {rate:g}")
    old = plan.keyframes
    fresh = []
    for time in keyframe_times(plan.num_frames, plan.fps, rate):
        nearest = min(old, key=lambda k: (abs(k.time - time), k.time))
        exact = abs(nearest.time - time) < 1e-6
        fresh.append(nearest.moved(time, nearest.locked and exact, nearest.note if exact else ""))
    plan.keyframes = fresh
    return plan


def _lock(plan: Plan, step: _Step, ctx: EditContext) -> Plan:
    locked = step.get("locked", True)
    if not isinstance(locked, bool):
        raise PlanError(f"field 'locked' must be true or false, got {locked!r}")
    for index in _targets(plan, step):
        plan.keyframes[index].locked = locked
    return plan


def _note(plan: Plan, step: _Step, ctx: EditContext) -> Plan:
    text = step.get("text")
    if not isinstance(text, str):
        raise PlanError(f"field 'text' must be a string, got {text!r}")
    plan.keyframes[_index(plan, step.get("keyframe"))].note = text
    return plan


OPS: dict[str, Callable[[Plan, _Step, EditContext], Plan]] = {
    "fill": _fill,
    "fill_word": _fill_word,
    "paste": _paste,
    "copy_region": _copy_region,
    "copy_keyframe": _copy_keyframe,
    "insert_keyframe": _insert,
    "interpolate": _interpolate,
    "duplicate_keyframe": _duplicate,
    "delete_keyframe": _delete,
    "move_keyframe": _move,
    "resample": _resample,
    "lock": _lock,
    "note": _note,
}
