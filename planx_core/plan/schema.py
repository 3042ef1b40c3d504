"""Reading plan JSON of every schema version into a Plan, with migration and strict field checks.

This project's own format (see `planx_core.plan`). Version history:
- 1: the first draft. Flat metadata (`fps`, `frames`, `width`, `height`, `scene`, `motion`,
  `seed`, `planner`), `grid` as one integer side, `codebook` as "name:size:hash", keyframes
  with a video `frame` index and `tokens` as rows of the grid.
- 2: `video`, `grid` [gh, gw], `codebook` object, keyframes with `time` in seconds and a flat
  row-major token list, `locked`, `note`, `provenance`; token plans only.
- 3: the current form: version 2 plus kind "continuous", whose keyframes carry `vectors` (one
  list of D floats per cell, row-major) instead of `tokens`, and whose `codebook` names the
  semantic space (size = D). A version 2 file is a version 3 tokens plan as it is.
Every problem raises PlanError; no other exception escapes for any JSON value.
"""

from __future__ import annotations

import re

from .checks import MAX_FRAMES, _is_int, _is_number
from .continuous import normalise_vectors
from .core import KINDS, PLAN_FORMAT, SCHEMA_VERSION, CodebookId, Keyframe, Plan, PlanError, Provenance


def plan_from_dict(data, cls=Plan) -> Plan:
    """Validate, migrate to the current schema and build the Plan."""
    if not isinstance(data, dict):
        raise PlanError(f"a plan is a JSON object, got {type(data).__name__}")
    version = data.get("schema_version", data.get("version"))
    if version == 1:
        data = migrate_v2(migrate_v1(data))
    elif version == 2:
        data = migrate_v2(data)
    elif version != SCHEMA_VERSION:
        raise PlanError(
            f"plan schema_version {version!r} is unknown; this build reads versions 1.."
            f"{SCHEMA_VERSION}. Update the Plan-X pack to read newer plans"
        )
    if data.get("format", PLAN_FORMAT) != PLAN_FORMAT:
        raise PlanError(f"not a Plan-X plan: format is {data.get('format')!r}, expected {PLAN_FORMAT!r}")
    video, kind = _object(data, "video"), data.get("kind", "tokens")
    if not isinstance(kind, str) or kind not in KINDS:
        raise PlanError(f"plan kind {kind!r} is not supported; expected one of {', '.join(KINDS)}")
    plan = cls(
        fps=_number(video, "fps", "video"),
        num_frames=_field(video, "num_frames", "video"),
        width=_field(video, "width", "video"),
        height=_field(video, "height", "video"),
        codebook=_codebook(_object(data, "codebook")),
        keyframes=_keyframes(data, kind),
        grid=_grid(data.get("grid", [9, 9])),
        provenance=_provenance(data.get("provenance", {})),
        kind=kind,
    )
    return plan.validate()


def migrate_v1(old: dict) -> dict:
    """Schema 1 -> 2: frame indices -> seconds, rows -> flat tokens, flat metadata -> objects."""
    fps = _number(old, "fps", "plan (schema 1)")
    if fps <= 0:
        raise PlanError(f"plan (schema 1): fps must be a positive number, got {fps!r}; fix the file's fps")
    side = old.get("grid", 9)
    if not _is_int(side):
        raise PlanError(f"plan (schema 1): grid must be one integer side, got {side!r}")
    name, size, digest = _v1_codebook(old.get("codebook"))
    keyframes = []
    for index, frame in enumerate(_list(old, "keyframes", "plan (schema 1)")):
        if not isinstance(frame, dict):
            raise PlanError(f"plan (schema 1): keyframe {index} must be an object")
        rows = frame.get("tokens")
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise PlanError(f"plan (schema 1): keyframe {index} tokens must be a list of grid rows")
        number = frame.get("frame")
        if not _is_int(number) or not 0 <= number <= MAX_FRAMES:
            raise PlanError(
                f"plan (schema 1): keyframe {index} needs an integer 'frame' in 0..{MAX_FRAMES}, got {number!r}"
            )
        keyframes.append(
            {
                "time": round(number / fps, 6),
                "tokens": [t for r in rows for t in r],
                "locked": frame.get("locked", False),
                "note": frame.get("note", ""),
            }
        )
    return {
        "format": PLAN_FORMAT,
        "schema_version": 2,
        "kind": "tokens",
        "video": {
            k: old.get(k2)
            for k, k2 in (("fps", "fps"), ("num_frames", "frames"), ("width", "width"), ("height", "height"))
        },
        "grid": [side, side],
        "codebook": {"name": name, "size": size, "hash": digest},
        "keyframes": keyframes,
        "provenance": {k: old.get(k, "" if k != "seed" else None) for k in ("scene", "motion", "seed", "planner")},
    }


