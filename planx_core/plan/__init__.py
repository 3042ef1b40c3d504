"""The keyframe plan: the value object every node passes on, its JSON schema, edits and picture.

Public API: `Plan`, `Keyframe`, `CodebookId`, `Provenance`, `PlanError`, `make_plan` (core);
`make_continuous_plan` (SemanticGen's plans of vectors); `plan_from_dict` (any schema version);
`apply_edits`, `parse_edits`, `OPS`, `EditError` (the edit list the editor writes);
`plan_picture`, `code_colours`, `vector_colours` (pictures); and the one alignment rule in
`timing`: `keyframe_times`, `keyframe_frames`, `video_frame`, `latent_frame`,
`keyframe_latent_frames`, `cell_centres`, `plan_positions`.
"""

from .continuous import make_continuous_plan
from .core import (
    KINDS,
    PLAN_FORMAT,
    SCHEMA_VERSION,
    CodebookId,
    Keyframe,
    Plan,
    Provenance,
    make_plan,
    parse_token_text,
    scale_token,
)
from .edits import OPS, EditError, apply_edits, parse_edits
from .errors import PlanError
from .picture import code_colours, plan_picture, vector_colours
from .schema import plan_from_dict
from .timing import (
    TEMPORAL_FACTOR,
    cell_centres,
    keyframe_frames,
    keyframe_latent_frames,
    keyframe_times,
    latent_frame,
    plan_positions,
    video_frame,
)

__all__ = [
    "KINDS",
    "OPS",
    "PLAN_FORMAT",
    "SCHEMA_VERSION",
    "TEMPORAL_FACTOR",
    "CodebookId",
    "EditError",
    "Keyframe",
    "Plan",
    "PlanError",
    "Provenance",
    "apply_edits",
    "cell_centres",
    "code_colours",
    "keyframe_frames",
    "keyframe_latent_frames",
    "keyframe_times",
    "latent_frame",
    "make_continuous_plan",
    "make_plan",
    "parse_edits",
    "parse_token_text",
    "plan_from_dict",
    "plan_picture",
    "plan_positions",
    "scale_token",
    "vector_colours",
    "video_frame",
]