def migrate_v2(old: dict) -> dict:
    """Schema 2 -> 3: nothing changes for token plans (version 3 only adds kind "continuous")."""
    if old.get("kind", "tokens") == "continuous":
        raise PlanError(
            "plan kind 'continuous' needs schema_version 3 (schema 2 holds token plans only); set schema_version to 3"
        )
    return {**old, "schema_version": SCHEMA_VERSION}


def _v1_codebook(value) -> tuple[str, int, str]:
    parts = value.split(":") if isinstance(value, str) else []
    if len(parts) != 3 or not re.fullmatch(r"[0-9]{1,12}", parts[1]):
        raise PlanError(f"plan (schema 1): codebook must read 'name:size:hash', got {value!r}")
    return parts[0], int(parts[1]), parts[2]


def _object(data: dict, key: str) -> dict:
    value = data.get(key)
    if not isinstance(value, dict):
        raise PlanError(f"plan field {key!r} must be an object, got {type(value).__name__}")
    return value


def _list(data: dict, key: str, where: str) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise PlanError(f"{where}: {key!r} must be a list, got {type(value).__name__}")
    return value


def _field(data: dict, key: str, where: str):
    if key not in data:
        raise PlanError(f"{where}: missing field {key!r}")
    return data[key]


def _number(data: dict, key: str, where: str) -> float:
    value = _field(data, key, where)
    if not _is_number(value):
        raise PlanError(f"{where}: {key!r} must be a finite number, got {value!r}")
    return float(value)


def _grid(value) -> tuple:
    if not isinstance(value, list) or len(value) != 2:
        raise PlanError(f"plan field 'grid' must be [rows, cols], got {value!r}")
    return tuple(value)


def _codebook(data: dict) -> CodebookId:
    return CodebookId(name=data.get("name"), size=data.get("size"), digest=data.get("hash", ""))


def _keyframes(data: dict, kind) -> list[Keyframe]:
    frames = []
    for index, item in enumerate(_list(data, "keyframes", "plan")):
        if not isinstance(item, dict):
            raise PlanError(f"keyframe {index} must be an object, got {type(item).__name__}")
        time = _field(item, "time", f"keyframe {index}")
        if kind == "continuous":
            tokens = item.get("tokens", [])
            vectors = normalise_vectors(_field(item, "vectors", f"keyframe {index} (continuous plan)"))
        else:
            tokens, vectors = _field(item, "tokens", f"keyframe {index}"), item.get("vectors")
        frames.append(
            Keyframe(
                time=float(time) if _is_number(time) else time,
                tokens=tokens,
                locked=item.get("locked", False),
                note=item.get("note", ""),
                vectors=vectors,
            )
        )
    return frames


def _provenance(data) -> Provenance:
    if not isinstance(data, dict):
        raise PlanError(f"plan field 'provenance' must be an object, got {type(data).__name__}")
    prov = Provenance(
        scene=data.get("scene", ""),
        motion=data.get("motion", ""),
        seed=data.get("seed"),
        planner=data.get("planner", ""),
    )
    for key in ("scene", "motion", "planner"):
        if not isinstance(getattr(prov, key), str):
            raise PlanError(f"provenance {key!r} must be a string, got {getattr(prov, key)!r}")
    if prov.seed is not None and not _is_int(prov.seed):
        raise PlanError(f"provenance 'seed' must be an integer or null, got {prov.seed!r}")
    return prov
